"""A clip through the generator: every frame in one style per output, streamed frame to frame.

Frames are decoded one at a time, gathered into batches of the translator's batch size,
translated into every requested style and written at once, so memory holds one batch whatever
the clip's length. Each frame goes through the test transform of inference.py (the path every
image takes). A clip that cannot be decoded to its end leaves no output behind.
Plain torch: no Ray here.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .inference import Translator, image_to_tensor, to_pixels
from .video import VideoWriter, open_video


def translate_video(translator: Translator, path: str | Path, styles: torch.Tensor,
                    outputs: Sequence[str | Path], progress: bool = False) -> int:
    """Write outputs[k]: the clip at `path` in styles[k] (same frame count and rate).

    styles: (K, style_dim), one per output. Returns the number of frames. Raises
    video.BadVideo (and removes every partial output) when the clip breaks off.
    """
    if styles.size(0) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {styles.size(0)} styles")
    info, frames = open_video(path)
    size = translator.img_size
    count = 0
    with ExitStack() as stack:
        writers = [stack.enter_context(VideoWriter(out, info.fps, (size, size)))
                   for out in outputs]
        batch: list[np.ndarray] = []
        for frame in _progress(frames, info.frames_estimate, Path(path).name, progress):
            batch.append(frame)
            if len(batch) == translator.batch_size:
                count += _write_batch(translator, batch, styles, writers)
                batch = []
        if batch:
            count += _write_batch(translator, batch, styles, writers)
    return count


def _write_batch(translator: Translator, batch: list[np.ndarray], styles: torch.Tensor,
                 writers: list[VideoWriter]) -> int:
    size = translator.img_size
    x = torch.stack([image_to_tensor(Image.fromarray(frame), size) for frame in batch])
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


__all__ = ["translate_video"]
