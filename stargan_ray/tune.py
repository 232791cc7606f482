"""Hyperparameter search on Ray Tune: spaces from tune_spaces/, ASHA / PBT, one TorchTrainer each.

Each trial is a small driver function (the pattern Ray recommends for Train inside Tune: passing a
trainer to Tuner is gone in Train V2) that builds the experiment with the trial's values and fits a
distributed TorchTrainer from build_trainer. A Train callback sends rank 0's reports through a
0-CPU queue actor to the trial, which reports them to Tune. Ray's TuneReportCallback does the same
without checkpoints, but PBT needs real Tune checkpoints: a report that carries a Train
checkpoint hands that folder to Tune, so exploit can copy it and any restart (a retried failure,
a PBT exploit, --resume) begins from it. The trial's config always wins over the checkpoint's, so
mutated values are what the schedules and optimisers use after a restore.

A search space is a TOML file in the format of experiments/: inside a section such as [loss], a
plain value overrides the experiment for every trial and a one-key inline table such as
``lambda_ds = { uniform = [0.5, 2.0] }`` is searched. [tune] holds the metric and the budget,
[scheduler] the scheduler and its settings. Everything is checked against the experiment before
Ray starts.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import sys
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import (SECTIONS, SYNTHETIC, ConfigError, ExperimentConfig, config_keys, from_dict,
                     get_key, read_toml, to_toml, with_overrides)
from .models import TRAINED
from .train import RunOptions, storage_uri

SPACES_DIR = Path(__file__).resolve().parent.parent / "tune_spaces"
TIME_ATTR = "step"  # what trials report and schedulers count in: optimisation steps
EVAL_METRIC = "fid_quick"  # the metric the training loop adds at every train.eval_every
# What every report of a trial carries (train._train): engine.train_step's stats under their
# official names, the learning rates and the throughput. A metric outside these and EVAL_METRIC
# passes Tune's own checks and then fails the sweep at the first result. "step" is left out: it
# is the time axis the schedulers count in, not a score.
LOSS_METRICS = (
    *(f"D/{mode}_{term}" for mode in ("latent", "ref") for term in ("real", "fake", "reg")),
    *(f"G/{mode}_{term}" for mode in ("latent", "ref") for term in ("adv", "sty", "ds", "cyc")),
    "G/lambda_ds",
)
RUN_METRICS = (*(f"lr/{name}" for name in TRAINED), "images_per_s", "eta_s")
DISTRIBUTIONS = {
    "choice": "a non-empty list of values",
    "grid": "a non-empty list of values (every one is run)",
    "uniform": "[low, high] with low < high",
    "loguniform": "[low, high] with 0 < low < high",
    "randint": "[low, high] integers with low < high (high excluded)",
}
SCHEDULER_KEYS: dict[str, dict[str, type]] = {
    "fifo": {},
    "asha": {"grace_period": int, "reduction_factor": float, "max_t": int},
    "pbt": {"perturbation_interval": int, "burn_in_period": int, "quantile_fraction": float,
            "resample_probability": float, "perturbation_factors": list, "synch": bool},
}
TUNE_KEYS: dict[str, type] = {"metric": str, "mode": str, "num_samples": int,
                              "max_concurrent": int, "max_failures": int, "search": str,
                              "seed": int}
SEARCHERS = ("random", "optuna")
# PBT copies a checkpoint into a trial with other values: only values that do not change the
# networks or the data plan the checkpoint was made with may differ.
PBT_SECTIONS = ("loss", "optim")
# The trial process only waits on its Train run, whose workers hold the CPUs and GPUs; Tune
# refuses an empty request, so it gets a sliver.
TRIAL_DRIVER_CPUS = 0.1
# Each trial runs its own Ray Data pipeline: CPUs for it beside the workers' (docs/ray.md: Ray
# Data starves when the workers hold every CPU).
DATA_CPUS_PER_TRIAL = 1
TRAIN_FOLDER = "train"  # inside the sweep folder: the trials' Ray Train runs


# ---------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class Dist:
    """One searched key: a distribution name and its arguments, as written in the space file."""

    key: str
    kind: str
    args: tuple

    def domain(self):
        """The Ray Tune search domain for the initial values."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform,
                "randint": tune.randint}[self.kind](*self.args)

    def mutation(self):
        """What PBT explores: lists shift to a neighbour, ranges are scaled or resampled."""
        from ray import tune

        if self.kind in ("grid", "choice"):
            return list(self.args)
        return {"uniform": tune.uniform, "loguniform": tune.loguniform,
                "randint": tune.randint}[self.kind](*self.args)

    def clip(self, value: Any) -> Any:
        """Keep a PBT-perturbed value (x0.8, x1.2) inside the searched range."""
        if self.kind in ("uniform", "loguniform"):
            return min(max(float(value), self.args[0]), self.args[1])
        if self.kind == "randint":
            return min(max(int(value), self.args[0]), self.args[1] - 1)
        return value

    def extremes(self) -> tuple:
        """Values that bound what a trial can get, for validation against the config."""
        if self.kind in ("grid", "choice"):
            return self.args
        if self.kind == "randint":
            return (self.args[0], self.args[1] - 1)
        return tuple(float(a) for a in self.args)  # Tune draws floats from ranges


