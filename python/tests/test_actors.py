"""Actors: order, state, failures, restarts, concurrency, names, handles."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from conftest import wait_for

import arca
from arca import exceptions as ex


@arca.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.log = []

    def inc(self, by=1):
        self.n += by
        self.log.append(self.n)
        return self.n

    def get_log(self):
        return self.log

    def pid(self):
        return os.getpid()

    def exit(self):
        os._exit(1)


@arca.remote
class BrokenInit:
    def __init__(self):
        raise ZeroDivisionError("ctor-boom")

    def ping(self):
        return "pong"


@arca.remote
class AsyncActor:
    async def nap(self, seconds):
        start = time.time()
        await asyncio.sleep(seconds)
        return start, time.time()


@arca.remote(max_concurrency=4)
class ThreadedActor:
    def nap(self, seconds):
        start = time.time()
        time.sleep(seconds)
        return start, time.time(), threading.get_ident()


def overlapping(spans):
    """All the (start, end) spans share an instant."""
    return max(s[0] for s in spans) < min(s[1] for s in spans)


def test_calls_run_in_order_and_keep_state(ray):
    c = Counter.remote(10)
    refs = [c.inc.remote() for _ in range(50)]
    assert ray.get(refs, timeout=30) == list(range(11, 61))
    assert ray.get(c.get_log.remote(), timeout=30) == list(range(11, 61))
    assert ray.get(c.inc.remote(by=5), timeout=30) == 65


def test_actor_state_is_per_actor(ray):
    a, b = Counter.remote(), Counter.remote(100)
    ray.get([a.inc.remote(), b.inc.remote()], timeout=30)
    assert ray.get([a.inc.remote(), b.inc.remote()], timeout=30) == [2, 102]
    assert ray.get(a.pid.remote(), timeout=30) != ray.get(b.pid.remote(), timeout=30)


def test_actor_method_options_num_returns(ray):
    @arca.remote
    class Pair:
        @arca.method(num_returns=2)
        def pair(self):
            return 1, 2

        def single(self):
            return (3, 4)

    p = Pair.remote()
    refs = p.pair.remote()
    assert len(refs) == 2
    assert ray.get(refs, timeout=30) == [1, 2]
    assert ray.get(p.single.remote(), timeout=30) == (3, 4)
    assert ray.get(p.single.options(num_returns=2).remote(), timeout=30) == [3, 4]


def test_direct_calls_raise(ray):
    with pytest.raises(TypeError):
        Counter()
    c = Counter.remote()
    with pytest.raises(TypeError):
        c.inc()
    with pytest.raises(AttributeError):
        c.no_such_method  # noqa: B018


def test_method_raising_keeps_actor_alive(ray):
    @arca.remote
    class Flaky:
        def boom(self):
            raise KeyError("method-err")

        def ok(self):
            return "ok"

    f = Flaky.remote()
    with pytest.raises(KeyError):
        ray.get(f.boom.remote(), timeout=30)
    assert ray.get(f.ok.remote(), timeout=30) == "ok"


def test_constructor_raising_makes_calls_raise_actor_error(ray):
    a = BrokenInit.remote()
    with pytest.raises(ex.RayActorError) as info:
        ray.get(a.ping.remote(), timeout=30)
    assert "ctor-boom" in str(info.value)
    with pytest.raises(ex.RayActorError):
        ray.get(a.ping.remote(), timeout=30)


def test_kill_then_call_raises(ray):
    c = Counter.remote()
    assert ray.get(c.inc.remote(), timeout=30) == 1
    ray.kill(c)
    with pytest.raises(ex.RayActorError):
        ray.get(c.inc.remote(), timeout=30)


def test_kill_rejects_non_actors(ray):
    with pytest.raises(ValueError):
        ray.kill(ray.put(1))


def test_max_restarts_restarts_after_exit(ray):
    c = Counter.options(max_restarts=1).remote()
    assert ray.get(c.inc.remote(), timeout=30) == 1
    pid1 = ray.get(c.pid.remote(), timeout=30)
    with pytest.raises(ex.RayActorError):
        ray.get(c.exit.remote(), timeout=30)
    # Restarted: a new process, with the constructor's state.
    assert ray.get(c.inc.remote(), timeout=30) == 1
    assert ray.get(c.pid.remote(), timeout=30) != pid1
    # No restarts left.
    with pytest.raises(ex.RayActorError):
        ray.get(c.exit.remote(), timeout=30)
    with pytest.raises(ex.RayActorError):
        ray.get(c.inc.remote(), timeout=30)


@arca.remote
class Gate:
    """A sequential actor whose `hold` runs until a file appears."""

    def __init__(self):
        self.log = []

    def hold(self, started, go):
        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.log.append("hold")

    def note(self, x):
        self.log.append(x)
        return x

    def hold_then_exit(self, started, go):
        self.hold(started, go)
        os._exit(1)

    def get_log(self):
        return self.log


def test_calls_waiting_behind_a_running_call(ray, tmp_path):
    # The node sends calls ahead to the actor's worker; they still run in
    # order, and a cancelled one that has not started never runs, even
    # with force.
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    g = Gate.remote()
    held = g.hold.remote(started, go)
    calls = [g.note.remote(i) for i in range(6)]
    wait_for(lambda: os.path.exists(started), what="the first call to start")
    ray.cancel(calls[1])
    ray.cancel(calls[4], force=True)
    open(go, "w").close()
    ray.get(held, timeout=30)
    for i, r in enumerate(calls):
        if i in (1, 4):
            with pytest.raises(ex.TaskCancelledError, match="before it ran"):
                ray.get(r, timeout=30)
        else:
            assert ray.get(r, timeout=30) == i
    assert ray.get(g.get_log.remote(), timeout=30) == ["hold", 0, 2, 3, 5]


def test_large_calls_wait_in_the_node_behind_a_long_call(ray, tmp_path):
    # A worker running a call does not read its socket; calls too large to
    # wait there stay in the node, which never blocks writing to it (a
    # write stalled for 2 s would drop the worker).
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    g = Gate.remote()
    held = g.hold.remote(started, go)
    wait_for(lambda: os.path.exists(started), what="the first call to start")
    calls = [g.note.remote(bytes([i]) * 60_000) for i in range(20)]
    time.sleep(3)
    open(go, "w").close()
    ray.get(held, timeout=30)
    assert ray.get(calls, timeout=60) == [bytes([i]) * 60_000 for i in range(20)]


def test_calls_sent_ahead_reach_a_restarted_actor(ray):
    # Calls queued behind the one that kills the actor were never started:
    # they run on the restarted actor, in order.
    c = Counter.options(max_restarts=1).remote()
    assert ray.get(c.inc.remote(), timeout=30) == 1
    died = c.exit.remote()
    after = [c.inc.remote() for _ in range(5)]
    with pytest.raises(ex.RayActorError):
        ray.get(died, timeout=30)
    assert ray.get(after, timeout=30) == [1, 2, 3, 4, 5]


def test_a_call_cancelled_while_sent_ahead_stays_cancelled_after_a_restart(ray, tmp_path):
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    g = Gate.options(max_restarts=1).remote()
    died = g.hold_then_exit.remote(started, go)
    calls = [g.note.remote(i) for i in range(3)]
    wait_for(lambda: os.path.exists(started), what="the first call to start")
    ray.cancel(calls[1])
    open(go, "w").close()
    with pytest.raises(ex.RayActorError):
        ray.get(died, timeout=30)
    assert ray.get(calls[0], timeout=30) == 0
    with pytest.raises(ex.TaskCancelledError):
        ray.get(calls[1], timeout=30)
    assert ray.get(calls[2], timeout=30) == 2
    assert ray.get(g.get_log.remote(), timeout=30) == [0, 2]


class _Flaky:
    """Dies (or raises) on the first call of each method, while a marker
    file is missing; the marker outlives restarts."""

    def __init__(self, marker):
        self.marker = marker
        self.calls = 0

    def _first(self):
        self.calls += 1
        if os.path.exists(self.marker):
            return False
        open(self.marker, "w").close()
        return True

    def die_once(self, x):
        if self._first():
            os._exit(1)
        return x, os.getpid()

    def raise_once(self):
        if self._first():
            raise KeyError("first call")
        return self.calls

    @arca.method(retry_exceptions=[KeyError], max_task_retries=1)
    def raise_once_decorated(self):
        return self.raise_once()


Flaky = arca.remote(_Flaky)


@arca.remote
class AsyncFlaky(_Flaky):
    async def raise_once_async(self):
        return self.raise_once()


def test_max_task_retries_runs_a_call_again_on_the_restarted_actor(ray, tmp_path):
    a = Flaky.options(max_restarts=1, max_task_retries=1).remote(str(tmp_path / "m"))
    first = a.die_once.remote("x")
    after = [a.die_once.remote(i) for i in range(3)]
    value, pid = ray.get(first, timeout=60)
    assert value == "x"
    assert [v for v, _ in ray.get(after, timeout=60)] == [0, 1, 2]
    assert pid != os.getpid()


def test_max_task_retries_of_a_method_call_overrides_the_actor(ray, tmp_path):
    a = Flaky.options(max_restarts=2, max_task_retries=-1).remote(str(tmp_path / "m"))
    with pytest.raises(ex.RayActorError):
        ray.get(a.die_once.options(max_task_retries=0).remote("x"), timeout=60)
    # Restarted; the marker is there now, so the call succeeds.
    assert ray.get(a.die_once.remote("y"), timeout=60)[0] == "y"


def test_max_task_retries_needs_a_restart(ray, tmp_path):
    a = Flaky.options(max_task_retries=3).remote(str(tmp_path / "m"))
    with pytest.raises(ex.RayActorError):
        ray.get(a.die_once.remote("x"), timeout=60)


def test_actor_retry_exceptions(ray, tmp_path):
    a = Flaky.options(max_task_retries=1).remote(str(tmp_path / "m"))
    # Not retried unless asked, as in Ray.
    with pytest.raises(KeyError):
        ray.get(a.raise_once.remote(), timeout=30)
    b = Flaky.options(max_task_retries=1).remote(str(tmp_path / "m2"))
    assert ray.get(b.raise_once.options(retry_exceptions=True).remote(), timeout=30) == 2
    c = Flaky.remote(str(tmp_path / "m3"))
    assert ray.get(c.raise_once_decorated.remote(), timeout=30) == 2
    d = Flaky.remote(str(tmp_path / "m4"))
    with pytest.raises(KeyError):
        ray.get(d.raise_once_decorated.options(retry_exceptions=[ValueError]).remote(), timeout=30)
    e = AsyncFlaky.options(max_task_retries=1).remote(str(tmp_path / "m5"))
    assert ray.get(e.raise_once_async.options(retry_exceptions=True).remote(), timeout=30) == 2


def test_no_restart_by_default(ray):
    c = Counter.remote()
    with pytest.raises(ex.RayActorError):
        ray.get(c.exit.remote(), timeout=30)
    with pytest.raises(ex.RayActorError):
        ray.get(c.inc.remote(), timeout=30)


def test_async_actor_runs_calls_concurrently(ray):
    a = AsyncActor.remote()
    spans = ray.get([a.nap.remote(0.5) for _ in range(10)], timeout=60)
    assert len(spans) == 10
    assert overlapping(spans)


@arca.remote
def double(x):
    return 2 * x


@arca.remote
class LoopUser:
    """Async methods that wait for the event loop's own events: a timer, a
    thread's result and an ObjectRef's (both come back through the loop's
    wake-up pipe), while the loop also waits for the actor's next calls."""

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return "slept"

    async def in_thread(self, x):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: x + 1)

    async def awaits(self, refs):
        return await refs[0]

    async def on_main_thread(self):
        return threading.current_thread() is threading.main_thread()


