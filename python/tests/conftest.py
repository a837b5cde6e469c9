"""Shared fixtures: one embedded node for the session, a per-test watchdog,
and helpers to run driver scripts in their own process."""

from __future__ import annotations

import faulthandler
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import arca

REPO = Path(__file__).resolve().parents[2]
ARCA_BIN = REPO / "target" / "release" / "arca"
ARCA_BIN_DEBUG = REPO / "target" / "debug" / "arca"

# Where nodes that tests start with `arca start` listen: the head's control
# service and each node's peer service bind to an IP of their own.
TEST_IP = "127.0.3.1"
TEST_PORTS = range(19000, 20000)
# Variables that pick a node for init(): a driver under test sets its own.
NODE_ENV_VARS = ("ARCA_ADDRESS", "RAY_ADDRESS", "ARCA_TEMP_DIR")


@pytest.fixture(autouse=True)
def _watchdog():
    """Dumps every thread's stack and exits if a test hangs."""
    # Longer than any test's own timeouts (subprocesses get 120 s at most), so
    # that those fail first and visibly: this exit's dump goes to pytest's
    # captured stderr, which is lost with the process.
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def ray():
    """An embedded node with 2 CPUs in the pytest process, for the whole session."""
    for var in NODE_ENV_VARS:
        os.environ.pop(var, None)
    arca.init(address="local", num_cpus=2)
    yield arca
    arca.shutdown()


def driver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NODE_ENV_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(ip: str = TEST_IP) -> int:
    """A port of ``TEST_PORTS`` free on ``ip`` now, for a head's ``--port``."""
    first = random.randrange(len(TEST_PORTS))
    for i in range(len(TEST_PORTS)):
        port = TEST_PORTS[(first + i) % len(TEST_PORTS)]
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {TEST_PORTS} on {ip}")


def start_head(arca_bin: Path, temp_dir: Path, *args: str) -> str:
    """Starts a head with ``arca start`` on ``TEST_IP`` and a free port in
    ``temp_dir``; returns its address. Stop it with ``stop_node``."""
    for _ in range(5):
        address = f"{TEST_IP}:{free_port()}"
        ip, port = address.split(":")
        p = subprocess.run(
            [str(arca_bin), "start", "--head", "--port", port, "--node-ip-address", ip]
            + ["--temp-dir", str(temp_dir), *args],
            timeout=60,
            capture_output=True,
            text=True,
            env=driver_env(),
        )
        if p.returncode == 0:
            return address
        if "in use" not in p.stderr.lower():
            break
    raise AssertionError(f"arca start --head failed: {p.stdout}{p.stderr}")


def stop_node(arca_bin: Path, temp_dir: Path | str) -> None:
    subprocess.run(
        [str(arca_bin), "stop", "--temp-dir", str(temp_dir)],
        timeout=60,
        capture_output=True,
        env=driver_env(),
    )


@pytest.fixture
def run_driver(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Runs a Python driver script (dedented) in its own process, with a timeout."""

    def run(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        script = tmp_path / "driver.py"
        script.write_text(textwrap.dedent(code))
        return subprocess.run(
            [sys.executable, str(script), *args],
            cwd=tmp_path,
            env=driver_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def arca_bin() -> Path:
    """The `arca` CLI: the newer of the release and debug builds (scripts/test
    makes the debug one), else a release build made now."""
    built = [p for p in (ARCA_BIN, ARCA_BIN_DEBUG) if p.exists()]
    if built:
        return max(built, key=lambda p: p.stat().st_mtime)
    try:
        subprocess.run(
            ["cargo", "build", "--release", "--bin", "arca"],
            cwd=REPO,
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot build the arca CLI: {e}")
    return ARCA_BIN


def wait_for(pred: Callable[[], object], timeout: float = 20, what: str = "condition") -> object:
    """Polls ``pred`` until it returns something truthy; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")
