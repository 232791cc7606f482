"""Videos over Ray: N actors, each a Translator rebuilt from state dicts, dealt one clip at a time.

The styles are computed once by the caller and sent with each clip, and each actor runs the same
translate_video as a single process (one clip per actor, in the same batches), so the files are
the same whichever actor wrote them. Inputs and outputs are paths that every node can read and
write (a shared file system on a cluster, as for `eval`'s folders). Many clips spread over the
actors; one long clip stays on one actor (its frames stream, so its length costs time, not
memory). Ray is imported inside translate_videos: importing this module needs no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .config import from_dict
from .inference import Translator
from .models import ema_networks_from_states


@dataclass(frozen=True)
class VideoJob:
    """One clip: its path, the (K, style_dim) styles and the K output paths."""

    path: str
    styles: torch.Tensor
    outputs: tuple[str, ...]
    fit: str = "stretch"  # how frames become square (data.fit)


@dataclass(frozen=True)
class AlignSpec:
    """What an actor needs to align faces per frame: the FAN's weights and the mean landmarks."""

    fan_state: dict[str, torch.Tensor]
    mean_landmarks: np.ndarray
    align_size: int
    min_confidence: float = 0.0


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def translator_payload(translator: Translator) -> dict[str, Any]:
    """Everything an actor rebuilds the translator from (no weights files needed there)."""
    nets = translator.nets
    return {"cfg": translator.cfg.to_dict(), "domains": translator.domains,
            "batch_size": translator.batch_size,
            "nets": {name: _cpu_state(getattr(nets, name))
                     for name in ("generator", "mapping_network", "style_encoder")},
            "fan": None if nets.fan is None else _cpu_state(nets.fan)}


def rebuild_translator(payload: dict[str, Any], device: str = "cpu") -> Translator:
    cfg = from_dict(payload["cfg"])
    nets = ema_networks_from_states(cfg.model, payload["nets"], payload["fan"])
    return Translator(nets.to(device), cfg, torch.device(device), payload["batch_size"],
                      payload["domains"])


class VideoWorker:
    """Translates clips with its own copy of the model (the body of a Ray actor)."""

    def __init__(self, payload: dict[str, Any], align: AlignSpec | None, device: str,
                 threads: int) -> None:
        torch.set_num_threads(threads)
        self.translator = rebuild_translator(payload, device)
        self.align = align

    def run(self, job: VideoJob) -> int | str:
        """Frames written, or the one-line reason the clip was skipped."""
        from .video import BadVideo
        from .video_translate import translate_video

        try:
            return translate_video(self.translator, job.path, job.styles, job.outputs,
                                   prepare=self._prepare(job.fit))
        except BadVideo as err:
            return str(err)

    def _prepare(self, fit: str):
        from .video_translate import frame_source

        if self.align is None:
            return frame_source(self.translator.img_size, fit)
        from .align import FaceAligner
        from .models.fan import FAN
        from .video_translate import SmoothedAligner

        fan = FAN()
        fan.load_state_dict(self.align.fan_state)
        fan.eval().requires_grad_(False).to(self.translator.device)
        aligner = FaceAligner(fan, self.align.mean_landmarks, self.align.align_size,
                              self.align.min_confidence)
        return SmoothedAligner(aligner, self.translator.img_size, fit=fit)  # fresh per clip


def translate_videos(translator: Translator, jobs: Sequence[VideoJob], num_workers: int, *,
                     align: AlignSpec | None = None, cpus_per_worker: float = 1.0,
                     gpus_per_worker: float = 0.0,
                     on_done: Callable[[VideoJob, int | str], None] | None = None
                     ) -> list[int | str]:
    """Each job's frame count (or the reason it was skipped), in the order of jobs."""
    import ray

    if not ray.is_initialized():
        ray.init(configure_logging=False)  # RAY_ADDRESS's cluster, else a local one
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(VideoWorker)
    payload = ray.put(translator_payload(translator))
    workers = [actor.remote(payload, align, device, max(1, int(cpus_per_worker)))
               for _ in range(max(1, min(num_workers, len(jobs))))]
    results: list[int | str | None] = [None] * len(jobs)
    pending = {}
    queue = list(enumerate(jobs))
    try:
        for worker in workers:  # one clip each to start, then the next to whoever finishes
            if queue:
                index, job = queue.pop(0)
                pending[worker.run.remote(job)] = (index, worker)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index, worker = pending.pop(ref)
            results[index] = ray.get(ref)
            if on_done is not None:
                on_done(jobs[index], results[index])
            if queue:
                next_index, job = queue.pop(0)
                pending[worker.run.remote(job)] = (next_index, worker)
    finally:
        for worker in workers:
            ray.kill(worker)
    return results


def translate_clips_on_ray(translator: Translator, request, out, sources,
                           x_ref: torch.Tensor | None = None, aligner=None,
                           fit: str = "stretch", num_workers: int = 1):
    """video_translate.translate_clips with the passes spread over num_workers Ray actors."""
    from .video_translate import ClipResult, clip_jobs

    spec = None
    if aligner is not None:  # the mean landmarks go back to the 256 px they were given at
        spec = AlignSpec(_cpu_state(aligner.fan), aligner.ref * (256 / aligner.img_size),
                         aligner.img_size, aligner.min_confidence)
    jobs = [VideoJob(str(source.path), styles.cpu(), tuple(str(o) for o in outputs), fit)
            for source, styles, outputs in clip_jobs(translator, request, out, sources, x_ref)]
    result = ClipResult()
    for job, outcome in zip(jobs, translate_videos(translator, jobs, num_workers, align=spec)):
        if isinstance(outcome, int):
            result.count += len(job.outputs)
        elif job.path not in [path for path, _ in result.skipped]:
            result.skipped.append((job.path, outcome))
    return result


__all__ = ["translate_clips_on_ray", "VideoJob", "AlignSpec", "VideoWorker", "translate_videos", "translator_payload",
           "rebuild_translator"]
