"""Shared fixtures: one local Ray instance per test session, tiny model configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from stargan_ray.config import ExperimentConfig, load_experiment

# W&B never reaches the network from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """Start one local Ray instance for the whole session (7-11 s) and stop it at the end.

    The logical CPU count is larger than the 2 physical cores: workers that hold whole CPUs would
    otherwise starve Ray Data's tasks (see docs/ray.md).
    """
    import ray

    from stargan_ray.train import start_local_ray

    if not ray.is_initialized():
        start_local_ray(8, env_vars={"WANDB_MODE": "offline"}, include_dashboard=True,
                        configure_logging=False, log_to_driver=True)
    yield ray
    ray.shutdown()


def tiny_config(**overrides) -> ExperimentConfig:
    """The toy experiment at 32 px with the smallest widths, plus overrides ("loss.lambda_ds": 2)."""
    base = {
        "model.img_size": 32, "model.num_domains": 2, "model.dim_in": 8, "model.max_conv_dim": 16,
        "model.style_dim": 8, "model.latent_dim": 4, "model.hidden_dim": 16, "model.w_hpf": 0.0,
        "data.batch_size": 4,
        # the paper's schedule shape (toy keeps lambda_ds constant for its short demo run)
        "loss.lambda_ds": 1.0, "loss.ds_decay": "linear", "optim.f_lr": 1e-4,
    }
    base.update(overrides)
    return load_experiment("toy", list(base.items()))


def save_synthetic_checkpoint(path: Path) -> Path:
    """An untrained, seeded tiny model with the synthetic set's 3 domains, saved to path."""
    from stargan_ray.checkpoint import save_checkpoint
    from stargan_ray.engine import TrainState

    cfg = tiny_config(**{"model.num_domains": 3, "data.train_dir": "synthetic"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = TrainState.create(cfg, "cpu")
    return save_checkpoint(state, path)


def seeded_ema_networks(cfg: ExperimentConfig, seed: int = 0):
    """Networks of cfg.model, He-initialised from a fixed seed, as EMA copies (for sampling and
    evaluation tests that need a model but no training)."""
    from stargan_ray.models import build_networks, ema_copy, he_init

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = build_networks(cfg.model)
        for _, module in nets.items():
            module.apply(he_init)
    return ema_copy(nets)


def tiny_eval_config(train_dir, val_dir, **overrides) -> ExperimentConfig:
    """tiny_config for evaluations of generated data: one source per batch, 2 outputs per source,
    seeded random feature weights (nothing downloaded)."""
    return tiny_config(**{"data.train_dir": str(train_dir), "data.val_dir": str(val_dir),
                          "data.val_batch_size": 1, "eval.batch_size": 8,
                          "eval.num_outs_per_domain": 2, "eval.feature_weights": "random",
                          **overrides})


@pytest.fixture
def tiny_cfg() -> ExperimentConfig:
    return tiny_config()
