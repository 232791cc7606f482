"""One evaluation split over the ranks of a process group: each rank runs a strided share of the
plan's items, then the ranks add up what they computed, so every rank ends with the whole result.

Nothing here knows about torch.distributed or Ray: the caller passes `reduce`, a function that
returns the elementwise sum of a tensor over all ranks (train.quick_eval passes one built on
torch.distributed.all_reduce; the tests pass one that adds the tensors of threads). Every rank
calls it the same number of times, with tensors of the same shapes, in the same order.

What is added:
- the moment sums (float64 n, sum x, sum x x^T) of each key, which add by construction;
- the feature rows, each item in a slot of its own in plan order (zeros where another rank's item
  goes), so the sum is the rows of the single-process run, bit for bit and in the same order;
- per-item row counts (an unreadable train file leaves a slot short) and LPIPS values, the same way.
The sums differ from a single process only in the order of float64 additions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import fid as fidlib
from .eval_plan import Item

Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """This process's place in the group, and the elementwise sum over the group's ranks."""

    rank: int
    world: int
    reduce: Reduce

    @classmethod
    def of(cls, shard: tuple[int, int] | None, reduce: Reduce | None) -> "Shard | None":
        """None for one process; a ValueError for a rank outside the world or no reduce."""
        if shard is None or shard[1] == 1:
            return None
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard: rank {rank} is not in a world of {world}")
        if reduce is None:
            raise ValueError(f"shard {rank} of {world}: needs a reduce function")
        return cls(rank, world, reduce)

    def take(self, items: Sequence[Item]) -> list[Item]:
        """This rank's items: strided, so each rank gets every kind and task (balanced)."""
        return list(items[self.rank::self.world])


def agree_on_misses(shard: Shard, misses: Sequence[bool]) -> list[bool]:
    """True where any rank lacks the cached statistics: all ranks compute those together (ranks
    on other nodes may have other caches, and each rank must call reduce as often as the others)."""
    flags = torch.tensor([float(m) for m in misses], dtype=torch.float64)
    return [bool(v > 0) for v in shard.reduce(flags).tolist()]


def capacity(item: Item, num_outs: int) -> int:
    """Feature rows an item yields at most: one per real file, num_outs per source."""
    return len(item.indices) * (1 if item.kind == "real" else num_outs)


def merge_moments(shard: Shard, items: Sequence[Item], num_outs: int,
                  local_counts: dict[int, int], local: dict[tuple, fidlib.FeatureMoments]
                  ) -> dict[tuple, fidlib.FeatureMoments]:
    """The moments of every key of the plan (items), from each rank's own.

    local_counts: plan index -> rows that item gave on this rank (this rank's items only);
    local: this rank's moments, each key's rows in the plan order of its items.
    """
    counts = torch.zeros(len(items), dtype=torch.float64)
    for i, count in local_counts.items():
        counts[i] = count
    totals = [int(round(c)) for c in shard.reduce(counts).tolist()]
    merged: dict[tuple, fidlib.FeatureMoments] = {}
    for key in dict.fromkeys(item.key for item in items):  # plan order: the same on every rank
        plan = [i for i, item in enumerate(items) if item.key == key]
        mine = local.get(key)
        dim = fidlib.FEATURE_DIM if mine is None else mine.sum.shape[0]
        if mine is None:
            mine = fidlib.FeatureMoments.zeros(dim)
        sums = shard.reduce(torch.cat([mine.sum.cpu(), mine.outer.cpu().reshape(-1)]))
        rows = _merge_rows(shard, [(i, capacity(items[i], num_outs)) for i in plan],
                           local_counts, mine.rows, dim)
        parts = [rows[start:start + totals[i]] for i, start in _slots(plan, items, num_outs)]
        merged[key] = fidlib.FeatureMoments(sum(totals[i] for i in plan), sums[:dim],
                                            sums[dim:].view(dim, dim), [torch.cat(parts)])
    return merged


def _slots(plan: list[int], items: Sequence[Item], num_outs: int) -> list[tuple[int, int]]:
    """(plan index, first row of its slot) for the items of one key."""
    starts, at = [], 0
    for i in plan:
        starts.append((i, at))
        at += capacity(items[i], num_outs)
    return starts


def _merge_rows(shard: Shard, slots: list[tuple[int, int]], local_counts: dict[int, int],
                rows: torch.Tensor | None, dim: int) -> torch.Tensor:
    """All ranks' rows of one key, each item's at the start of its slot (float32 + zeros: exact)."""
    buffer = torch.zeros(sum(cap for _, cap in slots), dim, dtype=torch.float32)
    at, read = 0, 0
    for i, cap in slots:
        count = local_counts.get(i, 0)
        if count:
            buffer[at:at + count] = rows[read:read + count]
            read += count
        at += cap
    return shard.reduce(buffer)


def merge_lpips(shard: Shard, items: Sequence[Item], local: dict[tuple, dict[int, float]]
                ) -> dict[tuple, dict[int, float]]:
    """Per-source LPIPS of every fake item, from the rank that ran it (row 1 marks a value)."""
    slots = [(item.key, source) for item in items if item.kind == "fake" for source in item.indices]
    table = torch.zeros(2, len(slots), dtype=torch.float64)
    for k, (key, source) in enumerate(slots):
        if source in local.get(key, {}):
            table[0, k], table[1, k] = local[key][source], 1.0
    table = shard.reduce(table)
    merged: dict[tuple, dict[int, float]] = {}
    for k, (key, source) in enumerate(slots):
        if table[1, k] > 0:
            merged.setdefault(key, {})[source] = float(table[0, k])
    return merged


__all__ = ["Shard", "Reduce", "agree_on_misses", "capacity", "merge_moments", "merge_lpips"]
