"""The WAL against real files: what was acknowledged survives reopen, torn tails, kill -9 and full disks.

Damage is done to the bytes on disk the way a power cut or bad sector would; failure of the OS is real where it
can be made real without privileges (RLIMIT_FSIZE gives a genuine short write followed by EFBIG), and injected
only for EIO on fsync, which no unprivileged test can provoke.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.ingest.wal as wal_module
from engine.errors import WALError, WALFullError
from engine.ingest.wal import WALRecord, WriteAheadLog

REPO = Path(__file__).resolve().parent.parent


def payload(lsn: int, size: int = 40) -> bytes:
    """Deterministic content per LSN, so a test can tell a record from its neighbour after reopen."""
    seed = f"scan-{lsn}:".encode()
    return (seed * (size // len(seed) + 1))[:size]


def opened(path: Path, **kw: int | bool) -> WriteAheadLog:
    kw.setdefault("fsync", False)  # page cache is enough unless a test is about power cuts, which none can be
    w = WriteAheadLog(path, **kw)  # type: ignore[arg-type]
    w.open()
    return w


def read_all(w: WriteAheadLog, after: int = 0) -> list[WALRecord]:
    out: list[WALRecord] = []
    while batch := w.read(after, max_records=1000):
        out.extend(batch)
        after = batch[-1].lsn
    return out


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.wal"))


def fill(w: WriteAheadLog, n: int, group: int = 1, size: int = 40) -> None:
    for _ in range(n // group):
        first = w.last_lsn + 1
        w.append([payload(first + i, size) for i in range(group)])


def test_round_trip_and_read_limits(tmp_path: Path) -> None:
    w = opened(tmp_path, fsync=True)
    assert (w.last_lsn, w.checkpoint_lsn, w.backlog_records, w.backlog_bytes) == (0, 0, 0, 0)
    assert w.read(0) == []
    sizes = [0, 1, 2000, 70_000, 5]
    assert w.append([payload(i + 1, s) for i, s in enumerate(sizes)]) == 5
    assert w.append([payload(6)]) == 6
    assert read_all(w) == [WALRecord(i + 1, payload(i + 1, s)) for i, s in enumerate([*sizes, 40])]
    assert [r.lsn for r in w.read(2, max_records=2)] == [3, 4]
    # max_bytes stops before a record that would overflow it, but never returns nothing when a record exists
    assert [r.lsn for r in w.read(2, max_bytes=1000)] == [3]
    assert [r.lsn for r in w.read(3, max_bytes=10)] == [4]
    assert w.backlog_records == 6
    assert w.backlog_bytes == sum(16 + s for s in [*sizes, 40])
    assert w.disk_bytes == 16 + w.backlog_bytes
    w.close()


def test_lsns_continue_across_reopen_and_rotation(tmp_path: Path) -> None:
    w = opened(tmp_path, segment_bytes=300)
    fill(w, 12, group=3)
    assert len(segments(tmp_path)) > 2
    w.close()
    w = opened(tmp_path, segment_bytes=300)
    assert w.last_lsn == 12
    assert w.append([payload(13), payload(14)]) == 14
    w.close()
    w = opened(tmp_path, segment_bytes=300)
    assert read_all(w) == [WALRecord(i, payload(i)) for i in range(1, 15)]
    # segment names are the first LSN of each, zero-padded so lexical order is LSN order
    firsts = [int(p.stem) for p in segments(tmp_path)]
    assert firsts == sorted(firsts) and firsts[0] == 1 and all(len(p.stem) == 20 for p in segments(tmp_path))
    w.close()


_op = st.one_of(
    st.tuples(st.just("append"), st.lists(st.binary(max_size=300), min_size=1, max_size=6)),
    st.tuples(st.just("checkpoint"), st.floats(0, 1)),
    st.tuples(st.just("reopen"), st.none()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_op, max_size=30))
def test_any_sequence_of_operations_matches_a_plain_list(ops: list[tuple[str, object]]) -> None:
    """Reference model: a list of payloads and a checkpoint number. Rotation is forced by tiny segments."""
    with tempfile.TemporaryDirectory() as d:
        model: list[bytes] = []
        ckpt = 0
        w = opened(Path(d), segment_bytes=400)
        for op, arg in ops:
            if op == "append":
                assert isinstance(arg, list)
                model.extend(arg)
                assert w.append(arg) == len(model)
            elif op == "checkpoint":
                assert isinstance(arg, float)
                ckpt = max(ckpt, int(arg * len(model)))
                w.checkpoint(int(arg * len(model)))
            else:
                w.close()
                w = opened(Path(d), segment_bytes=400)
            assert (w.last_lsn, w.checkpoint_lsn) == (len(model), ckpt)
            assert read_all(w, ckpt) == [WALRecord(i + 1, p) for i, p in enumerate(model) if i >= ckpt]
            assert w.backlog_bytes == sum(16 + len(p) for p in model[ckpt:])
            assert w.disk_bytes == sum(f.stat().st_size for f in segments(Path(d)))
        w.close()


def test_batch_larger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    w = opened(tmp_path, segment_bytes=100)
    w.append([payload(1, 500), payload(2, 500)])
    w.append([payload(3)])
    w.close()
    w = opened(tmp_path, segment_bytes=100)
    assert [len(r.payload) for r in read_all(w)] == [500, 500, 40]
    w.close()


def test_checkpoint_deletes_stored_segments_and_survives_reopen(tmp_path: Path) -> None:
    w = opened(tmp_path, segment_bytes=300, fsync=True)
    fill(w, 20, group=2)
    before = segments(tmp_path)
    w.checkpoint(9)
    after = segments(tmp_path)
    assert len(after) < len(before)
    assert int(after[0].stem) <= 10  # the segment holding record 10 is kept
    assert w.backlog_records == 11
    assert w.backlog_bytes == 11 * (16 + 40)
    assert [r.lsn for r in w.read(w.checkpoint_lsn)][:1] == [10]
    w.checkpoint(5)  # lower: ignored
    assert w.checkpoint_lsn == 9
    with pytest.raises(ValueError):
        w.checkpoint(21)
    w.close()

    w = opened(tmp_path, segment_bytes=300)
    assert (w.checkpoint_lsn, w.last_lsn, w.backlog_records) == (9, 20, 11)
    assert read_all(w, w.checkpoint_lsn) == [WALRecord(i, payload(i)) for i in range(10, 21)]
    w.checkpoint(20)
    assert len(segments(tmp_path)) == 1  # the active segment stays: it is where the next LSN comes from
    assert (w.backlog_records, w.backlog_bytes) == (0, 0)
    w.close()
    w = opened(tmp_path, segment_bytes=300)
    assert w.append([payload(21)]) == 21
    assert read_all(w, 20) == [WALRecord(21, payload(21))]
    w.close()


def _cut(n: int) -> Callable[[Path], None]:
    return lambda f: os.truncate(f, f.stat().st_size - n)


def _append(data: bytes) -> Callable[[Path], None]:
    def damage(f: Path) -> None:
        with f.open("ab") as fh:
            fh.write(data)

    return damage


@pytest.mark.parametrize(
    ("damage", "kept"),
    [
        pytest.param(_cut(3), 9, id="cut-3-bytes"),
        pytest.param(_cut(50), 9, id="cut-into-record-header"),
        pytest.param(_cut(16 + 40 + 2), 8, id="cut-into-previous-record"),
        pytest.param(_append(os.urandom(3000)), 10, id="garbage-appended"),
        pytest.param(_append(bytes(4096)), 10, id="zero-filled"),
    ],
)
def test_torn_tail_is_truncated_and_earlier_records_survive(
    tmp_path: Path, damage: Callable[[Path], None], kept: int
) -> None:
    w = opened(tmp_path)
    fill(w, 10, group=2)
    w.close()
    last = segments(tmp_path)[-1]
    damage(last)
    w = opened(tmp_path)
    survivors = read_all(w)
    assert survivors == [WALRecord(i, payload(i)) for i in range(1, kept + 1)]
    assert w.last_lsn == len(survivors)
    size_after_repair = last.stat().st_size
    assert w.append([payload(w.last_lsn + 1)]) == len(survivors) + 1
    w.close()
    w = opened(tmp_path)
    assert read_all(w) == [WALRecord(i, payload(i)) for i in range(1, len(survivors) + 2)]
    assert last.stat().st_size == size_after_repair + 16 + 40
    w.close()


def test_torn_segment_header_from_a_crash_during_rotation_is_removed(tmp_path: Path) -> None:
    w = opened(tmp_path)
    fill(w, 3)
    w.close()
    (tmp_path / f"{4:020d}.wal").write_bytes(b"VQW")
    w = opened(tmp_path)
    assert w.last_lsn == 3
    assert [p.name for p in segments(tmp_path)] == [f"{1:020d}.wal"]
    assert w.append([payload(4)]) == 4
    w.close()


def test_mid_file_corruption_raises_with_file_and_offset(tmp_path: Path) -> None:
    w = opened(tmp_path)
    fill(w, 10)
    w.close()
    seg = segments(tmp_path)[0]
    offset = 16 + 4 * (16 + 40)  # record 5
    raw = bytearray(seg.read_bytes())
    raw[offset + 16 + 7] ^= 0x01  # one bit of record 5's payload
    seg.write_bytes(bytes(raw))
    with pytest.raises(WALError, match=rf"{seg.name} offset {offset}"):
        opened(tmp_path)
    # the failed open did not "repair" acknowledged data away, and released the directory lock
    assert seg.stat().st_size == len(raw)
    with pytest.raises(WALError, match="corrupt record"):
        opened(tmp_path)


def test_damage_to_a_sealed_segment_is_never_a_torn_tail(tmp_path: Path) -> None:
    w = opened(tmp_path, segment_bytes=200)
    fill(w, 9, group=3)
    w.close()
    first = segments(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-5])  # its last record is cut: that data was acknowledged
    with pytest.raises(WALError, match=first.name):
        opened(tmp_path, segment_bytes=200)


def test_checkpoint_file_damage_is_an_error_not_a_reset(tmp_path: Path) -> None:
    w = opened(tmp_path)
    fill(w, 3)
    w.checkpoint(2)
    w.close()
    ck = tmp_path / "checkpoint"
    ck.write_bytes(ck.read_bytes()[:-1] + b"\x00")
    with pytest.raises(WALError, match="checkpoint"):
        opened(tmp_path)


def test_second_opener_is_refused(tmp_path: Path) -> None:
    w = opened(tmp_path)
    with pytest.raises(WALError, match="in use"):
        opened(tmp_path)
    w.close()
    opened(tmp_path).close()


def test_budget_refuses_before_writing_then_accepts_after_checkpoint(tmp_path: Path) -> None:
    w = opened(tmp_path, budget_bytes=10 * (16 + 40), segment_bytes=4 * (16 + 40) + 16)
    fill(w, 10)
    disk = w.disk_bytes
    with pytest.raises(WALFullError) as info:
        w.append([payload(11)])
    assert info.value.http_status == 503 and info.value.retry_after > 0
    assert (w.last_lsn, w.disk_bytes) == (10, disk)
    w.checkpoint(4)
    assert w.disk_bytes < disk  # a full segment went away
    assert w.append([payload(11), payload(12), payload(13), payload(14)]) == 14
    with pytest.raises(WALFullError):
        w.append([payload(15)])
    w.close()
    w = opened(tmp_path, budget_bytes=10 * (16 + 40))
    assert read_all(w, 4) == [WALRecord(i, payload(i)) for i in range(5, 15)]
    w.close()


def test_concurrent_append_read_checkpoint_loses_nothing(tmp_path: Path) -> None:
    w = opened(tmp_path, segment_bytes=4096, fsync=True)
    total = 600
    got: list[WALRecord] = []
    errors: list[Exception] = []

    def writer() -> None:
        try:
            for n in range(1, total + 1, 3):
                w.append([payload(n + i, 100) for i in range(3)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def drain() -> None:
        try:
            while len(got) < total:
                for r in w.read(w.checkpoint_lsn, max_records=17):
                    got.append(r)
                if got:
                    w.checkpoint(got[-1].lsn)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert got == [WALRecord(i, payload(i, 100)) for i in range(1, total + 1)]
    assert (w.backlog_records, w.backlog_bytes) == (0, 0)
    assert len(segments(tmp_path)) == 1
    w.close()


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE, text=True, env=env
    )


_KILLED_WRITER = """
    import os, signal, sys
    from engine.ingest.wal import WriteAheadLog
    w = WriteAheadLog(sys.argv[1], segment_bytes=8192)
    w.open()
    n = 0
    while True:
        n = w.append([f"scan-{n + i + 1}".encode() * 20 for i in range(1 + n % 5)])
        print(n, flush=True)
        if sys.argv[2] == "self" and n >= 200:
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("who", ["self", "parent"])
def test_every_acknowledged_record_survives_sigkill(tmp_path: Path, who: str) -> None:
    child = _child(_KILLED_WRITER, str(tmp_path), who)
    assert child.stdout is not None
    acked = 0
    for line in child.stdout:
        acked = int(line)
        if who == "parent" and acked >= 300:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    w = opened(tmp_path)  # the kernel dropped the dead child's lock
    records = read_all(w)
    assert w.last_lsn >= acked
    assert records == [WALRecord(i, f"scan-{i}".encode() * 20) for i in range(1, w.last_lsn + 1)]
    w.close()


