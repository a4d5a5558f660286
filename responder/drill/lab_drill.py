"""`responder drill`: a game day on the embedded lab, end to end, with a scorecard.

Start a fresh lab (building it first if needed), seed tenants with content, start responder as its
own identity, delete the Tenant CRD, let responder respond in auto mode, verify and score.
Also `--bench`: the same incident at several sizes, measured (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from responder.incident import triage
from responder.cluster.kubeconfig import load_cluster_access
from responder.response.console import HeadlessPrinter, emit
from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK
from responder.lab.build import CAPSULE_VERSIONS
from responder.lab.apply import bind_cluster_admin
from responder.lab.control_plane import Lab
from responder.lab.seed import seed
from responder.response.session import Session, SessionOptions, recovery_summary, resolve_runbook


def cmd_drill_lab(args: argparse.Namespace) -> int:
    """The drill on a fresh embedded lab of its own."""
    state_dir = args.state_dir or (Lab().dir.parent / "drill-lab")
    lab = Lab(state_dir)
    out = sys.stderr
    print(f"drill: starting a fresh lab in {lab.dir} (Capsule {CAPSULE_VERSIONS[args.capsule]})", file=out, flush=True)
    lab.down(wipe=True)
    lab.up(capsule=args.capsule, velero=True, out=out)
    try:
        card = asyncio.run(run_drill(lab, tenants=args.tenants, per_tenant=args.namespaces_per_tenant,
                                     observe=args.observe, journal_dir=lab.dir / "incidents",
                                     scenario=args.scenario, options=drill_options(args),
                                     tui=wants_tui(args)))
    finally:
        if not args.keep:
            lab.down(wipe=False)
    if args.output:
        emit(card, args.output)
    else:
        print_scorecard(card)
    return EXIT_OK if card["passed"] else EXIT_NOT_CONTAINED


def wants_tui(args: argparse.Namespace) -> bool:
    """The TUI unless --headless, -o, or no terminal to show it on (CI, pipes)."""
    return not args.headless and not args.output and sys.stdin.isatty() and sys.stdout.isatty()


def drill_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options a drill ran with, as the scorecard records them."""
    return {"scenario": args.scenario, "capsule": args.capsule, "no_backup": bool(args.no_backup),
            "target": args.target or "embedded-lab", "tenants": args.tenants,
            "namespaces_per_tenant": args.namespaces_per_tenant}


