"""Distributed training on Ray Train: the worker loop around engine.train_step and its driver.

Gradient averaging: after each backward the gradients of the networks being stepped are flattened
into one buffer, all-reduced and divided by the world size (the approach of NVlabs/stylegan3's
training loop) instead of wrapping the networks in DistributedDataParallel. StarGAN v2 runs the
generator up to three times per backward, R1 differentiates through a gradient (create_graph,
which DDP's reducer does not support), and each of the four optimiser steps updates a different
subset of the networks while the others are frozen; DDP's bucketing hooks and unused-parameter
detection fit none of that, while one explicit all-reduce per optimiser step is exact and simple.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .checkpoint import (CHECKPOINT_FILE, CheckpointError, CheckpointMismatch, load_state_into,
                         safe_load, state_dict, verify_checkpoint)
from .config import ConfigError, ExperimentConfig, from_dict, to_toml
from .errors import UserError
from .engine import Batch, TrainState, build_optimizers, stats_to_floats, train_step

log = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "checkpoint_"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ---------------------------------------------------------------- options and resources


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to train: that is the ExperimentConfig)."""

    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    storage: str = "runs"
    name: str | None = None
    resume: bool = False
    max_failures: int = 3
    wandb: str | None = None  # online | offline | disabled; None: WANDB_MODE or offline
    resume_from: str | None = None  # a checkpoint file or folder to start from (any run's)

    def __post_init__(self) -> None:
        # The CLI's argparse types refuse these too; this covers the Python API.
        for flag, value, ok in (("--num-workers", self.num_workers, self.num_workers >= 1),
                                ("--gpus-per-worker", self.gpus_per_worker,
                                 self.gpus_per_worker >= 0),
                                ("--cpus-per-worker", self.cpus_per_worker,
                                 self.cpus_per_worker > 0),
                                ("--max-failures", self.max_failures, self.max_failures >= 0)):
            if not ok:
                raise ConfigError(f"{flag}: out of range, got {value}")
        if self.resume and self.resume_from:
            raise ConfigError("--resume-from: give either --resume (the run's own newest "
                              "checkpoint) or --resume-from PATH, not both")

    def run_name(self, cfg: ExperimentConfig) -> str:
        return self.name or cfg.name

    def resources(self) -> dict[str, Any]:
        per_worker = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            per_worker["GPU"] = self.gpus_per_worker
        return {"num_workers": self.num_workers, "use_gpu": self.gpus_per_worker > 0,
                "resources_per_worker": per_worker,
                "backend": "nccl" if self.gpus_per_worker > 0 else "gloo"}


