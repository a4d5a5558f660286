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
    from responder import report
    from responder.cli import approve, guard, respond
    from responder.drill import bench, command as drill_command
    from responder.ops import check, doctor, guard_manifests, manifests, protect
    from responder.lab import cli as lab_cli

    respond.add_parsers(sub)
    report.add_parser(sub)
    guard_manifests.add_parser(manifests.add_parser(sub))
    doctor.add_parser(sub)
    protect.add_parser(sub)
    check.add_parser(sub)
    drill_command.add_parser(sub)
    bench.add_parser(sub)
    lab_cli.add_parser(sub)
    guard.add_parser(sub)
    approve.add_parser(sub)
    return parser


# Loggers of the HTTP stack that must never log below INFO, whatever -v says: at DEBUG, hpack logs every
# encoded HTTP/2 header block ("Encoded header block to b'...'"), which decodes offline to the bearer
# token (its "sensitive" marking only covers the HPACK table); httpcore traces every connection and
# request at DEBUG. h2 and h11 do not log today (h2 4.x, h11 0.16); they are capped in case a version
# does. httpx's INFO line (method, URL, status) stays available with -v.
QUIET_LOGGERS = {"hpack": logging.WARNING, "h2": logging.WARNING, "h11": logging.WARNING,
                 "httpcore": logging.INFO, "httpx": logging.INFO}


def configure_logging(verbose: int) -> None:
    """-v: INFO, -vv: DEBUG, on stderr; the HTTP stack capped (QUIET_LOGGERS) so no -v level logs
    credentials."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from responder.incident.detect import DETECTION_LOGGER

    # Detection's decisions (routine work at INFO) are what an operator reads to trust the watch.
    logging.getLogger(DETECTION_LOGGER).setLevel(min(level, logging.INFO))
    for name, floor in QUIET_LOGGERS.items():
        # Never below the root's level either: a logger's own level overrides the root's, so INFO here
        # would switch httpx's request lines on without -v.
        logging.getLogger(name).setLevel(max(level, floor))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
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
