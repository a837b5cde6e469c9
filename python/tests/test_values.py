"""Values through the store and tasks: numpy (zero-copy), nested refs,
functions and classes, unpicklable values, bytes, Arrow."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import threading

import numpy as np
import pyarrow as pa
import pytest
from conftest import wait_for

import arca

MIB = 1 << 20


@arca.remote
def ident(x):
    return x


@arca.remote
def call(f, *args):
    return f(*args)


def in_store(arr: np.ndarray) -> bool:
    ptr = arr.__array_interface__["data"][0]
    return any(lo <= ptr < hi for lo, hi in arca._native.store_mappings())


def object_ids() -> set[str]:
    return {m[0] for m in arca._native.memory()}


def wait_freed(hex_id: str) -> None:
    def gone():
        gc.collect()
        return hex_id not in object_ids()

    wait_for(gone, timeout=20, what=f"object {hex_id} to be freed")


ARRAYS = {
    "float64": lambda: np.linspace(0, 1, 1000, dtype=np.float64),
    "float32": lambda: np.arange(1000, dtype=np.float32) / 7,
    "int8": lambda: (np.arange(1000) % 256 - 128).astype(np.int8),
    "int64": lambda: np.arange(-500, 500, dtype=np.int64) * (1 << 40),
    "complex128": lambda: np.arange(100) + 1j * np.arange(100)[::-1],
    "bool": lambda: np.arange(100) % 3 == 0,
    "c_order": lambda: np.arange(24.0).reshape(4, 6),
    "fortran_order": lambda: np.asfortranarray(np.arange(24.0).reshape(4, 6)),
    "3d": lambda: np.arange(60, dtype=np.int32).reshape(3, 4, 5),
    "non_contiguous": lambda: np.arange(100.0).reshape(10, 10)[::2, 1::3],
    "empty": lambda: np.zeros((0, 3)),
    "scalar": lambda: np.array(3.5),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_numpy_round_trip(ray, name):
    a = ARRAYS[name]()
    for b in (ray.get(ray.put(a), timeout=30), ray.get(ident.remote(a), timeout=30)):
        assert isinstance(b, np.ndarray)
        assert b.dtype == a.dtype
        assert b.shape == a.shape
        np.testing.assert_array_equal(a, b)
    if name == "fortran_order":
        assert b.flags.f_contiguous


@pytest.mark.parametrize("order", ["C", "F"])
def test_large_array_is_read_only_and_zero_copy(ray, order):
    a = np.asarray(np.random.default_rng(0).random((512, 512)), order=order)  # 2 MiB
    assert a.nbytes > MIB
    ref = ray.put(a)
    b = ray.get(ref, timeout=30)
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable
    with pytest.raises(ValueError):
        b[0, 0] = 1.0
    assert in_store(b)
    # A second get maps the same memory.
    c = ray.get(ref, timeout=30)
    assert c.__array_interface__["data"][0] == b.__array_interface__["data"][0]


@pytest.mark.parametrize("shift", [0, 16, 64, 200, 4032])
def test_large_array_is_placed_by_its_source_page_offset(ray, shift):
    # A large buffer lands at its source's offset within a page, rounded down
    # to 64: glibc's memmove runs at a third of its speed when the
    # destination is a little ahead of the source modulo 4 KiB.
    backing = np.zeros(MIB + 8192, dtype=np.uint8)
    start = (-backing.ctypes.data) % 4096 + shift
    a = backing[start : start + MIB]
    a[:] = np.arange(MIB) % 251
    assert a.ctypes.data % 4096 == shift
    b = ray.get(ray.put(a), timeout=30)
    assert in_store(b)
    assert b.ctypes.data % 4096 == shift - shift % 64
    np.testing.assert_array_equal(a, b)


def test_large_task_result_is_zero_copy(ray):
    @arca.remote
    def make(n):
        return np.arange(n, dtype=np.float64)

    b = ray.get(make.remote(MIB // 4), timeout=30)  # 2 MiB
    assert b[-1] == MIB // 4 - 1
    assert not b.flags.writeable
    assert in_store(b)
    # Passed on to another task and back.
    c = ray.get(ident.remote(b), timeout=30)
    np.testing.assert_array_equal(b, c)
    assert in_store(c)


def store_used() -> int:
    return arca._native.status()["store_used"]


def test_dropping_array_and_ref_frees_object(ray):
    gc.collect()
    used_before = store_used()
    ref = ray.put(np.ones(MIB // 2))  # 4 MiB
    hex_id = ref.hex()
    arr = ray.get(ref, timeout=30)
    assert hex_id in object_ids()
    assert store_used() >= used_before + 4 * MIB
    del ref
    gc.collect()
    # The array still pins the object's memory: new objects do not overwrite it.
    others = [ray.put(np.full(MIB // 2, 7.0)) for _ in range(3)]
    assert arr.min() == arr.max() == 1.0
    assert store_used() >= used_before + 4 * MIB
    del others, arr
    wait_freed(hex_id)
    wait_for(lambda: store_used() <= used_before, what="the store's memory to be released")


def test_task_result_freed_after_ref_dropped(ray):
    @arca.remote
    def make():
        return np.ones(MIB // 4)

    ref = make.remote()
    assert ray.get(ref, timeout=30).sum() == MIB // 4
    hex_id = ref.hex()
    assert hex_id in object_ids()
    del ref
    wait_freed(hex_id)


def test_refs_put_by_a_task_reach_the_driver(ray):
    @arca.remote
    def make():
        return [arca.put(np.arange(MIB // 4, dtype=np.float64))]

    (inner,) = ray.get(make.remote(), timeout=30)
    assert isinstance(inner, arca.ObjectRef)
    arr = ray.get(inner, timeout=30)
    assert arr[-1] == MIB // 4 - 1
    assert in_store(arr)


def test_nested_refs_live_while_outer_lives(ray):
    inner = ray.put(np.ones(MIB // 4))
    inner_hex = inner.hex()
    outer = ray.put({"inner": [inner]})
    del inner
    gc.collect()
    assert inner_hex in object_ids()
    got = ray.get(outer, timeout=30)["inner"][0]
    assert isinstance(got, arca.ObjectRef)
    assert got.hex() == inner_hex
    assert ray.get(got, timeout=30).sum() == MIB // 4
    del got
    gc.collect()
    assert inner_hex in object_ids()
    del outer
    wait_freed(inner_hex)


def ref_counts() -> dict[str, int]:
    return {m[0]: m[3] for m in arca._native.memory()}


@pytest.mark.parametrize("maker", ["put", "task"])
def test_refs_read_out_of_a_value_lean_on_it(ray, maker):
    # A ref read out of a value is held through the value: the node counts
    # only the value as its holder, and the value lives while the ref does.
    @arca.remote
    def make():
        return [arca.put(np.ones(MIB // 4)) for _ in range(3)]

    if maker == "put":
        inners = [ray.put(np.ones(MIB // 4)) for _ in range(3)]
        outer = ray.put(inners)
        del inners
    else:
        outer = make.remote()
    got = ray.get(outer, timeout=30)
    outer_hex, inner_hexes = outer.hex(), [r.hex() for r in got]
    # (The worker that made them lets go of its own refs a moment later.)
    wait_for(
        lambda: [ref_counts()[h] for h in inner_hexes] == [1, 1, 1],
        what="the inner objects to be held by the outer one alone",
    )
    del outer
    gc.collect()
    assert outer_hex in object_ids()
    assert [ray.get(r, timeout=30).sum() for r in got] == [MIB // 4] * 3
    # Each read ref is one hold of the value: the value outlives all but the last.
    last = got.pop()
    del got
    gc.collect()
    assert ray.get(last, timeout=30).sum() == MIB // 4
    assert {outer_hex, *inner_hexes} <= object_ids()
    del last
    for h in [outer_hex, *inner_hexes]:
        wait_freed(h)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def norm2(self):
        return self.x**2 + self.y**2


@dataclasses.dataclass(frozen=True)
class Tagged:
    tag: str
    items: tuple


def test_lambdas_and_classes_round_trip(ray):
    square = lambda v: v * v  # noqa: E731
    assert ray.get(call.remote(square, 7), timeout=30) == 49
    f = ray.get(ident.remote(square), timeout=30)
    assert f(5) == 25
    offset = 3
    assert ray.get(call.remote(lambda v: v + offset, 1), timeout=30) == 4

    p = ray.get(ident.remote(Point(3, 4)), timeout=30)
    assert p == Point(3, 4)
    assert p.norm2() == 25
    t = Tagged("t", (1, "two", 3.0))
    assert ray.get(ident.remote(t), timeout=30) == t
    assert ray.get(ray.put(t), timeout=30) == t
    assert ray.get(call.remote(Point, 1, 2), timeout=30) == Point(1, 2)


def test_local_class_round_trips(ray):
    class Local:
        def __init__(self, v):
            self.v = v

        def double(self):
            return 2 * self.v

    @arca.remote
    def use(o):
        return o.double(), type(o).__name__

    assert ray.get(use.remote(Local(21)), timeout=30) == (42, "Local")


class Holder:
    def __init__(self):
        self.lock = threading.Lock()


def make_closure():
    holder = Holder()

    def uses_holder():
        return holder

    return uses_holder


def test_unpicklable_value_names_lock_and_path(ray):
    fn = make_closure()
    for attempt in (lambda: ray.put(fn), lambda: ident.remote(fn)):
        with pytest.raises(TypeError) as info:
            attempt()
        msg = str(info.value)
        assert "lock" in msg
        assert "holder" in msg
        assert "attribute 'lock'" in msg


def test_unpicklable_captured_by_remote_function(ray):
    fn = make_closure()

    @arca.remote
    def captures():
        return fn()

    with pytest.raises(TypeError) as info:
        captures.remote()
    assert "lock" in str(info.value)


def test_bytes_round_trip(ray):
    for data in (b"", b"abc\x00\xff", bytes(range(256)) * (2 * MIB // 256)):
        for out in (ray.get(ray.put(data), timeout=30), ray.get(ident.remote(data), timeout=30)):
            assert type(out) is bytes
            assert out == data
    assert ray.get(ident.remote(bytearray(b"xy")), timeout=30) == bytearray(b"xy")


def test_python_values_round_trip(ray):
    values = [
        None,
        True,
        0,
        -(1 << 70),
        1.5,
        "unicode ✓",
        [1, [2, [3]]],
        {"a": {1, 2}, (1, 2): frozenset({3})},
        (1,),
        range(3),
        np.float32(2.5),
    ]
    assert ray.get(ident.remote(values), timeout=30) == values
    assert ray.get([ray.put(v) for v in values], timeout=30) == values


def test_arrow_record_batch_round_trip(ray):
    batch = pa.record_batch(
        {
            "i": pa.array(range(1000), type=pa.int64()),
            "s": pa.array([f"row{i}" for i in range(1000)]),
            "f": pa.array([i / 3 for i in range(1000)]),
        }
    )
    for out in (ray.get(ray.put(batch), timeout=30), ray.get(ident.remote(batch), timeout=30)):
        assert isinstance(out, pa.RecordBatch)
        assert out.schema == batch.schema
        assert out.equals(batch)
    table = pa.Table.from_batches([batch, batch])
    assert ray.get(ident.remote(table), timeout=30).equals(table)


@arca.remote
def total(a):
    return float(a.sum())


def test_task_arguments_are_unpinned_when_the_task_ends(ray, arca_bin):
    # A worker keeps no pin on a stored argument once its task is done.
    a = ray.put(np.ones(1 << 18))  # 2 MiB: stored, not inline
    assert ray.get(total.remote(a), timeout=30) == float(1 << 18)
    session = arca._runtime._state.session_dir

    def worker_pins():
        out = subprocess.run(
            [arca_bin, "memory", "--json", "--temp-dir", session],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        clients = json.loads(out.stdout)["clients"]
        return sum(c["pinned"] for c in clients if c["pid"] != os.getpid())

    wait_for(lambda: worker_pins() == 0, what="the worker to release its argument")
