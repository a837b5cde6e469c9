"""Generator tasks: a remote function or actor method that yields."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import arca
from arca import exceptions as ex


@arca.remote
def numbers(n):
    for i in range(n):
        yield i * 10


@arca.remote(num_returns="dynamic")
def dynamic(n):
    yield from range(n)


@arca.remote(num_returns=2)
def two():
    yield 1
    yield 2


@arca.remote
def fails_after_one():
    yield 1
    raise ValueError("bad")


@arca.remote
def arrays(n):
    for i in range(n):
        yield np.full(1 << 16, i, dtype=np.int64)


def test_a_generator_function_returns_an_object_ref_generator(ray):
    gen = numbers.remote(3)
    assert type(gen).__name__ == "ObjectRefGenerator"
    assert [ray.get(r, timeout=30) for r in gen] == [0, 10, 20]
    assert gen.is_finished()
    with pytest.raises(StopIteration):
        next(gen)
    assert list(numbers.remote(0)) == []
    # Each value is its own object, read zero-copy like any other.
    got = [ray.get(r, timeout=30) for r in arrays.remote(3)]
    assert [int(a[0]) for a in got] == [0, 1, 2] and not got[0].flags.writeable


def test_dynamic_and_fixed_num_returns(ray):
    ref = dynamic.remote(4)
    assert [ray.get(r, timeout=30) for r in ray.get(ref, timeout=30)] == [0, 1, 2, 3]
    assert ray.get(list(two.remote()), timeout=30) == [1, 2]
    with pytest.raises(ValueError, match="num_returns"):
        numbers.options(num_returns="sometimes")


def test_a_generators_exception_is_its_last_ref(ray):
    refs = list(fails_after_one.remote())
    assert len(refs) == 2
    assert ray.get(refs[0], timeout=30) == 1
    with pytest.raises(ValueError, match="bad") as e:
        ray.get(refs[1], timeout=30)
    assert isinstance(e.value, ex.RayTaskError)


def test_async_iteration(ray):
    async def main():
        return [await r async for r in numbers.remote(3)]

    assert asyncio.run(main()) == [0, 10, 20]


@arca.remote
class Counter:
    def count(self, n):
        yield from range(n)

    @arca.method(num_returns=2)
    def pair(self):
        yield "a"
        yield "b"


@arca.remote
class AsyncCounter:
    async def count(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i


def test_actor_methods_that_yield(ray):
    c = Counter.remote()
    assert [ray.get(r, timeout=30) for r in c.count.remote(3)] == [0, 1, 2]
    assert ray.get(list(c.pair.remote()), timeout=30) == ["a", "b"]
    a = AsyncCounter.remote()
    assert [ray.get(r, timeout=30) for r in a.count.remote(4)] == [0, 1, 2, 3]


def test_a_generator_cannot_be_passed_on(ray):
    with pytest.raises(TypeError, match="cannot be passed"):
        ray.put(numbers.remote(1))
