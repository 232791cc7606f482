"""The driver side of a run: the TorchTrainer for a config, fit, Ctrl+C and self-stopped runs."""

from __future__ import annotations

import logging
import signal
from typing import Callable

from ..config import ExperimentConfig
from ..errors import UserError
from .cluster import quiet_ray_data
from .plan import (RunOptions, RunPlan, StartPoint, check_not_finished, newest_complete_checkpoint,
                   plan_run, ray_storage, reconcile_snapshot, storage_uri)
from .worker import TrainingStopped, read_stop_marker, train_loop_per_worker

log = logging.getLogger(__name__)


def build_trainer(cfg: ExperimentConfig, opts: RunOptions, *, extra_loop_config: dict | None = None,
                  callbacks: list | None = None, run_dir: str | None = None,
                  start_from: tuple[int, str] | None = None):
    """A TorchTrainer for cfg: the training data, scaling, storage, failures, checkpoints.

    With opts.resume the run continues from its newest complete checkpoint when it has one
    (a fresh run otherwise: Tune trials pass resume=True for every start). start_from:
    (step, checkpoint folder) to begin from when the run has no checkpoint of its own (a Tune
    trial restarted from a Tune checkpoint, possibly another trial's under PBT).
    """
    run_dir = run_dir or opts.run_dir(cfg)
    start = None
    if opts.resume:
        start, broken = newest_complete_checkpoint(run_dir, cfg)
        for reason in broken:
            log.warning("skipping broken %s", reason)
    if start is None and start_from is not None:
        start = StartPoint(*start_from)
    check_not_finished(start, cfg)
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

    from ..data.pipeline import prepare_train_data

    quiet_ray_data()
    opts.check_batch(cfg)  # plan_run checked it for the CLI; Tune trials and the API come here
    aside = reconcile_snapshot(run_dir, start)
    if aside is not None:
        log.info("moved Ray's checkpoint snapshot (it disagrees with the run folder) to %s", aside)
    resources = opts.resources()
    loop_config = {
        "cfg": cfg.to_dict(),
        "run_dir": run_dir,
        "run_name": opts.run_name(cfg),
        "wandb": opts.wandb,
        "threads_per_worker": max(1, int(opts.cpus_per_worker)),
        "start_checkpoint": {"step": start.step, "uri": start.uri} if start else None,
        "init_from": ({"uri": storage_uri(opts.init_from), "map": list(opts.init_map)}
                      if opts.init_from else None),
        # The table in the object store; each worker streams its own lanes (data/pipeline.py).
        "data": prepare_train_data(cfg),
        **(extra_loop_config or {}),
    }
    return _trainer_class()(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=resources["backend"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources["num_workers"], use_gpu=resources["use_gpu"],
            resources_per_worker=resources["resources_per_worker"]),
        run_config=ray.train.RunConfig(
            name=opts.run_name(cfg), **ray_storage(opts.storage),
            failure_config=ray.train.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks),
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
                 note: Callable[[str], None] | None = print, **kwargs):
    """Validate (plan_run), then fit; returns the ray.train.Result.

    Ctrl+C raises TrainingInterrupted (a KeyboardInterrupt) once the workers are stopped; a run
    that stopped itself (train.nan_policy) raises TrainingStopped with its reason.
    """
    plan = plan or plan_run(cfg, opts)
    for line in plan.notes if note else ():
        note(line)
    trainer = None
    try:
        trainer = _build_trainer(cfg, opts, plan.run_dir, plan.start, **kwargs)
        result = trainer.fit()
    except KeyboardInterrupt:
        abort(trainer)
        raise TrainingInterrupted(resume_hint(plan.run_dir, cfg, opts.run_name(cfg))) from None
    reason = read_stop_marker(plan.run_dir)
    if reason is not None:
        raise TrainingStopped(reason)
    return result
