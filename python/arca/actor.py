"""Actors: ``@remote`` classes, their handles, ``@method``, named actors."""

from __future__ import annotations

import inspect
import json
import threading
from typing import Any

from . import _native, _runtime
from ._runtime_env import env_vars
from ._serialization import _CallGroup, _Groups
from .remote_function import (
    ACTOR_CREATION,
    ACTOR_METHOD,
    _Shipped,
    check_options,
    encode_args,
    node_count,
    resource_request,
    returns_of,
    wrap_returns,
)

ObjectRef = _native.ObjectRef

# Ray's actor options and their defaults.
ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": None,
    "num_gpus": 0,
    "resources": None,
    "memory": None,
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": None,
    "name": None,
    "namespace": None,
    "lifetime": None,
    "get_if_exists": False,
    "max_pending_calls": -1,
    "concurrency_groups": None,
    "allow_out_of_order_execution": False,
    "runtime_env": None,
    "scheduling_strategy": None,
    "accelerator_type": None,
    "label_selector": None,
    "placement_group": None,
    "placement_group_bundle_index": None,
    "placement_group_capture_child_tasks": None,
    "_metadata": None,
    "enable_task_events": None,
}

DEFAULT_MAX_CONCURRENCY_ASYNC = 1000
_NO_RETRIES = (0, False)
# The method every actor has: ends it after the calls before it.
TERMINATE = "__ray_terminate__"

_METHOD_OPTIONS = {"num_returns", "concurrency_group", "max_task_retries", "retry_exceptions"}


def method(*args: Any, **kwargs: Any) -> Any:
    """``@method(num_returns=N)`` on an actor method."""
    if args:
        raise ValueError(
            "@ray.method takes keyword arguments only, e.g. @ray.method(num_returns=2)"
        )
    bad = set(kwargs) - _METHOD_OPTIONS
    if bad:
        raise ValueError(f"Invalid option keyword(s) for @ray.method: {', '.join(sorted(bad))}")

    def decorate(f: Any) -> Any:
        if "num_returns" in kwargs:
            f.__ray_num_returns__ = kwargs["num_returns"]
        if "concurrency_group" in kwargs:
            f.__ray_concurrency_group__ = kwargs["concurrency_group"]
        for key in ("max_task_retries", "retry_exceptions"):
            if key in kwargs:
                setattr(f, f"__ray_{key}__", kwargs[key])
        return f

    return decorate


def _methods(cls: type) -> dict[str, Any]:
    """Each public method's num_returns (a generator's default: "streaming")."""
    out = {}
    for name, m in inspect.getmembers(cls, predicate=inspect.isfunction):
        if name.startswith("__") and name not in ("__call__",):
            continue
        n = getattr(m, "__ray_num_returns__", None)
        out[name] = returns_of(n, m)[1] or (1 if n is None else n)
    return out


def _retries(cls: type, max_task_retries: int | None) -> dict[str, tuple[int, Any]]:
    """Each method's (max_task_retries, retry_exceptions), for the methods
    where either is set (by the actor's options or ``@method``)."""
    default = max_task_retries or 0
    out = {}
    for name, m in inspect.getmembers(cls, predicate=inspect.isfunction):
        retries = getattr(m, "__ray_max_task_retries__", default)
        exceptions = getattr(m, "__ray_retry_exceptions__", False)
        if retries or exceptions:
            out[name] = (retries, exceptions)
    return out


def _groups(cls: type, groups: Any) -> dict[str, int]:
    """``concurrency_groups``, checked against the methods that name one."""
    if groups is None:
        groups = {}
    if not isinstance(groups, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
        for k, v in groups.items()
    ):
        raise ValueError(
            "concurrency_groups must be a dict of group name to its max concurrency (>= 1)"
        )
    for name, m in inspect.getmembers(cls, predicate=inspect.isfunction):
        g = getattr(m, "__ray_concurrency_group__", None)
        if g is not None and g not in groups:
            raise ValueError(
                f"method {name!r} is in concurrency group {g!r}, which the actor does not "
                f"define (concurrency_groups={groups})"
            )
    return dict(groups)


def _is_async(cls: type) -> bool:
    return any(
        inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
        for _, m in inspect.getmembers(cls, predicate=inspect.isfunction)
    )


# Named actors this process made or looked up. The registry itself is the
# cluster's KV (on the head; a standalone node's own): one key per name,
# whose value says which actor and which node owns it.
_named: dict[tuple[str, str], ActorHandle] = {}
_named_lock = threading.Lock()


def _kv_key(namespace: str, name: str) -> str:
    return f"actor:{namespace}:{name}"


def _kv_value(ref: Any, class_name: str, methods: dict[str, int], retries: dict) -> bytes:
    d = {"id": ref.hex(), "node": _native.node_id(), "class": class_name, "methods": methods}
    if retries:
        # retry_exceptions may list exception classes: pickled, not JSON.
        import cloudpickle

        d["retries"] = cloudpickle.dumps(retries).hex()
    return json.dumps(d).encode()


