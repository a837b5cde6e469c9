"""Ray's exception hierarchy, and how task errors reach the caller."""

from __future__ import annotations

import threading

import pytest

import arca
from arca import exceptions as ex


def test_hierarchy_and_names():
    for name in ex.__all__:
        cls = getattr(ex, name)
        assert cls.__name__ == name
        assert issubclass(cls, ex.RayError), name
        assert issubclass(cls, Exception)
    assert issubclass(ex.GetTimeoutError, TimeoutError)
    assert issubclass(ex.RayTaskError, ex.RayError)
    assert issubclass(ex.ActorDiedError, ex.RayActorError)
    assert issubclass(ex.ActorUnavailableError, ex.RayActorError)
    assert issubclass(ex.ActorAlreadyExistsError, ValueError)
    for lost in (
        ex.ObjectFreedError,
        ex.OwnerDiedError,
        ex.ObjectFetchTimedOutError,
        ex.ObjectReconstructionFailedError,
    ):
        assert issubclass(lost, ex.ObjectLostError)
    assert arca.exceptions is ex
    # Constructible the way Ray's code constructs them.
    assert "cancelled" in str(ex.TaskCancelledError()).lower()
    assert isinstance(ex.GetTimeoutError("t"), TimeoutError)
    assert str(ex.RayActorError(error_msg="gone")) == "gone"


@arca.remote
def raise_value(msg):
    raise ValueError(msg)


@arca.remote
def passthrough(x):
    return x


@arca.remote
def add_one(x):
    return x + 1


def test_task_value_error_caught_as_value_error(ray):
    with pytest.raises(ValueError) as info:
        ray.get(raise_value.remote("boom-4711"), timeout=30)
    e = info.value
    assert isinstance(e, ex.RayTaskError)
    assert isinstance(e, ex.RayError)
    assert type(e).__name__ == "RayTaskError(ValueError)"
    assert isinstance(e.cause, ValueError)
    assert str(e.cause) == "boom-4711"
    text = str(e)
    assert "Traceback" in text
    assert "raise_value" in text
    assert "ValueError: boom-4711" in text


def test_ray_task_error_pickles(ray):
    import pickle

    with pytest.raises(ex.RayTaskError) as info:
        ray.get(raise_value.remote("again"), timeout=30)
    e2 = pickle.loads(pickle.dumps(info.value))
    assert isinstance(e2, ValueError) and isinstance(e2, ex.RayTaskError)
    assert "ValueError: again" in str(e2)


class UnpicklableOnCaller(Exception):
    """Pickles in the worker, but unpickling calls __init__ with too few arguments."""

    def __init__(self, a, b):
        super().__init__(f"{a}+{b}")

    def __reduce__(self):
        return (UnpicklableOnCaller, ("only-one",))


@arca.remote
def raise_unpicklable_on_caller():
    raise UnpicklableOnCaller("left", "right")


def test_exception_that_fails_to_unpickle_keeps_type_and_message(ray):
    with pytest.raises(ex.RayError) as info:
        ray.get(raise_unpicklable_on_caller.remote(), timeout=30)
    e = info.value
    assert isinstance(e, (ex.UnserializableException, ex.RayTaskError))
    text = str(e)
    assert "UnpicklableOnCaller" in text
    assert "left+right" in text


class HoldsLock(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


@arca.remote
def raise_unpicklable_in_worker():
    raise HoldsLock("lock-inside-9")


def test_exception_that_fails_to_pickle_in_worker(ray):
    with pytest.raises(ex.RayError) as info:
        ray.get(raise_unpicklable_in_worker.remote(), timeout=30)
    text = str(info.value)
    assert "HoldsLock" in text
    assert "lock-inside-9" in text


def test_errors_propagate_to_dependent_tasks(ray):
    failed = raise_value.remote("root-cause-77")
    child = passthrough.remote(failed)
    grandchild = add_one.remote(child)
    for ref in (child, grandchild):
        with pytest.raises(ValueError) as info:
            ray.get(ref, timeout=30)
        assert "root-cause-77" in str(info.value)
    # A list of refs raises the first failure too.
    with pytest.raises(ValueError):
        ray.get([passthrough.remote(1), grandchild], timeout=30)


def test_get_timeout_error_is_timeout_error(ray):
    @arca.remote
    def slow():
        import time

        time.sleep(2)

    r = slow.remote()
    with pytest.raises(TimeoutError) as info:
        ray.get(r, timeout=0.05)
    assert isinstance(info.value, ex.GetTimeoutError)
    assert ray.get(r, timeout=30) is None
