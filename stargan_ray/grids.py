"""Sample grids and interpolation animations, laid out as the official StarGAN v2 images.

One layout for every grid the project draws (training-time samples, `sample`, the demo):

- reference grid (official reference.jpg): the top row holds the sources after a white corner
  tile, the first column the references; cell (i, j) is source j in the style of reference i.
- latent grid (official latent_psi_*.jpg): the first row holds the sources, then one row per
  (target domain, latent draw); styles are pulled toward the domain's mean style by psi
  (1.0 = no truncation).
- cycle grid (official cycle_consistency.jpg): rows x_src, x_ref, G(x_src, s_ref), reconstruction.
- interpolation frames: the style moves between latent draws with a sigmoid ease; each frame
  shows the sources above their outputs. Written as GIF or WebP with Pillow (the official mp4
  needs ffmpeg, which we do not require).

Images are saved with the official quantisation (denormalise to [0, 1], x * 255 + 0.5, truncate).
Plain torch: no Ray here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .config import ConfigError
from .models import Networks

PSIS = (0.5, 0.7, 1.0)
MEAN_STYLE_DRAWS = 10000
MAX_GRID_DOMAINS = 5  # the official debug grids show at most 5 target domains


# ---------------------------------------------------------------- tensors -> files


def tile(images: torch.Tensor, ncol: int) -> torch.Tensor:
    """(K, 3, H, W) -> (3, rows * H, ncol * W), row-major, no padding (as official save_image)."""
    k, c, h, w = images.shape
    rows = math.ceil(k / ncol)
    if rows * ncol != k:
        images = torch.cat([images, images.new_zeros(rows * ncol - k, c, h, w)])
    return images.view(rows, ncol, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, ncol * w)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8 with the official rounding."""
    x = ((image.detach().float() + 1) / 2).clamp(0, 1)
    return x.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()


def to_image(grid: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(grid))


def save_grid(grid: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_image(grid).save(path)
    return path


def ease(steps: int = 20, tail: int = 10) -> list[float]:
    """Interpolation weights: 0, a sigmoid ramp over [-5, 5), then a hold at 1 (as the official)."""
    ramp = [1 / (1 + math.exp(-x)) for x in np.linspace(-5, 5, steps, endpoint=False)]
    return [0.0] + ramp + [1.0] * tail


def save_animation(frames: Sequence[torch.Tensor], path: str | Path, frame_ms: int = 70) -> Path:
    """Frames (3, H, W) in [-1, 1] -> an animated GIF or WebP (by suffix) that loops.

    70 ms a frame: about the official video's pace, and a whole number of the GIF's 10 ms ticks.
    """
    path = Path(path)
    if path.suffix.lower() not in (".gif", ".webp"):
        raise ConfigError(f"{path}: animations are written as .gif or .webp")
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(to_uint8(f)) for f in frames]
    extra = {"lossless": True} if path.suffix.lower() == ".webp" else {}
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   **extra)
    return path


# ---------------------------------------------------------------- grids


@torch.no_grad()
def reference_grid(nets: Networks, x_src: torch.Tensor, x_ref: torch.Tensor,
                   y_ref: torch.Tensor) -> torch.Tensor:
    """(3, (M+1) H, (N+1) W): sources across the top, references down the first column."""
    n = x_src.size(0)
    masks = nets.masks(x_src)
    s_ref = nets.style_encoder(x_ref, y_ref)
    rows = [torch.cat([torch.ones_like(x_src[:1]), x_src])]
    for i in range(x_ref.size(0)):
        x_fake = nets.generator(x_src, s_ref[i:i + 1].expand(n, -1), masks=masks)
        rows.append(torch.cat([x_ref[i:i + 1], x_fake]))
    return tile(torch.cat(rows), n + 1)


@torch.no_grad()
def mean_style(nets: Networks, y: int, latent_dim: int, device: torch.device | str,
               generator: torch.Generator, draws: int = MEAN_STYLE_DRAWS) -> torch.Tensor:
    """(1, style_dim): the mean style of `draws` latent codes of domain y (truncation centre)."""
    z = torch.randn((draws, latent_dim), generator=generator).to(device)
    y_many = torch.full((draws,), y, dtype=torch.long, device=device)
    return nets.mapping_network(z, y_many).mean(0, keepdim=True)


@torch.no_grad()
def latent_grid(nets: Networks, x_src: torch.Tensor, domains: Sequence[int], z_trg: torch.Tensor,
                psi: float = 1.0, s_avg: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """(3, (1 + D K) H, N W): sources, then per target domain one row per latent code in z_trg.

    z_trg: (K, latent_dim), each code shared by all sources of its row. s_avg (the domains' mean
    styles) is needed only for psi < 1.
    """
    if s_avg is None and psi != 1.0:
        raise ValueError(f"latent_grid: psi={psi} truncates toward the mean styles; pass s_avg")
    n = x_src.size(0)
    masks = nets.masks(x_src)
    rows = [x_src]
    for y in domains:
        y_trg = torch.full((n,), y, dtype=torch.long, device=x_src.device)
        for z in z_trg:
            s_trg = nets.mapping_network(z.expand(n, -1), y_trg)
            if s_avg is not None:
                s_trg = torch.lerp(s_avg[y].expand(n, -1), s_trg, psi)
            rows.append(nets.generator(x_src, s_trg, masks=masks))
    return tile(torch.cat(rows), n)


@torch.no_grad()
def cycle_grid(nets: Networks, x_src: torch.Tensor, y_src: torch.Tensor, x_ref: torch.Tensor,
               y_ref: torch.Tensor) -> torch.Tensor:
    """(3, 4 H, N W): x_src, x_ref, x_fake = G(x_src, E(x_ref)), x_rec = G(x_fake, E(x_src))."""
    x_fake = nets.generator(x_src, nets.style_encoder(x_ref, y_ref), masks=nets.masks(x_src))
    x_rec = nets.generator(x_fake, nets.style_encoder(x_src, y_src), masks=nets.masks(x_fake))
    return tile(torch.cat([x_src, x_ref, x_fake, x_rec]), x_src.size(0))


@torch.no_grad()
def interpolation_frames(nets: Networks, x_src: torch.Tensor, styles: Sequence[torch.Tensor],
                         alphas: Sequence[float]) -> list[torch.Tensor]:
    """Frames moving through consecutive styles (each (1, style_dim)); sources above outputs."""
    n = x_src.size(0)
    masks = nets.masks(x_src)
    frames = []
    for s_prev, s_next in zip(styles[:-1], styles[1:]):
        for alpha in alphas:
            s = torch.lerp(s_prev, s_next, alpha).expand(n, -1)
            frames.append(tile(torch.cat([x_src, nets.generator(x_src, s, masks=masks)]), n))
    return frames


__all__ = ["tile", "to_uint8", "to_image", "save_grid", "ease", "save_animation", "reference_grid",
           "mean_style", "latent_grid", "cycle_grid", "interpolation_frames", "PSIS",
           "MEAN_STYLE_DRAWS", "MAX_GRID_DOMAINS"]