def test_async_actor_loop_wakes_for_its_own_events(ray):
    # Each call is alone: nothing but the loop's own event can finish it.
    a = LoopUser.remote()
    assert ray.get(a.sleep.remote(0.05), timeout=30) == "slept"
    assert ray.get(a.in_thread.remote(41), timeout=30) == 42
    assert ray.get(a.awaits.remote([double.remote(21)]), timeout=30) == 42
    # Calls keep coming in while others wait for their events.
    refs = [a.in_thread.remote(i) for i in range(200)] + [a.sleep.remote(0.01)]
    assert ray.get(refs, timeout=60) == [i + 1 for i in range(200)] + ["slept"]
    # The loop runs on the worker's main thread: no hand-off per call.
    assert ray.get(a.on_main_thread.remote(), timeout=30)


@arca.remote
class AsyncEcho:
    async def echo(self, x):
        return x


def test_an_async_actor_reads_its_calls_while_it_reports_results(ray):
    # Sent before the actor first answers, these calls all go through the
    # node, which sends the worker up to max_concurrency (1000) at once, and
    # each 3 KB result goes back through it. The worker reads its calls and
    # reports their results on one thread: had it stopped reading while its
    # socket to the node was full, the node, blocked sending it calls, would
    # stop reading its results, and drop it after 2 s.
    a = AsyncEcho.remote()
    x = b"x" * 3000
    refs = [a.echo.remote(x) for _ in range(20000)]
    assert ray.get(refs, timeout=120) == [x] * 20000


