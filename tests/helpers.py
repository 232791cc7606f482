"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import torch

from stargan_ray.checkpoint import load_state_into, read_config, safe_load
from stargan_ray.engine import Batch, TrainState


def random_batch(cfg, n: int | None = None, seed: int = 0) -> Batch:
    """A batch of random images and labels with the official fields."""
    g = torch.Generator().manual_seed(seed)
    n = n or cfg.data.batch_size
    size, domains, latent = cfg.model.img_size, cfg.model.num_domains, cfg.model.latent_dim

    def images():
        return torch.rand((n, 3, size, size), generator=g) * 2 - 1

    return Batch(x_src=images(), y_src=torch.randint(0, domains, (n,), generator=g),
                 x_ref=images(), x_ref2=images(), y_ref=torch.randint(0, domains, (n,), generator=g),
                 z_trg=torch.randn((n, latent), generator=g), z_trg2=torch.randn((n, latent), generator=g))


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def stat_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """A train step's stats (0-dim tensors) as Python floats."""
    return {k: float(v) for k, v in stats.items()}


def load_train_state(path: str | Path, device: str = "cpu") -> TrainState:
    """The TrainState saved at path, rebuilt as a resuming worker does (stored config, then
    load_state_into)."""
    state = TrainState.create(read_config(path), device)
    load_state_into(state, safe_load(path, device))
    return state
