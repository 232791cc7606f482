"""Translation with a trained model: one path from an image file to output pixels.

Used by `sample`, `translate`, `export` (and the Serve app):

- the official test-time transform (``image_to_tensor``): any size and aspect is resized to
  img_size x img_size (PIL bilinear, as the official test loader's Resize([s, s])), then
  ToTensor and Normalize(0.5, 0.5) to [-1, 1];
- styles from seeded latent codes, truncated toward the domain's mean style by psi
  (1.0 = none), or from reference images through the style encoder;
- batched generation on the given device with the FAN masks of ``Networks.masks`` for
  w_hpf > 0 models; uint8 (H, W, 3) pixels out with the official quantisation (grids.to_uint8).

Each seed draws its latent code from its own torch.Generator and each style is computed alone
(the mean styles come from a fixed seed), so codes and styles are bit for bit the same whatever
else is asked for. The generator runs in batches: a source's output then depends on its batch
only through the float32 summation order of the convolution kernels (measured <= 2e-5 on
[-1, 1] on CPU, at most one uint8 level on rare pixels).
Plain torch: no Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .config import SYNTHETIC, ExperimentConfig
from .grids import mean_style, to_uint8
from .models import Networks

MEAN_STYLE_SEED = 0  # the truncation centre of every domain: 10,000 codes drawn from this seed
BATCH_SIZE = 16


# ---------------------------------------------------------------- pixels in and out


def image_to_tensor(image: Image.Image, img_size: int) -> torch.Tensor:
    """The official test transform of an RGB image: (3, img_size, img_size) in [-1, 1]."""
    return pixels_to_input(test_pixels(image, img_size))


def test_pixels(image: Image.Image, img_size: int) -> torch.Tensor:
    """(3, img_size, img_size) uint8: Resize([s, s]) squashes any aspect to a square, as the
    official test loader does. Callers that decode once and use an image often keep these."""
    if image.size != (img_size, img_size):
        image = image.resize((img_size, img_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def pixels_to_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1]: ToTensor then Normalize(0.5, 0.5), (x - 0.5) / 0.5 bit for bit."""
    return pixels.float().div(255).mul(2).sub(1)


