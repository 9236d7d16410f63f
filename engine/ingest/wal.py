"""The local write-ahead log: a scan is acknowledged (HTTP 202) only once it is durable here.

Layout. A directory of segment files named by the LSN of their first record, zero-padded so that name order is
LSN order (``00000000000000000001.wal``), plus a ``checkpoint`` file. A segment starts with a 16-byte header
(magic, format version, first LSN) and then holds records framed as ``[u32 length][u32 crc32(lsn ‖ payload)]
[u64 lsn][payload]``, little-endian. LSNs are consecutive from 1 and never reused, across restarts and rotation.

Why CRC32 and not a cryptographic hash: the checksum defends against torn writes and media bit rot, not against
an attacker (who could rewrite the checksum with the data). zlib.crc32 catches every burst error up to 32 bits
and random damage with probability 1 - 2**-32, and runs at memory speed, which matters because ``open`` verifies
every byte of the backlog.

Recovery. ``open`` verifies every record. A bad record in the *last* segment with no intact record after it is a
torn tail (power cut during the final, never-acknowledged group commit): it is truncated away. A bad record
with an intact record after it, or in any sealed segment, means acknowledged data was damaged: we raise
:class:`WALError` naming the file and offset rather than skip it. The remaining blind spot is inherent to the
format: damage to the very last acknowledged record is indistinguishable from a torn tail. The opposite error
is possible too — a power cut that persists a later page of the final write but not an earlier one looks like
mid-file corruption — and we then refuse to open rather than guess, which costs an operator, not data.

Concurrency. One lock (``_lock``) guards the in-memory index; it is never held across a write or an fsync of
the log, so the drain's ``read``/``checkpoint`` never wait for an appender's fsync. This is safe because
readers only see records up to ``last_lsn``, which is published after the fsync, and ``pwrite`` only touches
bytes past that point. ``read`` does its ``pread`` under ``_lock`` (page-cache copies, microseconds) so that a
concurrent ``checkpoint`` cannot close a segment's file descriptor under it. Appenders are serialised by their
own lock, checkpointers by theirs.

``fsync=False`` is for tests and benchmarks only: "durable" then means "in the OS page cache", which survives
kill -9 but not a power cut.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import WALError, WALFullError

_SEG_MAGIC = b"VQWL"
_SEG_VERSION = 1
_SEG_HEADER = struct.Struct("<4sIQ")  # magic, version, first lsn
_REC_HEADER = struct.Struct("<IIQ")  # payload length, crc32(lsn ‖ payload), lsn
_CKPT = struct.Struct("<8sQI")  # magic, lsn, crc32 of the first 16 bytes
_CKPT_MAGIC = b"VQWLCKP1"
_SEG_SUFFIX = ".wal"
_MAX_PAYLOAD = (1 << 31) - 1
# Errors that mean "no room right now": the device should retry later (503), and the engine recovers by itself
# once the drain frees space. Everything else is a WALError (still 503, but an operator should look).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(frozen=True)
class WALRecord:
    lsn: int
    payload: bytes


class _Segment:
    """One segment file: its fd (kept open for pread and, for the last one, pwrite) and record offsets."""

    __slots__ = ("fd", "first_lsn", "offsets", "path", "size")

    def __init__(self, path: Path, fd: int, first_lsn: int, offsets: list[int], size: int) -> None:
        self.path = path
        self.fd = fd
        self.first_lsn = first_lsn
        self.offsets = offsets  # offsets[i] = file offset of record first_lsn + i
        self.size = size  # bytes of the file that hold intact records (== file size once opened)

    @property
    def end_lsn(self) -> int:
        """One past the last record's LSN."""
        return self.first_lsn + len(self.offsets)

    def record_end(self, i: int) -> int:
        return self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size


def _frame(lsn: int, payload: bytes) -> bytes:
    lsn_bytes = struct.pack("<Q", lsn)
    crc = zlib.crc32(payload, zlib.crc32(lsn_bytes))
    return struct.pack("<II", len(payload), crc) + lsn_bytes + payload


def _intact_at(buf: bytes, pos: int, min_lsn: int) -> bool:
    """Is there a complete record with a valid CRC and a plausible LSN at ``pos``?"""
    if pos < 0 or pos + _REC_HEADER.size > len(buf):
        return False
    length, crc, lsn = _REC_HEADER.unpack_from(buf, pos)
    end = pos + _REC_HEADER.size + length
    if lsn < min_lsn or end > len(buf):
        return False
    return zlib.crc32(memoryview(buf)[pos + 8 : end]) == crc