def storage_uri(storage: str) -> str:
    """Local paths become absolute (Ray needs that); URIs such as s3://bucket/x pass through."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _run_dir(opts: RunOptions, cfg: ExperimentConfig) -> str:
    return f"{storage_uri(opts.storage).rstrip('/')}/{opts.run_name(cfg)}"


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def check_run_name(name: str, from_flag: bool = True) -> str:
    """A run name is one plain folder name: '../x' or 'a/b' would write outside the storage."""
    if not _RUN_NAME.fullmatch(name):
        where = "--name" if from_flag else "run name (the experiment's name; pass --name)"
        raise ConfigError(f"{where} {name!r}: must be a plain folder name (letters, digits, '.', "
                          "'_', '-', not starting with '.'), not a path")
    return name


def checkpoint_folders(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint_<step> folder of a run, newest first; local or URI."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    steps = []
    for info in infos:
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith(CHECKPOINT_PREFIX):
            suffix = name[len(CHECKPOINT_PREFIX):]
            if suffix.isdigit():
                steps.append((int(suffix), f"{run_dir}/{name}"))
    return sorted(steps, reverse=True)


def latest_checkpoint(run_dir: str) -> tuple[int, str] | None:
    """(step, path) of the newest checkpoint_<step> folder of a run (complete or not)."""
    folders = checkpoint_folders(run_dir)
    return folders[0] if folders else None


def _folder_step(path: str) -> int | None:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    suffix = name[len(CHECKPOINT_PREFIX):]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


@contextlib.contextmanager
def _local_file(uri: str) -> Iterator[str]:
    """A local path for the checkpoint at uri (a file, or a folder holding checkpoint.pt)."""
    if "://" not in uri:
        yield uri
        return
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        path, info = f"{path}/{CHECKPOINT_FILE}", fs.get_file_info(f"{path}/{CHECKPOINT_FILE}")
    if info.type != pafs.FileType.File:
        raise CheckpointError(f"checkpoint: no such file {uri}")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / CHECKPOINT_FILE
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield str(local)


@dataclass(frozen=True)
class StartPoint:
    """The checkpoint a run begins from: its step and its file or folder (a path or a URI)."""

    step: int
    uri: str

    @property
    def label(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


def newest_complete_checkpoint(run_dir: str, cfg: ExperimentConfig
                               ) -> tuple[StartPoint | None, list[str]]:
    """The run's newest complete checkpoint, whatever Ray's snapshot lists, and the broken ones
    newer than it (one reason each). Complete: loads with weights_only, holds its folder's step.

    A complete checkpoint whose networks do not fit cfg raises CheckpointMismatch: that is a
    config mistake, and falling back to an older checkpoint of the same run would not fix it.
    """
    broken = []
    for step, uri in checkpoint_folders(run_dir):
        try:
            with _local_file(uri) as local:
                verify_checkpoint(local, cfg, step)
        except CheckpointMismatch:
            raise
        except CheckpointError as err:
            broken.append(str(err))
            continue
        return StartPoint(step, uri), broken
    return None, broken


@dataclass(frozen=True)
class RunPlan:
    """Where a run writes, the checkpoint it starts from, and what to tell the user about it."""

    run_dir: str
    start: StartPoint | None
    notes: list[str] = field(default_factory=list)


def plan_run(cfg: ExperimentConfig, opts: RunOptions) -> RunPlan:
    """Check the run name and choose the start checkpoint, on the driver, before Ray starts.

    --resume: the newest complete checkpoint of the run folder (broken newer ones are skipped
    and named); none at all is an error. --resume-from: that checkpoint, checked against the
    config's network shapes, into a run with no later checkpoints. Neither: the run folder
    must not hold checkpoints yet.
    """
    name = check_run_name(opts.run_name(cfg), from_flag=opts.name is not None)
    run_dir = _run_dir(opts, cfg)
    notes: list[str] = []
    start = None
    if opts.resume_from:
        uri = storage_uri(opts.resume_from)  # absolute: workers run in another directory
        with _local_file(uri) as local:
            start = StartPoint(verify_checkpoint(local, cfg), uri)
        later = [s for s, _ in checkpoint_folders(run_dir) if s > start.step]
        if later:
            # Mixing two lines of checkpoints in one folder: a later --resume would pick the
            # newest of either line.
            raise ConfigError(f"--resume-from: run {name!r} already has checkpoints after step "
                              f"{start.step} (up to {max(later)}) in {run_dir}; choose another "
                              "--name")
        notes.append(f"run {name!r} starts from {uri} (step {start.step})")
    elif opts.resume:
        start, broken = newest_complete_checkpoint(run_dir, cfg)
        notes.extend(f"skipping broken {reason}" for reason in broken)
        if start is None:
            found = f"only broken checkpoints ({broken[0]})" if broken else "no checkpoint"
            raise ConfigError(f"--resume: run {name!r} has {found} in {run_dir}; nothing to "
                              "resume (start it without --resume, or give --resume-from PATH)")
        notes.append(f"resuming run {name!r} from {start.label} (step {start.step})")
    elif latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"--name: run {name!r} already has checkpoints in {run_dir}; pass "
                          "--resume to continue it or choose another --name")
    if start is not None and start.step >= cfg.train.total_iters:
        raise ConfigError(f"train.total_iters: the run already reached step {start.step}; "
                          f"raise train.total_iters to continue it")
    return RunPlan(run_dir, start, notes)


def reconcile_snapshot(run_dir: str, start: StartPoint | None) -> str | None:
    """Move Ray's checkpoint snapshot aside unless it agrees with the chosen start; its new path.

    Ray restores the snapshot's latest entry and nothing else: a listed folder that is gone
    fails the controller, and an unlisted (newer, copied or imported) checkpoint is ignored.
    Without a snapshot Ray starts clean and the workers begin from the start checkpoint.
    """
    import pyarrow.fs as pafs

    fs, path = _filesystem(run_dir)
    snapshot = f"{path}/{SNAPSHOT_FILE}"
    if fs.get_file_info(snapshot).type == pafs.FileType.NotFound:
        return None
    try:
        with fs.open_input_stream(snapshot) as f:
            data = json.loads(f.read().decode())
        listed = [r["checkpoint_dir_name"] for r in data["checkpoint_results"]]
        latest = (data.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (ValueError, KeyError, TypeError, AttributeError):
        listed, latest = None, None  # unreadable: Ray would fail on it too
    present = {uri.rsplit("/", 1)[-1] for _, uri in checkpoint_folders(run_dir)}
    inside = start is not None and start.uri.rstrip("/") == f"{run_dir}/{start.label}"
    wanted = start.label if inside else None
    if listed is not None and set(listed) <= present and latest == wanted:
        return None
    aside = f"{snapshot}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    fs.move(snapshot, aside)
    return aside


def _run_exists(run_dir: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _filesystem(run_dir)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


# ---------------------------------------------------------------- worker side


def make_grad_sync(world_size: int):
    """All-reduce (mean) the gradients of the given networks as one flat buffer."""
    import torch.distributed as dist

    def sync(modules: list[nn.Module]) -> None:
        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

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


class NonFiniteLoss(RuntimeError):
    pass


class TrainingStopped(UserError):
    """The run stopped itself (non-finite loss); the message names the loss and the step."""


MAX_ROLLBACKS = 3
STOP_MARKER = "STOPPED.json"


def _stop(run_dir: str, logger, rank: int, message: str) -> None:
    """Every rank leaves the loop; rank 0 records why in the run folder for the driver."""
    logger.event("stopped", reason=message)
    if rank == 0:
        fs, path = _filesystem(run_dir)
        with fs.open_output_stream(f"{path}/{STOP_MARKER}") as f:
            f.write(json.dumps({"reason": message}).encode())


def read_stop_marker(run_dir: str) -> str | None:
    import pyarrow.fs as pafs

    fs, path = _filesystem(run_dir)
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
        raise NonFiniteLoss(f"non-finite weights at step {state.step}; checkpoint not written")
    name = f"{CHECKPOINT_PREFIX}{state.step:08d}"
    if rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state_dict(state), Path(tmp) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=name)


BEST_DIR = "best"
BEST_FILE = "best.json"


def read_best(run_dir: str) -> dict[str, Any] | None:
    """The run's <run>/best/best.json ({step, fid_quick, source, checkpoint}), or None."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(run_dir)
    marker = f"{path}/{BEST_DIR}/{BEST_FILE}"
    if fs.get_file_info(marker).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(marker) as f:
        return json.loads(f.read().decode())