def load_image_tensor(path: str | Path, img_size: int, fit: str = "stretch") -> torch.Tensor:
    """An image file through the test transform; decoded as training decodes (16-bit scaled,
    EXIF orientation applied, made square by `fit` as data.fit does: data/shapes.py).

    Raises data.folders.BadImage for a file that cannot be read or decoded.
    """
    from .data.folders import load_image

    return image_to_tensor(load_image(path, fit=fit), img_size)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 with the official rounding."""
    return np.stack([to_uint8(image) for image in images]) if len(images) else \
        np.zeros((0, images.size(2), images.size(3), 3), np.uint8)


# ---------------------------------------------------------------- latent codes


# torch's CPU generator (mt19937) keeps only the low 32 bits of a seed (manual_seed takes 64):
# seeds s and s + 2**32 draw the same code, so the largest seed is the last with a code of its own
MAX_SEED = 2**32 - 1


def latent_codes(seeds: Sequence[int], latent_dim: int) -> torch.Tensor:
    """(K, latent_dim): code k from a generator seeded with seeds[k] alone (batch-independent)."""
    return torch.stack([torch.randn((latent_dim,), generator=torch.Generator().manual_seed(s))
                        for s in seeds]) if seeds else torch.zeros((0, latent_dim))


def domain_names(cfg: ExperimentConfig,
                 recorded: Sequence[str] | None = None) -> list[str] | None:
    """The domain names of a model's training data, in id order; None when they are unknown.

    The rule behind Translator.domains, where callers get the names (translate, export, serve).

    recorded: the names its checkpoint holds (checkpoint.read_domains), used when there is one per
    domain. Official files and older checkpoints hold none: ids are then the sorted folder names
    of data.train_dir (the synthetic set has its own names), read from there when it is readable.
    """
    from .data import folders, synthetic
    from .errors import UserError

    if recorded and len(recorded) == cfg.model.num_domains:
        return list(recorded)
    if cfg.data.train_dir == SYNTHETIC:
        return synthetic.domain_names(cfg.model.num_domains)
    try:
        return list(folders.scan(cfg.data.train_dir, cfg.model.num_domains).domains)
    except (UserError, OSError, ValueError):
        return None


# ---------------------------------------------------------------- the translator


@dataclass
class Translator:
    """EMA networks of one model on one device, with its mean styles cached per domain."""

    nets: Networks
    cfg: ExperimentConfig
    device: torch.device
    batch_size: int = BATCH_SIZE
    recorded_domains: tuple[str, ...] | None = None  # as its checkpoint records them
    _mean_styles: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, cfg: ExperimentConfig | None = None,
                        device: torch.device | str = "cpu",
                        batch_size: int = BATCH_SIZE) -> "Translator":
        """Our checkpoint (cfg optional: it carries its own) or an official nets_ema file (cfg
        required for the shapes)."""
        from .checkpoint import load_ema_networks, read_domains

        cfg, nets = load_ema_networks(path, cfg, device)
        return cls(nets, cfg, torch.device(device), batch_size, read_domains(path))

    @cached_property
    def _names(self) -> tuple[str, ...] | None:
        names = domain_names(self.cfg, self.recorded_domains)
        return None if names is None else tuple(names)

    @property
    def domains(self) -> tuple[str, ...]:
        """The model's domain names in id order, the one place callers get them: those its
        checkpoint records, else the folder names of data.train_dir when readable here (the
        synthetic set's own names), else the indices "0", "1", ... (domains_named is then False).
        """
        return self._names or tuple(str(i) for i in range(self.num_domains))

    @property
    def domains_named(self) -> bool:
        """False when the names are unknown and Translator.domains holds the indices."""
        return self._names is not None

    @property
    def img_size(self) -> int:
        return self.cfg.model.img_size

    @property
    def num_domains(self) -> int:
        return self.cfg.model.num_domains

    @torch.no_grad()
    def mean_style(self, y: int) -> torch.Tensor:
        """(1, style_dim): domain y's mean style over 10,000 codes of MEAN_STYLE_SEED."""
        if y not in self._mean_styles:
            g = torch.Generator().manual_seed(MEAN_STYLE_SEED)
            self._mean_styles[y] = mean_style(self.nets, y, self.cfg.model.latent_dim,
                                              self.device, g)
        return self._mean_styles[y]

    @torch.no_grad()
    def latent_styles(self, y: int, seeds: Sequence[int], psi: float = 1.0) -> torch.Tensor:
        """(K, style_dim): styles of the seeds' codes in domain y, psi toward the mean style.

        One code at a time: a matrix product's rounding depends on how many rows it has, and
        a seed's style must not depend on the other seeds asked for.
        """
        z = latent_codes(seeds, self.cfg.model.latent_dim).to(self.device)
        y1 = self._labels(y, 1)
        s = torch.cat([self.nets.mapping_network(zk[None], y1) for zk in z]) if len(z) else \
            torch.zeros((0, self.cfg.model.style_dim), device=self.device)
        return s if psi == 1.0 else torch.lerp(self.mean_style(y).expand_as(s), s, psi)

    @torch.no_grad()
    def reference_styles(self, x_ref: torch.Tensor, y: int) -> torch.Tensor:
        """(K, style_dim): styles of reference images (K, 3, S, S) for domain y, one at a time
        (as latent_styles, so that a reference's style does not depend on the others)."""
        y1 = self._labels(y, 1)
        return torch.cat([self.nets.style_encoder(x[None].to(self.device), y1) for x in x_ref])

    @torch.no_grad()
    def masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The FAN masks of sources (N, 3, S, S), in batches; None for w_hpf = 0 models."""
        if self.nets.fan is None:
            self.nets.masks(x[:0])  # raises for a high-pass generator without its FAN
            return None
        parts = [self.nets.masks(xb.to(self.device)) for xb in x.split(self.batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def generate(self, x: torch.Tensor, s: torch.Tensor,
                 masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """G(x[i], s[i]) for pairs (N, 3, S, S), (N, style_dim) -> (N, 3, S, S) in [-1, 1].

        masks: those of x when already computed (translate reuses one source's masks for all of
        its styles), else computed here.
        """
        if masks is None:
            masks = self.masks(x)
        out = []
        for i in range(0, x.size(0), self.batch_size):
            part = slice(i, i + self.batch_size)
            mb = None if masks is None else (masks[0][part], masks[1][part])
            out.append(self.nets.generator(x[part].to(self.device), s[part].to(self.device),
                                           masks=mb))
        return torch.cat(out) if out else x.new_zeros((0, *x.shape[1:]))

    @torch.no_grad()
    def generate_fixed_shape(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """generate() on pairs padded to a multiple of batch_size rows with copies of the last.

        float32 kernels sum in an order that depends on the batch shape (1 vs 16 rows differ by
        up to 2e-5), while rows of one shape come out alike whatever the other rows hold
        (instance norm: every sample on its own). With every generator and FAN call of the same
        shape, a row's output does not depend on the batch it came in (the Serve app's batching).
        """
        pad = (-x.size(0)) % self.batch_size
        if pad:
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
            s = torch.cat([s, s[-1:].expand(pad, *s.shape[1:])])
        return self.generate(x, s)[:x.size(0) - pad]

    @torch.no_grad()
    def translate(self, x: torch.Tensor, styles: torch.Tensor,
                  masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Every source in every style: (N, 3, S, S), (K, style_dim) -> (N, K, 3, S, S).

        masks: those of x when already computed (a source's styles come in several chunks)."""
        n, k = x.size(0), styles.size(0)
        if masks is None:
            masks = self.masks(x)
        if masks is not None:
            masks = (masks[0].repeat_interleave(k, 0), masks[1].repeat_interleave(k, 0))
        out = self.generate(x.repeat_interleave(k, 0), styles.repeat(n, 1), masks)
        return out.view(n, k, *x.shape[1:])

    def _labels(self, y: int, n: int) -> torch.Tensor:
        return torch.full((n,), y, dtype=torch.long, device=self.device)


__all__ = ["Translator", "image_to_tensor", "load_image_tensor", "to_pixels", "latent_codes",
           "domain_names", "MEAN_STYLE_SEED", "MAX_SEED", "BATCH_SIZE"]
