"""LPIPS diversity with the official StarGAN v2 protocol, through the ``lpips`` package.

The package's LPIPS (AlexNet trunk, v0.1 linear layers shipped in the package; these equal the
official metrics/lpips_weights.ckpt) is built without downloading anything (pnet_rand=True), and
the AlexNet trunk gets torchvision's weights from our own loader (weights.py).

Protocol: for each source image, the mean of LPIPS over all pairs of its outputs (45 pairs for 10
outputs), then the mean over sources. The official code runs AlexNet twice per pair (90 passes for
10 outputs); the distance only needs each output's normalised features, so we run AlexNet once per
output and compare features pairwise, which gives the same values.

Image size: LPIPS uses AlexNet's five ReLU outputs, which exist from 32 px on (smaller inputs make
its second max-pool fail). The official code cannot run below 64 px: its wrapper also runs the
last max-pool, whose output LPIPS never uses. At 32 px (the toy experiment) we report the value of
the same formula, with a warning (size_warning(), recorded in the JSON) that the last three maps
are 1x1 there, so it measures diversity but is not comparable with published LPIPS (256 px).
Plain torch: no Ray here.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from typing import Sequence

import torch
from torch import nn
from torchvision.models import alexnet as tv_alexnet

from .weights import FeatureWeights

MIN_SIZE = 32  # smaller inputs make AlexNet's pooling fail
COMPARABLE_SIZE = 64  # below this, conv3-5 maps are 1x1: not comparable with published values


def size_warning(img_size: int) -> str | None:
    if img_size < COMPARABLE_SIZE:
        return (f"LPIPS at {img_size} px: AlexNet's conv3-5 feature maps are 1x1 below "
                f"{COMPARABLE_SIZE} px (where the official code cannot run), so the value measures "
                "diversity but is not comparable with published LPIPS (256 px)")
    return None


class LPIPSNet(nn.Module):
    """lpips.LPIPS (AlexNet, v0.1) split into features() and distance() so features are reused."""

    def __init__(self, alexnet_features: nn.Sequential) -> None:
        super().__init__()
        import lpips  # heavy import, kept off the CLI's start

        # The throwaway random trunk must not move RNGs, nor warn about torchvision's old API.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True,
                                     verbose=False)
        trunk = self.model.net
        for slice_ in (trunk.slice1, trunk.slice2, trunk.slice3, trunk.slice4, trunk.slice5):
            for index, _ in list(slice_.named_children()):
                setattr(slice_, index, alexnet_features[int(index)])
        self._normalize = lpips.normalize_tensor

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x in [-1, 1] -> the five unit-normalised AlexNet feature maps."""
        outs = self.model.net(self.model.scaling_layer(x))
        return [self._normalize(out) for out in outs]

    def distance(self, fa: Sequence[torch.Tensor], fb: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-sample LPIPS (N,) between two lists of normalised features."""
        total = 0
        for lin, a, b in zip(self.model.lins, fa, fb):
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(x), self.features(y))


def build_lpips(weights: FeatureWeights, device: torch.device | str = "cpu") -> LPIPSNet:
    """LPIPS with torchvision's AlexNet weights from the file, or seeded random ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed)
        net = tv_alexnet(weights=None)
    if weights.kind != "random":
        net.load_state_dict(weights.state_dict("alexnet"))
    return LPIPSNet(net.features).eval().requires_grad_(False).to(device)


@functools.lru_cache(maxsize=2)
def cached_lpips(weights: FeatureWeights, device: str) -> LPIPSNet:
    return build_lpips(weights, device)


@torch.inference_mode()
def pairwise_per_source(outputs: Sequence[torch.Tensor], net: LPIPSNet) -> torch.Tensor:
    """(N,) for each source: the mean LPIPS over all pairs of its outputs (each N x 3 x H x W)."""
    if len(outputs) < 2:
        raise ValueError("LPIPS diversity needs at least 2 outputs per source")
    feats = [net.features(x) for x in outputs]
    pairs = [net.distance(feats[i], feats[j])
             for i, j in itertools.combinations(range(len(outputs)), 2)]
    return torch.stack(pairs).mean(0)


def diversity(outputs: Sequence[torch.Tensor], net: LPIPSNet | None = None) -> float:
    """One batch of sources' value, as the official calculate_lpips_given_images.

    outputs: the outputs for one batch of sources, each N x 3 x H x W in [-1, 1]. Without net, the
    pretrained LPIPS from the default locations is used.
    """
    if net is None:
        from ..config import EvalConfig

        device = str(outputs[0].device)
        net = cached_lpips(FeatureWeights.from_config(EvalConfig(), need=("alexnet",)), device)
    return pairwise_per_source(outputs, net).mean().item()


__all__ = ["LPIPSNet", "build_lpips", "cached_lpips", "pairwise_per_source", "diversity",
           "size_warning", "MIN_SIZE"]
