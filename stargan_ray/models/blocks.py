"""Building blocks with the official StarGAN v2 module and parameter names (so state dicts match)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResBlk(nn.Module):
    """Pre-activation residual block of the encoders and the discriminator."""

    def __init__(self, dim_in: int, dim_out: int, actv: nn.Module | None = None,
                 normalize: bool = False, downsample: bool = False) -> None:
        super().__init__()
        self.actv = actv if actv is not None else nn.LeakyReLU(0.2)
        self.normalize = normalize
        self.downsample = downsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = nn.InstanceNorm2d(dim_in, affine=True)
            self.norm2 = nn.InstanceNorm2d(dim_in, affine=True)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.learned_sc:
            x = self.conv1x1(x)
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        return x

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(self.actv(x))
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(self.actv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # divide by sqrt(2) to keep unit variance after the sum
        return (self._shortcut(x) + self._residual(x)) / math.sqrt(2)


class AdaIN(nn.Module):
    """Adaptive instance norm: the style code gives a per-channel scale (1 + gamma) and shift."""

    def __init__(self, style_dim: int, num_features: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.fc(s)[:, :, None, None]
        gamma, beta = torch.chunk(h, chunks=2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """Decoder block; without the skip connection when the high-pass path is on (w_hpf > 0)."""

    def __init__(self, dim_in: int, dim_out: int, style_dim: int = 64, w_hpf: float = 0.0,
                 actv: nn.Module | None = None, upsample: bool = False) -> None:
        super().__init__()
        self.w_hpf = w_hpf
        self.actv = actv if actv is not None else nn.LeakyReLU(0.2)
        self.upsample = upsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.learned_sc:
            x = self.conv1x1(x)
        return x

    def _residual(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = self.actv(self.norm1(x, s))
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv1(x)
        x = self.actv(self.norm2(x, s))
        return self.conv2(x)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out = self._residual(x, s)
        if self.w_hpf == 0:
            out = (out + self._shortcut(x)) / math.sqrt(2)
        return out


class HighPass(nn.Module):
    """Depthwise 3x3 Laplacian-like filter, scaled by 1 / w_hpf.

    The filter is a buffer (as officially), which the released checkpoints lack; see
    checkpoint.load_official_networks.
    """

    def __init__(self, w_hpf: float) -> None:
        super().__init__()
        kernel = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])
        self.register_buffer("filter", kernel / w_hpf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.filter[None, None].expand(x.size(1), 1, 3, 3).to(x.dtype)
        return F.conv2d(x, weight, padding=1, groups=x.size(1))
