"""``@remote`` functions: options, and ``.remote()`` submitting tasks."""

from __future__ import annotations

import functools
from typing import Any

from . import _native, _runtime
from ._generator import DYNAMIC, STREAMING, ObjectRefGenerator, generator_mode
from ._runtime_env import env_vars
from ._serialization import _EnvVars, _Generate, _Kwargs, serialize

ObjectRef = _native.ObjectRef

NORMAL, ACTOR_CREATION, ACTOR_METHOD = 0, 1, 2

# Ray's task options and their defaults (_common/ray_option_utils.py).
TASK_OPTIONS: dict[str, Any] = {
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": None,
    "memory": None,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "max_calls": 0,
    "runtime_env": None,
    "scheduling_strategy": None,
    "accelerator_type": None,
    "label_selector": None,
    "name": None,
    "placement_group": None,
    "placement_group_bundle_index": None,
    "placement_group_capture_child_tasks": None,
    "_metadata": None,
    "enable_task_events": None,
}


def check_options(opts: dict[str, Any], valid: dict[str, Any], what: str) -> None:
    for k, v in opts.items():
        if k not in valid:
            raise ValueError(f"Invalid option keyword {k} for {what}.")
        if k in ("num_cpus", "num_gpus", "memory") and v is not None:
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"The keyword '{k}' only accepts None or a non-negative number")
        if k == "resources" and v is not None:
            if not isinstance(v, dict):
                raise TypeError("The 'resources' option must be a dict of name to quantity")
            for name, option in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
                if name in v:
                    raise ValueError(
                        f"Use the '{option}' option rather than resources={{'{name}': ...}}"
                    )
    if "object_store_memory" in opts:
        raise ValueError("Setting 'object_store_memory' is not implemented for tasks")
    env_vars(opts.get("runtime_env"))
    if opts.get("placement_group") not in (None, "default"):
        raise NotImplementedError(
            "placement groups are not supported by Arca yet; use resources= to place work"
        )
    if opts.get("label_selector"):
        raise NotImplementedError("label_selector is not supported by Arca yet")
    s = opts.get("scheduling_strategy")
    if s not in (None, "DEFAULT", "SPREAD") and type(s).__name__ != (
        "NodeAffinitySchedulingStrategy"
    ):
        raise ValueError(
            f"Invalid scheduling_strategy {s!r}: use 'DEFAULT', 'SPREAD' or "
            "NodeAffinitySchedulingStrategy"
        )