@dataclass(frozen=True)
class Space:
    """A parsed search-space file."""

    name: str
    searched: tuple[Dist, ...]
    fixed: tuple[tuple[str, Any], ...] = ()
    metric: str = EVAL_METRIC
    mode: str = "min"
    scheduler: str = "asha"
    scheduler_args: tuple[tuple[str, Any], ...] = ()
    num_samples: int = 4
    max_concurrent: int | None = None
    max_failures: int = 2
    search: str = "random"
    seed: int | None = None

    def keys(self) -> list[str]:
        return [d.key for d in self.searched]

    def setting(self, name: str, default: Any = None) -> Any:
        return dict(self.scheduler_args).get(name, default)


def space_path(name_or_path: str | Path) -> Path:
    """Resolve a space name (``quick``) or a path to its TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"space: no such file {path}")
        return path
    candidate = SPACES_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in SPACES_DIR.glob("*.toml"))
    raise ConfigError(f"space: {name_or_path!r} is neither a file nor one of {', '.join(known)}")


def _typed(where: str, value: Any, tp: type) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    else:
        ok = (isinstance(value, tp) and not isinstance(value, bool)) or (
            tp is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def _table(where: str, raw: dict[str, Any], allowed: dict[str, type]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    out = {}
    for key, value in raw.items():
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key; allowed keys: {', '.join(allowed)}")
        out[key] = _typed(f"{where}.{key}", value, allowed[key])
    return out


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_dist(key: str, spec: dict[str, Any]) -> Dist:
    """``{ uniform = [0.5, 2] }`` -> Dist; the message says what each distribution takes."""
    if len(spec) != 1:
        raise ConfigError(f"{key}: a searched key names exactly one distribution "
                          f"({', '.join(DISTRIBUTIONS)}), got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{key}: unknown distribution {kind!r}; allowed: "
                          f"{', '.join(DISTRIBUTIONS)}")
    wants = f"{key}: {kind} takes {DISTRIBUTIONS[kind]}, got {args!r}"
    if not isinstance(args, list) or not args:
        raise ConfigError(wants)
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(_number(a) for a in args) or not args[0] < args[1]:
            raise ConfigError(wants)
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(wants)
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(wants)
    elif len(set(map(repr, args))) != len(args):
        raise ConfigError(f"{key}: {kind} lists a value twice: {args!r}")
    return Dist(key, kind, tuple(args))


def read_space(name_or_path: str | Path) -> Space:
    """Parse a space file; keys and values are checked against an experiment by check_space."""
    path = space_path(name_or_path)
    raw = read_toml(path)
    try:
        return _parse_space(path.stem, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _parse_space(name: str, raw: dict[str, Any]) -> Space:
    allowed = ["tune", "scheduler", *SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown section; allowed: {', '.join(allowed)}")
    tune = _table("tune", raw.get("tune", {}), TUNE_KEYS)
    sched = dict(raw.get("scheduler", {"kind": "asha"}))
    kind = sched.pop("kind", None)
    if kind not in SCHEDULER_KEYS:
        raise ConfigError(f"scheduler.kind: must be one of {', '.join(SCHEDULER_KEYS)}, "
                          f"got {kind!r}")
    sched = _table("scheduler", sched, SCHEDULER_KEYS[kind])
    searched, fixed = [], []
    for section in SECTIONS:
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a table of keys, got {values!r}")
        for key, value in values.items():
            full = f"{section}.{key}"
            if full not in config_keys():
                raise ConfigError(f"{full}: not a config key; keys of [{section}]: "
                                  + ", ".join(k.split('.')[1] for k in config_keys()
                                              if k.startswith(section + ".")))
            if isinstance(value, dict):
                searched.append(parse_dist(full, value))
            else:
                fixed.append((full, value))
    if not searched:
        raise ConfigError("no searched keys: name at least one, e.g. [loss] "
                          "lambda_ds = { uniform = [0.5, 2.0] }")
    space = Space(name=name, searched=tuple(searched), fixed=tuple(fixed), scheduler=kind,
                  scheduler_args=tuple(sched.items()), **tune)
    _check_settings(space)
    return space


def reported_metrics() -> tuple[str, ...]:
    """Names tune.metric can take: what trials report (fid_quick every train.eval_every)."""
    return (EVAL_METRIC, *LOSS_METRICS, *RUN_METRICS)


def _check_settings(space: Space) -> None:
    """What can be checked without the experiment: modes, counts, searcher, scheduler values."""
    if space.mode not in ("min", "max"):
        raise ConfigError(f"tune.mode: must be min or max, got {space.mode!r}")
    if space.metric not in reported_metrics():
        raise ConfigError(f"tune.metric: no trial reports {space.metric!r}; trials report "
                          f"{', '.join(reported_metrics())}")
    for key in ("num_samples", "max_concurrent"):
        value = getattr(space, key)
        if value is not None and value < 1:
            raise ConfigError(f"tune.{key}: must be >= 1, got {value}")
    if space.max_failures < 0:
        raise ConfigError(f"tune.max_failures: must be >= 0, got {space.max_failures}")
    if space.search not in SEARCHERS:
        raise ConfigError(f"tune.search: must be one of {', '.join(SEARCHERS)}, "
                          f"got {space.search!r}")
    if space.search == "optuna":
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("tune.search: optuna is not installed "
                              "(pip install 'stargan-ray[tune]'), or use search = \"random\"")
        if space.scheduler == "pbt":
            raise ConfigError("tune.search: PBT explores by itself; use search = \"random\"")
        if any(d.kind == "grid" for d in space.searched):
            raise ConfigError("tune.search: optuna cannot run a grid; use choice")
    s = space.setting
    if space.scheduler == "asha":
        if s("grace_period") is None or s("grace_period") < 1:
            raise ConfigError("scheduler.grace_period: ASHA needs the steps a trial runs before "
                              f"it can be stopped (>= 1), got {s('grace_period')!r}")
        if s("reduction_factor", 4) <= 1:
            raise ConfigError(f"scheduler.reduction_factor: must be > 1, "
                              f"got {s('reduction_factor')}")
    if space.scheduler == "pbt":
        if s("perturbation_interval") is None or s("perturbation_interval") < 1:
            raise ConfigError("scheduler.perturbation_interval: PBT needs the steps between "
                              f"exploits (>= 1), got {s('perturbation_interval')!r}")
        if not 0 < s("quantile_fraction", 0.25) <= 0.5:
            raise ConfigError(f"scheduler.quantile_fraction: must be in (0, 0.5], "
                              f"got {s('quantile_fraction')}")
        if not 0 <= s("resample_probability", 0.25) <= 1:
            raise ConfigError(f"scheduler.resample_probability: must be in [0, 1], "
                              f"got {s('resample_probability')}")
        factors = s("perturbation_factors", [1.2, 0.8])
        if len(factors) != 2 or not all(_number(f) and f > 0 for f in factors):
            raise ConfigError(f"scheduler.perturbation_factors: two positive numbers, "
                              f"got {factors!r}")
        for d in space.searched:
            if d.key.split(".")[0] not in PBT_SECTIONS:
                raise ConfigError(f"{d.key}: PBT mutates only [{'], ['.join(PBT_SECTIONS)}] "
                                  "keys; others change the networks or the data a checkpoint "
                                  "was made with (use ASHA for them)")


def check_space(space: Space, cfg: ExperimentConfig) -> ExperimentConfig:
    """Validate space against the experiment; return the config every trial starts from.

    Every value a trial can get is applied to the config once, so a bad key, a value of the wrong
    type or outside what the config allows fails here, before Ray starts.
    """
    try:
        base = with_overrides(cfg, space.fixed)
        for d in space.searched:
            for value in d.extremes():
                with_overrides(base, [(d.key, value)])
        _check_budget(space, base)
    except ConfigError as err:
        raise ConfigError(f"space {space.name}: {err}") from None
    return base


def _check_budget(space: Space, base: ExperimentConfig) -> None:
    t, s = base.train, space.setting
    if space.metric == EVAL_METRIC:
        if t.total_iters % t.eval_every:
            # The loop evaluates only at multiples of eval_every: the last result must carry it.
            raise ConfigError(f"train.eval_every: {EVAL_METRIC} is the metric, so "
                              f"train.total_iters ({t.total_iters}) must be a multiple of it, "
                              f"got {t.eval_every}")
        if space.scheduler != "fifo" and t.eval_every >= t.total_iters:
            raise ConfigError(f"train.eval_every: {t.eval_every} >= train.total_iters "
                              f"{t.total_iters}: trials would report {EVAL_METRIC} only at the "
                              f"end, too late for {space.scheduler}")
    if space.scheduler == "asha":
        max_t = s("max_t", t.total_iters)
        if not s("grace_period") <= max_t <= t.total_iters:
            raise ConfigError(f"scheduler: need grace_period ({s('grace_period')}) <= max_t "
                              f"({max_t}) <= train.total_iters ({t.total_iters})")
    if space.scheduler == "pbt":
        # PBT sees only results that carry a checkpoint, so that exploit copies the state the
        # decision was made on: every evaluation must come with one.
        if space.metric == EVAL_METRIC and t.eval_every % t.save_every:
            raise ConfigError(f"train.eval_every: PBT needs a checkpoint with every "
                              f"{EVAL_METRIC}; make it a multiple of train.save_every "
                              f"({t.save_every}), got {t.eval_every}")
        if s("perturbation_interval") >= t.total_iters:
            raise ConfigError(f"scheduler.perturbation_interval: {s('perturbation_interval')} "
                              f">= train.total_iters {t.total_iters}: PBT would never exploit")


# ---------------------------------------------------------------- schedulers and searchers


class ClipToSpace:
    """PBT's custom explore: keep perturbed values inside the searched ranges (picklable)."""

    def __init__(self, searched: tuple[Dist, ...]) -> None:
        self.searched = searched

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for d in self.searched:
            config[d.key] = d.clip(config[d.key])
        return config


