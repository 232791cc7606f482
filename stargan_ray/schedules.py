"""Scheduled loss weights as pure functions of the step (never mutated state).

A resumed run asks for the weight at its own step and gets the same value an uninterrupted run
used; the official loop instead decrements ``args.lambda_ds`` in place and restarts the decay on
``--resume_iter``.
"""

from __future__ import annotations

import math

from .config import LossConfig


def lambda_ds_at(loss: LossConfig, step: int) -> float:
    """Weight of the diversity-sensitive loss at a 0-based step.

    linear (official): max(0, l0 * (1 - step / ds_iter)); cosine: half-cosine from l0 to 0 over
    ds_iter; step: halved every ds_step_every steps and 0 from ds_iter on; none: constant l0.
    """
    l0, total = loss.lambda_ds, loss.ds_iter
    if loss.ds_decay == "none":
        return l0
    progress = min(max(step, 0), total) / total
    if loss.ds_decay == "linear":
        return max(0.0, l0 * (1.0 - progress))
    if loss.ds_decay == "cosine":
        return l0 * 0.5 * (1.0 + math.cos(math.pi * progress))
    if loss.ds_decay == "step":
        return 0.0 if step >= total else l0 * 0.5 ** (step // loss.ds_step_every)
    raise ValueError(f"loss.ds_decay: unknown kind {loss.ds_decay!r}")


def r1_weight_at(loss: LossConfig, step: int) -> float:
    """Weight of the R1 penalty at a step; 0 means skip it this step.

    Lazy regularisation (StyleGAN2): with r1_interval k, R1 runs every k-th step with its weight
    scaled by k, so its average strength equals lambda_reg. k = 1 is the official every-step R1.
    """
    k = loss.r1_interval
    if step % k != 0:
        return 0.0
    return loss.lambda_reg * k