def resource_request(opts: dict[str, Any], default_cpus: float) -> dict[str, float]:
    cpus = opts.get("num_cpus")
    r = {"CPU": float(default_cpus if cpus is None else cpus)}
    if opts.get("num_gpus"):
        r["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        r["memory"] = float(opts["memory"])
    for k, v in (opts.get("resources") or {}).items():
        r[k] = float(v)
    strategy = opts.get("scheduling_strategy")
    if strategy is not None and strategy != "DEFAULT":
        node = _placement.node_for(strategy, r)
        if node is not None:
            r[node] = r.get(node, 0.0) + _placement.PIN
    return r


class _Placement:
    """Where ``scheduling_strategy`` puts a task: by the ``node:<IP>``
    resource of the node chosen (a sliver of its 1.0, so that 10,000 tasks
    pinned to one node can run at once)."""

    PIN = 0.0001
    # How long the cluster's node list is trusted.
    FRESH = 1.0

    def __init__(self) -> None:
        self.nodes: list[tuple[str, str, dict[str, float]]] = []
        self.read_at = -1e9
        self.next = 0

    def _alive(self, refresh: bool = False) -> list[tuple[str, str, dict[str, float]]]:
        import time

        now = time.monotonic()
        if refresh or now - self.read_at > self.FRESH:
            self.nodes = [
                (n["NodeID"], n["NodeManagerAddress"], n["Resources"])
                for n in _runtime.nodes()
                if n["Alive"]
            ]
            self.read_at = now
        return self.nodes

    def node_for(self, strategy: Any, request: dict[str, float]) -> str | None:
        """The ``node:<IP>`` resource to ask for (``None``: anywhere)."""
        if strategy == "SPREAD":
            fits = [
                ip
                for _, ip, total in self._alive()
                if all(total.get(k, 0.0) >= v for k, v in request.items() if v > 0)
            ]
            if len(fits) < 2:
                return None
            self.next += 1
            return f"node:{fits[self.next % len(fits)]}"
        for refresh in (False, True):
            for node_id, ip, _ in self._alive(refresh):
                if node_id == strategy.node_id:
                    return f"node:{ip}"
        if strategy.soft:
            return None
        # No node has it: the node reports the task unschedulable.
        return f"node:{strategy.node_id}"


_placement = _Placement()


def encode_args(
    args: tuple,
    kwargs: dict,
    retry_exceptions: Any = False,
    env: dict[str, str] | None = None,
    generate: bool = False,
    marker: Any = None,
) -> list:
    """Top-level ObjectRefs go by reference (the task gets their values);
    everything else is serialized. Keyword values follow the positional
    arguments, and a last ``_Kwargs`` names them. With ``retry_exceptions``
    (``True`` or exception types), a ``RetryPolicy`` follows: the worker
    re-runs the function while it raises one of them. ``env``
    (``runtime_env``'s ``env_vars``) comes next, as ``_EnvVars``, and for
    a generator task a ``_Generate``; ``marker`` (an actor's concurrency
    groups, or a call's) last of all."""
    out: list = [a if type(a) is ObjectRef else serialize(a) for a in args]
    if kwargs:
        out.extend(v if type(v) is ObjectRef else serialize(v) for v in kwargs.values())
        out.append(serialize(_Kwargs(tuple(kwargs))))
    if retry_exceptions:
        from ._worker import RetryPolicy

        out.append(serialize(RetryPolicy(retry_exceptions)))
    if env:
        out.append(serialize(_EnvVars(env)))
    if generate:
        out.append(serialize(_Generate()))
    if marker is not None:
        out.append(serialize(marker))
    return out


def returns_of(num_returns: Any, function: Any) -> tuple[int, str | None]:
    """How many return ids a call makes, and its generator mode."""
    mode = generator_mode(num_returns, function)
    if mode is not None:
        return 1, mode
    n = 1 if num_returns is None else num_returns
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(
            f"num_returns must be a non-negative integer, 'streaming' or 'dynamic', got {n!r}"
        )
    return n, None


def wrap_returns(refs: list, n: int, mode: str | None) -> Any:
    """What ``.remote()`` returns for the refs it made."""
    if mode == STREAMING:
        return ObjectRefGenerator(refs[0])
    if mode == DYNAMIC or n == 1:
        return refs[0]
    if n == 0:
        return None
    return refs


def node_count(n: int | None, default: int) -> int:
    """A Ray retry or restart count (``None``: the default; -1: no limit) as
    the node takes it (a u32)."""
    if n is None:
        n = default
    return 2**32 - 1 if n < 0 else n


class _Shipped:
    """A function or class put in the store once per session, as an object."""

    def __init__(self, obj: Any):
        self._obj = obj
        self._ref: ObjectRef | None = None
        self._session = -1

    def ref(self) -> ObjectRef:
        state = _runtime._state
        if self._ref is None or self._session != state.session:
            enc, data, buffers, contained = serialize(self._obj)
            if len(data) > (1 << 20):
                import warnings

                warnings.warn(
                    f"The remote function or actor class {getattr(self._obj, '__qualname__', '?')} "
                    f"is {len(data) >> 20} MiB when pickled; pass large data as arguments or "
                    "with put() instead of capturing it",
                    stacklevel=4,
                )
            self._ref = _native.put(enc, data, buffers, contained)
            self._session = state.session
        return self._ref


class RemoteFunction:
    """A function made remote by ``@remote``: call ``.remote(...)`` to run it as
    a task; ``.options(...)`` gives a copy with other options."""

    def __init__(self, function: Any, options: dict[str, Any], shipped: _Shipped | None = None):
        check_options(options, TASK_OPTIONS, "remote functions")
        self._function = function
        self._options = options
        self._shipped = shipped or _Shipped(function)
        self._name = f"{function.__module__}.{function.__qualname__}"
        # (return ids per call, generator mode)
        self._returns = returns_of(options.get("num_returns"), function)
        self._env = env_vars(options.get("runtime_env"))
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Remote functions cannot be called directly. Instead "
            f"of running '{self._function.__name__}()', "
            f"try '{self._function.__name__}.remote()'."
        )

    def options(self, **options: Any) -> RemoteFunction:
        if "max_calls" in options:
            raise ValueError("max_calls cannot be set with .options(); set it in @remote")
        merged = {**self._options, **options}
        return RemoteFunction(self._function, merged, self._shipped)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        _runtime.ensure_init()
        opts = self._options
        num_returns, mode = self._returns
        sargs = encode_args(
            args,
            kwargs,
            opts.get("retry_exceptions", False),
            self._env,
            mode is not None,
        )
        refs = _native.submit(
            NORMAL,
            self._name,
            self._shipped.ref(),
            sargs,
            [],
            num_returns,
            resource_request(opts, 1),
            node_count(opts.get("max_retries"), 3),
            0,
            0,
            None,
        )
        return wrap_returns(refs, num_returns, mode)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Ray DAGs (.bind) are not supported by Arca yet")
