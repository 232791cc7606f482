"""The sweep: validate the space, start (or resume) Ray Tune, write the results when it ends.

A sweep folder holds sweep.json (the experiment and space it searches, so --resume can refuse
another), Tune's state, train/ (each trial's Ray Train runs), results.csv / results.parquet,
best.toml and plots/trials.png.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import SYNTHETIC, ExperimentConfig, config_keys, get_key, with_overrides
from ..errors import ConfigError
from ..storage import exists, join, read_bytes, write_bytes
from ..train import RunOptions, storage_uri
from ..train.capacity import tune_request, wait_for_capacity
from ..train.plan import check_run_name, ray_storage
from .results import best_row, result_trial_id, results_table, trial_dirname, write_results
from .schedulers import build_scheduler, build_searcher, param_space
from .space import TIME_ATTR, Space, check_space
from .trial import TrialSpec, run_trial

# The trial process only waits on its Train run, whose workers hold the CPUs and GPUs; Tune
# refuses an empty request, so it gets a sliver.
TRIAL_DRIVER_CPUS = 0.1
# Each trial runs its own Ray Data pipeline: CPUs for it beside the workers' (docs/ray.md: Ray
# Data starves when the workers hold every CPU).
DATA_CPUS_PER_TRIAL = 1
TRAIN_FOLDER = "train"  # inside the sweep folder: the trials' Ray Train runs


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep (what to search is the Space)."""

    storage: str = "runs"
    name: str | None = None
    num_samples: int | None = None
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent: int | None = None
    resume: bool = False
    wandb: str | None = None
    wait_s: float = 600.0  # --wait: how long one trial's workers wait for an autoscaler's nodes

    def sweep_name(self, cfg: ExperimentConfig, space: Space) -> str:
        """A plain folder name, as a run's: '../x' would write the sweep outside the storage
        (and best.toml's name, SWEEP-best, would be one `train` refuses)."""
        return check_run_name(self.name or f"{cfg.name}-{space.name}",
                              from_flag=self.name is not None)


