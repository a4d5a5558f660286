"""The delete gate's HTTPS endpoint: the API server POSTs an AdmissionReview to /delete-gate, the gate answers.

An asyncio server on the process's own event loop, beside the watches the gate decides from: no await between
reading the picture and deciding, so each answer is consistent with the picture at that instant. HTTP/1.1 with
keep-alive (the API server reuses its connections); TLS only, as the API server calls webhooks over TLS only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from responder.errors import ConfigError
from responder.guard.admission import answer_review
from responder.incident.delete_gate import ALLOW_OFFBOARDED, GateDecision, GateRequest
from responder.incident.detect import DETECTION_LOGGER
from responder.ops.delete_gate_webhook import GATE_PATH

# A child of detection's logger: its denies are shown wherever detection's decisions are.
log = logging.getLogger(f"{DETECTION_LOGGER}.delete-gate")

MAX_BODY = 4 * 1024 * 1024  # an AdmissionReview of one Namespace is a few KiB
IDLE_S = 90.0  # a kept-alive connection with no request for this long is closed
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}


def server_tls(cert_dir: Path) -> ssl.SSLContext:
    """The serving context from `cert_dir`/tls.crt and tls.key (a Secret of type kubernetes.io/tls mounted)."""
    cert, key = cert_dir / "tls.crt", cert_dir / "tls.key"
    missing = [p.name for p in (cert, key) if not p.is_file()]
    if missing:
        raise ConfigError(f"the delete gate's certificate directory {cert_dir} lacks {', '.join(missing)}",
                          fix="point --gate-cert-dir at a directory holding tls.crt and tls.key (PEM)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"the delete gate's certificate in {cert_dir} cannot be loaded: {exc}",
                          fix="tls.crt must be the PEM certificate (chain) and tls.key its PEM private key") from exc
    return context


@dataclass(frozen=True)
class GateEndpoint:
    """Where the gate listens, and its serving TLS context."""

    host: str
    port: int
    context: ssl.SSLContext


class DeleteGateServer:
    """Answers AdmissionReviews with `decide` (the gate's decision bound to the picture and the clock)."""

    def __init__(self, decide: Callable[[GateRequest], GateDecision], context: ssl.SSLContext) -> None:
        self.decide = decide
        self.context = context
        self.decisions: Counter[str] = Counter()  # kind -> answers given
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._connection, host, port, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("delete gate serving https://%s:%d%s", host, self.port, GATE_PATH)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _decide(self, request: GateRequest) -> GateDecision:
        decision = self.decide(request)
        self.decisions[decision.kind] += 1
        if not decision.allowed or decision.kind == ALLOW_OFFBOARDED:
            log.info("%s", decision.line())  # a deny, or the end of an offboarding's hold
        return decision

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path.split("?", 1)[0] != GATE_PATH:
            return 404, b'{"message": "not found: POST /delete-gate"}'
        if method != "POST":
            return 405, b'{"message": "POST only"}'
        try:
            review = json.loads(body)
        except ValueError:
            review = None
        code, answer = answer_review(review, self._decide)
        return code, json.dumps(answer).encode()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await asyncio.wait_for(reader.readline(), timeout=IDLE_S)
                if not request:
                    return
                headers: dict[str, str] = {}
                while True:
                    line = await asyncio.wait_for(reader.readline(), timeout=10)
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                parts = request.decode("latin-1").split()
                length = int(headers.get("content-length") or 0)
                if len(parts) < 2 or length < 0 or length > MAX_BODY:
                    code, body, close = 413 if length > MAX_BODY else 400, b'{"message": "bad request"}', True
                else:
                    payload = await asyncio.wait_for(reader.readexactly(length), timeout=10) if length else b""
                    code, body = self.answer(parts[0], parts[1], payload)
                    close = headers.get("connection", "").lower() == "close"
                connection = "Connection: close\r\n" if close else ""
                head = (f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n{connection}\r\n").encode()
                writer.write(head + body)
                await writer.drain()
                if close:
                    return
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        except Exception:  # a webhook call must never take the process down; the API server then ignores it
            log.exception("delete gate connection failed")
        finally:
            writer.close()
