"""The cluster picture leaves the garbage collector's reach (the guard once its first lists are in, the TUI
once its table is loaded), and garbage is collected first, not frozen with it."""

from __future__ import annotations

import gc
import weakref

from responder.incident.observe import freeze_cluster_picture


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_collects_garbage_then_freezes_what_is_alive():
    gc.unfreeze()
    try:
        alive = [{"metadata": {"name": f"ns-{i}"}} for i in range(100)]
        garbage = _Node()
        garbage.peer = _Node()
        garbage.peer.peer = garbage  # a cycle: only the collector frees it
        gone = weakref.ref(garbage)
        del garbage
        assert gc.get_freeze_count() == 0
        freeze_cluster_picture()
        assert gone() is None  # collected, not frozen
        assert gc.get_freeze_count() > 0 and alive
    finally:
        gc.unfreeze()
