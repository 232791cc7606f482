"""Where each image sits, and which rows each step of a run trains on.

Images are put once in a canonical order that spreads every domain evenly (``spread_order``) and
cut into groups of ``GROUP_SIZE`` (a Parquet row group in prepared shards, a run of files in a
folder tree). Each epoch a seeded permutation deals the groups into chunks of a few groups
(``Plan``); a chunk is the unit one task reads and turns into training rows, one row per image of
the chunk's groups.

Lanes make the stream a function of the step alone. A step trains on ``data.batch_size`` rows,
one from each lane; lane j reads the chunks of tasks j, j + B, j + 2B, ... (task = epoch x
chunks per epoch + chunk, B lanes) one row per step. Worker r of W takes lanes
``lanes_of(r, W, B)``, so the rows of a step do not depend on the worker count, and, since every
chunk's row count is known from the table alone, the position of any step in every lane is
arithmetic (``lane_position``): a resumed or restarted run starts there without replaying.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GROUP_SIZE = 64  # images per group: the unit a task reads (a Parquet row group in shards)
ORDER_SEED = 0  # fixed, so `prepare` writes shards in the order the folder pipeline uses
MIN_PER_DOMAIN = 4  # chunks are sized so each domain expects at least this many images
CHUNK_OUTPUT_BYTES = 64 << 20  # soft cap on one chunk's output block
IMAGE_COLUMNS = ("x_src", "x_ref", "x_ref2")


def spread_order(labels: np.ndarray, seed: int = ORDER_SEED) -> np.ndarray:
    """A permutation that shuffles each domain and interleaves domains in proportion.

    Image j of a domain with n images lands near position (j + u) / n of the whole order, so any
    run of the order holds every domain in its global share (small domains included).
    """
    rng = np.random.default_rng([seed, 0x5EED])
    order, keys = [], []
    for label in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.flatnonzero(labels == label)
        order.append(rng.permutation(members))
        n = max(len(members), 1)
        keys.append((np.arange(len(members)) + rng.uniform(0, 1, len(members))) / n)
    order_arr, keys_arr = np.concatenate(order), np.concatenate(keys)
    return order_arr[np.argsort(keys_arr, kind="stable")]


@dataclass(frozen=True)
class Plan:
    """Which groups form which chunk in each epoch."""

    num_groups: int
    groups_per_chunk: int
    seed: int

    @property
    def chunks_per_epoch(self) -> int:
        return math.ceil(self.num_groups / self.groups_per_chunk)

    def chunk(self, epoch: int, index: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch, 0xC4A]).permutation(self.num_groups)
        return perm[index * self.groups_per_chunk:(index + 1) * self.groups_per_chunk]


def make_plan(counts: list[int], group_size: int, img_size: int, seed: int,
              lanes: int = 1) -> Plan:
    """Chunk size: every domain expects MIN_PER_DOMAIN images per chunk (first), each lane gets
    a chunk per epoch, and a chunk's output block stays near CHUNK_OUTPUT_BYTES. It depends on
    the data and the total batch (lanes), never on the worker count."""
    total, smallest = sum(counts), min(counts)
    num_groups = math.ceil(total / group_size)
    for_domains = math.ceil(MIN_PER_DOMAIN * total / (smallest * group_size))
    row_bytes = len(IMAGE_COLUMNS) * 3 * img_size * img_size
    for_bytes = max(1, min(4, CHUNK_OUTPUT_BYTES // (row_bytes * group_size)))
    for_lanes = max(1, num_groups // lanes)
    groups = max(for_domains, min(for_bytes, for_lanes))
    return Plan(num_groups, min(num_groups, groups), seed)


def lanes_of(rank: int, world_size: int, lanes: int) -> range:
    """The lanes worker `rank` of `world_size` reads: a contiguous share, sizes differing by at
    most one (equal when world_size divides lanes)."""
    return range(rank * lanes // world_size, (rank + 1) * lanes // world_size)


@dataclass(frozen=True)
class Stream:
    """Row counts of every task of a run: the arithmetic behind lanes (module docstring)."""

    plan: Plan
    group_rows: tuple[int, ...]  # images per group, in group order
    lanes: int

    @classmethod
    def of(cls, plan: Plan, num_images: int, group_size: int, lanes: int) -> "Stream":
        rows = tuple(min(group_size, num_images - g * group_size) for g in range(plan.num_groups))
        return cls(plan, rows, lanes)

    def task_chunk(self, task: int) -> tuple[int, int]:
        """(epoch, chunk index) of a task."""
        return divmod(task, self.plan.chunks_per_epoch)

    def task_rows(self, task: int) -> int:
        """Rows a task gives: one per image of its chunk's groups."""
        return sum(self.group_rows[int(g)] for g in self.plan.chunk(*self.task_chunk(task)))

    def epoch_rows(self, lane: int, epoch: int) -> int:
        """Rows of lane `lane` from the tasks of one epoch."""
        c = self.plan.chunks_per_epoch
        first = epoch * c + (lane - epoch * c) % self.lanes
        return sum(self.task_rows(t) for t in range(first, (epoch + 1) * c, self.lanes))

    def lane_position(self, lane: int, step: int) -> tuple[int, int]:
        """(task, row within that task) that lane `lane` reads at `step`.

        Whole epochs are skipped by their row sums, so the cost grows with the epochs of the run
        (one permutation each), not with the rows or images before the step.
        """
        c, epoch = self.plan.chunks_per_epoch, 0
        while step >= (rows := self.epoch_rows(lane, epoch)):
            step -= rows
            epoch += 1
        task = epoch * c + (lane - epoch * c) % self.lanes
        while step >= (rows := self.task_rows(task)):
            step -= rows
            task += self.lanes
        return task, step


__all__ = ["GROUP_SIZE", "ORDER_SEED", "MIN_PER_DOMAIN", "CHUNK_OUTPUT_BYTES", "IMAGE_COLUMNS",
           "spread_order", "Plan", "make_plan", "lanes_of", "Stream"]
