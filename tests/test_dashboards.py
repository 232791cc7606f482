"""What a run shows in W&B and TensorBoard, read back with their own formats.

W&B runs offline; their records are read from the run's .wandb file (wandb 0.31 ships no Python
reader, so a small one is below). TensorBoard's event files are read with TensorBoard's own
EventAccumulator.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stargan_ray import cli
from stargan_ray.checkpoint import save_checkpoint
from stargan_ray.dashboards import CheckpointArtifacts, artifact_name, task_rows
from stargan_ray.data.synthetic import generate
from stargan_ray.engine import TrainState
from stargan_ray.plots import D_LATENT, G_LATENT, read_jsonl

from .helpers import offline_wandb_run as _offline_run
from .helpers import tiny_config, tiny_eval_config, wandb_records
from .helpers import wandb_history as _history
from .helpers import wandb_of_type as _of_type

def _accumulator(folder: Path):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    acc.Reload()
    return acc


# ---------------------------------------------------------------- a real training run


@pytest.fixture(scope="module")
def run_dir(ray_session, tmp_path_factory):
    """A 1-worker Ray Train run of 8 steps with W&B offline: prints at 2, 4, 6, 8, samples and
    checkpoints at 4 and 8, fid_quick (seeded random Inception) at 4 and 8, the best kept."""
    from stargan_ray.train import RunOptions, run_training

    root = tmp_path_factory.mktemp("dashboards")
    train_dir, val_dir = generate(root / "data", img_size=32, num_domains=2, n_train=4, n_val=2)
    cfg = tiny_eval_config(train_dir, val_dir, **{
        "train.total_iters": 8, "train.print_every": 2, "train.sample_every": 4,
        "train.save_every": 4, "train.eval_every": 4, "train.keep_best": True,
        "train.keep_checkpoints": 5, "eval.quick_sources": 2, "eval.quick_outs": 2,
        "eval.validation": "inline"})  # beside: tests/test_validation.py
    run_training(cfg, RunOptions(num_workers=1, cpus_per_worker=1.0, storage=str(root / "runs"),
                                 name="dash", max_failures=0, wandb="offline"))
    return root / "runs" / "dash"


@pytest.mark.ray
def test_checkpoints_are_model_artifacts_with_latest_and_best(run_dir):
    records = wandb_records(_offline_run(run_dir))
    artifacts = [a for a in _of_type(records, "artifact") if a.type == "model"]
    assert {a.name for a in artifacts} == {artifact_name("dash")}
    meta = [json.loads(a.metadata) for a in artifacts]
    # Every checkpoint the run saved, in order; W&B gives each new version `latest`, so the
    # alias ends on the newest state (the best/ copy of a step is the same state).
    saved = [m["step"] for m in meta if Path(m["checkpoint"]).parent == run_dir]
    assert saved == [4, 8] and all("latest" in a.aliases for a in artifacts)
    assert [m["step"] for m in meta] == sorted(m["step"] for m in meta)
    best = json.loads((run_dir / "best" / "best.json").read_text())
    best_meta = [m for a, m in zip(artifacts, meta) if "best" in a.aliases][-1]
    assert best_meta["step"] == best["step"] and best_meta["fid_quick"] == best["fid_quick"]
    assert Path(best_meta["checkpoint"]).parent == run_dir / "best"
    assert all(np.isfinite(m["fid_quick"]) for m in meta)  # each save step was an eval step
    for a, m in zip(artifacts, meta):
        (entry,) = a.manifest.contents
        folder = Path(m["checkpoint"])
        assert entry.path == "checkpoint.pt" and not entry.ref  # local storage: a copy
        assert entry.size == (folder / "checkpoint.pt").stat().st_size
        assert folder.parent in (run_dir, run_dir / "best") and folder.name.endswith(
            f"{m['step']:08d}")


@pytest.mark.ray
def test_sample_grids_are_wandb_images_at_the_sample_steps(run_dir):
    history = _history(wandb_records(_offline_run(run_dir)))
    images = {(row["_step"], key) for row in history for key, value in row.items()
              if isinstance(value, dict) and value.get("_type") == "image-file"}
    assert images == {(s, f"samples/{k}") for s in (4, 8) for k in ("reference", "latent")}


@pytest.mark.ray
def test_tensorboard_holds_the_losses_the_grids_and_fid_quick(run_dir):
    acc = _accumulator(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    fids = {r["step"]: r["fid_quick"] for r in records if "fid_quick" in r}
    records = [r for r in records if "fid_quick" not in r]  # the print steps' records
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    for tag in (*D_LATENT, *G_LATENT):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [2, 4, 6, 8], tag
        np.testing.assert_allclose([e.value for e in events], [r[tag] for r in records],
                                   rtol=1e-6, err_msg=tag)
    assert {e.step: e.value for e in acc.Scalars("fid_quick")} == pytest.approx(fids)
    assert sorted(fids) == [4, 8]
    for name in ("reference", "latent"):
        events = acc.Images(f"samples/{name}")
        assert [e.step for e in events] == [4, 8]
        for e in events:  # the pixels of the PNG the run saved
            shown = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
            saved = np.asarray(Image.open(run_dir / "samples" / f"{e.step:06d}_{name}.png"))
            assert shown.shape == saved.shape and np.array_equal(shown, saved)


# ---------------------------------------------------------------- by reference, no Ray


def test_object_storage_checkpoints_are_references(tmp_path, monkeypatch):
    """An s3:// checkpoint is recorded by its URI (query left out), nothing copied or read."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="stargan-ray-test", name="refs", dir=str(tmp_path),
                     settings=wandb.Settings(silent=True, console="off"))
    artifacts = CheckpointArtifacts(run, "refs")
    uri = "s3://bucket/runs/refs/checkpoint_00000008?endpoint_override=127.0.0.1:9&scheme=http"
    artifacts.log(uri, 8, ("latest", "best"), fid_quick=12.5)
    artifacts.close()
    run.finish()
    wandb.teardown()  # finish() may return before wandb's service has written the records
    (artifact,) = _of_type(wandb_records(_offline_run(tmp_path)), "artifact")
    (entry,) = artifact.manifest.contents
    assert entry.ref == "s3://bucket/runs/refs/checkpoint_00000008/checkpoint.pt"
    assert entry.path == "checkpoint.pt" and not entry.local_path and entry.size == 0
    assert set(artifact.aliases) == {"latest", "best"} and artifact.type == "model"
    assert json.loads(artifact.metadata)["fid_quick"] == 12.5