@dataclass
class SweepResult:
    sweep_dir: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool
    files: dict[str, str] = field(default_factory=dict)


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Relative data and weight paths made absolute: trial processes run in other folders."""
    overrides = []
    for key in config_keys():
        if not key.endswith(("_dir", "_path")):
            continue
        value = get_key(cfg, key)
        if isinstance(value, str) and value and value != SYNTHETIC and "://" not in value:
            if not Path(value).is_absolute():
                overrides.append((key, str(Path(value).resolve())))
    return with_overrides(cfg, overrides)


def _record(sweep_dir: str, cfg: ExperimentConfig, base: ExperimentConfig, space: Space,
            resume: bool) -> None:
    """sweep.json: what the sweep searches; --resume refuses a different experiment or space."""
    record = {"experiment": cfg.to_dict(), "base": base.to_dict(),
              "space": json.loads(json.dumps(asdict(space)))}
    text = json.dumps(record, indent=2, sort_keys=True)
    uri = join(sweep_dir, "sweep.json")
    if resume and exists(uri):
        if json.loads(read_bytes(uri)) != json.loads(text):
            raise ConfigError(f"--resume: the experiment or space differs from the one sweep "
                              f"{sweep_dir} started with (see its sweep.json)")
        return
    write_bytes(uri, text.encode())


def _concurrency(space: Space, opts: SweepOptions) -> int | None:
    return opts.max_concurrent or space.max_concurrent


def _trial_cpus(opts: SweepOptions) -> float:
    return opts.workers_per_trial * opts.cpus_per_worker + DATA_CPUS_PER_TRIAL


def _fit_concurrency(opts: SweepOptions) -> int:
    """Trials that fit the cluster at once, with their workers and data pipelines."""
    import ray

    total = ray.cluster_resources()
    fit = int(total.get("CPU", 1) // _trial_cpus(opts))
    if opts.gpus_per_worker:
        fit = min(fit, int(total.get("GPU", 0) // (opts.workers_per_trial * opts.gpus_per_worker)))
    return max(fit, 1)


def run_sweep(cfg: ExperimentConfig, space: Space, opts: SweepOptions, *,
              callbacks: list | None = None) -> SweepResult:
    """Validate, run (or resume) the sweep, write the results table and the best config."""
    from ..train import init_ray

    base = check_space(space, cfg)
    name = opts.sweep_name(cfg, space)
    storage = storage_uri(opts.storage)
    sweep_dir = join(storage, name)
    if opts.resume and not exists(join(sweep_dir, "sweep.json")):
        raise ConfigError(f"--resume: no sweep {name!r} in {storage}")
    if opts.resume and not exists(join(sweep_dir, "tuner.pkl")):
        raise ConfigError(f"--resume: sweep {name!r} stopped before Tune saved any state; "
                          f"delete {sweep_dir} and start it again")
    if not opts.resume and exists(sweep_dir):
        raise ConfigError(f"--name: sweep {name!r} already exists in {storage}; pass --resume to "
                          f"continue it or choose another --name")
    concurrency = _concurrency(space, opts)
    # A local instance is sized for num_workers x cpus_per_worker (+ 2): here one "worker" per
    # concurrent trial, holding the trial's workers and its data pipeline.
    init_ray(RunOptions(num_workers=concurrency or 1, cpus_per_worker=_trial_cpus(opts)))
    # one trial's workers no node can ever hold: one line; an autoscaler's: up to --wait
    wait_for_capacity(tune_request(opts), opts.wait_s, note=lambda line: print(line, flush=True))
    _record(sweep_dir, cfg, base, space, opts.resume)
    tuner = _tuner(base, space, opts, name, storage, sweep_dir,
                   concurrency or _fit_concurrency(opts), callbacks)
    grid = tuner.fit()
    rows = results_table(grid, space, base)
    # Trials are created as slots free up, so an interrupted sweep may not list them all yet.
    interrupted = grid.num_terminated + grid.num_errors < trial_count(space, opts)
    best = best_row(rows, space)
    files = write_results(sweep_dir, rows, best, base, space, name)
    from ..plots import write_trials_png  # plots/trials.png; warns and skips on any error

    files.update(write_trials_png(sweep_dir, grid, rows, best, space.metric,
                                  trial_id=result_trial_id, step_key=TIME_ATTR))
    return SweepResult(sweep_dir, rows, best, interrupted, files)


def trial_count(space: Space, opts: SweepOptions) -> int:
    """Trials of the whole sweep: each sample runs every combination of the grid keys."""
    samples = opts.num_samples or space.num_samples
    return samples * math.prod(len(d.args) for d in space.searched if d.kind == "grid")


def _tuner(base: ExperimentConfig, space: Space, opts: SweepOptions, name: str, storage: str,
           sweep_dir: str, concurrency: int, callbacks: list | None):
    from ray import tune

    run = RunOptions(num_workers=opts.workers_per_trial, gpus_per_worker=opts.gpus_per_worker,
                     cpus_per_worker=opts.cpus_per_worker, storage=join(sweep_dir, TRAIN_FOLDER),
                     max_failures=0, wandb=opts.wandb)  # a failed run fails its trial: Tune retries
    spec = TrialSpec(cfg=_absolute_paths(base).to_dict(), metric=space.metric,
                     checkpointed_results_only=space.scheduler == "pbt", run=run, sweep=name)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec),
                                    {"CPU": TRIAL_DRIVER_CPUS})
    where = ray_storage(storage)  # a URI's endpoint and options travel in the FileSystem
    if opts.resume:
        restore_path = where["storage_path"].rstrip("/") + f"/{name}"
        return tune.Tuner.restore(restore_path, trainable=trainable,
                                  storage_filesystem=where["storage_filesystem"])
    keep = max(base.train.keep_checkpoints, 4 if space.scheduler == "pbt" else 1)
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=build_scheduler(space, base),
            search_alg=build_searcher(space, concurrency),
            num_samples=opts.num_samples or space.num_samples, trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, **where, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)))
