"""A real ClickHouse server on loopback, from the chdb wheel the project already installs.

The ``chdb-core`` wheel is ClickHouse (26.9) built as clickhouse-local. Asked through its private entry point
``chdb._chdb.query`` to run ``SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP`` followed by a query that never
ends, it opens ClickHouse's own HTTP and native listeners and serves them until that query is cancelled: a real
server (user ``default``, no password) that clickhouse-connect, the engine and other servers' ``Distributed``
tables talk to as they would to ``clickhouse-server``. The public ``chdb.query``/``Session`` API cannot do this
(it refuses with "start_servers_callback is not set"), hence the private call, checked before every start.

Why a child process: chdb is one instance per process (and the process that uses it holds its data directory's
lock), so a server must not share the test's process, which keeps its own embedded stores. The parent writes
``config.xml`` into the server's directory (the child's working directory: clickhouse-local reads it from
there) with ``listen_host`` 127.0.0.1 only, the two ports and, for a cluster, ``remote_servers`` and ``macros``,
then waits for ``/ping``. The child runs the forever query on a thread and its main thread waits for SIGTERM,
SIGINT or the death of its parent; then it cancels the forever query with ``KILL QUERY``, ClickHouse shuts
down, and the child exits 0 (or 3 if connections stayed open, see :meth:`ClickHouseServer.stop`); data written
before the stop is on disk for :meth:`ClickHouseServer.restart`.

What such a server cannot do (clickhouse-local never sets an interserver address): ReplicatedMergeTree with
Keeper (replicas stay read-only) and ``ON CLUSTER`` DDL ("Replicated DDL queries are disabled"). A cluster here is
therefore N independent shards with ``remote_servers`` (:class:`ClickHouseCluster`), which is what ``Distributed``
needs.

Use from Python (tests, benchmarks, the load test)::

    with ClickHouseServer(tmp_dir) as server:
        store = Store.connect(server.dsn)

or by hand: ``python -m engine.testing.clickhouse run --dir /tmp/ch [--shards 2]`` prints the DSNs and serves
until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zoneinfo
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.errors import EngineError

HOST = "127.0.0.1"
CONFIG_NAME = "config.xml"
LOG_NAME = "server.log"
DATA_NAME = "data"
DEFAULT_CLUSTER = "vnqr_test"
# The versions this was built and tested on (pyproject.toml pins the same range): the entry point is private, so
# any other version may have moved it; the check below says so instead of failing somewhere inside the start.
TESTED_CHDB = "chdb 4.4.x with chdb-core 26.9.x"
# A name no test query uses, so the stop can find and cancel exactly the query that keeps the listeners open.
_FOREVER_MARKER = "vnqr_testing_forever"
_FOREVER_QUERY = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    f"SELECT count() AS {_FOREVER_MARKER} FROM (SELECT sleepEachRow(1) FROM system.numbers) "
    "SETTINGS max_block_size = 1, function_sleep_max_microseconds_per_block = 0, max_execution_time = 0"
)
KEEP_ALIVE_S = 1
STOP_GRACE_S = 2.0  # how long a stopping child lets ClickHouse's shutdown wait for open connections
EXIT_CONNECTIONS_OPEN = 3  # the child's exit code when it stopped with connections still open (see serve())
_PORT_TAKEN = "Address already in use"
_START_ATTEMPTS = 3  # only when the ports were picked here: another process may bind one between pick and listen
_LOG_TAIL_CHARS = 3000


class ClickHouseServerError(EngineError):
    """A test ClickHouse server could not be started, or the chdb in this environment cannot run one."""

    code = "clickhouse_server"


def chdb_versions() -> str:
    """The installed chdb and chdb-core versions, for messages (``"chdb 4.4.0, chdb-core 26.9.0"``)."""
    found = []
    for dist in ("chdb", "chdb-core"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} not installed")
    return ", ".join(found)


def server_entry_point() -> Callable[..., Any]:
    """``chdb._chdb.query``, the private call that can open listeners; a clear error if this chdb lacks it.

    Checked in the parent before a child is spawned (so the error is raised where the test runs, not buried in a
    child's log) and again in the child (which is what actually calls it).
    """
    try:
        from chdb import _chdb
    except ImportError as exc:
        raise ClickHouseServerError(
            f"cannot import chdb._chdb ({exc}); a test ClickHouse server needs {TESTED_CHDB}, found {chdb_versions()}"
        ) from exc
    query = getattr(_chdb, "query", None)
    if not callable(query):
        raise ClickHouseServerError(
            "chdb._chdb.query, the private entry point a test ClickHouse server runs on, is missing in "
            f"{chdb_versions()}; this helper was built for {TESTED_CHDB} (pinned in pyproject.toml)"
        )
    return query


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports that were free a moment ago (all held open until all are picked)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def render_config(
    http_port: int,
    tcp_port: int,
    *,
    remote_servers: dict[str, list[int]] | None = None,
    macros: dict[str, str] | None = None,
    query_log: bool = True,
) -> str:
    """The ``config.xml`` of one server: loopback only, its two ports, and optionally a sharded cluster.

    ``remote_servers`` maps a cluster name to the native (TCP) ports of its shards, one replica each, all on
    127.0.0.1: what a ``Distributed`` table needs to split inserts and merge reads. ``macros`` (``shard``,
    ``replica``) let DDL say which shard a server is. ``query_log`` keeps ``system.query_log`` (flushed every
    second), so a test can check what the server was actually sent, settings included.
    """
    root = ET.Element("clickhouse")
    ET.SubElement(root, "listen_host").text = HOST
    ET.SubElement(root, "http_port").text = str(http_port)
    ET.SubElement(root, "tcp_port").text = str(tcp_port)
    # a SIGTERM'd server waits for idle keep-alive connections (clickhouse-connect's pool keeps them) up to 5 s and
    # then exits 1 without a clean shutdown; with 1 s they close first and the stop is clean (measured: 5.0 s, rc 1
    # with the default; 1.2 s, rc 0 with this). Clients reconnect by themselves (urllib3 drops closed sockets).
    ET.SubElement(root, "keep_alive_timeout").text = str(KEEP_ALIVE_S)
    if query_log:
        log = ET.SubElement(root, "query_log")
        ET.SubElement(log, "database").text = "system"
        ET.SubElement(log, "table").text = "query_log"
        ET.SubElement(log, "flush_interval_milliseconds").text = "1000"
    if remote_servers:
        servers = ET.SubElement(root, "remote_servers")
        for name, ports in remote_servers.items():
            cluster = ET.SubElement(servers, name)
            for port in ports:
                replica = ET.SubElement(ET.SubElement(cluster, "shard"), "replica")
                ET.SubElement(replica, "host").text = HOST
                ET.SubElement(replica, "port").text = str(port)
    if macros:
        element = ET.SubElement(root, "macros")
        for key, value in macros.items():
            ET.SubElement(element, key).text = value
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _ping(port: int, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=timeout) as answer:
            return bool(answer.read() == b"Ok.\n")
    except (OSError, urllib.error.URLError):
        return False


def _accepts(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


class ClickHouseServer:
    """One ClickHouse server in a child process on 127.0.0.1, with its data in ``directory/data``.

    Ports are picked free unless given, and kept across :meth:`restart` so a DSN handed out stays valid (fault
    tests stop a server, keep a client, start it again). ``timezone`` is the server's own zone (clickhouse-local
    takes it from ``TZ``, not from the config): a server in Asia/Ho_Chi_Minh shows whether anything depends on
    the server's zone rather than the columns' ``'UTC'``. Every start waits for ``/ping`` (and the native port) up
    to ``start_timeout`` seconds and raises :class:`ClickHouseServerError` with the tail of the child's log if
    the child exits or does not answer. Without ``directory`` a temporary one is made and removed by
    :meth:`cleanup` (called on context exit).
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        http_port: int | None = None,
        tcp_port: int | None = None,
        remote_servers: dict[str, list[int]] | None = None,
        macros: dict[str, str] | None = None,
        timezone: str | None = None,
        query_log: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        if start_timeout <= 0:
            raise ClickHouseServerError(f"start_timeout must be > 0 seconds, not {start_timeout}")
        for name, port in (("http_port", http_port), ("tcp_port", tcp_port)):
            if port is not None and not 0 < port < 65536:
                raise ClickHouseServerError(f"{name} must be a TCP port (1-65535), not {port}")
        self._own_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="vnqr-clickhouse-") if directory is None else directory)
        self._fixed_ports = http_port is not None or tcp_port is not None
        if self._fixed_ports:
            picked = iter(free_ports(2))
            self.http_port = http_port if http_port is not None else next(picked)
            self.tcp_port = tcp_port if tcp_port is not None else next(picked)
        else:
            self.http_port, self.tcp_port = free_ports(2)
        if self.http_port == self.tcp_port:
            raise ClickHouseServerError(f"http_port and tcp_port must differ (both {self.http_port})")
        if timezone is not None:
            try:
                zoneinfo.ZoneInfo(timezone)
            except (ValueError, zoneinfo.ZoneInfoNotFoundError) as exc:
                raise ClickHouseServerError(
                    f"unknown time zone {timezone!r}: an IANA name such as 'Asia/Ho_Chi_Minh' is needed"
                ) from exc
        self.remote_servers = remote_servers
        self.macros = macros
        self.timezone = timezone
        self.query_log = query_log
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    # -- where it is --------------------------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        """What ``Store.connect`` and clickhouse-connect take: ``http://default:@127.0.0.1:PORT``."""
        return f"http://default:@{HOST}:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        return self.directory / DATA_NAME

    @property
    def log_path(self) -> Path:
        """The child's stdout and stderr (ClickHouse prints its errors there), appended across restarts."""
        return self.directory / LOG_NAME

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs, else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> ClickHouseServer:
        """Start the child and wait until it answers; a no-op if it already runs. Returns ``self``."""
        if self.running:
            return self
        server_entry_point()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_ports else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            offset = self._spawn()
            try:
                self._wait_ready(offset)
                return self
            except ClickHouseServerError:
                self.kill()
                if attempt == attempts or _PORT_TAKEN not in self._log_since(offset):
                    raise
                self.http_port, self.tcp_port = free_ports(2)  # someone took a port between pick and listen
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if the child has not exited after ``timeout`` s; return its exit code.

        The child answers SIGTERM by cancelling its listening query; ClickHouse then shuts down (closing
        connections idle past ``KEEP_ALIVE_S``) and the child exits 0, or ``EXIT_CONNECTIONS_OPEN`` after
        ``STOP_GRACE_S`` if connections stay open (a cluster peer's pooled native connections do). Either way every
        acknowledged insert is on disk. A negative code means it had to be killed.
        """
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash or an OOM kill would: nothing is flushed. Returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        return process.wait()

    def restart(self, *, kill: bool = False) -> ClickHouseServer:
        """Stop (or kill) and start again on the same ports and the same data directory."""
        self.kill() if kill else self.stop()
        self._fixed_ports = True  # a DSN handed out before the restart must still reach the server
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and, if this object made its directory, remove it."""
        self.stop()
        if self._own_dir:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ClickHouseServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"ClickHouseServer({self.dsn}, tcp {self.tcp_port}, {self.directory}, {state})"

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _spawn(self) -> int:
        """Write the config, start the child, return the log offset where this start's output begins."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = render_config(
            self.http_port,
            self.tcp_port,
            remote_servers=self.remote_servers,
            macros=self.macros,
            query_log=self.query_log,
        )
        (self.directory / CONFIG_NAME).write_text(config, encoding="utf-8")
        # the child must import this same tree (tests run a worktree's code through PYTHONPATH, not the install)
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        if self.timezone:
            env["TZ"] = self.timezone
        command = [
            sys.executable,
            "-m",
            "engine.testing.clickhouse",
            "serve",
            "--dir",
            str(self.directory),
            "--http-port",
            str(self.http_port),
            "--parent-pid",
            str(os.getpid()),
        ]
        with self.log_path.open("ab") as log:
            offset = log.tell()
            log.write(f"--- start {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command[1:])}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the test run reaches the test, which then stops us in order
            )
        return offset

    def _wait_ready(self, offset: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise ClickHouseServerError(
                    f"the ClickHouse server child (PID {self._process.pid}) exited with code {code} before it "
                    f"answered on {HOST}:{self.http_port}; its log ({self.log_path}) ends:\n{self._log_tail(offset)}"
                )
            if _ping(self.http_port, 1.0) and _accepts(self.tcp_port, 1.0):
                return
            time.sleep(0.05)
        raise ClickHouseServerError(
            f"the ClickHouse server child (PID {self._process.pid}) did not answer /ping on {HOST}:{self.http_port} "
            f"within {self.start_timeout:g} s; its log ({self.log_path}) ends:\n{self._log_tail(offset)}"
        )

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, offset: int) -> str:
        text = self._log_since(offset).strip()
        return ("..." + text[-_LOG_TAIL_CHARS:]) if len(text) > _LOG_TAIL_CHARS else (text or "(empty)")


class ClickHouseCluster:
    """``shards`` servers on loopback whose configs name each other in ``remote_servers`` as cluster ``name``.

    One replica per shard, no Keeper: ``Distributed(name, db, table, key)`` on any of them splits inserts over the
    shards and merges reads, which is what the sharded (not replicated) schema needs. Each server gets the macros
    ``shard`` (1-based) and ``replica``. All servers start in parallel and are stopped together.
    """

    def __init__(
        self,
        shards: int,
        directory: Path | str | None = None,
        *,
        name: str = DEFAULT_CLUSTER,
        start_timeout: float = 30.0,
    ) -> None:
        if shards < 1:
            raise ClickHouseServerError(f"a cluster needs at least 1 shard, not {shards}")
        if not name.isidentifier():
            raise ClickHouseServerError(f"cluster name must be a plain identifier (letters, digits, _), not {name!r}")
        self._own_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="vnqr-clickhouse-cluster-") if directory is None else directory)
        self.name = name
        ports = free_ports(2 * shards)
        http, tcp = ports[:shards], ports[shards:]
        topology = {name: tcp}
        self.servers = [
            ClickHouseServer(
                self.directory / f"shard{i + 1}",
                http_port=http[i],
                tcp_port=tcp[i],
                remote_servers=topology,
                macros={"shard": str(i + 1), "replica": f"shard{i + 1}-r1"},
                start_timeout=start_timeout,
            )
            for i in range(shards)
        ]

    def __len__(self) -> int:
        return len(self.servers)

    def __getitem__(self, index: int) -> ClickHouseServer:
        return self.servers[index]

    def __iter__(self) -> Iterator[ClickHouseServer]:
        return iter(self.servers)

    @property
    def dsns(self) -> list[str]:
        return [s.dsn for s in self.servers]

    def start(self) -> ClickHouseCluster:
        """Spawn every shard, then wait for each; if one fails, the others are stopped and its error raised."""
        server_entry_point()
        waiting = []
        try:
            for server in self.servers:
                if not server.running:
                    server.data_dir.mkdir(parents=True, exist_ok=True)
                    waiting.append((server, server._spawn()))
            for server, offset in waiting:
                server._wait_ready(offset)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> list[int | None]:
        """SIGTERM every shard at once, then wait for each (SIGKILL after ``timeout``); return the exit codes."""
        for server in self.servers:
            if server.running and server._process is not None:
                with contextlib.suppress(ProcessLookupError):
                    server._process.send_signal(signal.SIGTERM)
        return [server.stop(timeout) for server in self.servers]

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ClickHouseCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


# -- the child --------------------------------------------------------------------------------------------------
def serve(directory: Path, http_port: int, parent_pid: int | None) -> int:
    """Run the server in this process until SIGTERM/SIGINT or the parent's death; the child's whole life.

    ``directory`` holds ``config.xml`` and is the working directory (clickhouse-local reads the config from the
    working directory); the data lives in ``directory/data``.
    """
    query = server_entry_point()
    os.chdir(directory)
    outcome: dict[str, Any] = {}

    def listen() -> None:
        try:
            outcome["result"] = query(_FOREVER_QUERY, "TabSeparated", path=str(directory / DATA_NAME))
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    stop = threading.Event()
    reason = {"why": ""}

    def on_signal(signum: int, _frame: Any) -> None:
        reason["why"] = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listener = threading.Thread(target=listen, name="clickhouse-listen", daemon=True)
    listener.start()
    print(f"serving {directory} on {HOST}:{http_port} with {chdb_versions()}", flush=True)
    while not stop.wait(0.5):
        if not listener.is_alive():
            # the forever query returned by itself: a listener failed (ClickHouse printed why above)
            print(f"the listening query ended by itself: {outcome.get('error', 'see the error above')}", flush=True)
            return 1
        if parent_pid is not None and os.getppid() != parent_pid:
            reason["why"] = f"parent {parent_pid} exited"
            break
    print(f"stopping ({reason['why']})", flush=True)
    # No async insert queue to flush: clickhouse-local never initialises one ("Cannot flush asynchronous insert
    # queue because it is not initialized"), so every insert it acknowledged is already in a part.
    statement = f"KILL QUERY WHERE query LIKE '%{_FOREVER_MARKER}%' AND query NOT LIKE 'KILL%' SYNC"
    try:
        request = urllib.request.Request(f"http://{HOST}:{http_port}/", data=statement.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()
    except (OSError, urllib.error.URLError) as exc:
        print(f"KILL QUERY failed: {exc}", flush=True)
    # ClickHouse's shutdown waits for open connections: idle HTTP ones close after KEEP_ALIVE_S, but the native
    # connections another shard's Distributed table keeps pooled stay (neither SYSTEM STOP LISTEN TCP nor DROP
    # CONNECTIONS CACHE on the peer closes them), and after 5 s ClickHouse gives up and exits 1. Waiting that long
    # buys nothing here: an acknowledged insert is already a committed part (no async queue), so exit sooner.
    listener.join(STOP_GRACE_S)
    if listener.is_alive():
        print(
            f"connections still open {STOP_GRACE_S:g} s after the stop (another shard's pooled native connections): "
            f"exiting {EXIT_CONNECTIONS_OPEN} without waiting for them; acknowledged inserts are already parts",
            flush=True,
        )
        os._exit(EXIT_CONNECTIONS_OPEN)
    print("stopped", flush=True)
    return 0


def _run(directory: Path, shards: int) -> int:
    """``run``: serve one server or a cluster in the foreground for manual benchmarks, until Ctrl-C."""
    target: ClickHouseServer | ClickHouseCluster
    target = ClickHouseServer(directory) if shards == 1 else ClickHouseCluster(shards, directory)
    with target:
        servers = [target] if isinstance(target, ClickHouseServer) else target.servers
        for server in servers:
            print(f"{server.dsn}  tcp {server.tcp_port}  pid {server.pid}  data {server.data_dir}", flush=True)
        if isinstance(target, ClickHouseCluster):
            print(f"cluster {target.name!r} in remote_servers of every shard", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(s.running for s in servers):
                time.sleep(0.5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.testing.clickhouse", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    child = sub.add_parser("serve", help="(internal) run one server in this process; ClickHouseServer starts it")
    child.add_argument("--dir", type=Path, required=True, help="holds config.xml; data goes to DIR/data")
    child.add_argument("--http-port", type=int, required=True, help="the HTTP port config.xml names")
    child.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    run = sub.add_parser("run", help="start a server (or a cluster) on free loopback ports until Ctrl-C")
    run.add_argument("--dir", type=Path, required=True, help="where the servers keep config, log and data")
    run.add_argument("--shards", type=int, default=1, help="more than 1: a cluster with remote_servers")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            if not (args.dir / CONFIG_NAME).is_file():
                raise ClickHouseServerError(f"{args.dir / CONFIG_NAME} does not exist; ClickHouseServer writes it")
            return serve(args.dir.resolve(), args.http_port, args.parent_pid)
        return _run(args.dir.resolve(), args.shards)
    except ClickHouseServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DEFAULT_CLUSTER",
    "EXIT_CONNECTIONS_OPEN",
    "ClickHouseCluster",
    "ClickHouseServer",
    "ClickHouseServerError",
    "chdb_versions",
    "free_ports",
    "render_config",
    "server_entry_point",
]
