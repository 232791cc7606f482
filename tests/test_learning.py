"""The toy model learns: a few hundred train_steps on the synthetic data cut the cycle loss."""

import torch

from stargan_ray.data.pipeline import local_batches
from stargan_ray.engine import TrainState, stats_to_floats, train_step

from .conftest import tiny_config


def test_a_few_hundred_steps_drive_the_cycle_loss_well_below_its_start():
    torch.manual_seed(0)
    cfg = tiny_config(**{"model.dim_in": 8, "model.max_conv_dim": 32, "data.batch_size": 4,
                         "data.train_dir": "synthetic", "data.val_dir": "synthetic",
                         "model.num_domains": 3})
    state = TrainState.create(cfg, "cpu")
    batches = local_batches(cfg)
    history = []
    for _ in range(300):
        history.append(stats_to_floats(train_step(state, next(batches))))
    def mean_cyc(window):
        return sum(h["G/latent_cyc"] + h["G/ref_cyc"] for h in window) / (2 * len(window))
    start, end = mean_cyc(history[:20]), mean_cyc(history[-20:])
    assert end < 0.6 * start, (start, end)  # a 40% drop at least
    # and the adversarial game did not collapse into non-finite values
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
