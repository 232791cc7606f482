"""Distributed training on Ray Train.

- plan: RunOptions (how to run), the run folder, its checkpoints and the one a run starts from.
- best: the kept best fid_quick checkpoint of a run (train.keep_best).
- worker: the loop each Ray Train worker runs around engine.train_step, the gradient all-reduce.
- driver: the TorchTrainer for a config, run_training, Ctrl+C and self-stopped runs.
- cluster: joining RAY_ADDRESS or starting a local Ray instance.
"""

from .best import best_checkpoint, keep_best, read_best
from .cluster import init_ray, quiet_ray_data, start_local_ray
from .driver import TrainingInterrupted, build_trainer, resume_hint, run_training
from .plan import (SNAPSHOT_FILE, RunOptions, RunPlan, StartPoint, checkpoint_folders,
                   latest_checkpoint, newest_complete_checkpoint, plan_run, reconcile_snapshot,
                   storage_uri)
from .worker import (NonFiniteWeights, StatsWindow, TrainingStopped, make_grad_sync,
                     read_stop_marker, train_loop_per_worker, weights_finite)

__all__ = ["RunOptions", "RunPlan", "StartPoint", "TrainingInterrupted", "TrainingStopped",
           "NonFiniteWeights", "build_trainer", "run_training", "resume_hint", "plan_run",
           "train_loop_per_worker", "make_grad_sync", "checkpoint_folders", "latest_checkpoint",
           "newest_complete_checkpoint", "reconcile_snapshot", "SNAPSHOT_FILE", "storage_uri",
           "StatsWindow", "weights_finite", "read_stop_marker", "keep_best", "read_best",
           "best_checkpoint", "init_ray", "start_local_ray", "quiet_ray_data"]
