"""Any photo shape (data.fit, prepare --fit) and every image kind read the one way training
reads it: folders, shards and translate's loader give the same pixels; prepare's summary."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray.cli import prepare as prepare_cli
from stargan_ray.data import folders, shapes
from stargan_ray.data.folders import DataError
from stargan_ray.data.stream import local_raw_batches
from stargan_ray.data.table import open_train_table
from stargan_ray import inference

from .helpers import tiny_config

BLUE, GREEN = (20, 40, 230), (30, 210, 40)


def _banded(width=96, height=32) -> Image.Image:
    """A wide photo: its centred square blue, the sides green."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = GREEN
    left = (width - height) // 2
    pixels[:, left:left + height] = BLUE
    return Image.fromarray(pixels)


def test_crop_takes_the_centred_square_and_pad_keeps_the_whole_photo():
    image = _banded(40, 16)
    crop = shapes.fit_square(image, "crop")
    assert crop.size == (16, 16) and (np.asarray(crop) == BLUE).all()
    pad = np.asarray(shapes.fit_square(image, "pad"))
    assert pad.shape == (40, 40, 3)
    assert (pad[:12] == shapes.PAD_FILL).all() and (pad[28:] == shapes.PAD_FILL).all()
    assert np.array_equal(pad[12:28], np.asarray(image))  # every pixel of the photo, unscaled
    assert shapes.fit_square(image, "stretch") is image
    square = Image.new("RGB", (8, 8), GREEN)
    assert all(shapes.fit_square(square, fit) is square for fit in ("stretch", "crop", "pad"))


def test_decode_reduces_then_fits():
    data = _png(_banded(300, 100))
    assert folders.decode(data, 50).size == (150, 50)  # stretch: as before, squashed later
    assert folders.decode(data, 50, "crop").size == (50, 50)
    assert folders.decode(data, 50, "pad").size == (50, 50)  # the longer side to 50
    assert folders.decode(data, None, "pad").size == (300, 300)


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    """A 40x20 JPEG stored sideways (left half red) with EXIF orientation 6: shown upright it
    is 20 wide and 40 tall with the red half on top."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (230, 20, 20)
    pixels[:, 20:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(Image.fromarray(pixels), exif=exif)


def test_an_exif_rotated_photo_is_read_upright():
    image = folders.decode(_rotated_jpeg())
    pixels = np.asarray(image).astype(int)
    assert image.size == (20, 40)
    assert pixels[:20, :, 0].mean() > 200 and pixels[20:, :, 2].mean() > 200
    assert folders.decode(_rotated_jpeg(), 10).size == (10, 20)  # reduced upright too


def _kinds() -> dict[str, bytes]:
    """One file of each kind a camera or scraper hands in, all 48 x 32 (not square)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (32, 48, 3), np.uint8))
    wide16 = Image.fromarray(rng.integers(0, 65535, (32, 48), np.uint16))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 255, (32, 48), np.uint8)))
    return {"gray.png": _png(rgb.convert("L")), "gray16.png": _png(wide16),
            "palette.png": _png(rgb.convert("P")), "rgba.png": _png(rgba),
            "cmyk.jpg": _jpeg(rgb.convert("CMYK")), "rotated.jpg": _rotated_jpeg(),
            "rgb.jpg": _jpeg(rgb)}


@pytest.fixture(scope="module")
def kinds_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds") / "train"
    for d, domain in enumerate(("a", "b")):
        (root / domain).mkdir(parents=True)
        for name, data in _kinds().items():
            (root / domain / f"{d}{name}").write_bytes(data)
    return root


@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
def test_every_kind_trains_the_same_from_folders_and_shards_and_translates_alike(
        kinds_tree, tmp_path, fit):
    folder_cfg = tiny_config(**{"data.train_dir": str(kinds_tree),
                                "data.val_dir": str(kinds_tree), "data.fit": fit})
    table, bad = open_train_table(folder_cfg)
    assert not bad and table.counts == [7, 7]
    assert _prepare([str(kinds_tree), str(tmp_path / "s"), "--img-size", "32", "--fit", fit]) == 0
    shard_cfg = tiny_config(**{"data.train_dir": str(tmp_path / "s"),
                               "data.val_dir": str(kinds_tree), "data.fit": fit})
    a, b = local_raw_batches(folder_cfg, seed=1), local_raw_batches(shard_cfg, seed=1)
    for _ in range(10):
        x, y = next(a), next(b)
        assert all(torch.equal(x[k], y[k]) for k in x)
    for path in table.paths:  # translate's loader: the training decode, then the test resize
        expected = inference.test_pixels(folders.decode(open(path, "rb").read(), fit=fit), 32)
        got = inference.load_image_tensor(path, 32, fit)
        assert torch.equal(got, expected.float().div(255).mul(2).sub(1))
        assert got.shape == (3, 32, 32)


def _prepare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    prepare_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


def _wide_tree(root, counts=(3, 34)):
    """Domain a: wide photos (blue centre, green sides); b: squares. counts images each."""
    for domain, count in zip(("a", "b"), counts):
        (root / domain).mkdir(parents=True)
        for i in range(count):
            image = _banded(96 + 2 * i, 32) if domain == "a" else Image.new("RGB", (40, 40), BLUE)
            image.save(root / domain / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("fit, colours", [
    ("crop", {BLUE}), ("pad", {BLUE, GREEN, shapes.PAD_FILL}), ("stretch", {BLUE, GREEN})])
def test_training_on_folders_fits_each_photo(tmp_path, fit, colours):
    root = _wide_tree(tmp_path / "train")
    cfg = tiny_config(**{"data.train_dir": str(root), "data.val_dir": str(root),
                         "data.fit": fit, "data.randcrop_prob": 0.0})
    rows = next(local_raw_batches(cfg))
    wide = rows["x_src"][rows["y_src"] == 0]
    assert len(wide)
    found = {tuple(int(v) for v in px) for px in wide.permute(0, 2, 3, 1).reshape(-1, 3)}
    # exact colours only (bilinear edges blend): every exact colour is an expected one
    assert {c for c in found if c in (BLUE, GREEN, shapes.PAD_FILL)} == colours


def test_prepare_summary_sizes_fits_and_warnings(tmp_path, capsys):
    root = _wide_tree(tmp_path / "train")
    assert _prepare([str(root), str(tmp_path / "s"), "--fit", "crop"]) == 0
    out = capsys.readouterr().out
    assert "a  3  sizes 96x32 to 100x32  cropped 3" in out
    assert "b  34  sizes 40x40 to 40x40  cropped 0" in out
    assert "warning: a has 3 images, under 100" in out and "warning: b has 34 images" in out
    assert "warning: domains differ over 10x in size (b 34, a 3)" in out
    shards_cfg = tiny_config(**{"data.train_dir": str(tmp_path / "s"), "data.val_dir": str(root),
                                "data.fit": "pad"})
    with pytest.raises(DataError, match="prepared with --fit crop") as err:
        open_train_table(shards_cfg)
    assert "\n" not in str(err.value)


def test_an_unknown_fit_is_refused_at_the_door():
    from stargan_ray.config import ConfigError

    with pytest.raises(ConfigError, match="data.fit: must be one of stretch, crop, pad"):
        tiny_config(**{"data.fit": "squash"})
