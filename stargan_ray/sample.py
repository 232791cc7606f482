"""`sample`: the official sample images of a model on folders of sources and references.

reference.jpg, latent_psi_{psi}.jpg and an interpolation animation (GIF/WebP, or the official
video_ref.mp4 / video_latent.mp4 layouts with the [video] extra), in the layouts of grids.py;
debug_images writes the official training-time set (cycle, latent per psi, reference). Files go
through the test-time transform of inference.py, the one path from file to pixels.
Plain torch: no Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .config import ConfigError, ExperimentConfig
from .grids import (MAX_GRID_DOMAINS, PSIS, cycle_grid, ease, interpolation_frames, latent_grid,
                    mean_style, reference_grid, save_animation, save_grid, to_uint8)
from .inference import load_image_tensor
from .models import Networks


# ---------------------------------------------------------------- files the trainer and CLI write


@torch.no_grad()
def debug_images(nets_ema: Networks, cfg: ExperimentConfig, x_src: torch.Tensor,
                 y_src: torch.Tensor, x_ref: torch.Tensor, y_ref: torch.Tensor, step: int,
                 out_dir: str | Path, seed: int | None = None) -> list[Path]:
    """The official training-time samples: cycle consistency, latent grids per psi, reference."""
    out_dir = Path(out_dir)
    g = torch.Generator().manual_seed(cfg.train.seed + step if seed is None else seed)
    device = x_src.device
    domains = list(range(min(cfg.model.num_domains, MAX_GRID_DOMAINS)))
    z_trg = torch.randn((cfg.eval.num_outs_per_domain, cfg.model.latent_dim), generator=g)
    z_trg = z_trg.to(device)
    s_avg = {y: mean_style(nets_ema, y, cfg.model.latent_dim, device, g) for y in domains}
    paths = [save_grid(cycle_grid(nets_ema, x_src, y_src, x_ref, y_ref),
                       out_dir / f"{step:06d}_cycle_consistency.jpg")]
    for psi in PSIS:
        paths.append(save_grid(latent_grid(nets_ema, x_src, domains, z_trg, psi, s_avg),
                               out_dir / f"{step:06d}_latent_psi_{psi:.1f}.jpg"))
    paths.append(save_grid(reference_grid(nets_ema, x_src, x_ref, y_ref),
                           out_dir / f"{step:06d}_reference.jpg"))
    return paths


def load_folder(root: str | Path, img_size: int, limit: int,
                num_domains: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Up to `limit` images of ROOT/<domain>/..., taken round-robin over the sorted domains.

    Listed as training lists them; a file that cannot be decoded is named and the next one taken.
    Returns images (K, 3, S, S) in [-1, 1], their domain ids and the domain names.
    """
    from .data import folders

    folder = folders.scan(str(root), num_domains)
    files = [[p for p, y in zip(folder.paths, folder.labels) if y == d]
             for d in range(len(folder.domains))]
    order: list[tuple[str, int]] = []
    for rank in range(max(len(f) for f in files)):
        order += [(f[rank], y) for y, f in enumerate(files) if rank < len(f)]
    images, labels = [], []
    for path, y in order:
        if len(images) == limit:
            break
        try:
            images.append(load_image_tensor(path, img_size))
            labels.append(y)
        except folders.BadImage as err:
            folders.report_unreadable(path, str(err))
    if not images:
        raise ConfigError(f"{root}: no readable images in its domain folders (the unreadable "
                          "ones are named above)")
    return torch.stack(images), torch.tensor(labels), list(folder.domains)


@dataclass(frozen=True)
class SampleOptions:
    """How many sources and references `sample` takes, its latent seed, the animation format
    (gif, webp, or mp4: the official video_ref.mp4 and video_latent.mp4) and the styles each domain's interpolation passes through."""

    num_src: int = 8
    num_ref: int = 8
    seed: int = 0
    animation: str = "gif"
    interp_styles: int = 3


