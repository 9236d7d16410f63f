"""After a load test: was every acknowledged scan stored exactly once, with the verdict it deserved?

A 202 is a promise (the scan is in the fsync'd WAL and will reach the store), so the check is strict:

* **lost**: acknowledged (item status ``stored`` or ``duplicate``) but not in the store;
* **duplicates**: one scan stored more than once;
* **mismatched**: stored with a verdict other than the one the generator minted the code for;
* **phantoms**: a stored scan nobody sent (or one the engine refused and still stored).

A scan is identified by (device id, scan id), as in the engine (issue 12): two devices may send the same scan
id, and those are two scans, each stored once with its own verdict.

Scans whose request got no 202 (429/503 backpressure, a timeout) may or may not be stored: they are counted,
never judged. The inputs are every ``*.jsonl`` file in the results directory, one per Locust process, so a
distributed run (one master, many workers, each writing its own file) is checked by pointing this at the
directory that holds all their files. The store is opened directly, so the engine must be stopped first
(chdb locks its directory to one process)::

    python loadtest/checker.py --results-dir out/results --data-dir out/data
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.codes.verdicts import VERDICTS

REJECTED = "rejected"
ACKED_STATUSES = ("stored", "duplicate")
#: a scan's identity: (device id, scan id)
ScanKey = tuple[str, str]


def key_text(key: ScanKey) -> str:
    """A scan key as printed in the report's examples: ``device/scan_id``."""
    return f"{key[0]}/{key[1]}"


@dataclass
class Sent:
    """Everything the generator processes recorded, merged."""

    acked: dict[ScanKey, str] = field(default_factory=dict)  # (device, scan id) -> expected verdict
    refused: set[ScanKey] = field(default_factory=set)  # items the engine answered "rejected"
    unacked: set[ScanKey] = field(default_factory=set)  # in requests that got no 202
    statuses: Counter[int] = field(default_factory=Counter)  # HTTP status -> requests
    tasks: Counter[str] = field(default_factory=Counter)
    items_sent: int = 0  # scan items in all requests, retries included
    answer_mismatches: int = 0  # 202 answers whose verdict/status differed from the expectation
    conflicts: int = 0  # one scan recorded with two different expectations (a generator bug)
    files: int = 0
    first_t: float = 0.0
    last_t: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def span_s(self) -> float:
        return max(self.last_t - self.first_t, 1e-9)


def load_results(results_dir: Path) -> Sent:
    """Merge every process's JSONL file; the order of files and lines does not matter."""
    sent = Sent()
    expected_of: dict[ScanKey, str] = {}
    for path in sorted(results_dir.glob("*.jsonl")):
        sent.files += 1
        with path.open("rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                line = orjson.loads(raw)
                t, status = float(line["t"]), int(line["status"])
                sent.first_t = t if not sent.first_t else min(sent.first_t, t)
                sent.last_t = max(sent.last_t, t)
                sent.statuses[status] += 1
                sent.tasks[line.get("task", "?")] += 1
                sent.items_sent += len(line["scans"])
                device = str(line["device"])
                for scan in line["scans"]:
                    sid, expected = (device, scan[0]), scan[1]
                    if expected_of.setdefault(sid, expected) != expected:
                        sent.conflicts += 1
                    if status != 202:
                        sent.unacked.add(sid)
                        continue
                    item_status, answered = scan[2], scan[3]
                    if item_status in ACKED_STATUSES:
                        sent.acked[sid] = expected
                        sent.answer_mismatches += answered != expected
                    else:
                        sent.refused.add(sid)
                        sent.answer_mismatches += expected != REJECTED
    sent.unacked -= sent.acked.keys()
    sent.refused -= sent.acked.keys()
    return sent


def stored_scans(data_dir: Path, database: str = "vnqr") -> dict[ScanKey, list[str]]:
    """(device, scan id) -> the verdict of every row stored under it (no FINAL: a duplicate row must be seen)."""
    from engine.store.store import Store

    store = Store.connect(f"chdb://{(data_dir / 'store').resolve()}", database=database)
    try:
        rows = store.query(
            f"SELECT device_id, toString(scan_id), toString(verdict), count() FROM {store.database}.scans "
            "GROUP BY 1, 2, 3"
        )
    finally:
        store.close()
    out: dict[ScanKey, list[str]] = {}
    for device, sid, verdict, n in rows:
        label = VERDICTS[int(verdict)] if str(verdict).isdigit() else str(verdict)
        out.setdefault((str(device), str(sid)), []).extend([label] * int(n))
    return out


def wal_backlog(data_dir: Path) -> int:
    """Records still in the stopped engine's WAL: acknowledged but not drained (tells a slow drain from a loss)."""
    from engine.ingest.wal import WriteAheadLog

    wal_dir = data_dir / "wal"
    if not wal_dir.exists():
        return 0
    wal = WriteAheadLog(wal_dir)
    wal.open()
    try:
        return wal.backlog_records
    finally:
        wal.close()


@dataclass
class Report:
    sent: Sent
    stored_rows: int
    stored_ids: int
    lost: list[ScanKey]
    duplicates: list[ScanKey]
    mismatched: list[ScanKey]
    phantoms: list[ScanKey]
    unacked_stored: int
    confusion: Counter[tuple[str, str]]
    wal_backlog_records: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicates
            or self.mismatched
            or self.phantoms
            or self.sent.answer_mismatches
            or self.sent.conflicts
        ) and bool(self.sent.acked)

    def as_dict(self) -> dict[str, object]:
        s = self.sent
        return {
            "ok": self.ok,
            "result_files": s.files,
            "requests": s.requests,
            "requests_by_status": {str(k): v for k, v in sorted(s.statuses.items())},
            "requests_by_task": dict(s.tasks),
            "scan_items_sent": s.items_sent,
            "scans_acknowledged": len(s.acked),
            "scans_refused_by_engine": len(s.refused),
            "scans_unacknowledged": len(s.unacked),
            "unacknowledged_but_stored": self.unacked_stored,
            "stored_rows": self.stored_rows,
            "stored_scans": self.stored_ids,
            "lost": len(self.lost),
            "duplicates": len(self.duplicates),
            "mismatched": len(self.mismatched),
            "phantoms": len(self.phantoms),
            "wal_records_not_drained": self.wal_backlog_records,
            "answer_mismatches": s.answer_mismatches,
            "generator_conflicts": s.conflicts,
            "confusion": {f"{e}->{g}": n for (e, g), n in sorted(self.confusion.items())},
            "examples": {
                "lost": [key_text(k) for k in self.lost[:5]],
                "duplicates": [key_text(k) for k in self.duplicates[:5]],
                "mismatched": [key_text(k) for k in self.mismatched[:5]],
                "phantoms": [key_text(k) for k in self.phantoms[:5]],
            },
            "span_s": round(s.span_s, 3),
            "acknowledged_scans_per_s": round(len(s.acked) / s.span_s, 1),
        }