def _handle_from_kv(value: bytes, key: str) -> ActorHandle:
    d = json.loads(value)
    actor_id = bytes.fromhex(d["id"])
    if d["node"] and d["node"] != _native.node_id():
        # Owned on another node: borrow it there before holding it here.
        _native.borrow_from(actor_id, d["node"])
    _native.begin_borrow()
    try:
        ref = _native._borrow_ref(actor_id)
    finally:
        _native.end_borrow()
    retries = {}
    if "retries" in d:
        import pickle

        retries = pickle.loads(bytes.fromhex(d["retries"]))
    handle = ActorHandle(ref, d["class"], d["methods"], retries)
    handle.__dict__["_kv_key"] = key
    return handle


class ActorClass:
    """A class made remote by ``@remote``: ``.remote(...)`` starts an actor."""

    def __init__(self, cls: type, options: dict[str, Any], shipped: _Shipped | None = None):
        check_options(options, ACTOR_OPTIONS, "actors")
        lifetime = options.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(
                "actor `lifetime` argument must be one of 'detached', 'non_detached' and 'None'."
            )
        self._cls = cls
        self._options = options
        self._shipped = shipped or _Shipped(cls)
        self._name = f"{cls.__module__}.{cls.__qualname__}"
        self._methods = _methods(cls)
        self._retries = _retries(cls, options.get("max_task_retries"))
        self._async = _is_async(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Actors cannot be instantiated directly. "
            f"Instead of '{self._cls.__name__}()', use '{self._cls.__name__}.remote()'."
        )

    def options(self, **options: Any) -> ActorClass:
        return ActorClass(self._cls, {**self._options, **options}, self._shipped)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        _runtime.ensure_init()
        opts = self._options
        name = opts.get("name")
        namespace = opts.get("namespace") or _runtime._state.namespace
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError("Actor name must be a non-empty string")
            with _named_lock:
                existing = _named.get((namespace, name))
                if existing is not None:
                    if opts.get("get_if_exists"):
                        return existing
                    from .exceptions import ActorAlreadyExistsError

                    raise ActorAlreadyExistsError(
                        f"The name {name} (namespace={namespace!r}) is already taken. Please use "
                        "a different name or get the existing actor using "
                        f"ray.get_actor('{name}', namespace='{namespace}')"
                    )
        max_concurrency = opts.get("max_concurrency")
        if max_concurrency is None:
            max_concurrency = DEFAULT_MAX_CONCURRENCY_ASYNC if self._async else 1
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        groups = _groups(self._cls, opts.get("concurrency_groups"))
        marker = None
        if groups:
            # The node lets the worker run every group's calls at once.
            marker = _Groups(groups, max_concurrency)
            max_concurrency += sum(groups.values())
        actor_ref = _native.new_actor_ref()
        detached = opts.get("lifetime") == "detached"
        if name is not None:
            key = _kv_key(namespace, name)
            value = _kv_value(actor_ref, self._name, self._methods, self._retries)
            kept = _native.kv_put(key, value, False, not detached)
            if kept is not None:
                if opts.get("get_if_exists"):
                    return _handle_from_kv(kept, key)
                from .exceptions import ActorAlreadyExistsError

                raise ActorAlreadyExistsError(
                    f"The name {name} (namespace={namespace!r}) is already taken. Please use "
                    "a different name or get the existing actor using "
                    f"ray.get_actor('{name}', namespace='{namespace}')"
                )
        elif detached:
            raise ValueError("Detached actors must be named; pass name= with lifetime='detached'")
        _native.submit(
            ACTOR_CREATION,
            f"{self._name}::__init__",
            self._shipped.ref(),
            encode_args(args, kwargs, env=env_vars(opts.get("runtime_env")), marker=marker),
            [],
            1,
            resource_request(opts, 0),
            0,
            node_count(opts.get("max_restarts"), 0),
            max_concurrency,
            actor_ref,
        )
        if detached:
            _native.detach(actor_ref)
        handle = ActorHandle(actor_ref, self._name, self._methods, self._retries)
        if name is not None:
            handle.__dict__["_kv_key"] = _kv_key(namespace, name)
            with _named_lock:
                _named[(namespace, name)] = handle
        return handle

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Ray DAGs (.bind) are not supported by Arca yet")


