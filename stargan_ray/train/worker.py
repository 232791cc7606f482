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
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..checkpoint import CHECKPOINT_FILE, load_state_into, safe_load, state_dict
from ..engine import Batch, TrainState, build_optimizers, train_step
from ..errors import UserError
from ..storage import filesystem, join, write_bytes
from ..transfer import init_from
from .best import keep_best
from .checkpoints import BEST_DIR, StartPoint, checkpoint_name, folder_step, local_file
from .preemption import PreemptionWatch
from .saving import NonFiniteWeights, save_report, weights_finite
from .spec import WorkerSpec
from .upload import report_metrics

log = logging.getLogger(__name__)


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


class TrainingStopped(UserError):
    """The run stopped itself (non-finite loss); the message names the loss and the step."""


MAX_ROLLBACKS = 3
STOP_MARKER = "STOPPED.json"


def _stop(run_dir: str, logger, rank: int, message: str) -> None:
    """Every rank leaves the loop; rank 0 records why in the run folder for the driver."""
    try:
        logger.event("stopped", reason=message)
    except OSError as err:  # a full disk: the reason below matters more than the event
        log.warning("could not record the stop event: %s", err)
    if rank == 0:
        try:
            write_bytes(join(run_dir, STOP_MARKER), json.dumps({"reason": message}).encode())
        except OSError as err:  # a storage that failed: the driver finds out (storage_faults)
            log.warning("could not record why the run stopped: %s", err)


def consume_stop_reason(run_dir: str) -> str | None:
    """Why the run stopped itself, or None when it did not; the record is removed, so each
    stop is reported once (by the driver: run_training, or a Tune trial)."""
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


