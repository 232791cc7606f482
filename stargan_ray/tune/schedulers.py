"""Schedulers and searchers built from a Space: ASHA, PBT or FIFO; random or Optuna search."""

from __future__ import annotations

from typing import Any

from ..config import ExperimentConfig
from .space import TIME_ATTR, Dist, Space


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
