"""`python -m responder.tui.demo`: the TUI on a replayed Tenant CRD deletion, no cluster needed.

Nothing here talks to a cluster: `ReplaySession` plays a scripted incident (watch and engine events
shaped like the real ones) so the UI can be tried, recorded and tested end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from responder.tui.app import run_tui_async
from responder.tui.replay import ReplaySession, demo_scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m responder.tui.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=12)
    parser.add_argument("--per-tenant", type=int, default=8, help="namespaces per tenant")
    parser.add_argument("--speed", type=float, default=1.0, help="pause multiplier (0: as fast as possible)")
    parser.add_argument("--confirm", action="store_true", help="every step asks for confirmation")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--no-incident", action="store_true", help="only watch a healthy cluster")
    parser.add_argument("--journal-dir", type=Path, default=None, help="where the replayed journal goes")
    args = parser.parse_args(argv)
    scenario = demo_scenario(tenants=args.tenants, per_tenant=args.per_tenant, confirm_steps=args.confirm,
                             dry_run=args.dry_run, incident=not args.no_incident)
    journal_dir = args.journal_dir or Path(tempfile.mkdtemp(prefix="responder-demo-"))

    async def go() -> int:
        session = ReplaySession(scenario, journal_dir=journal_dir, speed=args.speed)
        try:
            return await run_tui_async(session)
        finally:
            await session.close()

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
