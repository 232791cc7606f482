"""The Ray Train worker: restore, then engine.train_step until total_iters, logs, checkpoints.

Gradient averaging: after each backward the gradients of the networks being stepped are flattened
into one buffer, all-reduced and divided by the world size (the approach of NVlabs/stylegan3's
training loop) instead of wrapping the networks in DistributedDataParallel. StarGAN v2 runs the
generator up to three times per backward, R1 differentiates through a gradient (create_graph,
which DDP's reducer does not support), and each of the four optimiser steps updates a different
subset of the networks while the others are frozen; DDP's bucketing hooks and unused-parameter
detection fit none of that, while one explicit all-reduce per optimiser step is exact and simple.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CHECKPOINT_FILE, load_state_into, safe_load, state_dict
from ..config import from_dict
from ..engine import Batch, TrainState, build_optimizers, train_step
from ..errors import UserError
from ..storage import filesystem, join, write_bytes
from ..transfer import init_from
from .best import keep_best
from .plan import CHECKPOINT_PREFIX, StartPoint, folder_step, local_file


def make_grad_sync(world_size: int, rows: int | None = None, total: int | None = None):
    """All-reduce (mean) the gradients of the given networks as one flat buffer.

    rows / total: this worker's rows of the step's total. When shares differ (an elastic run
    whose worker count does not divide the total), each gradient is weighted by its rows, so
    the mean is the whole batch's gradient as with equal shares.
    """
    import torch.distributed as dist

    weight = None if rows is None or rows * world_size == total else rows * world_size / total

    def sync(modules: list[nn.Module]) -> None:
        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        if weight is not None:
            flat *= weight
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    return sync


def make_sum_sync():
    """Sum a tensor over all workers in place (ADA's sign statistics: integers, exact)."""
    import torch.distributed as dist

    def sync(tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor)

    return sync


class StatsWindow:
    """Sums of the step stats on the device between two logs, and the first non-finite step."""

    def __init__(self) -> None:
        self.keys: list[str] | None = None
        self.sums: torch.Tensor | None = None
        self.first_bad: torch.Tensor | None = None
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor], step: int) -> None:
        if self.keys is None:
            self.keys = list(stats)
        values = torch.stack([stats[k].detach().float() for k in self.keys])
        if self.sums is None:
            self.sums = torch.zeros_like(values)
            self.first_bad = torch.full_like(values, math.inf)
        self.sums += values
        bad_now = ~torch.isfinite(values)
        self.first_bad = torch.where(bad_now & torch.isinf(self.first_bad),
                                     torch.full_like(values, float(step)), self.first_bad)
        self.steps += 1

    def reduce(self, world_size: int) -> tuple[dict[str, float], tuple[str, int] | None]:
        """Mean over steps and workers (one all-reduce); the first non-finite (stat, step)."""
        import torch.distributed as dist

        sums, first_bad = self.sums.clone(), self.first_bad.clone()
        if world_size > 1:
            dist.all_reduce(sums)
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        means = (sums / (self.steps * world_size)).cpu().tolist()
        first_bad_list = first_bad.cpu().tolist()
        bad = [(s, k) for k, s in zip(self.keys, first_bad_list) if math.isfinite(s)]
        worst = min(bad) if bad else None
        return dict(zip(self.keys, means)), (None if worst is None else (worst[1], int(worst[0])))


def weights_finite(state: TrainState) -> bool:
    """True when every weight of nets and nets_ema is finite (EMA nets are what users sample)."""
    flags = [torch.isfinite(p).all() for nets in (state.nets, state.nets_ema)
             for _, m in nets.items() for p in m.parameters()]
    return bool(torch.stack(flags).all())


class NonFiniteWeights(RuntimeError):
    """A save step found non-finite weights: no checkpoint is written, and Ray Train counts the
    worker as failed (it restarts from the last checkpoint, up to max_failures)."""


class TrainingStopped(UserError):
    """The run stopped itself (non-finite loss); the message names the loss and the step."""


MAX_ROLLBACKS = 3
STOP_MARKER = "STOPPED.json"


