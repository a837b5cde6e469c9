"""Direct actor calls (docs/tasks.md): once an actor is alive, its caller
sends calls straight to the actor's worker and owns the results. These
tests check that calls do go direct, and that what the node used to do for
them still happens: order, results passed on, large results, cancels,
waits, and a worker that dies."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from conftest import wait_for

import arca
from arca import _native
from arca import exceptions as ex


@arca.remote
class Box:
    def __init__(self):
        self.log = []

    def add(self, x):
        self.log.append(x)
        return x

    def get_log(self):
        return self.log

    def value(self, x=1):
        return x

    def big(self, n):
        return np.arange(n, dtype=np.int64)

    def refs(self):
        return [arca.put(7), arca.put(8)]

    def wait_file(self, path):
        wait_for(lambda: os.path.exists(path), timeout=30, what=path)
        return "opened"

    def pid(self):
        return os.getpid()


@arca.remote
def plus_one(x):
    return x + 1


@arca.remote
def first_of(xs):
    return arca.get(xs[0]) + 1


@arca.remote
def call_through(box, x):
    return arca.get(box.value.remote(x))


def node_ids() -> set[str]:
    return {o[0] for o in _native.memory()}


def warm(box) -> None:
    """The first call goes through the node (the actor is not alive yet);
    the calls after its answer go direct."""
    arca.get(box.value.remote(), timeout=30)


def test_results_of_direct_calls_stay_with_the_caller(ray):
    b = Box.remote()
    warm(b)
    r = b.value.remote(5)
    assert arca.get(r, timeout=30) == 5
    # The node never heard of it: the worker answered this process itself.
    assert r.hex() not in node_ids()
    # Passed on, it is handed to the node.
    assert arca.get(plus_one.remote(r), timeout=30) == 6
    assert r.hex() in node_ids()


def test_calls_keep_their_order_across_the_switch(ray):
    # Calls sent before the actor is alive go through the node; the switch
    # to direct calls waits until they are done, so the log is in order.
    b = Box.remote()
    for i in range(300):
        b.add.remote(i)
    assert arca.get(b.get_log.remote(), timeout=60) == list(range(300))
    for i in range(300, 400):
        b.add.remote(i)
    assert arca.get(b.get_log.remote(), timeout=60) == list(range(400))


def test_a_pending_result_passed_on_is_promised_to_the_node(ray, tmp_path):
    b = Box.remote()
    warm(b)
    gate = str(tmp_path / "gate")
    pending = b.wait_file.remote(gate)
    # Passed to a task, to another actor (directly) and nested in a value
    # while the call still runs.
    t = plus_one.remote(b.value.remote(41))
    other = Box.remote()
    warm(other)
    echoed = other.value.remote(pending)
    nested = first_of.remote([pending])
    open(gate, "w").close()
    assert arca.get(echoed, timeout=30) == "opened"
    assert arca.get(t, timeout=30) == 42
    with pytest.raises(ex.RayTaskError):
        # "opened" + 1
        arca.get(nested, timeout=30)
    assert arca.get(pending, timeout=30) == "opened"


def test_fresh_objects_passed_to_direct_calls_are_at_the_node_first(ray):
    # A put (or a task's result to be) goes to the node on this process's
    # socket, the call to the worker on another: the worker, which reads
    # the argument from the node, must find it there.
    b = Box.remote()
    warm(b)
    puts = [b.value.remote(arca.put(i)) for i in range(300)]
    tasks = [b.value.remote(plus_one.remote(i)) for i in range(100)]
    assert arca.get(puts, timeout=60) == list(range(300))
    assert arca.get(tasks, timeout=60) == list(range(1, 101))


def test_large_results_and_results_holding_refs_come_through_the_node(ray):
    b = Box.remote()
    warm(b)
    r = b.big.remote(1 << 18)
    a = arca.get(r, timeout=30)
    assert a.shape == (1 << 18,) and int(a[-1]) == (1 << 18) - 1
    assert r.hex() in node_ids()
    inner = arca.get(b.refs.remote(), timeout=30)
    assert arca.get(inner, timeout=30) == [7, 8]
    ids = {x.hex() for x in inner} | {r.hex()}
    del a, r, inner
    wait_for(lambda: not (ids & node_ids()), what="the results to be freed")


def test_dropped_direct_results_leave_nothing_behind(ray):
    b = Box.remote()
    warm(b)
    before = node_ids()
    refs = [b.value.remote(i) for i in range(2000)]
    assert arca.get(refs, timeout=60) == list(range(2000))
    for i in range(500):
        b.value.remote(i)
    del refs
    arca.get(b.value.remote(), timeout=30)
    assert node_ids() - before == set()


def test_wait_on_direct_results(ray, tmp_path):
    b = Box.remote()
    warm(b)
    gate = str(tmp_path / "gate")
    slow = b.wait_file.remote(gate)
    fast = Box.remote()
    warm(fast)
    quick = [fast.value.remote(i) for i in range(3)]
    ready, rest = arca.wait([slow, *quick], num_returns=3, timeout=30)
    assert ready == quick and rest == [slow]
    ready, rest = arca.wait([slow], timeout=0.1)
    assert ready == [] and rest == [slow]
    open(gate, "w").close()
    assert arca.wait([slow], timeout=30) == ([slow], [])
    assert arca.get(slow, timeout=30) == "opened"


def test_waiting_on_results_as_they_come(ray):
    # A wait promises the node the results still running; one that comes
    # meanwhile is put by the thread that reads it, which must not reach
    # the node before the promise (the node dropped the caller for it).
    # ActorPool's pattern: one call per actor in flight, the next made as
    # soon as a wait finds one done.
    boxes = [Box.remote(), Box.remote()]
    for b in boxes:
        warm(b)
    for round_ in range(300):
        inflight = {b.value.remote(round_): b for b in boxes}
        for i in range(8):
            ready, _ = arca.wait(list(inflight), num_returns=1, timeout=30)
            b = inflight.pop(ready[0])
            arca.get(ready[0], timeout=30)
            inflight[b.value.remote(i)] = b
        arca.get(list(inflight), timeout=30)


def test_get_timeout_on_a_direct_call(ray, tmp_path):
    b = Box.remote()
    warm(b)
    gate = str(tmp_path / "gate")
    slow = b.wait_file.remote(gate)
    with pytest.raises(ex.GetTimeoutError):
        arca.get(slow, timeout=0.2)
    open(gate, "w").close()
    assert arca.get(slow, timeout=30) == "opened"


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-node"])
def test_cancel_a_call_waiting_behind_another(ray, tmp_path, direct):
    b = Box.remote()
    if direct:
        warm(b)
    gate = str(tmp_path / "gate")
    first = b.wait_file.remote(gate)
    queued = b.add.remote("cancelled")
    after = b.add.remote("ran")
    arca.cancel(queued)
    # It fails at once, not when the call before it ends.
    with pytest.raises(ex.TaskCancelledError):
        arca.get(queued, timeout=30)
    assert arca.wait([first], timeout=0) == ([], [first])
    open(gate, "w").close()
    assert arca.get(first, timeout=30) == "opened"
    assert arca.get(after, timeout=30) == "ran"
    assert arca.get(b.get_log.remote(), timeout=30) == ["ran"]


def test_kill_fails_the_direct_calls_in_flight(ray, tmp_path):
    b = Box.remote()
    warm(b)
    gate = str(tmp_path / "never")
    calls = [b.wait_file.remote(gate), b.value.remote(1), b.value.remote(2)]
    arca.kill(b)
    for c in calls:
        with pytest.raises(ex.RayActorError):
            arca.get(c, timeout=30)
    with pytest.raises(ex.RayActorError):
        arca.get(b.value.remote(), timeout=30)


def test_a_restarted_actor_runs_the_calls_that_had_not_started(ray, tmp_path):
    b = Box.options(max_restarts=1).remote()
    warm(b)
    pid = arca.get(b.pid.remote(), timeout=30)
    gate = str(tmp_path / "never")
    running = b.wait_file.remote(gate)
    waiting = [b.add.remote(i) for i in range(3)]
    os.kill(pid, 9)
    with pytest.raises(ex.RayActorError):
        arca.get(running, timeout=30)
    # They had waited in the dead worker: they run on the restarted one.
    assert arca.get(waiting, timeout=30) == [0, 1, 2]
    assert arca.get(b.pid.remote(), timeout=30) != pid


def test_a_task_calls_an_actor_while_its_caller_does_not_read(ray):
    # The driver sends many calls and then blocks in a get on a task (not
    # on the calls): its answers must still be read, or the actor's worker
    # would block on a full socket and never run the task's call.
    b = Box.remote()
    warm(b)
    refs = [b.value.remote(b"x" * 200) for _ in range(5000)]
    assert arca.get(call_through.remote(b, 3), timeout=60) == 3
    assert len(arca.get(refs, timeout=60)) == 5000


@arca.remote
class Async:
    async def echo(self, x):
        await asyncio.sleep(0)
        return x


@arca.remote(max_concurrency=4)
class Threaded:
    def echo(self, x):
        return x


@pytest.mark.parametrize("cls", [Async, Threaded])
def test_concurrent_actors_answer_direct_calls(ray, cls):
    a = cls.remote()
    arca.get(a.echo.remote(0), timeout=30)
    refs = [a.echo.remote(i) for i in range(3000)]
    assert arca.get(refs, timeout=60) == list(range(3000))
    assert refs[-1].hex() not in node_ids()


def test_an_async_actor_takes_calls_a_pool_thread_read(ray):
    # A thread that looks for cancels (a call starting, here in the event
    # loop) reads the callers' sockets, maybe while the thread that takes
    # calls sleeps in its poll: it must wake it for the calls it read, or
    # they wait forever.
    a = Async.remote()
    for i in range(500):
        assert arca.get(a.echo.remote(i), timeout=30) == i
    for _ in range(5):
        refs = [a.echo.remote(i) for i in range(1000)]
        assert arca.get(refs, timeout=60) == list(range(1000))
