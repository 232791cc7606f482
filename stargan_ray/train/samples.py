"""The training-time sample grids: a fixed set of val images, rendered by nets_ema in the official
layouts (grids.py). The training loop makes them (rank 0) and hands them to the run's logger."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .. import grids
from ..config import ExperimentConfig
from ..models import Networks

SAMPLE_SOURCES = 6  # sources (columns) and references (rows) in the training sample grids
SAMPLE_LATENTS = 2  # latent codes per target domain in the training latent grid


@torch.no_grad()
def sample_grids(nets_ema: Networks, cfg: ExperimentConfig, x_src: torch.Tensor,
                 x_ref: torch.Tensor, y_ref: torch.Tensor) -> dict[str, Image.Image]:
    """The training-time samples in the official layouts (grids.py): reference and latent.

    The latent grid uses SAMPLE_LATENTS codes seeded by train.seed, the same at every step, so
    grids of one run compare; psi 1 (no truncation) shows what the mapping network learnt.
    """
    g = torch.Generator().manual_seed(cfg.train.seed)
    z_trg = torch.randn((SAMPLE_LATENTS, cfg.model.latent_dim), generator=g).to(x_src.device)
    domains = list(range(min(cfg.model.num_domains, grids.MAX_GRID_DOMAINS)))
    return {"reference": grids.to_image(grids.reference_grid(nets_ema, x_src, x_ref, y_ref)),
            "latent": grids.to_image(grids.latent_grid(nets_ema, x_src, domains, z_trg))}


def load_val_samples(cfg: ExperimentConfig, device: torch.device | str):
    """A fixed set of val images for the grids: sources and references spread over domains.

    Decoded as the training images are; a file that cannot be decoded is named and the next
    image of its domain taken.
    """
    from ..data import folders
    from ..data.labels import scan_split
    from ..data.synthetic import resolve_data_dirs

    _, val_dir = resolve_data_dirs(cfg)
    folder = scan_split(val_dir, cfg.data.val_labels, cfg.model.num_domains)
    fs, size = folder.fs(), cfg.model.img_size

    def readable(paths):  # decoded images of one domain, in order, unreadable ones skipped
        for path in paths:
            try:
                image = folders.decode(folders.read_bytes(fs, path), fit=cfg.data.fit)
            except (folders.BadImage, OSError) as err:
                folders.report_unreadable(path, str(err))
                continue
            yield image.resize((size, size), Image.BILINEAR)

    streams = [readable([p for p, y in zip(folder.paths, folder.labels) if y == d])
               for d in range(len(folder.domains))]
    picks = []
    for k in range(2 * SAMPLE_SOURCES):
        d = k % len(streams)
        image = next(streams[d], None)
        if image is not None:
            picks.append((image, d))
    if not picks:
        raise folders.EmptyDomainError(f"{val_dir}: no readable val images for the sample grids")
    images = [torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1
              for img, _ in picks]
    x = torch.stack(images).to(device)
    y = torch.tensor([d for _, d in picks], device=device)
    return x[0::2], y[0::2], x[1::2], y[1::2]


class TrainingSamples:
    """The grids of one run: its val images are loaded once, at the first grid."""

    def __init__(self, cfg: ExperimentConfig, device: torch.device | str) -> None:
        self.cfg, self.device = cfg, device
        self._val = None

    def __call__(self, nets_ema: Networks) -> dict[str, Image.Image]:
        if self._val is None:
            self._val = load_val_samples(self.cfg, self.device)
        x_src, _, x_ref, y_ref = self._val
        return sample_grids(nets_ema, self.cfg, x_src, x_ref, y_ref)
