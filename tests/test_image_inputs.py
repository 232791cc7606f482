"""Image inputs of fid / eval / sample / align / training grids: one listing, one decoder.

Every test builds its own bad files (empty, text, truncated PNG and JPEG, a PNG whose header
declares 20000 x 20000) and good ones in the formats training reads (upper-case .PNG, .webp,
.bmp, 16-bit PNG), and calls the real commands: bad files are named and skipped, good ones used,
user mistakes are one line with exit code 2.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray import sample
from stargan_ray.cli import main
from stargan_ray.data import folders
from stargan_ray.inference import load_image_tensor
from stargan_ray.metrics import evaluator, fid
from stargan_ray.metrics.weights import FeatureWeights

from .helpers import tiny_config

S = 32  # tiny_config image size
BAD_REASONS = {"empty.png": "empty file", "text.jpg": "not an image", "cut.png": "truncated",
               "cut.jpg": "truncated", "bomb.png": "DecompressionBombError"}


def _noise(seed: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """57 bytes whose header says 20000 x 20000 RGB: past Pillow's decompression-bomb limit."""
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b""))


def write_bad(folder: Path, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    png, jpeg = _encoded(_noise(seed), "PNG"), _encoded(_noise(seed), "JPEG")
    data = {"empty.png": b"", "text.jpg": b"hello, I am a text file",
            "cut.png": png[:len(png) // 2], "cut.jpg": jpeg[:len(jpeg) // 2], "bomb.png": bomb_png()}
    for name, blob in data.items():
        (folder / name).write_bytes(blob)
    return [folder / name for name in data]


def gray16(seed: int) -> tuple[Image.Image, Image.Image]:
    """(16-bit "I;16" image, its 8-bit twin): values v * 257 scale back to exactly v."""
    v = np.random.default_rng(seed).integers(0, 256, (36, 40)).astype(np.uint16)
    return Image.fromarray(v * 257), Image.fromarray(v.astype(np.uint8)).convert("RGB")


def write_good(folder: Path, seed: int = 0, twins: bool = False) -> list[Path]:
    """Four lossless images (.PNG, .webp, .bmp, 16-bit .png); twins: all as 8-bit .png."""
    folder.mkdir(parents=True, exist_ok=True)
    sixteen, eight = gray16(seed + 3)
    images = {"a.PNG": _noise(seed), "b.webp": _noise(seed + 1), "c.bmp": _noise(seed + 2),
              "d16.png": eight if twins else sixteen}
    paths = []
    for name, image in images.items():
        path = folder / (Path(name).stem + ".png" if twins else name)
        image.save(path, **({"lossless": True} if path.suffix == ".webp" else {}))
        paths.append(path)
    return paths


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def named_once(caplog, bad: list[Path]) -> None:
    """Each bad file is named in exactly one warning, with its reason."""
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in bad:
        hits = [line for line in lines if str(path.resolve()) in line or str(path) in line]
        assert len(hits) == 1, (path, lines)
        assert hits[0].startswith("skipping unreadable image ")
        assert BAD_REASONS[path.name] in hits[0], hits[0]


@pytest.fixture
def checkpoint(tmp_path_factory):
    from stargan_ray.checkpoint import save_checkpoint
    from stargan_ray.engine import TrainState

    torch.manual_seed(0)
    cfg = tiny_config(**{"eval.num_outs_per_domain": 2})
    return save_checkpoint(TrainState.create(cfg, "cpu"),
                           tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")


# ---------------------------------------------------------------- the shared functions


def test_every_command_lists_and_decodes_like_training(tmp_path):
    good = write_good(tmp_path / "d")
    bad = write_bad(tmp_path / "d")
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    (tmp_path / "d" / ".hidden.png").write_bytes(b"")
    listed = folders.list_image_files(tmp_path / "d")
    assert sorted(Path(p).name for p in listed) == sorted(p.name for p in good + bad)
    assert fid.list_images(tmp_path / "d") == [Path(p) for p in listed]
    for path in bad:
        with pytest.raises(folders.BadImage, match=BAD_REASONS[path.name]):
            folders.load_image(path)
    with pytest.raises(folders.BadImage, match="cannot read"):
        folders.load_image(tmp_path / "gone.png")
    with pytest.raises(folders.MissingRootError, match="no such folder"):
        folders.list_image_files(tmp_path / "nope")


def test_a_16_bit_png_gives_its_8_bit_twin_in_every_loader(tmp_path):
    sixteen, eight = gray16(0)
    sixteen.save(tmp_path / "16.png")
    eight.save(tmp_path / "8.png")
    with Image.open(tmp_path / "16.png") as image:  # what the commands did before: clipped
        assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.9
    # sample, align and translate all load through inference.load_image_tensor
    pairs = [(lambda p: fid.load_for_inception(p, S)), (lambda p: load_image_tensor(p, S)),
             (lambda p: load_image_tensor(p, 64))]
    cfg = tiny_config()
    worker = evaluator.EvalWorker(evaluator.Job(cfg, evaluator.EvalData((), (), ()), (), 1, 0),
                                  None, None, None, "cpu")
    pairs.append(lambda p: worker._image(str(p)))
    for load in pairs:
        torch.testing.assert_close(load(tmp_path / "16.png"), load(tmp_path / "8.png"), rtol=0,
                                   atol=0)


def test_training_grids_skip_an_unreadable_val_image(tmp_path, caplog):
    from stargan_ray.train.samples import load_val_samples

    write_good(tmp_path / "val" / "cat")
    bad = write_bad(tmp_path / "val" / "dog")
    write_good(tmp_path / "val" / "dog", seed=5)
    cfg = tiny_config(**{"data.val_dir": str(tmp_path / "val")})
    x_src, y_src, x_ref, y_ref = load_val_samples(cfg, "cpu")
    assert torch.cat([y_src, y_ref]).bincount().tolist() == [4, 4]  # every good one, none bad
    assert x_src.shape[1:] == (3, S, S)
    named_once(caplog, bad)


# ---------------------------------------------------------------- the commands


def test_fid_names_bad_files_and_uses_every_good_one(tmp_path, capsys, caplog):
    write_good(tmp_path / "a")
    bad = write_bad(tmp_path / "a" / "nested")
    twins = write_good(tmp_path / "b", twins=True)
    code, out, err = run_cli(["fid", tmp_path / "a", tmp_path / "b", "--img-size", S,
                              "--feature-weights", "random", "--device", "cpu",
                              "--batch-size", 3], capsys)
    assert code == 0 and "Traceback" not in err
    named_once(caplog, bad)
    # the good files of a, decoded as training does, are the 8-bit twins in b: FID about 0
    moments = fid.features_of_files(twins, S, fid.cached_inception(FeatureWeights("random"),
                                                                   "cpu"), 4, "cpu")
    assert abs(float(out.splitlines()[-1])) < 1e-5 * np.trace(moments.cov())

    only_bad = tmp_path / "only_bad"
    write_bad(only_bad)
    code, _, err = run_cli(["fid", only_bad, tmp_path / "b", "--img-size", S,
                            "--feature-weights", "random", "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("stargan-ray: error: ") and "0 of 5 image files could be read" in err


def test_eval_skips_bad_train_and_val_files(tmp_path, checkpoint, capsys, caplog, monkeypatch):
    monkeypatch.setenv("STARGAN_RAY_CACHE", str(tmp_path / "cache"))
    bad = []
    for split, domain in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "dog")):
        write_good(tmp_path / split / domain, seed=len(bad))
        bad += write_bad(tmp_path / split / domain / "bad")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["eval", "--checkpoint", checkpoint, "--train-dir", tmp_path / "train", "--val-dir",
         tmp_path / "val", "--feature-weights", "random", "--device", "cpu", "--mode", "latent",
         "--out", out, "--set", "data.val_batch_size=4"], capsys)
    assert code == 0 and "Traceback" not in err, err
    named_once(caplog, bad)
    fid_json = json.loads((out / "FID_00000_latent.json").read_text())
    assert np.isfinite(fid_json["FID_latent/mean"])
    assert "FID_latent/cat2dog" in stdout


def test_sample_skips_bad_files_and_keeps_earlier_grids(tmp_path, checkpoint, capsys, caplog):
    write_good(tmp_path / "src" / "cat")
    for domain in ("cat", "dog"):
        (tmp_path / "ref" / domain).mkdir(parents=True)
        _noise(7).save(tmp_path / "ref" / domain / "r.png")
    (tmp_path / "src" / "dog").mkdir()
    _noise(9).save(tmp_path / "src" / "dog" / "x.png")
    # sorted before cat's good files; round robin: a bad one, dog/x, the other bad ones, cat/a.PNG
    bad = write_bad(tmp_path / "src" / "cat" / "0bad")
    common = ["sample", "--checkpoint", checkpoint, "--src", tmp_path / "src", "--ref",
              tmp_path / "ref", "--num-src", 2, "--num-ref", 2, "--device", "cpu",
              "--out", tmp_path / "out"]
    code, out, err = run_cli(common, capsys)
    assert code == 0 and "Traceback" not in err
    named_once(caplog, bad)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(sample.output_names())
    with Image.open(tmp_path / "out" / "reference.jpg") as grid:
        assert grid.size == (3 * S, 3 * S)  # 2 good sources across, 2 references down
    before = (tmp_path / "out" / "reference.jpg").read_bytes()
    code, _, err = run_cli(common, capsys)
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert (tmp_path / "out" / "reference.jpg").read_bytes() == before


def test_align_aligns_every_good_file_and_names_each_bad_one(tmp_path):
    """From the command line, as a user runs it: no traceback, one stderr line per bad file."""
    from stargan_ray.models.fan import FAN

    torch.manual_seed(0)
    torch.save({"state_dict": FAN().state_dict()}, tmp_path / "wing.ckpt")
    np.savez(tmp_path / "lm.npz", mean=np.random.default_rng(0).normal(128, 30, (98, 2)))
    good = write_good(tmp_path / "inp")
    bad = write_bad(tmp_path / "inp")
    exe = Path(sys.executable).with_name("stargan-ray")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else
           ["-m", "stargan_ray.cli"]), "align", "--inp", str(tmp_path / "inp"), "--out",
           str(tmp_path / "out"), "--wing", str(tmp_path / "wing.ckpt"), "--lm-mean",
           str(tmp_path / "lm.npz"), "--img-size", "64", "--min-confidence", "0",
           "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in good)
    lines = proc.stderr.splitlines()
    assert len(lines) == len(bad), lines
    for path in bad:
        assert sum(path.name in line and BAD_REASONS[path.name] in line for line in lines) == 1
    assert f"skipped {len(bad)}" in proc.stdout


# ---------------------------------------------------------------- user mistakes: exit 2


@pytest.mark.parametrize("argv, message", [
    (["fid", "{d}", "{d}", "--img-size", "0"], "argument --img-size: must be >= 1"),
    (["fid", "{d}", "{d}", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["fid", "{d}", "{d}", "--device", "foo"], "--device: expected cpu, cuda or cuda:N"),
    (["fid", "{d}", "{d}", "--device", "cuda"], "no usable CUDA device"),
    (["fid", "{d}", "{d}/nope", "--device", "cpu"], "nope: no such folder"),
    (["align", "--inp", "{d}", "--out", "{d}/x", "--img-size", "0"], "must be >= 64"),
    (["align", "--inp", "{d}", "--out", "{d}", "--device", "cpu"], "lies inside the input"),
    (["align", "--inp", "{d}", "--out", "{d}/aligned", "--device", "cpu"], "lies inside"),
    (["eval", "--checkpoint", "{d}/c.pt", "--device", "foo"], "--device: expected cpu"),
    (["eval", "--checkpoint", "{d}/c.pt", "--num-workers", "-1"],
     "argument --num-workers: expected auto or an integer >= 0"),
    (["sample", "--checkpoint", "{d}/c.pt", "--src", "{d}", "--ref", "{d}", "--out",
      "{t}/file.jpg", "--device", "cpu"], "exists and is not a directory"),
    (["sample", "--checkpoint", "{d}/c.pt", "--src", "{d}", "--ref", "{d}", "--out",
      "{d}/out", "--device", "cpu"], "lies inside the input"),
    (["sample", "--checkpoint", "{d}/c.pt", "--src", "{d}", "--ref", "{d}", "--out", "o",
      "--num-ref", "-1"], "argument --num-ref: must be >= 1"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(tmp_path, capsys, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    photos = write_good(tmp_path / "d")
    (tmp_path / "file.jpg").write_bytes(b"an earlier output")
    before = {p: p.read_bytes() for p in photos}
    code, out, err = run_cli([a.format(d=tmp_path / "d", t=tmp_path) for a in argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("stargan-ray: error: ", "usage:", "stargan-ray ")), err
    if "argument" not in message and "must be" not in message:  # ours, not argparse's usage
        assert err.count("\n") == 1 and err.startswith("stargan-ray: error: ")
    assert {p: p.read_bytes() for p in photos} == before  # the input photos are untouched
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(p.name for p in photos)
