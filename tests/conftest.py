"""Shared fixtures: one local Ray instance per test session, tiny model configs, one intra-op
thread. Plain helpers live in tests/helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

from stargan_ray.config import ExperimentConfig

from .helpers import intra_op_threads, save_synthetic_checkpoint, tiny_config

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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved untrained tiny model with the synthetic set's 3 domains (one per test module)."""
    return save_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def wing(tmp_path_factory):
    """A wing.ckpt of a FAN with random weights (seeded), as the official file holds it."""
    from stargan_ray.models.fan import FAN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wing") / "wing.ckpt"
    torch.save({"state_dict": FAN().state_dict()}, path)
    return path


@pytest.fixture
def tiny_cfg() -> ExperimentConfig:
    return tiny_config()


@pytest.fixture
def one_thread():
    """One intra-op thread for the test. Two intra-op threads on a 2-core machine shared with
    other jobs spend most of their time waiting for each other (measured: 4 tiny steps 1.2 s with
    one thread, up to 260 s with two); float32 CPU convolutions also round differently with
    another thread count."""
    with intra_op_threads(1):
        yield
