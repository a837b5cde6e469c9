"""Generator tasks: a remote function (or actor method) that ``yield``s.

Its ``.remote()`` returns an ``ObjectRefGenerator``: iterating it gives one
ObjectRef per value yielded, in order. The worker puts each value in the
store as it is yielded (so the task holds one value at a time, as in Ray)
and returns the list of their refs (``DynamicObjectRefGenerator``, the value
of a ``num_returns="dynamic"`` call). Unlike Ray's streaming, the refs reach
the caller when the task ends, not one by one. An exception in the
generator becomes the last ref: ``get`` of it raises, as in Ray.
"""

from __future__ import annotations

import inspect
import traceback
from typing import Any

# `num_returns` values that ask for a generator task.
STREAMING = "streaming"
DYNAMIC = "dynamic"


def is_generator(f: Any) -> bool:
    return inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f)


def generator_mode(num_returns: Any, function: Any) -> str | None:
    """``"streaming"`` or ``"dynamic"`` for a call that makes a generator
    task (a generator function's default is streaming, as in Ray)."""
    if num_returns in (STREAMING, DYNAMIC):
        return num_returns
    if num_returns is None and is_generator(function):
        return STREAMING
    return None


class DynamicObjectRefGenerator:
    """The refs of the values a generator task yielded, in order."""

    def __init__(self, refs: list) -> None:
        self._refs = refs

    def __iter__(self):
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self):
        return (DynamicObjectRefGenerator, (self._refs,))


class ObjectRefGenerator:
    """What ``.remote()`` of a generator function returns: iterate it (or
    ``next(gen)``, ``async for``) for one ObjectRef per value yielded."""

    def __init__(self, ref: Any) -> None:
        self._ref = ref
        self._refs: list | None = None
        self._next = 0

    def _load(self) -> list:
        if self._refs is None:
            from . import _runtime

            self._refs = list(_runtime.get(self._ref))
        return self._refs

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> Any:
        refs = self._load()
        if self._next >= len(refs):
            raise StopIteration
        self._next += 1
        return refs[self._next - 1]

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> Any:
        if self._refs is None:
            self._refs = list(await self._ref)
        try:
            return self.__next__()
        except StopIteration:
            raise StopAsyncIteration from None

    def completed(self) -> Any:
        """The ref that is ready once the task has ended."""
        return self._ref

    def is_finished(self) -> bool:
        return self._refs is not None and self._next >= len(self._refs)

    def __reduce__(self):
        raise TypeError("ObjectRefGenerator cannot be passed to tasks or actors, as in Ray")

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._ref.hex()})"


def _raise(error: BaseException) -> Any:
    """Unpickled from the ref standing for a generator's exception: reading
    it raises."""
    as_cause = getattr(error, "as_instanceof_cause", None)
    raise as_cause() if as_cause is not None else error


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self):
        return (_raise, (self.error,))


def _failed(function: str, e: BaseException) -> _Raised:
    from .exceptions import RayTaskError

    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    cause: BaseException | None = e
    try:
        import cloudpickle

        cloudpickle.dumps(e)
    except Exception:
        cause = None
    return _Raised(RayTaskError(function, tb, cause))


def collect(function: str, gen: Any) -> DynamicObjectRefGenerator:
    """Runs a generator to its end in the worker, putting each value."""
    from . import _runtime

    if not hasattr(gen, "__next__"):
        raise TypeError(
            f"{function} was called as a generator task (num_returns='streaming' or "
            f"'dynamic') but returned {type(gen).__name__}, not a generator"
        )
    refs = []
    try:
        for value in gen:
            refs.append(_runtime.put(value))
    except Exception as e:  # noqa: BLE001 - becomes the last ref, as in Ray
        refs.append(_runtime.put(_failed(function, e)))
    return DynamicObjectRefGenerator(refs)


async def collect_async(function: str, gen: Any) -> DynamicObjectRefGenerator:
    """``collect`` for an async generator (an async actor's method)."""
    from . import _runtime

    if not hasattr(gen, "__anext__"):
        return collect(function, gen)
    refs = []
    try:
        async for value in gen:
            refs.append(_runtime.put(value))
    except Exception as e:  # noqa: BLE001
        refs.append(_runtime.put(_failed(function, e)))
    return DynamicObjectRefGenerator(refs)
