"""One exception hierarchy for the whole engine.

Everything the engine raises on purpose derives from :class:`EngineError`, so callers (the CLI, the HTTP error
middleware) can tell "we refused this, with a reason" from a bug. The HTTP status that each kind maps to is
decided in one place, ``engine.web.app``'s error middleware, via the ``http_status`` attribute.
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error the engine raises deliberately."""

    http_status = 500
    code = "engine_error"


class ConfigError(EngineError):
    """Configuration is invalid; raised once, at start-up."""

    code = "config"


class TrustListError(EngineError):
    """The trust list file is unreadable, malformed, or holds a weak or inconsistent key."""

    http_status = 422  # the operator's file is wrong (a reload keeps the old list), not the engine
    code = "trust_list"


class KeyFileError(EngineError):
    """A private key file is missing, unreadable or has unsafe permissions."""

    code = "key_file"


class MintError(EngineError):
    """A code cannot be issued from the given fields (they would not parse as a valid code)."""

    code = "mint"


class QRReadError(EngineError):
    """An image holds no readable QR code, or more than one."""

    code = "qr_read"


class NotFoundError(EngineError):
    """The named object (device, key, person) does not exist."""

    http_status = 404
    code = "not_found"


class ConflictError(EngineError):
    """The request is well formed but this node is not set up for it (e.g. publishing a signed trust list to a
    node that reads a plain file)."""

    http_status = 409
    code = "conflict"


class PayloadError(EngineError):
    """A request envelope (not a single scan) is malformed: the whole request is refused."""

    http_status = 400
    code = "bad_request"


class RequestTimeoutError(EngineError):
    """The client did not finish sending its request in time (slow or stalled upload)."""

    http_status = 408
    code = "request_timeout"


class AuthError(EngineError):
    """The caller did not prove who it is (missing/invalid signature, stale or replayed request)."""

    http_status = 401
    code = "unauthorized"


class ForbiddenError(EngineError):
    """The caller is known but not allowed (unknown or revoked device, wrong credential kind)."""

    http_status = 403
    code = "forbidden"


class RateLimitedError(EngineError):
    """A device exceeded its request rate."""

    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OverloadedError(EngineError):
    """The engine cannot take more work right now (queue full, WAL over budget); the device should retry."""

    http_status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(EngineError):
    """The ClickHouse store failed or is unreachable."""

    http_status = 503
    code = "store_unavailable"


class WALError(EngineError):
    """The write-ahead log could not be written or read back."""

    http_status = 503
    code = "wal"


class WALFullError(WALError, OverloadedError):
    """The WAL reached its disk budget: refuse new scans until the backlog drains."""

    code = "wal_full"


class TraceLimitError(EngineError):
    """A trace went past one of its caps (rows read or returned, answer bytes): refused, with how to narrow it.

    ``details`` goes into the answer beside ``error`` and ``message``: the cap that was hit, its value, and the
    parameters that make the trace smaller, so a tracing client can say what to change instead of retrying."""

    http_status = 413
    code = "trace_too_large"

    def __init__(self, message: str, *, cap: str, limit: float, narrow: list[str]) -> None:
        super().__init__(message)
        self.details = {"cap": cap, "limit": limit, "narrow": narrow}


class TraceTooSlowError(TraceLimitError):
    """A trace ran past its time cap (``--trace-timeout-s``): its store query was stopped."""

    http_status = 422
    code = "trace_too_slow"


class InternalError(EngineError):
    """A bug inside the engine (e.g. the verifier raised): a 500 whose message carries the id of the log line
    that holds the traceback, never a 503 "overloaded" that would have devices retry into the same bug."""

    http_status = 500
    code = "internal"