async def run_drill(lab: Any, *, tenants: int, per_tenant: int, observe: float, journal_dir: Path,
                    scenario: str = "crd-deletion", options: dict[str, Any] | None = None,
                    labels: dict[str, str] | None = None, prefix: str = "tenant",
                    progress: dict[str, Any] | None = None, tui: bool = False) -> dict[str, Any]:
    """`lab` is the embedded Lab or a existing.ExistingCluster (admin_client, state, ...);
    `progress` gets the scenario's fault injection as soon as it is made (to undo it even on failure);
    `tui`: responder runs in its Textual app (the operator watches, then quits to see the scorecard)."""
    from responder.drill import scenarios

    out = sys.stderr
    async with lab.admin_client() as admin:
        print(f"drill: seeding {tenants} tenants x {per_tenant} namespaces with content ...", file=out, flush=True)
        seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=per_tenant, labels=labels, prefix=prefix)
        print(f"drill: seeded {len(seeded.namespaces)} namespaces in {seeded.seconds:.1f}s", file=out, flush=True)
        backup = None
        if isinstance(lab, Lab) and lab.state().get("velero") and not (options or {}).get("no_backup"):
            from responder.lab.velero import create_schedule_and_backup

            print("drill: taking a Velero backup (Schedule lab-daily, first run now) ...", file=out, flush=True)
            backup = (await create_schedule_and_backup(admin, out=out))["metadata"]["name"]
        if isinstance(lab, Lab):
            responder_kubeconfig = lab.mint_user("responder")
            await bind_cluster_admin(admin, "responder")
            access = load_cluster_access(str(responder_kubeconfig))
            # Set up as `responder doctor` recommends: the namespace hold armed ahead of the incident.
            from responder.ops.protect import arm_hold

            await arm_hold(admin)
            print("drill: namespace hold armed (responder protect --only hold)", file=out, flush=True)
        else:
            access = await lab.responder_access(admin)
        prepared = await scenarios.prepare(admin, scenario)
        if progress is not None:
            progress["fault_injection"] = prepared
        if prepared:
            print(f"drill: scenario {scenario}: Capsule's namespace webhooks now fail open "
                  f"(failurePolicy Ignore)", file=out, flush=True)
        driver = TuiDriver() if tui else HeadlessDriver()
        session = Session(access, SessionOptions(runbook=resolve_runbook(None), journal_dir=journal_dir, yes=True),
                          confirmer=driver.confirmer)
        await session.preflight()
        await driver.start(session)
        try:
            namespaces = set(seeded.namespaces)
            driver.say(f"drill: {_INCIDENT[scenario]} (the incident)")
            sent = await scenarios.trigger(admin, scenario)
            await session.wait_for_incident(30)
            if progress is not None and session.journal is not None:
                progress["incident"] = session.journal.incident_id  # its namespace hold, if the drill stops early
            alive_at_detection = sum(1 for n in session.observer.objects("namespaces")
                                     if n["metadata"]["name"] in namespaces
                                     and not n["metadata"].get("deletionTimestamp"))
            contained_at, recovered_at = await driver.respond(session)
            breaker_data = session.results["breaker"].data if "breaker" in session.results else {}
            breaker, hold = breaker_data.get("breaker"), breaker_data.get("hold")
            if breaker == "unavailable":
                driver.say("drill: BREAKER UNAVAILABLE - no Capsule webhook refuses namespace DELETEs (failurePolicy "
                           "Ignore): " + ("only responder's namespace hold refused the deleters" if hold == "held"
                                          else "responder could only race the deleters (detach speed)")
                           + ". See the scorecard.")
            while time.time() < sent + observe:
                await asyncio.sleep(1)
            listing = await admin.list_all("/api/v1/namespaces")
            live = {n["metadata"]["name"]: n for n in listing["items"]}
            tenants_after = await _live_tenants(admin)
            alive = [n for n in namespaces if n in live and not live[n]["metadata"].get("deletionTimestamp")]
            if session.journal is not None:
                session.journal.record("scorecard", namespaces={"seeded": len(namespaces), "saved": len(alive),
                                                                "lost": len(namespaces) - len(alive)})
        except BaseException:
            await driver.abandon()
            raise
        finally:
            await session.close()
    records = session.journal.records() if session.journal else []
    trig = session.trigger
    first_write = next((r for r in records if r.get("kind") == "intent"), None)
    saved = [n for n in namespaces if n in live and not live[n]["metadata"].get("deletionTimestamp")]
    terminating = [n for n in namespaces if n in live and live[n]["metadata"].get("deletionTimestamp")]
    gone = [n for n in namespaces if n not in live]
    detach = session.results.get("detach")
    still_at_risk = _still_at_risk(saved, live, tenants_after)
    readopted = [n for n in saved if triage.tenant_refs(live[n]) and n not in still_at_risk]
    recovered = recovery_summary(session) or {}
    restored_names = next((r for r in reversed(records) if r.get("kind") == "recovery-restore"), {}).get("restored") or []
    restored = len(set(restored_names) & set(saved))  # back at the end
    card = {
        "capsule": lab.state().get("capsule_version"), "kubernetes": lab.state().get("kubernetes_version"),
        "namespaces_seeded": len(namespaces), "alive_at_detection": alive_at_detection,
        # lost: went during the incident (recovery's count); present: there at the end (saved or restored).
        "saved": len(saved) - restored, "present_at_end": len(saved),
        # lost: every namespace that went in the incident, whether recovery brought it back or not.
        "lost": len(terminating) + len(gone) + restored,
        "restored": restored, "re_adopted": len(readopted),
        "backup": backup, "recovery_verified": bool(recovered.get("verified")),
        "detection_latency_s": round(trig.event_received - sent, 4) if trig else None,
        "first_write_after_detection_ms": round((_ts(first_write["ts"]) - trig.event_received) * 1000, 1)
        if trig and first_write else None,
        "time_to_contain_s": round(contained_at - sent, 3),
        "time_to_recover_s": round(recovered_at - sent, 3),
        "detach_per_second": (detach.data.get("per_second") if detach else None),
        "still_at_risk": len(still_at_risk),
        "scenario": scenario, "options": options or {"scenario": scenario},
        "breaker": breaker, "namespace_hold": hold, "namespace_hold_armed": session.hold_not_armed is None,
        "breaker_verified": (session.results["verify-breaker"].data.get("breaker")
                                                 if "verify-breaker" in session.results else None),
        "fault_injection": prepared,
        "steps": {sid: r.status for sid, r in session.results.items()},
        "journal": str(session.journal.path) if session.journal else None,
        "recovery": recovered,
    }
    # Passed: every seeded namespace is there at the end and owned by its (recreated) Tenant.
    card["passed"] = len(saved) == len(namespaces) and len(readopted) == len(namespaces) and not still_at_risk
    if session.journal is not None:
        from responder.report import build_report, render_markdown

        report_path = session.journal.path.with_suffix(".md")
        report_path.write_text(render_markdown(build_report(records, journal_path=session.journal.path)))
        card["report"] = str(report_path)
    await driver.finish(card)
    return card


