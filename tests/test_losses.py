import math

import pytest
import torch

from stargan_ray import schedules
from stargan_ray.config import load_experiment
from stargan_ray.losses import adv_loss, cycle_loss, diversity_loss, r1_reg, style_loss


def test_adversarial_loss_by_hand():
    logits = torch.tensor([2.0, -1.0, 0.5])
    sig = lambda v: 1 / (1 + math.exp(-v))
    real = -sum(math.log(sig(v)) for v in logits.tolist()) / 3
    fake = -sum(math.log(1 - sig(v)) for v in logits.tolist()) / 3
    assert adv_loss(logits, 1).item() == pytest.approx(real, rel=1e-6)
    assert adv_loss(logits, 0).item() == pytest.approx(fake, rel=1e-6)


def test_l1_losses_by_hand():
    a = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.5, 2.0]])
    expected = (1 + 3 + 0 + 2) / 4
    assert style_loss(a, b).item() == pytest.approx(expected)
    assert cycle_loss(a, b).item() == pytest.approx(expected)
    x = a.clone().requires_grad_(True)
    x2 = b.clone().requires_grad_(True)
    diversity_loss(x, x2).backward()
    assert x2.grad is None  # the second output is a detached target
    assert x.grad is not None


def test_r1_matches_finite_differences():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    net = net.double()
    reg = r1_reg(net(x).squeeze(1), x)
    # 0.5 * mean_i ||dD(x_i)/dx_i||^2 with central differences
    eps, total = 1e-6, 0.0
    with torch.no_grad():
        for i in range(4):
            grad = []
            for j in range(5):
                e = torch.zeros(5, dtype=torch.float64)
                e[j] = eps
                grad.append((net(x[i] + e) - net(x[i] - e)).item() / (2 * eps))
            total += sum(g * g for g in grad)
    assert reg.item() == pytest.approx(0.5 * total / 4, rel=1e-6)
    # the penalty is differentiable with respect to the network (double backward)
    reg.backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_lambda_ds_linear_is_the_official_decay():
    loss = load_experiment("afhq").loss  # lambda_ds 2, ds_iter 100k
    assert schedules.lambda_ds_at(loss, 0) == 2.0
    assert schedules.lambda_ds_at(loss, 25_000) == pytest.approx(1.5)
    assert schedules.lambda_ds_at(loss, 100_000) == 0.0
    assert schedules.lambda_ds_at(loss, 150_000) == 0.0
    # the official loop subtracts l0 / ds_iter after every iteration
    official, l0 = 2.0, 2.0
    for step in range(1000):
        assert schedules.lambda_ds_at(loss, step) == pytest.approx(official, abs=1e-9)
        official -= l0 / loss.ds_iter


@pytest.mark.parametrize("kind", ["cosine", "step", "none"])
def test_other_decay_kinds(kind):
    loss = load_experiment("celeba_hq", [f"loss.ds_decay={kind}", "loss.ds_iter=1000",
                                         "loss.ds_step_every=250"]).loss
    values = [schedules.lambda_ds_at(loss, t) for t in range(0, 1200, 50)]
    assert values[0] == 1.0
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases
    if kind == "none":
        assert set(values) == {1.0}
    else:
        assert values[-1] == 0.0
    if kind == "step":
        assert schedules.lambda_ds_at(loss, 250) == 0.5 and schedules.lambda_ds_at(loss, 249) == 1.0
    if kind == "cosine":
        assert schedules.lambda_ds_at(loss, 500) == pytest.approx(0.5)


def test_lazy_r1_keeps_the_average_weight():
    loss = load_experiment("toy", ["loss.r1_interval=4", "loss.lambda_reg=2"]).loss
    weights = [schedules.r1_weight_at(loss, t) for t in range(16)]
    assert weights[0] == 8.0 and weights[1] == 0.0 and weights[4] == 8.0
    assert sum(weights) / len(weights) == pytest.approx(2.0)
    official = load_experiment("toy").loss
    assert {schedules.r1_weight_at(official, t) for t in range(5)} == {official.lambda_reg}
