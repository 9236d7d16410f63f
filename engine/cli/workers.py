"""``serve --workers N``: N engine processes sharing one port with SO_REUSEPORT, supervised by this one.

Why processes and not more threads: the event loop (HTTP, device authentication, orjson, item checks) runs on one
core per process whatever ``--verify-threads`` says. With a ClickHouse *server* nothing ties the engine to one
process (the embedded store does: chdb locks its directory), so the kernel can spread connections over several
loops. What each worker costs (docs/cluster.md, "Worker processes"): its own WAL directory (``wal``, ``wal-1``, …
under the data directory, so one fsync stream per worker), its own verified-code set (a code cached in one worker
is cold in the others), its own recent-id map (a retry that reaches another worker is stored again and collapsed
only by ReplacingMergeTree), its own device registry and trust list in memory (an admin call or ``trust-reload``
through the shared port reaches one worker: send SIGHUP to the supervisor, which forwards it to all), and its own
``/metrics`` (a scrape through the shared port sees one worker).

The supervisor starts worker 0 first and waits until it serves (it creates the admin token and secret files if
missing and runs the migrations, so the others find them), then the rest; it reports READY to systemd once every
worker serves, forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies (after a second; its WAL is replayed
by the new one), and exits when all workers have exited after a stop. A worker's own index and WAL come from
``ENGINE_WORKER_INDEX``; lowering ``--workers`` later is safe: a worker drains the WALs of workers that no longer
exist before it serves (``Config.orphan_wal_paths``).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from types import FrameType

from engine.config import Config
from engine.ops.sdnotify import READY, STOPPING, notify

log = logging.getLogger("engine.workers")

READY_FD_ENV = "ENGINE_WORKER_READY_FD"
RESTART_DELAY_S = 1.0


class Worker:
    """One child ``python -m engine serve`` with ``ENGINE_WORKER_INDEX`` set; reports on a pipe once serving."""

    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready_r = -1

    def start(self) -> None:
        read, write = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # only the supervisor talks to systemd
        env.update({"ENGINE_WORKER_INDEX": str(self.index), READY_FD_ENV: str(write)})
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", *self.argv], env=env, pass_fds=(write,))
        os.close(write)
        self._ready_r = read

    def wait_ready(self, timeout: float) -> bool:
        """True once the worker wrote to its pipe; False if it exited or did not within ``timeout``."""
        ready, _, _ = select.select([self._ready_r], [], [], timeout)
        ok = bool(ready) and os.read(self._ready_r, 1) == b"1"
        os.close(self._ready_r)
        self._ready_r = -1
        return ok

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)


def mark_ready() -> None:
    """In a worker, once serving: tell the supervisor (no-op outside ``--workers``)."""
    fd = os.environ.get(READY_FD_ENV)
    if fd:
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass


def supervise(config: Config, argv: list[str], start_timeout: float = 120.0) -> int:
    """Run ``config.workers`` workers until a stop signal; returns the exit code (0 after a clean stop)."""
    workers = [Worker(i, argv) for i in range(config.workers)]
    stopping = {"signal": 0}

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping["signal"] = signum
            notify(STOPPING)
            signum = signal.SIGTERM
        for w in workers:
            w.signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for w in workers:  # one at a time: worker 0 creates the shared files and migrates, the others then find both
        if stopping["signal"]:
            break
        w.start()
        if not w.wait_ready(start_timeout) and not stopping["signal"]:
            log.error("worker %d did not start serving within %.0f s; stopping", w.index, start_timeout)
            forward(signal.SIGTERM, None)
            for other in workers:
                if other.proc is not None:
                    other.proc.wait()
            return 1
    if not stopping["signal"]:
        log.info("%d workers serving on %s:%d (SO_REUSEPORT)", len(workers), config.host, config.port)
        notify(READY)
    while True:
        alive = 0
        for w in workers:
            if w.proc is None:  # stopped before it was started
                continue
            code = w.proc.poll()
            if code is None:
                alive += 1
            elif not stopping["signal"]:
                log.warning("worker %d (PID %d) exited with %s: restarting it", w.index, w.proc.pid, code)
                time.sleep(RESTART_DELAY_S)
                w.start()
                w.wait_ready(start_timeout)
                alive += 1
        if not alive:
            break
        time.sleep(0.2)
    codes = [w.proc.returncode if w.proc is not None else 0 for w in workers]
    return 0 if all(c == 0 for c in codes) else 1
