"""FAN landmark network: structure, wing.ckpt loading, face masks, and masks in the generator."""

from __future__ import annotations

import pytest
import torch

from stargan_ray.config import ConfigError
from stargan_ray.models import Generator
from stargan_ray.models.fan import (CHIN, EYES, FAN, NOSE, WingCheckpointError, face_masks,
                                    heatmap_peaks, load_fan)

from .helpers import randomized_fan, sparsify_heads


@pytest.fixture(scope="module")
def wing_ckpt(tmp_path_factory):
    fan = randomized_fan(0)
    probe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sparsify_heads(fan, probe)
    path = tmp_path_factory.mktemp("wing") / "wing.ckpt"
    torch.save({"state_dict": fan.state_dict(), "epoch": 3}, path)
    return path, fan.state_dict()


def test_parameter_count_names_and_frozen():
    fan = FAN()
    assert sum(p.numel() for p in fan.parameters()) == 6_333_603
    shapes = {k: tuple(v.shape) for k, v in fan.state_dict().items()}
    # the official names: CoordConv stem (3 image + 3 coordinate channels), the hourglass's own
    # CoordConv (256 + 3), its recursive blocks down to level 1, 98 landmarks + boundary head
    assert shapes["conv1.conv.weight"] == (64, 6, 7, 7)
    assert shapes["m0.coordconv.conv.weight"] == (256, 259, 1, 1)
    assert shapes["conv2.downsample.2.weight"] == (128, 64, 1, 1)
    assert shapes["conv4.conv3.weight"] == (64, 64, 3, 3)
    assert shapes["l0.weight"] == (99, 256, 1, 1)
    hourglass = {k.split(".")[1] for k in shapes if k.startswith("m0.") and "coordconv" not in k}
    assert hourglass == {f"b{i}_{lvl}" for i in (1, 2, 3) for lvl in (1, 2, 3, 4)} | {"b2_plus_1"}
    assert {k.split(".")[0] for k in shapes} == {
        "conv1", "bn1", "conv2", "conv3", "conv4", "m0", "top_m_0", "conv_last0", "bn_end0", "l0"}
    assert not any("coords" in k for k in shapes)  # coordinates are rebuilt, not stored
    assert len(shapes) == 336

    assert not any(p.requires_grad for p in fan.parameters())
    fan.train()  # a blanket nets.train() must not switch batch norms to batch statistics
    assert not any(m.training for m in fan.modules())


def test_wing_ckpt_layout_loads_every_tensor(wing_ckpt):
    path, expected = wing_ckpt
    fan = load_fan(path, "cpu")
    got = fan.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    assert not fan.training and not any(p.requires_grad for p in fan.parameters())


def test_wing_ckpt_key_mismatches_are_reported(wing_ckpt, tmp_path):
    _, state = wing_ckpt
    # BatchNorm's counter is never read in eval mode; older checkpoints may lack it
    no_counter = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": no_counter}, tmp_path / "old.ckpt")
    assert torch.equal(load_fan(tmp_path / "old.ckpt", "cpu").l0.weight, state["l0.weight"])

    missing = {k: v for k, v in state.items() if k != "m0.b3_2.conv1.weight"}
    torch.save({"state_dict": missing}, tmp_path / "missing.ckpt")
    with pytest.raises(WingCheckpointError, match=r"missing keys m0\.b3_2\.conv1\.weight"):
        load_fan(tmp_path / "missing.ckpt", "cpu")

    extra = {**state, "m1.b1_4.conv1.weight": torch.zeros(1)}
    torch.save({"state_dict": extra}, tmp_path / "extra.ckpt")
    with pytest.raises(WingCheckpointError, match=r"unexpected keys m1\.b1_4\.conv1\.weight"):
        load_fan(tmp_path / "extra.ckpt", "cpu")

    torch.save(state, tmp_path / "bare.ckpt")  # weights without the 'state_dict' wrapper
    with pytest.raises(WingCheckpointError, match="'state_dict'"):
        load_fan(tmp_path / "bare.ckpt", "cpu")

    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(WingCheckpointError, match="download.sh wing"):
        load_fan(tmp_path / "text.ckpt", "cpu")

    wrong = {**state, "l0.weight": torch.zeros(68, 256, 1, 1)}
    torch.save({"state_dict": wrong}, tmp_path / "wrong.ckpt")
    with pytest.raises(WingCheckpointError, match="l0.weight"):
        load_fan(tmp_path / "wrong.ckpt", "cpu")


def test_missing_wing_says_what_it_is_and_what_to_do(tmp_path):
    path = tmp_path / "expr" / "wing.ckpt"
    with pytest.raises(ConfigError) as info:
        load_fan(path, "cpu")
    message = str(info.value)
    assert isinstance(info.value, WingCheckpointError)
    assert str(path) in message and "\n" not in message
    assert "bash download.sh wing" in message and "expr/checkpoints/wing.ckpt" in message
    assert "--set model.w_hpf=0" in message


