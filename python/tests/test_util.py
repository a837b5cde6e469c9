"""ray.util on Arca: ActorPool, Queue, get_node_ip_address,
inspect_serializability; and ending an actor from inside (exit_actor,
__ray_terminate__)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import arca
from arca import exceptions as ex
from arca.util import ActorPool
from arca.util.queue import Empty, Full, Queue


@arca.remote
class Doubler:
    def double(self, v):
        return 2 * v

    def slow(self, v):
        time.sleep(v)
        return v

    def pid(self):
        return os.getpid()


def test_util_is_reachable_as_ray_util(ray):
    assert ray.util.ActorPool is ActorPool
    assert ray.util.queue.Queue is Queue
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_actor_pool_map_keeps_order_and_uses_every_actor(ray):
    actors = [Doubler.remote(), Doubler.remote()]
    pool = ActorPool(actors)
    assert list(pool.map(lambda a, v: a.double.remote(v), range(10))) == [2 * v for v in range(10)]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(10))) == [
        2 * v for v in range(10)
    ]
    pids = set(pool.map(lambda a, _: a.pid.remote(), range(4)))
    assert pids == {ray.get(a.pid.remote(), timeout=30) for a in actors}


def test_actor_pool_submit_and_get_next(ray):
    pool = ActorPool([Doubler.remote()])
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    # One actor: the second waits for it.
    assert not pool.has_free()
    assert pool.has_next()
    assert pool.get_next() == 2
    assert pool.get_next() == 4
    assert not pool.has_next()
    assert pool.has_free()


def test_actor_pool_get_next_times_out(ray):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.slow.remote(v), 2)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.01)
    # Still there: taken once done.
    assert pool.get_next(timeout=30) == 2
    pool.submit(lambda a, v: a.slow.remote(v), 2)
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next_unordered(timeout=0.01, ignore_if_timedout=True)


def test_actor_pool_pop_idle_and_push(ray):
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a])
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a)
    taken = pool.pop_idle()
    assert taken == a
    assert pool.pop_idle() is None
    pool.submit(lambda x, v: x.double.remote(v), 5)
    # The waiting submission runs on the actor pushed in.
    pool.push(b)
    assert pool.get_next(timeout=30) == 10


def test_actor_pool_get_next_after_unordered_raises(ray):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.slow.remote(v), 0.5)
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.get_next_unordered(timeout=30) == 2
    with pytest.raises(ValueError, match="after get_next_unordered"):
        pool.get_next()


def test_queue_is_first_in_first_out(ray):
    q = Queue()
    assert q.empty() and len(q) == 0
    for i in range(5):
        q.put(i)
    assert q.size() == q.qsize() == 5
    assert [q.get() for _ in range(5)] == list(range(5))
    q.put_nowait_batch([1, 2, 3])
    assert q.get_nowait_batch(3) == [1, 2, 3]
    q.shutdown()


def test_queue_empty_and_full_raise_plain_errors(ray):
    q = Queue(maxsize=2)
    with pytest.raises(Empty) as e:
        q.get_nowait()
    assert type(e.value) is Empty
    with pytest.raises(Empty):
        q.get(timeout=0.01)
    q.put(1)
    q.put(2)
    assert q.full()
    with pytest.raises(Full) as f:
        q.put_nowait(3)
    assert type(f.value) is Full
    with pytest.raises(Full):
        q.put(3, timeout=0.01)
    with pytest.raises(Full, match="Cannot add 1 items"):
        q.put_nowait_batch([3])
    with pytest.raises(Empty, match="Cannot get 3 items"):
        q.get_nowait_batch(3)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    q.shutdown(force=True)


@arca.remote
def produce(q, n):
    for i in range(n):
        q.put(i)
    return n


@arca.remote
def consume(q, n):
    return [q.get(timeout=30) for _ in range(n)]


def test_queue_is_shared_by_tasks_and_a_blocked_get_waits(ray):
    q = Queue()
    # The consumer waits in the queue's actor until the producer puts.
    got = consume.remote(q, 20)
    assert ray.get(produce.remote(q, 20), timeout=60) == 20
    assert ray.get(got, timeout=60) == list(range(20))
    q.shutdown()


def test_queue_async_methods(ray):
    q = Queue()

    async def go():
        await q.put_async("a")
        return await q.get_async(timeout=30)

    assert asyncio.run(go()) == "a"
    q.shutdown()


def test_queue_shutdown_ends_its_actor(ray):
    q = Queue()
    q.put(1)
    actor = q.actor
    q.shutdown()
    assert q.actor is None
    with pytest.raises(ex.RayActorError):
        ray.get(actor.qsize.remote(), timeout=30)


@arca.remote(max_restarts=1)
class Quitter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n

    def quit(self):
        arca.actor.exit_actor()
        return "still here"


def test_exit_actor_ends_the_actor_for_good(ray):
    q = Quitter.remote()
    assert ray.get(q.inc.remote(), timeout=30) == 1
    with pytest.raises(ex.RayActorError, match="exit_actor"):
        ray.get(q.quit.remote(), timeout=30)
    # Not restarted, although max_restarts allows it.
    with pytest.raises(ex.RayActorError, match="exit_actor"):
        ray.get(q.inc.remote(), timeout=30)


def test_exit_actor_outside_an_actor_raises(ray):
    with pytest.raises(TypeError, match="non-actor"):
        arca.actor.exit_actor()


@arca.remote
class Slow:
    def __init__(self):
        self.lock = threading.Lock()

    def work(self, s):
        time.sleep(s)
        return s


def test_ray_terminate_ends_the_actor_after_the_calls_before_it(ray):
    a = Slow.remote()
    before = [a.work.remote(0.05) for _ in range(3)]
    done = a.__ray_terminate__.remote()
    assert ray.get(before, timeout=30) == [0.05] * 3
    with pytest.raises(ex.RayActorError):
        ray.get(done, timeout=30)
    with pytest.raises(ex.RayActorError):
        ray.get(a.work.remote(0), timeout=30)


def test_inspect_serializability_names_what_does_not_pickle(ray):
    ok, failures = ray.util.inspect_serializability({"x": [1, 2]})
    assert ok and failures == set()
    holder = Slow.__init__  # a function; pickles
    assert ray.util.inspect_serializability(holder)[0]

    class HasLock:
        def __init__(self):
            self.lock = threading.Lock()

    ok, failures = ray.util.inspect_serializability(HasLock())
    assert not ok
    (why,) = failures
    assert "attribute 'lock'" in why


@arca.remote
def node_and_resources():
    c = arca.get_runtime_context()
    return c.get_node_id(), c.get_assigned_resources()


def test_scheduling_strategies_on_one_node(ray):
    from arca.util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )

    me = ray.get_runtime_context().get_node_id()
    here = NodeAffinitySchedulingStrategy(me, soft=False)
    for strategy in ("DEFAULT", "SPREAD", here):
        f = node_and_resources.options(scheduling_strategy=strategy)
        assert ray.get(f.remote(), timeout=30) == (me, {"CPU": 1.0})
    with pytest.raises(ValueError, match="Invalid scheduling_strategy"):
        node_and_resources.options(scheduling_strategy="PACK")
    with pytest.raises(NotImplementedError, match="placement groups"):
        PlacementGroupSchedulingStrategy(None)
    with pytest.raises(NotImplementedError, match="placement groups"):
        ray.util.placement_group([{"CPU": 1}])
    with pytest.raises(NotImplementedError, match="placement groups"):
        node_and_resources.options(placement_group=object())


def square(x):
    return x * x


def add(a, b):
    return a + b


def fail_on_three(x):
    if x == 3:
        raise KeyError("three")
    return x


_GREETING = None


def _init(greeting):
    global _GREETING
    _GREETING = greeting


def greet(name):
    return f"{_GREETING} {name}"


def test_multiprocessing_pool_runs_the_standard_librarys_api(ray):
    from arca.util.multiprocessing import Pool, TimeoutError

    with Pool(processes=2) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(add, (5, 6)) == 11
        assert list(pool.imap(square, range(10))) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(square, range(10), chunksize=2)) == sorted(
            x * x for x in range(10)
        )
        r = pool.map_async(square, range(5))
        r.wait(30)
        assert r.ready() and r.successful() and r.get(30) == [0, 1, 4, 9, 16]
        done = threading.Event()
        seen = []
        pool.apply_async(add, (1, 1), callback=lambda v: (seen.append(v), done.set()))
        assert done.wait(30) and seen == [2]
        slow = pool.apply_async(time.sleep, (2,))
        with pytest.raises(TimeoutError):
            slow.get(timeout=0.01)
        # An item's exception reaches the caller as itself.
        with pytest.raises(KeyError, match="three"):
            pool.map(fail_on_three, range(6))
        failed = pool.map_async(fail_on_three, range(6))
        failed.wait(30)
        assert not failed.successful()
        with pytest.raises(ValueError, match="still running"):
            pool.join()
    with pytest.raises(ValueError, match="not running"):
        pool.map(square, [1])


def test_multiprocessing_pool_initializer_runs_in_each_process(ray):
    from arca.util.multiprocessing import Pool

    pool = Pool(2, initializer=_init, initargs=("hello",))
    assert pool.map(greet, ["a", "b", "c"], chunksize=1) == ["hello a", "hello b", "hello c"]
    pool.close()
    pool.join()
