"""Ray's ``ray.util`` helpers built on the core API: ``ActorPool``,
``queue.Queue`` (an async actor), ``scheduling_strategies``,
``get_node_ip_address`` and ``inspect_serializability``."""

from __future__ import annotations

import importlib
from typing import Any

from .actor_pool import ActorPool

__all__ = [
    "ActorPool",
    "get_node_ip_address",
    "inspect_serializability",
    "multiprocessing",
    "placement_group",
    "queue",
    "scheduling_strategies",
]


def get_node_ip_address() -> str:
    """The IP of the node this process runs on (127.0.0.1 outside a cluster)."""
    from .. import _runtime

    _runtime.ensure_init()
    return _runtime._node_ip()


def inspect_serializability(
    base_obj: Any, name: str | None = None, **_: Any
) -> tuple[bool, set[str]]:
    """Whether ``base_obj`` pickles as a task argument or result would, and if
    not, where the unpicklable part sits (the path Arca's own error names)."""
    from .. import _serialization

    try:
        _serialization.serialize(base_obj)
    except Exception as e:  # noqa: BLE001 - any pickling failure is the answer
        return False, {str(e)}
    return True, set()


def placement_group(*args: Any, **kwargs: Any) -> Any:
    """Placement groups are not supported: raises."""
    raise NotImplementedError(
        "placement groups are not supported by Arca yet; use resources= (custom resources, "
        "or node:<IP> to pin to a node) or NodeAffinitySchedulingStrategy to place work"
    )


# Submodules loaded on first use (`queue` imports asyncio).
_LAZY = frozenset({"queue", "scheduling_strategies", "multiprocessing"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'arca.util' has no attribute {name!r}")
