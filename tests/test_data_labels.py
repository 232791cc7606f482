"""Domains from a labels CSV or CelebA-style attributes: prepare, training's table, the errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray.cli import prepare as prepare_cli
from stargan_ray.data import labels, shards
from stargan_ray.data.folders import DataError, EmptyDomainError
from stargan_ray.data.stream import local_raw_batches
from stargan_ray.data.table import open_train_table

from .helpers import tiny_config

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def _photo(path, colour, seed, size=(40, 32)):
    rng = np.random.default_rng(seed)
    pixels = np.asarray(colour, np.int16) + rng.integers(-20, 20, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def flat(tmp_path):
    """One folder of 6 red and 6 blue photos (no domain folders), a labels CSV naming them with
    a header, relative and absolute paths, and one row for a file that is not there."""
    src = tmp_path / "photos"
    rows = ["path,domain"]
    for i in range(12):
        colour, name = (RED, "red") if i % 2 else (BLUE, "blue")
        _photo(src / "all" / f"{i:02d}.png", colour, i)
        path = src / "all" / f"{i:02d}.png" if i == 3 else f"all/{i:02d}.png"
        rows.append(f"{path},{name}")
    rows.append("all/missing.png,red")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return src, tmp_path / "labels.csv"


def _prepare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    prepare_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


def _is_red(images: torch.Tensor) -> np.ndarray:
    means = images.float().mean((2, 3))
    return (means[:, 0] > means[:, 2]).numpy()


def test_prepare_labels_names_domains_from_the_file_and_skips_a_missing_row(flat, tmp_path,
                                                                           capsys):
    src, csv = flat
    code = _prepare([str(src), str(tmp_path / "shards"), "--labels", str(csv)])
    out = capsys.readouterr().out
    assert code == 1  # the shards are written; a row was skipped
    assert "blue  6" in out and "red   6" in out and "skipped 1 file(s):" in out
    assert f"{src}/all/missing.png: no such file ({csv} line 14)" in out
    manifest = shards.read_manifest(str(tmp_path / "shards"))
    assert manifest["domains"] == ["blue", "red"] and manifest["counts"] == [6, 6]
    cfg = tiny_config(**{"data.train_dir": str(tmp_path / "shards"), "data.val_dir": str(src),
                         "data.val_labels": str(csv)})
    rows = local_raw_batches(cfg, seed=3)
    for _ in range(5):  # every image is in its labelled domain (blue = 0, red = 1)
        row = next(rows)
        assert np.array_equal(_is_red(row["x_src"]), row["y_src"].numpy() == 1)
        assert np.array_equal(_is_red(row["x_ref"]), row["y_ref"].numpy() == 1)


def test_training_on_a_labelled_folder_reads_what_its_shards_hold(flat, tmp_path):
    src, csv = flat
    labelled = {"data.train_dir": str(src), "data.train_labels": str(csv),
                "data.val_dir": str(src), "data.val_labels": str(csv)}
    table, bad = open_train_table(tiny_config(**labelled))
    assert table.domains == ("blue", "red") and table.counts == [6, 6]
    assert [p for p, _ in bad] == [f"{src}/all/missing.png"]
    assert _prepare([str(src), str(tmp_path / "shards"), "--labels", str(csv)]) == 1
    sharded = {**labelled, "data.train_dir": str(tmp_path / "shards"), "data.train_labels": ""}
    a, b = (local_raw_batches(tiny_config(**c), seed=5) for c in (labelled, sharded))
    for _ in range(8):
        x, y = next(a), next(b)
        assert all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(DataError, match="leave data.train_labels"):
        open_train_table(tiny_config(**{**sharded, "data.train_labels": str(csv)}))


@pytest.mark.parametrize("line, message", [
    ("all/00.png", "expected two columns path,domain"),
    ("all/00.png,blue\nall/00.png,red", "is listed already on line 2"),
])
def test_a_malformed_labels_file_is_one_line_naming_the_line(flat, tmp_path, line, message):
    src, _ = flat
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,domain\n{line}\nall/01.png,red\n")
    with pytest.raises(DataError, match=message) as err:
        labels.read_labels(str(src), str(bad))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def _attributes(tmp_path, src):
    """CelebA's format: count, names, then file and 1/-1 per attribute (two spaces as CelebA)."""
    names = ["Bald", "Blond_Hair", "Eyeglasses", "Smiling"]
    rows = {  # file: (Bald, Blond_Hair, Eyeglasses, Smiling)
        "000001.jpg": (-1, 1, -1, 1), "000002.jpg": (-1, 1, -1, -1), "000003.jpg": (1, -1, -1, 1),
        "000004.jpg": (-1, -1, -1, 1),  # none of Blond_Hair, Bald
        "000005.jpg": (1, 1, -1, -1),  # both: left out
        "000006.jpg": (1, -1, 1, -1), "000007.jpg": (-1, 1, 1, 1),
        "000404.jpg": (1, -1, -1, -1),  # no such file
    }
    for i, (name, values) in enumerate(rows.items()):
        if name != "000404.jpg":
            colour = GREEN if values[0] == 1 else RED  # bald: green
            _photo(src / "img_align_celeba" / name, colour, i)
    text = [str(len(rows)), " ".join(names)]
    text += [f"{name} " + " ".join(f"{v:2d}" for v in values) for name, values in rows.items()]
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("\n".join(text) + "\n")
    return path