def check(sent: Sent, stored: dict[ScanKey, list[str]], wal_backlog_records: int = 0) -> Report:
    """Judge what was stored against what was acknowledged, scan by scan (keyed by device and scan id)."""
    confusion: Counter[tuple[str, str]] = Counter()
    lost: list[ScanKey] = []
    duplicates: list[ScanKey] = []
    mismatched: list[ScanKey] = []
    phantoms: list[ScanKey] = []
    for sid, expected in sent.acked.items():
        verdicts = stored.get(sid)
        if not verdicts:
            lost.append(sid)
            confusion[(expected, "(lost)")] += 1
            continue
        for got in verdicts:
            confusion[(expected, got)] += 1
        if len(verdicts) > 1:
            duplicates.append(sid)
        if any(v != expected for v in verdicts):
            mismatched.append(sid)
    unacked_stored = 0
    for sid, verdicts in stored.items():
        if sid in sent.acked:
            continue
        if sid in sent.unacked:
            unacked_stored += 1
            if len(verdicts) > 1:
                duplicates.append(sid)
        else:  # never sent, or refused by the engine and stored all the same
            phantoms.append(sid)
    return Report(
        sent=sent,
        stored_rows=sum(len(v) for v in stored.values()),
        stored_ids=len(stored),
        lost=lost,
        duplicates=duplicates,
        mismatched=mismatched,
        phantoms=phantoms,
        unacked_stored=unacked_stored,
        confusion=confusion,
        wal_backlog_records=wal_backlog_records,
    )


def format_confusion(confusion: Counter[tuple[str, str]]) -> str:
    """Expected verdicts as rows, stored verdicts as columns: anything off the diagonal is a bug."""
    rows = sorted({e for e, _ in confusion})
    cols = sorted({g for _, g in confusion})
    width = max([len(c) for c in cols] + [8])
    corner = "expected \\ stored"
    lines = [f"{corner:18} " + " ".join(f"{c:>{width}}" for c in cols)]
    for r in rows:
        lines.append(f"{r:18} " + " ".join(f"{confusion.get((r, c), 0):>{width}}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", type=Path, required=True, help="directory of *.jsonl files (all workers)")
    ap.add_argument("--data-dir", type=Path, required=True, help="the stopped engine's data directory")
    ap.add_argument("--database", default="vnqr")
    args = ap.parse_args(argv)
    report = check(
        load_results(args.results_dir), stored_scans(args.data_dir, args.database), wal_backlog(args.data_dir)
    )
    print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    print(format_confusion(report.confusion))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
