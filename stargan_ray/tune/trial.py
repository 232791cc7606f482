"""One trial: a small driver that fits a distributed TorchTrainer with the trial's values.

Each trial is a function trainable (the pattern Ray recommends for Train inside Tune: passing a
trainer to Tuner is gone in Train V2) that builds the experiment with the trial's values, plans the
run through train.plan_run (the one place that chooses a start point) and fits a TorchTrainer from
train.build_trainer. A Train callback sends rank 0's reports through a 0-CPU
queue actor to the trial, which reports them to Tune. Ray's TuneReportCallback does the same
without checkpoints, but PBT needs real Tune checkpoints: a report that carries a Train
checkpoint hands that folder to Tune, so exploit can copy it and any restart (a retried failure,
a PBT exploit, --resume) begins from it. The trial's config always wins over the checkpoint's, so
mutated values are what the schedules and optimisers use after a restore.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

from ..config import ExperimentConfig, from_dict, with_overrides
from ..storage import is_uri, uri_at
from ..train import RunOptions
from .space import TIME_ATTR

log = logging.getLogger(__name__)


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


def _uri(checkpoint, storage: str) -> str:
    """A checkpoint folder as one string for the training workers: a local path, or a URI with
    the scheme and query (endpoint, options) of the sweep's storage, where Tune keeps it."""
    import pyarrow.fs as pafs

    fs = checkpoint.filesystem
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return checkpoint.path
    if is_uri(storage) and storage.split("://", 1)[0] == fs.type_name:
        return uri_at(storage, checkpoint.path)
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


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> ExperimentConfig:
    """A trial's experiment: the sweep's base with the trial's values, fid_quick inline. ASHA and
    PBT decide on the values each report carries, so the fid_quick reported at a step must be
    that step's; a validation beside the loop would arrive steps later (docs/ray.md). Full
    evaluations (train.full_eval_every) run only beside training: a trial runs none."""
    cfg = with_overrides(from_dict(base), list(values.items()))
    return replace(cfg, eval=replace(cfg.eval, validation="inline"),
                   train=replace(cfg.train, full_eval_every=0))


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable: one distributed training run with this trial's values."""
    from ray import tune
    from ray.util.queue import Queue

    from ..train import (StartPoint, TrialStart, build_trainer, consume_stop_reason, plan_run,
                         worker_spec)

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(spec.cfg, config)
    checkpoint = tune.get_checkpoint()
    start = (checkpoint.get_metadata() or None) if checkpoint is not None else None
    start_uri = _uri(checkpoint, spec.run.storage) if checkpoint is not None else None
    if start is not None and start["step"] >= cfg.train.total_iters:
        return  # a copy of a finished trial: nothing is left to train
    run_name = trial_run_name(trial_id, start, start_uri)
    opts = replace(spec.run, name=run_name)
    plan = plan_run(cfg, opts, trial=TrialStart(StartPoint(start["step"], start_uri)
                                                if start else None))
    for line in plan.notes:
        log.warning("trial %s: %s", trial_id, line)
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = build_trainer(
        worker_spec(cfg, opts, plan, wandb_name=f"{spec.sweep}-{trial_id}",
                    wandb_group=spec.sweep, report_logs=True), opts, callbacks=[_forwarder(queue)])
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
    reason = consume_stop_reason(plan.run_dir)
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
