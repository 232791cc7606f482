"""`sample`: the official sample images of a model on folders of sources and references.

reference.jpg, latent_psi_{psi}.jpg and an interpolation animation, in the layouts of grids.py;
debug_images writes the official training-time set (cycle, latent per psi, reference). Files go
through the test-time transform of inference.py, the one path from file to pixels.
Plain torch: no Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError, ExperimentConfig
from .grids import (MAX_GRID_DOMAINS, PSIS, cycle_grid, ease, interpolation_frames, latent_grid,
                    mean_style, reference_grid, save_animation, save_grid)
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
    (gif or webp) and the styles each domain's interpolation passes through."""

    num_src: int = 8
    num_ref: int = 8
    seed: int = 0
    animation: str = "gif"
    interp_styles: int = 3


@torch.no_grad()
def sample(nets_ema: Networks, cfg: ExperimentConfig, src_dir: str | Path, ref_dir: str | Path,
           out_dir: str | Path, device: torch.device | str = "cpu",
           opts: SampleOptions = SampleOptions()) -> list[Path]:
    """reference.jpg, latent_psi_{psi}.jpg and interpolation.{gif|webp} into out_dir."""
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
    frames: list[torch.Tensor] = []
    for y in domains:
        z = torch.randn((interp_styles, latent_dim), generator=g).to(device)
        styles = list(nets_ema.mapping_network(z, torch.full((interp_styles,), y, device=device))
                      .split(1))
        frames += interpolation_frames(nets_ema, x_src, styles, ease())
    paths.append(save_animation(frames, out_dir / f"interpolation.{opts.animation}"))
    return paths


def output_names(animation: str = "gif") -> list[str]:
    """The files `sample` writes into its output folder, in order."""
    return (["reference.jpg"] + [f"latent_psi_{psi:.1f}.jpg" for psi in PSIS]
            + [f"interpolation.{animation}"])


__all__ = ["debug_images", "sample", "SampleOptions", "load_folder", "output_names"]
