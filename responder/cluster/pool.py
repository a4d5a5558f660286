"""HTTP/1.1 keep-alive connections for bulk writes: h11 over asyncio TLS streams.

Why a second transport next to httpx: measured on the lab (README, detach benchmark), httpx spends
2-4 ms of client CPU per request, over HTTP/2 or a pool of HTTP/1.1 connections, more than
kube-apiserver spends serving a namespace PATCH (~1.6 ms); h11 on plain asyncio streams spends
~0.3 ms. On a small control plane the client's CPU is taken from the API server's, so in the detach
loop (thousands of PATCHes racing the garbage collector) it decides how many namespaces survive.
`KubeClient.request(..., bulk=True)` sends through this pool with the same retries, auth and typed
errors as every other request; everything else stays on httpx.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11

READ_SIZE = 65536


class ConnectionFailed(OSError):
    """The request's fate is unknown: the connection broke, the server broke the protocol or did not
    answer in time. The client's retry loop treats it like any other transport failure."""


class IllegalRequest(ValueError):
    """The request cannot be expressed in HTTP/1.1 (a header value or the path holds characters HTTP
    does not allow); nothing was sent. The message never quotes the values: one of them is usually
    the credential."""


@dataclass
class PoolResponse:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    content: bytes = b""

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.state = h11.Connection(h11.CLIENT)

    @property
    def usable(self) -> bool:
        # A keep-alive connection the server has closed while idle shows EOF here: drop it rather than
        # send a write whose fate would then be unknown.
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def exchange(self, request: h11.Request, body: bytes | None) -> PoolResponse:
        out = self.state.send(request) or b""
        if body:
            out += self.state.send(h11.Data(data=body)) or b""
        out += self.state.send(h11.EndOfMessage()) or b""
        self.writer.write(out)
        response: PoolResponse | None = None
        chunks: list[bytes] = []
        while True:
            event = self.state.next_event()
            if event is h11.NEED_DATA:
                self.state.receive_data(await self.reader.read(READ_SIZE))
            elif isinstance(event, h11.Response):
                response = PoolResponse(event.status_code, {k.decode("latin-1").lower(): v.decode("latin-1")
                                                            for k, v in event.headers})
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                response.content = b"".join(chunks)
                return response
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionFailed("the API server closed the connection before answering")
            # InformationalResponse (1xx) needs nothing.

    def reusable(self) -> bool:
        if self.state.our_state is h11.DONE and self.state.their_state is h11.DONE:
            self.state.start_next_cycle()
            return self.usable
        return False

    def close(self) -> None:
        self.writer.close()


class H1Pool:
    """Up to `size` HTTP/1.1 connections to one API server, each carrying one request at a time."""

    def __init__(self, server: str, ssl_context: ssl.SSLContext | None, *, size: int = 16,
                 timeout: float = 30.0, connect_timeout: float = 5.0, server_hostname: str | None = None,
                 headers: list[tuple[str, str]] | None = None) -> None:
        url = urlsplit(server)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")  # servers behind a proxy path (e.g. Rancher's /k8s/clusters/ID)
        self._host_header = url.netloc.rsplit("@", 1)[-1]
        self._ssl = ssl_context if self._https else None
        if self._ssl is not None:
            # Only HTTP/1.1: offered h2, the API server would choose it. The context must be this pool's
            # own (httpcore re-sets ALPN on the context it is given, per connection).
            self._ssl.set_alpn_protocols(["http/1.1"])
        self._server_hostname = (server_hostname or self._host) if self._https else None
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._default_headers = headers or []
        self._slots = asyncio.Semaphore(max(1, size))
        self._idle: list[_Connection] = []
        self._closed = False

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl, server_hostname=self._server_hostname)
        except TimeoutError:
            raise ConnectionFailed(f"no connection to {self._host}:{self._port} within "
                                   f"{self._connect_timeout:.0f}s") from None
        tls = writer.get_extra_info("ssl_object")
        protocol = tls.selected_alpn_protocol() if tls is not None else None
        if protocol not in (None, "http/1.1"):
            writer.close()
            raise ConnectionFailed(f"the API server chose {protocol!r} on a connection offering only HTTP/1.1")
        return _Connection(reader, writer)

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      content: bytes | str | None = None, headers: list[tuple[str, str]] | None = None,
                      timeout: float | None = None) -> PoolResponse:
        target = self._prefix + path
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params, doseq=True)
        body = content.encode() if isinstance(content, str) else content
        all_headers = [("Host", self._host_header), *self._default_headers, *(headers or [])]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            all_headers.append(("Content-Length", str(len(body or b""))))
        request = _h11_request(method, target, all_headers)
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                if candidate.usable:
                    conn = candidate
                else:
                    candidate.close()
            if conn is None:
                conn = await self._connect()
            try:
                async with asyncio.timeout(timeout or self._timeout):
                    response = await conn.exchange(request, body)
            except TimeoutError:
                conn.close()
                raise ConnectionFailed(f"no answer from the API server within {timeout or self._timeout:.0f}s") \
                    from None
            except h11.LocalProtocolError:
                # Our side broke the protocol; its text may quote what was being sent, so it is left out.
                conn.close()
                raise ConnectionFailed("connection to the API server failed: LocalProtocolError") from None
            except (h11.ProtocolError, ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                raise ConnectionFailed(f"connection to the API server failed: {type(exc).__name__}: {exc}") from exc
            except BaseException:  # OSError (TLS), cancellation: the connection's state is unknown
                conn.close()
                raise
            if conn.reusable() and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
            return response

    async def aclose(self) -> None:
        """Close the idle connections; those carrying a request close when it is answered (so a pool
        replaced after new credentials does not break the requests still in flight)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await asyncio.gather(*(conn.writer.wait_closed() for conn in idle), return_exceptions=True)


def _h11_request(method: str, target: str, headers: list[tuple[str, str]]) -> h11.Request:
    """h11 validates the request line and headers here; its error quotes the offending value (the
    bearer token, for a token file ending in a newline), so it is replaced, outside the `except`
    so that it is not even chained."""
    try:
        return h11.Request(method=method, target=target, headers=headers)
    except h11.LocalProtocolError:
        pass
    raise IllegalRequest("a header value or the request path contains characters not allowed in HTTP "
                         "(values not shown: one is the credential)")
