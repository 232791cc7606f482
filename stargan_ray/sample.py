"""Sample grids and interpolation animations, laid out as the official StarGAN v2 images.

- reference grid (official reference.jpg): the top row holds the sources after a white corner
  tile, the first column the references; cell (i, j) is source j in the style of reference i.
- latent grids (official latent_psi_*.jpg), one per truncation psi: the first row holds the
  sources, then one row per (target domain, latent draw); styles are pulled toward the domain's
  mean style of 10,000 draws by psi (1.0 = no truncation).
- cycle grid (official cycle_consistency.jpg): rows x_src, x_ref, G(x_src, s_ref), reconstruction.
- interpolation animation: per target domain, the style moves between latent draws with a sigmoid
  ease; each frame shows the sources above their outputs. Written as GIF or WebP with Pillow (the
  official mp4 needs ffmpeg, which we do not require).

Images are saved with the official quantisation (denormalise to [0, 1], x * 255 + 0.5, truncate).
Plain torch: no Ray here.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .config import ConfigError, ExperimentConfig
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


def save_grid(grid: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(grid)).save(path)
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
                psi: float, s_avg: dict[int, torch.Tensor]) -> torch.Tensor:
    """(3, (1 + D K) H, N W): sources, then per target domain one row per latent code in z_trg.

    z_trg: (K, latent_dim), each code shared by all sources of its row.
    """
    n = x_src.size(0)
    masks = nets.masks(x_src)
    rows = [x_src]
    for y in domains:
        y_trg = torch.full((n,), y, dtype=torch.long, device=x_src.device)
        for z in z_trg:
            s_trg = nets.mapping_network(z.expand(n, -1), y_trg)
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
            images.append(_load(path, img_size))
            labels.append(y)
        except folders.BadImage as err:
            folders.report_unreadable(path, str(err))
    if not images:
        raise ConfigError(f"{root}: no readable images in its domain folders (the unreadable "
                          "ones are named above)")
    return torch.stack(images), torch.tensor(labels), list(folder.domains)


def _load(path: str | Path, img_size: int) -> torch.Tensor:
    """As the official test loader: PIL bilinear resize, then [0, 1] -> [-1, 1].

    Decoded as training decodes (16-bit files scaled); raises BadImage for an unreadable file.
    """
    from .data.folders import load_image

    rgb = load_image(path).resize((img_size, img_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float().div(255).mul(2).sub(1)


@torch.no_grad()
def sample(nets_ema: Networks, cfg: ExperimentConfig, src_dir: str | Path, ref_dir: str | Path,
           out_dir: str | Path, device: torch.device | str = "cpu", num_src: int = 8,
           num_ref: int = 8, seed: int = 0, animation: str = "gif",
           interp_styles: int = 3) -> list[Path]:
    """reference.jpg, latent_psi_{psi}.jpg and interpolation.{gif|webp} into out_dir."""
    out_dir = Path(out_dir)
    size, latent_dim = cfg.model.img_size, cfg.model.latent_dim
    x_src, _, _ = load_folder(src_dir, size, num_src, cfg.model.num_domains)
    x_ref, y_ref, _ = load_folder(ref_dir, size, num_ref, cfg.model.num_domains)
    x_src, x_ref, y_ref = x_src.to(device), x_ref.to(device), y_ref.to(device)
    g = torch.Generator().manual_seed(seed)
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
    paths.append(save_animation(frames, out_dir / f"interpolation.{animation}"))
    return paths


# ---------------------------------------------------------------- command line


def output_names(animation: str = "gif") -> list[str]:
    """The files `sample` writes into its output folder, in order."""
    return (["reference.jpg"] + [f"latent_psi_{psi:.1f}.jpg" for psi in PSIS]
            + [f"interpolation.{animation}"])


def _run(args: argparse.Namespace) -> int:
    from .checkpoint import load_ema_networks, read_config
    from .cli import check_output, resolve_device
    from .config import load_experiment, with_overrides

    device = resolve_device(args.device)
    # --out is a folder; it must not lie in the image trees it reads (the grids would become
    # sources next time), and the files it would write are kept unless --overwrite
    out = check_output(args.out, [args.src, args.ref], kind="dir")
    for name in output_names(args.animation):
        check_output(out / name, [], overwrite=args.overwrite)
    overrides = list(args.set or [])
    path = args.checkpoint or args.official_checkpoint
    if args.experiment:
        cfg = load_experiment(args.experiment, overrides)
    elif args.official_checkpoint:
        raise ConfigError("sample: --official-checkpoint needs --experiment NAME for the shapes")
    else:
        cfg = with_overrides(read_config(path), overrides)
    cfg, nets = load_ema_networks(path, cfg, device)
    paths = sample(nets, cfg, args.src, args.ref, out, device, args.num_src, args.num_ref,
                   args.seed, args.animation)
    for p in paths:
        print(p)
    return 0


def add_cli(subparsers) -> None:
    from .cli import add_device_arg, positive_int

    p = subparsers.add_parser(
        "sample", help="reference / latent grids and an interpolation animation",
        description="Translate images from --src with the references in --ref (both laid out "
                    "ROOT/<domain>/<image>) and write reference.jpg, latent_psi_*.jpg and an "
                    "interpolation animation into the folder --out. Image files that cannot be "
                    "decoded are named on stderr and the next ones taken.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a stargan-ray checkpoint file or folder")
    src.add_argument("--official-checkpoint", help="an official {step}_nets_ema.ckpt")
    p.add_argument("--experiment", help="experiment name or TOML (required for official files)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--src", required=True, help="source images, ROOT/<domain>/<image>")
    p.add_argument("--ref", required=True, help="reference images, ROOT/<domain>/<image>")
    p.add_argument("--out", required=True,
                   help="output folder, created if needed; not inside --src or --ref")
    p.add_argument("--overwrite", action="store_true",
                   help="replace grids an earlier run wrote into --out (default: refuse)")
    p.add_argument("--num-src", type=positive_int, default=8,
                   help="sources (default: %(default)s)")
    p.add_argument("--num-ref", type=positive_int, default=8,
                   help="references (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="latent codes (default: %(default)s)")
    p.add_argument("--animation", choices=("gif", "webp"), default="gif")
    add_device_arg(p)
    p.set_defaults(func=_run)


__all__ = ["reference_grid", "latent_grid", "cycle_grid", "interpolation_frames", "mean_style",
           "debug_images", "sample", "load_folder", "output_names", "save_grid", "save_animation",
           "tile", "ease", "to_uint8", "add_cli", "PSIS"]
