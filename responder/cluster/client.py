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
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from responder.cluster.kubeconfig import ClusterAccess
from responder.cluster.pool import H1Pool, IllegalRequest, PoolResponse
from responder.errors import (ApiError, ClusterUnreachable, ConfigError, Forbidden, ServerError, Unauthorized,
                              api_error_for)

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_STATUSES = frozenset({429, 503, 504})
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "responder"
USER_AGENT = "responder/0.1"
CREDENTIAL_REREAD_SECONDS = 60.0


class CredentialsRenewed(Unauthorized):
    """A 401 to credentials that have since been replaced (re-read from the kubeconfig after this
    refusal, or by another request meanwhile): the request may be sent again with the new ones. A
    long-running request (a watch) cannot resend by itself, so it raises this to its caller."""


class Credentials:
    """The identity's current credentials, refreshed with single flight.

    `generation` counts kubeconfig reloads. A request remembers the generation its Authorization
    header came from; after a 401 it calls `reload(generation)`, which re-reads the kubeconfig only
    if nobody has since that generation (a burst of 401s from 64 requests in flight reloads once,
    running the exec plugin once). Concurrent callers join the reload in flight and share its
    outcome, a ConfigError included. The periodic re-read of the header (exec tokens expire) is
    single flight too.
    """

    def __init__(self, access: ClusterAccess, *, reread_after: float = CREDENTIAL_REREAD_SECONDS) -> None:
        self.access = access
        self.generation = 0
        self.reloads = 0
        self.reread_after = reread_after
        self._header: str | None = None  # None also for client-certificate auth
        self._fetched_at: float | None = None  # monotonic; None: fetch before the next request
        self._fetching: asyncio.Task[None] | None = None
        self._reloading: asyncio.Task[None] | None = None

    def _stale(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > self.reread_after

    async def current(self) -> tuple[str | None, int]:
        """The Authorization header value (None: none to send) and the generation it belongs to."""
        while self._stale():
            if self._fetching is None:
                self._fetching = asyncio.ensure_future(self._fetch())
            await asyncio.shield(self._fetching)
        return self._header, self.generation

    async def _fetch(self) -> None:
        try:
            generation, access = self.generation, self.access
            # Cheap unless the token expired: then the exec plugin runs (once, for every caller).
            header = await asyncio.to_thread(access.authorization)
            if generation == self.generation:  # not replaced by a reload meanwhile
                self._header, self._fetched_at = header, time.monotonic()
        finally:
            self._fetching = None

    async def reload(self, seen: int) -> None:
        """After a 401 to credentials of generation `seen`: re-read the kubeconfig, unless that was
        done since (then just retry with the newer credentials). Raises ConfigError when the
        kubeconfig cannot be loaded."""
        if self.generation != seen:
            return
        if self._reloading is None:
            self._reloading = asyncio.ensure_future(self._reload())
        await asyncio.shield(self._reloading)

    async def _reload(self) -> None:
        try:
            access = await asyncio.to_thread(self.access.reload)
            self.access = access
            self.generation += 1
            self.reloads += 1
            self._header, self._fetched_at = None, None
        finally:
            self._reloading = None


def same_tls(old: ClusterAccess, new: ClusterAccess) -> bool:
    """True when connections made for `old` are right for `new` too (same server, same TLS material)."""
    if (old.server, old.tls_server_name) != (new.server, new.tls_server_name):
        return False
    if old.tls_identity and new.tls_identity:
        return old.tls_identity == new.tls_identity
    return old.ssl_context is new.ssl_context


def illegal_header_error(server: str) -> ConfigError:
    """What a header value HTTP refuses becomes. Never quotes the value: it is usually the token."""
    return ConfigError(
        f"responder's request to the API server at {server} was not sent: a header value contains characters "
        "not allowed in an HTTP header, most likely the credential (e.g. a newline inside the token of the "
        "kubeconfig user's tokenFile, or in an exec plugin's token)",
        fix="rewrite the token (file) as the bare token on one line (e.g. `kubectl create token SA | tr -d '\\n' "
            "> FILE`), or fix the exec plugin's output; check --as/impersonation values too")


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
        self._creds = Credentials(access)
        self.dry_run = dry_run
        self.retry_deadline = retry_deadline
        self._impersonate = impersonate
        self._impersonate_groups = impersonate_groups
        self._unreachable_at = float("-inf")  # when a request last failed to reach the server
        self._http2 = http2
        self._max_connections = max_connections
        self._bulk_connections = bulk_connections
        self._timeout = timeout
        # The access the connections below were made for (TLS material, server, tls-server-name); after
        # a reload that changed them they are replaced (_sync_transports).
        self._transport_access = access
        self._http = self._new_http(http2=http2, max_connections=max_connections, timeout=timeout)
        # Watches get their own HTTP/1.1 connections: an idle long-running stream on a shared HTTP/2
        # connection was measured to stall other requests' responses for up to a minute (httpcore).
        self._watch_http: httpx.AsyncClient | None = None
        self._bulk: H1Pool | None = None
        # Clients replaced after new TLS material: requests and watches still on them finish there;
        # they are closed with this client.
        self._retired: list[httpx.AsyncClient] = []
        self._proxied = behind_proxy(access.server)  # read once: the environment does not change mid-run

    @property
    def access(self) -> ClusterAccess:
        """The current credentials (replaced when a 401 makes the client re-read the kubeconfig)."""
        return self._creds.access

    @property
    def credentials(self) -> Credentials:
        return self._creds

    def _new_http(self, *, http2: bool, max_connections: int, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._transport_access.server,
            verify=self._transport_access.ssl_context,
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
        retired, self._retired = self._retired, []
        for http in retired:
            await http.aclose()

    async def __aenter__(self) -> "KubeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- auth -------------------------------------------------------------------------------------

    async def _headers(self) -> tuple[dict[str, str], int]:
        """The request headers and the credential generation they were made from."""
        headers: dict[str, str] = {}
        # Tokens from exec plugins expire; the loader is re-asked (cheap unless expired) once a minute.
        authorization, generation = await self._creds.current()
        if authorization:
            headers["Authorization"] = authorization
        if self._impersonate:
            headers["Impersonate-User"] = self._impersonate
            # httpx sends a list value as repeated headers, which is what impersonation expects.
        return headers, generation

    def _extensions(self) -> dict[str, Any] | None:
        """The kubeconfig's tls-server-name: httpcore uses `sni_hostname` as the TLS server_hostname,
        which drives both SNI and the certificate's hostname check (as client-go does)."""
        name = self._transport_access.tls_server_name
        return {"sni_hostname": name} if name else None

    def _impersonation_items(self) -> list[tuple[str, str]]:
        return [("Impersonate-Group", g) for g in self._impersonate_groups]

    async def _not_ready(self) -> bool:
        """True when a 403 may come from an API server that is not ready. A server that has just
        (re)started answers requests before its RBAC caches are filled and refuses them with 403 for a
        few seconds (measured on the lab: the apiserver killed mid-detach); such a 403 is transient. Its
        /readyz then answers 500 or, as RBAC guards it too, 403: a 403 there counts as not ready only
        shortly after the server was unreachable. A 403 from a ready server is a real refusal."""
        try:
            headers, _ = await self._headers()
            response = await self._http.get("/readyz", headers=list(headers.items()), timeout=5.0,
                                            extensions=self._extensions())
        except (httpx.TransportError, OSError):
            self._unreachable_at = time.monotonic()
            return True
        if response.status_code >= 500:
            return True
        return response.status_code == 403 and time.monotonic() - self._unreachable_at < 60.0

    async def _reauthenticate(self, generation: int) -> None:
        """After a 401 to credentials of `generation`: reload them (single flight) and, when the TLS
        material changed, reconnect with it. Raises ConfigError when the kubeconfig cannot be loaded."""
        await self._creds.reload(generation)
        await self._sync_transports()

    async def _sync_transports(self) -> None:
        """Replace the connections when the credentials' TLS material changed (a rotated client
        certificate, an exec plugin's short-lived certificate): a client presents the certificate of
        the SSLContext it was built with. Requests in flight finish on the old ones."""
        access = self._creds.access
        if access is self._transport_access:
            return
        old, self._transport_access = self._transport_access, access
        if same_tls(old, access):
            return
        log.info("new TLS credentials for %s: reconnecting", access.display_server)
        self._proxied = behind_proxy(access.server)
        previous = self._http
        self._http = self._new_http(http2=self._http2, max_connections=self._max_connections, timeout=self._timeout)
        self._http.headers.update(previous.headers)  # e.g. a User-Agent set by the caller
        self._retired.append(previous)
        if self._watch_http is not None:
            self._retired.append(self._watch_http)
            self._watch_http = None
        if self._bulk is not None:  # closes when its requests in flight are answered
            bulk, self._bulk = self._bulk, None
            await bulk.aclose()

    def _h1_http(self) -> httpx.AsyncClient:
        """HTTP/1.1 connections: the watches' (each stream its own connection), and the fallback above."""
        if self._watch_http is None:
            self._watch_http = self._new_http(http2=False, max_connections=64, timeout=self._timeout)
            self._watch_http.headers.update(self._http.headers)
        return self._watch_http

    def _bulk_pool(self) -> H1Pool:
        if self._bulk is None:
            access = self._transport_access
            self._bulk = H1Pool(access.server, access.new_ssl_context(), size=self._bulk_connections,
                                timeout=self._timeout, server_hostname=access.tls_server_name,
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
        h1 = False  # fell back to HTTP/1.1 (below)
        while True:
            attempt += 1
            await self._sync_transports()  # another request may have reloaded new TLS material
            http = self._h1_http() if h1 else self._http
            pooled = bulk and self._bulk_connections > 0 and not self._proxied
            headers, generation = await self._headers()
            if content is not None:
                headers["Content-Type"] = content_type
            header_items = list(headers.items()) + self._impersonation_items()
            response: httpx.Response | PoolResponse | None = None
            try:
                if pooled:
                    response = await self._bulk_pool().request(method, path, params=query, content=content,
                                                               headers=header_items)
                else:
                    response = await http.request(method, path, params=query, content=content, headers=header_items,
                                                  extensions=self._extensions())
            except (httpx.LocalProtocolError, IllegalRequest):
                pass  # a header value HTTP refuses: nothing was sent; raised below, outside this handler
            except (httpx.TransportError, OSError) as exc:
                self._unreachable_at = time.monotonic()
                if _tls_verify_failure(exc):  # retrying cannot help, and the usual fix is in the kubeconfig
                    raise ClusterUnreachable(
                        f"TLS verification of the API server at {self.access.display_server} failed: {exc}",
                        fix="set the cluster's certificate-authority(-data) in the kubeconfig to the CA that signed "
                            "the API server's certificate (and check the server URL)") from None
                if isinstance(exc, httpx.RemoteProtocolError) and self._http2 and not pooled and not h1:
                    # Kubernetes closes an HTTP/2 connection right after refusing its credentials (401),
                    # and the refusal is lost with it (found on the lab): ask once more over HTTP/1.1.
                    h1 = True
                    resent = resent or method in MUTATING
                    continue
                if time.monotonic() >= deadline:
                    raise ClusterUnreachable(
                        f"cannot reach the API server at {self.access.display_server}: {type(exc).__name__}: {exc}",
                        fix="check that the cluster is up and the kubeconfig's server URL is right") from None
                await asyncio.sleep(_backoff(attempt))
                resent = resent or method in MUTATING
                continue
            if response is None:
                raise illegal_header_error(self.access.display_server)
            if response.status_code < 400:
                if not response.content:
                    return {}
                return response.json()
            error = api_error_for(response.status_code, _json_or_none(response), method=method, path=path)
            if isinstance(error, Unauthorized) and not reauthed:
                reauthed = True
                await self._reauthenticate(generation)
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

    async def stream_lines(self, path: str, params: dict[str, Any], *, read_timeout: float,
                           on_connect: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """A long-running GET (a watch) as raw lines; raises typed errors for non-2xx answers.
        `on_connect` is called once the server has accepted the request (a 2xx status).

        A 401 re-reads the credentials (single flight, see Credentials) and raises CredentialsRenewed:
        the caller reconnects with the new ones, and gives up if that attempt is refused too. A reload
        that fails raises its ConfigError."""
        await self._sync_transports()
        headers, generation = await self._headers()
        timeout = httpx.Timeout(self._timeout, connect=5.0, read=read_timeout)
        illegal = False
        try:
            async with self._h1_http().stream("GET", path, params=params, timeout=timeout,
                                              headers=list(headers.items()) + self._impersonation_items(),
                                              extensions=self._extensions()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    error = api_error_for(response.status_code, _json_or_none(response), method="WATCH", path=path)
                    if isinstance(error, Unauthorized):
                        await self._reauthenticate(generation)
                        raise CredentialsRenewed(error.status, error.reason, error.api_message, method="WATCH",
                                                 path=path, details=error.details)
                    if isinstance(error, Forbidden) and await self._not_ready():
                        raise ServerError(503, "ServiceUnavailable", f"API server not ready: {error.api_message}",
                                          method="WATCH", path=path)
                    raise error
                if on_connect is not None:
                    on_connect()
                async for line in response.aiter_lines():
                    if line:
                        yield line.encode() if isinstance(line, str) else line
        except httpx.LocalProtocolError:
            illegal = True  # raised below, outside this handler, so the quoted value is not even chained
        except (httpx.TransportError, OSError):
            self._unreachable_at = time.monotonic()
            raise
        if illegal:
            raise illegal_header_error(self.access.display_server)


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
