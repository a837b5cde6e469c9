"""get_runtime_context() inside tasks and actors: ids, assigned resources,
cancellation, restarts and the actor's own handle."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import wait_for

import arca


@arca.remote
def context_of_task():
    c = arca.get_runtime_context()
    return c.get_task_id(), c.get_assigned_resources(), c.is_canceled()


def test_a_task_sees_its_id_and_resources(ray):
    task_id, resources, cancelled = ray.get(context_of_task.remote(), timeout=30)
    assert isinstance(task_id, str) and len(task_id) == 40
    assert resources == {"CPU": 1.0}
    assert cancelled is False
    _, resources, _ = ray.get(context_of_task.options(num_cpus=2).remote(), timeout=30)
    assert resources == {"CPU": 2.0}
    _, resources, _ = ray.get(context_of_task.options(num_cpus=0.5).remote(), timeout=30)
    assert resources == {"CPU": 0.5}


def test_the_driver_runs_no_task(ray):
    c = ray.get_runtime_context()
    assert c.get_task_id() is None
    assert c.get_actor_id() is None
    assert c.get_assigned_resources() == {}
    assert c.is_canceled() is False
    assert c.was_current_actor_reconstructed is False
    with pytest.raises(RuntimeError, match="only available in an actor"):
        c.current_actor  # noqa: B018 - the property raises


@arca.remote(max_concurrency=4)
class Threaded:
    def __init__(self):
        self.all_in = threading.Barrier(4)
        self.running = threading.Event()
        self.saw_cancel = threading.Event()

    def task_id(self):
        # Each call waits for the others: all four run at once.
        self.all_in.wait(30)
        return arca.get_runtime_context().get_task_id()

    def context(self):
        c = arca.get_runtime_context()
        return c.get_actor_id(), c.get_assigned_resources(), c.was_current_actor_reconstructed

    def call_myself(self):
        return arca.get(arca.get_runtime_context().current_actor.context.remote(), timeout=30)

    def until_cancelled(self):
        c = arca.get_runtime_context()
        self.running.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if c.is_canceled():
                self.saw_cancel.set()
                return "cancelled"
            time.sleep(0.005)
        return "never cancelled"

    def started(self):
        return self.running.wait(30)

    def saw(self):
        return self.saw_cancel.wait(30)


def test_a_threaded_actors_calls_each_see_their_own_task_id(ray):
    a = Threaded.remote()
    refs = [a.task_id.remote() for _ in range(4)]
    ids = ray.get(refs, timeout=30)
    assert len(set(ids)) == 4


def test_an_actor_sees_its_resources_and_its_own_handle(ray):
    a = Threaded.options(num_cpus=1).remote()
    actor_id, resources, reconstructed = ray.get(a.context.remote(), timeout=30)
    assert actor_id == a._actor_ref.hex()
    assert resources == {"CPU": 1.0}
    assert reconstructed is False
    # Through its own handle, it calls itself (a threaded actor can wait).
    assert ray.get(a.call_myself.remote(), timeout=30) == (actor_id, resources, False)
    # An actor asks for no CPU to live by default, as in Ray.
    b = Threaded.remote()
    assert ray.get(b.context.remote(), timeout=30)[1] == {}


def test_a_running_actor_call_sees_its_cancel(ray):
    a = Threaded.remote()
    r = a.until_cancelled.remote()
    assert ray.get(a.started.remote(), timeout=40) is True
    ray.cancel(r)
    with pytest.raises(arca.exceptions.TaskCancelledError):
        ray.get(r, timeout=30)
    assert ray.get(a.saw.remote(), timeout=40) is True


@arca.remote(max_restarts=1)
class Restartable:
    def pid(self):
        return os.getpid()

    def reconstructed(self):
        return arca.get_runtime_context().was_current_actor_reconstructed


def _reaped(pid: int) -> bool:
    # Not merely a zombie: a dying process's other threads may hold its
    # sockets open a little longer than its main thread lives.
    return not os.path.exists(f"/proc/{pid}")


def test_a_call_made_after_the_actor_died_runs_on_the_restarted_actor(ray):
    a = Restartable.remote()
    assert ray.get(a.reconstructed.remote(), timeout=30) is False
    # The calls after the first go straight to the actor's worker.
    pids = {ray.get(a.pid.remote(), timeout=30) for _ in range(3)}
    (pid,) = pids
    os.kill(pid, 9)
    wait_for(lambda: _reaped(pid), what="the actor's process to end")
    # Made once the worker is gone: its write fails, it never reached that
    # worker, so it runs on the restarted one although it has no retries.
    assert ray.get(a.reconstructed.remote(), timeout=30) is True
    assert ray.get(a.pid.remote(), timeout=30) != pid
