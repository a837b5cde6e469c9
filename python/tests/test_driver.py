"""Drivers in their own process: init arguments and errors, worker output,
Ctrl-C."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import driver_env, process_alive, read_pids, start_head, stop_node, wait_for

import arca


def test_init_auto_without_node_raises_connection_error(run_driver):
    if arca._native.node_running(arca._runtime.DEFAULT_SESSION_DIR):
        pytest.skip("a node runs in the default session directory")
    p = run_driver(
        """
        import arca as ray
        try:
            ray.init(address="auto")
        except ConnectionError as e:
            print("CONNECTION-ERROR", e)
        print("INITIALIZED", ray.is_initialized())
        """
    )
    assert p.returncode == 0, p.stderr
    assert "CONNECTION-ERROR" in p.stdout
    assert "INITIALIZED False" in p.stdout


def test_init_with_missing_temp_dir_raises(run_driver, tmp_path):
    p = run_driver(
        """
        import os, sys
        import arca as ray
        try:
            ray.init(_temp_dir=sys.argv[1])
        except ConnectionError as e:
            print("CONNECTION-ERROR", e)
        os.environ["ARCA_TEMP_DIR"] = sys.argv[1]
        try:
            ray.init()
        except ConnectionError as e:
            print("ENV-CONNECTION-ERROR", e)
        print("INITIALIZED", ray.is_initialized())
        """,
        str(tmp_path / "no-node-here"),
    )
    assert p.returncode == 0, p.stderr
    assert "CONNECTION-ERROR No Arca node runs in" in p.stdout, p.stdout
    assert "ENV-CONNECTION-ERROR" in p.stdout and "unset ARCA_TEMP_DIR" in p.stdout, p.stdout
    assert "INITIALIZED False" in p.stdout


def test_init_with_a_directory_as_address_raises(run_driver, tmp_path):
    p = run_driver(
        """
        import sys
        import arca as ray
        try:
            ray.init(address=sys.argv[1])
        except ConnectionError as e:
            print("CONNECTION-ERROR", e)
        print("INITIALIZED", ray.is_initialized())
        """,
        str(tmp_path),
    )
    assert p.returncode == 0, p.stderr
    assert "CONNECTION-ERROR" in p.stdout and "HOST:PORT" in p.stdout, p.stdout
    assert "ARCA_TEMP_DIR" in p.stdout, p.stdout
    assert "INITIALIZED False" in p.stdout


def test_init_unknown_argument_raises(run_driver):
    p = run_driver(
        """
        import arca as ray
        try:
            ray.init(num_cpus=1, not_an_argument=1)
        except TypeError as e:
            print("TYPE-ERROR", e)
        """
    )
    assert p.returncode == 0, p.stderr
    assert "TYPE-ERROR" in p.stdout and "not_an_argument" in p.stdout


def test_is_initialized_shutdown_and_init_again(run_driver):
    p = run_driver(
        """
        import arca as ray
        print("A", ray.is_initialized())
        ctx = ray.init(num_cpus=1)
        print("B", ray.is_initialized())
        @ray.remote
        def f(x):
            return x + 1
        print("C", ray.get(f.remote(1), timeout=30))
        ray.shutdown()
        print("D", ray.is_initialized())
        ray.shutdown()  # idempotent
        with ray.init(num_cpus=1, resources={"Custom": 3}):
            print("E", ray.get(f.remote(2), timeout=30), ray.cluster_resources()["Custom"])
        print("F", ray.is_initialized())
        """
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    for expected in ("A False", "B True", "C 2", "D False", "E 3 3.0", "F False"):
        assert expected in lines, p.stdout


def _node(arca_bin, tmp_path):
    session = tmp_path / "session"
    start_head(arca_bin, session, "--num-cpus", "2", "--memory", "256MiB")
    return session


def _stop(arca_bin, session):
    stop_node(arca_bin, session)


def test_num_cpus_when_connecting_raises_value_error(run_driver, arca_bin, tmp_path):
    session = _node(arca_bin, tmp_path)
    try:
        p = run_driver(
            """
            import sys
            import arca as ray
            try:
                ray.init(_temp_dir=sys.argv[1], num_cpus=1)
            except ValueError as e:
                print("VALUE-ERROR", e)
            print("INITIALIZED", ray.is_initialized())
            ray.init(_temp_dir=sys.argv[1])
            @ray.remote
            def f():
                return "ran"
            print("RESULT", ray.get(f.remote(), timeout=30))
            print("CPU", ray.cluster_resources()["CPU"])
            ray.shutdown()
            """,
            str(session),
        )
    finally:
        _stop(arca_bin, session)
    assert p.returncode == 0, p.stderr
    assert "VALUE-ERROR" in p.stdout and "num_cpus" in p.stdout
    assert "INITIALIZED False" in p.stdout
    assert "RESULT ran" in p.stdout
    assert "CPU 2.0" in p.stdout


PRINTING_DRIVER = """
import os, sys, time
import arca as ray
ray.init(num_cpus=1, log_to_driver=sys.argv[1] == "on")
release = sys.argv[2] if len(sys.argv) > 2 else None

@ray.remote
def chatty():
    print("hello-from-the-task", flush=True)
    # Keep running until the test has seen the line (when it waits for it).
    deadline = time.monotonic() + 30
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "done"

