"""A watch stream that stops after its first list is restarted, and said so, rather than left dead
while the others go on (detection would be blind to that resource). Before the first list a stream's
error is start()'s to report (403 -> exit 4). No cluster: each stream here is a scripted sequence of
watch events standing in for a ResourceWatch."""

from __future__ import annotations

import asyncio
import logging

import pytest

from responder.cluster.watch import ADDED, SYNCED, WatchEvent
from responder.errors import Forbidden, Unauthorized
from responder.incident.observe import ClusterObserver


class ScriptedStream:
    """events() plays the next script each time it is called; a script ends by raising or by waiting."""

    def __init__(self, name: str, scripts: list[list[object]]) -> None:
        self.name = name
        self.scripts = scripts
        self.calls = 0

    async def events(self):
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        for item in script:
            if isinstance(item, BaseException):
                raise item
            yield item
        await asyncio.Event().wait()  # a healthy stream: nothing more for now


def _synced(name: str) -> WatchEvent:
    return WatchEvent(SYNCED, name, {"metadata": {"resourceVersion": "1"}})


def _namespace(name: str) -> WatchEvent:
    return WatchEvent(ADDED, "namespaces", {"metadata": {"name": name, "resourceVersion": "2"}})


def _observer(namespaces: ScriptedStream) -> ClusterObserver:
    observer = ClusterObserver(client=None, velero_namespace=None)  # type: ignore[arg-type]
    observer.watches = {name: (namespaces if name == "namespaces" else ScriptedStream(name, [[_synced(name)]]))
                        for name in observer.watches}
    return observer


async def test_a_stream_that_stops_after_its_first_list_is_restarted_and_reported(caplog):
    unauthorized = Unauthorized(401, "Unauthorized", "token expired", method="WATCH", path="/api/v1/namespaces")
    namespaces = ScriptedStream("namespaces", [[_synced("namespaces"), unauthorized],
                                               [_synced("namespaces"), _namespace("tenant-ns-1")]])
    observer = _observer(namespaces)
    observer.restart_delay = 0.01
    seen: list[str] = []
    observer.subscribe(lambda e: seen.append(e.object["metadata"].get("name", "")) if e.type == ADDED else None)
    with caplog.at_level(logging.WARNING, logger="responder.incident.observe"):
        await observer.start(sync_timeout=5)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        await observer.stop()
    assert seen == ["tenant-ns-1"]  # the restarted stream delivers what came after
    assert namespaces.calls == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("BLIND: the namespaces watch stopped (Unauthorized") for m in messages)
    assert any("namespaces watch is back" in m for m in messages)
    assert observer.stream_errors == {}


async def test_before_its_first_list_a_stream_error_is_what_start_raises():
    forbidden = Forbidden(403, "Forbidden", "cannot watch namespaces", method="WATCH", path="/api/v1/namespaces")
    observer = _observer(ScriptedStream("namespaces", [[forbidden]]))
    with pytest.raises(Forbidden):
        await observer.start(sync_timeout=5)
    await observer.stop()

