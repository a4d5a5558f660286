"""Headless commands: watch, plan, run, undo."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from responder.incident import triage
from responder.actions.breaker import holds_of, release_request, restore_match_conditions_patch
from responder.cluster.client import JSON_PATCH, MERGE_PATCH, KubeClient
from responder.cluster.kubeconfig import load_cluster_access
from responder.incident.engine import EngineEvent
from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK, ApiError, ConfigError, Forbidden, NotFound, Unauthorized
from responder.incident.journal import Journal, open_incident_journal
from responder.incident.observe import CapsuleTarget
from responder.response.session import Session, SessionOptions, default_journal_dir, resolve_runbook, summarize


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


def session_options(args: argparse.Namespace, *, runbook: str | None, dry_run: bool = False, auto: bool = True,
                    yes: bool = False) -> SessionOptions:
    extra = tuple(args.protect) + tuple(p for p in os.environ.get("RESPONDER_PROTECTED", "").split(",") if p)
    return SessionOptions(runbook=resolve_runbook(runbook), journal_dir=args.journal or default_journal_dir(),
                          dry_run=dry_run, auto=auto, yes=yes,
                          capsule=CapsuleTarget(args.capsule_namespace, args.capsule_deployment),
                          velero_namespace=args.velero_namespace, extra_protected=extra,
                          contain_only=bool(getattr(args, "contain_only", False)))


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


async def _headless_confirm(request) -> bool:
    return False  # headless never blocks on a prompt: destructive steps need --yes


def cmd_watch(args: argparse.Namespace) -> int:
    access = load_cluster_access(args.kubeconfig, args.context)
    options = session_options(args, runbook=args.runbook, dry_run=args.dry_run, auto=not args.confirm, yes=args.yes)
    if not args.headless:
        from responder.tui.app import TuiConfirmer, run_tui_async

        async def tui() -> int:
            confirmer = TuiConfirmer()  # shows the confirmation modal once the app runs
            session = Session(access, options, confirmer=confirmer)
            try:
                await session.preflight()  # before the UI: a refused or unreachable cluster fails in plain text
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
                return EXIT_OK
        assert session.trigger is not None and session.journal is not None
        print(f"INCIDENT {session.journal.incident_id}: {session.trigger.reason}", file=sys.stderr, flush=True)
        return None

    return asyncio.run(run_headless(access, options, watch_then_contain, args.output))


async def run_headless(access, options: SessionOptions, open_incident, output: str | None) -> int:
    """The headless lifecycle shared by watch and run: preflight, observe, open the incident
    (`open_incident` may return an exit code to stop early), contain, print the summary."""
    session = Session(access, options, confirmer=_headless_confirm)
    session.engine_listeners.append(HeadlessPrinter())
    # Automation stops a headless run with SIGTERM (systemd, a pod's deletion, a CI timeout): treated as
    # Ctrl-C, so it ends as "interrupted" (exit 5) with the journal to resume, not a silent 143.
    loop, this = asyncio.get_running_loop(), asyncio.current_task()
    terminated: list[bool] = []
    ended = False
    if this is not None:
        loop.add_signal_handler(signal.SIGTERM, lambda: (terminated.append(True), this.cancel()))
    try:
        await session.preflight()
        await session.start()
        early = await open_incident(session)
        if early is not None:
            return early
        await session.contain()
        if session.has_phase("recover") and not options.dry_run and not options.contain_only:
            # Recovery writes (Tenants, Restore, re-adoption) are confirmed steps: --yes, or they are skipped.
            await session.recover()
        summary = summarize(session)
        emit(summary, output)
        ended = True  # the summary names the journal
        if options.dry_run:
            return EXIT_OK
        recovered = summary.get("recovery") is None or summary["recovery"]["verified"]
        return EXIT_OK if summary["contained"] and recovered else EXIT_NOT_CONTAINED
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None  # cli: "interrupted", exit 5
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
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
        else:
            session.open_incident(Trigger("manual", "started by `responder run`", time.time()))

    return asyncio.run(run_headless(access, options, open_manual_incident, args.output))


def cmd_plan(args: argparse.Namespace) -> int:
    access = load_cluster_access(args.kubeconfig, args.context)
    options = session_options(args, runbook=args.runbook, dry_run=True)

    async def go() -> dict[str, Any]:
        session = Session(access, options)
        try:
            await session.preflight()
            await session.start()
            return build_plan(session)
        finally:
            await session.close()

    plan = asyncio.run(go())
    if args.output == "table":
        print_plan_table(plan)
    else:
        emit(plan, args.output)
    return EXIT_OK


def build_plan(session: Session) -> dict[str, Any]:
    from responder.actions.breaker import fails_closed, guards_namespace_delete

    view = session.view()
    rows = triage.triage(view)
    hooks = session.observer.capsule_webhooks()
    guarding = [f"{k}/{o['metadata']['name']}:{h['name']}" for k, o in hooks for h in o.get("webhooks") or []
                if guards_namespace_delete(h) and fails_closed(h)]
    deployment = next(iter(session.observer.objects("deployment")), None)
    replicas = (deployment or {}).get("spec", {}).get("replicas") if deployment else None
    at_risk = [r for r in rows if r.state == triage.NsState.AT_RISK]
    terminating = [r for r in rows if r.state == triage.NsState.TERMINATING]
    held = [t["metadata"]["name"] for t in view.tenants.values() if t["metadata"].get("deletionTimestamp")]
    steps = []
    for step in session.runbook.steps:
        if step.action == "trip-breaker":
            what = (f"scale {session.options.capsule.namespace}/{session.options.capsule.deployment} from {replicas} "
                    f"to 0; exempt {session.identity} in {len(hooks)} Capsule webhook configurations"
                    if guarding else "breaker unavailable (no fail-closed namespace webhook): rely on speed")
            what += ("; mark the armed namespace hold" if session.hold_not_armed is None
                     else f"; create the namespace hold (not armed: {session.hold_not_armed})")
        elif step.action == "detach-namespaces":
            what = f"detach {len(at_risk)} at-risk namespaces"
        elif step.action == "release-tenant-finalizers":
            what = f"release {len(held)} terminating Tenants once their namespaces are detached"
        elif step.action == "handle-terminating":
            what = f"report content of {len(terminating)} Terminating namespaces; finalize the empty ones"
        else:
            what = step.description
        steps.append({"id": step.id, "phase": step.phase, "action": step.action, "would": what})
    return {
        "context": session.access.context, "identity": session.identity,
        "tenant_crd": "deleting" if view.crd_deleting else ("present" if view.crd_present else "absent"),
        "tenants": len(view.tenants), "capsule_replicas": replicas, "breaker_webhooks": guarding,
        "hold_armed": session.hold_not_armed is None,
        "counts": triage.count_by_state(rows),
        "namespaces": [{"name": r.name, "tenant": r.tenant, "state": r.state.value, "reason": r.reason}
                       for r in rows if r.state != triage.NsState.SAFE or r.tenant],
        "steps": steps,
    }


def print_plan_table(plan: dict[str, Any]) -> None:
    print(f"context {plan['context']}  identity {plan['identity']}  Tenant CRD {plan['tenant_crd']}  "
          f"Tenants {plan['tenants']}  Capsule replicas {plan['capsule_replicas']}  "
          f"hold {'armed' if plan.get('hold_armed') else 'not armed'}")
    print("counts: " + ", ".join(f"{k}={v}" for k, v in plan["counts"].items() if v))
    rows = plan["namespaces"]
    if rows:
        w1 = max(9, *(len(r["name"]) for r in rows))
        w2 = max(6, *(len(r["tenant"] or "") for r in rows))
        print(f"{'NAMESPACE':<{w1}}  {'TENANT':<{w2}}  {'STATE':<11}  REASON")
        for r in rows:
            print(f"{r['name']:<{w1}}  {(r['tenant'] or '-'):<{w2}}  {r['state']:<11}  {r['reason']}")
    print("plan:")
    for s in plan["steps"]:
        print(f"  {s['id']:<18} {s['would']}")


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
            return await undo_journal(client, journal)

    try:
        result = asyncio.run(go())
    finally:
        journal.close()
    emit(result, args.output)
    return EXIT_OK if not result["failed"] and not result["unknown"] else EXIT_NOT_CONTAINED


async def undo_journal(client: KubeClient, journal: Journal) -> dict[str, Any]:
    """Revert, newest first, what the journal says is reversible; each undo is journaled too."""
    undone, skipped, failed, unknown = [], [], [], []
    plan = journal.undo_plan()
    hold_entries = [e for e in plan if _undoes_the_hold(e)]  # by what the cluster holds, below
    # Writes whose answer never came (a crash, a cut connection, a resent write refused by its guard)
    # may have been applied: each is undone only where the cluster shows it was.
    unanswered = [{"intent": r["seq"], "target": r["target"], "undo": r["undo"], "request": r.get("request") or {},
                   "unanswered": True}
                  for r in journal.pending()
                  if r.get("undo") and not r.get("dry_run") and r.get("step") != "undo"
                  and not _undoes_the_hold({"undo": r["undo"]})]
    entries = sorted([e for e in plan if e not in hold_entries] + unanswered, key=lambda e: -e["intent"])
    for entry in entries:
        payload = entry["undo"] or {}
        op = payload.get("op")
        if entry.get("unanswered") and op not in ("scale", "webhook-match-conditions", "reattach"):
            unknown.append({"target": entry["target"], "op": op,
                            "reason": "its answer never came: check by hand whether it was applied"})
            continue
        seq = journal.intent("undo", f"undo-{op}", entry["target"], request={"undo_of": entry["intent"]})
        try:
            if op == "scale":
                reason = await _scale_back(client, payload, entry) if entry.get("unanswered") else None
                if reason:
                    journal.outcome(seq, "skipped", detail=reason)
                    skipped.append({"target": entry["target"], "reason": reason})
                    continue
                await client.patch(payload["path"], {"spec": {"replicas": payload["replicas"]}}, patch_type=MERGE_PATCH)
            elif op == "webhook-match-conditions":
                await _restore_match_conditions(client, payload)
            elif op == "reattach":
                reason = await _reattach(client, payload)
                if reason:
                    journal.outcome(seq, "skipped", detail=reason)
                    skipped.append({"target": entry["target"], "reason": reason})
                    continue
            else:
                journal.outcome(seq, "skipped", detail=f"no undo for {op}")
                skipped.append({"target": entry["target"], "reason": f"no undo for {op}"})
                continue
        except ApiError as exc:
            journal.outcome(seq, "failed", detail=f"{exc.status} {exc.api_message[:200]}")
            if isinstance(exc, (Forbidden, Unauthorized)):
                raise  # every other undo would be refused too: stop, exit 4 with the fix
            failed.append({"target": entry["target"], "error": exc.api_message[:200]})
            continue
        journal.outcome(seq, "ok")
        journal.mark_undone(entry["intent"])
        undone.append({"op": op, "target": entry["target"]})
    # The namespace hold by what the cluster holds, not by the journal: a crash between its POST and the
    # journaled answer leaves it out of the undo plan, and a later incident may have taken it over.
    hold_failed = False
    for kind, obj in (await holds_of(client, journal.incident_id)).items():
        target = f"{kind}/{obj['metadata']['name']}"
        method, path, body, content_type = release_request(kind, obj)
        seq = journal.intent("undo", "undo-release-hold", target, request={"method": method, "path": path})
        try:
            await client.request(method, path, body=body, content_type=content_type)
        except NotFound:
            pass
        except ApiError as exc:
            journal.outcome(seq, "failed", detail=f"{exc.status} {exc.api_message[:200]}")
            if isinstance(exc, (Forbidden, Unauthorized)):
                raise
            failed.append({"target": target, "error": exc.api_message[:200]})
            hold_failed = True
            continue
        journal.outcome(seq, "ok")
        undone.append({"op": "release-hold", "target": target})
    if not hold_failed:
        for entry in hold_entries:
            journal.mark_undone(entry["intent"])
    return {"journal": str(journal.path), "undone": undone, "skipped": skipped, "failed": failed, "unknown": unknown}


async def _scale_back(client: KubeClient, payload: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """For a scale write whose answer never came: None if the cluster shows it applied (undo it),
    else why not."""
    wanted = ((entry["request"].get("body") or {}).get("spec") or {}).get("replicas")
    current = await client.get_or_none(payload["path"])
    if current is None:
        return "the Deployment is gone"
    replicas = (current.get("spec") or {}).get("replicas", 0)  # a Scale at 0 omits it
    if wanted is None or replicas != wanted:
        return f"not applied: replicas are {replicas}, the unanswered write asked for {wanted}"
    return None


def _undoes_the_hold(entry: dict[str, Any]) -> bool:
    op = (entry["undo"] or {}).get("op")
    return op == "release-hold"


async def _restore_match_conditions(client: KubeClient, payload: dict[str, Any]) -> None:
    current = await client.get(payload["path"])
    ops = restore_match_conditions_patch(current, payload["webhooks"])
    if ops:
        await client.patch(payload["path"], ops, patch_type=JSON_PATCH)


async def _reattach(client: KubeClient, payload: dict[str, Any]) -> str | None:
    """Put removed Tenant references back, but only where the Tenant is alive with the same UID:
    a reference to a gone Tenant would make the garbage collector delete the namespace."""
    ns = await client.get_or_none(f"/api/v1/namespaces/{payload['namespace']}")
    if ns is None or ns["metadata"].get("uid") != payload.get("uid"):
        return "namespace gone or replaced"
    refs = []
    carried = {r.get("uid") for r in ns["metadata"].get("ownerReferences") or []}
    for ref in payload.get("ownerReferences") or []:
        if ref.get("uid") in carried:
            continue  # still there (a detach whose answer never came and that was not applied)
        tenant = await client.get_or_none(f"/apis/capsule.clastix.io/v1beta2/tenants/{ref['name']}")
        if tenant is None or tenant["metadata"].get("uid") != ref.get("uid") or tenant["metadata"].get("deletionTimestamp"):
            return f"Tenant {ref['name']} is gone or being deleted: re-attaching would get the namespace deleted"
        refs.append(ref)
    if not refs:
        return "nothing to re-attach"
    existing = ns["metadata"].get("ownerReferences")
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": payload["uid"]}]
    if existing is None:
        ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": refs})
    else:
        ops.extend({"op": "add", "path": "/metadata/ownerReferences/-", "value": r} for r in refs)
    await client.patch(f"/api/v1/namespaces/{payload['namespace']}", ops, patch_type=JSON_PATCH)
    return None