def keep_best(run_dir: str, step: int, metrics: dict[str, Any], write: Callable[[Any], None],
              source: str | None = None) -> bool:
    """Keep the state of step in <run>/best/ when metrics hold a new best (lowest) fid_quick.

    Ray's CheckpointConfig keeps either the last N or the best N by a score, not both, so the
    run keeps its best itself, beside Ray's last train.keep_checkpoints: write(stream) writes the
    checkpoint file into best/checkpoint_<step>/ (written under a temporary name, then moved),
    then best.json {step, fid_quick, source, checkpoint} replaces the old one atomically, and the
    previous best copy is deleted; best.json names a complete copy at every moment. A step
    without a finite fid_quick has no score; ties keep the earlier step. source: the run's
    checkpoint folder of that step, when the step has one (Ray may delete it later).
    """
    import pyarrow.fs as pafs

    score = metrics.get("fid_quick")
    if score is None or not math.isfinite(float(score)):
        return False
    old = read_best(run_dir)
    if old is not None and not float(score) < float(old["fid_quick"]):
        return False
    fs, path = _filesystem(run_dir)
    best = f"{path}/{BEST_DIR}"
    name = f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = f"{best}/.tmp_{name}"
    fs.create_dir(tmp, recursive=True)
    with fs.open_output_stream(f"{tmp}/{CHECKPOINT_FILE}") as f:
        write(f)
    if fs.get_file_info(f"{best}/{name}").type != pafs.FileType.NotFound:
        fs.delete_dir(f"{best}/{name}")  # left by an earlier attempt at this step
    fs.move(tmp, f"{best}/{name}")
    record = {"step": step, "fid_quick": float(score), "source": source,
              "checkpoint": f"{name}/{CHECKPOINT_FILE}"}
    with fs.open_output_stream(f"{best}/.{BEST_FILE}.tmp") as f:
        f.write(json.dumps(record, indent=2).encode())
    fs.move(f"{best}/.{BEST_FILE}.tmp", f"{best}/{BEST_FILE}")
    if old is not None and old["checkpoint"].split("/", 1)[0] != name:
        previous = f"{best}/{old['checkpoint'].split('/', 1)[0]}"
        if fs.get_file_info(previous).type == pafs.FileType.Directory:
            fs.delete_dir(previous)
    return True


