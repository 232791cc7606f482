"""Face alignment: similarity transform, warp, and `stargan-ray align` with a fixture FAN."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from stargan_ray.align import (FaceAligner, load_mean_landmarks, pad_mirror,
                               similarity_matrix, warp)
from stargan_ray.cli.align import add_parser
from stargan_ray.config import ConfigError
from stargan_ray.models.fan import FAN, load_fan

from .helpers import face_points


def face_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A drawn face (skin ellipse, eyes, nose, mouth) on a noisy background."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (70, 110, 160))
    d = ImageDraw.Draw(img)
    cx, cy, s = width / 2, height / 2, min(width, height) / 256
    d.ellipse([cx - 70 * s, cy - 95 * s, cx + 70 * s, cy + 95 * s], fill=(224, 172, 140))
    for ex in (-30, 30):
        d.ellipse([cx + (ex - 12) * s, cy - 30 * s, cx + (ex + 12) * s, cy - 18 * s],
                  fill=(40, 30, 30))
    d.line([cx, cy - 10 * s, cx, cy + 20 * s], fill=(150, 100, 90), width=3)
    d.chord([cx - 28 * s, cy + 30 * s, cx + 28 * s, cy + 60 * s], 0, 180, fill=(160, 50, 60))
    arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1


def test_similarity_matrix_recovers_a_known_similarity():
    pts = face_points(np.random.default_rng(0))
    theta, scale, shift = np.deg2rad(17), 1.3, np.array([-20.0, 9.0])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    ref = (pts - pts.mean(0)) @ rot.T * scale + pts.mean(0) + shift
    m = similarity_matrix(pts, ref)
    moved = (m @ np.c_[pts, np.ones(98)].T).T[:, :2]
    np.testing.assert_allclose(moved, ref, atol=1e-9)
    np.testing.assert_allclose(similarity_matrix(pts, pts), np.eye(3), atol=1e-7)


def test_warp_integer_translation_moves_pixels_exactly():
    img = torch.rand(3, 40, 40)
    m = np.eye(3)
    m[:2, 2] = (-3, -5)  # source (u, v) goes to (u - 3, v - 5)
    out = warp(img, m, 40)
    torch.testing.assert_close(out[:, :35, :37], img[:, 5:, 3:], atol=1e-5, rtol=0)
    assert out[:, 36:, :].abs().max() == 0 and out[:, :, 38:].abs().max() == 0  # black outside


def test_pad_mirror_keeps_the_photo_and_moves_landmarks():
    img = torch.rand(3, 64, 64)
    padded, pts = pad_mirror(img, np.array([[10.0, 20.0]]))
    assert padded.shape == (3, 128, 128)
    torch.testing.assert_close(padded[:, 32:96, 32:96], img)
    assert pts.tolist() == [[42.0, 52.0]]
    assert torch.isfinite(padded).all()


def test_align_is_identity_when_landmarks_equal_the_mean(wing, tmp_path):
    fan = load_fan(wing, "cpu")
    x = to_tensor(face_photo(128, 128))
    probe = FaceAligner(fan, np.zeros((98, 2)), 128)
    points, _ = probe.landmarks(x)
    aligner = FaceAligner(fan, points * (256 / 128), 128)  # the mean is given at 256 px
    result = aligner.align(x)
    assert result.image.shape == (3, 128, 128)
    torch.testing.assert_close(result.image, x, atol=1e-3, rtol=0)

    # a mean moved 10 px right: the face moves, so the output is no longer the input
    moved = FaceAligner(fan, (points + [10.0, 0.0]) * 2, 128).align(x).image
    torch.testing.assert_close(moved[:, :, 20:120], x[:, :, 10:110], atol=1e-3, rtol=0)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_align_cli_writes_aligned_photos_and_skips_others(wing, tmp_path, capsys, caplog):
    inp, out = tmp_path / "inp", tmp_path / "out"
    inp.mkdir()
    face_photo(200, 150).save(inp / "face.png")  # not square: squashed, as officially
    (inp / "notes.txt").write_text("not a photo")  # not an image extension: not listed
    (inp / "fake.png").write_text("not a photo either")
    np.savez(tmp_path / "lm.npz", mean=face_points(np.random.default_rng(1)).astype(np.float32))
    common = ["align", "--inp", str(inp), "--wing", str(wing),
              "--lm-mean", str(tmp_path / "lm.npz"), "--img-size", "128", "--device", "cpu"]

    assert run_cli([*common, "--out", str(out), "--min-confidence", "0"]) == 0
    with Image.open(out / "face.png") as aligned:
        assert aligned.size == (128, 128)
    assert not (out / "notes.txt").exists() and not (out / "fake.png").exists()
    assert "skipped 1: fake.png" in capsys.readouterr().out
    assert f"skipping unreadable image {inp / 'fake.png'}: not an image" in caplog.text

    # a second run into the same --out keeps what is there unless --overwrite
    (out / "face.png").write_bytes(b"touched up by hand")
    with pytest.raises(ConfigError, match="face.png: already exists and is kept; pass --overwrite"):
        run_cli([*common, "--out", str(out), "--min-confidence", "0"])
    assert (out / "face.png").read_bytes() == b"touched up by hand"
    assert run_cli([*common, "--out", str(out), "--min-confidence", "0", "--overwrite"]) == 0
    with Image.open(out / "face.png") as aligned:
        assert aligned.size == (128, 128)
    capsys.readouterr()

    # no face: the landmark heatmaps of this FAN never come near the required peak
    assert run_cli([*common, "--out", str(tmp_path / "none"), "--min-confidence", "1e9"]) == 1
    assert "skipped face.png: no face found" in capsys.readouterr().out
    assert not (tmp_path / "none" / "face.png").exists()


def test_align_input_errors(wing, tmp_path):
    with pytest.raises(ConfigError, match="download.sh wing"):
        load_mean_landmarks(tmp_path / "celeba_lm_mean.npz")
    np.savez(tmp_path / "bad.npz", mean=np.zeros((68, 2)))
    with pytest.raises(ConfigError, match=r"\(98, 2\)"):
        load_mean_landmarks(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="multiple of 64"):
        FaceAligner(FAN(), np.zeros((98, 2)), 100)
