"""Adaptive discriminator augmentation (ADA; Karras et al., 2020, "Training Generative
Adversarial Networks with Limited Data"), for small data sets where D overfits.

Every image the discriminator sees, real and fake, in the D and the G losses, goes through one
differentiable pipeline: x-flip, integer translation (up to 1/8 of the size), isotropic scaling
(log2-normal, std 0.2), rotation (uniform over the circle), brightness (normal, std 0.2),
contrast (log2-normal, std 0.5), hue rotation about the luma axis (uniform) and saturation
(log2-normal, std 1), each applied to each image with probability p (StyleGAN2-ADA's "bgc"
ranges, NVlabs/stylegan2-ada-pytorch training/augment.py, without its 90-degree rotations,
anisotropic scaling, fractional translation and luma flip, which make little sense for faces and
animals). The geometric part is one bilinear resampling with mirrored borders, written with
gathers so that R1's double backward passes through it (grid_sample has no double backward);
unlike the reference it does not upsample around the resampling, so shrinking aliases a little.

p follows the heuristic of the paper: r_t = E[sign(D(real))] over the last ada_interval steps
(summed over all workers), and p moves by sign(r_t - ada_target) * images / (ada_kimg * 1000)
every ada_interval steps, within [0, 1]. p and the running sums are TrainState.ada, saved in
checkpoints: p is a function of the run's history and resume is exact.

The random parameters of step s are drawn for all data.batch_size rows of the step from
(train.seed, s) and cut to a worker's rows, so they depend on the sample, not on the worker count.
Plain torch, device-clean: nothing is made on the host inside a step and nothing waits for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .config import ExperimentConfig, LossConfig
from .models import Networks

Augment = Callable[[torch.Tensor], torch.Tensor]

CALLS = 6  # D applications per step: D latent (real, fake), D ref (real, fake), G latent, G ref
# uniform draws per image and call: gates of flip, translation, scale, rotation, brightness,
# contrast, hue, saturation; the flip bit, tx, ty, the angle, the hue angle
_U_GATES = dict(flip=0, xint=1, scale=2, rotate=3, brightness=4, contrast=5, hue=6, saturation=7)
_U_FLIP, _U_TX, _U_TY, _U_THETA, _U_HUE = 8, 9, 10, 11, 12
N_UNIFORM = 13
_N_SCALE, _N_BRIGHTNESS, _N_CONTRAST, _N_SATURATION = 0, 1, 2, 3
N_NORMAL = 4
XINT_MAX, SCALE_STD, BRIGHTNESS_STD, CONTRAST_STD, SATURATION_STD = 0.125, 0.2, 0.2, 0.5, 1.0


def ada_on(loss: LossConfig) -> bool:
    return loss.ada_target > 0


@dataclass
class AdaState:
    """p and the sums of the current interval (0-dim float32 tensors on the device)."""

    p: torch.Tensor
    signs: torch.Tensor  # sum of sign(D(real)) since the last update, over all workers
    count: torch.Tensor  # how many logits that sum holds

    @classmethod
    def create(cls, device: torch.device | str) -> "AdaState":
        return cls(*(torch.zeros((), device=device) for _ in range(3)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        for f in fields(self):
            setattr(self, f.name, data[f.name].to(getattr(self, f.name).device))


def update_p(ada: AdaState, loss: LossConfig, images_per_step: int) -> None:
    """The ADA step: p += sign(r_t - target) * images / (ada_kimg * 1000), clamped to [0, 1];
    the interval's sums restart. On the device: no synchronisation."""
    r_t = ada.signs / ada.count
    adjust = images_per_step * loss.ada_interval / (loss.ada_kimg * 1000)
    ada.p = (ada.p + torch.sign(r_t - loss.ada_target) * adjust).clamp(0, 1)
    ada.signs, ada.count = torch.zeros_like(ada.signs), torch.zeros_like(ada.count)


@dataclass(frozen=True)
class StepNoise:
    """The random parameters of one step for some rows: uniform (rows, CALLS, N_UNIFORM),
    normal (rows, CALLS, N_NORMAL), and the p they are gated with."""

    uniform: torch.Tensor
    normal: torch.Tensor
    p: torch.Tensor

    def fn(self, call: int) -> Augment:
        """The augmentation of D application `call` (0..CALLS-1) for these rows."""
        return lambda x: augment(x, self.p, self.uniform[:, call], self.normal[:, call])

    def pair(self, call: int) -> tuple[Augment, Augment]:
        """(real, fake) augmentations of a D step: calls `call` and `call + 1`."""
        return self.fn(call), self.fn(call + 1)

    def split(self, size: int) -> list["StepNoise"]:
        return [StepNoise(u, g, self.p) for u, g in zip(self.uniform.split(size),
                                                        self.normal.split(size))]


