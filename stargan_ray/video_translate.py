"""A clip through the generator: every frame in one style per output, streamed frame to frame.

Frames are decoded one at a time, gathered into batches of the translator's batch size,
translated into every requested style and written at once, so memory holds one batch whatever
the clip's length. Each frame goes through the test transform of inference.py (the path every
image takes). A clip that cannot be decoded to its end leaves no output behind.
Plain torch: no Ray here.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .inference import Translator, image_to_tensor, to_pixels
from .video import BadVideo, VideoWriter, open_video

FramePrep = Callable[[np.ndarray], torch.Tensor]  # (H, W, 3) uint8 -> (3, S, S) in [-1, 1]
LANDMARK_SMOOTHING = 0.6  # weight of the running landmarks against each new frame's own


def translate_video(translator: Translator, path: str | Path, styles: torch.Tensor,
                    outputs: Sequence[str | Path], progress: bool = False,
                    prepare: FramePrep | None = None) -> int:
    """Write outputs[k]: the clip at `path` in styles[k] (same frame count and rate).

    styles: (K, style_dim), one per output. prepare: how a frame becomes a source (default: the
    test transform; SmoothedAligner aligns faces). Returns the number of frames. Raises
    video.BadVideo (and removes every partial output) when the clip breaks off.
    """
    prepare = prepare or frame_source(translator.img_size)
    if styles.size(0) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {styles.size(0)} styles")
    info, frames = open_video(path)
    count = 0
    with ExitStack() as stack:
        size = (translator.img_size, translator.img_size)
        writers = [stack.enter_context(VideoWriter(out, info.fps, size)) for out in outputs]
        batch: list[torch.Tensor] = []
        for frame in _progress(frames, info.frames_estimate, Path(path).name, progress):
            batch.append(prepare(frame))
            if len(batch) == translator.batch_size:
                count += _write_batch(translator, batch, styles, writers)
                batch = []
        if batch:
            count += _write_batch(translator, batch, styles, writers)
    return count


def frame_source(img_size: int, fit: str = "stretch") -> FramePrep:
    """A frame through the test transform, made square by fit first (as photos: data.fit)."""
    from .data.shapes import fit_square

    return lambda frame: image_to_tensor(fit_square(Image.fromarray(frame), fit), img_size)


def _write_batch(translator: Translator, batch: list[torch.Tensor], styles: torch.Tensor,
                 writers: list[VideoWriter]) -> int:
    size = translator.img_size
    x = torch.stack(batch)
    out = translator.translate(x, styles)  # (N, K, 3, S, S)
    pixels = to_pixels(out.flatten(0, 1)).reshape(len(batch), len(writers), size, size, 3)
    for n in range(len(batch)):
        for k, writer in enumerate(writers):
            writer.write(pixels[n, k])
    return len(batch)


def _progress(frames, total: int | None, name: str, enabled: bool):
    if not enabled:
        return frames
    from tqdm import tqdm

    return tqdm(frames, total=total, desc=name, unit="frame", leave=False)


def smooth_landmarks(running: np.ndarray | None, current: np.ndarray,
                     smoothing: float = LANDMARK_SMOOTHING) -> np.ndarray:
    """An exponential moving average of a clip's landmarks: the alignment follows the face
    without the frame-to-frame jitter of the detector (0 = each frame's own landmarks)."""
    if running is None:
        return current
    return smoothing * running + (1 - smoothing) * current


class SmoothedAligner:
    """Per-frame face alignment of a clip with landmarks smoothed over time.

    A frame whose landmarks are not confident enough keeps the running ones (the face is held
    where it was); before any face is found, frames are used unaligned.
    """

    def __init__(self, aligner, img_size: int, smoothing: float = LANDMARK_SMOOTHING,
                 fit: str = "stretch") -> None:
        self.aligner = aligner  # align.FaceAligner
        self.img_size = img_size
        self.fit = fit
        self.smoothing = smoothing
        self.device = next(aligner.fan.parameters()).device
        self.points: np.ndarray | None = None

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        from .data.shapes import fit_square
        from .grids import to_image

        image = fit_square(Image.fromarray(frame), self.fit)
        x = image_to_tensor(image, self.aligner.img_size).to(self.device)
        points, confidence = self.aligner.landmarks(x)
        if not (self.aligner.min_confidence > 0 and not confidence >= self.aligner.min_confidence):
            self.points = smooth_landmarks(self.points, points, self.smoothing)
        if self.points is None:
            return image_to_tensor(image, self.img_size)
        result = self.aligner.align_to(x, self.points, confidence)
        if result.image is None:
            return image_to_tensor(image, self.img_size)
        # quantised as `stargan-ray align` writes a photo, so a frame and a photo agree
        return image_to_tensor(to_image(result.image.clamp(-1, 1)), self.img_size)


# ---------------------------------------------------------------- `translate` on clips

OUTPUTS_PER_PASS = 8  # outputs (ffmpeg encoders) open at once; more styles decode the clip again


@dataclass
class ClipResult:
    """What translating clips did: outputs written, and the clips skipped (with the reason)."""

    count: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def clip_jobs(translator: Translator, request, out: Path, sources, x_ref: torch.Tensor | None):
    """(source, styles, outputs) per pass over a clip: up to OUTPUTS_PER_PASS styles each."""
    from .translate import output_path, style_chunks

    for source in sources:
        for labels, styles in style_chunks(translator, request, x_ref, OUTPUTS_PER_PASS):
            yield source, styles, [output_path(out, source, label) for label in labels]


def translate_clips(translator: Translator, request, out: Path, sources,
                    x_ref: torch.Tensor | None = None, aligner=None,
                    fit: str = "stretch") -> ClipResult:
    """Every clip of `sources` (translate.Source) in every style of `request` (translate.Request),
    here, with a progress bar per clip (translate_ray.translate_clips_on_ray spreads them).

    aligner: an align.FaceAligner for per-frame alignment (landmarks smoothed over each clip).
    A clip that cannot be read is skipped whole.
    """
    result = ClipResult()
    failed: set[Path] = set()
    for source, styles, outputs in clip_jobs(translator, request, out, sources, x_ref):
        if source.path in failed:
            continue
        prepare = frame_source(translator.img_size, fit) if aligner is None else \
            SmoothedAligner(aligner, translator.img_size, fit=fit)
        try:
            translate_video(translator, source.path, styles, outputs, progress=True,
                            prepare=prepare)
            result.count += len(outputs)
        except BadVideo as err:
            failed.add(source.path)
            result.skipped.append((str(source.path), str(err)))
    return result


__all__ = ["translate_video", "smooth_landmarks", "SmoothedAligner", "LANDMARK_SMOOTHING",
           "translate_clips", "clip_jobs", "frame_source", "ClipResult", "OUTPUTS_PER_PASS"]
