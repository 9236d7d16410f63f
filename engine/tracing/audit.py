"""The tracing audit log: one record per answered trace, written before the answer leaves, hash-chained, in
ClickHouse (``audit_log``, migration 0010), and verifiable by anyone who can read the table.

A record says who traced (the tracer's name), whom or what (the subject exactly as traced: ``qr_id=…``,
``person_key=…`` or ``venue_id=…``), why (the case or purpose id), how (every parameter, as canonical JSON),
how much came back (rows of the answer), from where (the client address, or the local account for the CLI)
and when. As in Certificate Transparency (RFC 6962), each record carries the hash of the one before it::

    hash = SHA-256("VNQR-AUDIT-V1\\0" + prev_hash + canonical JSON of every other field)

and the first record's ``prev_hash`` is derived from the chain's id, so a record removed from the middle (a
gap in ``seq``, a broken link), an edited one (its hash no longer matches) or one slipped in (a duplicate
``seq``) is found by recomputing the chain. Removing the *last* records leaves a shorter chain that is valid
in itself, so the writer also keeps the head it last wrote — ``(chain, seq, hash)`` — outside the table, in
``<data_dir>/audit.head`` (0600): a chain shorter than its anchor was cut. An anchor on the same host does not
stop the host's own account; for that, ``audit head`` prints the head for an auditor to keep elsewhere, and
``audit verify --expect CHAIN:SEQ:HASH`` proves a later table still holds that exact history.

One writer per chain: each data directory writes its own chain (its id is in the anchor), and the writer holds
``<data_dir>/audit.lock`` while it may append (the engine for its whole life, the CLI for one trace), so two
writers never fork a chain; each worker of ``--workers`` has its own (``audit-1.head``, ``audit-1.lock``, …).
With several nodes the table holds one chain per node and worker; ``audit verify`` checks every chain and the
anchors it can see.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.durable import replace_file
from engine.errors import ConfigError, EngineError, PayloadError, StoreError
from engine.permissions import check_private_if_present
from engine.store.store import Store

log = logging.getLogger(__name__)

DOMAIN = b"VNQR-AUDIT-V1\x00"
GENESIS_DOMAIN = b"VNQR-AUDIT-GENESIS-V1\x00"
DEFAULT_CHAIN_NAME = "audit"  # each writer's files: <name>.head (its anchor), <name>.lock (its writer lock)
HEAD_FILE = f"{DEFAULT_CHAIN_NAME}.head"
TABLE = "audit_log"
COLUMNS = (
    "chain",
    "seq",
    "at",
    "tracer",
    "kind",
    "subject",
    "case_id",
    "parameters",
    "result_size",
    "client",
    "prev_hash",
    "hash",
)
_TYPES = [
    "String",
    "UInt64",
    "DateTime64(3, 'UTC')",
    "String",
    "String",
    "String",
    "String",
    "String",
    "UInt64",
    "String",
    "String",
    "String",
]
_PAGE = 50_000


class AuditUnavailable(EngineError):
    """The audit log cannot take a record (broken chain, store down): no trace is answered without one."""

    http_status = 503
    code = "audit_unavailable"


@dataclass(frozen=True)
class AuditRecord:
    chain: str
    seq: int
    at_ms: int
    tracer: str
    kind: str
    subject: str
    case_id: str
    parameters: str
    result_size: int
    client: str
    prev_hash: str
    hash: str = ""

    def computed_hash(self) -> str:
        body = asdict(self)
        body.pop("hash")
        prev = bytes.fromhex(body.pop("prev_hash")) if _is_hex(self.prev_hash) else self.prev_hash.encode()
        return hashlib.sha256(DOMAIN + prev + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["parameters"] = orjson.loads(self.parameters) if self.parameters else {}
        return doc


def _is_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def genesis_hash(chain: str) -> str:
    """The ``prev_hash`` of a chain's first record: tied to the chain id, so chains cannot be spliced."""
    return hashlib.sha256(GENESIS_DOMAIN + chain.encode()).hexdigest()


def canonical_parameters(parameters: dict[str, Any]) -> str:
    return orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True)
class Head:
    """Where a chain ends: the anchor a writer keeps, or what an auditor copied off the host."""

    chain: str
    seq: int
    hash: str

    def text(self) -> str:
        return f"{self.chain}:{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        parts = text.strip().rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not _is_hex(parts[2]):
            raise PayloadError(f"a chain head is CHAIN:SEQ:HASH (64 hex digits), not {text!r}")
        return cls(parts[0], int(parts[1]), parts[2])