def test_threaded_actor_runs_calls_concurrently(ray):
    t = ThreadedActor.remote()
    spans = ray.get([t.nap.remote(0.5) for _ in range(8)], timeout=60)
    # Four at once (max_concurrency), on four threads, and never more.
    assert overlapping(sorted(s[:2] for s in spans)[:4])
    assert len({s[2] for s in spans}) == 4
    assert not overlapping([s[:2] for s in spans])


@arca.remote(max_concurrency=2)
class Latch:
    def __init__(self):
        self.event = threading.Event()

    def ping(self):
        return "pong"

    def wait(self):
        return self.event.wait(timeout=30)

    def open(self):
        self.event.set()
        return True


def test_threaded_actor_starts_a_call_while_another_blocks(ray):
    # A thread taking quick calls one after another takes the next call
    # itself while the others leave the sockets alone; once its call
    # blocks, a call that comes after must still start on another thread.
    # The pings all go through the node (sent before any answer), and the
    # calls after them come on the caller's new direct connection: the
    # thread that takes it must wake the one sleeping in its poll.
    a = Latch.remote()
    for _ in range(20):
        assert ray.get([a.ping.remote() for _ in range(300)], timeout=30) == ["pong"] * 300
        blocked = a.wait.remote()
        assert ray.get(a.open.remote(), timeout=60)
        assert ray.get(blocked, timeout=60) is True
        a = Latch.remote()