class ActorMethod:
    """``handle.method``: ``.remote(...)`` calls it; ``.options(num_returns=)``.

    It holds the actor's ref, not the handle: the handle caches its methods,
    and a cycle would keep the actor alive until the garbage collector ran."""

    __slots__ = (
        "_actor_ref",
        "_function",
        "_name",
        "_num_returns",
        "_retries",
        "_encoded",
        "_returns",
        "_group",
    )

    def __init__(
        self,
        actor_ref: ObjectRef,
        class_name: str,
        name: str,
        num_returns: int,
        retries: tuple[int, Any],
        group: str | None = None,
    ):
        self._actor_ref = actor_ref
        # A concurrency group chosen for these calls (.options), as a marker.
        self._group = _CallGroup(group) if group is not None else None
        self._function = f"{class_name}::{name}"
        self._name = name
        self._num_returns = num_returns
        # (return ids per call, generator mode)
        self._returns = returns_of(num_returns, None)
        # (max_task_retries, retry_exceptions)
        self._retries = retries
        # What encode_args is given, and the node's retry count.
        retries_, exceptions = retries
        self._encoded = (exceptions if retries_ else False, node_count(retries_, 0))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running "
            f"'object.{self._name}()', try 'object.{self._name}.remote()'."
        )

    def options(self, **options: Any) -> ActorMethod:
        bad = set(options) - _METHOD_OPTIONS - {"name"}
        if bad:
            raise ValueError(f"Invalid option keyword(s) for actor methods: {', '.join(bad)}")
        retries, exceptions = self._retries
        return ActorMethod(
            self._actor_ref,
            self._function.rsplit("::", 1)[0],
            self._name,
            options.get("num_returns", self._num_returns),
            (
                options.get("max_task_retries", retries),
                options.get("retry_exceptions", exceptions),
            ),
            options.get("concurrency_group", self._group.name if self._group else None),
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        n, mode = self._returns
        # Exceptions are retried only within max_task_retries, as in Ray.
        exceptions, retries = self._encoded
        refs = _native.submit(
            ACTOR_METHOD,
            self._function,
            None,
            encode_args(args, kwargs, exceptions, generate=mode is not None, marker=self._group),
            [],
            n,
            None,
            retries,
            0,
            0,
            self._actor_ref,
        )
        return wrap_returns(refs, n, mode)


class ActorHandle:
    """A handle to an actor. Pass it to tasks and other actors; the actor ends
    when the last handle anywhere is dropped, or with ``kill``."""

    def __init__(
        self,
        actor_ref: ObjectRef,
        class_name: str,
        methods: dict[str, int],
        retries: dict[str, tuple[int, Any]] | None = None,
    ):
        self._actor_ref = actor_ref
        self._class_name = class_name
        self._methods = methods
        # The methods with max_task_retries or retry_exceptions set.
        self._retries = retries or {}

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods")
        if methods is None or name not in methods:
            raise AttributeError(
                f"'{self.__dict__.get('_class_name', 'actor')}' has no method {name!r}"
            )
        m = ActorMethod(
            self._actor_ref,
            self._class_name,
            name,
            methods[name],
            self._retries.get(name, _NO_RETRIES),
        )
        # Found without __getattr__ from now on (one call costs less).
        self.__dict__[name] = m
        return m

    @property
    def __ray_terminate__(self) -> ActorMethod:
        """Ends the actor once the calls made before this one are done (it is
        a call too; its ref raises ``RayActorError`` once the actor is gone)."""
        return ActorMethod(self._actor_ref, self._class_name, TERMINATE, 1, _NO_RETRIES)

    def __repr__(self) -> str:
        short = self._class_name.rsplit(".", 1)[-1]
        return f"Actor({short}, {self._actor_ref.hex()})"

    def __hash__(self) -> int:
        return hash(self._actor_ref)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ActorHandle) and other._actor_ref == self._actor_ref

    def __reduce__(self):
        # The actor's ref is pickled too, so the value holding this handle
        # holds the actor alive.
        return (ActorHandle, (self._actor_ref, self._class_name, self._methods, self._retries))


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    _runtime.ensure_init()
    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    ns = namespace or _runtime._state.namespace
    with _named_lock:
        h = _named.get((ns, name))
    if h is None:
        value = _native.kv_get(_kv_key(ns, name))
        if value is not None:
            h = _handle_from_kv(value, _kv_key(ns, name))
            with _named_lock:
                _named[(ns, name)] = h
    if h is None:
        raise ValueError(
            f"Failed to look up actor with name '{name}'. This could because 1. "
            "You are trying to look up a named actor you didn't create. 2. The named "
            "actor died. 3. You did not use a namespace matching the namespace of the "
            "actor."
        )
    return h


def exit_actor() -> None:
    """Ends the actor this runs in, from one of its methods, as Ray's
    ``ray.actor.exit_actor``: it is not restarted, the call that exits and
    the calls left raise ``RayActorError``, and nothing of it runs after."""
    st = _runtime._state
    if st.current_actor_id is None:
        raise TypeError(
            "exit_actor API is called on a non-actor worker. Call this API inside an "
            "actor method to exit the actor."
        )
    _native.exit_actor(st.current_actor_id)
    # The node kills this process; until it does, this thread runs nothing
    # more (if the node has gone instead, the process ends by itself).
    import os
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(1)


def kill(actor: Any, *, no_restart: bool = True) -> None:
    _runtime.ensure_init()
    if not isinstance(actor, ActorHandle):
        raise ValueError(
            "ray.kill() only supported for actors. For tasks, try ray.cancel(). "
            f"Got: {type(actor)}."
        )
    _native.kill(actor._actor_ref, no_restart)
    key = actor.__dict__.get("_kv_key")
    if key is not None and no_restart:
        _native.kv_delete(key)
    with _named_lock:
        for k, v in list(_named.items()):
            if v is actor or v == actor:
                del _named[k]
