"""A small async Kubernetes API client over httpx.

One way to write to a cluster: every mutating request goes through `KubeClient.request`, which adds
`fieldManager=responder` and, when the client is in dry-run mode, `dryRun=All`, so no code path can
forget either. Errors come back typed (responder.errors.ApiError subclasses) with the server's message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from responder.cluster.kubeconfig import ClusterAccess
from responder.cluster.pool import H1Pool, PoolResponse
from responder.errors import ApiError, ClusterUnreachable, Forbidden, ServerError, Unauthorized, api_error_for

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_STATUSES = frozenset({429, 503, 504})
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "responder"
USER_AGENT = "responder/0.1"


class KubeClient:
    """Async client for one cluster identity.

    `max_connections` and `http2` are chosen by measurement (see README, detach benchmark): for httpx,
    HTTP/2 multiplexing many concurrent requests over one TLS connection beats a large pool on 2
    cores. Bulk writes (`request(..., bulk=True)`, i.e. `StepContext.write_many`) go through
    `bulk_connections` HTTP/1.1 connections driven by h11 (responder.cluster.pool), measured several
    times cheaper per request; `bulk_connections=0` sends them through httpx like the rest.
    """

    def __init__(self, access: ClusterAccess, *, dry_run: bool = False, http2: bool = True,
                 max_connections: int = 8, bulk_connections: int = 16, timeout: float = 30.0,
                 retry_deadline: float = 60.0, impersonate: str | None = None,
                 impersonate_groups: tuple[str, ...] = ()) -> None:
        self.access = access
        self.dry_run = dry_run
        self.retry_deadline = retry_deadline
        self._impersonate = impersonate
        self._impersonate_groups = impersonate_groups
        self._auth_header: str | None = None  # None also for client-certificate auth
        self._auth_fetched = 0.0  # monotonic time of the last fetch; 0: fetch before the next request
        self._unreachable_at = float("-inf")  # when a request last failed to reach the server
        self._http = self._new_http(http2=http2, max_connections=max_connections, timeout=timeout)
        # Watches get their own HTTP/1.1 connections: an idle long-running stream on a shared HTTP/2
        # connection was measured to stall other requests' responses for up to a minute (httpcore).
        self._watch_http: httpx.AsyncClient | None = None
        self._http2 = http2
        self._max_connections = max_connections
        self._bulk_connections = bulk_connections
        self._bulk: H1Pool | None = None
        self._proxied = behind_proxy(access.server)  # read once: the environment does not change mid-run
        self._timeout = timeout

    def _new_http(self, *, http2: bool, max_connections: int, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.access.server,
            verify=self.access.ssl_context,
            http2=http2,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    def with_options(self, *, dry_run: bool | None = None, impersonate: str | None = None,
                     impersonate_groups: tuple[str, ...] = ()) -> "KubeClient":
        """A sibling client sharing credentials (a new connection pool)."""
        return KubeClient(self.access, dry_run=self.dry_run if dry_run is None else dry_run, http2=self._http2,
                          max_connections=self._max_connections, bulk_connections=self._bulk_connections,
                          timeout=self._timeout,
                          retry_deadline=self.retry_deadline, impersonate=impersonate,
                          impersonate_groups=impersonate_groups)

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._bulk is not None:
            await self._bulk.aclose()
        if self._watch_http is not None:
            await self._watch_http.aclose()

    async def __aenter__(self) -> "KubeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- auth -------------------------------------------------------------------------------------

    async def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        # Tokens from exec plugins expire; re-ask the loader (cheap unless expired) once a minute.
        if not self._auth_fetched or time.monotonic() - self._auth_fetched > 60:
            self._auth_header = await asyncio.to_thread(self.access.authorization)
            self._auth_fetched = time.monotonic()
        if self._auth_header:
            headers["Authorization"] = self._auth_header
        if self._impersonate:
            headers["Impersonate-User"] = self._impersonate
            # httpx sends a list value as repeated headers, which is what impersonation expects.
        return headers

    def _impersonation_items(self) -> list[tuple[str, str]]:
        return [("Impersonate-Group", g) for g in self._impersonate_groups]

    async def _not_ready(self) -> bool:
        """True when a 403 may come from an API server that is not ready. A server that has just
        (re)started answers requests before its RBAC caches are filled and refuses them with 403 for a
        few seconds (measured on the lab: the apiserver killed mid-detach); such a 403 is transient. Its
        /readyz then answers 500 or, as RBAC guards it too, 403: a 403 there counts as not ready only
        shortly after the server was unreachable. A 403 from a ready server is a real refusal."""
        try:
            headers = await self._headers()
            response = await self._http.get("/readyz", headers=list(headers.items()), timeout=5.0)
        except (httpx.TransportError, OSError):
            self._unreachable_at = time.monotonic()
            return True
        if response.status_code >= 500:
            return True
        return response.status_code == 403 and time.monotonic() - self._unreachable_at < 60.0

    async def _reauthenticate(self) -> None:
        self.access = await asyncio.to_thread(self.access.reload)
        self._auth_header = None
        self._auth_fetched = 0.0
        if self._bulk is not None:  # reconnect with the reloaded TLS settings (rotated client certificates)
            await self._bulk.aclose()
            self._bulk = None

    def _h1_http(self) -> httpx.AsyncClient:
        """HTTP/1.1 connections: the watches' (each stream its own connection), and the fallback above."""
        if self._watch_http is None:
            self._watch_http = self._new_http(http2=False, max_connections=64, timeout=self._timeout)
        return self._watch_http

    def _bulk_pool(self) -> H1Pool:
        if self._bulk is None:
            self._bulk = H1Pool(self.access.server, self.access.new_ssl_context(), size=self._bulk_connections,
                                timeout=self._timeout, server_hostname=self.access.tls_server_name,
                                headers=[("User-Agent", USER_AGENT), ("Accept", "application/json")])
        return self._bulk

    # -- requests ---------------------------------------------------------------------------------

    def _params(self, method: str, params: dict[str, Any] | None, dry_run: bool | None) -> dict[str, Any]:
        out = dict(params or {})
        if method in MUTATING:
            if dry_run if dry_run is not None else self.dry_run:
                out["dryRun"] = "All"
            if method != "DELETE":
                out.setdefault("fieldManager", FIELD_MANAGER)
        return out

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      dry_run: bool | None = None, bulk: bool = False) -> dict[str, Any]:
        """Send one request, retrying 429/503/504 (honouring Retry-After) and connection failures
        until `retry_deadline`; a 401 reloads credentials once. Returns the decoded JSON body.
        `bulk`: one of many writes sent together, through the HTTP/1.1 pool (see the class doc)."""
        query = self._params(method, params, dry_run)
        content = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        deadline = time.monotonic() + self.retry_deadline
        attempt = 0
        reauthed = False
        resent = False  # a mutating request sent again after an attempt whose fate is unknown
        http = self._http
        pooled = bulk and self._bulk_connections > 0 and not self._proxied
        while True:
            attempt += 1
            headers = await self._headers()
            if content is not None:
                headers["Content-Type"] = content_type
            header_items = list(headers.items()) + self._impersonation_items()
            response: httpx.Response | PoolResponse
            try:
                if pooled:
                    response = await self._bulk_pool().request(method, path, params=query, content=content,
                                                               headers=header_items)
                else:
                    response = await http.request(method, path, params=query, content=content, headers=header_items)
            except (httpx.TransportError, OSError) as exc:
                self._unreachable_at = time.monotonic()
                if _tls_verify_failure(exc):  # retrying cannot help, and the usual fix is in the kubeconfig
                    raise ClusterUnreachable(
                        f"TLS verification of the API server at {self.access.server} failed: {exc}",
                        fix="set the cluster's certificate-authority(-data) in the kubeconfig to the CA that signed "
                            "the API server's certificate (and check the server URL)") from None
                if isinstance(exc, httpx.RemoteProtocolError) and self._http2 and http is self._http:
                    # Kubernetes closes an HTTP/2 connection right after refusing its credentials (401),
                    # and the refusal is lost with it (found on the lab): ask once more over HTTP/1.1.
                    http = self._h1_http()
                    resent = resent or method in MUTATING
                    continue
                if time.monotonic() >= deadline:
                    raise ClusterUnreachable(
                        f"cannot reach the API server at {self.access.server}: {type(exc).__name__}: {exc}",
                        fix="check that the cluster is up and the kubeconfig's server URL is right") from None
                await asyncio.sleep(_backoff(attempt))
                resent = resent or method in MUTATING
                continue
            if response.status_code < 400:
                if not response.content:
                    return {}
                return response.json()
            error = api_error_for(response.status_code, _json_or_none(response), method=method, path=path)
            if isinstance(error, Unauthorized) and not reauthed:
                reauthed = True
                await self._reauthenticate()
                continue
            if response.status_code in RETRY_STATUSES and time.monotonic() < deadline:
                await asyncio.sleep(_retry_after(response, attempt))
                # A 504 may have been applied; a 429 or 503 was refused before any change.
                resent = resent or (method in MUTATING and response.status_code == 504)
                continue
            if isinstance(error, Forbidden) and time.monotonic() < deadline and await self._not_ready():
                await asyncio.sleep(_backoff(attempt))
                continue
            error.resent = resent
            raise error

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        return await self.request("GET", path, params=params or None)

    async def get_or_none(self, path: str, **params: Any) -> dict[str, Any] | None:
        try:
            return await self.get(path, **params)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_all(self, path: str, *, page_size: int = 500, **params: Any) -> dict[str, Any]:
        """LIST with pagination; returns a list object with all items and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        query = dict(params, limit=page_size)
        while True:
            page = await self.get(path, **query)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                page["items"] = items
                return page
            query["continue"] = cont

    async def create(self, path: str, body: dict[str, Any], *, dry_run: bool | None = None) -> dict[str, Any]:
        return await self.request("POST", path, body=body, dry_run=dry_run)

    async def replace(self, path: str, body: dict[str, Any], *, dry_run: bool | None = None) -> dict[str, Any]:
        return await self.request("PUT", path, body=body, dry_run=dry_run)

    async def patch(self, path: str, patch: Any, *, patch_type: str = MERGE_PATCH,
                    dry_run: bool | None = None) -> dict[str, Any]:
        return await self.request("PATCH", path, body=patch, content_type=patch_type, dry_run=dry_run)

    async def delete(self, path: str, *, body: dict[str, Any] | None = None,
                     dry_run: bool | None = None) -> dict[str, Any]:
        return await self.request("DELETE", path, body=body, dry_run=dry_run)

    async def stream_lines(self, path: str, params: dict[str, Any], *, read_timeout: float) -> AsyncIterator[bytes]:
        """A long-running GET (a watch) as raw lines; raises typed errors for non-2xx answers."""
        headers = await self._headers()
        timeout = httpx.Timeout(self._timeout, connect=5.0, read=read_timeout)
        try:
            async with self._h1_http().stream("GET", path, params=params, timeout=timeout,
                                              headers=list(headers.items()) + self._impersonation_items()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    error = api_error_for(response.status_code, _json_or_none(response), method="WATCH", path=path)
                    if isinstance(error, Unauthorized):
                        await self._reauthenticate()
                    if isinstance(error, Forbidden) and await self._not_ready():
                        raise ServerError(503, "ServiceUnavailable", f"API server not ready: {error.api_message}",
                                          method="WATCH", path=path)
                    raise error
                async for line in response.aiter_lines():
                    if line:
                        yield line.encode() if isinstance(line, str) else line
        except (httpx.TransportError, OSError):
            self._unreachable_at = time.monotonic()
            raise


def behind_proxy(server: str) -> bool:
    """True when the environment routes this server through a proxy (HTTPS_PROXY, ALL_PROXY, not
    excluded by NO_PROXY): httpx honours that and the pool does not, so bulk writes then stay on httpx
    rather than try a direct connection the network may not allow."""
    url = urlsplit(server)
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.hostname or "")


def _tls_verify_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _json_or_none(response: httpx.Response | PoolResponse) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return {"message": response.text[:500]}
    return data if isinstance(data, dict) else None


def _backoff(attempt: int, cap: float = 2.0) -> float:
    return min(cap, 0.05 * (2 ** min(attempt, 8))) * (0.5 + random.random() / 2)


def _retry_after(response: httpx.Response | PoolResponse, attempt: int) -> float:
    value = response.headers.get("retry-after")  # httpx's headers ignore case; the pool's are lower-cased
    if value:
        try:
            return min(float(value), 10.0)
        except ValueError:
            pass
    return _backoff(attempt)
