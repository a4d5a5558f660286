"""What every command shares: the cluster flags, number arguments, and output (-o json|yaml, one line
per engine event on stderr)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from responder.incident.engine import EngineEvent


def cluster_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG, merged, or ~/.kube/config)")
    common.add_argument("--context", help="the kubeconfig context to use")
    common.add_argument("--capsule-namespace", default="capsule-system")
    common.add_argument("--capsule-deployment", default="capsule-controller-manager")
    common.add_argument("--velero-namespace", default="velero")
    common.add_argument("--protect", action="append", default=[], metavar="NAMESPACE",
                        help="never touch this namespace (repeatable; also $RESPONDER_PROTECTED, comma-separated)")
    common.add_argument("--journal", type=Path, default=None, metavar="DIR",
                        help="where incident journals and the shadow copy live (default ~/.local/state/responder/incidents)")
    return common


def positive_number(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number of `unit` above 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number of {unit} above 0, got {text!r}")
        return value

    parse.__name__ = f"positive_{unit}"  # argparse names the type in its error messages
    return parse


positive_seconds = positive_number("seconds")


def emit(data: Any, fmt: str | None) -> None:
    if fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(json.dumps(data, indent=2))


class HeadlessPrinter:
    """One line per engine event on stderr: what an on-call engineer tails in a CI log."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream

    def __call__(self, event: EngineEvent) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at)) + f".{int(event.at * 1000) % 1000:03d}"
        d = dict(event.data)
        if event.kind == "step-started":
            line = f"step {event.step}: started ({d.get('action')})"
        elif event.kind == "step-finished":
            line = f"step {event.step}: {d.get('status')} - {d.get('summary', '')}"
        elif event.kind == "step-progress":
            line = f"step {event.step}: {d.get('done')}/{d.get('total')} {d.get('note', '')}".rstrip()
        elif event.kind == "log":
            line = f"step {event.step}: {d.get('level', 'info').upper()}: {d.get('message')}"
        elif event.kind == "confirm":
            line = f"step {event.step}: needs confirmation: {d.get('summary')} (run with --yes to pre-confirm)"
        else:
            return
        print(f"{stamp} {line}", file=self.stream, flush=True)
