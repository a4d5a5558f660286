"""`responder guard`: the always-on entry point, run as a cluster's Deployment (responder.guard.replica)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
from urllib.parse import urlsplit

from responder.cli.respond import add_gate_flags, gate_endpoint, run_headless, session_options
from responder.cluster.kubeconfig import ClusterAccess, load_cluster_access
from responder.errors import ConfigError
from responder.guard.gate_server import GateEndpoint
from responder.guard.notify import Notifier, Sink, sinks_from
from responder.guard.replica import Guard
from responder.response.console import cluster_flags
from responder.response.session import SessionOptions

DEFAULT_PORT = 8080
WEBHOOK_ENV = "RESPONDER_WEBHOOK_URL"  # the webhook's URL is its secret: from a Secret, not the command line


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
    guard.add_argument("--alertmanager", action="append", default=[], metavar="URL",
                       help="send alerts to this Alertmanager (its base URL; POST /api/v2/alerts); repeat for each "
                            "member of an Alertmanager cluster")
    guard.add_argument("--webhook-env", default=WEBHOOK_ENV, metavar="VAR",
                       help=f"the environment variable holding a JSON webhook's URL (Slack-compatible incoming "
                            f"webhook; default {WEBHOOK_ENV}; unset or empty: no webhook)")
    guard.add_argument("--cluster-name", default="",
                       help="the cluster label of every alert (default: the kubeconfig context, or the API server)")
    add_gate_flags(guard)
    guard.set_defaults(handler=cmd_guard)


def cmd_guard(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port", fix="pass a port from 1 to 65535 (or 0: any free one)")
    gate = gate_endpoint(args)  # its flags checked before anything is read
    access = load_cluster_access(args.kubeconfig, args.context)  # in-cluster (ServiceAccount) without a kubeconfig
    options = session_options(args, runbook=args.runbook, auto=True, yes=True)
    # Recovery runs only as approved on the Incident (or at once with --recovery auto).
    options.confirm_recovery = args.recovery == "approval"
    sinks = sinks_from([_sink_url(url, "--alertmanager") for url in args.alertmanager],
                       _sink_url(os.environ.get(args.webhook_env, "").strip(), f"${args.webhook_env}") or None)
    return asyncio.run(_run(access, options, args, sinks, gate))


async def _run(access: ClusterAccess, options: SessionOptions, args: argparse.Namespace, sinks: list[Sink],
               gate: GateEndpoint | None) -> int:
    notifier = Notifier(sinks) if sinks else None
    respond = functools.partial(run_headless, gate=gate)  # each session the guard runs serves the gate
    return await Guard(access, options, respond=respond, bind=args.bind, port=args.port, output=args.output,
                       notifier=notifier, cluster_name=args.cluster_name, recovery=args.recovery).run()


def _sink_url(url: str, where: str) -> str:
    """`url` if it is an http(s) URL; the message never quotes it (a webhook's URL is its credential)."""
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise ConfigError(f"{where} is not an http(s) URL", fix=f"set {where} to http(s)://HOST[:PORT][/PATH]")
    return url
