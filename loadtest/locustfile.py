"""Locust scanners: each simulated user is one registered venue device posting signed batches of scans.

Run it through ``loadtest/run.py``, which starts an engine, registers the devices, writes the keys file and
checks the store afterwards. By hand (an engine already running on this machine, devices registered from the
same keys file)::

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8080 -u 20 -r 5 --run-time 60s \
        --keys-file out/keys.json --results-dir out/results

Add ``,loadtest/shapes.py`` to ``-f`` for the morning-peak shape. Only loopback targets are accepted.

What a device does, by task weight: an ordinary upload of a few to a few dozen scans; now and then it
re-sends its previous batch whole (a lost acknowledgement: every item must come back ``duplicate`` with the
verdict it had); rarely it has been offline and uploads hours of backlog at once. A 429/503 answer keeps the
batch and the device sends it again after ``Retry-After``, as a real scanner does.

Every request is written to ``<results-dir>/scans-<host>-<pid>.jsonl``, one JSON line per request::

    {"t": 1764..., "device": "...", "task": "batch", "status": 202,
     "scans": [[scan_id, expected_verdict, item_status, answered_verdict], ...]}

(non-202 lines carry ``[scan_id, expected_verdict]`` only). One file per process, so any number of workers
can write at once; ``loadtest/checker.py`` merges every file in the directory.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import orjson
from locust import FastHttpUser, events, task
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.devices.client import sign_request
from loadtest.scenario import REJECTED, Keyring, ScanMix, require_loopback

log = logging.getLogger("loadtest")
DEFAULT_HOST = "http://127.0.0.1:8080"
MAX_RETRY_WAIT_S = 2.0


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--keys-file", env_var="LOADTEST_KEYS_FILE", default="", help="keys JSON written by loadtest/run.py"
    )
    parser.add_argument(
        "--results-dir", env_var="LOADTEST_RESULTS_DIR", default="", help="where per-process JSONL results go"
    )
    parser.add_argument(
        "--device-stride",
        env_var="LOADTEST_DEVICE_STRIDE",
        type=int,
        default=1,
        help="number of worker processes, so workers take disjoint devices from the keys file",
    )
    parser.add_argument(
        "--workload-file",
        env_var="LOADTEST_WORKLOAD_FILE",
        default="",
        help="city workload JSON written by loadtest/run.py --workload city (genuine codes follow its routines)",
    )
    parser.add_argument(
        "--max-wait",
        env_var="LOADTEST_MAX_WAIT",
        type=float,
        default=1.0,
        help="a device waits between max/5 and max seconds between uploads (lower = more load per device)",
    )


class _Recorder:
    """Appends one JSON line per request; a process-wide singleton because Locust users are greenlets."""

    def __init__(self) -> None:
        self._file: Any = None
        self._dir: Path | None = None

    def configure(self, results_dir: str) -> None:
        self._dir = Path(results_dir) if results_dir else None

    def write(self, line: dict[str, Any]) -> None:
        if self._dir is None:
            return
        if self._file is None:
            self._dir.mkdir(parents=True, exist_ok=True)
            name = f"scans-{socket.gethostname()}-{os.getpid()}.jsonl"
            self._file = open(self._dir / name, "ab")  # noqa: SIM115 - lives as long as the process
        self._file.write(orjson.dumps(line) + b"\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())


RECORDER = _Recorder()
_STATE: dict[str, Any] = {}


@events.init.add_listener
def _on_init(environment: Any, **_kw: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    if environment.host:
        require_loopback(environment.host)  # refuse before a single user starts
    RECORDER.configure(opts.results_dir)


@events.test_stop.add_listener
def _on_test_stop(**_kw: Any) -> None:
    RECORDER.flush()


@events.quitting.add_listener
def _on_quitting(**_kw: Any) -> None:
    RECORDER.flush()


def _shared(environment: Any) -> tuple[Keyring, ScanMix]:
    """Keys and the scan mix, loaded once per process (minted codes are shared by all its users)."""
    if "mix" not in _STATE:
        path = environment.parsed_options.keys_file
        if not path:
            raise RuntimeError("--keys-file (or LOADTEST_KEYS_FILE) is required: run loadtest/run.py")
        keys = Keyring.load(Path(path))
        opts = environment.parsed_options
        genuine = None
        if opts.workload_file:  # this process takes every stride-th scan of the city's time-ordered stream
            from loadtest.city import city_codes

            worker = getattr(environment.runner, "worker_index", 0) or 0
            genuine = city_codes(Path(opts.workload_file), start=worker, stride=max(1, opts.device_stride))
        _STATE["keys"], _STATE["mix"], _STATE["next"] = keys, ScanMix(keys, genuine=genuine), 0
    return _STATE["keys"], _STATE["mix"]


class Scanner(FastHttpUser):
    """One venue scanner with its own registered Ed25519 device key."""

    host = DEFAULT_HOST
    connection_timeout = 10.0
    network_timeout = 60.0
    abstract = False
    counter: ClassVar[int] = 0

    def on_start(self) -> None:
        try:
            require_loopback(self.host or "")
        except ValueError as exc:
            log.error("%s", exc)
            self.environment.runner.quit()
            raise StopUser() from None
        keys, self.mix = _shared(self.environment)
        opts = self.environment.parsed_options
        worker = getattr(self.environment.runner, "worker_index", 0) or 0
        stride = max(1, opts.device_stride)
        self.device_id, self.key = keys.device_key(worker + _STATE["next"] * stride)
        _STATE["next"] += 1
        self.venue = "venue-" + self.device_id.rsplit("-", 1)[-1]
        self.rng = random.Random()
        self.last: tuple[list[dict[str, Any]], list[str]] | None = None
        self.pending: tuple[str, list[dict[str, Any]], list[str]] | None = None

    def wait_time(self) -> float:
        longest = max(0.0, float(self.environment.parsed_options.max_wait))
        return self.rng.uniform(longest / 5, longest)

    # -- tasks ----------------------------------------------------------------------------------------------
    @task(20)
    def upload(self) -> None:
        if self._resend_pending():
            return
        items, expected = self.mix.batch(self.rng.randint(5, 40), self.venue)
        self._post("batch", items, expected)

    @task(2)
    def retry_last_batch(self) -> None:
        """The device never saw our answer and sends the same batch again: same scan ids, new signature."""
        if self._resend_pending() or self.last is None:
            return
        self._post("retry", *self.last)

    @task(1)
    def offline_backlog(self) -> None:
        """A scanner that was offline for hours uploads everything it kept, oldest first."""
        if self._resend_pending():
            return
        items, expected = self.mix.batch(
            self.rng.randint(200, 600), self.venue, backlog_s=self.rng.uniform(1, 12) * 3600
        )
        self._post("backlog", items, expected)

    # -- request --------------------------------------------------------------------------------------------
    def _resend_pending(self) -> bool:
        if self.pending is None:
            return False
        kind, items, expected = self.pending
        self.pending = None
        self._post(kind, items, expected)
        return True

    def _post(self, kind: str, items: list[dict[str, Any]], expected: list[str]) -> None:
        body = orjson.dumps({"device_id": self.device_id, "scans": items})
        headers = sign_request(self.key, self.device_id, "POST", "/v1/scans", body)
        headers["Content-Type"] = "application/json"
        sent = time.time()
        with self.client.post(
            "/v1/scans",
            data=body,  # type: ignore[arg-type]  # bytes are sent as-is (documented)
            headers=headers,
            name=f"/v1/scans [{kind}]",
            catch_response=True,
        ) as resp:
            status = resp.status_code or 0
            line: dict[str, Any] = {"t": sent, "device": self.device_id, "task": kind, "status": status}
            if status != 202:
                line["scans"] = [[it["scan_id"], exp] for it, exp in zip(items, expected, strict=True)]
                RECORDER.write(line)
                if status in (429, 503):
                    self.pending = (kind, items, expected)
                    retry_after = float(resp.headers.get("Retry-After") or 1)
                    resp.failure(f"HTTP {status} (backpressure; batch kept for retry)")
                    time.sleep(min(retry_after, MAX_RETRY_WAIT_S))  # gevent-patched: yields to other users
                else:
                    resp.failure(f"HTTP {status}: {(resp.text or '')[:200]}")
                return
            try:
                results = resp.json()["results"]
            except (ValueError, KeyError, TypeError):
                resp.failure("202 without a results list")
                results = [{} for _ in items]
            scans, wrong = [], 0
            for it, exp, res in zip(items, expected, results, strict=False):
                got_status, got = res.get("status", "?"), res.get("verdict", REJECTED)
                scans.append([it["scan_id"], exp, got_status, got])
                if exp == REJECTED:
                    wrong += got_status != "rejected"
                elif (
                    got != exp
                    or got_status not in ("stored", "duplicate")
                    or (kind == "retry" and got_status != "duplicate")
                ):
                    wrong += 1
            line["scans"] = scans
            RECORDER.write(line)
            if len(results) != len(items):
                resp.failure(f"{len(results)} results for {len(items)} scans")
            elif wrong:
                resp.failure(f"{wrong} scans answered with an unexpected verdict or status")
            else:
                resp.success()
            if kind != "retry":
                self.last = (items, expected)
