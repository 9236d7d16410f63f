"""Deployment units: the systemd unit as systemd parses it, its environment file as the engine parses it, the
container build file's promises, and readiness notification by a real engine process to a real socket."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Config
from engine.ops.sdnotify import READY, STOPPING, notify, notify_address
from engine.testing.engines import EngineProcess, make_fixture

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "vnqr-engine.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "vnqr-engine.env.example"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
UNIT_PYTHON = "/opt/vnqr-engine/venv/bin/python"


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file (all sections), values in order; comments and headers skipped."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


# -- systemd ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    """``verify`` prints a line for every unknown key, bad value or missing binary (its exit code stays 0 for
    most of them), so the test demands silence. ExecStart's interpreter is swapped for this one: the unit's
    /opt path exists only on a deployed host."""
    text = UNIT.read_text()
    assert f"ExecStart={UNIT_PYTHON} -m engine serve" in text
    unit = tmp_path / "vnqr-engine.service"
    unit.write_text(text.replace(UNIT_PYTHON, sys.executable))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0 and not lines, lines

    # the same check notices a broken unit (so its silence above means something)
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True)
    assert "protect system" in (done.stdout + done.stderr).lower()


def test_unit_declares_readiness_restart_and_hardening() -> None:
    s = unit_settings(UNIT.read_text())
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "UMask": "0077",
        "User": "vnqr",
        "EnvironmentFile": "/etc/vnqr-engine/engine.env",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], (key, s.get(key))
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert int(s["LimitNOFILE"][0]) >= 65536
    data_dir = dict(line.split("=", 1) for line in _env_lines())["ENGINE_DATA_DIR"]
    assert s["ReadWritePaths"] == [data_dir] and s["WorkingDirectory"] == [data_dir]
    assert data_dir == "/var/lib/" + s["StateDirectory"][0]
    # systemd must wait longer than the engine's own graceful drain before it SIGKILLs
    stop = int(s["TimeoutStopSec"][0].rstrip("s"))
    assert stop > Config().shutdown_timeout_s * 2


def _env_lines() -> list[str]:
    return [ln.strip() for ln in ENV_EXAMPLE.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_environment_example_is_valid_engine_configuration() -> None:
    """Every variable in the example is one the engine reads, and the engine accepts the values as written."""
    environ = dict(line.split("=", 1) for line in _env_lines())
    known = {"ENGINE_" + name.upper() for name in Config.__dataclass_fields__}
    assert set(environ) <= known, set(environ) - known
    commented = re.findall(r"^#(ENGINE_[A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M)
    assert set(commented) <= known, set(commented) - known
    cfg = Config.from_sources(None, environ)
    assert str(cfg.data_dir) == "/var/lib/vnqr-engine" and cfg.host == "127.0.0.1"
    defaults = Config()
    # the example documents the defaults: a copy that silently changes the device contract would mislead
    for name in ("skew_s", "max_scans_per_request", "max_body_bytes", "device_rate", "device_burst", "retention_days"):
        assert getattr(cfg, name) == getattr(defaults, name), name


# -- the container build file -------------------------------------------------------------------------------
def containerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        assert stages, f"instruction before FROM: {line}"
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def test_containerfile_builds_from_project_files_and_runs_unprivileged() -> None:
    stages = containerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage with the compiler, a runtime stage without"
    build, runtime = stages[0], stages[-1]
    assert " AS " in build[0][1].upper()
    # every COPY from the build context names files that exist here (and what setup.py compiles is among them)
    copied: list[str] = []
    for stage in stages:
        for word, args in stage:
            if word == "COPY" and not args.startswith("--from"):
                *sources, _dest = shlex.split(args)
                copied += sources
    for source in copied:
        assert (ROOT / source).exists(), f"Containerfile copies {source}, which is not in the repository"
    assert {"pyproject.toml", "setup.py", "engine", "ext"} <= set(copied)
    build_runs = " ".join(args for word, args in build if word == "RUN")
    assert "pip install" in build_runs and '"verifier": *"cython"' in build_runs  # a silent pure-Python build fails
    runtime_runs = " ".join(args for word, args in runtime if word == "RUN")
    assert "gcc" not in runtime_runs

    users = [args for word, args in runtime if word == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), user
    assert f"--uid {user}" in runtime_runs

    env = dict(re.findall(r"(ENGINE_[A-Z_]+)=(\S+)", " ".join(args for word, args in runtime if word == "ENV")))
    assert set(env) <= {"ENGINE_" + n.upper() for n in Config.__dataclass_fields__}
    volumes = " ".join(args for word, args in runtime if word == "VOLUME")
    assert env["ENGINE_DATA_DIR"] in volumes
    assert [args for word, args in runtime if word == "EXPOSE"] == [env["ENGINE_PORT"]]
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "ENGINE_PORT" in health[0]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = [args for word, args in runtime if word == "ENTRYPOINT"]
    assert entry and shlex.split(entry[0].strip("[]").replace(",", " "))[0].strip('"') in scripts

    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"**/*.so", "data", ".git"} <= set(ignored)  # no local build products, store or keys in the image


# -- sd_notify ----------------------------------------------------------------------------------------------
@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer
    path = f"/tmp/vnqr-notify-{os.getpid()}-{id(tmp_path)}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # as systemd does, to check the sender's PID
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)


def receive(sock: socket.socket, timeout: float) -> tuple[str, int]:
    """One datagram and the PID of the process that sent it (SCM_CREDENTIALS, filled in by the kernel)."""
    sock.settimeout(timeout)
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    pid = next(struct.unpack("3i", d)[0] for level, kind, d in ancillary if kind == socket.SCM_CREDENTIALS)
    return data.decode(), pid


def test_notify_sends_one_datagram_to_a_path_or_abstract_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify(READY, {"NOTIFY_SOCKET": path}) is True
    assert receive(sock, 5) == ("READY=1", os.getpid())

    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"vnqr-notify-test-{os.getpid()}"
    abstract.bind(b"\0" + name.encode())
    try:
        assert notify("STATUS=draining\nSTOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        abstract.settimeout(5)
        assert abstract.recv(4096) == b"STATUS=draining\nSTOPPING=1"
    finally:
        abstract.close()


def test_notify_without_a_service_manager_is_a_quiet_no_op(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert notify(READY, {}) is False and notify_address({"NOTIFY_SOCKET": ""}) is None
    with caplog.at_level(logging.WARNING, "engine.ops.sdnotify"):
        assert notify(READY, {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False  # socket vanished: logged
        assert notify(READY, {"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert "could not notify" in caplog.text and "not a socket path" in caplog.text
    with pytest.raises(ValueError, match="KEY=VALUE"):
        notify("READY")


def test_engine_reports_ready_once_serving_and_stopping_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    fx = make_fixture(tmp_path / "engine")
    engine = EngineProcess(fx.data_dir, NOTIFY_SOCKET=path)
    log = open(engine.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    engine.proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve"], env=engine.env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        state, pid = receive(sock, 120)
        assert (state, pid) == ("READY=1", engine.proc.pid)  # from the main PID: what NotifyAccess=main accepts
        # READY=1 means serving: the very first request after it is answered
        with urllib.request.urlopen(engine.url + "/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(engine.url + "/readyz", timeout=10) as r:
            assert r.status == 200
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # exactly one READY=1

        engine.proc.send_signal(signal.SIGTERM)
        assert receive(sock, 30) == (STOPPING, engine.proc.pid)
        assert engine.proc.wait(timeout=60) == 0
    finally:
        if engine.proc.poll() is None:
            engine.kill9()
        log.close()