def build_scheduler(space: Space, base: ExperimentConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = space.setting
    if space.scheduler == "asha":
        return ASHAScheduler(time_attr=TIME_ATTR, grace_period=s("grace_period"),
                             max_t=s("max_t", base.train.total_iters),
                             reduction_factor=s("reduction_factor", 4))
    if space.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr=TIME_ATTR, perturbation_interval=s("perturbation_interval"),
            burn_in_period=s("burn_in_period", 0), quantile_fraction=s("quantile_fraction", 0.25),
            resample_probability=s("resample_probability", 0.25),
            perturbation_factors=tuple(s("perturbation_factors", [1.2, 0.8])),
            synch=s("synch", False),
            hyperparam_mutations={d.key: d.mutation() for d in space.searched},
            custom_explore_fn=ClipToSpace(space.searched))
    return FIFOScheduler()


def build_searcher(space: Space, max_concurrent: int):
    """The search algorithm, limited to max_concurrent trials at once.

    Tune ignores TuneConfig.max_concurrent_trials when a BasicVariantGenerator is passed in, so
    the limit is set here for both.
    """
    if space.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(
            OptunaSearch(space={d.key: d.domain() for d in space.searched},
                         metric=space.metric, mode=space.mode, seed=space.seed),
            max_concurrent=max_concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=space.seed, max_concurrent=max_concurrent)


