"""Sample grids: sizes, official layout, truncation, saved pixels, the animation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from stargan_ray import grids, sample
from stargan_ray.data.synthetic import generate

from .helpers import seeded_ema_networks, tiny_config

S = 32  # tiny_config image size


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config(**{"model.num_domains": 3, "eval.num_outs_per_domain": 2})
    return cfg, seeded_ema_networks(cfg)


def _cell(grid: torch.Tensor, row: int, col: int) -> torch.Tensor:
    return grid[:, row * S:(row + 1) * S, col * S:(col + 1) * S]


def test_reference_grid_has_sources_on_top_and_references_in_the_first_column(model):
    _, nets = model
    g = torch.Generator().manual_seed(0)
    x_src = torch.rand((3, 3, S, S), generator=g) * 2 - 1
    x_ref = torch.rand((2, 3, S, S), generator=g) * 2 - 1
    y_ref = torch.tensor([1, 2])
    grid = grids.reference_grid(nets, x_src, x_ref, y_ref)
    assert grid.shape == (3, 3 * S, 4 * S)  # (M + 1) rows, (N + 1) columns
    assert torch.equal(_cell(grid, 0, 0), torch.ones(3, S, S))  # white corner
    for j in range(3):
        assert torch.equal(_cell(grid, 0, j + 1), x_src[j])
    with torch.no_grad():
        for i in range(2):
            assert torch.equal(_cell(grid, i + 1, 0), x_ref[i])
            s_ref = nets.style_encoder(x_ref[i:i + 1], y_ref[i:i + 1])
            for j in range(3):
                expected = nets.generator(x_src[j:j + 1], s_ref)[0]
                torch.testing.assert_close(_cell(grid, i + 1, j + 1), expected, rtol=1e-5,
                                           atol=1e-5)


def test_latent_grid_rows_and_truncation_to_the_mean_style(model):
    cfg, nets = model
    x_src = torch.rand((2, 3, S, S)) * 2 - 1
    g = torch.Generator().manual_seed(1)
    domains = [0, 1, 2]
    s_avg = {y: grids.mean_style(nets, y, cfg.model.latent_dim, "cpu", g, draws=500)
             for y in domains}
    z = torch.randn((2, cfg.model.latent_dim), generator=g)
    grid = grids.latent_grid(nets, x_src, domains, z, 1.0, s_avg)
    assert grid.shape == (3, (1 + 3 * 2) * S, 2 * S)  # sources + one row per (domain, z)
    assert torch.equal(_cell(grid, 0, 1), x_src[1])
    truncated = grids.latent_grid(nets, x_src, domains, z, 0.0, s_avg)  # psi 0: the mean style
    with torch.no_grad():
        at_mean = nets.generator(x_src, s_avg[2].expand(2, -1))
    for row in (5, 6):  # domain 2, both codes
        for col in range(2):
            torch.testing.assert_close(_cell(truncated, row, col), at_mean[col], rtol=1e-5,
                                       atol=1e-5)
    assert not torch.allclose(_cell(grid, 5, 0), _cell(grid, 6, 0))  # psi 1: codes differ


def test_saved_grid_pixels_equal_the_official_save_image(tmp_path):
    grid = torch.rand((3, 2 * S, 3 * S)) * 2.2 - 1.1
    grids.save_grid(grid, tmp_path / "ours.png")
    save_image(((grid + 1) / 2).clamp_(0, 1), tmp_path / "official.png", nrow=1, padding=0)
    with Image.open(tmp_path / "ours.png") as ours, Image.open(tmp_path / "official.png") as ref:
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_sample_writes_grids_and_an_animation_from_folders(model, tmp_path):
    cfg, nets = model
    _, val = generate(tmp_path / "data", img_size=S, num_domains=3, n_train=1, n_val=2)
    paths = sample.sample(nets, cfg, val, val, tmp_path / "out",
                          opts=sample.SampleOptions(num_src=4, num_ref=3, interp_styles=2))
    names = [p.name for p in paths]
    assert names == ["reference.jpg", "latent_psi_0.5.jpg", "latent_psi_0.7.jpg",
                     "latent_psi_1.0.jpg", "interpolation.gif"]
    with Image.open(tmp_path / "out" / "reference.jpg") as image:
        assert image.size == (5 * S, 4 * S)  # width (N + 1), height (M + 1)
    with Image.open(tmp_path / "out" / "latent_psi_0.5.jpg") as image:
        assert image.size == (4 * S, (1 + 3 * 2) * S)
    with Image.open(tmp_path / "out" / "interpolation.gif") as gif:
        assert gif.size == (4 * S, 2 * S)  # sources above outputs
        total_ms = 0
        for k in range(gif.n_frames):  # Pillow merges repeated frames and adds their durations
            gif.seek(k)
            total_ms += gif.info["duration"]
    assert total_ms == 3 * 1 * len(grids.ease()) * 70  # domains x transitions x steps x 70 ms


def test_sources_are_taken_round_robin_over_domains(tmp_path):
    _, val = generate(tmp_path, img_size=S, num_domains=2, n_train=1, n_val=3)
    x, y, domains = sample.load_folder(val, S, limit=5)
    assert domains == ["circle", "square"] and y.tolist() == [0, 1, 0, 1, 0]
    assert x.shape == (5, 3, S, S) and x.min() >= -1 and x.max() <= 1


def test_debug_images_writes_the_official_training_grids(model, tmp_path):
    cfg, nets = model
    g = torch.Generator().manual_seed(2)
    x_src, x_ref = (torch.rand((2, 3, S, S), generator=g) * 2 - 1 for _ in range(2))
    y_src, y_ref = torch.tensor([0, 1]), torch.tensor([2, 0])
    paths = sample.debug_images(nets, cfg, x_src, y_src, x_ref, y_ref, step=300, out_dir=tmp_path)
    sizes = {p.name: Image.open(p).size for p in paths}
    assert sizes == {
        "000300_cycle_consistency.jpg": (2 * S, 4 * S),
        "000300_latent_psi_0.5.jpg": (2 * S, (1 + 3 * 2) * S),
        "000300_latent_psi_0.7.jpg": (2 * S, (1 + 3 * 2) * S),
        "000300_latent_psi_1.0.jpg": (2 * S, (1 + 3 * 2) * S),
        "000300_reference.jpg": (3 * S, 3 * S),
    }
