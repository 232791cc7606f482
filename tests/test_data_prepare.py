"""``stargan-ray prepare``: shards, manifest, bad files, and the round trip folders -> shards."""

from __future__ import annotations

import argparse
import io
import json
from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from stargan_ray.cli import prepare as prepare_cli
from stargan_ray.data import prepare as prep
from stargan_ray.data import shards, synthetic
from stargan_ray.data.folders import (DataError, DomainCountError, DomainMismatchError,
                                      MissingRootError)
from stargan_ray.data.layout import GROUP_SIZE
from stargan_ray.data.sampling import load_size
from stargan_ray.data.stream import local_raw_batches
from stargan_ray.data.table import open_table, open_train_table

from .helpers import image_tree, tiny_config, tiny_data_config


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Synthetic train/val, 3 domains x 70 images at 32 px: several row groups per shard set."""
    root = tmp_path_factory.mktemp("syn")
    return synthetic.generate(root, img_size=32, num_domains=3, n_train=70, n_val=4, seed=3)


_cfg = partial(tiny_data_config, **{"model.num_domains": 3, "data.batch_size": 8})


def test_round_trip_shards_give_the_folder_batches_pixel_for_pixel(tree, tmp_path):
    train, val = tree
    manifest = prep.prepare(str(train), str(tmp_path / "shards"), workers=1, shard_mb=0.05)
    assert manifest["counts"] == [70, 70, 70]
    assert manifest["domains"] == ["circle", "square", "triangle"]
    assert len(manifest["files"]) > 1  # --shard-mb split the set
    folder_rows = local_raw_batches(_cfg(train, val), seed=11)
    shard_rows = local_raw_batches(_cfg(tmp_path / "shards", val), seed=11)
    for _ in range(60):  # > 2 epochs of 210 images
        a, b = next(folder_rows), next(shard_rows)
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_shard_layout_and_manifest(tree, tmp_path):
    train, _ = tree
    out = tmp_path / "shards"
    manifest = prep.prepare(str(train), str(out), workers=2)
    on_disk = json.loads((out / shards.MANIFEST).read_text())
    assert on_disk == manifest
    files = manifest["files"]
    assert len(files) == 1 and files[0]["rows"] == 210
    meta = pq.ParquetFile(out / files[0]["path"]).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes[:-1] == [GROUP_SIZE] * (len(sizes) - 1) and sum(sizes) == 210
    table = pq.read_table(out / files[0]["path"])
    assert table.column_names == ["image", "domain", "path"]
    row = table.slice(5, 1).to_pylist()[0]
    assert row["image"] == (train / row["path"]).read_bytes()  # original bytes when not resized
    assert manifest["labels"] == table.column("domain").to_pylist()
    again = prep.prepare(str(train), str(tmp_path / "again"), workers=1)
    assert again["content_hash"] == manifest["content_hash"]


def test_img_size_resizes_keeping_aspect(tmp_path):
    src = image_tree(tmp_path / "src", n=3, size=(300, 200), suffix=".jpg",
                     colour=lambda i: (i * 40, 10, 200))
    manifest = prep.prepare(str(src), str(tmp_path / "out"), img_size=64, workers=1)
    table, _ = open_table(str(tmp_path / "out"), 2)
    assert manifest["img_size"] == 64 and table.kind == "shards"
    side = load_size(64)
    for _, _, data, _ in table.read_group(0):
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.size == (round(300 * side / 200), side)


def test_round_trip_with_img_size(tmp_path):
    """Shards reduced for img_size give the batches the folder tree gives at that img_size."""
    train, val = synthetic.generate(tmp_path / "syn", img_size=64, num_domains=3, n_train=30,
                                    n_val=2)
    prep.prepare(str(train), str(tmp_path / "shards"), img_size=32, workers=1)
    folder_rows = local_raw_batches(_cfg(train, val), seed=2)
    shard_rows = local_raw_batches(_cfg(tmp_path / "shards", val), seed=2)
    for _ in range(15):
        a, b = next(folder_rows), next(shard_rows)
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_bad_files_are_skipped_and_reported(tmp_path, capsys):
    src = tmp_path / "src"
    synthetic.generate(tmp_path / "gen", 32, 2, n_train=6, n_val=1)
    (tmp_path / "gen" / "train").rename(src)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(src / "circle" / "cut.jpg")
    data = (src / "circle" / "cut.jpg").read_bytes()
    (src / "circle" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (src / "circle" / "zero.png").write_bytes(b"")
    (src / "square" / "text.png").write_text("not a picture")
    parser = argparse.ArgumentParser()
    prepare_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", str(src), str(tmp_path / "out"), "--img-size", "32",
                              "--shard-mb", "1"])
    assert args.func(args) == 1  # shards written, but files were skipped
    out = capsys.readouterr().out
    assert "circle  6" in out and "square  6" in out and "skipped 3 file(s):" in out
    for name, reason in (("cut.jpg", "truncated"), ("zero.png", "empty file"),
                         ("text.png", "not an image")):
        line = next(line for line in out.splitlines() if name in line)
        assert reason in line and str(src) in line
    manifest = shards.read_manifest(str(tmp_path / "out"))
    assert manifest["counts"] == [6, 6] and len(manifest["skipped"]) == 3


def test_uri_output_and_manifest_errors(tree, tmp_path):
    train, _ = tree
    uri = f"file://{tmp_path}/uri_out"
    prep.prepare(str(train), uri, workers=1)
    assert shards.read_manifest(uri)["counts"] == [70, 70, 70]
    with pytest.raises(DomainCountError, match="uri_out"):
        shards.read_manifest(uri, num_domains=2)
    with pytest.raises(MissingRootError, match="no manifest.json"):
        shards.read_manifest(str(tmp_path))


def test_val_shards_are_checked_against_train(tree, tmp_path):
    train, val = tree
    prep.prepare(str(val), str(tmp_path / "val_shards"), workers=1)
    table, _ = open_train_table(_cfg(train, tmp_path / "val_shards"))  # same domains: fine
    assert table.kind == "folders"
    wrong = image_tree(tmp_path / "wrong", ("circle", "square", "star"), n=1)
    with pytest.raises(DomainMismatchError, match="differ from train domains"):
        open_train_table(_cfg(tmp_path / "val_shards", wrong))


def test_prepare_names_a_loop_and_a_broken_link_and_exits_1(tmp_path, capsys):
    src = tmp_path / "src"
    synthetic.generate(tmp_path / "gen", 32, 2, n_train=5, n_val=1)
    (tmp_path / "gen" / "train").rename(src)
    (src / "circle" / "loop").symlink_to(src / "circle")
    (src / "square" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code = _run_prepare([str(src), str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1
    assert "circle  5" in out and "square  5" in out and "skipped 2 file(s):" in out
    assert f"{src}/square/gone.png: broken symlink" in out
    assert f"{src}/circle/loop: symlink loop" in out


def _run_prepare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    prepare_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


def test_shards_for_a_smaller_img_size_are_refused_unless_allowed(tree, tmp_path, caplog):
    train, val = tree
    prep.prepare(str(train), str(tmp_path / "s32"), img_size=32, workers=1)
    at_64 = {"model.img_size": 64, "model.num_domains": 3, "data.train_dir": str(tmp_path / "s32"),
             "data.val_dir": str(val)}
    with pytest.raises(DataError) as err:
        open_train_table(tiny_config(**at_64))
    assert "--img-size 32" in str(err.value) and "model.img_size = 64" in str(err.value)
    assert "\n" not in str(err.value) and "data.allow_upscale" in str(err.value)
    with caplog.at_level("WARNING", logger="stargan_ray.data"):
        table, _ = open_train_table(tiny_config(**at_64, **{"data.allow_upscale": True}))
    assert table.kind == "shards"
    assert any("upsampled" in r.getMessage() for r in caplog.records)
    table, _ = open_train_table(_cfg(tmp_path / "s32", val))  # the size they are for: fine
    assert table.counts == [70, 70, 70]