def param_space(space: Space) -> dict[str, Any]:
    """Flat Tune config: {"loss.lambda_ds": domain}; Optuna holds its own copy of the domains."""
    if space.search == "optuna":
        return {}
    return {d.key: d.domain() for d in space.searched}


# ---------------------------------------------------------------- one trial


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep shares (sent once to the trial actors)."""

    cfg: dict[str, Any]  # the base config: experiment + the space's fixed values, absolute paths
    metric: str
    checkpointed_results_only: bool  # PBT: report only results that carry a checkpoint
    run: RunOptions  # workers and storage of the trials' Train runs
    sweep: str  # W&B group


def _forwarder(queue):
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        """In the Train controller: rank 0's metrics and the checkpoint go to the trial.

        The put blocks while the trial has not taken the previous report, so training never
        runs far ahead of Tune and no Train checkpoint is deleted before Tune has copied it.
        """

        def after_report(self, run_context, metrics, checkpoint) -> None:
            queue.put((metrics[0], checkpoint))

    return ForwardReports()


def _uri(checkpoint) -> str:
    """A checkpoint folder as one string (a URI for object storage) for the training workers."""
    import pyarrow.fs as pafs

    fs = checkpoint.filesystem
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return checkpoint.path
    return f"{fs.type_name}://{checkpoint.path}"


def trial_run_name(trial_id: str, start: dict[str, Any] | None, start_uri: str | None) -> str:
    """The Train run a trial (re)starts, named from the trial id, never from the clock.

    A trial restarted from its own checkpoint (a retried failure, --resume, a PBT pause)
    continues the run that wrote it; one restored from another trial's checkpoint (a PBT
    exploit) begins a new run named after that checkpoint, so it never picks up its own older
    checkpoints by mistake.
    """
    if start is None:
        return trial_id
    own = start["run"] == trial_id or start["run"].startswith(f"{trial_id}-")
    if own:
        return start["run"]
    digest = hashlib.sha1(start_uri.encode()).hexdigest()[:8]
    return f"{trial_id}-{start['step']:08d}-{digest}"


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable: one distributed training run with this trial's values."""
    from ray import tune
    from ray.util.queue import Queue

    from .train import build_trainer, read_stop_marker

    trial_id = tune.get_context().get_trial_id()
    cfg = with_overrides(from_dict(spec.cfg), list(config.items()))
    checkpoint = tune.get_checkpoint()
    start = (checkpoint.get_metadata() or None) if checkpoint is not None else None
    start_uri = _uri(checkpoint) if checkpoint is not None else None
    if start is not None and start["step"] >= cfg.train.total_iters:
        return  # a copy of a finished trial: nothing is left to train
    run_name = trial_run_name(trial_id, start, start_uri)
    opts = replace(spec.run, name=run_name, resume=True)
    run_dir = f"{storage_uri(opts.storage).rstrip('/')}/{run_name}"
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = build_trainer(
        cfg, opts, run_dir=run_dir, callbacks=[_forwarder(queue)],
        start_from=(start["step"], start_uri) if start else None,
        extra_loop_config={"wandb_group": spec.sweep, "run_name": f"{spec.sweep}-{trial_id}"})
    fit = _FitThread(trainer)
    for metrics, train_checkpoint in _reports(queue, fit):
        final = metrics[TIME_ATTR] >= cfg.train.total_iters
        if final:
            # Let the run finish cleanly (W&B, events) before Tune may end this trial, and mark
            # the result done so that no scheduler acts on it (PBT would copy a finished run).
            fit.join()
            metrics = {**metrics, "done": True}
        elif spec.metric not in metrics:
            continue
        if train_checkpoint is None and spec.checkpointed_results_only:
            continue
        tune_checkpoint = None
        if train_checkpoint is not None:
            tune_checkpoint = tune.Checkpoint(train_checkpoint.path, train_checkpoint.filesystem)
            tune_checkpoint.set_metadata({"step": int(metrics[TIME_ATTR]), "run": run_name})
        tune.report({**metrics, "train_run": run_name}, checkpoint=tune_checkpoint)
    fit.join()
    reason = read_stop_marker(run_dir)
    if reason is not None:
        raise RuntimeError(f"trial {trial_id}: {reason}")