class HeadlessDriver:
    """Runs the session's phases itself and prints progress on stderr."""

    confirmer = None  # SessionOptions(yes=True): no step asks

    def __init__(self) -> None:
        self.printer = HeadlessPrinter()

    async def start(self, session: Session) -> None:
        session.engine_listeners.append(self.printer)
        await session.start()

    def say(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    async def respond(self, session: Session) -> tuple[float, float]:
        await session.contain()
        contained_at = time.time()
        await session.recover()
        return contained_at, time.time()

    async def abandon(self) -> None:
        pass

    async def finish(self, card: dict[str, Any]) -> None:
        pass


class TuiDriver:
    """The session runs in responder's Textual app, exactly as `responder watch` runs it; the drill
    only triggers the incident and reads the outcome. The scorecard is printed after the operator quits."""

    TERMINAL = ("contained", "not-contained", "recovered", "not-recovered", "dry-run-done", "error")

    def __init__(self) -> None:
        from responder.tui.app import TuiConfirmer

        self.confirmer = TuiConfirmer()
        self.app: Any = None
        self.task: asyncio.Task | None = None
        self._logging: Any = None

    async def start(self, session: Session) -> None:
        from responder.tui.app import ResponderApp, logging_into

        self.app = ResponderApp(session, confirmer=self.confirmer)
        self._logging = logging_into(self.app)
        self._logging.__enter__()
        self.task = asyncio.create_task(self.app.run_async(), name="drill-tui")
        await self._until(lambda: self.app.model.phase in ("watching",) + self.TERMINAL, 120)
        if self.app.failure is not None:
            raise self.app.failure

    def say(self, message: str) -> None:
        if self.app is not None:
            self.app.model.add_note(message, at=time.time())

    async def _until(self, condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.task is not None and self.task.done():
                raise RuntimeError("the TUI was closed before the drill finished")
            if time.monotonic() > deadline:
                raise TimeoutError("the drill timed out waiting for responder")
            await asyncio.sleep(0.05)

    async def respond(self, session: Session) -> tuple[float, float]:
        await self._until(lambda: self.app.contain_done or self.app.failure is not None, 1800)
        contained_at = time.time()
        await self._until(lambda: self.app.model.phase in self.TERMINAL, 3600)
        if self.app.failure is not None:
            raise self.app.failure
        return contained_at, time.time()

    async def abandon(self) -> None:
        if self.app is not None and self.task is not None and not self.task.done():
            self.app.exit(EXIT_NOT_CONTAINED)
            await asyncio.gather(self.task, return_exceptions=True)
        self._restore_logging()

    async def finish(self, card: dict[str, Any]) -> None:
        verdict = "PASSED" if card["passed"] else "FAILED"
        self.say(f"drill {verdict}: {card['present_at_end']} of {card['namespaces_seeded']} namespaces present, "
                 f"{card['re_adopted']} re-adopted; press q to quit and print the scorecard")
        self.app.notify(f"DRILL {verdict} - press q for the scorecard", timeout=3600,
                        severity="information" if card["passed"] else "error")
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        self._restore_logging()

    def _restore_logging(self) -> None:
        if self._logging is not None:
            self._logging.__exit__(None, None, None)
            self._logging = None


_INCIDENT = {"crd-deletion": "deleting the Tenant CRD", "tenant-mass-deletion": "deleting every Tenant at once",
             "breaker-unavailable": "deleting the Tenant CRD with the breaker unavailable"}


async def _live_tenants(admin: Any) -> dict[str, dict[str, Any]]:
    """Tenants that exist and are not being deleted (uid -> Tenant); none if the type is gone."""
    from responder.drill.scenarios import TENANTS_PATH

    try:
        listing = await admin.list_all(TENANTS_PATH)
    except Exception:
        return {}
    return {t["metadata"]["uid"]: t for t in listing["items"] if not t["metadata"].get("deletionTimestamp")}


def _still_at_risk(saved: list[str], live: dict[str, Any], tenants: dict[str, Any]) -> list[str]:
    """Alive namespaces that still point at a Tenant that is gone or being deleted: not saved yet."""
    return [n for n in saved if any(ref.get("uid") not in tenants for ref in triage.tenant_refs(live[n]))]


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def print_scorecard(card: dict[str, Any]) -> None:
    lines = [
        f"DRILL {'PASSED' if card['passed'] else 'FAILED'}  (Kubernetes {card['kubernetes']}, Capsule {card['capsule']})",
        f"  namespaces seeded            {card['namespaces_seeded']}",
        f"  saved (alive, not deleted)   {card['saved']}",
        f"  lost                         {card['lost']}",
        f"  alive but still at risk      {card.get('still_at_risk')}",
        f"  scenario                     {card.get('scenario')}"
        + ("   BREAKER UNAVAILABLE: " + ("only the namespace hold refused the deleters"
                                         if card.get("namespace_hold") == "held" else "containment relied on speed")
           if card.get("breaker") == "unavailable" else ""),
        f"  breaker / namespace hold     {card.get('breaker')} / {card.get('namespace_hold')}"
        + (" (armed ahead)" if card.get("namespace_hold_armed") else ""),
        f"  options                      {card.get('options')}",
        f"  backup                       {card.get('backup') or 'none'}",
        f"  restored / re-adopted        {card['restored']} / {card['re_adopted']}",
        f"  present at the end           {card.get('present_at_end')} of {card['namespaces_seeded']}",
        f"  detection latency            {card['detection_latency_s']} s",
        f"  first write after detection  {card['first_write_after_detection_ms']} ms",
        f"  time to contain              {card['time_to_contain_s']} s",
        f"  time to recover              {card.get('time_to_recover_s')} s",
        f"  detach throughput            {card['detach_per_second']} namespaces/s",
        f"  journal                      {card['journal']}",
        f"  postmortem report            {card.get('report')}",
        f"  recovery verified            {card.get('recovery_verified')}"
        + (f"   (could not restore: {', '.join((card.get('recovery') or {}).get('unrestorable') or [])})"
           if (card.get('recovery') or {}).get('unrestorable') else ""),
    ]
    print("\n".join(lines))