def _stop(run_dir: str, logger, rank: int, message: str) -> None:
    """Every rank leaves the loop; rank 0 records why in the run folder for the driver."""
    logger.event("stopped", reason=message)
    if rank == 0:
        write_bytes(join(run_dir, STOP_MARKER), json.dumps({"reason": message}).encode())


def read_stop_marker(run_dir: str) -> str | None:
    """Why the run stopped itself (and the marker is removed), or None when it did not."""
    import pyarrow.fs as pafs

    fs, path = filesystem(run_dir)
    marker = f"{path}/{STOP_MARKER}"
    if fs.get_file_info(marker).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(marker) as f:
        reason = json.loads(f.read().decode())["reason"]
    fs.delete_file(marker)
    return reason


def _lrs(state: TrainState) -> dict[str, float]:
    return {f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in state.optims.items()}


def _console_line(step: int, total: int, metrics: dict[str, float], images_per_s: float,
                  eta_s: float) -> str:
    keys = ("D/latent_real", "D/latent_fake", "D/latent_reg", "G/latent_adv", "G/latent_sty",
            "G/latent_ds", "G/latent_cyc", "G/ref_cyc", "G/lambda_ds")
    losses = " ".join(f"{k}={metrics[k]:.3f}" for k in keys if k in metrics)
    eta = time.strftime("%H:%M:%S", time.gmtime(max(eta_s, 0)))
    return f"[{step}/{total}] {losses} | {images_per_s:.1f} img/s | ETA {eta}"


def _save_report(state: TrainState, metrics: dict[str, Any], rank: int) -> None:
    """Every rank reports (a barrier); rank 0 attaches the complete state as a checkpoint."""
    import ray.train

    if not weights_finite(state):
        raise NonFiniteWeights(f"non-finite weights at step {state.step}; checkpoint not written")
    name = f"{CHECKPOINT_PREFIX}{state.step:08d}"
    if rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state_dict(state), Path(tmp) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=name)

def _restore(state: TrainState, data: dict[str, Any]) -> None:
    load_state_into(state, data)
    # Optimiser hyperparameters come from the config, not the checkpoint: a PBT trial restores
    # another trial's state with mutated values (and a resumed run may change optim.lr).
    for name, fresh in build_optimizers(state.cfg, state.nets).items():
        for group, fresh_group in zip(state.optims[name].param_groups, fresh.param_groups):
            group.update({k: v for k, v in fresh_group.items() if k != "params"})


def _restore_newest(state: TrainState, own, start: StartPoint | None) -> None:
    """Restore the newer of Ray's checkpoint of this run (after a worker failure) and the start
    checkpoint the driver chose (ties go to Ray's: it is the same or a later copy)."""
    own_step = None if own is None else folder_step(own.path)
    if start is not None and (own is None or (own_step is not None and own_step < start.step)):
        with local_file(start.uri) as local:
            _restore(state, safe_load(local, state.device))
    elif own is not None:
        with own.as_directory() as folder:
            _restore(state, safe_load(Path(folder) / CHECKPOINT_FILE, state.device))


