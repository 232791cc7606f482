"""Hyperparameter search on Ray Tune: spaces from tune_spaces/, ASHA / PBT, one TorchTrainer each.

- space: the space files, parsed into a Space of Dists and checked against the experiment.
- schedulers: ASHA / PBT / FIFO and the random or Optuna searcher for a Space.
- trial: the driver of one trial, which fits a distributed TorchTrainer and reports to Tune.
- sweep: SweepOptions and run_sweep, which starts or resumes Tune and keeps the sweep folder.
- results: one row per trial, the best trial, its config and the results files.
"""

from .results import best_config, best_row, results_table
from .space import Dist, Space, check_space, read_space
from .sweep import SweepOptions, SweepResult, run_sweep
from .trial import run_trial, trial_run_name

__all__ = ["Dist", "Space", "SweepOptions", "SweepResult", "read_space", "check_space",
           "run_sweep", "run_trial", "results_table", "best_row", "best_config", "trial_run_name"]