def best_checkpoint(run_dir: str) -> tuple[int, str] | None:
    """(step, checkpoint file) of the run's kept best, or None."""
    record = read_best(run_dir)
    if record is None:
        return None
    return int(record["step"]), f"{run_dir}/{BEST_DIR}/{record['checkpoint']}"


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
    own_step = None if own is None else _folder_step(own.path)
    if start is not None and (own is None or (own_step is not None and own_step < start.step)):
        with _local_file(start.uri) as local:
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

    from .data.pipeline import iter_train_batches
    from .run_logging import RunLogger

    cfg = from_dict(loop_config["cfg"])
    _quiet_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(loop_config.get("threads_per_worker", 1))))
    state = TrainState.create(cfg, device)  # the same seed on every rank: identical networks
    start = loop_config.get("start_checkpoint")
    _restore_newest(state, ray.train.get_checkpoint(),
                    StartPoint(start["step"], start["uri"]) if start else None)
    if world > 1:
        state.grad_sync = make_grad_sync(world)
    data_start = loop_config["data_start_step"]
    if state.step < data_start:
        raise ConfigError(f"checkpoint step {state.step} precedes the data plan ({data_start})")
    batches = iter_train_batches(ray.train.get_dataset_shard("train"), cfg, world_rank=rank,
                                 device=device, start_step=data_start)
    for _ in range(state.step - data_start):  # restarted workers: skip what was trained
        next(batches)
    logger = RunLogger(cfg, loop_config, rank=rank, world=world, device=device)
    logger.event("start", step=state.step, pid=os.getpid())
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
        images_per_s = window.steps * cfg.data.batch_size * world / max(elapsed, 1e-9)
        eta = (t.total_iters - step) * (time.perf_counter() - run_started) / max(step - start_step, 1)
        metrics.update(_lrs(state), step=step, images_per_s=images_per_s, eta_s=eta)
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


# ---------------------------------------------------------------- driver side


def build_trainer(cfg: ExperimentConfig, opts: RunOptions, *, extra_loop_config: dict | None = None,
                  callbacks: list | None = None, run_dir: str | None = None,
                  start_from: tuple[int, str] | None = None):
    """A TorchTrainer for cfg: the Ray Data pipeline, scaling, storage, failures, checkpoints.

    With opts.resume the run continues from its newest complete checkpoint when it has one
    (a fresh run otherwise: Tune trials pass resume=True for every start). start_from:
    (step, checkpoint folder) to begin from when the run has no checkpoint of its own (a Tune
    trial restarted from a Tune checkpoint, possibly another trial's under PBT).
    """
    run_dir = run_dir or _run_dir(opts, cfg)
    start = None
    if opts.resume:
        start, broken = newest_complete_checkpoint(run_dir, cfg)
        for reason in broken:
            log.warning("skipping broken %s", reason)
    if start is None and start_from is not None:
        start = StartPoint(*start_from)
    if start and start.step >= cfg.train.total_iters:
        raise ConfigError(f"train.total_iters: the run already reached step {start.step}; "
                          f"raise train.total_iters to continue it")
    return _build_trainer(cfg, opts, run_dir, start, extra_loop_config=extra_loop_config,
                          callbacks=callbacks)


_TRAINER_CLASS = None


