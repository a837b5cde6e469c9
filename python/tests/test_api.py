"""get / put / wait edge cases, ObjectRef, and init in this process."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path

import pytest

import arca
from arca import exceptions as ex


@arca.remote
def gate(path: str, value=None):
    """Blocks until ``path`` exists (at most 60 s), then returns ``value``."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


@arca.remote
def delayed(t, value):
    time.sleep(t)
    return value


@pytest.fixture
def release(tmp_path: Path):
    """A path for ``gate`` tasks; created at teardown so that no task is left blocked."""
    path = tmp_path / "release"
    yield str(path)
    path.touch()


def test_get_tuple_raises_value_error(ray):
    r = ray.put(1)
    with pytest.raises(ValueError, match="ObjectRef"):
        ray.get((r,))
    with pytest.raises(ValueError):
        ray.get([r, 3])


def test_get_empty_list(ray):
    assert ray.get([]) == []


def test_get_timeout_zero_on_pending_task(ray, release):
    r = gate.remote(release, "done")
    with pytest.raises(ex.GetTimeoutError) as info:
        ray.get(r, timeout=0)
    assert isinstance(info.value, TimeoutError)
    Path(release).touch()
    assert ray.get(r, timeout=30) == "done"


def test_get_negative_timeout_raises(ray):
    with pytest.raises(ValueError):
        ray.get(ray.put(1), timeout=-1)


def test_get_list_keeps_order(ray):
    refs = [delayed.remote(0.1 * (3 - i), i) for i in range(4)]
    assert ray.get(refs, timeout=30) == [0, 1, 2, 3]
    puts = [ray.put(f"v{i}") for i in range(20)]
    assert ray.get(puts, timeout=30) == [f"v{i}" for i in range(20)]
    # The same ref twice in one list.
    assert ray.get([puts[3], puts[3]], timeout=30) == ["v3", "v3"]


def test_put_of_object_ref_raises_type_error(ray):
    r = ray.put(1)
    with pytest.raises(TypeError, match="ObjectRef"):
        ray.put(r)
    # Wrapped in a list it is allowed.
    assert ray.get(ray.get(ray.put([r]), timeout=30)[0], timeout=30) == 1


def test_wait_returns_two_lists_in_input_order(ray):
    refs = [ray.put(i) for i in range(6)]
    ready, not_ready = ray.wait(refs, num_returns=6, timeout=30)
    assert ready == refs
    assert not_ready == []
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=30)
    assert len(ready) == 2
    assert sorted(map(refs.index, ready + not_ready)) == list(range(6))
    assert [refs.index(r) for r in ready] == sorted(refs.index(r) for r in ready)
    assert [refs.index(r) for r in not_ready] == sorted(refs.index(r) for r in not_ready)


def test_wait_with_timeout_returns_fewer(ray, release):
    pending = gate.remote(release, "late")
    done = ray.put("early")
    ready, not_ready = ray.wait([pending, done], num_returns=2, timeout=0.3)
    assert ready == [done]
    assert not_ready == [pending]
    Path(release).touch()
    ready, not_ready = ray.wait([pending, done], num_returns=2, timeout=30)
    assert ready == [pending, done]
    assert not_ready == []


def test_wait_default_num_returns_is_one(ray, release):
    pending = gate.remote(release)
    done = ray.put(0)
    ready, not_ready = ray.wait([pending, done], timeout=30)
    assert ready == [done]
    assert not_ready == [pending]


def test_wait_on_a_long_list_answers_in_input_order(ray, release):
    # A long list's head is asked about first; the answer is the same as
    # for the whole list: the first ready refs, in input order.
    pending = [gate.remote(release, i) for i in range(150)]
    done = {i: ray.put(i) for i in (5, 10, 130)}
    refs = [done.get(i, r) for i, r in enumerate(pending)]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=30)
    assert ready == [done[5], done[10]]
    assert not_ready == [r for r in refs if r not in ready]
    ready, _ = ray.wait(refs, num_returns=3, timeout=30)
    assert ready == [done[5], done[10], done[130]]
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=0.2)
    assert ready == [done[5], done[10], done[130]]
    assert len(not_ready) == 147


