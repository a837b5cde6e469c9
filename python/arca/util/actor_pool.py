"""``ActorPool``: spreads calls over a fixed set of actors, as Ray's
``ray.util.ActorPool`` does (same methods, same errors)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import _runtime

__all__ = ["ActorPool"]

_TIMED_OUT = "Timed out waiting for result"


class ActorPool:
    """Runs ``fn(actor, value)`` on whichever actor is free.

    ``fn`` calls one method of the actor and returns its ObjectRef (or a
    list of them, for ``num_returns`` > 1)::

        pool = ActorPool([A.remote(), A.remote()])
        list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))
    """

    def __init__(self, actors: list):
        self._idle: list = list(actors)
        # Submitted calls: index → (future, actor), in submission order.
        self._running: dict[int, tuple[Any, Any]] = {}
        # The key `wait` sees for each call (its last ref) → its index.
        self._index_of: dict[Any, int] = {}
        self._next_index = 0
        self._next_return = 0
        self._pending: deque[tuple[Callable, Any]] = deque()

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """The results of ``fn`` over ``values``, in order. Results of calls
        submitted before and not yet taken are dropped."""
        self._drop_unreturned()
        for v in values:
            self.submit(fn, v)
        return self._results(self.get_next)

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """Like ``map``, but each result as soon as it is ready."""
        self._drop_unreturned()
        for v in values:
            self.submit(fn, v)
        return self._results(self.get_next_unordered)

    def _results(self, take: Callable[[], Any]) -> Iterator:
        while self.has_next():
            yield take()

    def _drop_unreturned(self) -> None:
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Calls ``fn(actor, value)`` on an idle actor, or once one is free."""
        if not self._idle:
            self._pending.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        i = self._next_index
        self._next_index += 1
        self._running[i] = (future, actor)
        self._index_of[_key(future)] = i

    def has_next(self) -> bool:
        """Whether a submitted call's result has not been taken yet."""
        return bool(self._running)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order. With ``timeout``, raises
        ``TimeoutError`` if it is not ready by then; with
        ``ignore_if_timedout`` that call's result is dropped too."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_index or self._next_return not in self._running:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        i = self._next_return
        future, _ = self._running[i]
        if timeout is not None:
            ready, _ = _runtime.wait([_key(future)], timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMED_OUT)
                self._finish(i)
                self._next_return += 1
                raise TimeoutError(f"{_TIMED_OUT}. The task {future} has been ignored.")
        self._finish(i)
        self._next_return += 1
        return _runtime.get(future)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """The result of whichever call is done first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        keys = list(self._index_of)
        ready, _ = _runtime.wait(keys, num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                raise TimeoutError(f"{_TIMED_OUT}. The task {keys[0]} has been ignored.")
            raise TimeoutError(_TIMED_OUT)
        i = self._index_of[ready[0]]
        future, _ = self._running[i]
        self._finish(i)
        self._next_return = max(self._next_return, i + 1)
        return _runtime.get(future)

    def _finish(self, i: int) -> None:
        future, actor = self._running.pop(i)
        del self._index_of[_key(future)]
        self._return_actor(actor)

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.popleft())

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission waits for one."""
        return bool(self._idle) and not self._pending

    def pop_idle(self) -> Any:
        """Takes an idle actor out of the pool (``None`` if none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Adds an actor to the pool (it takes a waiting submission at once)."""
        busy = [a for _, a in self._running.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)


def _key(future: Any) -> Any:
    # A call with several returns is done when its last is.
    return future[-1] if isinstance(future, (list, tuple)) else future
