"""eval.validation = "beside": train.eval_every's fid_quick as a Ray Train validation task.

At an eval step the loop saves and reports the step's checkpoint with a validation request
(saving.save_report); Ray's controller then runs validate_checkpoint on it as a task with its own
resources (eval.validation_cpus / eval.validation_gpus), one at a time, while the workers train on,
and attaches the returned metrics to that checkpoint. The task loads nets_ema from the checkpoint
and calls the same quick_eval as the inline mode, so a checkpoint gets the same fid_quick either
way.

At train.full_eval_every's steps the task also runs the full evaluation (the official protocol,
metrics.evaluator.evaluate, both modes, cfg.eval's settings) and adds its numbers to the same
record. Each report says which evaluations its task runs: a ValidationTaskConfig whose fn_kwargs
override the defaults (BesideResults.request). Full evaluations run only beside training
(config.validate refuses them with eval.validation = "inline").

The run's records have one writer each: the task writes one small record per evaluated step
(<run>/validations/checkpoint_<step>.json, an atomic write) and, with train.keep_best, the best/
copy (validations run one at a time, and only the task keeps the best in this mode). Rank 0 picks
the records up at its log steps (BesideResults.pick_up) and logs each at its evaluated step to
metrics.jsonl, TensorBoard and W&B, then removes it; at the end of the loop it waits until Ray
has every validation done (get_all_reported_checkpoints, VALIDATED) and picks up the rest.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import Any

from ..config import ExperimentConfig, from_dict
from ..storage import filesystem, join, write_bytes
from .checkpoints import BEST_DIR, checkpoint_name, folder_step
from .spec import WorkerSpec

log = logging.getLogger(__name__)

RECORDS_DIR = "validations"


def task_resources(cfg: ExperimentConfig, gpus_per_worker: float) -> dict[str, float]:
    """ray.remote resources of the validation task: eval.validation_cpus, and
    eval.validation_gpus (-1: one GPU when the workers train on GPUs, else none)."""
    gpus = cfg.eval.validation_gpus
    if gpus < 0:
        gpus = 1.0 if gpus_per_worker > 0 else 0.0
    return {"num_cpus": cfg.eval.validation_cpus, "num_gpus": gpus}


def fits_beside(total: dict[str, float], workers: int, per_worker: dict[str, float],
                task: dict[str, float]) -> bool:
    """Whether the cluster's resources (total) hold the workers and one validation task."""
    need = {"CPU": workers * per_worker.get("CPU", 0) + task["num_cpus"],
            "GPU": workers * per_worker.get("GPU", 0) + task["num_gpus"]}
    return all(total.get(key, 0.0) + 1e-9 >= amount for key, amount in need.items() if amount)


def cluster_total() -> dict[str, float]:
    """The most of each resource the connected cluster has or may reach (its autoscaler's
    limit when one is configured)."""
    from .capacity import cluster_description

    cluster = cluster_description()
    if cluster.max_total is not None:
        return dict(cluster.max_total)
    total: dict[str, float] = {}
    for node in cluster.nodes:
        for key, amount in node.items():
            total[key] = total.get(key, 0.0) + amount
    return total


def plan_validation(spec: WorkerSpec, opts) -> tuple[WorkerSpec, Any]:
    """The run's spec and Ray's ValidationConfig (None: no beside validation). A beside run
    whose cluster cannot hold the task beside its workers (at their most) evaluates inline,
    with a warning: a task that waited for the workers' resources would wait for the run."""
    cfg, t = spec.cfg, spec.cfg.train
    full = 0 < t.full_eval_every <= t.total_iters
    if cfg.eval.validation != "beside" or (t.eval_every > t.total_iters and not full):
        return spec, None
    task = task_resources(cfg, opts.gpus_per_worker)
    per_worker = opts.resources()["resources_per_worker"]
    if not fits_beside(cluster_total(), opts.worker_range[1], per_worker, task):
        log.warning("eval.validation=beside: the cluster cannot hold a validation task (%s) "
                    "beside the workers; fid_quick runs inline (eval.validation=\"inline\" "
                    "says so without this warning)%s", task,
                    "; train.full_eval_every's full evaluations do not run" if full else "")
        # without full evaluations: the checkpoints' config must pass config.validate again
        inline = replace(cfg, eval=replace(cfg.eval, validation="inline"),
                         train=replace(t, full_eval_every=0))
        return replace(spec, cfg=inline), None
    return spec, validation_config(cfg, spec.run_dir, task)


def validation_config(cfg: ExperimentConfig, run_dir: str, resources: dict[str, float]):
    """Ray's ValidationConfig for a beside run: validate_checkpoint with the run's config."""
    import ray.train

    device = "cuda" if resources["num_gpus"] > 0 else "cpu"
    kwargs = {"cfg": cfg.to_dict(), "run_dir": run_dir, "device": device,
              "threads": max(1, int(resources["num_cpus"]))}
    return ray.train.ValidationConfig(
        fn=validate_checkpoint, task_config=ray.train.ValidationTaskConfig(fn_kwargs=kwargs),
        ray_remote_kwargs={k: v for k, v in resources.items()})