class _FitThread(threading.Thread):
    """trainer.fit() beside the trial's report loop (tune.report must run in the trial thread)."""

    def __init__(self, trainer) -> None:
        super().__init__(daemon=True, name="stargan-ray-fit")
        self.trainer, self.error = trainer, None
        self.start()

    def run(self) -> None:
        try:
            self.trainer.fit()
        except BaseException as err:  # re-raised in the trial thread by join()
            self.error = err

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def _reports(queue, fit: _FitThread):
    """Items from the queue until the run has ended and the queue is empty."""
    from ray.util.queue import Empty

    while True:
        try:
            yield queue.get(timeout=1.0)
        except Empty:
            if not fit.is_alive():
                break
    while not queue.empty():  # a last report put just before fit() returned
        yield queue.get_nowait()


# ---------------------------------------------------------------- the sweep


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

    def sweep_name(self, cfg: ExperimentConfig, space: Space) -> str:
        return self.name or f"{cfg.name}-{space.name}"


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


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def _exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _write_text(uri: str, text: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def _read_text(uri: str) -> str:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _record(sweep_dir: str, cfg: ExperimentConfig, base: ExperimentConfig, space: Space,
            resume: bool) -> None:
    """sweep.json: what the sweep searches; --resume refuses a different experiment or space."""
    import json

    record = {"experiment": cfg.to_dict(), "base": base.to_dict(),
              "space": json.loads(json.dumps(asdict(space)))}
    text = json.dumps(record, indent=2, sort_keys=True)
    uri = f"{sweep_dir}/sweep.json"
    if resume and _exists(uri):
        if json.loads(_read_text(uri)) != json.loads(text):
            raise ConfigError(f"--resume: the experiment or space differs from the one sweep "
                              f"{sweep_dir} started with (see its sweep.json)")
        return
    _write_text(uri, text)


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
    from .train import init_ray

    base = check_space(space, cfg)
    name = opts.sweep_name(cfg, space)
    storage = storage_uri(opts.storage)
    sweep_dir = f"{storage.rstrip('/')}/{name}"
    if opts.resume and not _exists(f"{sweep_dir}/sweep.json"):
        raise ConfigError(f"--resume: no sweep {name!r} in {storage}")
    if opts.resume and not _exists(f"{sweep_dir}/tuner.pkl"):
        raise ConfigError(f"--resume: sweep {name!r} stopped before Tune saved any state; "
                          f"delete {sweep_dir} and start it again")
    if not opts.resume and _exists(sweep_dir):
        raise ConfigError(f"--name: sweep {name!r} already exists in {storage}; pass --resume to "
                          f"continue it or choose another --name")
    _record(sweep_dir, cfg, base, space, opts.resume)

    concurrency = _concurrency(space, opts)
    # A local instance is sized for num_workers x cpus_per_worker (+ 2): here one "worker" per
    # concurrent trial, holding the trial's workers and its data pipeline.
    init_ray(RunOptions(num_workers=concurrency or 1, cpus_per_worker=_trial_cpus(opts)))
    tuner = _tuner(base, space, opts, name, storage, sweep_dir,
                   concurrency or _fit_concurrency(opts), callbacks)
    grid = tuner.fit()
    rows = results_table(grid, space, base)
    # Trials are created as slots free up, so an interrupted sweep may not list them all yet.
    interrupted = grid.num_terminated + grid.num_errors < trial_count(space, opts)
    best = best_row(rows, space)
    files = write_results(sweep_dir, rows, best, base, space, name)
    from .plots import write_trials_png  # plots/trials.png; warns and skips on any error

    files.update(write_trials_png(sweep_dir, grid, rows, best, space.metric, trial_id=_trial_id,
                                  step_key=TIME_ATTR))
    return SweepResult(sweep_dir, rows, best, interrupted, files)


def trial_count(space: Space, opts: SweepOptions) -> int:
    """Trials of the whole sweep: each sample runs every combination of the grid keys."""
    samples = opts.num_samples or space.num_samples
    return samples * math.prod(len(d.args) for d in space.searched if d.kind == "grid")


def _tuner(base: ExperimentConfig, space: Space, opts: SweepOptions, name: str, storage: str,
           sweep_dir: str, concurrency: int, callbacks: list | None):
    from ray import tune

    run = RunOptions(num_workers=opts.workers_per_trial, gpus_per_worker=opts.gpus_per_worker,
                     cpus_per_worker=opts.cpus_per_worker, storage=f"{sweep_dir}/{TRAIN_FOLDER}",
                     max_failures=0, wandb=opts.wandb)  # a failed run fails its trial: Tune retries
    spec = TrialSpec(cfg=_absolute_paths(base).to_dict(), metric=space.metric,
                     checkpointed_results_only=space.scheduler == "pbt", run=run, sweep=name)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec),
                                    {"CPU": TRIAL_DRIVER_CPUS})
    if opts.resume:
        return tune.Tuner.restore(sweep_dir, trainable=trainable)
    keep = max(base.train.keep_checkpoints, 4 if space.scheduler == "pbt" else 1)
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=build_scheduler(space, base),
            search_alg=build_searcher(space, concurrency),
            num_samples=opts.num_samples or space.num_samples, trial_name_creator=_trial_dirname,
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)))


