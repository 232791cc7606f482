"""The model replica: EMA networks loaded once per replica, concurrent requests batched.

Each replica loads the checkpoint itself from the path (or URI) it is given, so the file must be
readable on the node the replica runs on: a local path on one machine, a shared file system path
or an object store URI (s3://, gs://) on a cluster. Passing the weights through the deployment's
arguments instead would copy them into every replica's config and the controller's checkpoint.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from ray import serve

from ..config import ExperimentConfig
from ..inference import Translator
from .batching import Batcher, BatchStats, Job, run_jobs
from .clips import ClipJob, ClipResult, translate_clip

DEFAULT_MAX_BATCH = 16
BATCH_WAIT_S = 0.01  # how long a batch waits for more after a request that found the replica idle
BATCH_FILL_S = 0.1  # ... after one that arrived under load (batching.Batcher says why)


def load_translator(checkpoint: str, cfg: ExperimentConfig | None, device: str,
                    batch_size: int) -> Translator:
    """A Translator from a local checkpoint path or an object store URI."""
    from ..storage import is_uri, read_bytes

    if not is_uri(checkpoint):
        return Translator.from_checkpoint(checkpoint, cfg, device, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "checkpoint.pt"
        local.write_bytes(read_bytes(checkpoint))
        return Translator.from_checkpoint(local, cfg, device, batch_size)


@serve.deployment(name="Translator")
class TranslatorDeployment:
    """Translates Jobs; concurrent `run` calls share generator calls, up to max_batch each."""

    def __init__(self, checkpoint: str, cfg: ExperimentConfig | None = None,
                 device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH,
                 batch_wait_s: float = BATCH_WAIT_S, exact: bool = False,
                 batch_fill_s: float = BATCH_FILL_S):
        self.exact = exact
        self.translator = load_translator(checkpoint, cfg, device, max_batch)
        self.names = list(self.translator.domains)
        self.device = device
        self.batcher = Batcher(functools.partial(run_jobs, self.translator, exact=exact),
                               max_batch, batch_wait_s, batch_fill_s)
        self._clip_lock: asyncio.Lock | None = None

    def info(self) -> dict:
        """What the ingress and the page need to know about the model."""
        cfg = self.translator.cfg
        return {"domains": self.names, "img_size": cfg.model.img_size,
                "max_batch": self.translator.batch_size, "device": self.device,
                "w_hpf": cfg.model.w_hpf, "threads": torch.get_num_threads(),
                "exact_batching": self.exact}

    async def run(self, job: Job) -> tuple[np.ndarray, int, int]:
        """The job's (outputs (K, S, S, 3) uint8, how many requests shared its generator call,
        the call's number on this replica); the call runs in a thread, so that requests arriving
        meanwhile queue up for the next one."""
        return await self.batcher.submit(job)

    def batch_stats(self, reset: bool = False) -> dict:
        """What the generator calls held since the replica started (or the last reset):
        batching.BatchStats.summary (for benchmarks)."""
        summary = self.batcher.stats.summary()
        if reset:
            self.batcher.stats = BatchStats()
        return summary

    async def run_clip(self, job: ClipJob) -> ClipResult:
        """A clip translated in a thread, one clip at a time per replica (a clip holds the
        generator for many calls; image batches go on beside it, in the Batcher's thread)."""
        if self._clip_lock is None:  # made on the replica's event loop
            self._clip_lock = asyncio.Lock()
        async with self._clip_lock:
            return await asyncio.to_thread(translate_clip, self.translator, job)
