"""The Ray Data training pipeline: one Ray task per chunk, split whole across Ray Train workers.

The rows are drawn by the rules of ``sampling`` (balanced sources, reference pairs, the official
augmentation), from the groups and chunks of ``layout``. Here:

- One chunk is one Ray Data task and one output block: ``sampling.chunk_rows`` in a task. Every
  random choice comes from (seed, epoch, chunk), so the rows do not depend on which process runs
  a task.
- With ``preserve_order`` (``train_data_config``) Ray's split hands the blocks to the workers
  deterministically, whole: workers see disjoint chunks, hence disjoint images, and the same seed
  and worker count give the same batches.
- Images leave the tasks as uint8; the worker scales them and draws z (``sampling.to_batch``).
- Skipped files go to one ``BadImageLog`` actor, so each is reported once.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from stargan_ray.data.folders import DataError
from stargan_ray.data.layout import Plan, epoch_of_step, epochs_needed, make_plan
from stargan_ray.data.sampling import BadImageLog, chunk_rows, to_batches
from stargan_ray.data.table import ImageTable, open_train_table

if TYPE_CHECKING:
    import ray.data
    import torch

    from stargan_ray.config import ExperimentConfig
    from stargan_ray.engine import Batch

log = logging.getLogger("stargan_ray.data")


def _ray_chunk(batch: dict[str, np.ndarray], *, table: ImageTable, plan: Plan, start_epoch: int,
               img_size: int, randcrop_prob: float, bad_log: Any) -> dict[str, np.ndarray]:
    (row,) = batch["id"].tolist()  # one descriptor row per task: (epoch, chunk) flattened
    epoch, index = start_epoch + row // plan.chunks_per_epoch, row % plan.chunks_per_epoch
    report = (lambda items: bad_log.report.remote(items)) if bad_log is not None else None
    return chunk_rows(table, plan, epoch, index, img_size, randcrop_prob, report)


def build_train_dataset(cfg: "ExperimentConfig", num_workers: int = 1, start_step: int = 0, *,
                        seed: int | None = None, bad_log: Any = None,
                        table: ImageTable | None = None) -> "ray.data.Dataset":
    """The Ray Dataset for ``TorchTrainer(datasets={"train": ...})``, built on the driver.

    Folder trees, prepared shards (a folder with manifest.json) and "synthetic" are all accepted
    as ``data.train_dir``. Validates train and val before any worker starts. Covers the epochs of
    steps start_step..train.total_iters for num_workers workers; pass ``train_data_config()`` as
    the trainer's dataset_config so the split is deterministic. ``bad_log`` is a BadImageLog actor
    handle (one is created when None).
    """
    import ray

    seed = cfg.train.seed if seed is None else seed
    bad = []
    if table is None:
        table, bad = open_train_table(cfg)
    if bad_log is None:
        bad_log = ray.remote(num_cpus=0)(BadImageLog).remote()
    if bad:
        bad_log.report.remote(bad)
    size = cfg.model.img_size
    plan = make_plan(table.counts, table.group_size, size, seed, num_workers)
    num_images = len(table.labels)
    start_epoch = epoch_of_step(start_step, cfg.data.batch_size, num_workers, num_images)
    num_tasks = epochs_needed(cfg, num_workers, start_step, num_images) * plan.chunks_per_epoch
    fn = partial(_ray_chunk, table=table, plan=plan, start_epoch=start_epoch, img_size=size,
                 randcrop_prob=cfg.data.randcrop_prob, bad_log=bad_log)
    ds = ray.data.range(num_tasks, override_num_blocks=num_tasks)
    ds = ds.map_batches(fn, batch_size=None, num_cpus=1)
    # One chunk = one block, so Ray's split hands a chunk to exactly one worker.
    ds.context.target_max_block_size = None
    return ds


def ingest_options():
    """Ray Train's default ingest ExecutionOptions with preserve_order on.

    With preserve_order the split assigns blocks in task order (ignoring locality), which makes
    each worker's batches a function of the seed and the worker count.
    """
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def train_data_config(names: tuple[str, ...] = ("train",)):
    """``ray.train.DataConfig`` for ``TorchTrainer(dataset_config=...)``: split the named
    training datasets across workers with ``ingest_options()``."""
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=list(names),
                      execution_options={name: ingest_options() for name in names})


def iter_raw_batches(shard: Any, batch_size: int, prefetch_batches: int = 4
                     ) -> Iterator[dict[str, "torch.Tensor"]]:
    """Endless uint8 row batches (with image ids and epoch) from a DataIterator or Dataset."""
    while True:
        got_any = False
        for raw in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device="cpu",
                                            prefetch_batches=prefetch_batches):
            got_any = True
            yield raw
        if not got_any:
            raise DataError(f"the training dataset produced no batch of {batch_size} rows")
        log.warning("training data ran past its planned epochs; starting over")


def iter_train_batches(shard: Any, cfg: "ExperimentConfig", *, seed: int | None = None,
                       world_rank: int = 0, device: "torch.device | str" = "cpu",
                       start_step: int = 0, prefetch_batches: int = 4) -> Iterator["Batch"]:
    """Endless Batches in a Ray Train worker from ``ray.train.get_dataset_shard("train")``.

    The shard covers the run's planned steps; should it run out, it starts over.
    """
    seed = cfg.train.seed if seed is None else seed
    raws = iter_raw_batches(shard, cfg.data.batch_size, prefetch_batches)
    return to_batches(raws, cfg, seed, world_rank, start_step, device)


__all__ = ["build_train_dataset", "train_data_config", "ingest_options", "iter_train_batches",
           "iter_raw_batches"]
