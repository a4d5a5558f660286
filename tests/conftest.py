"""Shared fixtures. Tests under tests/lab need the local lab (built by `responder lab build`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from responder.lab.control_plane import Lab

LAB_ROOT = Path(os.environ.get("RESPONDER_TEST_LAB_ROOT", "/tmp/responder-test-labs"))


class LabManager:
    """One lab runs at a time (Capsule's health port is fixed), so tests share it by Capsule line and
    destructive tests ask for a fresh one."""

    def __init__(self) -> None:
        self.current: Lab | None = None
        self.line: str | None = None

    async def get(self, line: str, *, fresh: bool = False) -> Lab:
        """Async tests call this; starting a lab blocks, so it runs in a thread."""
        import asyncio

        return await asyncio.to_thread(self.get_sync, line, fresh=fresh)

    def get_sync(self, line: str, *, fresh: bool = False) -> Lab:
        lab = Lab(LAB_ROOT / f"capsule-{line}")
        if self.current is not None and (self.line != line or fresh):
            self.current.down(wipe=True)
            self.current = None
        if self.current is None:
            for other in ("0.14", "0.12"):  # leftovers of an interrupted run
                Lab(LAB_ROOT / f"capsule-{other}").down(wipe=True)
        if not fresh and self.current is not None and not self._healthy(lab):
            fresh = True  # an earlier test ran an incident on it (CRD deleted, Capsule scaled down)
        if fresh or self.current is None:
            lab.down(wipe=True)
            lab.up(capsule=line, out=sys.stderr)
        self.current, self.line = lab, line
        return lab

    def release(self) -> None:
        """Stop the shared lab so a test can start its own (one lab per machine)."""
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
        if self.current is not None:
            self.current.down(wipe=os.environ.get("RESPONDER_KEEP_LAB") is None)


@pytest.fixture(scope="session")
def lab_manager():
    manager = LabManager()
    yield manager
    manager.close()


@pytest.fixture(scope="session", params=["0.14", "0.12"])
def capsule_line(request) -> str:
    """Session-scoped so pytest groups the tests of one Capsule line together."""
    return request.param