def test_masks_from_the_fan(wing_ckpt):
    torch.manual_seed(0)
    fan = load_fan(wing_ckpt[0], "cpu")
    x = torch.rand(2, 3, 96, 96) * 2 - 1  # any input size: the FAN resizes to 256
    mask0, mask1 = fan.get_heatmap(x)
    assert mask0.shape == mask1.shape == (2, 1, 256, 256)
    for m in (mask0, mask1):
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 and not m.requires_grad
    assert (mask1 <= mask0).all()  # mask1 sums a subset of mask0's non-negative maps
    for m in (mask0, mask1):  # soft masks, neither empty nor saturated
        assert 0.05 < ((m > 0) & (m < 1)).float().mean() and m.mean() < 0.95
    assert (mask1 < mask0).float().mean() > 0.05
    heatmaps = fan.get_heatmap(x, b_preprocess=False)
    assert heatmaps.shape == (2, 98, 64, 64)


def _blob(size: int, row: float, col: float, sigma: float = 3.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * sigma**2))


def test_mask_preprocessing_moves_and_selects_face_parts():
    heatmaps = torch.zeros(1, 98, 256, 256)
    heatmaps[0, CHIN[0] + 2] = _blob(256, 200, 60)  # a face-line point
    heatmaps[0, EYES[0]] = _blob(256, 100, 90)  # an eye point
    heatmaps[0, 2] = _blob(256, 40, 200)  # an outer face-line point, zeroed officially
    mask0, mask1 = face_masks(heatmaps)
    # face line: in the whole-face mask only
    assert mask0[0, 0, 200, 60] == pytest.approx(1, abs=1e-4) and mask1[0, 0, 200, 60] == 0
    # eyes: spread 8 and 24 pixels downwards, in both masks; the original spot is left empty
    for row in (108, 124):
        assert mask0[0, 0, row, 90] == pytest.approx(1, abs=1e-3)
        assert mask1[0, 0, row, 90] == pytest.approx(1, abs=1e-3)
    assert mask0[0, 0, 100, 90] == 0
    assert mask0[0, 0, 40, 200] == 0


def test_nan_heatmaps_give_zero_masks():
    heatmaps = torch.zeros(1, 98, 256, 256)
    heatmaps[0, EYES[0]] = _blob(256, 100, 90)
    clean0, clean1 = face_masks(heatmaps.clone())

    chin_nan = heatmaps.clone()
    chin_nan[0, CHIN[0] + 2, 5, 5] = float("nan")  # one NaN poisons its whole min-max normalisation
    mask0, mask1 = face_masks(chin_nan)
    assert torch.equal(mask0, torch.zeros_like(mask0))  # the face line is part of mask0 only
    assert torch.equal(mask1, clean1)

    nose_nan = heatmaps.clone()
    nose_nan[0, NOSE[0], 5, 5] = float("nan")
    mask0, mask1 = face_masks(nose_nan)  # the official left NaNs in mask1 here; we zero both
    assert mask0.abs().max() == 0 and mask1.abs().max() == 0

    inf = heatmaps.clone()
    inf[0, NOSE[0], 5, 5] = float("inf")
    mask0, _ = face_masks(inf)
    assert torch.isfinite(mask0).all() and mask0.max() <= 1
    assert clean0.max() > 0


def test_heatmap_peaks_quarter_pixel_rule():
    hm = torch.zeros(1, 3, 64, 64)
    hm[0, 0, 20, 10], hm[0, 0, 20, 11], hm[0, 0, 21, 10] = 1.0, 0.5, 0.3  # right, below larger
    hm[0, 1, 30, 40], hm[0, 1, 30, 39], hm[0, 1, 29, 40] = 1.0, 0.5, 0.3  # left, above larger
    hm[0, 2, 0, 5] = 1.0  # on the border: no quarter-pixel move
    peaks = heatmap_peaks(hm)[0]
    assert peaks.tolist() == [[10.75, 20.75], [40.25, 30.25], [5.5, 0.5]]


def test_generator_high_pass_path_uses_fan_masks(wing_ckpt):
    torch.manual_seed(0)
    fan = load_fan(wing_ckpt[0], "cpu")
    generator = Generator(img_size=128, style_dim=8, max_conv_dim=16, w_hpf=1, dim_in=4)
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    s = torch.randn(1, 8)
    masks = fan.get_heatmap(x)
    zeros = tuple(torch.zeros_like(m) for m in masks)

    out = generator(x, s, masks=masks)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with torch.no_grad():
        assert not torch.allclose(out, generator(x, s, masks=zeros), atol=1e-4)
        # the high-pass path only adds: empty masks leave the decoder as without masks
        assert torch.allclose(generator(x, s, masks=zeros), generator(x, s, masks=None))
        half = tuple(m * 0.5 for m in masks)
        assert not torch.allclose(out, generator(x, s, masks=half), atol=1e-4)

    out.mean().backward()
    assert generator.from_rgb.weight.grad is not None
    assert all(p.grad is None for p in fan.parameters())