@dataclass
class Outputs:
    """What the loop makes besides checkpoints: the run's records (logger, rank 0 writes), the
    sample grids (rank 0) and the evaluations (inline: fid_quick on every rank at the same steps;
    beside: Ray validation tasks on the steps' checkpoints, full ones too; results picked up)."""

    logger: Any  # logger.RunLogger
    samples: Callable[[TrainState], dict[str, Any]]  # the step's grids (PIL images)
    evaluate: Callable[[TrainState], dict[str, float]]  # {"fid_quick": value} or {}
    beside: Any = None  # validation.BesideResults (eval.validation = "beside"), else None


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: restore, then train_step until total_iters with logs and checkpoints."""
    import ray.train
    import ray.train.torch

    from ..data.pipeline import worker_batches
    from .cluster import quiet_ray_data, quiet_train_reports
    from .logger import RunLogger

    spec = WorkerSpec.from_loop_config(loop_config)
    cfg = spec.cfg
    quiet_train_reports()
    quiet_ray_data()  # each worker runs its own Ray Data pipeline: no progress lines from it
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, spec.threads_per_worker))
    state, init_note = _start_state(spec, rank, world, device)
    # The data stream is a function of (seed, step): this worker's lanes start at the restored
    # step, so a resumed, restarted or exploited run reads nothing before it and sees exactly the
    # batches an uninterrupted run would, whatever the worker count.
    batches = worker_batches(spec.data, cfg, world_rank=rank, world_size=world,
                             start_step=state.step, device=device)
    logger = RunLogger(cfg, spec.run_dir, run_name=spec.run_name, wandb=spec.wandb,
                       wandb_group=spec.wandb_group, rank=rank)
    logger.start(state.step, os.getpid(), world)  # and a `resize` event when world changed
    if init_note:
        logger.event("init_from", summary=init_note)
    try:
        _train(state, batches, _outputs(logger, cfg, device, rank, world, spec.run_dir), spec,
               rank, world)
    finally:  # also on a failure: the records written so far reach the run's storage
        logger.finish()


def _start_state(spec: WorkerSpec, rank: int, world: int,
                 device: torch.device) -> tuple[TrainState, str | None]:
    """This worker's TrainState: restored (a restart or the plan's start) or, for a new run with
    spec.init_from, from another model's networks (the note says what was copied); its rows and
    the all-reduces of a group."""
    import ray.train

    from ..data.layout import lanes_of

    cfg = spec.cfg
    state = TrainState.create(cfg, device)  # the same seed on every rank: identical networks
    _restore_newest(state, ray.train.get_checkpoint(), spec.start)
    state.domains = tuple(spec.data["domains"])  # this run's data names them
    init_note = None
    if spec.init_from and spec.start is None and ray.train.get_checkpoint() is None:
        with local_file(spec.init_from) as local:  # a new run, not a restart
            init_note = init_from(state, local, spec.init_map)
    state.rows = lanes_of(rank, world, cfg.data.batch_size)  # ADA draws by row, not by worker
    if world > 1:
        state.grad_sync = make_grad_sync(world, len(state.rows), cfg.data.batch_size)
        state.stat_sync = make_sum_sync()
    return state, init_note


def _outputs(logger, cfg, device, rank: int, world: int, run_dir: str) -> Outputs:
    from .quick_eval import quick_eval
    from .samples import TrainingSamples
    from .validation import BesideResults

    grids = TrainingSamples(cfg, device)
    beside = BesideResults(run_dir, logger, rank) if cfg.eval.validation == "beside" else None
    return Outputs(logger, samples=lambda state: grids(state.nets_ema),
                   evaluate=lambda state: quick_eval(state.nets_ema, cfg, device,
                                                     rank=rank, world=world), beside=beside)


@dataclass(frozen=True)
class Due:
    """What a step does besides training; every interval counts on its own (print, sample and
    eval steps need not be print or save steps). The last step logs, samples and saves."""

    log: bool
    sample: bool
    eval: bool
    save: bool
    full_eval: bool = False  # train.full_eval_every (0: never)

    @property
    def evaluates(self) -> bool:
        """fid_quick or a full evaluation is due (beside: the step's checkpoint is validated)."""
        return self.eval or self.full_eval

    @staticmethod
    def at(step: int, t) -> "Due":
        final = step == t.total_iters
        # eval is not forced at the end: a full evaluation usually follows
        return Due(log=step % t.print_every == 0 or final,
                   sample=step % t.sample_every == 0 or final,
                   eval=step % t.eval_every == 0, save=step % t.save_every == 0 or final,
                   full_eval=t.full_eval_every > 0 and step % t.full_eval_every == 0)


class _Loop:
    """The loop's state between steps: the stats window, the rollback copy, the clock."""

    def __init__(self, state: TrainState, out: Outputs, spec: WorkerSpec, rank: int,
                 world: int) -> None:
        self.state, self.out, self.spec, self.rank, self.world = state, out, spec, rank, world
        self.window = StatsWindow()
        self.last_good = None  # CPU copy of the state at the last checkpoint (nan_policy=rollback)
        self.rollbacks = 0
        self.started, self.start_step = time.perf_counter(), state.step

    def stats(self) -> dict[str, Any] | None:
        """The window's means (one all-reduce) and speed; None when the step rolled back.
        Raises _Stop when a loss is not finite and no rollback is left."""
        state, t = self.state, self.state.cfg.train
        metrics, bad = self.window.reduce(self.world)
        window, self.window = self.window, StatsWindow()
        if bad is not None:
            message = f"loss {bad[0]} is not finite at step {bad[1]}"
            if t.nan_policy == "rollback" and self.last_good is not None \
                    and self.rollbacks < MAX_ROLLBACKS:
                # Back to the last checkpoint; the data stream moves on, so the batches that
                # led to the non-finite loss are not replayed.
                self.rollbacks += 1
                load_state_into(state, self.last_good)
                self.out.logger.event("rollback", step=state.step, reason=message)
                return None
            raise _Stop(f"{message} (train.nan_policy={t.nan_policy}, {self.rollbacks} "
                        "rollbacks); the last checkpoint holds finite weights")
        step = state.step
        elapsed = time.perf_counter() - window.started
        images_per_s = window.steps * state.cfg.data.batch_size / max(elapsed, 1e-9)
        eta = ((t.total_iters - step) * (time.perf_counter() - self.started)
               / max(step - self.start_step, 1))
        metrics.update(_lrs(state), step=step, images_per_s=images_per_s, eta_s=eta)
        if state.device.type == "cuda":  # the run's peak so far (benchmarks/gpu_train.py)
            metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated(state.device) / 2**30
        return metrics

    def outputs(self, due: Due, metrics: dict[str, Any]) -> None:
        """Log, grids, evaluation, then the step's report (with its checkpoint on save steps)."""
        state, t, logger, step = self.state, self.state.cfg.train, self.out.logger, self.state.step
        if due.log:
            logger.log(step, metrics, _console_line(step, t.total_iters, metrics,
                                                    metrics["images_per_s"], metrics["eta_s"]))
            if self.out.beside is not None:  # validations finished since: at their steps
                self.out.beside.pick_up()
        if due.sample and self.rank == 0:
            logger.images(step, self.out.samples(state))
        beside = self.out.beside is not None and self.out.beside.request(due)  # the task's work
        if due.eval and self.out.beside is None:
            evaluation = self.out.evaluate(state)
            logger.evaluation(step, evaluation)
            metrics.update(evaluation)
        if due.save:  # the W&B artifact once the upload is done (it runs in the background)
            folder = join(self.spec.run_dir, checkpoint_name(step))
            saved = partial(logger.checkpoint_saved, folder, step, dict(metrics), ("latest",))
            problem = save_report(state, metrics, self.rank, self.world, self.spec.run_dir, saved,
                                  validation=beside)
            if problem is not None:  # a full disk: stop, not a worker failure to retry
                raise _Stop(problem)
            if t.nan_policy == "rollback":
                self.last_good = _cpu_copy(state_dict(state))
        elif due.eval or (due.log and self.spec.report_logs):
            report_metrics(metrics, t.checkpoint_upload)
        if t.keep_best and self.rank == 0 and "fid_quick" in metrics and weights_finite(state):
            _keep_best(state, metrics, logger, self.spec.run_dir, due.save)


class _Stop(Exception):
    """The run stops itself; the message says why."""


def _train(state: TrainState, batches, out: Outputs, spec: WorkerSpec, rank: int,
           world: int) -> None:
    loop = _Loop(state, out, spec, rank, world)
    watch = PreemptionWatch(state.cfg.train.preemption_check_every)
    while state.step < state.cfg.train.total_iters:
        batch: Batch = next(batches)
        loop.window.add(train_step(state, batch), state.step - 1)
        due = Due.at(state.step, state.cfg.train)
        if due.evaluates and out.beside is not None:  # its checkpoint is what is validated
            due = replace(due, save=True)
        notice = watch.poll(state.step)  # every rank, at the same steps (a barrier)
        if notice is not None:  # a node goes soon: checkpoint this step now
            out.logger.event("preemption", step=state.step, **notice)
            due = replace(due, save=True)
        metrics: dict[str, Any] | None = {"step": state.step}
        try:
            if due.log or due.save:  # the window's stats: printed, and checked before a save
                metrics = loop.stats()
                if metrics is None:
                    continue  # rolled back to the last checkpoint
            loop.outputs(due, metrics)
        except _Stop as stop:
            _stop(spec.run_dir, out.logger, rank, str(stop))
            return
    if out.beside is not None:  # the last validations, logged before the logger closes
        out.beside.finish()


def _keep_best(state: TrainState, metrics: dict[str, Any], logger, run_dir: str,
               saved: bool) -> None:
    """Rank 0, after the report: best/ gets its own copy of the state (the step's folder, its
    source, may still be uploading). A new best is also logged as the W&B artifact aliased best."""
    name = checkpoint_name(state.step)
    if keep_best(run_dir, state.step, metrics, lambda f: torch.save(state_dict(state), f),
                 source=name if saved else None):
        logger.checkpoint_saved(join(run_dir, BEST_DIR, name), state.step, metrics, ("best",))


def _cpu_copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_copy(v) for v in obj]
    return obj

