"""LPIPS: the distance against a hand computation, the official pairwise protocol, weights."""

from __future__ import annotations

import itertools
import os

import lpips as lpips_package
import pytest
import torch
from torchvision.models import alexnet

from stargan_ray.config import EvalConfig
from stargan_ray.metrics import lpips
from stargan_ray.metrics.weights import FeatureWeights, file_name

CHANNELS = (64, 192, 384, 256, 256)


@pytest.fixture(scope="module")
def net() -> lpips.LPIPSNet:
    return lpips.build_lpips(FeatureWeights("random"))


def test_linear_layers_are_the_v01_weights_shipped_in_the_package(net):
    shipped = torch.load(os.path.join(os.path.dirname(lpips_package.__file__), "weights", "v0.1",
                                      "alex.pth"), map_location="cpu", weights_only=True)
    for k, lin in enumerate(net.model.lins):
        torch.testing.assert_close(lin.model[1].weight, shipped[f"lin{k}.model.1.weight"],
                                   rtol=0, atol=0)


def test_distance_on_fixed_features_matches_a_hand_computation(net):
    g = torch.Generator().manual_seed(0)

    def unit(c: int) -> torch.Tensor:
        f = torch.randn((2, c, 3, 2), generator=g).relu()
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)

    fa, fb = [unit(c) for c in CHANNELS], [unit(c) for c in CHANNELS]
    expected = torch.zeros(2)
    for k, (a, b) in enumerate(zip(fa, fb)):
        w = net.model.lins[k].model[1].weight.view(-1)  # (C,)
        for n in range(2):  # per sample: sum_c w_c (a - b)^2, averaged over the 3x2 positions
            per_position = [sum(w[c] * (a[n, c, i, j] - b[n, c, i, j]) ** 2 for c in range(len(w)))
                            for i in range(3) for j in range(2)]
            expected[n] += sum(per_position) / len(per_position)
    torch.testing.assert_close(net.distance(fa, fb), expected, rtol=1e-5, atol=0)


def test_features_are_unit_vectors_per_position(net):
    x = torch.rand((2, 3, 64, 64)) * 2 - 1
    for f in net.features(x):
        norms = f.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips builds its trunk with the old API
def test_diversity_equals_the_official_mean_over_pairs(net):
    """The official function: mean over pairs of the batch-mean LPIPS (lpips.LPIPS forward)."""
    reference = lpips_package.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    reference.net.load_state_dict(net.model.net.state_dict())
    g = torch.Generator().manual_seed(1)
    outputs = [torch.rand((3, 3, 64, 64), generator=g) * 2 - 1 for _ in range(4)]
    with torch.no_grad():
        pairs = [reference(outputs[i], outputs[j]).mean()
                 for i, j in itertools.combinations(range(4), 2)]
    official = torch.stack(pairs).mean().item()
    assert lpips.diversity(outputs, net) == pytest.approx(official, rel=1e-6)
    per_source = lpips.pairwise_per_source(outputs, net)
    assert per_source.shape == (3,)
    assert per_source.mean().item() == pytest.approx(official, rel=1e-6)


def test_alexnet_weights_are_loaded_from_the_configured_file(tmp_path):
    torch.manual_seed(5)
    state = alexnet(weights=None).state_dict()
    path = tmp_path / file_name("alexnet")
    torch.save(state, path)
    weights = FeatureWeights.from_config(EvalConfig(alexnet_path=str(path)), need=("alexnet",))
    net = lpips.build_lpips(weights)
    trunk = net.model.net
    for index, slice_ in ((0, trunk.slice1), (3, trunk.slice2), (6, trunk.slice3),
                          (8, trunk.slice4), (10, trunk.slice5)):
        torch.testing.assert_close(getattr(slice_, str(index)).weight,
                                   state[f"features.{index}.weight"], rtol=0, atol=0)


def test_small_images_run_at_32_px_with_a_warning_and_fail_below(net):
    outputs = [torch.rand((2, 3, 32, 32)) * 2 - 1 for _ in range(3)]
    values = lpips.pairwise_per_source(outputs, net)
    assert torch.isfinite(values).all() and (values > 0).all()
    assert "not comparable" in lpips.size_warning(32)
    assert lpips.size_warning(64) is None
    with pytest.raises(RuntimeError):  # AlexNet's pooling: the reason MIN_SIZE is 32
        lpips.pairwise_per_source([torch.zeros((1, 3, 16, 16))] * 2, net)
