"""Search spaces: the TOML files in tune_spaces/, parsed into a Space of searched keys.

A search space is a TOML file in the format of experiments/: inside a section such as [loss], a
plain value overrides the experiment for every trial and a one-key inline table such as
``lambda_ds = { uniform = [0.5, 2.0] }`` is searched. [tune] holds the metric and the budget,
[scheduler] the scheduler and its settings. Everything is checked against the experiment before
Ray starts: read_space checks what the file alone decides, check_space the rest.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import SECTIONS, ExperimentConfig, config_keys, read_toml, toml_file, with_overrides
from ..errors import ConfigError
from ..models import TRAINED

SPACES_DIR = Path(__file__).resolve().parents[2] / "tune_spaces"
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
    return toml_file(name_or_path, SPACES_DIR, "space")


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
