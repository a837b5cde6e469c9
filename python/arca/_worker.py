"""A worker process: ``python -m arca._worker``, started by the node in the
driver's interpreter, working directory and ``sys.path``.

It runs tasks one at a time on the main thread (so a cancel can interrupt
one with ``KeyboardInterrupt``), or for an actor with ``max_concurrency`` > 1
on that many threads, each taking the next call itself (threaded actor), or
on one asyncio event loop on the main thread, whose selector takes the calls
(async actor).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import selectors
import signal
import sys
import threading
import traceback
import types
from collections.abc import Container
from typing import Any

from . import _generator, _native, _runtime
from ._runtime_env import Applied
from ._serialization import (
    _CallGroup,
    _EnvVars,
    _Generate,
    _Groups,
    _Kwargs,
    deserialize,
    serialize,
)
from .actor import TERMINATE, exit_actor

NORMAL, ACTOR_CREATION, ACTOR_METHOD = 0, 1, 2
_TASK_FAILED, _TASK_CANCELLED = 0, 1


class RetryPolicy:
    """The last argument of a task with ``retry_exceptions``: which exceptions
    are retried (``True``: any), up to the task's ``max_retries``."""

    __slots__ = ("exceptions",)

    def __init__(self, exceptions: Any):
        self.exceptions = exceptions

    def __reduce__(self):
        return (RetryPolicy, (self.exceptions,))

    def matches(self, e: BaseException) -> bool:
        if self.exceptions is True:
            return isinstance(e, Exception)
        if isinstance(self.exceptions, (list, tuple)):
            return isinstance(e, tuple(self.exceptions))
        return False


def _call(fn: Any, args: list, kwargs: dict, policy: RetryPolicy | None, max_retries: int) -> Any:
    """Calls `fn`, again while it raises what `policy` retries (Ray's
    ``retry_exceptions``), up to `max_retries` more times."""
    retries = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if policy is None or not policy.matches(e) or retries >= max_retries:
                raise
            retries += 1


async def _call_async(
    fn: Any, args: list, kwargs: dict, policy: RetryPolicy, max_retries: int
) -> Any:
    """`_call` for an async actor method."""
    retries = 0
    while True:
        try:
            return await fn(*args, **kwargs)
        except Exception as e:
            if not policy.matches(e) or retries >= max_retries:
                raise
            retries += 1


class _Cancelled(KeyboardInterrupt):
    pass


class _Skipped(_Cancelled):
    """Cancelled before it started: reported as such, not as an interrupt."""


# The task the main thread runs now, while its function runs (only then
# may a cancel interrupt it: never while its result is being reported).
_interruptible: bytes | None = None


def _on_cancel(signum: int, frame: Any) -> None:
    # SIGUSR1 from the node: a task was cancelled (the cancel itself waits
    # in the node's connection; task_cancelled reads it). A signal that
    # comes before the function starts is caught by the check in `run`.
    task = _interruptible
    if task is not None and _native.task_cancelled(task):
        raise _Cancelled()