def test_prepare_attributes_keeps_images_with_exactly_one_chosen_attribute(tmp_path, capsys):
    src = tmp_path / "celeba"
    attrs = _attributes(tmp_path, src)
    code = _prepare([str(src), str(tmp_path / "shards"), "--attributes", str(attrs),
                     "--domains", "Blond_Hair,Bald", "--img-size", "32"])
    out = capsys.readouterr().out
    assert code == 1
    manifest = shards.read_manifest(str(tmp_path / "shards"))
    assert manifest["domains"] == ["Bald", "Blond_Hair"] and manifest["counts"] == [2, 3]
    assert manifest["left_out"] == {labels.NO_DOMAIN: 1, labels.SEVERAL_DOMAINS: 1}
    assert "left out 1 image(s) with none of the domains" in out
    assert "left out 1 image(s) with several of the domains" in out
    assert f"{src}/000404.jpg: no such file under the root" in out
    paths = {p: d for p, d in zip(*_paths_and_domains(tmp_path / "shards"))}
    assert paths == {"img_align_celeba/000003.jpg": 0, "img_align_celeba/000006.jpg": 0,
                     "img_align_celeba/000001.jpg": 1, "img_align_celeba/000002.jpg": 1,
                     "img_align_celeba/000007.jpg": 1}


def _paths_and_domains(out):
    import pyarrow.parquet as pq

    files = json.loads((out / shards.MANIFEST).read_text())["files"]
    tables = [pq.read_table(out / f["path"], columns=["path", "domain"]) for f in files]
    return ([p for t in tables for p in t["path"].to_pylist()],
            [d for t in tables for d in t["domain"].to_pylist()])


@pytest.mark.parametrize("domains, error, message", [
    ("Blond_Hair,Moustache", DataError, "--domains: Moustache not in"),
    ("Blond_Hair", DataError, "need at least 2 different attributes"),
    ("Bald,Blond_Hair,Eyeglasses", EmptyDomainError, "no image has Eyeglasses alone"),
])
def test_attribute_mistakes_are_one_line(tmp_path, domains, error, message):
    src = tmp_path / "celeba"
    attrs = _attributes(tmp_path, src)
    with pytest.raises(error, match=message) as err:
        labels.read_attributes(str(src), str(attrs), domains.split(","))
    assert "\n" not in str(err.value)