# ---------------------------------------------------------------- late evaluations


def test_late_evaluations_picked_up_together_each_keep_a_wandb_row(tmp_path, monkeypatch):
    """Beside validation hands rank 0 several results at one log step: W&B keeps one value per
    key and step, so each must land on a step of its own, in order, none before a logged step."""
    import wandb

    from stargan_ray.train.logger import RunLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = RunLogger(tiny_config(), str(tmp_path / "run"),
                       run_name="late", wandb="offline")
    logger.log(2, {"D/latent_real": 0.5}, "step 2")
    logger.log(26, {"D/latent_real": 0.4}, "step 26")
    for step, fid in ((8, 30.0), (16, 20.0), (24, 10.0)):  # all three picked up at step 26
        logger.evaluation(step, {"fid_quick": fid})
    logger.log(28, {"D/latent_real": 0.3}, "step 28")
    logger.finish()
    wandb.teardown()
    history = _history(wandb_records(_offline_run(tmp_path / "run")))
    evals = [(r["_step"], r["eval_step"], r["fid_quick"]) for r in history if "fid_quick" in r]
    assert [e[1:] for e in evals] == [(8, 30.0), (16, 20.0), (24, 10.0)]
    assert [e[0] for e in evals] == sorted({e[0] for e in evals})  # distinct, increasing
    assert min(e[0] for e in evals) >= 26  # never before a step W&B has already
    assert [r["_step"] for r in history if "D/latent_real" in r] == [2, 26, 28]
    jsonl = [(r["step"], r["fid_quick"]) for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")
             if "fid_quick" in r]
    assert jsonl == [(8, 30.0), (16, 20.0), (24, 10.0)]


