"""`responder drill --kubeconfig K [--context C] --target C`: the drill on an existing sandbox cluster.

A drill deletes the Tenant CRD (or every Tenant) of the cluster it runs on, so it refuses to run
unless `--target` repeats the name of the context in use (the --context given, else the kubeconfig's
current-context). The decision is a pure function of the flags and the kubeconfig's contexts, made
before any request is sent.

What the drill creates on the cluster is labelled `responder.dev/drill=<drill id>` (Tenants and
namespaces) so that the clean-up at the end deletes exactly those, and nothing else.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from responder.actions.breaker import holds_of, release_request
from responder.cluster.client import KubeClient
from responder.cluster.kubeconfig import ClusterAccess, list_contexts, load_cluster_access
from responder.errors import ConfigError
from responder.drill.scenarios import TENANTS_PATH

DRILL_LABEL = "responder.dev/drill"


@dataclass(frozen=True)
class GuardDecision:
    allowed: bool
    context: str | None  # the context the drill would run on
    message: str


def target_guard(*, target: str | None, context: str | None, current_context: str | None,
                 contexts: list[str]) -> GuardDecision:
    """May a drill run? Only if `target` names the context in use (pure: no cluster access)."""
    in_use = context or current_context
    if context is not None and context not in contexts:
        return GuardDecision(False, None, f"context {context!r} is not in the kubeconfig "
                             f"(contexts: {', '.join(contexts) or 'none'}); the drill writes nothing")
    if in_use is None:
        return GuardDecision(False, None, "the kubeconfig has no current-context and no --context was given; "
                             "the drill writes nothing")
    if target is None:
        return GuardDecision(False, in_use, f"refusing to drill on context {in_use!r} without --target: "
                             f"a drill deletes the Tenant CRD of the cluster it runs on. Re-run with "
                             f"--target {in_use} if {in_use!r} is a sandbox; nothing was written")
    if target != in_use:
        return GuardDecision(False, in_use, f"refusing to drill: --target {target!r} is not the context in use "
                             f"({in_use!r}{', from --context' if context else ', the current-context'}); "
                             "nothing was written")
    return GuardDecision(True, in_use, f"drilling on context {in_use!r} (--target matches)")


def check_target(kubeconfig: str | None, context: str | None, target: str | None) -> GuardDecision:
    """Read only the kubeconfig's context names, then decide."""
    contexts, current = list_contexts(kubeconfig)
    return target_guard(target=target, context=context, current_context=current, contexts=contexts)


