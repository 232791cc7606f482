"""POST /translate_video in plain torch: an uploaded clip through the replica's Translator.

The upload's bytes travel to the replica (on a cluster it may run on another node than the
ingress), which writes them to a temporary folder, checks the clip against the limits, translates
it with video_translate.translate_video in one style and returns the mp4's bytes; the folder is
removed whatever happens. Problems come back as a ClipError (field, message, status) in the
result, never as an exception through Ray, so the ingress answers them as any bad request.
No Ray and no HTTP here.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..inference import Translator
from ..video import INSTALL_HINT, VIDEO_EXTENSIONS, BadVideo, ffmpeg_module, open_video
from ..video_translate import frame_source, translate_video
from .inputs import Limits


@dataclass(frozen=True)
class ClipJob:
    """One clip: its bytes, the uploaded name's suffix, and one style (a seed or a reference
    (3, S, S) float32 in [-1, 1]) for the whole clip."""

    data: bytes
    suffix: str
    domain: int
    seed: int = 0
    reference: np.ndarray | None = None
    psi: float = 1.0
    limits: Limits = Limits()


@dataclass(frozen=True)
class ClipError:
    field: str
    message: str
    status: int = 400


@dataclass(frozen=True)
class ClipResult:
    """The translated clip (H.264 mp4 bytes) and its frame count and rate, or the error."""

    mp4: bytes = b""
    frames: int = 0
    fps: float = 0.0
    error: ClipError | None = None


class OverLimit(Exception):
    """A clip found longer than the limits while it is decoded (the header may not say)."""


def video_support() -> ClipError | None:
    """None when the [video] extra is installed; else the one-line error (501: this server
    cannot do it, the request is not wrong)."""
    try:
        ffmpeg_module()
    except UserError:
        return ClipError("video", f"this server cannot read videos: its Python environment "
                                  f"lacks the [video] extra ({INSTALL_HINT})", 501)
    return None


def upload_suffix(filename: str | None) -> str:
    """The upload's suffix when it is a video suffix (a hint for ffmpeg), else none."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in VIDEO_EXTENSIONS else ""


def check_header(info, limits: Limits) -> ClipError | None:
    """Refuse by what the container says, before decoding a frame."""
    width, height = info.size
    if width * height > limits.max_frame_pixels:
        return ClipError("video", f"frames of {width} x {height} pixels, more than the limit of "
                                  f"{limits.max_frame_pixels} pixels per frame", 413)
    if info.frames_estimate is not None:
        return over_limit(info.frames_estimate, info.fps, limits)
    return None


def over_limit(frames: int, fps: float, limits: Limits,
               partial: bool = False) -> ClipError | None:
    """partial: `frames` were decoded so far, the clip holds at least that many."""
    least = "at least " if partial else ""
    if frames > limits.max_video_frames:
        return ClipError("video", f"{least}{frames} frames, more than the limit of "
                                  f"{limits.max_video_frames} frames", 413)
    if frames / fps > limits.max_video_seconds:
        return ClipError("video", f"{least}{frames / fps:.2f} s long, more than the limit of "
                                  f"{limits.max_video_seconds:g} s", 413)
    return None


def counting(prepare, fps: float, limits: Limits):
    """prepare, raising OverLimit as soon as the frames decoded pass a limit."""
    count = 0

    def prepare_counted(frame: np.ndarray) -> torch.Tensor:
        nonlocal count
        count += 1
        error = over_limit(count, fps, limits, partial=True)
        if error is not None:
            raise OverLimit(error.message)
        return prepare(frame)

    return prepare_counted


def clip_style(tr: Translator, job: ClipJob) -> torch.Tensor:
    """(1, style_dim): the clip's one style."""
    if job.reference is not None:
        return tr.reference_styles(torch.tensor(job.reference)[None], job.domain)
    return tr.latent_styles(job.domain, [job.seed], job.psi)


def translate_clip(tr: Translator, job: ClipJob) -> ClipResult:
    """The clip of `job` translated, or the ClipError that stopped it (temp files removed)."""
    missing = video_support()
    if missing is not None:
        return ClipResult(error=missing)
    with tempfile.TemporaryDirectory(prefix="stargan-clip-") as tmp:
        source, output = Path(tmp) / f"upload{job.suffix}", Path(tmp) / "translated.mp4"
        source.write_bytes(job.data)
        try:
            info, frames = open_video(source)
            frames.close()  # the header is all the check needs; translate_video decodes again
            error = check_header(info, job.limits)
            if error is not None:
                return ClipResult(error=error)
            prepare = counting(frame_source(tr.img_size), info.fps, job.limits)
            count = translate_video(tr, source, clip_style(tr, job), [output], prepare=prepare)
        except BadVideo as err:
            # the message names the temporary file: the client knows it as `video`
            reason = str(err).replace(f"{source}: ", "")
            if not reason.startswith("not a readable video"):
                reason = f"cannot decode the video: {reason}"
            return ClipResult(error=ClipError("video", reason))
        except OverLimit as err:
            return ClipResult(error=ClipError("video", str(err), 413))
        return ClipResult(output.read_bytes(), count, info.fps)


__all__ = ["ClipJob", "ClipError", "ClipResult", "translate_clip", "video_support",
           "upload_suffix"]
