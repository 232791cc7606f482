"""How an evaluation runs (not what it measures): one frozen value passed down from the command
line or the training loop through the evaluator to its workers, instead of six loose parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .sharding import Shard


@dataclass(frozen=True)
class EvalOptions:
    """num_workers: Ray actors (one GPU each when device is cuda), 0 runs in this process.
    device: this process's torch device, or the actors' kind. cache_dir: the real statistics'
    cache (default: evaluator.default_cache_dir()). progress: a progress bar on stderr.
    cpus_per_worker: each actor's CPUs. shard: this process is one rank of a group evaluating
    together (metrics/sharding.py; in this process, so num_workers must be 0). keep_networks:
    the feature networks stay cached in this process for the next evaluation (the CLI, tests);
    False builds them for this call and gives their memory back after it (training workers,
    which evaluate rarely and train in between: benchmarks/soak.py)."""

    num_workers: int = 0
    device: str = "cpu"
    cache_dir: str | Path | None = None
    progress: bool = True
    cpus_per_worker: float = 1.0
    shard: Shard | None = None
    keep_networks: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", str(torch.device(self.device)))  # "cuda:0" -> as is
        if self.shard is not None and self.num_workers:
            raise ValueError("EvalOptions: a shard runs in this process (num_workers=0)")


__all__ = ["EvalOptions"]
