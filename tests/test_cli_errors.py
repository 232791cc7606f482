"""User mistakes in import-official, prepare and tune: one line and exit code 2, inputs untouched.

Every check here fails before any network is built, image decoded or Ray started.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from stargan_ray import cli
from stargan_ray.config import to_toml
from stargan_ray.data import folders
from stargan_ray.data import prepare as prep
from stargan_ray.data import shards
from stargan_ray.engine import TrainState, train_step
from stargan_ray.tune.space import EVAL_METRIC, reported_metrics

from .helpers import (image_tree, load_train_state, official_files, random_batch,
                      save_synthetic_checkpoint, tiny_config)


def _rc(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse: usage line + error line
        return exit_.code


def _one_line(argv: list[str], capsys, *needles: str) -> str:
    rc = _rc(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("stargan-ray: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _usage_error(argv: list[str], capsys, needle: str) -> None:
    rc = _rc(argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err.splitlines()[-1], err
    assert "Traceback" not in err


# ---------------------------------------------------------------- import-official


@pytest.fixture
def official(tmp_path):
    """Official files of the tiny config and an experiment file for it."""
    cfg = tiny_config()
    official_files(tmp_path, cfg, prefix=False, drop_filter=False)
    (tmp_path / "000020_optims.ckpt").write_bytes(b"not read: the check comes first")
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(to_toml(cfg))
    return tmp_path, ["import-official", "--experiment", str(experiment),
                      "--nets-ema", str(tmp_path / "000020_nets_ema.ckpt")]


@pytest.mark.parametrize("flag, name", [("--nets-ema", "000020_nets_ema.ckpt"),
                                        ("--nets", "000020_nets.ckpt"),
                                        ("--optims", "000020_optims.ckpt")])
def test_import_official_refuses_to_write_over_an_input(official, capsys, flag, name):
    folder, argv = official
    target = folder / name
    before = target.read_bytes()
    extra = [] if flag == "--nets-ema" else [flag, str(target)]
    _one_line([*argv, *extra, "--out", str(target), "--overwrite"], capsys,
              f"--out {target}: is, contains or lies inside the input")
    assert target.read_bytes() == before


def test_import_official_keeps_an_existing_out_unless_overwrite(official, capsys):
    folder, argv = official
    out = folder / "imported.pt"
    out.write_bytes(b"an earlier import")
    _one_line([*argv, "--out", str(out)], capsys, "already exists", "--overwrite")
    assert out.read_bytes() == b"an earlier import"
    assert cli.main([*argv, "--out", str(out), "--overwrite", "--step", "0"]) == 0
    assert load_train_state(out).step == 0  # 0 is a step, not "from the file name" (20)


def test_import_official_out_folder_and_negative_step(official, capsys):
    folder, argv = official
    (folder / "dir").mkdir()
    _one_line([*argv, "--out", str(folder / "dir")], capsys, "is a directory")
    blocker = folder / "file"
    blocker.write_text("x")
    _one_line([*argv, "--out", str(blocker / "x.pt")], capsys, "is not a directory")
    _usage_error([*argv, "--out", str(folder / "x.pt"), "--step", "-5"], capsys,
                 "argument --step: must be >= 0, got -5")
    assert not (folder / "x.pt").exists()


# ---------------------------------------------------------------- prepare


@pytest.fixture
def src(tmp_path):
    """Two domains of two images each."""
    return image_tree(tmp_path / "src", size=(40, 40), colour=lambda i: (i * 90, 20, 200))


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("where", ["inside", "same", "parent", "file-uri"])
def test_prepare_refuses_an_out_that_overlaps_the_source(src, capsys, where):
    out = {"inside": str(src / "c"), "same": str(src), "parent": str(src.parent),
           "file-uri": f"file://{src}/shards"}[where]
    before = _tree(src)
    _one_line(["prepare", str(src), out, "--workers", "1"], capsys,
              "is, contains or lies inside the source")
    assert _tree(src) == before  # no new "domain" in the source


def test_overlap_of_uris_compares_bucket_and_key():
    assert folders.overlaps("s3://bucket/data", "s3://bucket/data/shards")
    assert folders.overlaps("s3://bucket/data/", "s3://bucket//data")
    assert folders.overlaps("s3://bucket/data/shards", "s3://bucket")
    assert not folders.overlaps("s3://bucket/data", "s3://bucket/database")
    assert not folders.overlaps("s3://bucket/data", "s3://other/data")
    assert not folders.overlaps("s3://bucket/data", "gs://bucket/data")
    assert not folders.overlaps("/data", "s3://data")  # a local tree never overlaps a bucket
    assert not folders.overlaps(".", "s3://bucket/x")  # not resolved against the cwd


@pytest.mark.parametrize("args, needle", [
    (["--img-size", "100"], "--img-size: must be a power of two >= 32"),
    (["--img-size", "16"], "--img-size: must be a power of two >= 32"),
])
def test_prepare_refuses_sizes_no_model_takes(src, tmp_path, capsys, args, needle):
    _one_line(["prepare", str(src), str(tmp_path / "out"), *args], capsys, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, needle", [
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--shard-mb", "0"], "argument --shard-mb: must be > 0"),
    (["--img-size", "0"], "argument --img-size: must be >= 1"),
])
def test_prepare_refuses_bad_numbers(src, tmp_path, capsys, args, needle):
    _usage_error(["prepare", str(src), str(tmp_path / "out"), *args], capsys, needle)
    assert not (tmp_path / "out").exists()


def test_prepare_keeps_an_existing_shard_set_unless_overwrite(src, tmp_path, capsys):
    out = tmp_path / "out"
    first = prep.prepare(str(src), str(out), workers=1, group_size=1, shard_mb=1e-6)
    assert len(first["files"]) == 4  # one file per image
    manifest = (out / shards.MANIFEST).read_bytes()
    _one_line(["prepare", str(src), str(out), "--workers", "1"], capsys,
              "already holds a shard set", "--overwrite")
    assert (out / shards.MANIFEST).read_bytes() == manifest
    assert cli.main(["prepare", str(src), str(out), "--workers", "1", "--overwrite"]) == 0
    capsys.readouterr()
    second = shards.read_manifest(str(out))
    assert second["counts"] == [2, 2] and len(second["files"]) == 1
    # The old set's extra part files are gone: OUT holds exactly the new set.
    assert _tree(out) == sorted([shards.MANIFEST, second["files"][0]["path"]])


def test_prepare_replaces_an_interrupted_set_but_not_foreign_files(src, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00007.parquet").write_bytes(b"left by a killed run")
    prep.prepare(str(src), str(out), workers=1)
    assert not (out / "part-00007.parquet").exists()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"precious")
    _one_line(["prepare", str(src), str(other)], capsys, "holds 'holiday.jpg'", "not a shard set")
    assert _tree(other) == ["holiday.jpg"]
    _one_line(["prepare", str(src), str(other / "holiday.jpg")], capsys, "is not a directory")


# ---------------------------------------------------------------- tune


def _space(tmp_path, metric: str):
    path = tmp_path / "space.toml"
    path.write_text(f'[tune]\nmetric = "{metric}"\n[scheduler]\nkind = "fifo"\n'
                    "[loss]\nlambda_ds = { grid = [1.0, 2.0] }\n")
    return path


@pytest.mark.parametrize("flag", ["--num-samples", "--max-concurrent", "--workers-per-trial"])
def test_tune_refuses_zero_counts(tmp_path, capsys, flag):
    storage = tmp_path / "runs"
    _usage_error(["tune", "--space", "quick", "--storage", str(storage), flag, "0"], capsys,
                 f"argument {flag}: must be >= 1, got 0")
    assert not storage.exists()


@pytest.mark.parametrize("dry_run", [True, False])
def test_tune_refuses_a_metric_no_trial_reports(tmp_path, capsys, dry_run):
    storage = tmp_path / "runs"
    argv = ["tune", "--space", str(_space(tmp_path, "G/cyc")), "--storage", str(storage)]
    err = _one_line([*argv, *(["--dry-run"] if dry_run else [])], capsys,
                    "tune.metric: no trial reports 'G/cyc'", "G/latent_cyc", "fid_quick")
    assert "lr/generator" in err
    assert not storage.exists()  # refused before Ray or any sweep folder
    assert cli.main([*argv[:2], str(_space(tmp_path, "G/latent_cyc")), "--dry-run"]) == 0


def test_the_metric_names_are_what_a_training_step_reports():
    state = TrainState.create(tiny_config(), "cpu")
    stats = train_step(state, random_batch(state.cfg))
    lrs = {f"lr/{name}" for name in state.optims}
    assert set(reported_metrics()) == {*stats, *lrs, "images_per_s", "eta_s", EVAL_METRIC}
    assert torch.isfinite(torch.stack(list(stats.values()))).all()


@pytest.mark.parametrize("cap, expected", [
    (0, "# batch: 8 images per step in total, 4 per worker over 2 worker(s) (in one pass)"),
    (3, "# batch: 8 images per step in total, 4 per worker over 2 worker(s) "
        "(2 accumulation rounds of at most 3)"),
    (4, "# batch: 8 images per step in total, 4 per worker over 2 worker(s) (in one pass)"),
])
def test_train_dry_run_says_how_a_step_is_batched(capsys, cap, expected):
    assert cli.main(["train", "--dry-run", "--num-workers", "2",
                     "--set", f"data.batch_per_worker={cap}"]) == 0
    assert expected in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("argv, words", [
    (["--num-workers", "3"], ["data.batch_size", "8", "--num-workers 3"]),
    (["--num-workers", "2", "--set", "data.batch_size=5"], ["data.batch_size", "5", "2"]),
    (["--num-workers", "2-16"], ["--num-workers", "16", "8"]),
])
def test_a_total_batch_the_workers_cannot_share_is_one_line(capsys, argv, words):
    assert cli.main(["train", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


# ---------------------------------------------------------------- integer arguments


@pytest.mark.parametrize("argv, message", [
    (["train", "--dry-run", "--num-workers", "-1"], "argument --num-workers: must be >= 1, got -1"),
    (["train", "--dry-run", "--num-workers", "x"],
     "argument --num-workers: expected an integer >= 1, got 'x'"),
    (["train", "--dry-run", "--num-workers", "2-x"],
     "argument --num-workers: MIN-MAX must be two integers >= 1, got '2-x'"),
    (["demo", "--num-workers", "0"], "argument --num-workers: must be >= 1, got 0"),
    (["sample", "--checkpoint", "c.pt", "--src", "s", "--ref", "r", "--out", "o", "--seed", "-5"],
     "argument --seed: must be >= 0 and <= 4294967295 (numpy's seed range), got -5"),
    (["align", "--inp", "i", "--out", "o", "--lm-mean", "missing.npz", "--img-size", "100"],
     "argument --img-size: must be >= 64 and <= 1024 and a multiple of 64 (the FAN's 64 px "
     "heatmaps), got 100"),
    (["align", "--inp", "i", "--out", "o", "--img-size", "4096"], "<= 1024"),
])
def test_integer_arguments_name_the_flag_the_value_and_the_rule(tmp_path, capsys, argv, message,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    _usage_error(argv, capsys, message)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_more_workers_than_images_per_step_says_so(capsys):
    err = _one_line(["train", "--dry-run", "--num-workers", "1000000"], capsys,
                    "--num-workers: up to 1000000 workers, but data.batch_size is 8")
    assert "multiple of 1000000" not in err
    _one_line(["train", "--dry-run", "--num-workers", "3"], capsys, "(1, 2, 4, 8)")


# ---------------------------------------------------------------- outputs kept unless --overwrite


def test_eval_keeps_the_results_of_an_earlier_eval_unless_overwrite(tmp_path, capsys):
    checkpoint = save_synthetic_checkpoint(tmp_path / "c.pt")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "LPIPS_00000_reference.json").write_text('{"from": "an earlier eval"}')
    _one_line(["eval", "--checkpoint", str(checkpoint), "--out", str(out), "--num-workers", "0",
               "--device", "cpu", "--feature-weights", "random"], capsys,
              "LPIPS_00000_reference.json: already exists and is kept; pass --overwrite")
    assert [p.name for p in out.iterdir()] == ["LPIPS_00000_reference.json"]
    assert (out / "LPIPS_00000_reference.json").read_text() == '{"from": "an earlier eval"}'


@pytest.mark.parametrize("name", ["../escaped", "a/b", ".hidden", "/abs"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_tune_name_is_a_plain_folder_name_like_a_run_name(tmp_path, capsys, monkeypatch, name,
                                                          dry_run):
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "runs"
    _one_line(["tune", "--space", str(_space(tmp_path, "G/latent_cyc")), "--storage",
               str(storage), "--name", name, *(["--dry-run"] if dry_run else [])], capsys,
              f"--name {name!r}: must be a plain folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.toml"]  # nothing written


# ---------------------------------------------------------------- files that are not what they should be


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["not a TOML file", "byte 0x89 at offset 0"]),
    ('name = "caf\u00e9"\n'.encode("latin-1"), ["not a TOML file", "byte 0xe9 at offset 11"]),
])
def test_an_experiment_file_that_is_not_utf8_text_is_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "exp.toml"
    path.write_bytes(content)
    _one_line(["train", "--dry-run", "--experiment", str(path)], capsys, str(path), *words)


def test_an_official_checkpoint_flag_on_our_file_of_other_widths_is_one_line(tmp_path, capsys):
    checkpoint = save_synthetic_checkpoint(tmp_path / "c.pt")  # dim_in 8; toy has 16
    err = _one_line(["eval", "--official-checkpoint", str(checkpoint), "--experiment", "toy",
                     "--num-workers", "0", "--device", "cpu", "--out", str(tmp_path / "o")],
                    capsys, f"checkpoint {checkpoint}: nets.", "in the file but the configured "
                    "model expects", "in the checkpoint but 16 in the config")
    assert "size mismatch" not in err


@pytest.mark.parametrize("kind", ["truncated", "png"])
def test_fid_inception_path_that_is_no_weights_file_is_one_line(tmp_path, capsys, kind):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (10, 20, 30 + i)).save(tmp_path / name / f"{i}.png")
    weights = tmp_path / "inception.pth"
    if kind == "truncated":
        torch.save({"fc.weight": torch.zeros(64, 64)}, weights)
        weights.write_bytes(weights.read_bytes()[:200])
    else:
        Image.new("RGB", (8, 8)).save(weights, format="PNG")
    needle = ("truncated or corrupt" if kind == "truncated" else
              "it holds a PNG image); give torchvision's inception_v3_google-0cc3c7bd.pth "
              "(eval.inception_path)")
    _one_line(["fid", str(tmp_path / "a"), str(tmp_path / "b"), "--inception-path", str(weights),
               "--device", "cpu"], capsys, str(weights), needle)
