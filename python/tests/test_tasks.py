"""Tasks: returns, options, arguments, cancel, crashes and retries."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import process_alive, read_pids, wait_for

import arca
from arca import exceptions as ex


@arca.remote(num_returns=2)
def two():
    return "a", "b"


@arca.remote(num_returns=0)
def nothing():
    return None


@arca.remote
def ident(x):
    return x


@arca.remote
def kw(a, b=2, *, c, **rest):
    return (a, b, c, rest)


@arca.remote
def describe(lst):
    return [type(x).__name__ for x in lst], arca.get(lst, timeout=30)


@arca.remote
def record_and_sleep(path: str, seconds: float):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return "finished"


def test_num_returns_two(ray):
    refs = two.remote()
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, arca.ObjectRef) for r in refs)
    assert ray.get(refs, timeout=30) == ["a", "b"]


def test_num_returns_zero(ray):
    assert nothing.remote() is None


def test_num_returns_mismatch_is_an_error(ray):
    @arca.remote(num_returns=3)
    def wrong():
        return 1, 2

    refs = wrong.remote()
    with pytest.raises(ex.RayError):
        ray.get(refs[0], timeout=30)


def test_options_leave_the_original(ray):
    many = ident.options(num_returns=2, num_cpus=0.5)
    assert many is not ident
    single = ident.remote(("x", "y"))
    assert isinstance(single, arca.ObjectRef)
    assert ray.get(single, timeout=30) == ("x", "y")
    pair = many.remote(("x", "y"))
    assert isinstance(pair, list) and len(pair) == 2
    assert ray.get(pair, timeout=30) == ["x", "y"]
    assert ident._options == {}
    assert isinstance(ident.remote(1), arca.ObjectRef)


def test_invalid_option_raises(ray):
    with pytest.raises(ValueError):
        ident.options(not_an_option=1)
    with pytest.raises(ValueError):
        ident.options(num_cpus=-1)


def test_calling_remote_function_directly_raises(ray):
    with pytest.raises(TypeError, match=r"ident\.remote\(\)"):
        ident(1)


def test_kwargs(ray):
    assert ray.get(kw.remote(1, c=3), timeout=30) == (1, 2, 3, {})
    assert ray.get(kw.remote(1, 5, c=3, extra="e"), timeout=30) == (1, 5, 3, {"extra": "e"})
    ref = ray.put(10)
    assert ray.get(kw.remote(a=ref, c=ref), timeout=30) == (10, 2, 10, {})


def test_object_ref_args_resolved_nested_stay_refs(ray):
    a = ray.put(1)
    b = ident.remote(2)
    assert ray.get(ident.remote(a), timeout=30) == 1
    assert ray.get(ident.remote(b), timeout=30) == 2
    names, values = ray.get(describe.remote([a, b]), timeout=30)
    assert names == ["ObjectRef", "ObjectRef"]
    assert values == [1, 2]


def test_nested_tasks(ray):
    @arca.remote
    def outer(n):
        return arca.get([ident.remote(i) for i in range(n)], timeout=30)

    assert ray.get(outer.remote(3), timeout=30) == [0, 1, 2]


def _start(tmp_path: Path, name: str, fn, *args):
    path = tmp_path / name
    ref = fn.remote(str(path), *args)
    pid = wait_for(lambda: read_pids(path), what="the task to start")[0]
    return ref, pid, path


def test_cancel_running_task(ray, tmp_path):
    ref, _, _ = _start(tmp_path, "pids", record_and_sleep, 30)
    ray.cancel(ref)
    with pytest.raises(ex.TaskCancelledError):
        ray.get(ref, timeout=10)
    # The node still runs tasks.
    assert ray.get(ident.remote("after"), timeout=30) == "after"


def test_cancel_force_kills_worker(ray, tmp_path):
    ref, pid, _ = _start(tmp_path, "pids", record_and_sleep, 30)
    ray.cancel(ref, force=True)
    with pytest.raises(ex.TaskCancelledError):
        ray.get(ref, timeout=10)
    wait_for(lambda: not process_alive(pid), what="the worker to exit")
    assert ray.get(ident.remote("after"), timeout=30) == "after"


@arca.remote
def sleep_long():
    time.sleep(1e6)


def test_cancel_right_after_submit_always_cancels(ray):
    # The cancel can reach the worker before its task does, or while the
    # task is starting: either way the task ends cancelled, never runs on.
    for _ in range(30):
        ref = sleep_long.remote()
        ray.cancel(ref)
        with pytest.raises(ex.TaskCancelledError):
            ray.get(ref, timeout=20)
    assert ray.get(ident.remote("after"), timeout=30) == "after"


def test_cancel_of_finished_task_keeps_value(ray):
    ref = ident.remote(7)
    assert ray.get(ref, timeout=30) == 7
    ray.cancel(ref)
    assert ray.get(ref, timeout=30) == 7


def test_cancel_rejects_non_refs(ray):
    with pytest.raises(TypeError):
        ray.cancel("not a ref")


@arca.remote
def crash_first_attempt(path: str):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    if len(read_pids(Path(path))) == 1:
        time.sleep(30)
    return "retried"


def test_worker_killed_is_retried(ray, tmp_path):
    ref, pid, path = _start(tmp_path, "pids", crash_first_attempt.options(max_retries=1))
    os.kill(pid, signal.SIGKILL)
    assert ray.get(ref, timeout=30) == "retried"
    pids = read_pids(path)
    assert len(pids) == 2
    assert pids[0] == pid and pids[1] != pid


def test_worker_killed_without_retries_fails(ray, tmp_path):
    ref, pid, path = _start(tmp_path, "pids", record_and_sleep.options(max_retries=0), 30)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ex.WorkerCrashedError):
        ray.get(ref, timeout=30)
    assert read_pids(path) == [pid]


@arca.remote
def fail_first(path: str):
    n = len(Path(path).read_text()) if os.path.exists(path) else 0
    with open(path, "a") as f:
        f.write("x")
    if n == 0:
        raise ValueError("first attempt fails")
    return n + 1


def test_retry_exceptions_retries_once(ray, tmp_path):
    path = tmp_path / "count"
    ref = fail_first.options(retry_exceptions=True, max_retries=2).remote(str(path))
    assert ray.get(ref, timeout=30) == 2
    assert path.read_text() == "xx"


def test_no_retry_exceptions_by_default(ray, tmp_path):
    path = tmp_path / "count"
    with pytest.raises(ValueError, match="first attempt fails"):
        ray.get(fail_first.remote(str(path)), timeout=30)
    assert path.read_text() == "x"


def test_retry_exceptions_list_only_retries_listed(ray, tmp_path):
    path = tmp_path / "count"
    ref = fail_first.options(retry_exceptions=[KeyError], max_retries=2).remote(str(path))
    with pytest.raises(ValueError):
        ray.get(ref, timeout=30)
    assert path.read_text() == "x"


@arca.remote
def always_fail(path: str):
    with open(path, "a") as f:
        f.write("x")
    raise ValueError("always")


def test_retry_exceptions_honours_max_retries(ray, tmp_path):
    path = tmp_path / "count"
    ref = always_fail.options(retry_exceptions=True, max_retries=2).remote(str(path))
    with pytest.raises(ValueError, match="always"):
        ray.get(ref, timeout=30)
    assert path.read_text() == "xxx"


@arca.remote
def gate(path: str):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "opened"


def test_cancel_queued_task(ray, tmp_path):
    release = tmp_path / "release"
    try:
        blockers = [gate.remote(str(release)) for _ in range(2)]
        queued = ident.remote("never")
        ready, _ = ray.wait([queued], timeout=0.2)
        assert ready == []
        ray.cancel(queued)
        with pytest.raises(ex.TaskCancelledError):
            ray.get(queued, timeout=10)
    finally:
        release.touch()
    assert ray.get(blockers, timeout=30) == ["opened", "opened"]


@arca.remote
def leaf(i):
    return i


@arca.remote
def middle(i):
    return sum(arca.get([leaf.remote(j) for j in range(3)], timeout=30)) + i


@arca.remote
def top():
    return arca.get([middle.remote(i) for i in range(3)], timeout=30)


def test_nested_gets_deeper_than_cpus_do_not_deadlock(ray):
    # 2 CPUs, 2 tops each blocked on 3 middles each blocked on 3 leaves.
    assert ray.get([top.remote(), top.remote()], timeout=60) == [[3, 4, 5], [3, 4, 5]]


def test_task_returning_object_ref(ray):
    @arca.remote
    def make():
        return arca.put("inner-value")

    inner = ray.get(make.remote(), timeout=30)
    assert isinstance(inner, arca.ObjectRef)
    assert ray.get(inner, timeout=30) == "inner-value"
