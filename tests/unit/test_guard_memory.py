"""The guard's cluster picture leaves the garbage collector's reach once every required first list is in,
and not before (objects still arriving would be frozen half-built, and garbage with them)."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

from responder.guard.replica import freeze_once_listed
from responder.incident.observe import OPTIONAL_STREAMS


async def test_freezes_only_after_every_required_first_list():
    optional = next(iter(OPTIONAL_STREAMS))
    names = ["crd", "tenants", "namespaces", "deployment", optional]
    observer = SimpleNamespace(watches=dict.fromkeys(names), synced={n: asyncio.Event() for n in names})
    gc.unfreeze()
    try:
        task = asyncio.create_task(freeze_once_listed(observer))
        for name in names[:-2]:
            observer.synced[name].set()
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert not task.done() and gc.get_freeze_count() == 0  # "deployment" not listed yet
        observer.synced["deployment"].set()  # the optional stream never lists: not waited for
        await asyncio.wait_for(task, 5)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
