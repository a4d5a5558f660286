"""`python -m responder.tui.bench`: how the TUI keeps up with a large incident. Prints JSON.

10,000 namespaces (100 tenants), all at risk; then the engine's detach changes their state at
1,000 per second for ~5 s, twice: "steady" (the rate spread over 10 ms ticks) and "burst" (1,000
changes at once every second). Each change is what the real engine and watch deliver: a `write`
engine event and the namespace's MODIFIED watch event (plus a step-progress per tick), and the two
journal records the engine writes for it (intent, outcome), so the TUI tails a growing journal; as
with the engine's batched writes, the intents are in the journal before the MODIFIED events arrive
and the `write` events are not emitted (the TUI learns what was detached from the journal).
The events are built before each phase and the journal lines are flushed once per tick: what is
measured is the TUI's work, not the replay's.

Measured:
- event-to-screen latency: from the event reaching the TUI to the end of the screen refresh that
  shows it (the model's coalesced changes are applied on a timer; `call_after_refresh` marks the end);
- key-press latency while the burst runs: a `down`/`up` key event is sent the way Pilot sends keys
  (through the test driver), timed until the table's cursor moved AND the screen refresh after that
  finished. (`Pilot.press` itself also waits for the process to go CPU-idle, up to 2 x 1 s, which
  would measure Pilot's idle detection during a burst, not the app.);
- frame time: the time spent applying one frame's changes to the widgets.

The app runs headless under Pilot: the compositor renders every frame but writes no bytes to a
terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from textual import events

from responder.cluster.watch import ADDED, MODIFIED, WatchEvent
from responder.incident.detect import Trigger
from responder.incident.engine import EngineEvent
from responder.tui.app import ResponderApp
from responder.tui.replay import (FIXED_EPOCH, TENANT_CRD, Hold, ReplaySession, Scenario, crd_obj, deployment_obj,
                                  namespace_obj, tenant_obj, webhook_obj)


def bench_scenario(namespaces: int, tenants: int) -> tuple[Scenario, list[tuple[str, str]]]:
    per = max(1, namespaces // tenants)
    tenant_names = [f"tenant-{i:03d}" for i in range(tenants)]
    names = [(t, f"{t}-ns-{j:04d}") for t in tenant_names for j in range(per)][:namespaces]
    ts = "2026-09-21T14:13:20Z"
    initial = [WatchEvent(ADDED, "crd", crd_obj(deleting=ts))]
    initial += [WatchEvent(ADDED, "tenants", tenant_obj(t)) for t in tenant_names]
    initial += [WatchEvent(ADDED, "namespaces", namespace_obj(n, t)) for t, n in names]
    initial += [WatchEvent(ADDED, "deployment", deployment_obj(0)),
                WatchEvent(ADDED, "validatingwebhooks", webhook_obj(exempt="responder"))]
    contain = [EngineEvent("step-started", "detach", {"action": "detach-namespaces", "description": "bench"}),
               Hold("bench")]
    trigger = Trigger("crd-deleting", f"the Tenant CRD {TENANT_CRD} is being deleted", FIXED_EPOCH, (TENANT_CRD,))
    return Scenario(initial=initial, trigger=trigger, contain=contain, identity="responder"), names


def percentiles(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"samples": 0}
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2)

    return {"samples": len(ordered), "p50": pct(50), "p90": pct(90), "p99": pct(99),
            "max": round(ordered[-1] * 1000, 2), "mean": round(statistics.fmean(ordered) * 1000, 2)}


async def produce(session: ReplaySession, todo: list[tuple[str, str]], *, rate: int, seconds: float,
                  tick: float, done_before: int, total: int) -> int:
    """Detach `rate` namespaces per second, `rate * tick` at each tick, for `seconds`."""
    per_tick = max(1, int(rate * tick))
    ticks = int(seconds / tick)
    batch, todo[:] = todo[:per_tick * ticks], todo[per_tick * ticks:]
    now = time.time()
    events = [(EngineEvent("write", "detach", {"action": "detach", "target": name, "method": "PATCH",
                                               "dry_run": False}, now),
               WatchEvent(MODIFIED, "namespaces", namespace_obj(name, tenant, rv=3, owned=False), now))
              for tenant, name in batch]
    journal = session.journal
    assert journal is not None
    journal.autoflush = False
    start = time.perf_counter()
    sent = 0
    for i in range(ticks):
        batch = events[i * per_tick:(i + 1) * per_tick]
        # As StepContext.write_many does: the batch's intents are journaled before its requests leave,
        # then the namespaces' MODIFIED events come back from the watch.
        for write, _ in batch:
            session.emit_engine(write, restamp=False)
        journal.flush()
        for n, (_, modified) in enumerate(batch):
            if n and n % 64 == 0:
                await asyncio.sleep(0)  # a burst still arrives over several reads of the stream
            session.emit_watch(modified, restamp=False)
            sent += 1
        session.emit_engine(EngineEvent("step-progress", "detach", {"done": done_before + sent, "total": total,
                                                                     "note": ""}), restamp=False)
        delay = start + (i + 1) * tick - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    journal.autoflush = True
    return sent


def send_key(app: ResponderApp, key: str) -> None:
    """What `Pilot.press` does for one key, without its wait for the process to go idle."""
    event = events.Key(key, None)
    event.set_sender(app)
    assert app._driver is not None
    app._driver.send_message(event)


async def phase(app: ResponderApp, pilot: Any, session: ReplaySession, todo: list[tuple[str, str]], *, rate: int,
                seconds: float, tick: float, done_before: int, total: int) -> dict[str, Any]:
    await app.settle()
    await pilot.pause()
    assert app.latency_samples is not None
    app.latency_samples.clear()
    app.flush_seconds.clear()
    keys: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    producer = asyncio.create_task(produce(session, todo, rate=rate, seconds=seconds, tick=tick,
                                           done_before=done_before, total=total))
    table = app.panel.table
    moved: list[asyncio.Future[None]] = []

    def cursor_moved(_: Any) -> None:
        if moved and not moved[-1].done():
            app.call_after_refresh(lambda f=moved[-1]: f.done() or f.set_result(None))

    app.watch(table, "cursor_coordinate", cursor_moved, init=False)
    key = 0
    while not producer.done():
        await asyncio.sleep(0.05)
        moved.append(asyncio.get_running_loop().create_future())
        t0 = time.perf_counter()
        send_key(app, "down" if key % 2 == 0 else "up")
        await asyncio.wait_for(moved[-1], 10)
        keys.append(time.perf_counter() - t0)
        key += 1
    sent = await producer
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    # Let the last frame land so its events are counted.
    for _ in range(5):
        await asyncio.sleep(app.flush_interval)
        await app.next_refresh()
    return {"rate_per_s": rate, "tick_ms": round(tick * 1000), "seconds": round(elapsed, 2), "changes": sent,
            "achieved_per_s": round(sent / elapsed, 1), "process_cpu_percent": round(100 * cpu / elapsed),
            "event_to_screen_ms": percentiles(list(app.latency_samples)),
            "keypress_ms": percentiles(keys), "frame_ms": percentiles(list(app.flush_seconds))}


async def run(namespaces: int, tenants: int, rate: int, seconds: float, size: tuple[int, int]) -> dict[str, Any]:
    scenario, names = bench_scenario(namespaces, tenants)
    journal_dir = Path(tempfile.mkdtemp(prefix="responder-tui-bench-"))
    session = ReplaySession(scenario, journal_dir=journal_dir, speed=0)
    app = ResponderApp(session, track_latency=True)
    t0 = time.perf_counter()
    async with app.run_test(size=size) as pilot:
        await session.reached("bench", timeout=120)
        while app.model.pending or not app.model.ready or app.panel.table.row_count < namespaces:
            await asyncio.sleep(0.02)
        await app.next_refresh()
        load = time.perf_counter() - t0
        rows = app.panel.table.row_count
        todo = list(names)
        steady = await phase(app, pilot, session, todo, rate=rate, seconds=seconds, tick=0.01, done_before=0,
                             total=namespaces)
        burst = await phase(app, pilot, session, todo, rate=rate, seconds=seconds, tick=1.0,
                            done_before=steady["changes"], total=namespaces)
        await app.settle()
        counts = dict(app.model.counts)
        session.release("bench")
        app.exit(0)
    await session.close()
    worst = max(steady["event_to_screen_ms"].get("p99", 0), burst["event_to_screen_ms"].get("p99", 0),
                steady["keypress_ms"].get("p99", 0), burst["keypress_ms"].get("p99", 0))
    return {"namespaces": namespaces, "tenants": tenants, "table_rows": rows, "terminal": f"{size[0]}x{size[1]}",
            "headless": True, "initial_load_s": round(load, 2), "steady": steady, "burst": burst,
            "final_counts": counts, "target_p99_ms": 100, "worst_p99_ms": worst, "meets_target": worst < 100,
            "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m responder.tui.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000, help="state changes per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase (steady, then burst)")
    parser.add_argument("--size", default="120x40", help="terminal WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.rate * args.seconds * 2 > args.namespaces:
        parser.error("need at least rate * seconds * 2 namespaces (each change detaches a new one)")
    result = asyncio.run(run(args.namespaces, args.tenants, args.rate, args.seconds, (width, height)))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
