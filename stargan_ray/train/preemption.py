"""Spot nodes: Ray Train's preemption notices, answered with a just-in-time checkpoint.

When a node of the run is about to be reclaimed (autoscaler v2, or `ray drain-node --reason
DRAIN_NODE_REASON_PREEMPTION` by hand), Ray Train hands every worker a PreemptionInfo through
ray.train.get_preemption_info(). The loop asks every train.preemption_check_every steps (the call
is a barrier: every rank asks at the same steps) and, on a notice it has not seen, saves the
current step as an ordinary checkpoint and keeps training until the node goes. Ray then restarts
the run (counted against train.max_preemptions, apart from --max-failures), which resumes from
that checkpoint: a preemption costs only the steps after the notice.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def ask_ray():
    """ray.train.get_preemption_info(): None, or the PreemptionInfo of a coming reclaim."""
    import ray.train

    return ray.train.get_preemption_info()


class PreemptionWatch:
    """Asks at a fixed cadence of steps; each distinct notice is answered once."""

    def __init__(self, every: int, ask: Callable[[], Any] = ask_ray) -> None:
        self.every = every
        self.ask = ask
        self.seen: set[tuple] = set()

    def poll(self, step: int) -> dict[str, Any] | None:
        """The new notice's description (for the run's events), or None."""
        if self.every <= 0 or step % self.every:
            return None
        info = self.ask()
        if info is None:
            return None
        nodes = info.preempted_node_to_ranks or {}
        key = (info.deadline_ms, tuple(sorted(nodes)))
        if key in self.seen:
            return None
        self.seen.add(key)
        deadline_s = None if info.deadline_ms is None else \
            round(info.deadline_ms / 1000 - time.time(), 1)
        return {"deadline_in_s": deadline_s, "nodes": sorted(nodes),
                "ranks": sorted({r for ranks in nodes.values() for r in ranks})}


__all__ = ["PreemptionWatch", "ask_ray"]
