"""WorkerSpec: everything a Train worker needs, built once by the driver (driver.worker_spec).

Ray hands train_loop_config to each worker as a dict; the driver puts the spec in it under one key
and the worker takes it out in one place (WorkerSpec.from_loop_config), so nothing between them
is an untyped dict of settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ExperimentConfig
from .checkpoints import StartPoint

_KEY = "spec"


@dataclass(frozen=True)
class WorkerSpec:
    """What one run's workers share: the config, where the run writes, how it logs, its start."""

    cfg: ExperimentConfig
    run_dir: str  # <storage>/<run name>, absolute or a URI
    run_name: str  # the W&B run's name (its id derives from it): the run name, or sweep-trial
    data: Any  # the prepared training data (data.pipeline.prepare_train_data's handle)
    start: StartPoint | None = None  # the checkpoint plan_run chose; None: from scratch
    wandb: str | None = None  # online | offline | disabled; None: WANDB_MODE or offline
    wandb_group: str | None = None  # a Tune trial's sweep
    threads_per_worker: int = 1  # torch intra-op threads in each worker
    init_from: str | None = None  # a new run's networks from this file (transfer.py), as a URI
    init_map: tuple[str, ...] = ()  # --map OLD=NEW pairs for its domains
    # A Tune trial: every log step's metrics are reported to Ray (its scheduler may rank on a
    # loss). A plain run reports its checkpoints and evaluations only: Ray's controller takes
    # one report per poll, and reports made faster than that queue up (driver.REPORT_POLL_S).
    report_logs: bool = False

    def loop_config(self) -> dict[str, Any]:
        """The train_loop_config Ray passes to every worker."""
        return {_KEY: self}

    @staticmethod
    def from_loop_config(loop_config: dict[str, Any]) -> "WorkerSpec":
        spec = loop_config.get(_KEY)
        if not isinstance(spec, WorkerSpec):
            raise TypeError(f"train_loop_config holds no WorkerSpec: {sorted(loop_config)}")
        return spec
