"""Command line: `responder` and its kubectl plugin name `kubectl-responder`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from responder.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ResponderError


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad flags, which is our bad-input code too; keep its message to one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n  fix: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    prog = "kubectl responder" if os.path.basename(sys.argv[0]).startswith("kubectl-") else "responder"
    parser = _Parser(prog=prog, description="Incident response for Capsule multi-tenant clusters.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from responder import bench, commands, doctor, drill, manifests, protect, report
    from responder.lab import cli as lab_cli

    commands.add_parsers(sub)
    report.add_parser(sub)
    manifests.add_parser(sub)
    doctor.add_parser(sub)
    protect.add_parser(sub)
    drill.add_parser(sub)
    bench.add_parser(sub)
    lab_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ResponderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