# ---------------------------------------------------------------- eval's table


def test_task_rows_follow_the_official_task_order():
    results = {"FID_latent/b2a": 2.0, "FID_latent/a2b": 1.0, "FID_latent/mean": 1.5,
               "KID_latent/a2b": 0.1, "LPIPS_latent/a2b": 0.3}
    assert task_rows(results, ["a", "b"]) == [["latent", "b", "a", 2.0, None, None],
                                              ["latent", "a", "b", 1.0, 0.1, 0.3]]


def test_eval_logs_a_wandb_table_and_tensorboard_scalars(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("STARGAN_RAY_CACHE", str(tmp_path / "cache"))
    train_dir, val_dir = generate(tmp_path / "data", img_size=32, num_domains=2, n_train=4,
                                  n_val=2)
    cfg = tiny_eval_config(train_dir, val_dir, **{"eval.kid_subsets": 4})
    state = TrainState.create(cfg, "cpu", seed=0)
    state.step = 6
    ckpt = save_checkpoint(state, tmp_path / "ckpt" / "checkpoint.pt")
    out = tmp_path / "eval"
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--num-workers", "0", "--device", "cpu",
                     "--mode", "latent", "--out", str(out), "--wandb", "offline"]) == 0
    wandb.teardown()  # as the process's exit would: the service writes the records out
    written = json.loads((out / "FID_00006_latent.json").read_text())
    lpips = json.loads((out / "LPIPS_00006_latent.json").read_text())

    offline = _offline_run(out)
    (row,) = [r for r in _history(wandb_records(offline)) if "eval/tasks" in r]
    assert row["_step"] == 6 and row["eval/tasks"]["_type"] == "table-file"
    assert row["FID_latent/mean"] == pytest.approx(written["FID_latent/mean"])
    table = json.loads((offline / "files" / row["eval/tasks"]["path"]).read_text())
    assert table["columns"] == ["mode", "source", "target", "FID", "KID", "LPIPS"]
    domains = [p.name for p in sorted(Path(val_dir).iterdir())]
    expected = [["latent", s, t, written[f"FID_latent/{s}2{t}"], written[f"KID_latent/{s}2{t}"],
                 lpips[f"LPIPS_latent/{s}2{t}"]]
                for t in domains for s in domains if s != t]
    assert table["data"] == expected

    acc = _accumulator(out)
    (event,) = acc.Scalars("FID_latent/mean")
    assert event.step == 6 and event.value == pytest.approx(written["FID_latent/mean"], rel=1e-6)


# ---------------------------------------------------------------- wandb:// checkpoints


@pytest.mark.parametrize("command", [
    ["translate", "in.png", "--to", "0", "--out", "OUT"],
    ["export", "--format", "torchscript", "--out", "OUT/m.pt"],
    ["serve"],
])
def test_wandb_checkpoints_offline_fail_with_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    assert cli.main([*argv, "--checkpoint", "wandb://me/proj/model-afhq:best"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(
        "stargan-ray: error: --checkpoint wandb://me/proj/model-afhq:best: W&B is offline")


def test_a_malformed_or_unreachable_wandb_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert cli.main(["translate", "x.png", "--to", "0", "--out", str(tmp_path / "o"),
                     "--checkpoint", "wandb://me/model-afhq"]) == 2
    assert "expected wandb://ENTITY/PROJECT/NAME:ALIAS" in capsys.readouterr().err
    # No key and a server that refuses connections: the W&B API's own error, on one line.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert cli.main(["translate", "x.png", "--to", "0", "--out", str(tmp_path / "o"),
                     "--checkpoint", "wandb://me/proj/model-afhq:latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot fetch the W&B artifact" in err
