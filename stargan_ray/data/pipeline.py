"""The Ray Data training pipeline: each Ray Train worker streams the chunks of its own lanes.

The rows are drawn by the rules of ``sampling`` (balanced sources, reference pairs, the official
augmentation), from the groups and chunks of ``layout``, and cut into steps by ``stream``. Here:

- The driver opens and validates the image table once (``prepare_train_data``) and puts it in
  the object store; the loop config carries its reference and a ``BadImageLog`` actor.
- Each worker runs its own Ray Data pipeline over the tasks its lanes need, from the step it
  starts at (``worker_batches``): one Ray task and one output block per chunk, in need order
  (``preserve_order``), decoded once. Every random choice comes from (seed, epoch, chunk), so
  the rows do not depend on which process runs a task, nor on the worker count.
- A worker that starts at step s (resume, restart after a failure, a PBT exploit) begins every
  lane at its position of step s: restart time does not grow with s.
- Images leave the tasks as uint8; the worker scales them and draws z (``stream.to_batch``).
"""

from __future__ import annotations

import itertools
import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from stargan_ray.data.layout import Stream, lanes_of
from stargan_ray.data.sampling import BadImageLog
from stargan_ray.data.stream import (Task, as_tensors, assemble, lane_tasks, make_stream,
                                     task_rows_in_process, to_batches)
from stargan_ray.data.table import ImageTable, open_train_table

if TYPE_CHECKING:
    import torch

    from stargan_ray.config import ExperimentConfig
    from stargan_ray.engine import Batch

log = logging.getLogger("stargan_ray.data")

MAX_WINDOW_TASKS = 2_048  # tasks per Ray dataset (the first covers the planned steps)


def prepare_train_data(cfg: "ExperimentConfig") -> dict[str, Any]:
    """On the driver: open and validate the training table (before any worker starts), put it
    in the object store, start the bad-file log; the result goes in the loop config."""
    import ray

    table, bad = open_train_table(cfg)
    bad_log = ray.remote(num_cpus=0)(BadImageLog).remote()
    if bad:
        bad_log.report.remote(bad)
    # domains: recorded in the run's checkpoints (TrainState.domains)
    return {"table": ray.put(table), "bad_log": bad_log, "domains": list(table.domains)}


def _ray_task(batch: dict[str, np.ndarray], *, table: ImageTable, stream: Stream,
              cfg: "ExperimentConfig", bad_log: Any) -> dict[str, np.ndarray]:
    (item,) = zip(*(batch[k].tolist() for k in ("lane", "task", "first")))  # one per Ray task
    report = (lambda items: bad_log.report.remote(items)) if bad_log is not None else None
    return task_rows_in_process(table, stream, cfg, report)(item)


def _dataset(tasks: list[Task], table: ImageTable, stream: Stream, cfg: "ExperimentConfig",
             bad_log: Any) -> "ray.data.Dataset":
    import ray

    fn = partial(_ray_task, table=table, stream=stream, cfg=cfg, bad_log=bad_log)
    items = [{"lane": lane, "task": task, "first": first} for lane, task, first in tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(fn, batch_size=None, num_cpus=1)
    ds.context.target_max_block_size = None  # one chunk, one block
    ds.context.execution_options.preserve_order = True  # blocks in need order
    return ds


def _rows(tasks: Iterator[Task], first_window: int, table: ImageTable, stream: Stream,
          cfg: "ExperimentConfig", bad_log: Any, prefetch_batches: int) -> Iterator[dict]:
    """The rows of `tasks` in order, one Ray dataset per window of tasks."""
    size = min(first_window, MAX_WINDOW_TASKS)
    while True:
        window = list(itertools.islice(tasks, size))
        ds = _dataset(window, table, stream, cfg, bad_log)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy",
                                   prefetch_batches=prefetch_batches)
        # Past the planned steps (a rollback moves the stream on): small windows from here.
        size = min(size, 2 * stream.lanes)


def _first_window(stream: Stream, lanes: range, start_step: int, steps: int) -> int:
    """Tasks the lanes need to cover `steps` steps from start_step (at least one per lane)."""
    need = 0
    for lane in lanes:
        task, first = stream.lane_position(lane, start_step)
        rows = stream.task_rows(task) - first
        need += 1
        while rows < steps:
            task += stream.lanes
            rows += stream.task_rows(task)
            need += 1
    return need


def worker_raw_batches(data: dict[str, Any], cfg: "ExperimentConfig", *, world_rank: int,
                       world_size: int, start_step: int, seed: int | None = None,
                       prefetch_batches: int = 2) -> Iterator[dict[str, "torch.Tensor"]]:
    """Endless uint8 rows of each step for one worker, from start_step, with no replay.

    data: what ``prepare_train_data`` returned (the table may also be given in place). The first
    Ray dataset covers the run's planned steps (up to MAX_WINDOW_TASKS tasks, so that Ray Data
    does not decode far ahead of need); further datasets follow when the run goes on.
    """
    import ray

    seed = cfg.train.seed if seed is None else seed
    table = data["table"]
    table = ray.get(table) if isinstance(table, ray.ObjectRef) else table
    stream = make_stream(cfg, table, seed)
    lanes = lanes_of(world_rank, world_size, cfg.data.batch_size)
    steps = max(cfg.train.total_iters - start_step, 1)
    rows = _rows(lane_tasks(stream, lanes, start_step),
                 _first_window(stream, lanes, start_step, steps), table, stream, cfg,
                 data.get("bad_log"), prefetch_batches)
    return as_tensors(assemble(stream, lanes, start_step, rows))


def worker_batches(data: dict[str, Any], cfg: "ExperimentConfig", *, world_rank: int,
                   world_size: int, start_step: int, device: "torch.device | str" = "cpu",
                   seed: int | None = None) -> Iterator["Batch"]:
    """Endless Batches on device for one Ray Train worker (``worker_raw_batches``)."""
    seed = cfg.train.seed if seed is None else seed
    raws = worker_raw_batches(data, cfg, world_rank=world_rank, world_size=world_size,
                              start_step=start_step, seed=seed)
    lanes = lanes_of(world_rank, world_size, cfg.data.batch_size)
    return to_batches(raws, cfg, seed, lanes, start_step, device)


__all__ = ["prepare_train_data", "worker_raw_batches", "worker_batches", "MAX_WINDOW_TASKS"]
