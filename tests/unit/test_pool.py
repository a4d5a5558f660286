"""The bulk-write HTTP/1.1 pool (responder.cluster.pool) against a real local HTTP/1.1 server.

The server is h11 on asyncio streams in this process: each test scripts how it answers (a body with
Content-Length or chunked, closing an idle connection, closing without an answer, never answering)
and counts the connections it accepted. On the lab every detach goes through the same pool.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import pytest
import yaml

from responder.cluster.client import KubeClient, behind_proxy
from responder.cluster.kubeconfig import load_cluster_access
from responder.cluster.pool import ConnectionFailed, H1Pool
from responder.errors import NotFound

Answer = Callable[[h11.Request, bytes, int], Awaitable["tuple[int, list[tuple[str, str]], bytes] | str"]]


class LocalServer:
    """An HTTP/1.1 server; `answer(request, body, n)` returns (status, headers, body), or "close"
    (close the connection without answering) or "hang" (never answer)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[str, str, bytes, dict[str, str]]] = []
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def __aenter__(self) -> "LocalServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    def close_idle(self) -> None:
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert request is not None
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.requests.append((request.method.decode(), request.target.decode(), body, headers))
                answer = await self.answer(request, body, len(self.requests))
                if answer == "close":
                    writer.close()
                    return
                if answer == "hang":
                    await asyncio.sleep(3600)
                status, extra, payload = answer
                writer.write(conn.send(h11.Response(status_code=status, headers=extra)))
                writer.write(conn.send(h11.Data(data=payload)) if payload else b"")
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            return


def _json(status: int, obj: dict, *, chunked: bool = False) -> tuple[int, list[tuple[str, str]], bytes]:
    payload = json.dumps(obj).encode()
    length = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(payload)))
    return status, [("Content-Type", "application/json"), length], payload


async def test_answers_with_length_or_chunked_reuse_one_connection():
    async def answer(request, body, n):
        return _json(200, {"n": n, "echo": body.decode()}, chunked=n % 2 == 0)

    async with LocalServer(answer) as server:
        pool = H1Pool(server.url + "/prefix/", None, size=4)
        for i in range(1, 4):
            response = await pool.request("PATCH", "/api/v1/namespaces/a", params={"fieldManager": "responder"},
                                          content=f'{{"i":{i}}}', headers=[("Content-Type", "application/json")])
            assert response.status_code == 200
            assert response.json() == {"n": i, "echo": f'{{"i":{i}}}'}
        await pool.aclose()
    assert server.connections == 1  # sequential requests keep one connection alive
    method, target, body, headers = server.requests[0]
    assert (method, target) == ("PATCH", "/prefix/api/v1/namespaces/a?fieldManager=responder")
    assert headers["content-length"] == str(len(body)) and headers["host"] == server.url.split("//")[1]


async def test_concurrent_requests_use_at_most_size_connections():
    async def answer(request, body, n):
        await asyncio.sleep(0.01)
        return _json(200, {"n": n})

    async with LocalServer(answer) as server:
        pool = H1Pool(server.url, None, size=3)
        results = await asyncio.gather(*(pool.request("GET", f"/x/{i}") for i in range(30)))
        await pool.aclose()
    assert sorted(r.json()["n"] for r in results) == list(range(1, 31))
    assert server.connections == 3


async def test_an_idle_connection_closed_by_the_server_is_replaced_without_error():
    async def answer(request, body, n):
        return _json(200, {"n": n})

    async with LocalServer(answer) as server:
        pool = H1Pool(server.url, None, size=1)
        assert (await pool.request("GET", "/a")).json() == {"n": 1}
        server.close_idle()
        await asyncio.sleep(0.05)  # the EOF reaches the client's reader
        assert (await pool.request("GET", "/b")).json() == {"n": 2}
        await pool.aclose()
    assert server.connections == 2


async def test_a_connection_closed_without_an_answer_is_a_connection_failure():
    async def answer(request, body, n):
        return "close"

    async with LocalServer(answer) as server:
        pool = H1Pool(server.url, None, size=1)
        with pytest.raises(ConnectionFailed, match="closed the connection|connection to the API server failed"):
            await pool.request("PATCH", "/a", content=b"[]")
        await pool.aclose()


async def test_no_answer_within_the_timeout_is_a_connection_failure():
    async def answer(request, body, n):
        return "hang"

    async with LocalServer(answer) as server:
        pool = H1Pool(server.url, None, size=1, timeout=0.2)
        with pytest.raises(ConnectionFailed, match="no answer from the API server within"):
            await pool.request("GET", "/a")
        await pool.aclose()


def _kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken-for-the-test"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "u"}}]}))
    return str(path)


async def test_kube_client_bulk_writes_keep_retries_auth_and_typed_errors(tmp_path):
    async def answer(request, body, n):
        if n == 1:  # APF: refused before any change, retried after Retry-After
            status, headers, payload = _json(429, {"kind": "Status", "reason": "TooManyRequests", "code": 429})
            return status, headers + [("Retry-After", "0")], payload
        if request.target.startswith(b"/api/v1/namespaces/missing"):
            return _json(404, {"kind": "Status", "reason": "NotFound", "code": 404,
                               "message": 'namespaces "missing" not found'})
        return _json(200, {"kind": "Namespace", "metadata": {"name": "a"}})

    async with LocalServer(answer) as server:
        client = KubeClient(load_cluster_access(_kubeconfig(tmp_path, server.url)), dry_run=True)
        result = await client.request("PATCH", "/api/v1/namespaces/a", body=[{"op": "test", "path": "/x",
                                                                              "value": 1}],
                                      content_type="application/json-patch+json", bulk=True)
        assert result["metadata"]["name"] == "a"
        with pytest.raises(NotFound, match='namespaces "missing" not found'):
            await client.request("PATCH", "/api/v1/namespaces/missing", body=[], bulk=True)
        await client.aclose()
    assert len(server.requests) == 3  # the 429 was asked again
    for method, target, body, headers in server.requests:
        assert method == "PATCH"
        assert "dryRun=All" in target and "fieldManager=responder" in target
        assert headers["authorization"] == "Bearer t0ken-for-the-test"
    assert json.loads(server.requests[1][2]) == [{"op": "test", "path": "/x", "value": 1}]


def test_bulk_writes_stay_on_httpx_when_the_environment_sets_a_proxy(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = "https://api.example.test:6443"
    assert behind_proxy(server) is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    assert behind_proxy(server) is True  # httpx would use the proxy; the pool would not
    monkeypatch.setenv("NO_PROXY", ".example.test")
    assert behind_proxy(server) is False