def read_anchor(data_dir: Path, name: str = DEFAULT_CHAIN_NAME) -> Head | None:
    path = data_dir / f"{name}.head"
    if not path.exists():
        return None
    check_private_if_present(path, "audit anchor")
    try:
        doc = orjson.loads(path.read_bytes())
        return Head(str(doc["chain"]), int(doc["seq"]), str(doc["hash"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"audit anchor {path} is malformed: {exc}") from None


def read_anchors(data_dir: Path) -> list[Head]:
    """Every writer's anchor in the data directory (one per worker of ``--workers``)."""
    names = sorted(p.name.removesuffix(".head") for p in data_dir.glob(f"{DEFAULT_CHAIN_NAME}*.head"))
    return [h for h in (read_anchor(data_dir, n) for n in names) if h is not None]


def _write_anchor(data_dir: Path, name: str, head: Head) -> None:
    replace_file(data_dir / f"{name}.head", orjson.dumps({**asdict(head), "written_at": int(time.time())}))


# -- reading -------------------------------------------------------------------------------------------------
def _row_record(r: tuple[Any, ...]) -> AuditRecord:
    return AuditRecord(
        str(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]), int(r[8]), str(r[9]),
        str(r[10]), str(r[11]),
    )  # fmt: skip


_SELECT = (
    "SELECT " + ", ".join("toUnixTimestamp64Milli(at)" if c == "at" else c for c in COLUMNS) + f" FROM {{db}}.{TABLE}"
)


def iter_chain(store: Store, chain: str) -> Iterator[AuditRecord]:
    """Every record of one chain in ``seq`` order (duplicates included: a verifier must see them), paged."""
    after = -1
    while True:
        rows = store.query(
            _SELECT.format(db=store.database) + " WHERE chain = {c:String} AND seq > {s:Int64} "
            "ORDER BY seq, hash LIMIT {n:UInt64}",
            {"c": chain, "s": after, "n": _PAGE},
        )
        if not rows:
            return
        records = [_row_record(r) for r in rows]
        # a page may end in the middle of a duplicated seq: read the rest of that seq with the next page
        last = records[-1].seq
        if len(records) == _PAGE:
            cut = [x for x in records if x.seq < last]
            if cut:
                records = cut
                last = records[-1].seq
        yield from records
        if len(rows) < _PAGE:
            return
        after = last


def chains(store: Store) -> list[str]:
    return [str(r[0]) for r in store.query(f"SELECT DISTINCT chain FROM {store.database}.{TABLE} ORDER BY chain")]


def list_records(
    store: Store,
    *,
    tracer: str | None = None,
    case_id: str | None = None,
    subject: str | None = None,
    since_ms: int | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """The newest records first, filtered; values are bound by the server, never pasted into SQL."""
    where = ["1"]
    params: dict[str, Any] = {"n": max(1, min(limit, 100_000))}
    for name, value in (("tracer", tracer), ("case_id", case_id), ("subject", subject)):
        if value:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value
    if since_ms is not None:
        where.append("at >= fromUnixTimestamp64Milli({since:Int64})")
        params["since"] = since_ms
    rows = store.query(
        _SELECT.format(db=store.database)
        + f" WHERE {' AND '.join(where)} ORDER BY at DESC, seq DESC LIMIT {{n:UInt64}}",
        params,
    )
    return [_row_record(r) for r in rows]


# -- verifying -----------------------------------------------------------------------------------------------
@dataclass
class ChainReport:
    chain: str
    records: int = 0
    last_seq: int = 0
    last_hash: str = ""
    problems: list[str] = field(default_factory=list)
    anchored: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_records(chain: str, records: Iterable[AuditRecord], heads: Iterable[Head] = ()) -> ChainReport:
    """Recompute one chain; every removal, edit, insertion or cut tail becomes a problem that names the seq."""
    report = ChainReport(chain)
    prev, expected = genesis_hash(chain), 1
    by_seq: dict[int, str] = {}
    wanted = {h.seq for h in heads}
    for rec in records:
        report.records += 1
        if len(report.problems) >= 100:
            report.problems.append("more problems not listed")
            break
        if rec.seq < expected:
            report.problems.append(f"record {rec.seq} appears more than once: one copy was inserted afterwards")
            continue
        if rec.seq > expected:
            missing = f"{expected}" if rec.seq == expected + 1 else f"{expected}..{rec.seq - 1}"
            report.problems.append(f"record(s) {missing} are missing: removed from the table")
        if rec.prev_hash != prev:
            report.problems.append(f"record {rec.seq} does not follow the record before it (altered or removed)")
        if rec.computed_hash() != rec.hash:
            report.problems.append(f"record {rec.seq} was altered: its hash does not match its contents")
        prev, expected = rec.hash, rec.seq + 1
        report.last_seq, report.last_hash = rec.seq, rec.hash
        if rec.seq in wanted:
            by_seq[rec.seq] = rec.hash
    for head in heads:
        report.anchored = True
        if report.last_seq < head.seq:
            report.problems.append(
                f"the chain ends at record {report.last_seq} but its anchor says {head.seq}: "
                f"record(s) {report.last_seq + 1}..{head.seq} were removed"
            )
        elif by_seq.get(head.seq) != head.hash:
            report.problems.append(f"record {head.seq} is not the one anchored (its hash differs): history rewritten")
    return report


def verify_store(store: Store, heads: Iterable[Head] = ()) -> list[ChainReport]:
    """Every chain in the table, each checked against the heads given for it (the local anchor, --expect)."""
    by_chain: dict[str, list[Head]] = {}
    for h in heads:
        by_chain.setdefault(h.chain, []).append(h)
    names = sorted(set(chains(store)) | set(by_chain))
    return [verify_records(c, iter_chain(store, c), by_chain.get(c, ())) for c in names]


# -- writing -------------------------------------------------------------------------------------------------
class AuditLog:
    """The one writer of this data directory's chain. Not thread-safe: the engine calls it on its store thread."""

    def __init__(self, store: Store, data_dir: Path, name: str = DEFAULT_CHAIN_NAME) -> None:
        self.store = store
        self.data_dir = data_dir
        self.name = name
        self.head: Head | None = None
        self.broken: str | None = None
        self._lock_fd: int | None = None

    def open(self) -> AuditLog:
        """Take the writer lock, read the anchor, and check that the table's head is the anchored one."""
        fd = os.open(self.data_dir / f"{self.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditUnavailable(
                f"the audit chain of {self.data_dir} is held by a running engine: trace through it"
            ) from None
        self._lock_fd = fd
        anchor = read_anchor(self.data_dir, self.name)
        if anchor is None:
            chain = f"{socket.gethostname()[:40]}-{secrets.token_hex(4)}"
            self.head = Head(chain, 0, genesis_hash(chain))
            log.info("audit: new chain %s in %s", chain, self.data_dir)
            return self
        self.head = anchor
        table = self._table_head(anchor.chain)
        if table is None and anchor.seq == 0:
            return self
        if table is None or table.seq < anchor.seq:
            last = table.seq if table else 0
            self.broken = f"records {last + 1}..{anchor.seq} of audit chain {anchor.chain} were removed"
        else:
            records = list(iter_chain(self.store, anchor.chain))
            report = verify_records(anchor.chain, records, [anchor])
            if not report.ok:
                self.broken = "; ".join(report.problems[:3])
            elif table.seq > anchor.seq:  # appended, then stopped before the anchor moved: adopt the table's head
                self.head = Head(anchor.chain, report.last_seq, report.last_hash)
                _write_anchor(self.data_dir, self.name, self.head)
        if self.broken:
            log.critical(
                "audit chain does not match its anchor: %s; tracing is refused (docs/security.md)", self.broken
            )
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def append(
        self,
        *,
        tracer: str,
        kind: str,
        subject: str,
        case_id: str,
        parameters: dict[str, Any],
        result_size: int,
        client: str,
        now_ms: int | None = None,
    ) -> AuditRecord:
        """Write one record (table first, then the anchor) or raise :class:`AuditUnavailable`."""
        if self.head is None or self._lock_fd is None:
            raise AuditUnavailable("the audit log is not open")
        if self.broken:
            raise AuditUnavailable(f"the audit chain is broken ({self.broken}); no trace can be recorded")
        head = self.head
        rec = AuditRecord(
            head.chain,
            head.seq + 1,
            int(time.time() * 1000) if now_ms is None else now_ms,
            tracer,
            kind,
            subject,
            case_id,
            canonical_parameters(parameters),
            int(result_size),
            client,
            head.hash,
        )
        rec = AuditRecord(**{**asdict(rec), "hash": rec.computed_hash()})
        try:
            self.store.insert_rows(TABLE, COLUMNS, _TYPES, [[getattr(rec, _attr(c))] for c in COLUMNS])
        except StoreError as exc:
            raise AuditUnavailable(f"the audit record could not be stored, so no answer is given: {exc}") from exc
        self.head = Head(rec.chain, rec.seq, rec.hash)
        _write_anchor(self.data_dir, self.name, self.head)
        return rec

    def _table_head(self, chain: str) -> Head | None:
        rows = self.store.query(
            f"SELECT seq, hash FROM {self.store.database}.{TABLE} WHERE chain = {{c:String}} ORDER BY seq DESC LIMIT 1",
            {"c": chain},
        )
        return Head(chain, int(rows[0][0]), str(rows[0][1])) if rows else None


def _attr(column: str) -> str:
    return "at_ms" if column == "at" else column