@torch.no_grad()
def sample(nets_ema: Networks, cfg: ExperimentConfig, src_dir: str | Path, ref_dir: str | Path,
           out_dir: str | Path, device: torch.device | str = "cpu",
           opts: SampleOptions = SampleOptions()) -> list[Path]:
    """reference.jpg, latent_psi_{psi}.jpg and the animations of output_names into out_dir."""
    out_dir = Path(out_dir)
    size, latent_dim = cfg.model.img_size, cfg.model.latent_dim
    interp_styles = opts.interp_styles
    x_src, _, _ = load_folder(src_dir, size, opts.num_src, cfg.model.num_domains)
    x_ref, y_ref, _ = load_folder(ref_dir, size, opts.num_ref, cfg.model.num_domains)
    x_src, x_ref, y_ref = x_src.to(device), x_ref.to(device), y_ref.to(device)
    g = torch.Generator().manual_seed(opts.seed)
    domains = list(range(min(cfg.model.num_domains, MAX_GRID_DOMAINS)))
    s_avg = {y: mean_style(nets_ema, y, latent_dim, device, g) for y in domains}
    z_trg = torch.randn((cfg.eval.num_outs_per_domain, latent_dim), generator=g).to(device)
    paths = [save_grid(reference_grid(nets_ema, x_src, x_ref, y_ref), out_dir / "reference.jpg")]
    for psi in PSIS:
        paths.append(save_grid(latent_grid(nets_ema, x_src, domains, z_trg, psi, s_avg),
                               out_dir / f"latent_psi_{psi:.1f}.jpg"))
    latent_styles = []
    for y in domains:
        z = torch.randn((interp_styles, latent_dim), generator=g).to(device)
        latent_styles.append(list(nets_ema.mapping_network(
            z, torch.full((interp_styles,), y, device=device)).split(1)))
    if opts.animation != "mp4":
        frames = [f for styles in latent_styles
                  for f in interpolation_frames(nets_ema, x_src, styles, ease())]
        return paths + [save_animation(frames, out_dir / f"interpolation.{opts.animation}")]
    from .video import OFFICIAL_FPS, write_video

    # The official video_ref walks through references of one domain at a time: group them.
    order = torch.argsort(y_ref.cpu(), stable=True).to(y_ref.device)
    paths.append(write_video(out_dir / "video_ref.mp4", _hold_last(
        video_ref_frames(nets_ema, x_src, x_ref[order], y_ref[order])), OFFICIAL_FPS))
    paths.append(write_video(out_dir / "video_latent.mp4", _hold_last(
        video_latent_frames(nets_ema, x_src, latent_styles)), OFFICIAL_FPS))
    return paths


def output_names(animation: str = "gif") -> list[str]:
    """The files `sample` writes into its output folder, in order."""
    videos = (["video_ref.mp4", "video_latent.mp4"] if animation == "mp4"
              else [f"interpolation.{animation}"])
    return ["reference.jpg"] + [f"latent_psi_{psi:.1f}.jpg" for psi in PSIS] + videos


# ---------------------------------------------------------------- the official mp4 layouts

SLIDE_MARGIN = 32  # the official gap between the sliding references and the outputs
HOLD_FRAMES = 10  # the official videos repeat their last frame 10 times


def _hold_last(frames: Iterator[torch.Tensor]) -> Iterator[np.ndarray]:
    """uint8 frames of an iterator of (3, H, W) tensors, the last one shown HOLD_FRAMES more."""
    last = None
    for frame in frames:
        last = to_uint8(frame)
        yield last
    if last is None:
        raise ConfigError("the interpolation video has no frames: it needs two references of "
                          "one domain (video_ref) or two latent codes per domain")
    yield from [last] * HOLD_FRAMES


def _slide(x_prev: torch.Tensor, x_next: torch.Tensor, alphas: list[float]) -> list[torch.Tensor]:
    """The official reference column: x_next slides up over x_prev as alpha goes 0 -> 1.
    Each frame is (3, 2H, W + SLIDE_MARGIN) on a -1 (black) canvas."""
    _, h, w = x_prev.shape
    merged = torch.cat([x_prev, x_next], dim=1)  # (3, 2H, W)
    frames = []
    for alpha in alphas:
        top = int(h * (1 - alpha))
        canvas = -torch.ones((3, 2 * h, w + SLIDE_MARGIN), device=x_prev.device)
        canvas[:, top:, :w] = merged[:, :2 * h - top]
        frames.append(canvas)
    return frames


@torch.no_grad()
def video_ref_frames(nets: Networks, x_src: torch.Tensor, x_ref: torch.Tensor,
                     y_ref: torch.Tensor) -> Iterator[torch.Tensor]:
    """The official video_ref.mp4: for each pair of consecutive references of one domain, their
    styles interpolated (the references sliding on the left; sources above outputs)."""
    s_ref = nets.style_encoder(x_ref, y_ref)
    alphas = ease()
    for i in range(1, x_ref.size(0)):
        if y_ref[i] != y_ref[i - 1]:
            continue
        slides = _slide(x_ref[i - 1], x_ref[i], alphas)
        outputs = interpolation_frames(nets, x_src, [s_ref[i - 1:i], s_ref[i:i + 1]], alphas)
        for left, right in zip(slides, outputs):
            yield torch.cat([left, right], dim=2)


@torch.no_grad()
def video_latent_frames(nets: Networks, x_src: torch.Tensor,
                        styles_per_domain: list[list[torch.Tensor]]) -> Iterator[torch.Tensor]:
    """The official video_latent.mp4: within each domain, consecutive latent styles interpolated
    (sources above outputs); psi 1, as the GIF/WebP interpolation."""
    for styles in styles_per_domain:
        yield from interpolation_frames(nets, x_src, styles, ease())


__all__ = ["debug_images", "sample", "SampleOptions", "load_folder", "output_names",
           "video_ref_frames", "video_latent_frames"]