def new_drill_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class ExistingCluster:
    """A drill target that is not the embedded lab: the drill seeds, runs responder and the incident
    as the kubeconfig's identity, and cleans up what it seeded."""

    def __init__(self, kubeconfig: str | None, context: str | None, drill_id: str) -> None:
        self.kubeconfig = kubeconfig
        self.access: ClusterAccess = load_cluster_access(kubeconfig, context)
        self.context = self.access.context
        self.drill_id = drill_id
        self._versions: dict[str, Any] = {}
        self.dir = None

    def admin_client(self) -> KubeClient:
        return KubeClient(self.access)

    async def responder_access(self, admin: KubeClient) -> ClusterAccess:
        return self.access  # responder runs as the kubeconfig's identity

    async def probe(self, admin: KubeClient) -> None:
        version = await admin.get("/version")
        deployment = await admin.get_or_none(
            "/apis/apps/v1/namespaces/capsule-system/deployments/capsule-controller-manager")
        image = ""
        for c in (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
            image = c.get("image") or image
        self._versions = {"kubernetes_version": version.get("gitVersion"),
                          "capsule_version": image.rsplit(":", 1)[-1] if ":" in image else (image or None)}

    def state(self) -> dict[str, Any]:
        return dict(self._versions)

    @property
    def labels(self) -> dict[str, str]:
        return {DRILL_LABEL: self.drill_id}

    @property
    def prefix(self) -> str:
        return f"drill-{self.drill_id.rsplit('-', 1)[-1]}"


async def cleanup(admin: KubeClient, drill_id: str, *, incident: str | None = None,
                  timeout: float = 120.0) -> dict[str, Any]:
    """Delete exactly what the drill seeded (by its label) and wait for the namespaces and Tenants to go.

    First the drill incident's namespace hold, if recovery did not get to remove it (it would refuse
    the deletes). Namespaces next, then Tenants: deleting a Tenant first would let Capsule >= 0.13's
    finalizer delete its namespaces itself (the cleanup would still end clean, but could not say what it did)."""
    selector = f"{DRILL_LABEL}={drill_id}"
    result: dict[str, Any] = {"label": selector, "namespaces_deleted": 0, "namespaces_already_terminating": 0,
                              "tenants_deleted": 0, "hold_removed": [], "errors": []}
    if incident:
        for kind, obj in (await holds_of(admin, incident)).items():
            method, path, body, content_type = release_request(kind, obj)
            await admin.request(method, path, body=body, content_type=content_type)
            result["hold_removed"].append(kind)
    listing = await admin.list_all("/api/v1/namespaces", labelSelector=selector)
    for ns in listing["items"]:
        if ns["metadata"].get("deletionTimestamp"):
            result["namespaces_already_terminating"] += 1
            continue
        try:
            await admin.delete(f"/api/v1/namespaces/{ns['metadata']['name']}")
            result["namespaces_deleted"] += 1
        except Exception as exc:  # reported, not fatal: the rest still gets cleaned
            result["errors"].append(f"namespace {ns['metadata']['name']}: {exc}")
    tenants = await admin.get_or_none(TENANTS_PATH, labelSelector=selector)
    for t in (tenants or {}).get("items") or []:
        try:
            await admin.delete(f"{TENANTS_PATH}/{t['metadata']['name']}")
            result["tenants_deleted"] += 1
        except Exception as exc:
            result["errors"].append(f"Tenant {t['metadata']['name']}: {exc}")
    # Gone, not just deleting: a Tenant of Capsule >= 0.13 stays (Terminating) until Capsule's
    # finalizer has run (seen in CI: one still listed right after the cleanup).
    deadline = time.monotonic() + timeout
    left: list[str] = []
    tenants_left: list[str] = []
    while time.monotonic() < deadline:
        left = [n["metadata"]["name"] for n in
                (await admin.list_all("/api/v1/namespaces", labelSelector=selector))["items"]]
        tenants_left = [t["metadata"]["name"] for t in
                        ((await admin.get_or_none(TENANTS_PATH, labelSelector=selector)) or {}).get("items") or []]
        if not left and not tenants_left:
            break
        await asyncio.sleep(1.0)
    result["namespaces_left"] = left
    result["tenants_left"] = tenants_left
    return result


def drill_journal_dir(journal: str | None):
    from pathlib import Path

    from responder.response.session import default_journal_dir

    return Path(journal) if journal else default_journal_dir()


def refuse(message: str) -> ConfigError:
    return ConfigError(message, fix="pass --target with the name of the context the drill should run on")



def cmd_drill_existing(args) -> int:
    """The drill on the cluster of --kubeconfig/--context, guarded by --target, cleaned up at the end."""
    import sys

    from responder.response.console import emit
    from responder.drill.lab_drill import drill_options, print_scorecard, run_drill
    from responder.errors import EXIT_NOT_CONTAINED, EXIT_OK
    from responder.drill.scenarios import restore

    decision = check_target(args.kubeconfig, args.context, args.target)
    if not decision.allowed:
        raise refuse(decision.message)
    out = sys.stderr
    drill_id = new_drill_id()
    cluster = ExistingCluster(args.kubeconfig, decision.context, drill_id)
    print(f"drill {drill_id}: {decision.message}; everything seeded is labelled {DRILL_LABEL}={drill_id}",
          file=out, flush=True)
    options = drill_options(args) | {"capsule": None, "target": decision.context, "drill_id": drill_id}

    async def go() -> dict[str, Any]:
        async with cluster.admin_client() as admin:
            await cluster.probe(admin)
        card: dict[str, Any] = {}
        progress: dict[str, Any] = {}
        try:
            card = await run_drill(cluster, tenants=args.tenants, per_tenant=args.namespaces_per_tenant,
                                   observe=args.observe, journal_dir=drill_journal_dir(args.journal),
                                   scenario=args.scenario, options=options, labels=cluster.labels,
                                   prefix=cluster.prefix, progress=progress)
        finally:
            async with cluster.admin_client() as admin:
                restored = await restore(admin, progress.get("fault_injection") or {})
                if args.keep:
                    print(f"drill {drill_id}: --keep: what it seeded stays ({DRILL_LABEL}={drill_id})", file=out)
                    cleaned = {"label": f"{DRILL_LABEL}={drill_id}", "kept": True}
                else:
                    print(f"drill {drill_id}: cleaning up what it seeded ({DRILL_LABEL}={drill_id})", file=out,
                          flush=True)
                    cleaned = await cleanup(admin, drill_id, incident=progress.get("incident"))
            if card:
                card["cleanup"] = cleaned | {"fault_injection_restored": restored}
        return card

    card = asyncio.run(go())
    if args.output:
        emit(card, args.output)
    else:
        print_scorecard(card)
        print(f"  cleanup                      {card['cleanup']}")
    return EXIT_OK if card["passed"] else EXIT_NOT_CONTAINED