_FILE_SIZE_LIMITED = """
    import resource, signal, sys
    from engine.errors import WALFullError
    from engine.ingest.wal import WriteAheadLog
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    w = WriteAheadLog(sys.argv[1])
    w.open()
    w.append([b"a" * 1000])
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
    lsn = w.append([b"b" * 1000])  # fits under the limit
    try:
        w.append([b"c" * 1000, b"d" * 1000])  # short write at 3000 bytes, then EFBIG
    except WALFullError as exc:
        print("full", exc, flush=True)
    print("size", __import__("os").path.getsize(sys.argv[1] + "/" + "1".zfill(20) + ".wal"), flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("lsn", w.append([b"e" * 1000]), flush=True)  # space is back: the engine recovers by itself
    w.close()
"""


def test_short_write_on_a_full_disk_is_cut_back_and_appends_resume(tmp_path: Path) -> None:
    child = _child(_FILE_SIZE_LIMITED, str(tmp_path))
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("full WAL out of disk space")
    assert lines[1] == f"size {16 + 2 * 1016}"  # the partial group commit was truncated away
    assert lines[2] == "lsn 3"
    w = opened(tmp_path)
    assert [r.payload[:1] for r in read_all(w)] == [b"a", b"b", b"e"]
    w.close()


def test_fsync_eio_fails_the_append_and_the_next_one_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = opened(tmp_path, fsync=True)
    w.append([payload(1)])
    real_fsync, calls = os.fsync, []

    def failing_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(wal_module.os, "fsync", failing_once)
    with pytest.raises(WALError, match="I/O error") as info:
        w.append([payload(2)])
    assert not isinstance(info.value, WALFullError)
    assert w.last_lsn == 1
    assert w.append([payload(2)]) == 2
    monkeypatch.undo()
    w.close()
    w = opened(tmp_path)
    assert read_all(w) == [WALRecord(1, payload(1)), WALRecord(2, payload(2))]
    w.close()