def test_the_cli_refuses_labels_with_attributes_and_domains_without_them(flat, tmp_path):
    src, csv = flat
    with pytest.raises(DataError, match="give one of them"):
        _prepare([str(src), str(tmp_path / "o"), "--labels", str(csv), "--attributes", str(csv)])
    with pytest.raises(DataError, match="goes with --attributes"):
        _prepare([str(src), str(tmp_path / "o"), "--domains", "a,b"])


@pytest.mark.ray
def test_the_ray_pipeline_reads_a_labelled_folder_and_records_its_names(ray_session, flat):
    from stargan_ray.data.pipeline import prepare_train_data, worker_raw_batches

    src, csv = flat
    cfg = tiny_config(**{"data.train_dir": str(src), "data.train_labels": str(csv),
                         "data.val_dir": str(src), "data.val_labels": str(csv),
                         "train.total_iters": 10})
    data = prepare_train_data(cfg)
    assert data["domains"] == ["blue", "red"]  # what the run's checkpoints record
    ray_rows = worker_raw_batches(data, cfg, world_rank=0, world_size=1, start_step=0)
    local = local_raw_batches(cfg)
    for _ in range(6):
        a, b = next(ray_rows), next(local)
        assert all(torch.equal(a[k], b[k]) for k in a)
    ray_rows.close()


def test_the_training_grids_take_val_images_by_their_labels(flat):
    from stargan_ray.train.samples import load_val_samples

    src, csv = flat
    cfg = tiny_config(**{"data.train_dir": str(src), "data.train_labels": str(csv),
                         "data.val_dir": str(src), "data.val_labels": str(csv)})
    x_src, y_src, x_ref, y_ref = load_val_samples(cfg, "cpu")
    x, y = torch.cat([x_src, x_ref]), torch.cat([y_src, y_ref])
    assert set(y.tolist()) == {0, 1}
    assert np.array_equal(_is_red(x), y.numpy() == 1)


def test_fid_quick_on_a_labelled_folder_equals_it_on_the_same_images_in_folders(flat, tmp_path):
    import shutil

    from stargan_ray.metrics import evaluator

    from .helpers import seeded_ema_networks, tiny_eval_config

    src, csv = flat
    tree = tmp_path / "tree"
    for line in csv.read_text().splitlines()[1:]:
        path, domain = line.split(",")
        full = src / path if not path.startswith("/") else path
        if (src / "all" / "missing.png") != full:
            (tree / domain).mkdir(parents=True, exist_ok=True)
            shutil.copy(full, tree / domain / str(full).rsplit("/", 1)[-1])
    small = {"eval.quick_sources": 2, "eval.quick_outs": 1}
    labelled = tiny_eval_config(src, src, **{"data.train_labels": str(csv),
                                             "data.val_labels": str(csv), **small})
    folders_cfg = tiny_eval_config(tree, tree, **small)
    nets = seeded_ema_networks(labelled)
    values = [evaluator.fid_quick(nets, cfg, cache_dir=tmp_path / "cache" / name)
              for name, cfg in (("labels", labelled), ("folders", folders_cfg))]
    assert np.isfinite(values[0]) and values[0] == values[1]


def test_a_row_naming_an_unreadable_file_is_named_and_skipped(flat, tmp_path, capsys):
    src, csv = flat
    (src / "all" / "broken.png").write_text("not a picture")
    csv.write_text(csv.read_text() + "all/broken.png,blue\n")
    assert _prepare([str(src), str(tmp_path / "shards"), "--labels", str(csv)]) == 1
    out = capsys.readouterr().out
    assert f"{src}/all/broken.png: not an image" in out and "skipped 2 file(s):" in out
    cfg = tiny_config(**{"data.train_dir": str(src), "data.train_labels": str(csv),
                         "data.val_dir": str(src), "data.val_labels": str(csv)})
    table, bad = open_train_table(cfg)
    assert table.counts == [6, 6]
    assert sorted(p for p, _ in bad) == [f"{src}/all/broken.png", f"{src}/all/missing.png"]
