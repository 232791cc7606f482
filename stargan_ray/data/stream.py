"""A worker's training batches, step by step, from the lanes of ``layout`` (no Ray here).

Step s of a run trains on one row of every lane; worker r of W holds the lanes ``lanes_of(r, W,
data.batch_size)``. This module turns chunk rows into those per-step batches:

- ``lane_tasks`` lists the chunks (tasks) a worker's lanes read, from any step on, in the order
  the worker needs them; a task is read by one lane only, so each chunk is decoded once.
- ``assemble`` cuts a stream of rows that arrives in that order (whatever its block sizes) into
  the rows of each step. The in-process reader (``local_raw_batches``) and the Ray Data pipeline
  (``pipeline.worker_batches``) both feed it.
- ``to_batch`` scales the images on the device and draws z for the whole step from (seed, step),
  keeping the worker's rows, so z too is independent of the worker count.

A run that starts at step s (resume, restart, PBT exploit) starts every lane at its position of
step s (``Stream.lane_position``): nothing before it is read or decoded.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from stargan_ray.data.layout import Stream, lanes_of, make_plan
from stargan_ray.data.sampling import BadImageLog, chunk_rows, to_unit_range
from stargan_ray.data.table import ImageTable, open_train_table

if TYPE_CHECKING:
    import torch

    from stargan_ray.config import ExperimentConfig
    from stargan_ray.engine import Batch

Rows = dict[str, np.ndarray]
Task = tuple[int, int, int]  # (lane, task, first row of the task this lane still needs)


def make_stream(cfg: "ExperimentConfig", table: ImageTable, seed: int) -> Stream:
    """The lanes of a run: data.batch_size of them over the table's chunks."""
    lanes = cfg.data.batch_size
    plan = make_plan(table.counts, table.group_size, cfg.model.img_size, seed, lanes)
    return Stream.of(plan, len(table.labels), table.group_size, lanes)


def lane_tasks(stream: Stream, lanes: range, start_step: int) -> Iterator[Task]:
    """Endless (lane, task, first row) in the order the lanes need them from start_step.

    A lane needs its next task at the step its current one runs out; ties go to the lower lane,
    which is the order ``assemble`` asks in.
    """
    heap = []
    for lane in lanes:
        task, first = stream.lane_position(lane, start_step)
        heap.append((start_step, lane, task, first))
    heapq.heapify(heap)
    while True:
        step, lane, task, first = heapq.heappop(heap)
        yield lane, task, first
        heapq.heappush(heap, (step + stream.task_rows(task) - first, lane,
                              task + stream.lanes, 0))


def assemble(stream: Stream, lanes: range, start_step: int,
             rows: Iterator[Rows]) -> Iterator[Rows]:
    """The rows of each step from start_step on (lane order), from the rows of the tasks of
    ``lane_tasks`` concatenated in that order and cut into blocks of any size."""
    pending: list[Rows] = []  # blocks not fully used, oldest first
    used = 0  # rows of pending[0] already taken

    def take(n: int) -> Rows:
        nonlocal used
        parts: list[Rows] = []
        while n > 0:
            if not pending:
                pending.append(next(rows))
            block = pending[0]
            size = len(block["y_src"])
            k = min(n, size - used)
            parts.append({c: v[used:used + k] for c, v in block.items()})
            used, n = used + k, n - k
            if used == size:
                pending.pop(0)
                used = 0
        return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

    tasks = lane_tasks(stream, lanes, start_step)
    left = {lane: 0 for lane in lanes}  # rows each lane has left of its current task
    current: dict[int, Rows] = {}
    offset = {lane: 0 for lane in lanes}
    while True:
        for lane in lanes:
            if left[lane] == 0:
                got, task, first = next(tasks)
                assert got == lane, (got, lane)  # lane_tasks orders by need
                left[lane] = stream.task_rows(task) - first
                current[lane], offset[lane] = take(left[lane]), 0
        step_rows = {c: np.stack([current[lane][c][offset[lane]] for lane in lanes])
                     for c in current[lanes[0]]}
        for lane in lanes:
            offset[lane] += 1
            left[lane] -= 1
        yield step_rows


