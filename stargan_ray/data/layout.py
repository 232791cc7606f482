"""Where each image sits: the canonical order, its groups, and which groups form a chunk.

Images are put once in a canonical order that spreads every domain evenly (``spread_order``) and
cut into groups of ``GROUP_SIZE`` (a Parquet row group in prepared shards, a run of files in a
folder tree). Each epoch a seeded permutation deals the groups into chunks of a few groups
(``Plan``); a chunk is the unit one task reads and turns into training rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stargan_ray.config import ExperimentConfig

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
              num_workers: int = 1) -> Plan:
    """Chunk size: every domain expects MIN_PER_DOMAIN images per chunk (first), each worker
    gets about two chunks per epoch, and a chunk's output block stays near CHUNK_OUTPUT_BYTES."""
    total, smallest = sum(counts), min(counts)
    num_groups = math.ceil(total / group_size)
    for_domains = math.ceil(MIN_PER_DOMAIN * total / (smallest * group_size))
    row_bytes = len(IMAGE_COLUMNS) * 3 * img_size * img_size
    for_bytes = max(1, min(4, CHUNK_OUTPUT_BYTES // (row_bytes * group_size)))
    for_workers = max(1, num_groups // (2 * num_workers))
    groups = max(for_domains, min(for_bytes, for_workers))
    return Plan(num_groups, min(num_groups, groups), seed)


def epoch_of_step(step: int, batch_size: int, world_size: int, num_images: int) -> int:
    return step * batch_size * world_size // num_images


def epochs_needed(cfg: "ExperimentConfig", world_size: int, start_step: int,
                  num_images: int) -> int:
    """Epochs that cover the remaining steps of all workers, plus one for uneven chunks."""
    rows = max(cfg.train.total_iters - start_step, 1) * cfg.data.batch_size * world_size
    return math.ceil(rows / num_images) + 1


__all__ = ["GROUP_SIZE", "ORDER_SEED", "MIN_PER_DOMAIN", "CHUNK_OUTPUT_BYTES", "IMAGE_COLUMNS",
           "spread_order", "Plan", "make_plan", "epoch_of_step", "epochs_needed"]
