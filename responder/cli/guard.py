"""`responder guard`: the always-on entry point, run as a cluster's Deployment (responder.guard.replica)."""

from __future__ import annotations

import argparse
import asyncio

from responder.cli.respond import run_headless, session_options
from responder.cluster.kubeconfig import load_cluster_access
from responder.errors import ConfigError
from responder.guard.replica import Guard
from responder.response.console import cluster_flags

DEFAULT_PORT = 8080


def add_parser(sub: argparse._SubParsersAction) -> None:
    guard = sub.add_parser("guard", parents=[cluster_flags()],
                           help="run always on (in the cluster): watch, detect, contain; one leader among replicas "
                                "through the writer Lease; health and metrics on --port")
    guard.add_argument("--runbook")
    guard.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"health and metrics port: /healthz, /readyz, /metrics (default {DEFAULT_PORT}; "
                            "0: a free port, printed on stderr)")
    guard.add_argument("--bind", default="0.0.0.0", help="the address the endpoint listens on (default 0.0.0.0)")
    guard.add_argument("--recovery", choices=["approval", "auto"], default="approval",
                       help="approval (default): each recovery step that asks for a confirmation waits until it is "
                            "approved on the Incident (`responder approve INCIDENT STEP`); auto: recovery runs at once")
    guard.add_argument("-o", "--output", choices=["json", "yaml"], default=None,
                       help="the incident's summary on stdout once contained")
    guard.set_defaults(handler=cmd_guard)


def cmd_guard(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port", fix="pass a port from 1 to 65535 (or 0: any free one)")
    access = load_cluster_access(args.kubeconfig, args.context)  # in-cluster (ServiceAccount) without a kubeconfig
    options = session_options(args, runbook=args.runbook, auto=True, yes=True)
    # Recovery runs only as approved on the Incident (or at once with --recovery auto).
    options.confirm_recovery = args.recovery == "approval"
    return asyncio.run(Guard(access, options, respond=run_headless, bind=args.bind, port=args.port,
                             output=args.output, recovery=args.recovery).run())