def step_noise(seed: int, step: int, rows: range, total: int, p: torch.Tensor,
               device: torch.device) -> StepNoise:
    """The parameters of step `step` for `rows` of its `total`: drawn for all rows from
    (seed, step) on the device, then cut, so a row's draw does not depend on the worker count."""
    state = np.random.SeedSequence([seed, step, 0xADA]).generate_state(1, np.uint64)[0]
    gen = None
    if device.type != "meta":  # shapes only there: no generator
        gen = torch.Generator(device).manual_seed(int(state >> np.uint64(1)))
    uniform = torch.rand((total, CALLS, N_UNIFORM), generator=gen, device=device)
    normal = torch.randn((total, CALLS, N_NORMAL), generator=gen, device=device)
    return StepNoise(uniform[rows.start:rows.stop], normal[rows.start:rows.stop], p)


class Augmented(nn.Module):
    """A discriminator that sees its images augmented (for the G losses)."""

    def __init__(self, discriminator: nn.Module, augment_fn: Augment) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.augment_fn = augment_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.discriminator(self.augment_fn(x), y)


# ---------------------------------------------------------------- the engine's hooks


def noise_for(cfg: ExperimentConfig, step: int, rows: range | None, n: int, p: torch.Tensor,
              device: torch.device) -> StepNoise:
    """A step's draws for a worker's rows of data.batch_size (TrainState.rows), or, when they
    are not known (None), for a batch of n rows as the whole step."""
    rows, total = (rows, cfg.data.batch_size) if rows is not None else (range(n), n)
    return step_noise(cfg.train.seed, step, rows, total, p, device)


def pair(noise: StepNoise | None, call: int) -> tuple[Augment, Augment] | None:
    """d_loss's (real, fake) augmentations; None when ADA is off."""
    return None if noise is None else noise.pair(call)


def seen_by_d(nets: Networks, noise: StepNoise | None, call: int) -> Networks:
    """nets for a G loss: with ADA, a discriminator that sees the fakes augmented."""
    if noise is None:
        return nets
    return Networks(generator=nets.generator, mapping_network=nets.mapping_network,
                    style_encoder=nets.style_encoder, fan=nets.fan,
                    discriminator=Augmented(nets.discriminator, noise.fn(call)))


def after_step(ada: AdaState, cfg: ExperimentConfig, step: int, signs: torch.Tensor, count: int,
               p: torch.Tensor, stat_sync: Callable[[torch.Tensor], None] | None
               ) -> dict[str, torch.Tensor]:
    """After step `step` (1-based: the steps done): add its sum of sign(D(real)) to the interval
    (summed over all workers by stat_sync: integers, so exact in any order) and update p every
    loss.ada_interval steps. Returns ADA/p (the p the step used) and ADA/r_t (the step's mean
    sign over all workers)."""
    total = torch.stack([signs.float(), torch.full((), float(count), device=signs.device)])
    if stat_sync is not None:
        stat_sync(total)
    ada.signs, ada.count = ada.signs + total[0], ada.count + total[1]
    if step % cfg.loss.ada_interval == 0:
        update_p(ada, cfg.loss, cfg.data.batch_size)
    return {"ADA/p": p, "ADA/r_t": total[0] / total[1]}


# ---------------------------------------------------------------- the pipeline