@arca.remote(max_concurrency=5)
class Napper:
    def nap(self):
        time.sleep(0.02)

    def pid(self):
        return os.getpid()


def test_threaded_actor_takes_a_call_after_a_burst(ray):
    # A fresh actor's first calls go through the node; the call after them
    # comes on the caller's new direct connection, taken by whichever of
    # the actor's threads is polling. The others must see that caller too
    # (they once slept on a list of callers without it, the byte that was
    # to wake them read by a third thread).
    for _ in range(20):
        a = Napper.remote()
        for r in [a.nap.remote() for _ in range(12)]:
            ray.get(r, timeout=30)
        assert ray.get(a.pid.remote(), timeout=30) > 0


def test_named_actor(ray):
    c = Counter.options(name="test-named-counter").remote()
    h = ray.get_actor("test-named-counter")
    assert ray.get(h.inc.remote(), timeout=30) == 1
    assert ray.get(c.inc.remote(), timeout=30) == 2
    with pytest.raises(ValueError):
        Counter.options(name="test-named-counter").remote()
    same = Counter.options(name="test-named-counter", get_if_exists=True).remote()
    assert ray.get(same.inc.remote(), timeout=30) == 3
    with pytest.raises(ValueError):
        ray.get_actor("no-such-actor-here")
    ray.kill(c)
    with pytest.raises(ValueError):
        ray.get_actor("test-named-counter")