def test_wait_on_duplicates_raises(ray):
    r = ray.put(1)
    with pytest.raises(ValueError):
        ray.wait([r, r], timeout=5)


def test_wait_num_returns_greater_than_len_raises(ray):
    refs = [ray.put(1), ray.put(2)]
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=3, timeout=5)


def test_wait_bad_arguments(ray):
    r = ray.put(1)
    with pytest.raises(TypeError):
        ray.wait(r)
    with pytest.raises(TypeError):
        ray.wait([r, 1])
    with pytest.raises(ValueError):
        ray.wait([r], timeout=-1)


def test_object_ref_hash_hex_repr(ray):
    r = ray.put("x")
    h = r.hex()
    assert isinstance(h, str)
    assert h and all(c in "0123456789abcdef" for c in h)
    assert repr(r) == f"ObjectRef({h})"
    d = {r: 1}
    assert d[r] == 1
    same = ray.get(ray.put([r]), timeout=30)[0]
    assert same == r
    assert hash(same) == hash(r)
    assert same.hex() == h
    other = ray.put("x")
    assert other != r
    assert len({r, same, other}) == 2
    assert isinstance(r, arca.ObjectRef)


def test_object_refs_stay_out_of_the_cycle_collector(ray):
    # A ref holds no Python object, so it cannot be in a cycle: untracked,
    # a value of 10,000 refs does not make every young collection walk them.
    refs = ray.get(ray.put([ray.put(i) for i in range(100)]), timeout=30)
    assert not any(gc.is_tracked(r) for r in refs)
    assert not gc.is_tracked(ray.put(1))
    gc.collect()
    assert ray.get(refs, timeout=30) == list(range(100))


def test_await_ref_in_asyncio(ray):
    async def main():
        async def one(ref):
            return await ref

        a = delayed.remote(0.05, "a")
        b = ray.put("b")
        return await asyncio.wait_for(asyncio.gather(one(a), one(b)), timeout=30)

    assert asyncio.run(main()) == ["a", "b"]


def test_ref_future(ray):
    fut = delayed.remote(0.05, 42).future()
    assert fut.result(timeout=30) == 42


def test_future_of_failed_task_raises(ray):
    @arca.remote
    def fail():
        raise KeyError("fut-err")

    with pytest.raises(KeyError):
        fail.remote().future().result(timeout=30)


def test_reinit_raises_runtime_error(ray):
    assert ray.is_initialized()
    with pytest.raises(RuntimeError, match="Maybe you called ray.init twice by accident"):
        ray.init()
    with pytest.raises(RuntimeError, match="ignore_reinit_error=True"):
        ray.init(num_cpus=1)


def test_reinit_ignore_reinit_error(ray):
    ctx = ray.init(ignore_reinit_error=True)
    assert ray.is_initialized()
    assert ctx is not None
    assert ctx["session_dir"] == ctx.address_info["session_dir"]
    # Still works afterwards.
    assert ray.get(ray.put(5), timeout=30) == 5


def test_import_arca_is_light(run_driver):
    # numpy and pyarrow load only once a value needs them: not for
    # `import arca`, nor for tasks on plain Python values.
    p = run_driver(
        """
        import sys
        import arca as ray
        seen = ["numpy" in sys.modules, "pyarrow" in sys.modules]
        ray.init()

        @ray.remote
        def f(x):
            return x + 1

        assert ray.get(f.remote(ray.put(1))) == 2
        seen += ["numpy" in sys.modules, "pyarrow" in sys.modules]
        import numpy as np
        assert (ray.get(ray.put(np.arange(3))) == np.arange(3)).all()
        print(seen)
        """
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[False, False, False, False]", p.stdout
