"""Style encoder E and discriminator D: the same downsampling trunk, different heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ResBlk
from .mapping import _select_domain


def _trunk(img_size: int, max_conv_dim: int, dim_in: int | None) -> tuple[list[nn.Module], int]:
    """Conv stem, log2(img_size) - 2 downsampling ResBlks (to 4x4), then a 4x4 conv to 1x1."""
    dim_in = dim_in or 2**14 // img_size
    blocks: list[nn.Module] = [nn.Conv2d(3, dim_in, 3, 1, 1)]
    dim_out = dim_in
    for _ in range(int(math.log2(img_size)) - 2):
        dim_out = min(dim_in * 2, max_conv_dim)
        blocks.append(ResBlk(dim_in, dim_out, downsample=True))
        dim_in = dim_out
    blocks += [nn.LeakyReLU(0.2), nn.Conv2d(dim_out, dim_out, 4, 1, 0), nn.LeakyReLU(0.2)]
    return blocks, dim_out


class StyleEncoder(nn.Module):
    def __init__(self, img_size: int = 256, style_dim: int = 64, num_domains: int = 2,
                 max_conv_dim: int = 512, dim_in: int | None = None) -> None:
        super().__init__()
        blocks, dim_out = _trunk(img_size, max_conv_dim, dim_in)
        self.shared = nn.Sequential(*blocks)
        self.unshared = nn.ModuleList(nn.Linear(dim_out, style_dim) for _ in range(num_domains))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.shared(x).flatten(1)
        out = torch.stack([head(h) for head in self.unshared], dim=1)
        return _select_domain(out, y)


class Discriminator(nn.Module):
    def __init__(self, img_size: int = 256, num_domains: int = 2, max_conv_dim: int = 512,
                 dim_in: int | None = None) -> None:
        super().__init__()
        blocks, dim_out = _trunk(img_size, max_conv_dim, dim_in)
        blocks.append(nn.Conv2d(dim_out, num_domains, 1, 1, 0))
        self.main = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One real/fake logit per sample, from the head of its domain y."""
        return _select_domain(self.main(x).flatten(1), y)
