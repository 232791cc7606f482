"""The embedded dataset: procedurally drawn shapes, one shape family and colour family per domain.

Every image is drawn from its own random stream seeded by (seed, split, domain, index), so the set
is identical on every machine and run. A domain is a shape with its own hue; everything else varies
per image (the shade within that hue, the pale background colour, size, position, a small
rotation). A translator that works keeps the layout (position, size) of a source while taking
the reference domain's shape and colour and the reference's shade, which a grid shows at a glance.

Files follow the official layout, ``train/<domain>/*.png`` and ``val/<domain>/*.png``.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from stargan_ray.config import SYNTHETIC, ConfigError

if TYPE_CHECKING:
    from stargan_ray.config import ExperimentConfig

# Bump when the drawing changes: it is part of the cache key, so old caches are never reused.
GENERATOR_VERSION = 2
# Folder names are the shape names; domain ids come from their sorted order, as for any folder tree.
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
# Each family's colour (HSV hue). A domain differs in shape and colour, like cats and dogs differ in
# shape and fur. The colour is what a toy model learns first, so the demo's short run already shows
# the domain change. The first three, the toy's domains, are far apart (red, green, blue).
HUES = {"circle": 0.0, "square": 0.33, "triangle": 0.62, "star": 0.12, "cross": 0.8, "ring": 0.5,
        "diamond": 0.9, "hexagon": 0.22}
HUE_JITTER = 0.06  # per-image shade within the family: part of an image's style
N_TRAIN = 200  # per domain: enough for the toy, and the demo's real FID statistics read every one
N_VAL = 30
DATA_SEED = 0  # fixed, so training seeds and tune trials share one dataset
_SPLITS = {"train": 0, "val": 1}


def cache_root() -> Path:
    """Where generated sets live: $STARGAN_RAY_CACHE, default ~/.cache/stargan_ray."""
    return Path(os.environ.get("STARGAN_RAY_CACHE", Path.home() / ".cache" / "stargan_ray"))


def domain_names(num_domains: int) -> list[str]:
    if not 2 <= num_domains <= len(SHAPES):
        raise ConfigError(f"model.num_domains: the synthetic dataset has 2 to {len(SHAPES)}"
                          f" domains, got {num_domains}")
    return list(SHAPES[:num_domains])


# ---------------------------------------------------------------- drawing


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices at equal angular steps with the given radii, from straight up, rotated by angle."""
    steps = [angle + 2 * math.pi * k / len(radii) for k in range(len(radii))]
    return [(cx + r * math.sin(a), cy - r * math.cos(a)) for a, r in zip(steps, radii)]


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle + math.pi / 4), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r, 0.42 * r] * 5, angle), fill=255)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, [r, 0.6 * r] * 2, angle), fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, [r] * 6, angle + math.pi / 6), fill=255)
    elif shape == "cross":
        w = 0.36 * r
        arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w),
               (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm], fill=255)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return mask


def _hsv(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(255 * r), round(255 * g), round(255 * b)


def draw_image(shape: str, img_size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of the given shape family; every other attribute drawn from rng."""
    size = max(128, 2 * img_size)  # drawn large and downsampled: anti-aliased edges
    background = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.75, 1.0))  # pale, any hue
    foreground = _hsv(HUES[shape] + rng.uniform(-HUE_JITTER, HUE_JITTER),  # the domain's colour
                      rng.uniform(0.6, 1.0), rng.uniform(0.35, 0.8))
    r = rng.uniform(0.2, 0.38) * size  # layout: size ...
    cx, cy = rng.uniform(r + 0.04 * size, size - r - 0.04 * size, size=2)  # ... and position
    angle = rng.uniform(-math.pi / 12, math.pi / 12)
    image = Image.composite(Image.new("RGB", (size, size), foreground),
                            Image.new("RGB", (size, size), background),
                            _shape_mask(shape, size, cx, cy, r, angle))
    return image.resize((img_size, img_size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- writing


def generate(root: str | Path, img_size: int = 32, num_domains: int = 3, n_train: int = N_TRAIN,
             n_val: int = N_VAL, seed: int = DATA_SEED) -> tuple[Path, Path]:
    """Draw the set into ``root/train/<domain>/*.png`` and ``root/val/<domain>/*.png``.

    Counts are per domain. Deterministic: the same arguments give the same pixels.
    Returns (train_dir, val_dir).
    """
    root = Path(root)
    names = domain_names(num_domains)
    for split, count in (("train", n_train), ("val", n_val)):
        for domain, shape in enumerate(names):
            out = root / split / shape
            out.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                rng = np.random.default_rng([seed, _SPLITS[split], domain, index])
                draw_image(shape, img_size, rng).save(out / f"{index:05d}.png")
    return root / "train", root / "val"


def cache_key(img_size: int, num_domains: int, n_train: int, n_val: int, seed: int) -> str:
    """Everything that changes the pixels, so a cached set is reused only when identical."""
    return f"synthetic-v{GENERATOR_VERSION}-{img_size}px-{num_domains}d-{n_train}x{n_val}-s{seed}"


def cached(img_size: int, num_domains: int, n_train: int = N_TRAIN, n_val: int = N_VAL,
           seed: int = DATA_SEED, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Generate once into the cache and return (train_dir, val_dir).

    Written into a private temporary folder and renamed into place, so concurrent callers (Tune
    trials, test workers) never see a half-written set; a loser of the race discards its copy.
    """
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    final = cache / cache_key(img_size, num_domains, n_train, n_val, seed)
    if not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            generate(tmp, img_size, num_domains, n_train, n_val, seed)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # a real failure, not a lost race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "train", final / "val"


def resolve_data_dirs(cfg: "ExperimentConfig") -> tuple[str, str]:
    """(train_dir, val_dir) of an experiment; "synthetic" becomes the cached embedded set."""
    train_dir, val_dir = cfg.data.train_dir, cfg.data.val_dir
    if SYNTHETIC in (train_dir, val_dir):
        syn_train, syn_val = cached(cfg.model.img_size, cfg.model.num_domains)
        train_dir = str(syn_train) if train_dir == SYNTHETIC else train_dir
        val_dir = str(syn_val) if val_dir == SYNTHETIC else val_dir
    return train_dir, val_dir


__all__ = ["generate", "cached", "resolve_data_dirs", "draw_image", "domain_names", "cache_root",
           "SHAPES", "HUES", "HUE_JITTER", "N_TRAIN", "N_VAL", "GENERATOR_VERSION"]
