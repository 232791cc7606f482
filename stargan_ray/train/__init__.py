"""Distributed training on Ray Train.

- spec: WorkerSpec, everything a worker needs, built once by the driver.
- plan: RunOptions (how to run), the run folder and the one place that chooses the start point.
- checkpoints: checkpoint discovery (a run's folders, the newest complete one, best, eval --run's
  list).
- best: keeping the best fid_quick checkpoint of a run (train.keep_best).
- worker: the loop each Ray Train worker runs around engine.train_step, the gradient all-reduce.
- logger: what a run records (console, metrics.jsonl, W&B, TensorBoard, events); samples: the
  sample grids; quick_eval: fid_quick over the ranks.
- saving: a checkpoint save (rank 0 writes, every rank reports; a full disk stops the run).
- validation: eval.validation = "beside": fid_quick as Ray Train validation tasks on the eval
  steps' checkpoints while the workers train on; rank 0 logs their results at their steps.
- records: a URI run folder's records (events, metrics, plots, samples) uploaded as they change
  and continued on a restart elsewhere; storage_faults: an object store that fails mid-run.
- run_lock: one run per run folder (RUN.lock, held by the driver).
- driver: the TorchTrainer for a run, run_training, Ctrl+C and self-stopped runs.
- cluster: joining RAY_ADDRESS or starting a local Ray instance.
"""

from .best import keep_best
from .checkpoints import (StartPoint, best_checkpoint, checkpoint_folders, latest_checkpoint,
                          newest_complete_checkpoint, read_best, run_checkpoints)
from .cluster import init_ray, quiet_ray_data, start_local_ray
from .driver import TrainingInterrupted, build_trainer, resume_hint, run_training, worker_spec
from .plan import (SNAPSHOT_FILE, RunOptions, RunPlan, TrialStart, plan_run, reconcile_snapshot,
                   storage_uri)
from .spec import WorkerSpec
from .worker import (NonFiniteWeights, StatsWindow, TrainingStopped, consume_stop_reason,
                     make_grad_sync, train_loop_per_worker, weights_finite)

__all__ = ["RunOptions", "RunPlan", "StartPoint", "TrialStart", "WorkerSpec", "TrainingInterrupted",
           "TrainingStopped", "NonFiniteWeights", "build_trainer", "worker_spec", "run_training",
           "resume_hint", "plan_run", "train_loop_per_worker", "make_grad_sync",
           "checkpoint_folders", "latest_checkpoint", "newest_complete_checkpoint",
           "run_checkpoints", "reconcile_snapshot", "SNAPSHOT_FILE", "storage_uri", "StatsWindow",
           "weights_finite", "consume_stop_reason", "keep_best", "read_best", "best_checkpoint",
           "init_ray", "start_local_ray", "quiet_ray_data"]
