"""Generator: encoder of ResBlks, decoder of AdaIN ResBlks; optional high-pass skips (w_hpf > 0)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AdainResBlk, HighPass, ResBlk

HPF_SIZES = (32, 64, 128)  # feature sizes whose encoder features feed the high-pass path


class Generator(nn.Module):
    def __init__(self, img_size: int = 256, style_dim: int = 64, max_conv_dim: int = 512,
                 w_hpf: float = 1.0, dim_in: int | None = None) -> None:
        super().__init__()
        dim_in = dim_in or 2**14 // img_size
        self.img_size = img_size
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.to_rgb = nn.Sequential(
            nn.InstanceNorm2d(dim_in, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(dim_in, 3, 1, 1, 0))

        # one more down/up level with the high-pass path, as officially
        repeat_num = int(math.log2(img_size)) - 4 + (1 if w_hpf > 0 else 0)
        dim_out = dim_in
        for _ in range(repeat_num):
            dim_out = min(dim_in * 2, max_conv_dim)
            self.encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_in, style_dim, w_hpf=w_hpf, upsample=True))
            dim_in = dim_out
        for _ in range(2):  # bottleneck
            self.encode.append(ResBlk(dim_out, dim_out, normalize=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_out, style_dim, w_hpf=w_hpf))
        if w_hpf > 0:
            self.hpf = HighPass(w_hpf)

    def forward(self, x: torch.Tensor, s: torch.Tensor,
                masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.from_rgb(x)
        cache: dict[int, torch.Tensor] = {}
        for block in self.encode:
            if masks is not None and x.size(2) in HPF_SIZES:
                cache[x.size(2)] = x
            x = block(x)
        for block in self.decode:
            x = block(x, s)
            if masks is not None and x.size(2) in HPF_SIZES:
                # mask 0 (whole face) at 32 px, mask 1 (inner face) at 64 and 128 px
                mask = masks[0] if x.size(2) == 32 else masks[1]
                mask = F.interpolate(mask, size=x.size(2), mode="bilinear")
                x = x + self.hpf(mask * cache[x.size(2)])
        return self.to_rgb(x)
