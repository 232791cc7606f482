"""The toy model learns to translate: a few hundred train_steps on the synthetic data.

Each synthetic domain has its own hue (red circles, green squares, blue triangles), which the
generator learns first. So the test asks what a person looking at the grid asks: do the outputs
for target domain y take y's colour? It measures that on every val image, before and after
training, with a colour reading that is first checked on the real images. The style
reconstruction must also fall (generator and style encoder cooperate on it). Not asserted: the
discriminator's loss, which rose on this easy data as the generator caught up (0.48 -> 1.08), and
the cycle loss, which plateaus early.
"""

import colorsys
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stargan_ray.data import synthetic
from stargan_ray.data.stream import local_batches
from stargan_ray.engine import TrainState, train_step
from stargan_ray.models import Networks

from .helpers import stat_floats, tiny_config

STEPS = 300


def _mean(window: list[dict[str, float]], *keys: str) -> float:
    return sum(h[k] for h in window for k in keys) / len(window)


def _domain_by_colour(x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The domain whose hue is nearest the colour of each image's most saturated pixels."""
    rgb = ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).flatten(1, 2)  # (N, pixels, 3)
    brightest = rgb.max(-1).values
    saturation = (brightest - rgb.min(-1).values) / brightest.clamp_min(1e-3)
    shape_pixels = saturation >= saturation.quantile(0.9, dim=1, keepdim=True)  # not the pale bg
    chroma = rgb - rgb.mean(-1, keepdim=True)
    colour = (chroma * shape_pixels[..., None]).sum(1)
    hues = torch.tensor([colorsys.hsv_to_rgb(synthetic.HUES[n], 1.0, 1.0) for n in names])
    hues = hues - hues.mean(-1, keepdim=True)
    return (colour @ (hues / hues.norm(dim=1, keepdim=True)).T).argmax(1)


@torch.no_grad()
def _share_in_target_colour(nets: Networks, x_src: torch.Tensor, names: list[str],
                            latent_dim: int) -> float:
    g = torch.Generator().manual_seed(1)
    hits = 0
    for y in range(len(names)):
        y_trg = torch.full((len(x_src),), y, dtype=torch.long)
        s_trg = nets.mapping_network(torch.randn(len(x_src), latent_dim, generator=g), y_trg)
        hits += int((_domain_by_colour(nets.generator(x_src, s_trg), names) == y).sum())
    return hits / (len(names) * len(x_src))


def test_three_hundred_steps_teach_the_generator_each_domains_colour():
    torch.manual_seed(0)
    cfg = tiny_config(**{"model.dim_in": 8, "model.max_conv_dim": 32, "data.batch_size": 4,
                         "data.train_dir": "synthetic", "data.val_dir": "synthetic",
                         "model.num_domains": 3})
    names = synthetic.domain_names(3)
    _, val_dir = synthetic.resolve_data_dirs(cfg)
    paths = sorted(Path(val_dir).rglob("*.png"))
    x_src = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32))
                         for p in paths]).permute(0, 3, 1, 2) / 127.5 - 1
    y_src = torch.tensor([names.index(p.parent.name) for p in paths])
    assert (_domain_by_colour(x_src, names) == y_src).float().mean() >= 0.95  # the reading works

    state = TrainState.create(cfg, "cpu")
    before = _share_in_target_colour(state.nets_ema, x_src, names, cfg.model.latent_dim)
    batches = local_batches(cfg)
    history = [stat_floats(train_step(state, next(batches))) for _ in range(STEPS)]
    after = _share_in_target_colour(state.nets_ema, x_src, names, cfg.model.latent_dim)
    # measured with seeds 0, 1, 2 (this test uses 0): 0.50, 0.33, 0.33 before; 0.96-0.99 after
    assert after >= 0.75 and after >= before + 0.3, (before, after)

    first, last = history[:20], history[-20:]
    sty = ("G/latent_sty", "G/ref_sty")  # measured: falls to x0.21-x0.35
    assert _mean(last, *sty) < 0.7 * _mean(first, *sty), (_mean(first, *sty), _mean(last, *sty))
    assert all(math.isfinite(v) for h in history for v in h.values())
