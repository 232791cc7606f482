"""The driver side of a run: the TorchTrainer for a config, fit, Ctrl+C and self-stopped runs."""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable

from ..config import ExperimentConfig
from ..errors import UserError
from ..storage import basename
from .checkpoints import newest_complete_checkpoint, prune_checkpoints
from .cluster import quiet_ray_data
from .plan import RunOptions, RunPlan, plan_run, ray_storage, reconcile_snapshot, storage_uri
from .run_lock import hold_run_folder
from .storage_faults import StorageFailed, failed_storage_line
from .spec import WorkerSpec
from .validation import plan_validation
from .worker import TrainingStopped, consume_stop_reason, train_loop_per_worker

log = logging.getLogger(__name__)

# Ray Train's controller takes one report per worker each time it polls the workers (every 2 s by
# default); a report made sooner waits in the worker, and with asynchronous uploads the next
# checkpoint's upload waits behind it. Ray passes this variable on to the controller it starts;
# a value the user set is kept.
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_S = 0.5


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


def worker_spec(cfg: ExperimentConfig, opts: RunOptions, plan: RunPlan, *,
                wandb_name: str | None = None, wandb_group: str | None = None,
                report_logs: bool = False) -> WorkerSpec:
    """The one WorkerSpec of a run (built on the driver): the plan's folder and start, the
    training data put in the object store (each worker streams its own lanes, data/pipeline.py).
    wandb_name / wandb_group: a Tune trial's W&B run (default: the run name, no group);
    report_logs: a Tune trial's reports at every log step (spec.WorkerSpec)."""
    from ..data.pipeline import prepare_train_data

    return WorkerSpec(cfg=cfg, run_dir=plan.run_dir, run_name=wandb_name or opts.run_name(cfg),
                      data=prepare_train_data(cfg), start=plan.start, wandb=opts.wandb,
                      wandb_group=wandb_group,
                      threads_per_worker=max(1, int(opts.cpus_per_worker)),
                      init_from=storage_uri(opts.init_from) if opts.init_from else None,
                      init_map=tuple(opts.init_map), report_logs=report_logs)


def build_trainer(spec: WorkerSpec, opts: RunOptions, *, callbacks: list | None = None):
    """A TorchTrainer for a planned run (plan_run chose spec.start): scaling, storage, failures,
    checkpoints. The CLI, run_training and Tune trials all come through here."""
    import ray.train
    from ray.train.torch import TorchConfig

    quiet_ray_data()
    os.environ.setdefault(POLL_ENV, str(REPORT_POLL_S))
    aside = reconcile_snapshot(spec.run_dir, spec.start)
    if aside is not None:
        log.info("moved Ray's checkpoint snapshot (it disagrees with the run folder) to %s", aside)
    spec, validation = plan_validation(spec, opts)
    resources = opts.resources()
    return _trainer_class()(
        train_loop_per_worker,
        train_loop_config=spec.loop_config(),
        torch_config=TorchConfig(backend=resources["backend"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources["num_workers"], use_gpu=resources["use_gpu"],
            resources_per_worker=resources["resources_per_worker"],
            elastic_resize_monitor_interval_s=opts.resize_check_s),
        run_config=ray.train.RunConfig(
            name=opts.run_name(spec.cfg), **ray_storage(opts.storage),
            failure_config=ray.train.FailureConfig(
                max_failures=opts.max_failures,
                max_preemption_failures=spec.cfg.train.max_preemptions),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.cfg.train.keep_checkpoints),
            callbacks=callbacks),
        validation_config=validation,
    )


def _raise_if_storage_failed(run_dir: str, checkpoint) -> None:
    """StorageFailed (one line) when the run's object storage no longer takes writes."""
    label = basename(checkpoint.path) if getattr(checkpoint, "path", None) else None
    line = failed_storage_line(run_dir, label)
    if line is not None:
        raise StorageFailed(line) from None


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


def abort(trainer) -> None:
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
                 note: Callable[[str], None] | None = print, callbacks: list | None = None):
    """Validate (plan_run), then fit; returns the ray.train.Result.

    Ctrl+C raises TrainingInterrupted (a KeyboardInterrupt) once the workers are stopped; a run
    that stopped itself (train.nan_policy) raises TrainingStopped with its reason. The run
    holds its folder while it runs (run_lock): a second run on it is refused.
    """
    plan = plan or plan_run(cfg, opts)
    for line in plan.notes if note else ():
        note(line)
    with hold_run_folder(plan.run_dir, force=opts.force, note=note):
        return _fit(cfg, opts, plan, callbacks)


def _fit(cfg: ExperimentConfig, opts: RunOptions, plan: RunPlan, callbacks: list | None):
    trainer = None
    try:
        trainer = build_trainer(worker_spec(cfg, opts, plan), opts, callbacks=callbacks)
        result = trainer.fit()
    except KeyboardInterrupt:
        abort(trainer)
        raise TrainingInterrupted(resume_hint(plan.run_dir, cfg, opts.run_name(cfg))) from None
    except Exception:
        _raise_if_storage_failed(plan.run_dir, None)  # Ray gave up: was it the storage?
        raise
    try:
        reason = consume_stop_reason(plan.run_dir)
    except OSError:
        _raise_if_storage_failed(plan.run_dir, result.checkpoint)
        raise
    if reason is not None:
        raise TrainingStopped(reason)
    for path in prune_checkpoints(plan.run_dir, cfg.train.keep_checkpoints):
        log.info("removed %s (train.keep_checkpoints=%d)", path, cfg.train.keep_checkpoints)
    return result
