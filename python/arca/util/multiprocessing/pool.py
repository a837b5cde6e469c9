"""``Pool`` over a set of actors: each actor is one "process" (it runs the
initializer once), and work goes to them in batches of ``chunksize`` items,
in turn."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import TimeoutError
from typing import Any

from ... import _runtime
from ...actor import ActorClass, kill

__all__ = ["AsyncResult", "Pool"]


class _ItemFailed:
    """An item's exception, returned in its place so that the rest of its
    batch is not lost; raised again where the result is read."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self):
        return (_ItemFailed, (self.error,))


class _PoolActor:
    def __init__(self, initializer: Callable | None, initargs: tuple | None) -> None:
        if initializer is not None:
            initializer(*(initargs or ()))

    def ready(self) -> bool:
        return True

    def run_batch(self, func: Callable, batch: list[tuple[tuple, dict | None]]) -> list:
        out = []
        for args, kwargs in batch:
            try:
                out.append(func(*args, **(kwargs or {})))
            except Exception as e:  # noqa: BLE001 - the item's failure is its result
                out.append(_ItemFailed(e))
        return out


def _values(batch_results: list) -> list:
    for r in batch_results:
        if type(r) is _ItemFailed:
            raise r.error
    return batch_results


class AsyncResult:
    """What the ``*_async`` methods return: ``get``, ``wait``, ``ready``,
    ``successful``, as ``multiprocessing.pool.AsyncResult``."""

    def __init__(
        self,
        refs: list,
        single: bool,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> None:
        self._refs = refs
        self._single = single
        self._result: list | None = None
        self._error: BaseException | None = None
        if callback is not None or error_callback is not None:
            # As the standard library does, from a thread once all are done.
            def notify() -> None:
                try:
                    value = self.get()
                except Exception as e:  # noqa: BLE001 - handed to error_callback
                    if error_callback is not None:
                        error_callback(e)
                    return
                if callback is not None:
                    callback(value)

            threading.Thread(target=notify, name="arca-pool-callback", daemon=True).start()

    def _collect(self) -> None:
        if self._result is not None or self._error is not None:
            return
        try:
            out: list = []
            for batch in _runtime.get(self._refs):
                out.extend(_values(batch))
            self._result = out
        except Exception as e:  # noqa: BLE001 - kept for get and successful
            self._error = e

    def wait(self, timeout: float | None = None) -> None:
        """Waits until the result is ready or ``timeout`` seconds pass."""
        if self._refs:
            _runtime.wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def ready(self) -> bool:
        if not self._refs:
            return True
        done, _ = _runtime.wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(done) == len(self._refs)

    def get(self, timeout: float | None = None) -> Any:
        """The result (the list, or ``apply``'s value); raises the first
        item's exception, or ``multiprocessing.TimeoutError``."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError("Result not ready.")
        self._collect()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result[0] if self._single else self._result

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        self._collect()
        return self._error is None


class Pool:
    """``Pool(processes=None, initializer=None, initargs=None, ...,
    ray_remote_args=None)``: ``processes`` actors (default: the cluster's
    CPUs), each given ``ray_remote_args`` (``num_cpus`` and so on)."""

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable | None = None,
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
        ray_remote_args: dict | None = None,
    ) -> None:
        if ray_address is not None and not _runtime.is_initialized():
            _runtime.init(address=ray_address)
        _runtime.ensure_init()
        if processes is None:
            processes = max(1, int(_runtime.cluster_resources().get("CPU", 1)))
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        self._processes = processes
        cls = ActorClass(_PoolActor, {}).options(**(ray_remote_args or {}))
        args = tuple(initargs) if initargs is not None else None
        self._actors = [cls.remote(initializer, args) for _ in range(processes)]
        self._turn = itertools.count()
        self._closed = False
        self._outstanding: list = []

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _submit(self, func: Callable, batch: list) -> Any:
        actor = self._actors[next(self._turn) % len(self._actors)]
        ref = actor.run_batch.remote(func, batch)
        self._outstanding.append(ref)
        if len(self._outstanding) > 4096:
            _, self._outstanding = _runtime.wait(
                self._outstanding, num_returns=len(self._outstanding), timeout=0
            )
        return ref

    def _batches(
        self, func: Callable, items: list[tuple[tuple, dict | None]], chunksize: int | None
    ) -> list:
        if chunksize is None:
            chunksize = max(1, math.ceil(len(items) / (len(self._actors) * 4)))
        elif chunksize < 1:
            raise ValueError("chunksize must be 1 or more")
        return [
            self._submit(func, items[i : i + chunksize]) for i in range(0, len(items), chunksize)
        ]

    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable,
        args: tuple = (),
        kwds: dict | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> AsyncResult:
        self._check_running()
        ref = self._submit(func, [(tuple(args), kwds)])
        return AsyncResult([ref], True, callback, error_callback)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return self.map_async(func, iterable, chunksize).get()

    def map_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> AsyncResult:
        items = [((x,), None) for x in iterable]
        return self._map_async(func, items, chunksize, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> AsyncResult:
        items = [(tuple(args), None) for args in iterable]
        return self._map_async(func, items, chunksize, callback, error_callback)

    def _map_async(
        self,
        func: Callable,
        items: list,
        chunksize: int | None,
        callback: Callable | None,
        error_callback: Callable | None,
    ) -> AsyncResult:
        self._check_running()
        return AsyncResult(self._batches(func, items, chunksize), False, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """Results in order, each as soon as it and those before it are done."""
        self._check_running()
        refs = self._batches(func, [((x,), None) for x in iterable], chunksize)

        def results() -> Iterator:
            for ref in refs:
                yield from _values(_runtime.get(ref))

        return results()

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """Results as they are done, in any order."""
        self._check_running()
        refs = self._batches(func, [((x,), None) for x in iterable], chunksize)

        def results() -> Iterator:
            pending = list(refs)
            while pending:
                done, pending = _runtime.wait(pending, num_returns=1)
                yield from _values(_runtime.get(done[0]))

        return results()

    def close(self) -> None:
        """No more work may be submitted; what was submitted still runs."""
        self._closed = True

    def terminate(self) -> None:
        """Ends the pool's actors now; work not done is lost."""
        self._closed = True
        for a in self._actors:
            kill(a)
        self._actors = []
        self._outstanding = []

    def join(self) -> None:
        """Waits for the submitted work, then ends the actors (after close)."""
        if not self._closed:
            raise ValueError("Pool is still running")
        if self._outstanding:
            _runtime.wait(self._outstanding, num_returns=len(self._outstanding))
        self.terminate()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __reduce__(self):
        raise ValueError("Pool objects cannot be passed to tasks or actors")