# ---------------------------------------------------------------- results


def _trial_id(result) -> str:
    trial_id = result.metrics.get("trial_id") if result.metrics else None
    return trial_id or Path(result.path).name.removeprefix("trial_")


def trial_budget(space: Space, base: ExperimentConfig) -> int:
    """Steps a trial runs unless stopped early: ASHA's max_t, else train.total_iters."""
    if space.scheduler == "asha":
        return space.setting("max_t", base.train.total_iters)
    return base.train.total_iters


def results_table(grid, space: Space, base: ExperimentConfig) -> list[dict[str, Any]]:
    """One row per trial: id, state, steps run, best metric and its step, searched values.

    state: completed (ran its budget, see trial_budget), stopped (early, by the scheduler),
    error (after its retries), incomplete (the sweep was interrupted; --resume continues it).
    """
    best_key = f"best_{space.metric}"
    budget = trial_budget(space, base)
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        row: dict[str, Any] = {"trial_id": _trial_id(result), "state": "", "steps": 0,
                               best_key: None, "best_step": None}
        if history is not None and space.metric in history and TIME_ATTR in history:
            history = history.dropna(subset=[space.metric])
            if len(history):
                pick = history[space.metric].idxmin() if space.mode == "min" else \
                    history[space.metric].idxmax()
                row[best_key] = float(history[space.metric][pick])
                row["best_step"] = int(history[TIME_ATTR][pick])
                row["steps"] = int(history[TIME_ATTR].max())
        for d in space.searched:
            row[d.key] = result.config.get(d.key)
        done = bool(result.metrics and result.metrics.get("done"))
        if result.error is not None:
            row["state"] = "error"
        elif row["steps"] >= budget:
            row["state"] = "completed"
        else:
            row["state"] = "stopped" if done else "incomplete"
        row["error"] = None if result.error is None else str(result.error).strip().splitlines()[-1]
        row["train_run"] = (result.metrics or {}).get("train_run", "")
        rows.append(row)
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def best_row(rows: list[dict[str, Any]], space: Space) -> dict[str, Any] | None:
    key = f"best_{space.metric}"
    scored = [r for r in rows if r[key] is not None and math.isfinite(r[key])]
    if not scored:
        return None
    sign = 1 if space.mode == "min" else -1
    return min(scored, key=lambda r: sign * r[key])


