"""The allowed range of every numeric config key (config.validate checks them at the door).

A table, not a check per key: test_config asserts that every int and float key of the config tree
has an entry here, so a new key cannot skip its range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SEED_MAX = 2**32 - 1  # numpy's seed range (np.random.seed), the narrowest of the seeded RNGs
COUNT_MAX = 10**9  # steps, intervals and counts: far above any run, far below an int64 overflow
WIDTH_MAX = 8192  # network widths (channels, latent and style sizes)
BATCH_MAX = 65536


@dataclass(frozen=True)
class Bound:
    """The allowed range of one numeric key: low <= value <= high (< high when high_open);
    floats must also be finite, and power_of_two keys a power of two."""

    low: float
    high: float | None = None
    high_open: bool = False
    power_of_two: bool = False
    why: str = ""

    def rule(self, is_float: bool) -> str:
        text = f"a power of two >= {self.low}" if self.power_of_two else f">= {self.low}"
        if self.high is not None:
            text += f" and {'<' if self.high_open else '<='} {self.high}"
        if is_float:
            text += " and finite"
        return text + (f" ({self.why})" if self.why else "")

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if value < self.low or self.power_of_two and value & (value - 1):
            return False
        if self.high is None:
            return True
        return value < self.high if self.high_open else value <= self.high


_WIDTH = Bound(1, WIDTH_MAX)
_COUNT = Bound(1, COUNT_MAX)
_WEIGHT = Bound(0)  # loss weights, learning rates, weight decay
_BETA = Bound(0, 1, high_open=True)
_PROBABILITY = Bound(0, 1)

# Every int and float key, its range; test_config checks that none is left out.
BOUNDS: dict[str, Bound] = {
    "model.img_size": Bound(32, 1024, power_of_two=True,
                            why="the networks halve it down to 4x4"),
    "model.num_domains": Bound(2, 256, why="one mapping and style branch per domain"),
    "model.latent_dim": _WIDTH,
    "model.hidden_dim": _WIDTH,
    "model.style_dim": _WIDTH,
    "model.dim_in": _WIDTH,
    "model.max_conv_dim": _WIDTH,
    "model.w_hpf": Bound(0, why="0 disables the high-pass path"),
    "loss.lambda_reg": _WEIGHT,
    "loss.lambda_sty": _WEIGHT,
    "loss.lambda_ds": _WEIGHT,
    "loss.lambda_cyc": _WEIGHT,
    "loss.ds_iter": _COUNT,
    "loss.ds_step_every": _COUNT,
    "loss.r1_interval": _COUNT,
    "loss.ada_target": Bound(0, 1, high_open=True, why="0 turns adaptive augmentation off"),
    "loss.ada_interval": _COUNT,
    "loss.ada_kimg": Bound(0.001, why="thousands of images for p to move by 1"),
    "optim.lr": _WEIGHT,
    "optim.f_lr": _WEIGHT,
    "optim.weight_decay": _WEIGHT,
    "optim.beta1": _BETA,
    "optim.beta2": _BETA,
    "optim.ema_beta": _BETA,
    "data.batch_size": Bound(1, BATCH_MAX),
    "data.batch_per_worker": Bound(0, BATCH_MAX, why="0: a worker's whole share at once"),
    "data.val_batch_size": Bound(1, BATCH_MAX),
    "data.randcrop_prob": _PROBABILITY,
    "train.total_iters": _COUNT,
    "train.seed": Bound(0, SEED_MAX, why="numpy's seed range"),
    "train.print_every": _COUNT,
    "train.sample_every": _COUNT,
    "train.save_every": _COUNT,
    "train.eval_every": _COUNT,
    "train.full_eval_every": Bound(0, COUNT_MAX, why="0: never"),
    "train.keep_checkpoints": _COUNT,
    "train.preemption_check_every": Bound(0, COUNT_MAX, why="0: never ask"),
    "train.max_preemptions": Bound(-1, COUNT_MAX, why="-1: no limit"),
    "eval.num_outs_per_domain": _COUNT,
    "eval.batch_size": Bound(1, BATCH_MAX),
    "eval.quick_sources": _COUNT,
    "eval.quick_outs": _COUNT,
    "eval.kid_subsets": _COUNT,
    "eval.kid_subset_size": Bound(2, COUNT_MAX, why="KID's unbiased estimate needs 2"),
    "eval.validation_cpus": Bound(0.0, 1024.0),
    "eval.validation_gpus": Bound(-1.0, 64.0, why="-1 means one when the workers use GPUs"),
}

__all__ = ["Bound", "BOUNDS", "SEED_MAX"]