class Worker:
    def __init__(self) -> None:
        self.functions: dict[Any, Any] = {}
        self.instance: Any = None
        self.class_name = ""
        # A threaded actor's max_concurrency; its threads started and waiting.
        self.threads = 1
        self.started = 1
        self.idle = 0
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.slots: asyncio.Semaphore | None = None
        self.pending: set[asyncio.Future] = set()
        # Concurrency groups: each method's group, and each group's
        # semaphore (async actor) or slots (threaded actor).
        self.method_groups: dict[str, str | None] = {}
        self.group_slots: dict[str | None, asyncio.Semaphore] | None = None
        self.thread_groups: _ThreadGroups | None = None

    def load(self, ref: Any) -> Any:
        f = self.functions.get(ref)
        if f is None:
            f = _runtime.get(ref)
            self.functions[ref] = f
        return f

    def serve(self) -> None:
        while True:
            if self.loop is not None:
                # An async actor: its calls come in through the loop's selector.
                self.loop.run_forever()
            if self.threads > 1:
                self.serve_calls()
            task = _native.next_task()
            self.run(task, interruptible=True)
            # Its arguments pin their objects until dropped.
            del task

    def serve_calls(self) -> None:
        """A threaded actor's thread: waits for a call and runs it, until the
        node goes (no hand-off from a reading thread to a pool). A thread
        that takes a call while none other waits starts one more, up to
        max_concurrency."""
        while True:
            with self.lock:
                self.idle += 1
            try:
                task = _native.next_task(arrived=True)
            except RuntimeError:
                if threading.current_thread() is threading.main_thread():
                    raise
                return
            with self.lock:
                self.idle -= 1
                grow = self.idle == 0 and self.started < self.threads
                if grow:
                    self.started += 1
            if grow:
                name = f"arca-actor-{self.started - 1}"
                threading.Thread(target=self.serve_calls, name=name, daemon=True).start()
            if self.thread_groups is None:
                self.run(task)
            else:
                self.run_in_group(task)
            del task

    def group_of(self, task: tuple) -> str | None:
        """The concurrency group a call runs in: the one its caller chose
        (``.options``), else its method's (``None``: the default group)."""
        args = task[4]
        if args:
            last = args[-1]
            data, buffers = last[1], last[2]
            try:
                small = not buffers and memoryview(data).nbytes < 256
            except TypeError:
                small = False
            if small and b"_CallGroup" in bytes(data):
                marker = deserialize(*last)
                if type(marker) is _CallGroup:
                    return marker.name
        return self.method_groups.get(task[2].rsplit("::", 1)[-1])

    def checked_group(self, task: tuple, groups: Container) -> tuple[bool, str | None]:
        """``(True, group)`` for a call in one of ``groups``; else the call
        has failed (reported here) and ``(False, None)``."""
        try:
            group = self.group_of(task)
        except BaseException as e:  # noqa: BLE001 - reported as the call's failure
            self.report_error(task, e)
            return False, None
        if group not in groups:
            self.report_error(
                task, ValueError(f"concurrency group {group!r} is not defined by this actor")
            )
            return False, None
        return True, group

    def run_in_group(self, task: tuple) -> None:
        """A threaded actor's call under its group's limit: run now, or left
        for the thread that ends one of that group's calls."""
        assert self.thread_groups is not None
        known, group = self.checked_group(task, self.thread_groups.free)
        if not known or not self.thread_groups.admit(group, task):
            return
        while task is not None:
            self.run(task)
            task = self.thread_groups.done(group)

    def start_async(self, tasks: list[tuple]) -> None:
        # In the event loop. The loop keeps only weak references to tasks.
        assert self.loop is not None
        for task in tasks:
            t = self.loop.create_task(self.run_async(task))
            self.pending.add(t)
            t.add_done_callback(self.pending.discard)

    def call(self, task: tuple) -> Any:
        """Runs the task's function; returns its result (for an async
        actor's method, a coroutine that makes it)."""
        task_id, kind, function, function_ref, args = task[:5]
        max_retries, resources = task[10], task[11]
        values, kwargs, x = _unpack(args)
        _runtime._current_task.set((task_id, resources))
        if kind == NORMAL:
            fn = self.load(function_ref)
            fn = getattr(fn, "_function", fn)
            if x.env:
                with Applied(x.env):
                    result = _call(fn, values, kwargs, x.policy, max_retries)
            else:
                result = _call(fn, values, kwargs, x.policy, max_retries)
            return _generator.collect(function, result) if x.generate else result
        if kind == ACTOR_CREATION:
            self.create_actor(task, values, kwargs, x)
            return None
        name = function.rsplit("::", 1)[-1]
        if name == TERMINATE:
            exit_actor()
        method = getattr(self.instance, name)
        if x.policy is not None and asyncio.iscoroutinefunction(method):
            return _call_async(method, values, kwargs, x.policy, max_retries)
        result = _call(method, values, kwargs, x.policy, max_retries)
        if not x.generate:
            return result
        if hasattr(result, "__anext__"):
            # A coroutine: the async actor's loop runs it.
            return _generator.collect_async(function, result)
        return _generator.collect(function, result)

    def create_actor(self, task: tuple, values: list, kwargs: dict, x: _Extras) -> None:
        """Runs the constructor; sets the worker up as a sync, threaded or
        async actor, with its concurrency groups."""
        _, _, _, function_ref, _, _, _, actor_id, attempt, max_concurrency, _, resources = task
        if x.env:
            # The worker is the actor's for life.
            os.environ.update(x.env)
        cls = self.load(function_ref)
        cls = getattr(cls, "_cls", cls)
        st = _runtime._state
        st.current_actor_id = actor_id
        st.actor_resources = _runtime._assigned(resources)
        # The node counts a restarted actor's constructor runs on.
        st.actor_reconstructed = attempt > 1
        from .actor import _is_async, _methods, _retries

        st.actor_handle = (
            actor_id,
            f"{cls.__module__}.{cls.__qualname__}",
            _methods(cls),
            _retries(cls, None),
        )
        self.class_name = cls.__name__
        self.instance = cls(*values, **kwargs)
        if max_concurrency <= 1:
            return
        groups = x.groups
        if _is_async(cls):
            self.start_loop(max_concurrency)
            if groups is not None:
                self.group_slots = {
                    g: asyncio.Semaphore(n)
                    for g, n in [(None, groups.default), *groups.limits.items()]
                }
        else:
            self.threads = max_concurrency
            if groups is not None:
                self.thread_groups = _ThreadGroups(groups.limits, groups.default)
        if groups is not None:
            self.method_groups = {
                name: getattr(f, "__ray_concurrency_group__", None)
                for name, f in inspect.getmembers(cls, inspect.isfunction)
            }

    def start_loop(self, max_concurrency: int) -> None:
        """The async actor's event loop, run by the main thread once the
        constructor is reported (`serve`)."""
        self.loop = asyncio.SelectorEventLoop(_TaskSelector(self))
        asyncio.set_event_loop(self.loop)
        self.slots = asyncio.Semaphore(max_concurrency)

    def run(self, task: tuple, interruptible: bool = False) -> None:
        global _interruptible
        try:
            try:
                if interruptible and task[1] == NORMAL:
                    _interruptible = task[0]
                if task[1] != ACTOR_CREATION and _native.task_cancelled(task[0]):
                    # Cancelled before it started (an actor call waits here
                    # behind the one running).
                    raise _Skipped()
                result = self.call(task)
            finally:
                _interruptible = None
                _runtime._current_task.set(None)
        except BaseException as e:  # noqa: BLE001 - a task's failure of any kind is reported
            self.report_error(task, e)
            return
        self.report(task, result)

    async def run_async(self, task: tuple) -> None:
        slots = self.slots
        if self.group_slots is not None:
            known, group = self.checked_group(task, self.group_slots)
            if not known:
                return
            slots = self.group_slots[group]
        assert slots is not None
        async with slots:
            try:
                if _native.task_cancelled(task[0]):
                    raise _Skipped()
                result = self.call(task)
                if asyncio.iscoroutine(result):
                    result = await result
            except BaseException as e:  # noqa: BLE001
                self.report_error(task, e)
                return
            self.report(task, result)

    def report(self, task: tuple, result: Any) -> None:
        task_id, kind, function, _, _, returns, *_ = task
        n = len(returns)
        if kind == ACTOR_CREATION:
            values = [None]
        elif n == 1 and not isinstance(result, types.GeneratorType):
            values = [result]
        else:
            try:
                values = list(result)
            except TypeError:
                values = None
            if values is None or len(values) != n:
                got = "a value" if values is None else f"{len(values)} values"
                e = ValueError(f"Task returned {got}, but num_returns={n}.")
                self.report_error(task, e)
                return
        try:
            out = [(rid, serialize(v)) for rid, v in zip(returns, values, strict=True)]
        except Exception as e:
            self.report_error(task, e)
            return
        _native.task_done(task_id, out)

    def report_error(self, task: tuple, e: BaseException) -> None:
        task_id, kind, function, _, _, returns, *_ = task
        name = function.rsplit("::", 1)[-1] if "::" in function else function.rsplit(".", 1)[-1]
        if isinstance(e, _Skipped):
            info = (-1, _TASK_CANCELLED, function, f"{function} was cancelled before it ran")
            info += ("", b"", "", os.getpid())
            _native.task_done(task_id, [(rid, info) for rid in returns])
            return
        if isinstance(e, _Cancelled):
            e = KeyboardInterrupt()
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        try:
            import cloudpickle

            cause = cloudpickle.dumps(e)
        except Exception:
            cause = b""
        cls = type(e)
        info = (
            -1,
            _TASK_FAILED,
            function,
            f"{cls.__name__}: {e}",
            f"Traceback (most recent call last) in {name}:\n{tb}",
            cause,
            f"{cls.__module__}.{cls.__qualname__}",
            os.getpid(),
        )
        _native.task_done(task_id, [(rid, info) for rid in returns])


