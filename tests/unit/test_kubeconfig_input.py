"""Kubeconfigs that are wrong in ways kubectl reports clearly: a user entry that is not a mapping, an
exec plugin that fails, a password in the server URL (masked wherever the URL is shown). Nothing here
connects to a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from responder.cluster.kubeconfig import load_cluster_access, mask_url_password
from responder.errors import ConfigError

BASE = """
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}"}}}}]
users: [{{name: u, user: {user}}}]
contexts: [{{name: ctx, context: {{cluster: c, user: u}}}}]
current-context: ctx
"""


def _kubeconfig(tmp_path: Path, *, user: str = "{token: t}", server: str = "https://127.0.0.1:1") -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(BASE.format(user=user, server=server))
    return str(path)


def test_a_user_entry_that_is_not_a_mapping_is_named_with_its_section(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        load_cluster_access(_kubeconfig(tmp_path, user="sekret-token-123"))
    assert "users[0] (u).user is not a mapping" in str(err.value)
    assert "sekret-token-123" not in str(err.value)


def test_an_exec_plugin_that_fails_is_a_config_error_naming_it(tmp_path: Path):
    user = "{exec: {apiVersion: client.authentication.k8s.io/v1, command: sh, args: ['-c', 'exit 1'], interactiveMode: Never}}"
    with pytest.raises(ConfigError) as err:
        load_cluster_access(_kubeconfig(tmp_path, user=user))
    assert "the exec credential plugin 'sh' of context 'ctx' gave no credentials" in str(err.value)


def test_an_exec_plugin_that_answers_gives_its_token(tmp_path: Path):
    plugin = tmp_path / "plugin.sh"
    plugin.write_text("#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\","
                      "\"status\":{\"token\":\"from-the-plugin\"}}'\n")
    plugin.chmod(0o755)
    user = f"{{exec: {{apiVersion: client.authentication.k8s.io/v1, command: {plugin}, interactiveMode: Never}}}}"
    access = load_cluster_access(_kubeconfig(tmp_path, user=user))
    assert access.authorization() == "Bearer from-the-plugin"


def test_a_password_in_the_server_url_is_masked_for_display(tmp_path: Path):
    access = load_cluster_access(_kubeconfig(tmp_path, server="https://bob:sekret-token-123@127.0.0.1:6443"))
    assert access.display_server == "https://bob:***@127.0.0.1:6443"
    assert mask_url_password("https://127.0.0.1:6443") == "https://127.0.0.1:6443"
    assert mask_url_password("https://bob@host") == "https://bob@host"