def validate_checkpoint(checkpoint, *, cfg: dict[str, Any], run_dir: str, device: str,
                        threads: int, quick: bool = True, full: bool = False
                        ) -> dict[str, float]:
    """The validation task: fid_quick of the checkpoint's nets_ema (the inline function and
    seeds) when quick, the full evaluation's numbers when full (full_evaluation), the best/ copy
    with train.keep_best, and the record rank 0 logs."""
    from pathlib import Path

    import torch

    from ..checkpoint import CHECKPOINT_FILE, load_ema_networks
    from .quick_eval import quick_eval

    torch.set_num_threads(threads)
    run_cfg = from_dict(cfg)
    step = folder_step(checkpoint.path)
    with checkpoint.as_directory() as folder:
        file = Path(folder) / CHECKPOINT_FILE
        _, nets_ema = load_ema_networks(file, run_cfg, device)
        metrics = quick_eval(nets_ema, run_cfg, device) if quick else {}
        if full:
            metrics.update(full_evaluation(nets_ema, run_cfg, step, device))
        best = run_cfg.train.keep_best and _keep_best(run_dir, step, metrics, file)
    record = {"step": step, **metrics, "best": bool(best)}
    write_bytes(join(run_dir, RECORDS_DIR, f"{checkpoint_name(step)}.json"),
                json.dumps(record).encode())
    return metrics


def full_evaluation(nets_ema, cfg: ExperimentConfig, step: int, device: str) -> dict[str, float]:
    """The official protocol in this process, both modes (as `stargan-ray eval`'s default), with
    cfg.eval's settings: FID, KID and LPIPS per task and their means, under their official keys.
    Values the evaluator could not compute (None) are left out: every record value is a number."""
    from ..metrics.evaluator import EvalOptions, evaluate
    from ..metrics.memory import give_back

    opts = EvalOptions(device=device, progress=False, keep_networks=False)
    try:
        results = evaluate(nets_ema, cfg, step=step, mode="both", opts=opts)
    finally:  # the task's process may run the next validation: nothing stays behind
        give_back(device)
    return {k: float(v) for k, v in results.items() if v is not None}


def _keep_best(run_dir: str, step: int, metrics: dict[str, float], file) -> bool:
    """best/ gets a copy of the validated checkpoint's file when its fid_quick is a new best."""
    import shutil

    from .best import keep_best

    def write(stream) -> None:
        with open(file, "rb") as source:
            shutil.copyfileobj(source, stream)

    return keep_best(run_dir, step, metrics, write, source=checkpoint_name(step))


class BesideResults:
    """Rank 0's side of beside validation: the finished validations' records, logged at their
    steps. Every method is a no-op on other ranks."""

    def __init__(self, run_dir: str, logger, rank: int) -> None:
        self.run_dir, self.logger, self.active = run_dir, logger, rank == 0

    @staticmethod
    def request(due) -> Any:
        """ray.train.report's validation for a step's worker.Due (every rank asks; saving sends
        rank 0's): False when the step evaluates nothing, else what the task runs on its
        checkpoint (fn_kwargs of validate_checkpoint)."""
        if not due.evaluates:
            return False
        import ray.train

        return ray.train.ValidationTaskConfig(fn_kwargs={"quick": due.eval,
                                                         "full": due.full_eval})

    def pick_up(self) -> list[int]:
        """Log and remove every record present; the steps logged, in order."""
        if not self.active:
            return []
        steps = []
        for step, path, record in self._records():
            metrics = {k: v for k, v in record.items() if k not in ("step", "best")}
            self.logger.evaluation(step, metrics)
            if record.get("best") and _finite(metrics.get("fid_quick")):
                self.logger.checkpoint_saved(join(self.run_dir, BEST_DIR, checkpoint_name(step)),
                                             step, metrics, ("best",))
            fs, _ = filesystem(self.run_dir)
            fs.delete_file(path)
            steps.append(step)
        return steps

    def finish(self) -> list[int]:
        """At the end of the loop: wait until Ray has every requested validation done (it runs
        them one at a time), then pick up their records."""
        if not self.active:
            return []
        import ray.train

        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.VALIDATED)
        return self.pick_up()

    def _records(self) -> list[tuple[int, str, dict[str, Any]]]:
        import pyarrow.fs as pafs

        fs, path = filesystem(join(self.run_dir, RECORDS_DIR))
        found = []
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            step = folder_step(info.base_name.removesuffix(".json"))
            if info.type != pafs.FileType.File or step is None:
                continue  # write_bytes' temporary file, or not ours
            with fs.open_input_stream(info.path) as f:
                found.append((step, info.path, json.loads(f.read().decode())))
        return sorted(found, key=lambda item: item[0])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
