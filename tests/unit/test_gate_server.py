"""The delete gate's HTTPS endpoint, over a real TLS connection on loopback: what the API server would send."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from responder.cli.respond import gate_endpoint
from responder.errors import ConfigError
from responder.guard.gate_server import DeleteGateServer, server_tls
from responder.incident.delete_gate import (ALLOW_NOT_TENANT, DENY_RECENT, GateDecision, GatePicture, GateRequest,
                                            GateSettings, decide)
from responder.lab.pki import LabPKI

from .test_admission_review import GC_DELETE

T0 = 1_000_000.0
TENANT_UID = GC_DELETE["request"]["oldObject"]["metadata"]["ownerReferences"][0]["uid"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[Path, Path]:
    """(certificate directory with tls.crt/tls.key for 127.0.0.1, the CA that signed it)."""
    root = tmp_path_factory.mktemp("pki")
    lab_pki = LabPKI(root / "pki")
    lab_pki.ensure()
    pair = lab_pki.serving("delete-gate")
    cert_dir = root / "gate"
    cert_dir.mkdir()
    shutil.copy(pair.cert, cert_dir / "tls.crt")
    shutil.copy(pair.key, cert_dir / "tls.key")
    return cert_dir, lab_pki.ca.cert


def gate_decide(now: float):
    # Tenant tenant-001 seen deleted 2 s before `now`: within the 10 s window.
    picture = GatePicture(listed_at=T0 - 60, tenants={}, deleted_at={TENANT_UID: now - 2.0})
    seen: list[GateRequest] = []

    def decide_now(request: GateRequest) -> GateDecision:
        seen.append(request)
        return decide(request, picture, GateSettings(), now)

    return decide_now, seen


async def exchange(port: int, ca: Path, requests: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw HTTP/1.1 requests over one TLS connection, in order; read each response."""
    context = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    out = []
    try:
        for raw in requests:
            writer.write(raw)
            await writer.drain()
            status = (await reader.readline()).decode().split()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
            out.append((int(status[1]), headers, body))
    finally:
        writer.close()
    return out


def post(body: bytes, path: str = "/delete-gate", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


@asynccontextmanager
async def serving(pki) -> AsyncIterator[tuple[DeleteGateServer, list[GateRequest]]]:
    """The gate's server on a free loopback port, deciding as `gate_decide(T0)`; the requests it decided on."""
    decide_now, seen = gate_decide(T0)
    server = DeleteGateServer(decide_now, server_tls(pki[0]))
    await server.start("127.0.0.1", 0)
    try:
        yield server, seen
    finally:
        await server.stop()


async def test_a_review_over_tls_is_answered_and_the_connection_kept(pki):
    other = copy.deepcopy(GC_DELETE)
    other["request"]["uid"] = "second"
    other["request"]["oldObject"]["metadata"].pop("labels")
    other["request"]["oldObject"]["metadata"].pop("ownerReferences")
    async with serving(pki) as (server, seen):
        answers = await exchange(server.port, pki[1], [post(json.dumps(GC_DELETE).encode()),
                                                        post(json.dumps(other).encode())])
    (code1, _, body1), (code2, _, body2) = answers  # two answers on one connection: keep-alive
    deny, allow = json.loads(body1)["response"], json.loads(body2)["response"]
    assert code1 == code2 == 200
    assert deny["uid"] == GC_DELETE["request"]["uid"] and deny["allowed"] is False
    assert deny["status"]["code"] == 403 and "Tenant tenant-001 deleted 2.0s ago" in deny["status"]["message"]
    assert allow == {"uid": "second", "allowed": True, "auditAnnotations": {"decision": ALLOW_NOT_TENANT}}
    assert [r.name for r in seen] == ["tenant-001-ns-01", "tenant-001-ns-01"]
    assert server.decisions == {DENY_RECENT: 1, ALLOW_NOT_TENANT: 1}


async def test_wrong_path_method_or_body_is_refused_without_deciding(pki):
    async with serving(pki) as (server, seen):
        answers = await exchange(server.port, pki[1], [
            post(b"{}", path="/validate"),
            b"GET /delete-gate HTTP/1.1\r\nHost: x\r\n\r\n",
            post(b"not json"),
            post(json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).encode(),
                 extra="Connection: close\r\n"),
        ])
    assert [code for code, _, _ in answers] == [404, 405, 400, 400]
    assert "v1beta1" in json.loads(answers[3][2])["message"]
    assert answers[3][1].get("connection") == "close"
    assert seen == [] and not server.decisions


async def test_a_plain_http_client_gets_no_answer(pki):
    async with serving(pki) as (server, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post(json.dumps(GC_DELETE).encode()))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    assert b"HTTP/1.1 200" not in data and server.decisions == {}


def flags(**values) -> argparse.Namespace:
    return argparse.Namespace(gate_listen=values.get("listen", ""), gate_cert_dir=values.get("cert_dir"))


def test_gate_flags(pki, tmp_path):
    cert_dir, _ = pki
    assert gate_endpoint(flags()) is None
    endpoint = gate_endpoint(flags(listen="0.0.0.0:8443", cert_dir=cert_dir))
    assert (endpoint.host, endpoint.port) == ("0.0.0.0", 8443)
    assert gate_endpoint(flags(listen="[::1]:9443", cert_dir=cert_dir)).host == "::1"
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        gate_endpoint(flags(listen="8443", cert_dir=cert_dir))
    with pytest.raises(ConfigError, match="over TLS only"):
        gate_endpoint(flags(listen="0.0.0.0:8443"))
    with pytest.raises(ConfigError, match="without --gate-listen"):
        gate_endpoint(flags(cert_dir=cert_dir))
    with pytest.raises(ConfigError, match="lacks tls.crt, tls.key"):
        gate_endpoint(flags(listen="0.0.0.0:8443", cert_dir=tmp_path))
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        gate_endpoint(flags(listen="0.0.0.0:8443", cert_dir=tmp_path))



@pytest.mark.parametrize("argv, message", [
    (["guard", "--gate-listen", "127.0.0.1:8443"], "over TLS only"),
    (["watch", "--headless", "--gate-cert-dir", "/tmp"], "without --gate-listen"),
    (["watch", "--gate-listen", "127.0.0.1:8443", "--gate-cert-dir", "CERTS"], "served by the headless watch"),
])
def test_bad_gate_flags_fail_before_the_cluster_is_read(pki, capsys, argv, message):
    from responder.cli import main

    argv = [str(pki[0]) if a == "CERTS" else a for a in argv]
    # No kubeconfig exists there: the flags are refused before anything tries to read one.
    assert main([*argv, "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1, err