def _trainer_class():
    """TorchTrainer whose Ctrl+C in the driver raises KeyboardInterrupt (built once, lazily:
    importing Ray at module import would slow down `stargan-ray --help`)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        from ray.train.torch import TorchTrainer

        class Trainer(TorchTrainer):
            controller = None

            def _register_sigint_handler(self, controller) -> None:
                # Ray's handler aborts and then exits the process with status 1 and no word,
                # stays installed after fit(), and the checkpoint being registered is lost from
                # its snapshot. Keep the handle; run_training aborts and says where to resume.
                self.controller = controller
                signal.signal(signal.SIGINT, signal.default_int_handler)

        _TRAINER_CLASS = Trainer
    return _TRAINER_CLASS


def _build_trainer(cfg: ExperimentConfig, opts: RunOptions, run_dir: str, start: StartPoint | None,
                   *, extra_loop_config: dict | None = None, callbacks: list | None = None):
    import ray.train
    from ray.train.torch import TorchConfig

    from .data.pipeline import build_train_dataset, train_data_config

    quiet_ray_data()
    aside = reconcile_snapshot(run_dir, start)
    if aside is not None:
        log.info("moved Ray's checkpoint snapshot (it disagrees with the run folder) to %s", aside)
    # The data stream is a function of (seed, worker count, step) from step 0; a resumed or
    # restarted worker replays it and skips the batches it already trained on, so it sees exactly
    # the batches an uninterrupted run would (at the cost of decoding them again).
    data_start = 0
    resources = opts.resources()
    loop_config = {
        "cfg": cfg.to_dict(),
        "data_start_step": data_start,
        "run_dir": run_dir,
        "run_name": opts.run_name(cfg),
        "wandb": opts.wandb,
        "threads_per_worker": max(1, int(opts.cpus_per_worker)),
        "start_checkpoint": {"step": start.step, "uri": start.uri} if start else None,
        **(extra_loop_config or {}),
    }
    return _trainer_class()(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=resources["backend"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=opts.num_workers, use_gpu=resources["use_gpu"],
            resources_per_worker=resources["resources_per_worker"]),
        run_config=ray.train.RunConfig(
            name=opts.run_name(cfg), storage_path=storage_uri(opts.storage),
            failure_config=ray.train.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks),
        datasets={"train": build_train_dataset(cfg, opts.num_workers, data_start)},
        dataset_config=train_data_config(),
    )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped the run; the message names the checkpoint it can resume from."""


def resume_hint(run_dir: str, cfg: ExperimentConfig, name: str) -> str:
    """One line: the checkpoint an interrupted run can resume from, or that there is none."""
    try:
        start, _ = newest_complete_checkpoint(run_dir, cfg)
    except UserError:
        start = None
    if start is None:
        return f"interrupted: run {name!r} has no complete checkpoint yet; nothing to resume"
    return (f"interrupted: run {name!r} can resume from {start.label} (step {start.step}): run "
            "the same command with --resume")


def _abort(trainer) -> None:
    """Stop the controller and its workers now (Ray's graceful abort, else a kill)."""
    import ray

    controller = getattr(trainer, "controller", None)
    if controller is None:
        return
    try:
        ray.get(controller.abort.remote(), timeout=20)
    except ray.exceptions.RayActorError:
        pass  # abort ends the controller: this is its normal answer
    except (ray.exceptions.GetTimeoutError, KeyboardInterrupt):
        ray.kill(controller, no_restart=True)


def run_training(cfg: ExperimentConfig, opts: RunOptions, *, plan: RunPlan | None = None,
                 note: Callable[[str], None] | None = print, **kwargs):
    """Validate (plan_run), then fit; returns the ray.train.Result.

    Ctrl+C raises TrainingInterrupted (a KeyboardInterrupt) once the workers are stopped.
    """
    plan = plan or plan_run(cfg, opts)
    for line in plan.notes if note else ():
        note(line)
    trainer = None
    try:
        trainer = _build_trainer(cfg, opts, plan.run_dir, plan.start, **kwargs)
        result = trainer.fit()
    except KeyboardInterrupt:
        _abort(trainer)
        raise TrainingInterrupted(resume_hint(plan.run_dir, cfg, opts.run_name(cfg))) from None
    reason = read_stop_marker(plan.run_dir)
    if reason is not None:
        raise TrainingStopped(reason)
    return result


