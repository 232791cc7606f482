"""The inference core: test transform, seeded styles, truncation, references, masks, pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from stargan_ray import grids, inference
from stargan_ray.checkpoint import save_checkpoint
from stargan_ray.engine import TrainState
from stargan_ray.inference import Translator
from stargan_ray.models import build_networks, ema_copy

from .helpers import tiny_config, tiny_translator

S = 32


@pytest.fixture(scope="module")
def translator() -> Translator:
    return tiny_translator()


def sources(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, S, S), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_test_transform_is_the_official_loader_for_any_size_and_aspect():
    rng = np.random.default_rng(0)
    official = transforms.Compose([transforms.Resize([S, S]), transforms.ToTensor(),
                                   transforms.Normalize([0.5] * 3, [0.5] * 3)])
    for h, w in ((50, 80), (97, 31), (S, S)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = inference.image_to_tensor(image, S)
        assert ours.shape == (3, S, S)
        torch.testing.assert_close(ours, official(image), rtol=0, atol=0)


def test_pixels_use_the_official_quantisation():
    x = torch.rand((2, 3, 5, 7)) * 2.4 - 1.2
    expected = ((x + 1) / 2).clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    np.testing.assert_array_equal(inference.to_pixels(x), expected.permute(0, 2, 3, 1).numpy())
    assert inference.to_pixels(x[:0]).shape == (0, 5, 7, 3)


def test_each_seed_has_its_own_code_and_style_whatever_else_is_asked(translator):
    codes = inference.latent_codes([5, 0, 9], 4)
    alone = torch.randn((4,), generator=torch.Generator().manual_seed(9))
    assert torch.equal(codes[2], alone) and not torch.equal(codes[0], codes[1])
    many = translator.latent_styles(1, [5, 0, 9, 3], psi=0.7)
    assert torch.equal(many[2], translator.latent_styles(1, [9], psi=0.7)[0])
    assert not torch.equal(many[2], translator.latent_styles(2, [9], psi=0.7)[0])


def test_psi_pulls_styles_toward_the_domain_mean_style(translator):
    g = torch.Generator().manual_seed(inference.MEAN_STYLE_SEED)
    mean = grids.mean_style(translator.nets, 2, translator.cfg.model.latent_dim, "cpu", g)
    torch.testing.assert_close(translator.mean_style(2), mean, rtol=0, atol=0)
    free = translator.latent_styles(2, [0, 1], psi=1.0)
    at_mean = translator.latent_styles(2, [0, 1], psi=0.0)
    torch.testing.assert_close(at_mean, mean.expand(2, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(translator.latent_styles(2, [0, 1], psi=0.5),
                               (free + mean) / 2, rtol=0, atol=1e-6)
    assert not torch.allclose(free[0], free[1])


def test_translate_is_every_source_in_every_style_and_batch_size_only_rounds(translator):
    x = sources(3)
    styles = translator.latent_styles(0, [0, 1])
    out = translator.translate(x, styles)
    assert out.shape == (3, 2, 3, S, S)
    with torch.no_grad():
        eager = translator.nets.generator(x[2:3], styles[1:2])[0]
    torch.testing.assert_close(out[2, 1], eager, rtol=0, atol=1e-4)
    one_by_one = Translator(translator.nets, translator.cfg, translator.device, batch_size=1)
    other = one_by_one.translate(x[2:3], styles[1:2])[0, 0]
    # float32 conv kernels sum in a batch-dependent order: close, and the pixels within a level
    torch.testing.assert_close(other, out[2, 1], rtol=0, atol=1e-4)
    diff = inference.to_pixels(other[None]).astype(int) - inference.to_pixels(out[2, 1:2])
    assert np.abs(diff).max() <= 1


def test_reference_styles_come_from_the_style_encoder(translator):
    x_ref = sources(2, seed=3)
    s = translator.reference_styles(x_ref, 1)
    with torch.no_grad():
        eager = translator.nets.style_encoder(x_ref, torch.tensor([1, 1]))
    torch.testing.assert_close(s, eager, rtol=0, atol=1e-5)
    assert torch.equal(translator.reference_styles(x_ref[1:], 1)[0], s[1])
    assert not torch.allclose(s[0], s[1])


def test_high_pass_models_translate_with_their_fan_masks():
    translator = tiny_translator(w_hpf=1.0, batch_size=1)  # masks repeated over 2 batches
    x = sources(1)
    styles = translator.latent_styles(1, [0, 1])
    out = translator.translate(x, styles)[0]
    nets = translator.nets
    with torch.no_grad():  # the FAN runs at 256 px: one source keeps this test short
        masks = nets.masks(x)
        masked = nets.generator(x.expand(2, -1, -1, -1), styles,
                                masks=tuple(m.expand(2, -1, -1, -1) for m in masks))
        unmasked = nets.generator(x.expand(2, -1, -1, -1), styles)
    torch.testing.assert_close(out, masked, rtol=0, atol=1e-4)
    assert not torch.allclose(out, unmasked, atol=1e-3)
    nets_without = ema_copy(build_networks(translator.cfg.model))
    with pytest.raises(ValueError, match="no FAN"):
        Translator(nets_without, translator.cfg, torch.device("cpu")).translate(x, styles)


def test_domain_names_come_from_the_training_data(tmp_path):
    assert inference.domain_names(tiny_config(**{"data.train_dir": "synthetic"})) == \
        ["circle", "square"]
    for name in ("zebra", "cat"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "1.png")
    assert inference.domain_names(tiny_config(**{"data.train_dir": str(tmp_path / "train")})) \
        == ["cat", "zebra"]
    assert inference.domain_names(tiny_config(**{"data.train_dir": str(tmp_path / "no")})) is None


def test_a_checkpoint_loads_its_ema_networks(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(1)
    state = TrainState.create(cfg, "cpu")
    save_checkpoint(state, tmp_path / "c.pt")
    translator = Translator.from_checkpoint(tmp_path / "c.pt")
    assert translator.cfg == cfg and translator.img_size == S
    for a, b in zip(translator.nets.generator.state_dict().values(),
                    state.nets_ema.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert not translator.nets.generator.training
