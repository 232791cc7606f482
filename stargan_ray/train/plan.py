"""Where a run writes and which checkpoint it starts from, decided on the driver before Ray starts.

A run folder is <storage>/<run name>, local or a URI; it holds Ray's checkpoint_<step> folders and
Ray's snapshot of them (SNAPSHOT_FILE). plan_run checks the run name and picks the start checkpoint,
the one place that does, for the CLI, the Python API and Tune trials; reconcile_snapshot keeps
Ray's snapshot from overruling that choice. Finding checkpoints is checkpoints.py's.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import verify_checkpoint
from ..config import ExperimentConfig
from ..errors import ConfigError
from ..storage import basename, filesystem, is_uri, join, probe_write
from .checkpoints import (StartPoint, checkpoint_folders, latest_checkpoint, local_file,
                          newest_complete_checkpoint)

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what to train: that is the ExperimentConfig)."""

    num_workers: int | tuple[int, int] = 1  # (min, max): elastic (Ray Train's resizing)
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    storage: str = "runs"
    name: str | None = None
    resume: bool = False
    max_failures: int = 3
    wandb: str | None = None  # online | offline | disabled; None: WANDB_MODE or offline
    resume_from: str | None = None  # a checkpoint file or folder to start from (any run's)
    force: bool = False  # take the run folder's lock even from a run that may still be alive
    # A new run's networks from a stargan-ray checkpoint or an official nets_ema file
    # (transfer.py), with --map OLD=NEW pairs for its domains.
    init_from: str | None = None
    init_map: tuple[str, ...] = ()
    # An elastic run: seconds between Ray Train's looks for room to grow
    # (ScalingConfig.elastic_resize_monitor_interval_s; 60 is Ray's default).
    resize_check_s: float = 60.0

    def __post_init__(self) -> None:
        # The CLI's argparse types refuse these too; this covers the Python API.
        low, high = self.worker_range
        for flag, value, ok in (("--num-workers", self.num_workers, 1 <= low <= high),
                                ("--gpus-per-worker", self.gpus_per_worker,
                                 self.gpus_per_worker >= 0),
                                ("--cpus-per-worker", self.cpus_per_worker,
                                 self.cpus_per_worker > 0),
                                ("--max-failures", self.max_failures, self.max_failures >= 0),
                                ("--resize-check-every", self.resize_check_s,
                                 self.resize_check_s > 0)):
            if not ok:
                raise ConfigError(f"{flag}: out of range, got {value}")
        if self.resume and self.resume_from:
            raise ConfigError("--resume-from: give either --resume (the run's own newest "
                              "checkpoint) or --resume-from PATH, not both")
        if self.init_map and not self.init_from:
            raise ConfigError("--map: maps the domains of an --init-from file; give --init-from")
        if self.init_from and self.resume_from:
            raise ConfigError("--init-from: starts a new run from a model's networks; "
                              "--resume-from continues a checkpoint's run: give one of them")

    @property
    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers; equal for a fixed size."""
        n = self.num_workers
        return (n, n) if isinstance(n, int) else (int(n[0]), int(n[1]))

    @property
    def elastic(self) -> bool:
        low, high = self.worker_range
        return low < high

    def check_batch(self, cfg: ExperimentConfig) -> None:
        """data.batch_size is the total over the workers: a fixed count must divide it (every
        worker holds the same share); an elastic range must not exceed it (a worker with no
        rows). Shares of an elastic run may then differ by one row; gradients are averaged by
        rows, so the update is the same."""
        low, high = self.worker_range
        total = cfg.data.batch_size
        if high > total:  # first: "use a multiple of 1000000" would not help
            raise ConfigError(f"--num-workers: up to {high} workers, but data.batch_size is "
                              f"{total} images per step in total (at least one per worker)")
        if not self.elastic and total % low:
            counts = ", ".join(str(n) for n in range(1, total + 1) if total % n == 0)
            raise ConfigError(f"data.batch_size: {total} images per step (the total over all "
                              f"workers) cannot be split evenly over --num-workers {low}; use "
                              f"a worker count that divides it ({counts}) or a data.batch_size "
                              f"that is a multiple of {low}")

    def run_name(self, cfg: ExperimentConfig) -> str:
        return self.name or cfg.name

    def run_dir(self, cfg: ExperimentConfig) -> str:
        """<storage>/<run name>: absolute for a local storage, else the URI."""
        return join(storage_uri(self.storage), self.run_name(cfg))

    def resources(self) -> dict[str, Any]:
        per_worker = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            per_worker["GPU"] = self.gpus_per_worker
        low, high = self.worker_range
        return {"num_workers": low if low == high else (low, high),
                "use_gpu": self.gpus_per_worker > 0,
                "resources_per_worker": per_worker,
                "backend": "nccl" if self.gpus_per_worker > 0 else "gloo"}


def storage_uri(storage: str) -> str:
    """Local paths become absolute (Ray needs that); URIs such as s3://bucket/x pass through."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def ray_storage(storage: str) -> dict[str, Any]:
    """RunConfig's storage_path and storage_filesystem for a local path or a URI.

    A URI is resolved here, once: its query (endpoint_override, scheme, region) or the AWS
    environment variables of this process go into the FileSystem, which Ray hands to its
    controller and workers, so they reach the same endpoint.
    """
    if not is_uri(storage):
        return {"storage_path": storage_uri(storage), "storage_filesystem": None}
    fs, path = filesystem(storage)
    return {"storage_path": path, "storage_filesystem": fs}