def init_ray(opts: RunOptions) -> None:
    """Connect to the cluster in RAY_ADDRESS, or start a local one sized for the run.

    A local instance gets at least two logical CPUs beyond the workers' own: workers holding every
    CPU starve Ray Data's decoding tasks, and training then waits forever (docs/ray.md).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(configure_logging=False)
        return
    needed = math.ceil(opts.num_workers * opts.cpus_per_worker) + 2
    start_local_ray(max(os.cpu_count() or 1, needed), configure_logging=False)


def start_local_ray(num_cpus: int, env_vars: dict[str, str] | None = None, **init_kwargs) -> str:
    """Start a new single-node Ray instance whose own processes can find it; returns its address.

    address="local": never the instance that another `ray start` left on this machine. Ray Train
    removes the placement group of a Train run whose controller was killed (a Tune trial that
    ASHA or PBT stopped) from a helper that looks the controller up through the state API, and
    that API finds the cluster through RAY_ADDRESS or /tmp/ray/ray_current_cluster, which names
    the last `ray start`, not this instance. Without a correct RAY_ADDRESS in every worker each
    stopped trial leaks its CPUs until a sweep waits forever for resources.
    """
    import ray

    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    previous = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by ray.init when it starts the head
    try:
        ray.init(address="local", num_cpus=num_cpus,
                 runtime_env={"env_vars": {**(env_vars or {}), "RAY_ADDRESS": address}},
                 **init_kwargs)
    finally:
        if previous is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = previous
    return address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def quiet_ray_data() -> None:
    """One console line per print_every: no Ray Data progress bars in the driver's output."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def _options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, storage=args.storage, name=args.name,
                      resume=args.resume, max_failures=args.max_failures, wandb=args.wandb,
                      resume_from=args.resume_from)


def add_run_args(p: argparse.ArgumentParser) -> None:
    from .cli import nonnegative_float, positive_float, positive_int

    p.add_argument("--num-workers", type=positive_int, default=1,
                   help="Ray Train workers (one per GPU)")
    p.add_argument("--gpus-per-worker", type=nonnegative_float, default=0.0)
    p.add_argument("--cpus-per-worker", type=positive_float, default=1.0)
    p.add_argument("--storage", default="runs",
                   help="run storage: a local or shared path, or a URI such as s3://bucket/runs")
    p.add_argument("--wandb", choices=("online", "offline", "disabled"), default=None,
                   help="W&B mode (default: $WANDB_MODE, else offline)")


def _cli_train(args: argparse.Namespace) -> int:
    from .cli import experiment_from_args

    cfg = experiment_from_args(args)
    opts = _options_from_args(args)
    plan = plan_run(cfg, opts)  # every check that needs no Ray, before Ray starts (~10 s)
    if args.dry_run:
        for line in plan.notes:
            print(f"# {line}")
        print(to_toml(cfg))
        print("# Ray resources")
        print(json.dumps({**opts.resources(), "storage": plan.run_dir,
                          "start": asdict(plan.start) if plan.start else None}, indent=2))
        return 0
    for line in plan.notes:
        print(line, flush=True)
    try:
        init_ray(opts)
        result = run_training(cfg, opts, plan=plan, note=None)
    except TrainingInterrupted as err:
        print(f"stargan-ray: {err}", file=sys.stderr, flush=True)
        return 130
    print(f"run folder: {plan.run_dir}")
    if result.checkpoint is not None:
        print(f"last checkpoint: {result.checkpoint.path}")
    return 0


def add_cli(sub) -> None:
    from .cli import add_experiment_args, nonnegative_int

    p = sub.add_parser("train", help="train on Ray Train workers (CPU or GPU, one or many nodes)")
    add_experiment_args(p)
    add_run_args(p)
    p.add_argument("--name", help="run name, a plain folder name (default: the experiment name)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its newest complete checkpoint")
    p.add_argument("--resume-from", metavar="PATH",
                   help="start (a new or this run) from a stargan-ray checkpoint file or folder, "
                        "e.g. one written by import-official")
    p.add_argument("--max-failures", type=nonnegative_int, default=3,
                   help="worker failures to recover from (restoring the last checkpoint)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the Ray resources, then exit")
    p.set_defaults(func=_cli_train)


__all__ = ["RunOptions", "RunPlan", "StartPoint", "TrainingInterrupted", "build_trainer",
           "run_training", "plan_run", "train_loop_per_worker", "make_grad_sync",
           "latest_checkpoint", "newest_complete_checkpoint", "reconcile_snapshot", "StatsWindow",
           "keep_best", "read_best", "best_checkpoint",
           "asdict"]
