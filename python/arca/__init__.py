"""Arca: Ray Core rebuilt in Rust. ``import arca as ray`` runs Ray programs.

The API is Ray's: ``init``, ``remote``, ``get``, ``put``, ``wait``, ``cancel``,
``kill``, ``get_actor``, ``nodes``, ``cluster_resources``,
``available_resources``, ``get_runtime_context``, ``get_gpu_ids``,
``method``, ``ObjectRef`` and ``exceptions``. See docs/python.md.
"""

from __future__ import annotations

import inspect
from typing import Any

from . import exceptions
from ._native import ObjectRef
from ._runtime import (
    RayContext,
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    shutdown,
    wait,
)
from .actor import ActorClass, ActorHandle, get_actor, kill, method
from .remote_function import RemoteFunction

__version__ = "0.1.0"


def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(num_cpus=..., ...)`` on a function (a task) or a
    class (an actor)."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "The @ray.remote decorator must be applied either with no arguments and no "
            "parentheses, for example '@ray.remote', or it must be applied using some of the "
            "arguments in the list ['num_cpus', 'num_gpus', 'resources', 'memory', "
            "'num_returns', 'max_retries', 'retry_exceptions', 'max_restarts', "
            "'max_task_retries', 'max_concurrency', 'name', 'lifetime'], for example "
            "'@ray.remote(num_returns=2, resources={\"CustomResource\": 1})'."
        )
    return lambda f: _make_remote(f, options)


def _make_remote(obj: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError("The @ray.remote decorator must be applied to either a function or a class.")


__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "RayContext",
    "RemoteFunction",
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "util",
    "wait",
]


def __getattr__(name: str) -> Any:
    # `ray.util` after `import ray`, without loading it (or asyncio) up front.
    if name == "util":
        from . import util

        return util
    raise AttributeError(f"module 'arca' has no attribute {name!r}")