@arca.remote
def use_handle(h, n):
    return arca.get([h.inc.remote() for _ in range(n)], timeout=30)


def test_actor_handle_passed_to_task(ray):
    c = Counter.remote()
    assert ray.get(use_handle.remote(c, 3), timeout=30) == [1, 2, 3]
    assert ray.get(c.inc.remote(), timeout=30) == 4

    # Inside a list too.
    @arca.remote
    def in_list(hs):
        return arca.get(hs[0].inc.remote(), timeout=30)

    assert ray.get(in_list.remote([c]), timeout=30) == 5


def test_actor_handle_passed_to_actor(ray):
    @arca.remote
    class Caller:
        def call(self, h):
            return arca.get(h.inc.remote(by=10), timeout=30)

    c = Counter.remote()
    assert ray.get(Caller.remote().call.remote(c), timeout=30) == 10


def test_actor_method_object_ref_args(ray):
    c = Counter.remote()
    assert ray.get(c.inc.remote(ray.put(7)), timeout=30) == 7


@arca.remote(concurrency_groups={"io": 2, "compute": 1})
class Grouped:
    def __init__(self):
        self.running = {"io": 0, "compute": 0, None: 0}
        self.peak = {"io": 0, "compute": 0, None: 0}

    async def _track(self, group):
        self.running[group] += 1
        self.peak[group] = max(self.peak[group], self.running[group])
        await asyncio.sleep(0.02)
        self.running[group] -= 1

    @arca.method(concurrency_group="io")
    async def io(self):
        await self._track("io")

    @arca.method(concurrency_group="compute")
    async def compute(self):
        await self._track("compute")

    async def default(self):
        await self._track(None)

    async def tracked_as(self, group):
        await self._track(group)

    def peaks(self):
        return self.peak


def test_concurrency_groups_limit_an_async_actors_calls(ray):
    g = Grouped.remote()
    calls = [g.io.remote() for _ in range(6)] + [g.compute.remote() for _ in range(3)]
    calls += [g.default.remote() for _ in range(4)]
    # A call may choose its group.
    calls += [g.tracked_as.options(concurrency_group="compute").remote("compute")]
    ray.get(calls, timeout=60)
    assert ray.get(g.peaks.remote(), timeout=30) == {"io": 2, "compute": 1, None: 4}


@arca.remote(concurrency_groups={"io": 2})
class ThreadedGroups:
    def __init__(self):
        self.lock = threading.Lock()
        self.running = {"io": 0, None: 0}
        self.peak = {"io": 0, None: 0}

    def _track(self, group):
        with self.lock:
            self.running[group] += 1
            self.peak[group] = max(self.peak[group], self.running[group])
        time.sleep(0.02)
        with self.lock:
            self.running[group] -= 1

    @arca.method(concurrency_group="io")
    def io(self):
        self._track("io")

    def default(self):
        self._track(None)

    def peaks(self):
        return self.peak


def test_concurrency_groups_limit_a_threaded_actors_calls(ray):
    t = ThreadedGroups.options(max_concurrency=3).remote()
    ray.get([t.io.remote() for _ in range(6)] + [t.default.remote() for _ in range(6)], timeout=60)
    assert ray.get(t.peaks.remote(), timeout=30) == {"io": 2, None: 3}
    with pytest.raises(ValueError, match="'nope' is not defined"):
        ray.get(t.default.options(concurrency_group="nope").remote(), timeout=30)


def test_concurrency_groups_are_checked(ray):
    @arca.remote(concurrency_groups={"io": 1})
    class Undefined:
        @arca.method(concurrency_group="cpu")
        def f(self):
            pass

    with pytest.raises(ValueError, match="'cpu', which the actor does not define"):
        Undefined.remote()
    with pytest.raises(ValueError, match="concurrency_groups must be"):
        ThreadedGroups.options(concurrency_groups={"io": 0}).remote()
