"""Credentials in the cluster-access layer: what a token file may contain, that no header value ever
reaches an error message or the debug log, single flight for credential refreshes, and replacing the
connections when a reload brings new TLS material.

The behaviour against a real API server (a watch outliving a revoked token and an expired client
certificate, tls-server-name) is tests/lab/test_faults.py::test_watch_survives_credential_rotation.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest
import yaml

from responder import cli
from responder.cluster.client import Credentials, KubeClient, illegal_header_error, same_tls
from responder.cluster.kubeconfig import ClusterAccess, clean_authorization, load_cluster_access
from responder.cluster.pool import H1Pool, IllegalRequest
from responder.errors import ConfigError
from responder.lab.pki import LabPKI

from .test_pool import LocalServer

TOKEN = "eyJhbGciOiJSUzI1NiJ9.SECRET-PAYLOAD.SIG"


def _kubeconfig(path: Path, user: dict, *, server: str = "https://127.0.0.1:6443", cluster: dict | None = None) -> str:
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                    "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
                                    "users": [{"name": "u", "user": user}],
                                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


def _access(authorization: Callable[[], str | None] = lambda: "Bearer t",
            reload: Callable[[], ClusterAccess] | None = None, *, tls_identity: str = "tls-1",
            server: str = "https://127.0.0.1:6443", tls_server_name: str | None = None) -> ClusterAccess:
    return ClusterAccess(server=server, context="c", ssl_context=ssl.create_default_context(),
                         new_ssl_context=ssl.create_default_context, cert=None, tls_server_name=tls_server_name,
                         authorization=authorization, reload=reload or (lambda: _access()),
                         source="test", tls_identity=tls_identity)


# -- token files ------------------------------------------------------------------------------------------


def test_token_file_with_a_trailing_newline_is_trimmed(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")  # what `kubectl create token SA > file` writes
    access = load_cluster_access(_kubeconfig(tmp_path / "kc", {"tokenFile": str(token)}))
    assert access.authorization() == f"Bearer {TOKEN}"


@pytest.mark.parametrize("value, expected", [
    (f"Bearer {TOKEN}\n", f"Bearer {TOKEN}"),
    (f"Bearer {TOKEN}\r\n", f"Bearer {TOKEN}"),
    (f"  Bearer  {TOKEN} ", f"Bearer {TOKEN}"),
    ("Bearer \n", None),
    ("", None),
    (None, None),
    ("Basic dXNlcjpwYXNz", "Basic dXNlcjpwYXNz"),
    ("Bearer a\nb", "Bearer a\nb"),  # inside the token: left for the header check to refuse (below)
])
def test_clean_authorization(value, expected):
    assert clean_authorization(value) == expected


# -- a header value HTTP refuses ----------------------------------------------------------------------------


def _no_secret(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    assert "SECRET" not in str(exc) and "SECRET" not in text
    assert exc.__context__ is None and exc.__cause__ is None  # not even chained


@pytest.mark.parametrize("bulk", [False, True], ids=["httpx", "h11-pool"])
async def test_illegal_header_value_is_a_config_error_that_never_quotes_it(bulk):
    async def answer(request, body, n):
        return 200, [("Content-Type", "application/json"), ("Content-Length", "2")], b"{}"

    bad = "Bearer " + TOKEN.replace("-PAYLOAD", "\nPAYLOAD")  # a newline inside the token: not trimmed
    async with LocalServer(answer) as server:
        client = KubeClient(_access(lambda: bad, server=server.url), http2=False, retry_deadline=0.3)
        with pytest.raises(ConfigError) as caught:
            await client.request("PATCH" if bulk else "GET", "/api/v1/namespaces/x", body={} if bulk else None,
                                 bulk=bulk)
        await client.aclose()
    assert server.requests == []  # refused before anything was sent, and not retried as a connection failure
    assert "not allowed in an HTTP header" in str(caught.value) and "tokenFile" in str(caught.value)
    _no_secret(caught.value)


async def test_illegal_header_value_on_a_watch_stream():
    async def answer(request, body, n):
        return 200, [("Content-Length", "0")], b""

    async with LocalServer(answer) as server:
        client = KubeClient(_access(lambda: f"Bearer {TOKEN}\nX-Injected: 1", server=server.url), http2=False)
        with pytest.raises(ConfigError) as caught:
            async for _ in client.stream_lines("/api/v1/namespaces", {"watch": "true"}, read_timeout=5):
                pass
        await client.aclose()
    assert server.requests == []
    _no_secret(caught.value)


async def test_pool_refuses_an_illegal_header_without_quoting_it():
    pool = H1Pool("http://127.0.0.1:9", None)
    with pytest.raises(IllegalRequest) as caught:  # before any connection (nothing listens on port 9)
        await pool.request("GET", "/api", headers=[("Authorization", f"Bearer {TOKEN}\n")])
    _no_secret(caught.value)
    await pool.aclose()


def test_illegal_header_error_names_the_fix():
    error = illegal_header_error("https://api.example:6443")
    assert error.fix and "tokenFile" in error.message and "https://api.example:6443" in error.message


# -- -vv does not log the HTTP stack's DEBUG records ------------------------------------------------------


@pytest.fixture
def restore_logging():
    names = ["", *cli.QUIET_LOGGERS]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_vv_caps_the_http_stack_loggers(restore_logging, capsys):
    assert cli.main(["-vv", "manifests", "rbac"]) == 0  # a command that needs no cluster
    capsys.readouterr()
    # hpack's DEBUG "Encoded header block" decodes offline to the bearer token.
    for name in ("hpack.hpack", "hpack", "h2", "h11", "httpcore.http2", "httpcore.connection", "httpx"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)  # the request lines -v shows


def test_without_v_the_caps_do_not_switch_httpx_info_on(restore_logging):
    cli.configure_logging(0)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    cli.configure_logging(1)
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert not logging.getLogger("hpack.hpack").isEnabledFor(logging.INFO)


# -- single flight -------------------------------------------------------------------------------------------


class Counting:
    """A reload / authorization stand-in that takes `delay` seconds in its worker thread (as an exec
    plugin does) and counts its calls and how many ran at once."""

    def __init__(self, delay: float = 0.05, result=None, error: Exception | None = None) -> None:
        self.delay, self.result, self.error = delay, result, error
        self.calls = self.running = self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        if self.error is not None:
            raise self.error
        return self.result() if callable(self.result) else self.result


async def test_a_burst_of_401s_reloads_once():
    reload = Counting(result=lambda: _access(lambda: "Bearer new", reload))
    creds = Credentials(_access(lambda: "Bearer old", reload))
    assert await creds.current() == ("Bearer old", 0)
    await asyncio.gather(*(creds.reload(0) for _ in range(64)))
    assert (reload.calls, creds.generation, creds.reloads) == (1, 1, 1)
    assert await creds.current() == ("Bearer new", 1)
    # A 401 to generation-0 credentials that arrives late: newer ones exist, nothing to reload.
    await creds.reload(0)
    assert reload.calls == 1
    # Refused again with the new credentials: a new generation reloads.
    await creds.reload(1)
    assert (reload.calls, creds.generation) == (2, 2)


async def test_a_failed_reload_is_shared_and_retried_later():
    reload = Counting(error=ConfigError("kubeconfig k is not valid YAML at line 3", fix="repair it"))
    creds = Credentials(_access(reload=reload))
    results = await asyncio.gather(*(creds.reload(0) for _ in range(16)), return_exceptions=True)
    assert all(isinstance(r, ConfigError) for r in results) and reload.calls == 1
    assert creds.generation == 0
    reload.error, reload.result = None, lambda: _access(lambda: "Bearer fixed")
    await creds.reload(0)
    assert reload.calls == 2 and await creds.current() == ("Bearer fixed", 1)


async def test_the_periodic_reread_is_single_flight():
    authorization = Counting(result="Bearer t")
    creds = Credentials(_access(authorization), reread_after=60)
    results = await asyncio.gather(*(creds.current() for _ in range(64)))
    assert set(results) == {("Bearer t", 0)} and authorization.calls == 1
    await creds.current()
    assert authorization.calls == 1  # fresh for 60 s
    creds._fetched_at = time.monotonic() - 61  # the re-read is due
    await asyncio.gather(*(creds.current() for _ in range(64)))
    assert authorization.calls == 2 and authorization.max_running == 1


async def test_a_header_read_before_a_reload_is_not_kept_after_it():
    slow = Counting(delay=0.2, result="Bearer old")
    creds = Credentials(_access(slow, reload=lambda: _access(lambda: "Bearer new")))
    reading = asyncio.create_task(creds.current())
    await asyncio.sleep(0.05)  # the old credentials' read is in flight
    await creds.reload(0)
    assert await reading == ("Bearer new", 1)


async def test_a_client_sends_each_401_burst_to_one_reload_and_retries():
    """KubeClient wiring: requests that got a 401 under one generation share one reload."""
    reload = Counting(result=lambda: _access(lambda: "Bearer new"))
    client = KubeClient(_access(lambda: "Bearer old", reload))
    _, generation = await client._headers()
    await asyncio.gather(*(client._reauthenticate(generation) for _ in range(32)))
    headers, generation = await client._headers()
    assert reload.calls == 1 and generation == 1 and headers["Authorization"] == "Bearer new"
    await client.aclose()


# -- TLS material --------------------------------------------------------------------------------------------


def _pki(tmp_path: Path) -> LabPKI:
    pki = LabPKI(tmp_path / "pki")
    pki.ensure()
    return pki


def _rewrite_client_cert(pki: LabPKI, user: str, cert: Path, key: Path) -> None:
    pair = pki.client(user)
    cert.write_bytes(pair.cert.read_bytes())
    key.write_bytes(pair.key.read_bytes())


def test_tls_identity_follows_the_certificate_files(tmp_path):
    pki = _pki(tmp_path)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    _rewrite_client_cert(pki, "old-user", cert, key)
    kubeconfig = _kubeconfig(tmp_path / "kc", {"client-certificate": str(cert), "client-key": str(key)},
                             cluster={"certificate-authority": str(pki.ca.cert)})
    access = load_cluster_access(kubeconfig)
    assert access.tls_identity and same_tls(access, access.reload())
    _rewrite_client_cert(pki, "new-user", cert, key)  # rotated on disk, same paths
    rotated = access.reload()
    assert rotated.cert == access.cert and not same_tls(access, rotated)
    token = load_cluster_access(_kubeconfig(tmp_path / "kc2", {"token": "t"},
                                            cluster={"certificate-authority": str(pki.ca.cert)}))
    renamed = load_cluster_access(_kubeconfig(tmp_path / "kc3", {"token": "t"}, cluster={
        "certificate-authority": str(pki.ca.cert), "tls-server-name": "kube.internal"}))
    assert renamed.tls_server_name == "kube.internal" and not same_tls(token, renamed)


async def test_new_tls_material_replaces_the_connections():
    new = _access(lambda: "Bearer t", tls_identity="tls-2", tls_server_name="kube.internal")
    client = KubeClient(_access(lambda: "Bearer t", reload=lambda: new))
    client._http.headers["User-Agent"] = "racer/1"
    old_http, old_watch = client._http, client._h1_http()
    await client._reauthenticate(0)
    assert client._http is not old_http and client._h1_http() is not old_watch
    assert client._http.headers["User-Agent"] == "racer/1"  # what the caller set is kept
    assert client._extensions() == {"sni_hostname": "kube.internal"}
    assert not old_http.is_closed  # requests in flight finish on it; closed with the client
    await client.aclose()
    assert old_http.is_closed and old_watch.is_closed


async def test_a_reload_with_the_same_tls_material_keeps_the_connections():
    client = KubeClient(_access(lambda: "Bearer t", reload=lambda: _access(lambda: "Bearer u")))
    old_http = client._http
    await client._reauthenticate(0)
    assert client._http is old_http and client._extensions() is None
    await client.aclose()
