"""Headless commands: watch, plan, run, undo."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK, ConfigError
from responder.guard.gate_server import DeleteGateServer, GateEndpoint, server_tls
from responder.incident.journal import open_incident_journal
from responder.incident.observe import CapsuleTarget
from responder.response.console import HeadlessPrinter, cluster_flags, emit, positive_seconds
from responder.response.leadership import take_writer_lease
from responder.response.plan import build_plan, print_plan_table, recovery_evidence
from responder.response.session import Session, SessionOptions, default_journal_dir, resolve_runbook, summarize
from responder.response.undo import undo_journal


def add_parsers(sub: argparse._SubParsersAction) -> None:
    common = cluster_flags()
    watch = sub.add_parser("watch", parents=[common], help="watch the cluster; on an incident, run the runbook")
    watch.add_argument("--runbook")
    mode = watch.add_mutually_exclusive_group()
    mode.add_argument("--auto", action="store_true", help="containment steps run without asking (default headless)")
    mode.add_argument("--confirm", action="store_true", help="ask before every step")
    watch.add_argument("--dry-run", action="store_true", help="send every write with dryRun=All: nothing persists")
    watch.add_argument("--yes", action="store_true", help="pre-confirm destructive steps")
    watch.add_argument("--headless", action="store_true", help="no TUI: log lines on stderr, summary on stdout")
    watch.add_argument("--contain-only", action="store_true",
                       help="stop after containment; recover later with `run --resume JOURNAL`")
    watch.add_argument("--timeout", type=positive_seconds, default=None, help="give up watching after this many seconds")
    watch.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    add_gate_flags(watch)
    watch.set_defaults(handler=cmd_watch)

    plan = sub.add_parser("plan", parents=[common], help="what responder sees now and what it would do; never writes")
    plan.add_argument("--runbook")
    plan.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    plan.set_defaults(handler=cmd_plan)

    run = sub.add_parser("run", parents=[common], help="run a runbook now, or resume one after a crash")
    run.add_argument("runbook", nargs="?", help="runbook file (default: the shipped one); or --runbook FILE")
    run.add_argument("--runbook", dest="runbook_flag", metavar="FILE", help="the same as RUNBOOK, as watch and plan take it")
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--yes", action="store_true")
    run.add_argument("--resume", type=Path, metavar="JOURNAL", help="continue the incident in this journal")
    run.add_argument("--contain-only", action="store_true", help="run only the runbook's contain phase")
    run.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    run.set_defaults(handler=cmd_run)

    undo = sub.add_parser("undo", parents=[common], help="revert the reversible steps recorded in a journal")
    undo.add_argument("journal_file", type=Path, metavar="JOURNAL")
    undo.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    undo.set_defaults(handler=cmd_undo)


def add_gate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gate-listen", metavar="HOST:PORT", default="",
                        help="serve the delete gate (docs/delete-gate.md) over HTTPS here; off by default")
    parser.add_argument("--gate-cert-dir", type=Path, metavar="DIR",
                        help="the delete gate's serving certificate: DIR/tls.crt and DIR/tls.key (PEM)")


def gate_endpoint(args: argparse.Namespace) -> GateEndpoint | None:
    """The delete gate's address and TLS context from the flags; None when it is off. Bad flags fail here,
    before anything is read or written."""
    listen, cert_dir = getattr(args, "gate_listen", ""), getattr(args, "gate_cert_dir", None)
    if not listen:
        if cert_dir is not None:
            raise ConfigError("--gate-cert-dir without --gate-listen", fix="add --gate-listen HOST:PORT, e.g. "
                              "--gate-listen 0.0.0.0:8443, or drop --gate-cert-dir")
        return None
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--gate-listen {listen!r} is not HOST:PORT", fix="e.g. --gate-listen 0.0.0.0:8443")
    if cert_dir is None:
        raise ConfigError("--gate-listen without --gate-cert-dir: the API server calls webhooks over TLS only",
                          fix="add --gate-cert-dir DIR holding tls.crt and tls.key")
    return GateEndpoint(host.strip("[]"), int(port), server_tls(cert_dir))


def session_options(args: argparse.Namespace, *, runbook: str | None, dry_run: bool = False, auto: bool = True,
                    yes: bool = False) -> SessionOptions:
    extra = tuple(args.protect) + tuple(p for p in os.environ.get("RESPONDER_PROTECTED", "").split(",") if p)
    return SessionOptions(runbook=resolve_runbook(runbook), journal_dir=args.journal or default_journal_dir(),
                          dry_run=dry_run, auto=auto, yes=yes,
                          capsule=CapsuleTarget(args.capsule_namespace, args.capsule_deployment),
                          velero_namespace=args.velero_namespace, extra_protected=extra,
                          contain_only=bool(getattr(args, "contain_only", False)))


async def _headless_confirm(request) -> bool:
    return False  # headless never blocks on a prompt: destructive steps need --yes


def cmd_watch(args: argparse.Namespace) -> int:
    gate = gate_endpoint(args)
    if gate is not None and not args.headless:
        raise ConfigError("--gate-listen is served by the headless watch and the guard",
                          fix="add --headless, or run the guard (`responder guard --gate-listen ...`)")
    access = load_cluster_access(args.kubeconfig, args.context)
    options = session_options(args, runbook=args.runbook, dry_run=args.dry_run, auto=not args.confirm, yes=args.yes)
    if not args.headless:
        from responder.tui.app import TuiConfirmer, run_tui_async

        async def tui() -> int:
            confirmer = TuiConfirmer()  # shows the confirmation modal once the app runs
            session = Session(access, options, confirmer=confirmer)
            try:
                # Before the UI: a refused or unreachable cluster fails in plain text. Where a guard leads, the
                # TUI attaches to its incident (approvals only) instead of refusing.
                await session.preflight(attach=True)
                return await run_tui_async(session, confirmer=confirmer)
            finally:
                await session.close()
                if session.journal is not None:
                    print(f"incident journal: {session.journal.path}", file=sys.stderr)

        return asyncio.run(tui())

    async def watch_then_contain(session: Session) -> int | None:
        print(f"watching {access.display_server} as {session.identity} (context {access.context}, "
              f"{'DRY RUN' if options.dry_run else 'live'})", file=sys.stderr, flush=True)
        session.check_late_start()
        if not session.incident_opened.is_set():
            try:
                await session.wait_for_incident(args.timeout)  # raises what kept a detected one from opening
            except TimeoutError:
                print("no incident within the timeout", file=sys.stderr)
                emit({"incident": None, "detection": session.detection_summary()}, args.output)
                return EXIT_OK
        assert session.trigger is not None and session.journal is not None
        print(f"INCIDENT {session.journal.incident_id}: {session.trigger.reason}", file=sys.stderr, flush=True)
        return None

    return asyncio.run(run_headless(access, options, watch_then_contain, args.output, gate=gate))


async def run_headless(access, options: SessionOptions, open_incident, output: str | None, *,
                       on_session: Callable[[Session], None] | None = None,
                       gate: GateEndpoint | None = None) -> int:
    """The headless lifecycle shared by watch, run and guard: preflight, observe, open the incident
    (`open_incident` may return an exit code to stop early), contain, print the summary. `on_session`
    sees the session before its preflight (the guard gives it its Lease elector)."""
    session = Session(access, options, confirmer=_headless_confirm)
    if on_session is not None:
        on_session(session)
    session.engine_listeners.append(HeadlessPrinter())
    # Automation stops a headless run with SIGTERM (systemd, a pod's deletion, a CI timeout): treated as
    # Ctrl-C, so it ends as "interrupted" (exit 5) with the journal to resume, not a silent 143.
    loop, this = asyncio.get_running_loop(), asyncio.current_task()
    terminated: list[bool] = []
    ended = False
    if this is not None:
        loop.add_signal_handler(signal.SIGTERM, lambda: (terminated.append(True), this.cancel()))
    gate_server: DeleteGateServer | None = None
    try:
        await session.preflight()
        await session.start()
        if gate is not None:
            gate_server = DeleteGateServer(session.gate_decision, gate.context)
            await gate_server.start(gate.host, gate.port)
        early = await open_incident(session)
        if early is not None:
            return early
        await session.contain()
        if session.has_phase("recover") and not options.dry_run and not options.contain_only:
            # Recovery writes (Tenants, Restore, re-adoption) are confirmed steps: --yes, or they are skipped.
            await session.recover()
        summary = summarize(session)
        if summary.get("warning"):
            print(summary["warning"], file=sys.stderr, flush=True)
        emit(summary, output)
        ended = True  # the summary names the journal
        if options.dry_run:
            return EXIT_OK
        recovered = summary.get("recovery") is None or summary["recovery"]["verified"]
        # Capsule left at 0 by a run that was to recover is a failure, whatever else went well.
        left_down = bool(summary.get("warning")) and not options.contain_only
        return EXIT_OK if summary["contained"] and recovered and not left_down else EXIT_NOT_CONTAINED
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None  # cli: "interrupted", exit 5
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        if gate_server is not None:
            await gate_server.stop()
        await session.close()
        if session.journal is not None and not ended:
            print(f"incident journal: {session.journal.path} (resume with `responder run --resume` on it)",
                  file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    if args.runbook and args.runbook_flag and args.runbook != args.runbook_flag:
        raise ConfigError(f"two runbooks given: {args.runbook} and --runbook {args.runbook_flag}",
                          fix="name one runbook, as RUNBOOK or as --runbook FILE")
    args.runbook = args.runbook or args.runbook_flag
    journal = None
    if args.resume:
        journal = open_incident_journal(args.resume)
        meta = next((r for r in journal.records() if r.get("kind") == "incident-opened"), {})
        runbook = args.runbook or (meta.get("meta") or {}).get("runbook") or meta.get("runbook")
        dry_run = bool((meta.get("meta") or {}).get("dry_run", meta.get("dry_run", False))) or args.dry_run
        journal_dir = args.resume.parent
    else:
        runbook, dry_run, journal_dir = args.runbook, args.dry_run, None
    try:
        options = session_options(args, runbook=runbook, dry_run=dry_run, auto=True, yes=args.yes)
        access = load_cluster_access(args.kubeconfig, args.context)
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    if journal_dir is not None:
        options.journal_dir = journal_dir

    async def open_manual_incident(session: Session) -> None:
        from responder.incident.detect import Trigger

        if journal is not None:
            session.open_incident(Trigger("manual", f"resumed from {args.resume.name}", time.time()), journal=journal)
            journal.record("resumed", pending=[p["seq"] for p in journal.pending()])
        elif not session.incident_opened.is_set():  # the watches may have opened it already (one journal)
            session.open_incident(Trigger("manual", "started by `responder run`", time.time()))

    return asyncio.run(run_headless(access, options, open_manual_incident, args.output))


def cmd_plan(args: argparse.Namespace) -> int:
    access = load_cluster_access(args.kubeconfig, args.context)
    options = session_options(args, runbook=args.runbook, dry_run=True)
    options.read_only = True  # plans only: no journal directory, no shadow file

    async def go() -> dict[str, Any]:
        session = Session(access, options)
        try:
            await session.preflight()
            await session.start()
            return build_plan(session) | {"recovery": await recovery_evidence(session)}
        finally:
            await session.close()

    plan = asyncio.run(go())
    if args.output == "table":
        print_plan_table(plan)
    else:
        emit(plan, args.output)
    return EXIT_OK


def cmd_undo(args: argparse.Namespace) -> int:
    journal = open_incident_journal(args.journal_file)
    try:
        access = load_cluster_access(args.kubeconfig, args.context)
    except BaseException:
        journal.close()
        raise

    async def go() -> dict[str, Any]:
        async with KubeClient(access) as client:
            # Reachable at all? Fail as fast as the other commands' preflight (10 s), not after the
            # write-retry deadline.
            deadline, client.retry_deadline = client.retry_deadline, 10.0
            try:
                await client.get("/version")
            finally:
                client.retry_deadline = deadline
            lease = await take_writer_lease(client)  # one writer per cluster: undo writes too
            try:
                return await undo_journal(client, journal)
            finally:
                await lease.close()

    try:
        result = asyncio.run(go())
    finally:
        journal.close()
    emit(result, args.output)
    return EXIT_OK if not result["failed"] and not result["unknown"] else EXIT_NOT_CONTAINED