def _any_intact_after(buf: bytes, start: int, min_lsn: int) -> bool:
    """Is any intact record hiding in ``buf[start:]``? Tells mid-file damage from a torn tail.

    A Python loop over every byte offset would take seconds per MiB; instead numpy finds, at each of the 8
    alignments, the u64 words that could be an LSN (between ``min_lsn`` and how many records could fit), and
    only those few candidates get a CRC check. Random garbage or zero-fill almost never yields a candidate.
    """
    max_lsn = min_lsn + (len(buf) - start) // _REC_HEADER.size + 1
    for align in range(8):
        first = start + 8 + align  # the lsn field sits 8 bytes into a record
        count = (len(buf) - first) // 8
        if count <= 0:
            continue
        words = np.frombuffer(buf, dtype="<u8", count=count, offset=first)
        for i in np.flatnonzero((words >= min_lsn) & (words <= max_lsn)):
            if _intact_at(buf, first + 8 * int(i) - 8, min_lsn):
                return True
    return False


class WriteAheadLog:
    """Segmented, checksummed, group-committed log of opaque payloads. See the module docstring."""

    def __init__(
        self,
        directory: str | Path,
        *,
        segment_bytes: int = 64 << 20,
        budget_bytes: int = 1 << 30,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.budget_bytes = budget_bytes
        self.fsync = fsync
        self._lock = threading.Lock()  # in-memory index; never held across log write/fsync
        self._append_lock = threading.Lock()
        self._ckpt_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []  # first_lsn of each segment, for bisect
        self._last_lsn = 0
        self._checkpoint_lsn = 0
        self._backlog_bytes = 0
        self._lock_fd = -1
        self._broken: str | None = None

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def checkpoint_lsn(self) -> int:
        return self._checkpoint_lsn

    @property
    def last_lsn(self) -> int:
        """The last acknowledged (fsync'd) LSN; 0 when nothing was ever written."""
        return self._last_lsn

    @property
    def backlog_bytes(self) -> int:
        """Framed bytes of records after the checkpoint: what the budget is measured against."""
        return self._backlog_bytes

    @property
    def backlog_records(self) -> int:
        return max(0, self._last_lsn - self._checkpoint_lsn)

    @property
    def disk_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    # -- open / recovery -------------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the directory, take the process lock, verify every segment, repair a torn tail."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # acknowledged scans: owner only
        self._take_dir_lock()
        try:
            (self.directory / "checkpoint.tmp").unlink(missing_ok=True)
            self._checkpoint_lsn = self._load_checkpoint()
            names = sorted(p for p in self.directory.iterdir() if p.suffix == _SEG_SUFFIX and p.stem.isdigit())
            for i, path in enumerate(names):
                self._open_segment(path, last=i == len(names) - 1)
            if self._segments:
                first = self._segments[0].first_lsn
                if first - 1 > self._checkpoint_lsn:
                    raise WALError(
                        f"WAL {self.directory}: records {self._checkpoint_lsn + 1}..{first - 1} are missing "
                        "(segments deleted beyond the checkpoint)"
                    )
                self._last_lsn = self._segments[-1].end_lsn - 1
                if self._last_lsn < self._checkpoint_lsn:
                    raise WALError(
                        f"WAL {self.directory}: checkpoint {self._checkpoint_lsn} is beyond the last record "
                        f"{self._last_lsn}: acknowledged records were lost"
                    )
            self._last_lsn = max(self._last_lsn, self._checkpoint_lsn)
            self._backlog_bytes = self._bytes_between(self._checkpoint_lsn, self._last_lsn)
        except BaseException:
            self.close()
            raise

    def _take_dir_lock(self) -> None:
        # Two engines (or the operator CLI next to a running engine) on one WAL would each "repair" the other's
        # in-flight tail: refuse the second opener instead.
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WALError(f"WAL {self.directory} is in use by another process") from None
        self._lock_fd = fd

    def _load_checkpoint(self) -> int:
        path = self.directory / "checkpoint"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0
        if len(raw) != _CKPT.size:
            raise WALError(f"WAL checkpoint {path} has {len(raw)} bytes, expected {_CKPT.size}")
        magic, lsn, crc = _CKPT.unpack(raw)
        if magic != _CKPT_MAGIC or zlib.crc32(raw[:16]) != crc:
            raise WALError(f"WAL checkpoint {path} is corrupt")
        return int(lsn)

    def _open_segment(self, path: Path, *, last: bool) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            buf = os.pread(fd, os.fstat(fd).st_size, 0)
            name_lsn = int(path.stem)
            expect = self._segments[-1].end_lsn if self._segments else name_lsn
            header_ok = len(buf) >= _SEG_HEADER.size and _SEG_HEADER.unpack_from(buf) == (
                _SEG_MAGIC,
                _SEG_VERSION,
                name_lsn,
            )
            if not header_ok or name_lsn != expect:
                if last and not header_ok and not _any_intact_after(buf, 0, expect):
                    # Crash while creating the segment: no record was ever written (the header is fsync'd
                    # before any record), so the file carries nothing acknowledged.
                    os.close(fd)
                    path.unlink()
                    self._fsync_dir()
                    return
                what = "bad header" if not header_ok else f"starts at LSN {name_lsn}, expected {expect}"
                raise WALError(f"WAL segment {path} offset 0: {what}")
            offsets: list[int] = []
            pos, lsn = _SEG_HEADER.size, name_lsn
            while pos < len(buf):
                if not _intact_at(buf, pos, lsn) or _REC_HEADER.unpack_from(buf, pos)[2] != lsn:
                    if not last or _any_intact_after(buf, pos + 1, lsn):
                        raise WALError(f"WAL segment {path} offset {pos}: corrupt record (expected LSN {lsn})")
                    os.ftruncate(fd, pos)  # torn tail of a group commit that was never acknowledged
                    self._fsync_fd(fd)
                    break
                offsets.append(pos)
                pos += _REC_HEADER.size + _REC_HEADER.unpack_from(buf, pos)[0]
                lsn += 1
        except BaseException:
            os.close(fd)
            raise
        self._segments.append(_Segment(path, fd, name_lsn, offsets, pos))
        self._firsts.append(name_lsn)

    # -- append ----------------------------------------------------------------------------------------------
    def append(self, payloads: Sequence[bytes]) -> int:
        """Write ``payloads`` as consecutive records with one fsync (group commit); return the last LSN."""
        if not payloads:
            return self._last_lsn
        with self._append_lock:
            if self._broken:
                raise WALError(self._broken)
            if self._lock_fd < 0:
                raise WALError("WAL is not open")
            first = self._last_lsn + 1
            frames = [_frame(first + i, bytes(p)) for i, p in enumerate(payloads) if len(p) <= _MAX_PAYLOAD]
            if len(frames) != len(payloads):
                raise WALError("WAL payload larger than 2 GiB")
            data = b"".join(frames)
            if self._backlog_bytes + len(data) > self.budget_bytes:
                raise WALFullError(
                    f"WAL backlog {self._backlog_bytes} B + {len(data)} B would exceed the budget of "
                    f"{self.budget_bytes} B; the store is behind",
                    retry_after=5.0,
                )
            seg = self._active_segment(len(data), first)
            start = seg.size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.pwrite(seg.fd, view, start + len(data) - len(view)) :]
                self._fsync_fd(seg.fd)
            except OSError as exc:
                self._undo_write(seg, start)
                raise self._os_error(f"append to {seg.path} at offset {start}", exc) from exc
            offsets: list[int] = []
            pos = start
            for f in frames:
                offsets.append(pos)
                pos += len(f)
            with self._lock:
                seg.offsets.extend(offsets)
                seg.size = pos
                self._backlog_bytes += len(data)
                self._last_lsn = first + len(frames) - 1  # publish only after the fsync
            return self._last_lsn

    def _active_segment(self, nbytes: int, first: int) -> _Segment:
        """The segment to write to, rotating first when the batch would overflow a non-empty one."""
        with self._lock:
            seg = self._segments[-1] if self._segments else None
        if seg is not None and (seg.size + nbytes <= self.segment_bytes or not seg.offsets):
            return seg
        path = self.directory / f"{first:020d}{_SEG_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise self._os_error(f"create {path}", exc) from exc
        try:
            os.pwrite(fd, _SEG_HEADER.pack(_SEG_MAGIC, _SEG_VERSION, first), 0)
            self._fsync_fd(fd)
            self._fsync_dir()
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise self._os_error(f"create {path}", exc) from exc
        new = _Segment(path, fd, first, [], _SEG_HEADER.size)
        with self._lock:
            self._segments.append(new)
            self._firsts.append(first)
        return new

    def _undo_write(self, seg: _Segment, start: int) -> None:
        """Cut a failed group commit back off, so the next append writes at a record boundary again."""
        try:
            os.ftruncate(seg.fd, start)
            self._fsync_fd(seg.fd)
        except OSError as exc:
            # We can no longer tell where the log ends on disk; only a reopen (which re-verifies) can.
            self._broken = f"WAL {seg.path} could not be repaired after a failed write ({exc}); reopen it"

    @staticmethod
    def _os_error(what: str, exc: OSError) -> WALError:
        if exc.errno in _NO_SPACE:
            return WALFullError(f"WAL out of disk space: {what}: {exc.strerror}", retry_after=5.0)
        return WALError(f"WAL I/O error: {what}: {exc.strerror or exc}")

    # -- read ------------------------------------------------------------------------------------------------
    def read(self, after_lsn: int, max_records: int = 64, max_bytes: int = 8 << 20) -> list[WALRecord]:
        """Acknowledged records with LSN > ``after_lsn``, in order; at least one if any exists.

        ``max_bytes`` bounds the payload bytes returned, except that a single larger record is still returned
        (otherwise the drain could never get past it).
        """
        out: list[WALRecord] = []
        total = 0
        with self._lock:
            if self._lock_fd < 0:
                raise WALError("WAL is not open")
            lsn = max(after_lsn, 0) + 1
            last = self._last_lsn
            while lsn <= last and len(out) < max_records:
                k = bisect.bisect_right(self._firsts, lsn) - 1
                if k < 0:
                    raise WALError(f"WAL record {lsn} was already checkpointed and deleted")
                seg = self._segments[k]
                i = lsn - seg.first_lsn
                if i >= len(seg.offsets):
                    break  # only possible for an appender's fresh, still empty segment
                while i < len(seg.offsets) and lsn <= last and len(out) < max_records:
                    pos, end = seg.offsets[i], seg.record_end(i)
                    if out and total + end - pos - _REC_HEADER.size > max_bytes:
                        return out
                    raw = os.pread(seg.fd, end - pos, pos)
                    length, crc, got = _REC_HEADER.unpack_from(raw)
                    payload = raw[_REC_HEADER.size :]
                    if got != lsn or len(payload) != length or zlib.crc32(payload, zlib.crc32(raw[8:16])) != crc:
                        raise WALError(f"WAL segment {seg.path} offset {pos}: record {lsn} changed on disk")
                    out.append(WALRecord(lsn, payload))
                    total += length
                    lsn += 1
                    i += 1
        return out

    # -- checkpoint ------------------------------------------------------------------------------------------
    def checkpoint(self, lsn: int) -> None:
        """Durably record that everything <= ``lsn`` is in the store, then delete fully-stored segments.

        The checkpoint is made durable *before* any segment is deleted, so a crash in between leaves extra
        segments (harmless, deleted next time), never a gap.
        """
        with self._ckpt_lock:
            if lsn <= self._checkpoint_lsn:
                return
            if lsn > self._last_lsn:
                raise ValueError(f"checkpoint {lsn} is beyond the last acknowledged LSN {self._last_lsn}")
            tmp, final = self.directory / "checkpoint.tmp", self.directory / "checkpoint"
            head = struct.pack("<8sQ", _CKPT_MAGIC, lsn)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, head + struct.pack("<I", zlib.crc32(head)))
                    self._fsync_fd(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, final)
                self._fsync_dir()
            except OSError as exc:
                raise self._os_error(f"write checkpoint {final}", exc) from exc
            with self._lock:
                self._backlog_bytes -= self._bytes_between(self._checkpoint_lsn, lsn)
                self._checkpoint_lsn = lsn
                # The last segment is never deleted: it is the one being appended to (and it carries next LSN).
                dead = [s for s in self._segments[:-1] if s.end_lsn - 1 <= lsn]
                del self._segments[: len(dead)]
                del self._firsts[: len(dead)]
                for s in dead:
                    os.close(s.fd)
            for s in dead:
                s.path.unlink(missing_ok=True)
            if dead:
                self._fsync_dir()

    def _bytes_between(self, after: int, upto: int) -> int:
        """Framed bytes of records ``after < lsn <= upto`` that are still on disk (caller holds the lock)."""
        total = 0
        for s in self._segments:
            lo, hi = max(after + 1, s.first_lsn), min(upto, s.end_lsn - 1)
            if lo <= hi:
                total += s.record_end(hi - s.first_lsn) - s.offsets[lo - s.first_lsn]
        return total

    # -- close -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release file descriptors and the directory lock; appended data is already durable."""
        with self._append_lock, self._lock:
            for s in self._segments:
                os.close(s.fd)
            self._segments.clear()
            self._firsts.clear()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing the fd drops the flock
                self._lock_fd = -1

    # -- fsync helpers ---------------------------------------------------------------------------------------
    def _fsync_fd(self, fd: int) -> None:
        if self.fsync:
            os.fsync(fd)

    def _fsync_dir(self) -> None:
        # A new or deleted file's directory entry is durable only once the directory itself is fsync'd.
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
