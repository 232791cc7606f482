"""Training rows without Ray: balanced sources, reference pairs and the official augmentation.

How a chunk's rows are drawn (the same rules in the Ray Data pipeline and in-process):

- The images of a split sit in the canonical order of ``layout``, cut into groups; each epoch a
  seeded ``Plan`` deals the groups into chunks.
- One chunk is read and decoded once, then gives as many training rows as it has images
  (``chunk_rows``). Per row ``y_src`` and ``y_ref`` are uniform over the domains (the official
  balanced sampler), ``x_src`` is a random image of ``y_src``, and ``x_ref``, ``x_ref2`` are two
  different random images of ``y_ref``. Pairs are new every epoch (the official code fixes them
  once at start). Each use of an image gets its own official augmentation.
- Every random choice comes from (seed, epoch, chunk), so the rows do not depend on which process
  draws a chunk.
- A chunk gives one row per image of its groups, whether or not every file decodes, so the row
  counts that place a step in the stream (``layout.Stream``) are known without decoding.
- Rows hold uint8 images (4x less to move than float); ``stream.to_batch`` scales them to
  [-1, 1] on the worker's device and draws ``z_trg`` / ``z_trg2`` there.

A bad file (empty, truncated, not an image, unreadable) is skipped and reported once with its path
(``BadImageLog``): files that fail a header probe before the run starts, files that fail the full
decode by the chunk that meets them. A domain left with no readable image stops the run at start.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from stargan_ray.data import folders
from stargan_ray.data.folders import BadImage, DataError
from stargan_ray.data.layout import IMAGE_COLUMNS, Plan
from stargan_ray.data.table import ImageTable

if TYPE_CHECKING:
    import torch

LOAD_SCALE = 1.2  # decoded images keep a shorter side of 1.2 x img_size (see load_size)
CROP_SCALE = (0.8, 1.0)  # official RandomResizedCrop
CROP_RATIO = (0.9, 1.1)


# ---------------------------------------------------------------- augmentation


def load_size(img_size: int) -> int:
    """Shorter side images are reduced to on decode (never enlarged).

    The smallest official crop (area 0.8, aspect 1.1) spans 0.85 of a side, so from 1.2 x img_size
    every crop is still reduced to img_size, never enlarged: nothing the output can show is lost,
    while resizing a 1024 px original three times per use would cost 16x the pixels.
    """
    return math.ceil(img_size * LOAD_SCALE)


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop with area scale CROP_SCALE, aspect CROP_RATIO.

    The sampling rule of torchvision's RandomResizedCrop (the official loader's), drawn from rng.
    """
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    ratio = width / height  # fallback: the largest centred crop within the ratio range
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def augment(image: Image.Image, rng: np.random.Generator, img_size: int,
            randcrop_prob: float) -> np.ndarray:
    """Official training transform up to ToTensor: (3, S, S) uint8.

    With probability randcrop_prob a random resized crop, then resize to img_size (bilinear,
    antialiased as torchvision does for PIL images), then a horizontal flip with probability 0.5.
    """
    size = (img_size, img_size)
    if rng.random() < randcrop_prob:
        image = image.resize(size, Image.Resampling.BILINEAR, box=crop_box(*image.size, rng))
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def to_unit_range(x: "torch.Tensor") -> "torch.Tensor":
    """uint8 [0, 255] -> float32 [-1, 1]: ToTensor then Normalize(0.5, 0.5)."""
    return x.float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------- one chunk -> training rows


def _decode_chunk(table: ImageTable, plan: Plan, epoch: int, index: int, img_size: int, fit: str
                  ) -> tuple[list[Image.Image], list[int], list[int], list[tuple[str, str]]]:
    """(images, labels, image ids, bad files) of one chunk, each image decoded once."""
    images: list[Image.Image] = []
    labels, ids, bad = [], [], []
    for group in plan.chunk(epoch, index):
        for i, label, data, path in table.read_group(int(group)):
            try:
                if isinstance(data, BadImage):
                    raise data
                images.append(folders.decode(data, load_size(img_size), fit))
            except BadImage as err:
                bad.append((path, str(err)))
                continue
            labels.append(label)
            ids.append(i)
    return images, labels, ids, bad


def chunk_rows(table: ImageTable, plan: Plan, epoch: int, index: int, img_size: int,
               randcrop_prob: float, report: Callable[[list[tuple[str, str]]], Any] | None = None,
               fit: str = "stretch") -> dict[str, np.ndarray]:
    """Decode one chunk's images once (made square by `fit`, data.fit) and draw its training
    rows (see the module docstring)."""
    rng = np.random.default_rng([plan.seed, epoch, index, 0xDA7A])
    images, labels, ids, bad = _decode_chunk(table, plan, epoch, index, img_size, fit)
    if bad and report is not None:
        report(bad)
    labels_arr, ids_arr = np.asarray(labels, np.int64), np.asarray(ids, np.int64)
    members = [np.flatnonzero(labels_arr == d) for d in range(len(table.domains))]
    sources = [d for d, m in enumerate(members) if len(m) >= 1]
    refs = [d for d, m in enumerate(members) if len(m) >= 2]
    n = len(images) + len(bad)  # one row per image of the groups: the count the stream expects
    if not refs:
        raise DataError(f"chunk {index} of epoch {epoch}: {len(bad)} of its {n} images are "
                        "unreadable and no domain has two readable ones (see the warnings)")

    y_src = rng.choice(sources, size=n)
    y_ref = rng.choice(refs, size=n)
    i_src = np.empty(n, np.int64)
    i_ref = np.empty(n, np.int64)
    i_ref2 = np.empty(n, np.int64)
    for row in range(n):
        pool = members[y_src[row]]
        i_src[row] = pool[rng.integers(len(pool))]
        pool = members[y_ref[row]]
        a = rng.integers(len(pool))
        b = (a + 1 + rng.integers(len(pool) - 1)) % len(pool)  # any other image of the domain
        i_ref[row], i_ref2[row] = pool[a], pool[b]

    out = {}
    for column, picks in zip(IMAGE_COLUMNS, (i_src, i_ref, i_ref2)):
        out[column] = np.stack([augment(images[k], rng, img_size, randcrop_prob) for k in picks])
    out.update(y_src=y_src.astype(np.int64), y_ref=y_ref.astype(np.int64),
               i_src=ids_arr[i_src], i_ref=ids_arr[i_ref], i_ref2=ids_arr[i_ref2],
               epoch=np.full(n, epoch, np.int64))
    return out


# ---------------------------------------------------------------- bad files across chunks


class BadImageLog:
    """Collects skipped files; logs each path the first time any task meets it.

    Used in-process by local_batches and as a Ray actor (0 CPUs) by the Ray pipeline, so a file
    met again every epoch, or by several tasks, is reported once.
    """

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def report(self, items: list[tuple[str, str]]) -> int:
        for path, reason in items:
            if path not in self.seen:
                self.seen[path] = reason
                logging.getLogger("stargan_ray.data").warning(
                    "skipping unreadable image %s: %s (%d skipped so far)", path, reason,
                    len(self.seen))
        return len(self.seen)

    def summary(self) -> dict[str, str]:
        return dict(self.seen)


__all__ = ["LOAD_SCALE", "CROP_SCALE", "CROP_RATIO", "load_size", "crop_box", "augment",
           "to_unit_range", "chunk_rows", "BadImageLog"]
