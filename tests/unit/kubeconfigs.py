"""Kubeconfigs for tests that must not reach a cluster."""

from __future__ import annotations

from pathlib import Path

# A closed port: a command using it stays in its preflight's retries until it gives up (10 s).
UNREACHABLE = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-used}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
"""


def unreachable_kubeconfig(directory: Path) -> Path:
    path = directory / "kubeconfig"
    path.write_text(UNREACHABLE)
    return path
