"""Video in and out: frames streamed from and to files through ffmpeg.

imageio-ffmpeg (the optional extra `[video]`) is used because it ships a static ffmpeg binary in
its wheel, talks to it through pipes (frames stream: memory does not grow with a clip's length)
and has no compiled extension of its own; PyAV would bring a second copy of the ffmpeg libraries
as a compiled module for no gain here. Outputs are H.264 in mp4 with yuv420p pixels, which
browsers and every ffmpeg-based reader play.

A clip is read at its own frame rate and every decoded frame is kept: the translated clip has
the same frame count and rate. Plain Python and numpy: no torch or Ray here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".gif")
INSTALL_HINT = "pip install 'stargan-ray[video]'"
H264_CONTAINERS = (".mp4", ".mov", ".mkv")  # what VideoWriter writes into (webm holds VP8/9)
# The official interpolation videos: rawvideo read at ffmpeg's default 25 fps and slowed down 2x
# (setpts=2*PTS), so each frame shows for 80 ms.
OFFICIAL_FPS = 12.5


class BadVideo(UserError):
    """A file that cannot be read as a video: truncated, not a video, or without frames."""


def ffmpeg_module():
    """imageio_ffmpeg, or a one-line error naming the install command."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError(f"video files need the [video] extra: {INSTALL_HINT}") from None
    return imageio_ffmpeg


def is_video(path: str | Path) -> bool:
    """True for the video suffixes; a .gif counts when it has more than one frame."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".gif":
        return suffix in VIDEO_EXTENSIONS
    from PIL import Image

    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1) > 1
    except OSError:
        return False  # named later, where the image reader fails on it


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: frame rate, (width, height), and its frame count estimate."""

    fps: float
    size: tuple[int, int]
    frames_estimate: int | None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(err).__name__


def open_video(path: str | Path) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """(info, frames): frames are (H, W, 3) uint8 RGB arrays, decoded one at a time.

    Raises BadVideo for a file ffmpeg cannot open; a clip that breaks off midway raises BadVideo
    from the iterator, after the frames before the break.
    """
    ff = ffmpeg_module()
    path = Path(path)
    if not path.is_file():
        raise BadVideo(f"{path}: no such video file")
    header = ff.read_frames(str(path))  # only its first answer: the stream's description
    try:
        meta = next(header)
    except (RuntimeError, OSError, StopIteration) as err:
        raise BadVideo(f"{path}: not a readable video ({_one_line(err)})") from None
    finally:
        header.close()
    width, height = meta["size"]
    fps = float(meta.get("fps") or 0)
    if fps <= 0:
        raise BadVideo(f"{path}: the video has no frame rate")
    duration = meta.get("duration")
    estimate = int(round(duration * fps)) if duration else None
    return VideoInfo(fps, (width, height), estimate), _frames(ff, path, width, height)


def _frames(ff, path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Raw RGB frames from an ffmpeg of our own: -xerror makes a corrupt or truncated stream end
    it with an error, which is checked (it would otherwise stop quietly after the last good
    frame, and a clip cut off midway would pass for a short one)."""
    cmd = [ff.get_ffmpeg_exe(), "-v", "error", "-xerror", "-i", str(path), "-map", "0:v:0",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    frame_bytes, count = width * height * 3, 0
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty ffmpeg cannot block
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        try:
            while len(raw := proc.stdout.read(frame_bytes)) == frame_bytes:
                yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
                count += 1
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the caller stopped early
                proc.kill()
                proc.wait()
            proc.stdout.close()
        log.seek(0)
        message = log.read().decode(errors="replace")
    if code != 0 or raw:
        raise BadVideo(f"{path}: decoding stopped after {count} frames "
                       f"({_one_line(RuntimeError(message)) if message.strip() else 'cut off'})")
    if count == 0:
        raise BadVideo(f"{path}: the video has no frames")


class VideoWriter:
    """Frames (H, W, 3) uint8 -> an H.264 mp4, written as they come.

    A writer closed after an error removes its partial file, so a failed clip never looks like
    a finished one. Use as a context manager.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        ff = ffmpeg_module()
        width, height = size
        if Path(path).suffix.lower() not in H264_CONTAINERS:
            raise ValueError(f"{path}: H.264 is written into {', '.join(H264_CONTAINERS)} files")
        if width % 2 or height % 2:
            raise UserError(f"{path}: H.264 needs an even frame size, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        self.frames = 0
        # macro_block_size 2: keep the size as it is (the default 16 would rescale); quality 8
        # of 10: near-transparent at 256 px with files a fraction of lossless ones
        self._writer = ff.write_frames(str(self.path), self.size, fps=fps, codec="libx264",
                                       pix_fmt_out="yuv420p", macro_block_size=2, quality=8,
                                       ffmpeg_log_level="error",
                                       # the index at the front: a browser plays while loading
                                       output_params=["-movflags", "+faststart"])
        self._writer.send(None)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.size[1], self.size[0], 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame of shape {frame.shape} / {frame.dtype}; the writer takes "
                             f"({self.size[1]}, {self.size[0]}, 3) uint8")
        self._writer.send(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self, failed: bool = False) -> None:
        self._writer.close()
        if failed or self.frames == 0:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write every frame of an iterable to an mp4 (the size is the first frame's)."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    with VideoWriter(path, fps, (first.shape[1], first.shape[0])) as writer:
        writer.write(first)
        for frame in frames:
            writer.write(frame)
    return Path(path)


def count_frames(path: str | Path) -> tuple[int, float]:
    """(frames, seconds) by decoding the whole file with ffmpeg (exact, not the container's word)."""
    return ffmpeg_module().count_frames_and_secs(os.fspath(path))


__all__ = ["VIDEO_EXTENSIONS", "INSTALL_HINT", "OFFICIAL_FPS", "BadVideo", "VideoInfo",
           "VideoWriter", "ffmpeg_module", "is_video", "open_video", "write_video",
           "count_frames"]
