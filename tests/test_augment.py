"""ADA (stargan_ray/augment.py): the pipeline, p's heuristic, and ADA in the training step."""

from __future__ import annotations

import copy
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stargan_ray.augment import (_U_GATES, CALLS, N_NORMAL, N_UNIFORM, AdaState, after_step,
                                 augment, step_noise)
from stargan_ray.checkpoint import save_checkpoint
from stargan_ray.engine import TrainState, train_step
from stargan_ray.models import TRAINED

from .helpers import (assert_identical_networks, confident_d, load_train_state, random_batch,
                      tiny_config)


def _only(name: str, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws where only transform `name` passes its gate at p = 0.5."""
    g = torch.Generator().manual_seed(seed)
    uniform, normal = torch.rand(n, N_UNIFORM, generator=g), torch.randn(n, N_NORMAL, generator=g)
    for other, column in _U_GATES.items():
        uniform[:, column] = 0.2 if other == name else 0.9
    return uniform, normal


def _images(n=2, size=8, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g, dtype=dtype) * 2 - 1)


@pytest.mark.parametrize("name", sorted(_U_GATES))
def test_each_augmentation_changes_images_and_is_twice_differentiable(name):
    p = torch.tensor(0.5)
    uniform, normal = _only(name)
    if name == "flip":
        uniform[:, 8] = 0.75  # the flip bit: flip
    if name == "xint":
        uniform[:, 9:11] = 0.95  # tx, ty: a shift of 1 px at 8 px
    x = _images().requires_grad_(True)
    out = augment(x, p, uniform, normal)
    assert out.shape == x.shape and not torch.allclose(out, x)

    def fn(images):  # one image of 4 px: few inputs for the numerical Jacobians
        return augment(images, p, uniform[:1], normal[:1])

    x = x[:1, :, :4, :4].detach().requires_grad_(True)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))  # R1 differentiates the input gradient


def test_flip_and_integer_translation_move_pixels_exactly():
    p = torch.tensor(0.5)
    x = _images(dtype=torch.float32)
    uniform, normal = _only("flip")
    uniform[:, 8] = 0.75
    assert torch.equal(augment(x, p, uniform, normal), x.flip(3))
    uniform, normal = _only("xint")
    uniform[:, 9], uniform[:, 10] = 0.95, 0.5  # tx = round(0.9 * 0.125 * 8) = 1, ty = 0
    out = augment(x, p, uniform, normal)
    assert torch.equal(out[..., 1:], x[..., :-1])  # one pixel to the right
    assert torch.equal(out[..., 0], x[..., 0])  # mirrored border


def test_p_zero_is_the_identity_for_values_and_gradients():
    x = _images(n=4, dtype=torch.float32).requires_grad_(True)
    noise = step_noise(5, 3, range(4), 4, torch.zeros(()), torch.device("cpu"))
    out = noise.fn(0)(x)
    assert torch.equal(out, x)
    (grad,) = torch.autograd.grad((out * x.detach()).sum(), x)
    assert torch.equal(grad, x.detach())


def test_draws_are_a_function_of_the_step_and_the_row_not_of_the_worker():
    p, cpu = torch.zeros(()), torch.device("cpu")
    whole = step_noise(7, 11, range(8), 8, p, cpu)
    halves = [step_noise(7, 11, rows, 8, p, cpu) for rows in (range(0, 4), range(4, 8))]
    assert torch.equal(torch.cat([h.uniform for h in halves]), whole.uniform)
    assert torch.equal(torch.cat([h.normal for h in halves]), whole.normal)
    assert whole.uniform.shape == (8, CALLS, N_UNIFORM)
    assert not torch.equal(step_noise(7, 12, range(8), 8, p, cpu).uniform, whole.uniform)


def _drive(ada: AdaState, cfg, r_ts: list[float], start: int = 0) -> list[float]:
    """Feed after_step a sign statistic per step (8 images, 2 D steps); p after each step."""
    ps = []
    for i, r_t in enumerate(r_ts, start=start + 1):
        after_step(ada, cfg, i, torch.tensor(r_t * 16), 16, ada.p, None)
        ps.append(ada.p.item())
    return ps


def test_p_moves_toward_the_target_every_interval_and_stays_in_0_1():
    cfg = tiny_config(**{"loss.ada_target": 0.6, "loss.ada_interval": 4, "loss.ada_kimg": 0.1,
                         "data.batch_size": 8})
    step = 8 * 4 / (0.1 * 1000)  # images per interval / (ada_kimg * 1000)
    ada = AdaState.create("cpu")
    ps = _drive(ada, cfg, [0.9] * 12)  # D too sure of the reals: p rises
    assert ps[:3] == [0, 0, 0] and ps[3] == pytest.approx(step)
    assert ps[11] == pytest.approx(3 * step)
    ps = _drive(ada, cfg, [0.75, 0.75, 0.75, 0.0] * 2, start=12)  # mean 0.5625 < 0.6: p falls
    assert ps[3] == pytest.approx(2 * step) and ps[7] == pytest.approx(step)
    assert max(_drive(ada, cfg, [1.0] * 80, start=20)) == 1.0  # clamped
    again = AdaState.create("cpu")  # a pure function of the history
    assert _drive(again, cfg, [0.9] * 12) == [pytest.approx(v) for v in
                                              _drive(AdaState.create("cpu"), cfg, [0.9] * 12)]


def _run(state, steps):
    stats = []
    for _ in range(steps):
        stats.append(train_step(state, random_batch(state.cfg, seed=state.step)))
    return stats


def test_off_by_default_and_p_pinned_at_zero_trains_bitwise_like_off():
    off = TrainState.create(tiny_config(), "cpu")
    assert off.ada is None
    assert not any(k.startswith("ADA/") for k in _run(off, 2)[0])
    # on, with a target r_t never reaches: p stays 0, and an augmentation with p = 0 changes
    # nothing, forward or backward (R1 included)
    on = TrainState.create(tiny_config(**{"loss.ada_target": 0.999, "loss.ada_interval": 1}), "cpu")
    stats = _run(on, 2)
    assert stats[1]["ADA/p"].item() == 0 and -1 <= stats[1]["ADA/r_t"].item() <= 1
    assert_identical_networks(off, on)


def test_ada_trains_differently_and_resumes_exactly_with_p_in_the_checkpoint(tmp_path):
    cfg = tiny_config(**{"loss.ada_target": 0.6, "loss.ada_interval": 2, "loss.ada_kimg": 0.1})
    straight = confident_d(TrainState.create(cfg, "cpu"))
    ps = [s["ADA/p"].item() for s in _run(straight, 5)]
    assert ps[0] == 0 and 0 < ps[-1] < 1  # p moved
    first = confident_d(TrainState.create(cfg, "cpu"))
    _run(first, 3)  # mid-interval: the interval's sums are saved too
    path = save_checkpoint(first, tmp_path / "checkpoint.pt")
    resumed = load_train_state(path)
    for key, value in first.ada.state_dict().items():
        assert torch.equal(getattr(resumed.ada, key), value), key
    _run(resumed, 2)
    assert torch.equal(resumed.ada.p, straight.ada.p)
    assert_identical_networks(straight, resumed)
    off = confident_d(TrainState.create(tiny_config(), "cpu"))
    _run(off, 5)
    assert not torch.equal(off.nets.discriminator.main[0].weight,
                           straight.nets.discriminator.main[0].weight)


def test_micro_batches_see_the_augmentations_of_the_whole_batch():
    ada = {"loss.ada_target": 0.6, "loss.ada_interval": 1, "loss.ada_kimg": 0.1}
    whole = confident_d(TrainState.create(tiny_config(**ada), "cpu"))
    split = confident_d(TrainState.create(tiny_config(**ada, **{"data.batch_per_worker": 2}),
                                          "cpu"))
    for state in (whole, split):
        _run(state, 2)
    assert 0 < whole.ada.p.item() < 1 and torch.equal(whole.ada.p, split.ada.p)
    for name in TRAINED:
        for (key, pa), pb in zip(getattr(whole.nets, name).named_parameters(),
                                 getattr(split.nets, name).parameters()):
            # biases that feed an instance norm have a true gradient of 0: Adam turns float32
            # summation noise into updates of about lr (as in test_engine's accumulation test)
            no_effect = name == "generator" and key.endswith(".bias") and (
                "conv" in key or key == "from_rgb.bias")
            if not no_effect:
                assert torch.allclose(pa, pb, rtol=0, atol=1e-4), (name, key)


class _Devices(TorchDispatchMode):
    """Records the device of every tensor an op makes, except inside torch.optim (Adam keeps
    its step counters on the host by design: torch's, not a synchronisation of ours)."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.device.type not in self.devices:
                frames = traceback.extract_stack()
                if not any("/torch/optim/" in f.filename for f in frames):
                    self.devices.add(t.device.type)
        return out


def test_the_step_with_ada_is_device_clean_on_meta():
    cfg = tiny_config(**{"loss.ada_target": 0.6, "loss.ada_interval": 1})
    state = TrainState.create(cfg, "meta")
    batch = copy.deepcopy(random_batch(cfg)).to("meta")
    with _Devices() as seen:
        stats = train_step(state, batch)
    assert seen.devices == {"meta"}, seen.devices
    assert stats["ADA/p"].device.type == "meta" and state.ada.p.device.type == "meta"