class _Extras:
    """What a task's trailing marker arguments ask for (see
    ``remote_function.encode_args``)."""

    __slots__ = ("env", "generate", "groups", "policy")

    def __init__(self) -> None:
        self.groups: _Groups | None = None
        self.generate = False
        self.env: dict[str, str] | None = None
        self.policy: RetryPolicy | None = None


_NO_EXTRAS = _Extras()


def _unpack(args: list) -> tuple[list, dict, _Extras]:
    """A task's positional values, keyword values and markers."""
    values = [deserialize(*a) for a in args]
    if not values or type(values[-1]) not in _MARKERS:
        return values, {}, _NO_EXTRAS
    x = _Extras()
    if values and type(values[-1]) in (_Groups, _CallGroup):
        marker = values.pop()
        x.groups = marker if type(marker) is _Groups else None
    if values and type(values[-1]) is _Generate:
        values.pop()
        x.generate = True
    if values and type(values[-1]) is _EnvVars:
        x.env = values.pop().vars
    if values and type(values[-1]) is RetryPolicy:
        x.policy = values.pop()
    kwargs = {}
    if values and type(values[-1]) is _Kwargs:
        names = values.pop().names
        kwargs = dict(zip(names, values[len(values) - len(names) :], strict=True))
        del values[len(values) - len(names) :]
    return values, kwargs, x


