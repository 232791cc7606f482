"""FID math (closed forms, moment sums, safeguards), the official image pipeline, weights."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from stargan_ray.cli import fid as fid_cli
from stargan_ray.config import EvalConfig
from stargan_ray.metrics import fid
from stargan_ray.metrics.weights import FeatureWeights, MissingWeightsError, file_name


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    d = 6
    q = _rotation(d, 1)
    a, b = rng.uniform(0.5, 3.0, d), rng.uniform(0.1, 2.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    cov1, cov2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    for method in ("sqrtm", "eigh", "auto"):
        result = fid.frechet_distance(mu1, cov1, mu2, cov2, method=method)
        assert result.value == pytest.approx(expected, rel=1e-10)
        assert result.warnings == []


def test_frechet_distance_matches_closed_form_against_scaled_identity():
    rng = np.random.default_rng(2)
    d = 5
    m = rng.standard_normal((d, d))
    cov1 = m @ m.T + 0.1 * np.eye(d)  # a general covariance
    c = 1.7
    lam = np.linalg.eigvalsh(cov1)
    expected = np.sum(lam + c - 2 * np.sqrt(c * lam))  # equal means
    for method in ("sqrtm", "eigh", "auto"):
        assert fid.frechet_distance(np.zeros(d), cov1, np.zeros(d), c * np.eye(d),
                                    method=method).value == pytest.approx(expected, rel=1e-10)


def test_eigh_trace_equals_sqrtm_for_few_samples_in_many_dimensions():
    # the fid_quick case: fewer fake images than feature dimensions, so cov2 is singular
    rng = np.random.default_rng(3)
    d = 256
    real = rng.standard_normal((2000, d)) @ rng.standard_normal((d, d)) * 0.1
    fake = rng.standard_normal((40, d)) @ rng.standard_normal((d, d)) * 0.1 + 0.3
    a, b = fid.FeatureMoments.of(real), fid.FeatureMoments.of(fake)
    official = fid.fid_from_moments(a, b, method="sqrtm").value
    fast = fid.fid_from_moments(a, b, method="eigh").value
    assert fast == pytest.approx(official, rel=1e-6)  # measured 1.1e-8
    assert b.rows is not None and len(b.rows) == 40  # auto takes the 40 x 40 problem
    assert fid.fid_from_moments(a, b).value == pytest.approx(official, rel=1e-6)
    with pytest.raises(ValueError, match="method"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_moment_sums_of_shards_add_up_to_the_whole():
    x = torch.randn(101, 7, dtype=torch.float64) * 3 + 1
    whole = fid.FeatureMoments.of(x)
    parts = [fid.FeatureMoments.of(x[s]) for s in (slice(0, 13), slice(13, 50), slice(50, 101))]
    combined = parts[0] + parts[1] + parts[2]
    assert combined.n == whole.n == 101
    torch.testing.assert_close(combined.sum, whole.sum, rtol=1e-12, atol=0)
    torch.testing.assert_close(combined.outer, whole.outer, rtol=1e-12, atol=0)
    np.testing.assert_allclose(combined.mean(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(combined.cov(), np.cov(x.numpy(), rowvar=False), rtol=1e-10)


def test_fid_of_a_set_with_itself_is_close_to_zero():
    x = torch.randn(300, 16) * torch.linspace(0.2, 2.0, 16) + 0.5
    moments = fid.FeatureMoments.of(x)
    shuffled = fid.FeatureMoments.of(x[torch.randperm(300)])
    result = fid.fid_from_moments(moments, shuffled)
    assert abs(result.value) < 1e-8 * np.trace(moments.cov())
    other = fid.fid_from_moments(moments, fid.FeatureMoments.of(x + 0.1))
    assert other.value == pytest.approx(16 * 0.01, rel=1e-6)  # a pure mean shift


def test_saved_moments_round_trip(tmp_path):
    moments = fid.FeatureMoments.of(torch.randn(20, 4))
    moments.save(tmp_path / "m.npz")
    loaded = fid.FeatureMoments.load(tmp_path / "m.npz")
    assert loaded.n == 20
    torch.testing.assert_close(loaded.outer, moments.outer, rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left


def test_few_images_imaginary_part_and_non_finite_sqrtm_become_warnings():
    few = fid.fid_from_moments(fid.FeatureMoments.of(torch.randn(5, 8)),
                               fid.FeatureMoments.of(torch.randn(6, 8)))
    assert "5 images is fewer than the 8 feature dimensions" in few.warnings[0]
    # sqrtm(-I) = iI: not a covariance, but it exercises the imaginary-part path
    mu = np.array([1.0, 2.0])
    imag = fid.frechet_distance(mu, np.eye(2), np.zeros(2), -np.eye(2), method="sqrtm")
    assert imag.value == pytest.approx(5.0)  # ||mu||^2 + tr(I) + tr(-I) - 2 Re tr(iI)
    assert any("imaginary" in w for w in imag.warnings)
    # a nilpotent product has no square root: scipy returns inf, the retry adds eps
    nil = fid.frechet_distance(np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), np.zeros(2),
                               np.eye(2), method="sqrtm")
    assert np.isfinite(nil.value)
    assert any("not finite" in w for w in nil.warnings)


def test_in_memory_quantisation_equals_the_official_png_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 32, 32), generator=g) * 2.4 - 1.2  # beyond [-1, 1] too: clamped
    for k in range(2):  # the official code: denormalize, then torchvision's save_image
        save_image(((x[k] + 1) / 2).clamp_(0, 1), tmp_path / f"{k}.png", nrow=1, padding=0)
    pixels = fid.quantize(x)
    for k in range(2):
        with Image.open(tmp_path / f"{k}.png") as image:
            np.testing.assert_array_equal(pixels[k], np.asarray(image.convert("RGB")))
    from_disk = torch.stack([fid.load_for_inception(tmp_path / f"{k}.png", 32) for k in range(2)])
    torch.testing.assert_close(fid.uint8_to_inception(pixels, 32), from_disk, rtol=0, atol=0)
    assert from_disk.shape == (2, 3, 299, 299)


def test_cache_key_changes_with_content_and_settings(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    key = fid.stats_key([path], 32, "w1")
    assert fid.stats_key([path], 32, "w1") == key
    assert fid.stats_key([path], 64, "w1") != key
    assert fid.stats_key([path], 32, "w2") != key
    Image.new("RGB", (8, 8), (10, 20, 31)).save(path)
    os.utime(path, ns=(1, 1))
    assert fid.stats_key([path], 32, "w1") != key


@pytest.mark.parametrize("kind", ["inception", "alexnet"])
def test_missing_weights_error_names_file_size_and_place(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeightsError) as err:
        FeatureWeights.from_config(EvalConfig(), need=(kind,), download=False)
    message = str(err.value)
    target = tmp_path / "torch_home" / "hub" / "checkpoints" / file_name(kind)
    assert file_name(kind) in message and "MiB" in message and str(target) in message
    assert f"eval.{kind}_path" in message and "\n" not in message
    with pytest.raises(MissingWeightsError, match="is not a file"):
        FeatureWeights.from_config(EvalConfig(**{f"{kind}_path": str(tmp_path / "nope.pth")}),
                                   need=(kind,))


def test_pretrained_weights_load_from_the_torch_home_cache(tmp_path, monkeypatch):
    from torchvision.models.inception import Inception3

    torch.manual_seed(3)
    state = Inception3(aux_logits=True, init_weights=False).state_dict()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / file_name("inception"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = FeatureWeights.from_config(EvalConfig(), need=("inception",), download=False)
    assert weights.kind == "pretrained"
    assert weights.id("inception").startswith(file_name("inception"))
    net = fid.build_inception(weights)
    torch.testing.assert_close(net.blocks[0].conv.weight, state["Conv2d_1a_3x3.conv.weight"])
    torch.testing.assert_close(net.blocks[-2].branch_pool.bn.running_var,
                               state["Mixed_7c.branch_pool.bn.running_var"])


def test_random_weights_give_bounded_features_and_say_random():
    weights = FeatureWeights.from_config(EvalConfig(feature_weights="random"))
    assert weights.id("inception").startswith("random")
    net = fid.cached_inception(weights, "cpu")
    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand((2, 3, 8, 8), generator=g), size=32,
                                             mode="bilinear") * 2 - 1
    noise = torch.rand((2, 3, 32, 32), generator=g) * 2 - 1
    with torch.inference_mode():
        features = net(fid.uint8_to_inception(fid.quantize(torch.cat([smooth, noise])), 32))
    assert features.shape == (4, fid.FEATURE_DIM)
    # uncalibrated random Inception gives features ~1e11 (FID ~1e22)
    assert torch.isfinite(features).all() and features.abs().max() < 100


def test_fid_command_on_a_folder_with_itself_prints_about_zero(tmp_path, capsys):
    from stargan_ray.data.synthetic import generate

    train, _ = generate(tmp_path, img_size=32, num_domains=2, n_train=5, n_val=1)
    parser = argparse.ArgumentParser()
    fid_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["fid", str(train / "circle"), str(train / "circle"), "--img-size",
                              "32", "--feature-weights", "random", "--device", "cpu"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    value = float(captured.out.strip().splitlines()[-1])
    files = fid.list_images(train / "circle")
    moments = fid.features_of_files(files, 32, fid.cached_inception(
        FeatureWeights("random"), "cpu"), 8, "cpu")
    assert abs(value) < 1e-5 * np.trace(moments.cov())  # the scale of the distance
    assert "fewer than the 2048 feature dimensions" in captured.err


def _smooth_and_noisy_inputs(seed: int, n: int) -> torch.Tensor:
    """Inception inputs from quantised 32 px images: half smooth colour fields, half noise."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand((n // 2, 3, 4, 4), generator=g), size=32,
                                             mode="bilinear") * 2 - 1
    noise = torch.rand((n - n // 2, 3, 32, 32), generator=g) * 2 - 1
    return fid.uint8_to_inception(fid.quantize(torch.cat([smooth, noise])), 32)


def test_folded_inception_gives_the_same_features_and_fid_as_torchvisions_modules():
    weights = FeatureWeights("random")
    plain = fid.build_inception(weights)
    folded = fid.build_inception(weights, folded=True)
    assert folded.folded and not plain.folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    real, fake = _smooth_and_noisy_inputs(0, 12), _smooth_and_noisy_inputs(1, 12)
    with torch.inference_mode():
        features = {name: (net(real), net(fake)) for name, net in
                    (("plain", plain), ("folded", folded))}
    for a, b in zip(features["plain"], features["folded"]):
        # float32 rounding of a reordered sum, relative to the features' scale
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    values = {name: fid.fid_from_moments(fid.FeatureMoments.of(r), fid.FeatureMoments.of(f)).value
              for name, (r, f) in features.items()}
    assert values["folded"] == pytest.approx(values["plain"], rel=1e-5)


def test_a_folded_inception_is_rebuilt_from_its_state_dict_as_a_ray_worker_does():
    folded = fid.build_inception(FeatureWeights("random"), folded=True)
    copy = fid.inception_from_state(folded.state_dict(), folded=True)
    x = _smooth_and_noisy_inputs(2, 4)
    with torch.inference_mode():
        torch.testing.assert_close(copy(x), folded(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Unexpected key|Missing key"):
        fid.inception_from_state(folded.state_dict(), folded=False)


def test_the_real_statistics_cache_tells_folded_from_plain_features():
    weights = FeatureWeights("random")
    assert fid.inception_id(weights, True) != fid.inception_id(weights, False)
    assert fid.inception_id(weights, False) == weights.id("inception")


def test_sizes_are_bounded_where_parsed_and_batches_checked_against_free_memory(tmp_path,
                                                                                capsys):
    from stargan_ray.cli import main
    from stargan_ray.data.synthetic import generate
    from stargan_ray.metrics import memory

    train, _ = generate(tmp_path, img_size=32, num_domains=2, n_train=3, n_val=1)
    folder = str(train / "circle")
    with pytest.raises(SystemExit) as exit_info:  # an argparse type: usage and one error line
        main(["fid", folder, folder, "--img-size", "100000", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--img-size" in err and "<= 2048" in err and "100000" in err
    have = memory.available_bytes("cpu")
    assert 0 < have <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    batch = 2 * have // memory.inception_bytes(1)  # twice what the RAM holds (it varies)
    assert main(["fid", folder, folder, "--batch-size", str(batch), "--feature-weights",
                 "random", "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"fid at --img-size 256 with --batch-size {batch} needs about" in lines[0]
    assert "available on cpu; lower --batch-size" in lines[0]
    assert main(["fid", folder, folder, "--img-size", "2048", "--batch-size", "2",
                 "--feature-weights", "random", "--device", "cpu"]) == 0  # within both bounds
