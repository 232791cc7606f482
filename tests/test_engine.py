import copy

import pytest
import torch

from stargan_ray.engine import TrainState, build_optimizers, train_step
from stargan_ray.models import EMA, TRAINED

from .helpers import random_batch, randomized_fan, sparsify_heads, tiny_config
from .reference_loop import reference_iteration

OFFICIAL_STATS = {f"D/{m}_{k}" for m in ("latent", "ref") for k in ("real", "fake", "reg")} | {
    f"G/{m}_{k}" for m in ("latent", "ref") for k in ("adv", "sty", "ds", "cyc")} | {"G/lambda_ds"}


def _double_state(cfg):
    state = TrainState.create(cfg, "cpu", seed=3)
    for nets in (state.nets, state.nets_ema):
        for _, module in nets.items():
            module.double()
    state.optims = build_optimizers(cfg, state.nets)
    return state


def _double(batch):
    return type(batch)(**{k: (v.double() if v.is_floating_point() else v)
                          for k, v in vars(batch).items()})


@pytest.mark.parametrize("overrides", [{}, {"loss.lambda_ds": 2.0, "loss.lambda_sty": 0.5,
                                            "loss.lambda_reg": 3.0, "model.num_domains": 3}])
def test_two_iterations_match_the_official_loop_parameter_for_parameter(overrides):
    # float64 so that "equal to float rounding" is a tight bound, not Adam's sign noise
    cfg = tiny_config(**{"optim.ema_beta": 0.9, "loss.ds_iter": 4, **overrides})
    state = _double_state(cfg)
    ref_nets, ref_ema = copy.deepcopy(state.nets), copy.deepcopy(state.nets_ema)
    ref_optims = build_optimizers(cfg, ref_nets)
    for step in range(2):
        batch = _double(random_batch(cfg, seed=step))
        stats = train_step(state, batch)
        lam_ds = cfg.loss.lambda_ds * (1 - step / cfg.loss.ds_iter)
        reference_iteration(ref_nets, ref_ema, ref_optims, batch, lambda_reg=cfg.loss.lambda_reg,
                            lambda_sty=cfg.loss.lambda_sty, lambda_ds=lam_ds,
                            lambda_cyc=cfg.loss.lambda_cyc, ema_beta=cfg.optim.ema_beta)
        assert stats["G/lambda_ds"].item() == pytest.approx(lam_ds)
    for name in TRAINED:
        for (key, p), p_ref in zip(getattr(state.nets, name).named_parameters(),
                                   getattr(ref_nets, name).parameters()):
            assert torch.allclose(p, p_ref, rtol=0, atol=1e-10), f"nets.{name}.{key}"
    for name in EMA:
        for (key, p), p_ref in zip(getattr(state.nets_ema, name).named_parameters(),
                                   getattr(ref_ema, name).parameters()):
            assert torch.allclose(p, p_ref, rtol=0, atol=1e-10), f"nets_ema.{name}.{key}"
    # and the step changed the networks (parity of a no-op would prove nothing)
    fresh = _double_state(cfg)
    assert not torch.allclose(fresh.nets.generator.from_rgb.weight, state.nets.generator.from_rgb.weight)


def test_stats_use_the_official_names_and_stay_on_the_device():
    cfg = tiny_config()
    state = TrainState.create(cfg, "cpu")
    stats = train_step(state, random_batch(cfg))
    assert set(stats) == OFFICIAL_STATS
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad
               for v in stats.values())
    assert state.step == 1


def test_train_step_restores_requires_grad_and_leaves_ema_frozen():
    cfg = tiny_config()
    state = TrainState.create(cfg, "cpu")
    train_step(state, random_batch(cfg))
    for name in TRAINED:
        assert all(p.requires_grad for p in getattr(state.nets, name).parameters())
    for name in EMA:
        assert not any(p.requires_grad for p in getattr(state.nets_ema, name).parameters())


def test_same_seed_same_parameters_after_k_steps():
    cfg = tiny_config()
    runs = []
    for _ in range(2):
        state = TrainState.create(cfg, "cpu", seed=11)
        for step in range(3):
            train_step(state, random_batch(cfg, seed=step))
        runs.append(state)
    for name in TRAINED:
        for a, b in zip(getattr(runs[0].nets, name).parameters(),
                        getattr(runs[1].nets, name).parameters()):
            assert torch.equal(a, b)
    other = TrainState.create(cfg, "cpu", seed=12)
    assert not torch.equal(other.nets.generator.from_rgb.weight,
                           TrainState.create(cfg, "cpu", seed=11).nets.generator.from_rgb.weight)