def _quiet_train_reports() -> None:
    """Ray Train logs every ray.train.report of every worker at INFO, metrics included: a flood
    next to our one line per print_every. Its logger is named after its file."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logs
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: restore, then train_step until total_iters with logs and checkpoints."""
    import ray.train
    import ray.train.torch

    from ..data.layout import lanes_of
    from ..data.pipeline import worker_batches
    from ..run_logging import RunLogger
    from .cluster import quiet_ray_data

    cfg = from_dict(loop_config["cfg"])
    _quiet_train_reports()
    quiet_ray_data()  # each worker runs its own Ray Data pipeline: no progress lines from it
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(loop_config.get("threads_per_worker", 1))))
    state = TrainState.create(cfg, device)  # the same seed on every rank: identical networks
    start = loop_config.get("start_checkpoint")
    _restore_newest(state, ray.train.get_checkpoint(),
                    StartPoint(start["step"], start["uri"]) if start else None)
    state.domains = tuple(loop_config["data"]["domains"])  # this run's data names them
    init, init_note = loop_config.get("init_from"), None
    if init and start is None and ray.train.get_checkpoint() is None:  # a new run, not a restart
        with local_file(init["uri"]) as local:
            init_note = init_from(state, local, init["map"])
    state.rows = lanes_of(rank, world, cfg.data.batch_size)  # ADA draws by row, not by worker
    if world > 1:
        rows = len(lanes_of(rank, world, cfg.data.batch_size))
        state.grad_sync = make_grad_sync(world, rows, cfg.data.batch_size)
        state.stat_sync = make_sum_sync()
    # The data stream is a function of (seed, step): this worker's lanes start at the restored
    # step, so a resumed, restarted or exploited run reads nothing before it and sees exactly the
    # batches an uninterrupted run would, whatever the worker count.
    batches = worker_batches(loop_config["data"], cfg, world_rank=rank, world_size=world,
                             start_step=state.step, device=device)
    logger = RunLogger(cfg, loop_config, rank=rank, world=world, device=device)
    logger.event("start", step=state.step, pid=os.getpid(), workers=world)
    if init_note:
        logger.event("init_from", summary=init_note)
    _train(state, batches, logger, rank, world, loop_config)
    logger.finish()


def _train(state: TrainState, batches, logger, rank: int, world: int,
           loop_config: dict[str, Any]) -> None:
    cfg = state.cfg
    t = cfg.train
    window = StatsWindow()
    last_good = None  # CPU copy of the state at the last checkpoint, for nan_policy=rollback
    rollbacks = 0
    run_started, start_step = time.perf_counter(), state.step
    while state.step < t.total_iters:
        batch: Batch = next(batches)
        window.add(train_step(state, batch), state.step - 1)
        step = state.step
        check = step % t.print_every == 0 or step % t.save_every == 0 or step == t.total_iters
        if not check:
            continue
        metrics, bad = window.reduce(world)
        if bad is not None:
            message = f"loss {bad[0]} is not finite at step {bad[1]}"
            if t.nan_policy == "rollback" and last_good is not None and rollbacks < MAX_ROLLBACKS:
                # Back to the last checkpoint; the data stream moves on, so the batches that
                # led to the non-finite loss are not replayed.
                rollbacks += 1
                load_state_into(state, last_good)
                logger.event("rollback", step=state.step, reason=message)
                window = StatsWindow()
                continue
            _stop(loop_config["run_dir"], logger, rank,
                  f"{message} (train.nan_policy={t.nan_policy}, {rollbacks} rollbacks);"
                  f" the last checkpoint holds finite weights")
            return
        elapsed = time.perf_counter() - window.started
        images_per_s = window.steps * cfg.data.batch_size / max(elapsed, 1e-9)
        eta = (t.total_iters - step) * (time.perf_counter() - run_started) / max(step - start_step, 1)
        metrics.update(_lrs(state), step=step, images_per_s=images_per_s, eta_s=eta)
        if state.device.type == "cuda":  # the run's peak so far (benchmarks/gpu_train.py)
            metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated(state.device) / 2**30
        window = StatsWindow()
        if step % t.print_every == 0 or step == t.total_iters:
            logger.log(step, metrics, _console_line(step, t.total_iters, metrics, images_per_s, eta))
        if step % t.sample_every == 0 or step == t.total_iters:
            logger.samples(state, step)
        if step % t.eval_every == 0:  # not forced at the end: a full evaluation usually follows
            metrics.update(logger.evaluate(state, step))
        saved = step % t.save_every == 0 or step == t.total_iters
        if saved:
            _save_report(state, metrics, rank)
            if t.nan_policy == "rollback":
                last_good = _cpu_copy(state_dict(state))
        else:
            import ray.train

            ray.train.report(metrics, checkpoint=None)
        if t.keep_best and rank == 0 and "fid_quick" in metrics and weights_finite(state):
            # After the report: the step's checkpoint folder (the source) is in storage by now.
            keep_best(loop_config["run_dir"], step, metrics,
                      lambda f: torch.save(state_dict(state), f),
                      source=f"{CHECKPOINT_PREFIX}{step:08d}" if saved else None)


def _cpu_copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_copy(v) for v in obj]
    return obj