_MARKERS = frozenset({_Groups, _CallGroup, _Generate, _EnvVars, RetryPolicy, _Kwargs})


class _ThreadGroups:
    """A threaded actor's concurrency groups: free slots per group, and the
    calls that wait for one (a thread that cannot run its call leaves it
    here and takes the next; the thread that ends a call of that group runs
    it)."""

    def __init__(self, limits: dict[str, int], default: int) -> None:
        self.free: dict[str | None, int] = {None: default, **limits}
        self.waiting: dict[str | None, collections.deque] = {
            g: collections.deque() for g in self.free
        }
        self.lock = threading.Lock()

    def admit(self, group: str | None, task: tuple) -> bool:
        with self.lock:
            if self.free[group] > 0:
                self.free[group] -= 1
                return True
            self.waiting[group].append(task)
            return False

    def done(self, group: str | None) -> tuple | None:
        """The next call waiting in ``group`` (its slot passes to it), or
        ``None`` (the slot is free again)."""
        with self.lock:
            if self.waiting[group]:
                return self.waiting[group].popleft()
            self.free[group] += 1
            return None


class _TaskSelector(selectors.EpollSelector):
    """An async actor's event loop selector: waits for the worker's next
    calls and the loop's own events at once (in the extension, without the
    GIL, spinning first while calls come quickly) and starts the calls that
    came, so they run on this thread with no hand-off from another."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def select(self, timeout: float | None = None) -> list:
        tasks = _native.next_tasks(256, timeout, self)
        if tasks:
            self.worker.start_async(tasks)
        return super().select(0)


def main() -> None:
    # A terminal's Ctrl-C is the driver's to handle; a cancel arrives as SIGUSR1.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_cancel)
    _runtime.connect_worker()
    try:
        Worker().serve()
    except RuntimeError:
        # The node closed the connection.
        sys.exit(0)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's, so that the
    # classes tasks pickle (RetryPolicy, _Kwargs) are the same ones.
    from arca._worker import main as _main

    _main()