def task_rows_in_process(table: ImageTable, stream: Stream, cfg: "ExperimentConfig",
                         report: Callable | None) -> Callable[[Task], Rows]:
    """Rows a task gives from its first needed row (for the in-process reader and Ray tasks)."""
    def rows_of(item: Task) -> Rows:
        _, task, first = item
        epoch, index = stream.task_chunk(task)
        out = chunk_rows(table, stream.plan, epoch, index, cfg.model.img_size,
                         cfg.data.randcrop_prob, report, cfg.data.fit)
        return {c: v[first:] for c, v in out.items()}

    return rows_of


def to_batch(raw: dict[str, "torch.Tensor"], latent_dim: int, seed: int, step: int,
             lanes: range, total: int, device: "torch.device | str" = "cpu") -> "Batch":
    """A Batch on device from one step's rows of `lanes`: images to [-1, 1] there, z drawn for
    all `total` rows of the step from (seed, step) and cut to these lanes."""
    import torch

    from stargan_ray.engine import Batch

    state = np.random.SeedSequence([seed, step, 0x2]).generate_state(1, np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state >> np.uint64(1)))
    z_trg = torch.randn(total, latent_dim, generator=gen)[lanes.start:lanes.stop]
    z_trg2 = torch.randn(total, latent_dim, generator=gen)[lanes.start:lanes.stop]
    return Batch(x_src=to_unit_range(raw["x_src"].to(device)), y_src=raw["y_src"].to(device),
                 x_ref=to_unit_range(raw["x_ref"].to(device)),
                 x_ref2=to_unit_range(raw["x_ref2"].to(device)), y_ref=raw["y_ref"].to(device),
                 z_trg=z_trg.to(device), z_trg2=z_trg2.to(device))


def to_batches(raws: Iterator[dict[str, "torch.Tensor"]], cfg: "ExperimentConfig", seed: int,
               lanes: range, start_step: int, device: "torch.device | str") -> Iterator["Batch"]:
    """Batches on device from per-step rows, step by step from start_step (shared with Ray)."""
    for step, raw in enumerate(raws, start=start_step):
        yield to_batch(raw, cfg.model.latent_dim, seed, step, lanes, cfg.data.batch_size, device)


def as_tensors(steps: Iterator[Rows]) -> Iterator[dict[str, "torch.Tensor"]]:
    import torch

    for rows in steps:
        yield {c: torch.from_numpy(v) for c, v in rows.items()}


def local_raw_batches(cfg: "ExperimentConfig", seed: int | None = None, *, world_rank: int = 0,
                      world_size: int = 1, start_step: int = 0, table: ImageTable | None = None,
                      bad_log: BadImageLog | None = None) -> Iterator[dict[str, "torch.Tensor"]]:
    """Endless uint8 rows of each step for one worker, in this process, by the rules of the Ray
    pipeline (the same rows for the same seed, worker share and step)."""
    seed = cfg.train.seed if seed is None else seed
    bad_log = bad_log if bad_log is not None else BadImageLog()
    if table is None:
        table, bad = open_train_table(cfg)
        bad_log.report(bad)
    stream = make_stream(cfg, table, seed)
    lanes = lanes_of(world_rank, world_size, cfg.data.batch_size)
    rows_of = task_rows_in_process(table, stream, cfg, bad_log.report)
    rows = map(rows_of, lane_tasks(stream, lanes, start_step))
    return as_tensors(assemble(stream, lanes, start_step, rows))


def local_batches(cfg: "ExperimentConfig", seed: int | None = None, *, world_rank: int = 0,
                  world_size: int = 1, start_step: int = 0, device: "torch.device | str" = "cpu",
                  table: ImageTable | None = None, bad_log: BadImageLog | None = None
                  ) -> Iterator["Batch"]:
    """Endless Batches in this process (no Ray): for unit tests of the core and benchmarks."""
    seed = cfg.train.seed if seed is None else seed
    raws = local_raw_batches(cfg, seed, world_rank=world_rank, world_size=world_size,
                             start_step=start_step, table=table, bad_log=bad_log)
    lanes = lanes_of(world_rank, world_size, cfg.data.batch_size)
    return to_batches(raws, cfg, seed, lanes, start_step, device)


__all__ = ["make_stream", "lane_tasks", "assemble", "task_rows_in_process", "to_batch",
           "to_batches", "as_tensors", "local_raw_batches", "local_batches"]
