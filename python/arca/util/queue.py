"""``Queue``: a first-in first-out queue any task, actor or driver holding it
can use, kept by an async actor, as Ray's ``ray.util.queue.Queue``."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterable
from typing import Any

from .. import _runtime
from ..actor import ActorClass, kill

__all__ = ["Empty", "Full", "Queue"]


class Empty(queue.Empty):
    """Raised by a get that finds the queue empty (or times out)."""


class Full(queue.Full):
    """Raised by a put that finds the queue full (or times out)."""


def _plain(e: Empty | Full) -> Empty | Full:
    """The actor's Empty or Full as Ray's client raises it: itself, not
    wrapped in the task error that carried it here."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, (Empty, Full)) else e


def _result(ref: Any) -> Any:
    try:
        return _runtime.get(ref)
    except (Empty, Full) as e:
        raise _plain(e) from None


async def _result_async(ref: Any) -> Any:
    try:
        return await ref
    except (Empty, Full) as e:
        raise _plain(e) from None


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """``Queue(maxsize=0)``: unbounded with ``maxsize`` <= 0. ``actor_options``
    go to the actor that holds the items (``num_cpus``, ``name``, ...).
    The queue pickles as a handle to that actor, so tasks can share it."""

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        self.maxsize = maxsize
        self.actor = ActorClass(_QueueActor, {}).options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items are in the queue now."""
        return _runtime.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return _runtime.get(self.actor.empty.remote())

    def full(self) -> bool:
        return _runtime.get(self.actor.full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Adds ``item``; with ``block``, waits for room (up to ``timeout``
        seconds, then raises ``Full``), else raises ``Full`` at once."""
        if not block:
            _result(self.actor.put_nowait.remote(item))
            return
        _check_timeout(timeout)
        _result(self.actor.put.remote(item, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not block:
            await _result_async(self.actor.put_nowait.remote(item))
            return
        _check_timeout(timeout)
        await _result_async(self.actor.put.remote(item, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Takes the oldest item; with ``block``, waits for one (up to
        ``timeout`` seconds, then raises ``Empty``), else raises ``Empty``."""
        if not block:
            return _result(self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return _result(self.actor.get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            return await _result_async(self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return await _result_async(self.actor.get.remote(timeout))

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Adds all of ``items`` at once, or raises ``Full`` and adds none."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _result(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Takes ``num_items`` items at once, or raises ``Empty`` and takes none."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _result(self.actor.get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Ends the queue's actor (its items are lost). Without ``force``,
        calls already made to it finish first, for up to ``grace_period_s``."""
        if self.actor is None:
            return
        if force:
            kill(self.actor, no_restart=True)
        else:
            done = self.actor.__ray_terminate__.remote()
            _, not_done = _runtime.wait([done], timeout=grace_period_s)
            if not_done:
                kill(self.actor, no_restart=True)
        self.actor = None


class _QueueActor:
    """Holds the items: an async actor, so a blocked get or put waits in the
    event loop while other calls go on."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            raise Full from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise Empty from None

    def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full from None

    def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.qsize() > self.maxsize:
            raise Full(
                f"Cannot add {len(items)} items to queue of size {self.qsize()} "
                f"and maxsize {self.maxsize}."
            )
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty from None

    def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]
