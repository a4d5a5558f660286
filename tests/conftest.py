"""Shared fixtures. Tests under tests/lab need the local lab (built by `responder lab build`)."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

import pytest

from responder.lab.build import ensure_built
from responder.lab.control_plane import Lab

LAB_ROOT = Path(os.environ.get("RESPONDER_TEST_LAB_ROOT", "/tmp/responder-test-labs"))
# Test sessions on one machine take turns with the lab (Capsule's health port is fixed): a session holds
# this lock from its first lab until it ends, and the others wait for it.
MACHINE_LAB_LOCK = Path(os.environ.get("RESPONDER_LAB_LOCK", "/tmp/responder-lab.lock"))


# What the lab tests start: the Kubernetes parts, helm, both Capsule lines, Velero and Alertmanager.
LAB_COMPONENTS = ["k8s", "helm", "capsule-0.14", "capsule-0.12", "alertmanager", "velero"]
# What a `while_building` test needs: all but Velero, which `responder lab build` builds last.
EARLY_COMPONENTS = LAB_COMPONENTS[:-1]


def _is_lab(item: pytest.Item) -> bool:
    return item.get_closest_marker("lab") is not None


def _is_early(item: pytest.Item) -> bool:
    return _is_lab(item) and item.get_closest_marker("while_building") is not None


def _lab_binaries_ready(components: list[str]) -> None:
    """Build what is missing of the lab, or wait for the build `./dev test` runs in the background. Only a
    `while_building` test (no Velero, nothing timed) starts while Velero still compiles; every other lab test
    starts once the machine is no longer compiling (its timings would be the build's)."""
    ensure_built(components, out=sys.__stderr__)


def _needs(item: pytest.Item) -> list[str]:
    return EARLY_COMPONENTS if _is_early(item) else LAB_COMPONENTS


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The lab tests last (in their order, the `while_building` ones first), so the others run while the
    lab's binaries build."""
    items.sort(key=lambda item: (_is_lab(item), not _is_early(item)))
    if items and _is_lab(items[0]) and not config.option.collectonly:
        _lab_binaries_ready(_needs(items[0]))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # Waited for here, outside any lab test, so the wait counts against no test's timeout.
    if nextitem is not None and _is_lab(nextitem) and (not _is_lab(item) or _is_early(item) != _is_early(nextitem)):
        _lab_binaries_ready(_needs(nextitem))


class LabManager:
    """One lab runs at a time (Capsule's health port is fixed), so tests share it by Capsule line and
    destructive tests ask for a fresh one."""

    def __init__(self) -> None:
        self.current: Lab | None = None
        self.line: str | None = None
        self._lock_fd: int | None = None
        self.starts = 0  # labs started, and the time they took (down and up), told at the session's end
        self.start_seconds = 0.0

    def _hold_machine_lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(MACHINE_LAB_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"lab: another test session holds {MACHINE_LAB_LOCK}; waiting for it", file=sys.stderr)
            started = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            print(f"lab: got the machine lab lock after {time.monotonic() - started:.0f}s", file=sys.stderr)
        self._lock_fd = fd

    async def get(self, line: str, *, fresh: bool = False, velero: bool = False) -> Lab:
        """Async tests call this; starting a lab blocks, so it runs in a thread."""
        import asyncio

        return await asyncio.to_thread(self.get_sync, line, fresh=fresh, velero=velero)

    def get_sync(self, line: str, *, fresh: bool = False, velero: bool = False) -> Lab:
        self._hold_machine_lock()
        lab = Lab(LAB_ROOT / f"capsule-{line}")
        if velero and self.current is not None and not self.current.state().get("velero"):
            fresh = True
        if self.current is not None and (self.line != line or fresh):
            self.current.down(wipe=True)
            self.current = None
        if self.current is None:
            for other in ("0.14", "0.12"):  # leftovers of an interrupted run
                Lab(LAB_ROOT / f"capsule-{other}").down(wipe=True)
        if not fresh and self.current is not None and not self._healthy(lab):
            fresh = True  # an earlier test ran an incident on it (CRD deleted, Capsule scaled down)
        if fresh or self.current is None:
            started = time.monotonic()
            lab.down(wipe=True)
            lab.up(capsule=line, velero=velero, out=sys.stderr)
            self.starts += 1
            self.start_seconds += time.monotonic() - started
        self.current, self.line = lab, line
        return lab

    def release(self) -> None:
        """Stop the shared lab so a test can start its own (one lab per machine)."""
        self._hold_machine_lock()  # kept: the caller starts its own lab next
        if self.current is not None:
            self.current.down(wipe=True)
            self.current = self.line = None

    @staticmethod
    def _healthy(lab: Lab) -> bool:
        """The Tenant CRD is there and not deleting, and Capsule runs."""
        import asyncio

        async def probe() -> bool:
            async with lab.admin_client() as client:
                crd = await client.get_or_none(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tenants.capsule.clastix.io")
                deployment = await client.get_or_none(
                    "/apis/apps/v1/namespaces/capsule-system/deployments/capsule-controller-manager")
            return bool(crd and not crd["metadata"].get("deletionTimestamp") and deployment
                        and deployment["spec"].get("replicas") == 1)

        try:
            return asyncio.run(probe())
        except Exception:
            return False

    def close(self) -> None:
        if self.starts:
            print(f"\nlab: {self.starts} labs started for the tests, in {self.start_seconds:.0f}s", file=sys.__stderr__)
        if self.current is not None:
            self.current.down(wipe=os.environ.get("RESPONDER_KEEP_LAB") is None)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


@pytest.fixture(scope="session")
def lab_manager():
    manager = LabManager()
    yield manager
    manager.close()


@pytest.fixture(scope="session", params=["0.14", "0.12"])
def capsule_line(request) -> str:
    """Session-scoped so pytest groups the tests of one Capsule line together."""
    return request.param