def augment(x: torch.Tensor, p: torch.Tensor, uniform: torch.Tensor,
            normal: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1], each transform applied per image with probability p.

    uniform (N, N_UNIFORM) and normal (N, N_NORMAL) are the image's draws. An image that draws
    no geometric (colour) transform passes that stage unchanged, exactly; p = 0 is the identity.
    """
    gate = {name: uniform[:, i] < p for name, i in _U_GATES.items()}
    x = _geometric(x, gate, uniform, normal)
    return _colour(x, gate, uniform, normal)


def _matrices(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """(N, k, k) from k x k lists of (N,) tensors."""
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def _geometric(x: torch.Tensor, gate: dict[str, torch.Tensor], uniform: torch.Tensor,
               normal: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    zero, one = torch.zeros_like(uniform[:, 0]), torch.ones_like(uniform[:, 0])
    flip = torch.where(gate["flip"], 1 - 2 * torch.floor(uniform[:, _U_FLIP] * 2), one)
    tx = torch.where(gate["xint"], torch.round((uniform[:, _U_TX] * 2 - 1) * XINT_MAX * w), zero)
    ty = torch.where(gate["xint"], torch.round((uniform[:, _U_TY] * 2 - 1) * XINT_MAX * h), zero)
    scale = torch.where(gate["scale"], torch.exp2(normal[:, _N_SCALE] * SCALE_STD), one)
    theta = torch.where(gate["rotate"], (uniform[:, _U_THETA] * 2 - 1) * math.pi, zero)
    # inverse transforms (output pixel -> input pixel), composed as flip, translate, scale, rotate
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    g_inv = _matrices([[flip * cos, -flip * sin, -flip * tx],
                       [sin, cos, -ty],
                       [zero, zero, one]])
    moved = (g_inv - torch.eye(3, device=x.device)).abs().amax((1, 2)) > 0
    return torch.where(moved[:, None, None, None], _resample(x, g_inv.to(x.dtype)), x)


def _mirror(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices reflected into [0, size): ... 1 0 | 0 1 ... size-1 | size-1 size-2 ..."""
    i = torch.remainder(i, 2 * size)
    return torch.where(i >= size, 2 * size - 1 - i, i)


def _resample(x: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of x at g_inv @ (output pixel), centred coordinates, mirrored borders.

    Gathers, not grid_sample: the gradient to x is itself differentiable (R1's double backward).
    """
    n, c, h, w = x.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) - cx).view(1, 1, w)
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) - cy).view(1, h, 1)
    m = g_inv[:, :2, :, None, None]  # (N, 2, 3, 1, 1)
    px = m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2] + cx
    py = m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2] + cy
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = (px - x0)[:, None], (py - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    flat = x.reshape(n, c, h * w)

    def tap(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        index = (_mirror(yi, h) * w + _mirror(xi, w)).view(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, index).view(n, c, h, w)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def _colour(x: torch.Tensor, gate: dict[str, torch.Tensor], uniform: torch.Tensor,
            normal: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, hue and saturation as one affine map of RGB per image."""
    n, c, h, w = x.shape
    zero, one = torch.zeros_like(uniform[:, 0]), torch.ones_like(uniform[:, 0])
    b = torch.where(gate["brightness"], normal[:, _N_BRIGHTNESS] * BRIGHTNESS_STD, zero)
    k = torch.where(gate["contrast"], torch.exp2(normal[:, _N_CONTRAST] * CONTRAST_STD), one)
    hue = torch.where(gate["hue"], (uniform[:, _U_HUE] * 2 - 1) * math.pi, zero)
    sat = torch.where(gate["saturation"], torch.exp2(normal[:, _N_SATURATION] * SATURATION_STD),
                      one)
    eye = torch.eye(3, device=x.device)
    luma = torch.full((3, 3), 1 / 3, device=x.device)  # v v^T for the luma axis v = (1,1,1)/sqrt 3
    cross = (eye.roll(1, 0) - eye.roll(-1, 0)) / math.sqrt(3)  # [v]_x
    # rotation about v (Rodrigues), then saturation: scale what is off the luma axis
    rotate = (torch.cos(hue)[:, None, None] * eye + torch.sin(hue)[:, None, None] * cross
              + (1 - torch.cos(hue))[:, None, None] * luma)
    saturate = luma + (eye - luma) * sat[:, None, None]
    linear = saturate @ rotate * k[:, None, None]  # (N, 3, 3)
    offset = linear @ b[:, None, None].expand(n, 3, 1)  # brightness is added first
    changed = (gate["brightness"] | gate["contrast"] | gate["hue"] | gate["saturation"])
    out = linear.to(x.dtype) @ x.reshape(n, c, h * w) + offset.to(x.dtype)
    return torch.where(changed[:, None, None, None], out.view(n, c, h, w), x)


__all__ = ["AdaState", "StepNoise", "Augmented", "augment", "step_noise", "update_p", "ada_on",
           "noise_for", "pair", "seen_by_d", "after_step", "CALLS", "N_UNIFORM", "N_NORMAL"]