def check_storage(storage: str) -> None:
    """--storage must take a run folder: a local path whose nearest existing part is a folder
    this process can write in (nothing is created here: --dry-run leaves no trace), or a URI
    that accepts a probe write (written and deleted)."""
    if is_uri(storage):
        why = probe_write(storage)
        if why is not None:
            raise ConfigError(f"--storage {storage}: cannot write there ({why})")
        return
    path = Path(storage).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--storage {storage}: {existing} is a file, not a folder; give a "
                          "folder for the run folders")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"--storage {storage}: cannot write in {existing} "
                          f"({err.strerror or err}); give a writable folder") from None


def check_run_name(name: str, from_flag: bool = True) -> str:
    """A run name is one plain folder name: '../x' or 'a/b' would write outside the storage."""
    if not _RUN_NAME.fullmatch(name):
        where = "--name" if from_flag else "run name (the experiment's name; pass --name)"
        raise ConfigError(f"{where} {name!r}: must be a plain folder name (letters, digits, '.', "
                          "'_', '-', not starting with '.'), not a path")
    return name


@dataclass(frozen=True)
class RunPlan:
    """Where a run writes, the checkpoint it starts from, and what to tell the user about it."""

    run_dir: str
    start: StartPoint | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrialStart:
    """A Tune trial's (re)start: its run continues from its own newest complete checkpoint (a
    retried failure, a PBT pause); a run without one begins from checkpoint, the Tune checkpoint
    the trial was restored from (possibly another trial's under PBT), else from scratch."""

    checkpoint: StartPoint | None = None


def check_not_finished(start: StartPoint | None, cfg: ExperimentConfig) -> None:
    if start is not None and start.step >= cfg.train.total_iters:
        raise ConfigError(f"train.total_iters: the run already reached step {start.step}; "
                          f"raise train.total_iters to continue it")


def plan_run(cfg: ExperimentConfig, opts: RunOptions, *, trial: TrialStart | None = None
             ) -> RunPlan:
    """Check the run name and choose the start checkpoint, on the driver, before Ray starts.

    --resume: the newest complete checkpoint of the run folder (broken newer ones are skipped
    and named); none at all is an error. --resume-from: that checkpoint, checked against the
    config's network shapes, into a run with no later checkpoints. Neither: the run folder
    must not hold checkpoints yet. trial: a Tune trial's (re)start (see TrialStart).
    """
    name = check_run_name(opts.run_name(cfg), from_flag=opts.name is not None)
    opts.check_batch(cfg)
    if trial is None:  # a trial writes inside its sweep folder, which Tune has written already
        check_storage(opts.storage)
    run_dir = opts.run_dir(cfg)
    notes: list[str] = []
    if trial is not None:
        start, broken = newest_complete_checkpoint(run_dir, cfg)
        notes.extend(f"skipping broken {reason}" for reason in broken)
        start = start or trial.checkpoint
    elif opts.resume_from:
        start = _start_from_path(cfg, opts.resume_from, run_dir, name)
        notes.append(f"run {name!r} starts from {start.uri} (step {start.step})")
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
    else:
        start = None
    check_not_finished(start, cfg)
    if opts.init_from:
        notes.append(_check_init_from(cfg, opts, start))
    return RunPlan(run_dir, start, notes)


def _check_init_from(cfg: ExperimentConfig, opts: RunOptions, start: StartPoint | None) -> str:
    """--init-from: the file's networks fit cfg with its domain mapping (before Ray starts); the
    line that says what is copied, mapped and new. A resumed run ignores it."""
    if start is not None:
        return f"--init-from ignored: the run continues from {start.label} (step {start.step})"
    from ..data.synthetic import resolve_data_dirs
    from ..data.table import domains_of
    from ..transfer import check_init

    domains = domains_of(resolve_data_dirs(cfg)[0], cfg.model.num_domains)
    with local_file(storage_uri(opts.init_from)) as local:
        return check_init(local, cfg, domains, opts.init_map)


def _start_from_path(cfg: ExperimentConfig, resume_from: str, run_dir: str,
                     name: str) -> StartPoint:
    """--resume-from: the checkpoint, checked against cfg, into a run with no later ones."""
    uri = storage_uri(resume_from)  # absolute: workers run in another directory
    with local_file(uri) as local:
        start = StartPoint(verify_checkpoint(local, cfg), uri)
    later = [s for s, _ in checkpoint_folders(run_dir) if s > start.step]
    if later:
        # Mixing two lines of checkpoints in one folder: a later --resume would pick the
        # newest of either line.
        raise ConfigError(f"--resume-from: run {name!r} already has checkpoints after step "
                          f"{start.step} (up to {max(later)}) in {run_dir}; choose another "
                          "--name")
    return start


def reconcile_snapshot(run_dir: str, start: StartPoint | None) -> str | None:
    """Move Ray's checkpoint snapshot aside unless it agrees with the chosen start; its new path.

    Ray restores the snapshot's latest entry and nothing else: a listed folder that is gone
    fails the controller, and an unlisted (newer, copied or imported) checkpoint is ignored.
    Without a snapshot Ray starts clean and the workers begin from the start checkpoint.
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(run_dir)
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
    present = {basename(uri) for _, uri in checkpoint_folders(run_dir)}
    inside = start is not None and join(start.uri) == join(run_dir, start.label)
    wanted = start.label if inside else None
    if listed is not None and set(listed) <= present and latest == wanted:
        return None
    aside = f"{snapshot}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    fs.move(snapshot, aside)
    return aside
