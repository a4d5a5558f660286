"""Errors and exit codes shared by every command.

Exit codes (documented in README):
  0  ok
  1  incident not fully contained / findings remain
  2  bad input or failed preflight (nothing was written)
  3  cluster unreachable
  4  forbidden: the identity lacks a permission the step needs
  5  interrupted (the journal can be resumed)
  6  another responder holds the cluster's Lease (one writer per cluster): nothing was written
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_CONTAINED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3
EXIT_FORBIDDEN = 4
EXIT_INTERRUPTED = 5
EXIT_LEASE_HELD = 6


class ResponderError(Exception):
    """An error with a message meant for a person and the exit code it maps to."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class ConfigError(ResponderError):
    """Bad kubeconfig, unknown context, bad flags."""


class RunbookError(ResponderError):
    """A runbook that does not validate; the message names file, line and field."""


class JournalError(ResponderError):
    """A journal that cannot be read or resumed."""


class LabError(ResponderError):
    """The local lab could not be built, started or reached."""


class NotLeading(ResponderError):
    """The writer Lease names another holder now (it was taken over): this process must not write."""

    exit_code = EXIT_LEASE_HELD


class ClusterUnreachable(ResponderError):
    exit_code = EXIT_UNREACHABLE


class ApiError(ResponderError):
    """A Kubernetes API error response (a `Status` object)."""

    exit_code = EXIT_NOT_CONTAINED
    # Set by the client when this answer came to a write it had to send again (the first attempt's
    # response was lost): a 409/422 then may mean "already applied by the first attempt".
    resent = False

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = "",
                 details: dict | None = None) -> None:
        self.status = status
        self.reason = reason
        self.method = method
        self.path = path
        self.details = details or {}
        super().__init__(f"{method} {path}: {status} {reason}: {message}".strip(": "))
        self.api_message = message

    @property
    def causes(self) -> list[dict]:
        return list(self.details.get("causes") or [])


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    exit_code = EXIT_FORBIDDEN

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fix = self.fix or ("renew the client certificate or token of this kubeconfig user (expired, revoked or "
                                "not issued for this cluster), or pick another --context")


class Forbidden(ApiError):
    exit_code = EXIT_FORBIDDEN

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fix = self.fix or ("grant responder's identity the permissions of `responder manifests rbac` "
                                "(kubectl apply -f -), or use a --context whose user has them")


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Gone(ApiError):
    pass


class Invalid(ApiError):
    """422: includes a failed JSON-patch `test` operation."""


class TooManyRequests(ApiError):
    pass


class ServerError(ApiError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}


def api_error_for(status: int, body: dict | None, *, method: str, path: str) -> ApiError:
    body = body or {}
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(
        status,
        str(body.get("reason") or ""),
        str(body.get("message") or ""),
        method=method,
        path=path,
        details=body.get("details") if isinstance(body.get("details"), dict) else None,
    )