def test_create_does_not_disturb_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    TrainState.create(tiny_config(), "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_masked_iteration_with_fan_matches_the_official_loop(tmp_path):
    """w_hpf=1 (CelebA-HQ): masks from x_src, recomputed from x_fake for the cycle term."""

    fan = randomized_fan(0)
    sparsify_heads(fan, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    wing = tmp_path / "wing.ckpt"
    torch.save({"state_dict": fan.state_dict()}, wing)
    cfg = tiny_config(**{"model.w_hpf": 1.0, "model.wing_path": str(wing), "data.batch_size": 1,
                         "optim.ema_beta": 0.9})
    state = TrainState.create(cfg, "cpu", seed=3)  # loads the FAN from model.wing_path
    assert state.nets.fan is not None and state.nets_ema.fan is state.nets.fan
    for nets in (state.nets, state.nets_ema):
        for _, module in nets.items(include_fan=True):
            module.double()
    state.optims = build_optimizers(cfg, state.nets)
    ref_nets, ref_ema = copy.deepcopy(state.nets), copy.deepcopy(state.nets_ema)
    ref_optims = build_optimizers(cfg, ref_nets)
    batch = _double(random_batch(cfg, seed=0))
    masks = state.nets.fan.get_heatmap(batch.x_src)
    assert 0 < masks[0].mean() < 1  # masks that select part of the image
    train_step(state, batch)
    reference_iteration(ref_nets, ref_ema, ref_optims, batch, lambda_reg=1.0, lambda_sty=1.0,
                        lambda_ds=cfg.loss.lambda_ds, lambda_cyc=1.0, w_hpf=1.0, ema_beta=0.9)
    for name in TRAINED:
        for (key, p), p_ref in zip(getattr(state.nets, name).named_parameters(),
                                   getattr(ref_nets, name).parameters()):
            assert torch.allclose(p, p_ref, rtol=0, atol=1e-10), f"nets.{name}.{key}"
    # the FAN is frozen and never trained
    assert all(not p.requires_grad for p in state.nets.fan.parameters())
    for a, b in zip(state.nets.fan.parameters(), ref_nets.fan.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cap", [2, 3])  # 4 equal micro-batches; 3 + 3 + 2 (uneven)
def test_micro_batches_give_the_update_of_the_whole_batch(cap):
    """data.batch_per_worker splits a batch of 8; the k-step parameters equal one pass's."""
    cfg = tiny_config(**{"data.batch_size": 8, "optim.ema_beta": 0.9, "loss.ds_iter": 4,
                         "loss.lambda_reg": 2.0})
    whole, split = _double_state(cfg), _double_state(cfg)
    split.cfg = tiny_config(**{"data.batch_size": 8, "optim.ema_beta": 0.9, "loss.ds_iter": 4,
                               "loss.lambda_reg": 2.0, "data.batch_per_worker": cap})
    sizes = []  # what the generator was given at once: never more than the cap
    split.nets.generator.register_forward_hook(lambda m, args, out: sizes.append(len(args[0])))
    for step in range(3):
        batch = _double(random_batch(cfg, seed=step))
        stats_whole, stats_split = train_step(whole, batch), train_step(split, batch)
        for key in OFFICIAL_STATS:
            assert stats_split[key].item() == pytest.approx(stats_whole[key].item(), rel=1e-9,
                                                            abs=1e-12), key
    for group in ("nets", "nets_ema"):
        names = TRAINED if group == "nets" else EMA
        for name in names:
            for (key, p), q in zip(getattr(getattr(split, group), name).named_parameters(),
                                   getattr(getattr(whole, group), name).parameters()):
                # Every convolution of G feeds an instance norm, which removes its bias: those
                # gradients are 0 up to rounding, and Adam turns the rounding into steps well
                # below lr (1e-4) that differ between any two summation orders.
                no_effect = name == "generator" and key.endswith(".bias") and "conv" in key \
                    or key == "from_rgb.bias" and name == "generator"
                atol = 1e-5 if no_effect else 1e-10
                assert torch.allclose(p, q, rtol=0, atol=atol), f"{group}.{name}.{key}"
    assert max(sizes) == cap and min(sizes) == (8 % cap or cap)
    fresh = _double_state(cfg)  # and the steps moved the networks
    assert not torch.allclose(fresh.nets.generator.from_rgb.weight,
                              split.nets.generator.from_rgb.weight)


def test_batch_per_worker_is_checked_at_the_door():
    from stargan_ray.config import ConfigError

    with pytest.raises(ConfigError, match="data.batch_per_worker: must be >= 0"):
        tiny_config(**{"data.batch_per_worker": -1})