print("RESULT", ray.get(chatty.remote(), timeout=60), flush=True)
ray.shutdown()
"""


def _read_lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def _start_driver(tmp_path, code: str, args: list[str], **pipes):
    """Starts driver ``code`` in its own process; returns it, a queue of its
    stdout lines (``None`` at the end) and the thread that fills it."""
    script = tmp_path / "driver.py"
    script.write_text(code)
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=driver_env(),
        stdout=subprocess.PIPE,
        text=True,
        **pipes,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    return proc, lines, reader


def _run_printing_driver(tmp_path, mode: str, line_timeout: float) -> str:
    """Runs PRINTING_DRIVER; the task keeps running until its line reaches the
    driver's stdout (or ``line_timeout`` s pass). Returns the driver's stdout."""
    release = tmp_path / "release"
    proc, lines, reader = _start_driver(
        tmp_path, PRINTING_DRIVER, [mode, str(release)], stderr=subprocess.STDOUT
    )
    out = []
    try:
        deadline = time.monotonic() + line_timeout
        while not any("hello-from-the-task" in line for line in out):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
        release.touch()
        returncode = proc.wait(timeout=30)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=30)
        proc.stdout.close()
    while not lines.empty():
        line = lines.get_nowait()
        if line is not None:
            out.append(line)
    text = "".join(out)
    assert returncode == 0, text
    assert "RESULT done" in text
    return text


def test_task_print_reaches_driver_stdout(tmp_path):
    text = _run_printing_driver(tmp_path, "on", line_timeout=30)
    assert re.search(r"^\(chatty pid=\d+\) hello-from-the-task$", text, re.M), text


def test_log_to_driver_false_hides_task_print(tmp_path):
    text = _run_printing_driver(tmp_path, "off", line_timeout=5)
    assert "hello-from-the-task" not in text


def test_log_to_driver_false_with_running_node(run_driver, arca_bin, tmp_path):
    session = _node(arca_bin, tmp_path)
    try:
        p = run_driver(
            """
            import sys
            import arca as ray
            ray.init(_temp_dir=sys.argv[1], log_to_driver=False)
            @ray.remote
            def chatty():
                print("hello-from-the-task", flush=True)
                return "done"
            print("RESULT", ray.get(chatty.remote(), timeout=30), flush=True)
            ray.shutdown()
            """,
            str(session),
        )
    finally:
        _stop(arca_bin, session)
    assert p.returncode == 0, p.stderr
    assert "RESULT done" in p.stdout
    assert "hello-from-the-task" not in p.stdout + p.stderr


CTRL_C_DRIVER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import arca as ray
ray.init(num_cpus=2)
path = sys.argv[1]

@ray.remote
def long_sleep():
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(60)

refs = [long_sleep.remote() for _ in range(2)]
print("SUBMITTED", flush=True)
try:
    ray.get(refs, timeout=90)
    print("NOT-INTERRUPTED", flush=True)
except KeyboardInterrupt:
    print("KEYBOARD-INTERRUPT", flush=True)
"""


def test_ctrl_c_interrupts_get_and_leaves_no_workers(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(CTRL_C_DRIVER)
    pids_file = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pids_file)],
        cwd=tmp_path,
        env=driver_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pids = wait_for(
            lambda: len(read_pids(pids_file)) == 2 and read_pids(pids_file),
            timeout=30,
            what="both tasks to start",
        )
        time.sleep(0.2)  # let the driver block in get()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert "KEYBOARD-INTERRUPT" in out, (out, err)
    assert "NOT-INTERRUPTED" not in out
    assert proc.returncode == 0, err
    assert all(p != os.getpid() for p in pids)
    wait_for(
        lambda: not any(process_alive(p) for p in pids),
        timeout=20,
        what="the driver's workers to exit",
    )


WAITING_DRIVER = """
import sys
import arca as ray
ray.init(_temp_dir=sys.argv[1])

@ray.remote
def one():
    return 1

refs = [one.remote() for _ in range(20)]
assert ray.get(refs, timeout=30) == [1] * 20
print("NODE", ray._native.status()["pid"], flush=True)
sys.stdin.readline()
ready, rest = ray.wait(refs, num_returns=20, timeout=30)
print("READY", len(ready), len(rest), flush=True)
"""


def test_wait_on_finished_results_needs_no_round_trip(arca_bin, tmp_path):
    # The node tells a driver which of its tasks finished with the replies it
    # sends anyway; a wait on those is answered from that. Shown by stopping
    # the node (SIGSTOP) before the wait: asking it would block.
    session = _node(arca_bin, tmp_path)
    proc, lines, reader = _start_driver(
        tmp_path, WAITING_DRIVER, [str(session)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    node_pid = None
    try:
        line = lines.get(timeout=60) or ""
        # (stderr only once stdout ended: the driver has exited.)
        assert line.startswith("NODE "), line or proc.stderr.read()
        node_pid = int(line.split()[1])
        os.kill(node_pid, signal.SIGSTOP)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        try:
            line = (lines.get(timeout=20) or "").strip()
        except queue.Empty:
            line = "no answer while the node was stopped"
        assert line == "READY 20 0", line
    finally:
        if node_pid is not None:
            os.kill(node_pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
        _stop(arca_bin, session)
