"""Ray's scheduling strategies: ``NodeAffinitySchedulingStrategy`` runs a
task or actor on one node (``soft``: there if it is alive, else anywhere).
Arca places it by that node's ``node:<IP>`` resource, so nodes that share
an IP count as one. Placement groups and label selectors are not
supported: constructing those strategies raises."""

from __future__ import annotations

from typing import Any

__all__ = [
    "NodeAffinitySchedulingStrategy",
    "NodeLabelSchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
]


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (a ``nodes()`` ``NodeID``). With ``soft``,
    run anywhere if that node is gone; without, fail with
    ``TaskUnschedulableError`` (``ActorUnschedulableError`` for an actor)."""

    def __init__(
        self,
        node_id: str,
        soft: bool,
        _spill_on_unavailable: bool = False,
        _fail_on_unavailable: bool = False,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("NodeAffinitySchedulingStrategy needs a node id (a hex string)")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


def _unsupported(what: str) -> None:
    raise NotImplementedError(
        f"{what} is not supported by Arca yet; use resources= (custom resources, or "
        "node:<IP> to pin to a node) or NodeAffinitySchedulingStrategy"
    )


class PlacementGroupSchedulingStrategy:
    def __init__(self, placement_group: Any, *args: Any, **kwargs: Any) -> None:
        _unsupported("PlacementGroupSchedulingStrategy (placement groups)")


class NodeLabelSchedulingStrategy:
    def __init__(self, hard: Any, *args: Any, **kwargs: Any) -> None:
        _unsupported("NodeLabelSchedulingStrategy")
