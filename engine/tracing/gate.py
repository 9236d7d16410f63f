"""The one door every trace goes through, over HTTP or from the CLI: credential, case id, allowance, audit.

Tracing opens the movements of a population, so no path answers a trace without, in this order: a valid tracer
token (unknown, expired and revoked tokens are refused, counted and logged at a bounded rate), a case or purpose
id, the tracer's allowance for that kind of trace (``engine.tracing.quotas``), an audit chain in good order, and
after the query an audit record that is stored before the answer is handed back (``engine.tracing.audit``). The
HTTP handlers and the CLI's direct path both call :meth:`TraceGate.admit` and :meth:`TraceGate.record`, so the
rules cannot drift apart.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from engine.errors import AuthError, PayloadError, RateLimitedError
from engine.ops.authlog import AuthFailures
from engine.ops.logs import quote
from engine.ops.metrics import Metrics
from engine.tracing.audit import AuditLog, AuditRecord, AuditUnavailable
from engine.tracing.credentials import CredentialRegistry, Tracer, TracerRefused
from engine.tracing.quotas import PERSON, WIDE, TracerQuotas

log = logging.getLogger("engine.tracing")

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{2,63}")
CASE_ID_RULE = "3-64 characters of letters, digits and . _ : / -, starting with a letter or digit"
#: what one trace is, for its allowance and its audit record
KINDS = ("person", "second_degree", "venue")


@dataclass(frozen=True)
class TraceAsk:
    """A trace as asked: kind, subject exactly as traced (``qr_id=…``), case id, parameters, client."""

    kind: str
    subject: str
    case_id: str
    parameters: dict[str, Any]
    client: str


def check_case_id(case_id: str | None) -> str:
    if not case_id:
        raise PayloadError(f"case_id is required: the case or purpose this trace serves ({CASE_ID_RULE})")
    if not CASE_ID.fullmatch(case_id):
        raise PayloadError(f"case_id must be {CASE_ID_RULE}")
    return case_id


class TraceGate:
    def __init__(
        self,
        tracers: CredentialRegistry,
        audit: AuditLog,
        *,
        quotas: TracerQuotas | None = None,
        failures: AuthFailures | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.tracers, self.audit, self.quotas = tracers, audit, quotas
        self.failures, self.metrics = failures, metrics

    def admit(self, token: str | None, ask: TraceAsk) -> Tracer:
        """The tracer, once every check before the query has passed; raises the specific refusal otherwise."""
        if ask.kind not in KINDS:
            raise ValueError(ask.kind)
        if not token:
            self._failed("missing", ask.client)
            raise AuthError("tracing needs a tracer token (Authorization: Bearer, ENGINE_TRACER_TOKEN or --token-file)")
        try:
            tracer = self.tracers.authenticate(token)
        except TracerRefused as exc:
            self._failed(exc.reason, ask.client)
            raise
        check_case_id(ask.case_id)
        if self.audit.broken:
            self._refused("audit_broken")
            raise AuditUnavailable(f"tracing is refused while the audit chain is broken: {self.audit.broken}")
        if self.quotas is not None:
            try:
                self.quotas.take(tracer.name, PERSON if ask.kind == "person" else WIDE)
            except RateLimitedError:
                self._refused("rate_limited")
                log.warning("trace refused: tracer=%s over its %s allowance", quote(tracer.name), ask.kind)
                raise
        return tracer

    def record(self, tracer: Tracer, ask: TraceAsk, result_size: int) -> AuditRecord:
        """Store the audit record of an answered trace (blocking: the store thread calls it), then log it."""
        rec = self.audit.append(
            tracer=tracer.name,
            kind=ask.kind,
            subject=ask.subject,
            case_id=ask.case_id,
            parameters=ask.parameters,
            result_size=result_size,
            client=ask.client,
        )
        if self.metrics is not None:
            self.metrics.traces.labels(kind=ask.kind).inc()
        log.info(
            "trace answered: tracer=%s kind=%s subject=%s case=%s rows=%d client=%s audit=%s:%d",
            quote(tracer.name),
            ask.kind,
            quote(ask.subject),
            quote(ask.case_id),
            result_size,
            quote(ask.client),
            rec.chain,
            rec.seq,
            extra={"audit": {"tracer": tracer.name, "trace": ask.kind, "subject": ask.subject, "case_id": ask.case_id,
                             "rows": result_size, "client": ask.client, "chain": rec.chain, "seq": rec.seq}},
        )  # fmt: skip
        return rec

    def _failed(self, reason: str, client: str) -> None:
        if self.failures is not None:
            self.failures.record("tracer", reason, client)

    def _refused(self, cause: str) -> None:
        if self.metrics is not None:
            self.metrics.traces_refused.labels(cause=cause).inc()