def best_config(base: ExperimentConfig, space: Space, best: dict[str, Any],
                sweep: str) -> ExperimentConfig:
    values = [(d.key, best[d.key]) for d in space.searched]
    return with_overrides(base, [("name", f"{sweep}-best"), *values])


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    columns = [c for c in rows[0] if c not in ("error", "train_run")]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    lines += [f"{r['trial_id']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines)


def write_results(sweep_dir: str, rows: list[dict[str, Any]], best: dict[str, Any] | None,
                  base: ExperimentConfig, space: Space, sweep: str) -> dict[str, str]:
    """results.csv and results.parquet (one row per trial) and best.toml in the sweep folder."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = _fs(sweep_dir)
    columns = list(rows[0]) if rows else ["trial_id"]
    table = pa.table({c: _column([r[c] for r in rows]) for c in columns})
    with fs.open_output_stream(f"{path}/results.csv") as f:
        pacsv.write_csv(table, f)
    pq.write_table(table, f"{path}/results.parquet", filesystem=fs)
    files = {"csv": f"{sweep_dir}/results.csv", "parquet": f"{sweep_dir}/results.parquet"}
    if best is not None:
        cfg = best_config(base, space, best, sweep)
        searched = ", ".join(f"{d.key}={best[d.key]!r}" for d in space.searched)
        header = (f"# Best trial {best['trial_id']} of sweep {sweep}: "
                  f"best_{space.metric}={best[f'best_{space.metric}']:.6g} at step "
                  f"{best['best_step']}.\n# Searched: {searched}\n")
        _write_text(f"{sweep_dir}/best.toml", header + to_toml(cfg))
        files["best"] = f"{sweep_dir}/best.toml"
    return files


def _column(values: list[Any]) -> list[Any]:
    """One Arrow type per column: a column mixing ints and floats becomes float."""
    if any(isinstance(v, float) for v in values):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    return values


# ---------------------------------------------------------------- command line


def _cli_tune(args: argparse.Namespace) -> int:
    from .cli import experiment_from_args

    cfg = experiment_from_args(args)
    space = read_space(args.space)
    opts = SweepOptions(storage=args.storage, name=args.name, num_samples=args.num_samples,
                        workers_per_trial=args.workers_per_trial,
                        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                        max_concurrent=args.max_concurrent, resume=args.resume, wandb=args.wandb)
    if args.dry_run:
        base = check_space(space, cfg)
        print(to_toml(base))
        print(f"# searched: {', '.join(f'{d.key}={d.kind}{list(d.args)}' for d in space.searched)}")
        print(f"# scheduler: {space.scheduler} {dict(space.scheduler_args)}; metric "
              f"{space.metric} ({space.mode}); samples {opts.num_samples or space.num_samples}")
        return 0
    result = run_sweep(cfg, space, opts)
    print(format_table(result.rows))
    for kind, uri in result.files.items():
        print(f"{kind}: {uri}")
    if result.interrupted:
        print(f"sweep interrupted; continue it with --resume (folder {result.sweep_dir})",
              file=sys.stderr)
        return 130
    return 0


def add_cli(subparsers) -> None:
    from .cli import add_experiment_args, nonnegative_float, positive_int

    p = subparsers.add_parser("tune", help="search hyperparameters with Ray Tune (ASHA, PBT)")
    add_experiment_args(p)
    p.add_argument("--space", required=True,
                   help="search space: a name in tune_spaces/ or a path to a .toml file")
    p.add_argument("--num-samples", type=positive_int,
                   help="trials (default: the space's tune.num_samples)")
    p.add_argument("--workers-per-trial", type=positive_int, default=1,
                   help="Ray Train workers per trial (one per GPU)")
    p.add_argument("--gpus-per-worker", type=nonnegative_float, default=0.0)
    p.add_argument("--cpus-per-worker", type=nonnegative_float, default=1.0)
    p.add_argument("--max-concurrent", type=positive_int,
                   help="trials at once (default: the space's, else what the cluster fits)")
    p.add_argument("--storage", default="runs",
                   help="sweep storage: a local or shared path, or a URI such as s3://bucket/runs")
    p.add_argument("--name", help="sweep name (default: EXPERIMENT-SPACE)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep from its storage folder")
    p.add_argument("--wandb", choices=("online", "offline", "disabled"), default=None,
                   help="W&B mode, one run per trial grouped by sweep (default: $WANDB_MODE, "
                        "else offline)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the space against the experiment, print it, and exit")
    p.set_defaults(func=_cli_tune)


__all__ = ["Dist", "Space", "SweepOptions", "SweepResult", "read_space", "check_space",
           "run_sweep", "run_trial", "results_table", "best_row", "best_config", "trial_run_name",
           "add_cli"]
