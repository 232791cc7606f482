"""train.keep_best (the run keeps its best fid_quick checkpoint) and `eval --run` (by step)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from stargan_ray import cli, train
from stargan_ray.checkpoint import load_ema_networks, read_config, save_checkpoint
from stargan_ray.config import ConfigError
from stargan_ray.data.synthetic import generate
from stargan_ray.engine import TrainState
from stargan_ray.metrics import by_step
from stargan_ray.metrics.evaluator import EvalOptions, evaluate
from stargan_ray.train import WorkerSpec, worker

from .helpers import LoopLogger, tiny_config, tiny_eval_config

STEPS = (2, 4, 6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with complete checkpoints at STEPS (different EMA weights) and a broken one."""
    root = tmp_path_factory.mktemp("by_step")
    data_dir, val = generate(root / "data", img_size=32, num_domains=2, n_train=4, n_val=2)
    cfg = tiny_eval_config(data_dir, val, **{"eval.kid_subsets": 4})
    run_dir = root / "runs" / "tiny"
    state = TrainState.create(cfg, "cpu", seed=0)
    for step in STEPS:
        state.step = step
        with torch.no_grad():  # a different generator per step, so the metrics differ
            for p in state.nets_ema.generator.parameters():
                p.mul_(0.9).add_(0.01 * step)
        save_checkpoint(state, run_dir / f"checkpoint_{step:08d}" / "checkpoint.pt")
    broken = run_dir / "checkpoint_00000008"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    return root, run_dir


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_run_writes_evaluate_numbers_by_step(run, capsys, monkeypatch):
    root, run_dir = run
    monkeypatch.setenv("STARGAN_RAY_CACHE", str(root / "cache"))
    rc = cli.main(["eval", "--run", str(run_dir), "--num-workers", "0", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "skipping broken checkpoint" in err and "checkpoint_00000008" in err
    rows = _rows(run_dir / "metrics" / "by_step.csv")
    assert [int(r["step"]) for r in rows] == list(STEPS)
    assert list(rows[0]) == ["step", "FID_latent/mean", "FID_reference/mean",
                             "LPIPS_latent/mean", "LPIPS_reference/mean", "KID_latent/mean",
                             "KID_reference/mean"]
    expected = {}
    for step, row in zip(STEPS, rows):
        path = run_dir / f"checkpoint_{step:08d}" / "checkpoint.pt"
        cfg, nets = load_ema_networks(path, read_config(path))
        results = evaluate(nets, cfg, step=step, mode="both",
                           opts=EvalOptions(cache_dir=root / "cache" / "fid_stats",
                                            progress=False))
        for key, value in row.items():
            if key != "step":
                assert float(value) == pytest.approx(results[key], rel=1e-9, abs=1e-12), key
        expected[step] = results["FID_latent/mean"]
    assert (run_dir / "metrics" / "by_step.png").stat().st_size > 1000
    assert (run_dir / "metrics" / "FID_00004_latent.json").is_file()
    best = min(expected, key=expected.get)
    assert f"best step: {best} (FID_latent/mean" in out
    assert len(set(expected.values())) == len(STEPS)  # the checkpoints really differ

    # Again: the results of the first eval are kept unless --overwrite.
    csv_before = (run_dir / "metrics" / "by_step.csv").read_bytes()
    again = ["eval", "--run", str(run_dir), "--every", "2", "--mode", "latent",
             "--num-workers", "0", "--device", "cpu"]
    assert cli.main(again) == 2
    err = capsys.readouterr().err
    assert "FID_00002_latent.json: already exists and is kept; pass --overwrite" in err, err
    assert (run_dir / "metrics" / "by_step.csv").read_bytes() == csv_before
    # --every 2: the 1st and 3rd complete checkpoints, latent only.
    rc = cli.main([*again, "--overwrite"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rows = _rows(run_dir / "metrics" / "by_step.csv")
    assert [int(r["step"]) for r in rows] == [STEPS[0], STEPS[2]]
    assert list(rows[0]) == ["step", "FID_latent/mean", "LPIPS_latent/mean", "KID_latent/mean"]
    for step, row in zip((STEPS[0], STEPS[2]), rows):
        assert float(row["FID_latent/mean"]) == pytest.approx(expected[step], rel=1e-9)
    best = min((STEPS[0], STEPS[2]), key=expected.get)
    assert f"best step: {best} " in out


@pytest.mark.parametrize("argv, message", [
    (["--every", "2", "--checkpoint", "x.pt"], "--every: only with --run"),
    (["--run", "{empty}"], "no complete checkpoint"),
    (["--run", "{missing}"], "no such folder"),
    (["--run", "{empty}", "--out", "o"], "--out: eval --run writes RUN_DIR/metrics"),
])
def test_eval_run_user_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in argv]
    rc = cli.main(["eval", *argv, "--num-workers", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("other", [["--checkpoint", "x.pt"], ["--official-checkpoint", "x"]])
def test_eval_run_excludes_the_other_sources(tmp_path, capsys, other):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--run", str(tmp_path), *other])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------- keep_best


def test_keep_best_keeps_the_lowest_fid_quick(tmp_path):
    run_dir = str(tmp_path / "run")
    reports = [(2, {"loss": 1.0}), (4, {"fid_quick": 50.0}), (6, {"fid_quick": 60.0}),
               (8, {"fid_quick": 40.0}), (10, {"fid_quick": math.nan}),
               (12, {"fid_quick": 40.0}), (14, {})]
    kept = [train.keep_best(run_dir, step, metrics, lambda f, s=step: f.write(f"state {s}".encode()),
                            source=f"checkpoint_{step:08d}" if step % 4 == 0 else None)
            for step, metrics in reports]
    assert kept == [False, True, False, True, False, False, False]
    record = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert record == {"step": 8, "fid_quick": 40.0, "source": "checkpoint_00000008",
                      "checkpoint": "checkpoint_00000008/checkpoint.pt"}
    assert sorted(p.name for p in (tmp_path / "run" / "best").iterdir()) == [
        "best.json", "checkpoint_00000008"]  # the step-4 copy is gone, no temporary files left
    step, path = train.best_checkpoint(run_dir)
    assert step == 8 and open(path, "rb").read() == b"state 8"
    # A resumed run continues from the recorded best.
    assert not train.keep_best(run_dir, 16, {"fid_quick": 45.0}, lambda f: f.write(b"x"))
    assert train.keep_best(run_dir, 18, {"fid_quick": 39.0}, lambda f: f.write(b"y"))
    assert train.read_best(run_dir)["source"] is None
    assert train.read_best(str(tmp_path / "other")) is None


def test_eval_run_includes_a_best_copy_whose_folder_was_rotated(run, tmp_path):
    _, run_dir = run
    copy = tmp_path / "run"
    copy.mkdir()
    src = run_dir / "checkpoint_00000004" / "checkpoint.pt"
    (copy / "checkpoint_00000006").mkdir()
    (copy / "checkpoint_00000006" / "checkpoint.pt").write_bytes(
        (run_dir / "checkpoint_00000006" / "checkpoint.pt").read_bytes())
    assert train.keep_best(str(copy), 4, {"fid_quick": 1.0}, lambda f: f.write(src.read_bytes()),
                           source="checkpoint_00000004")
    found, broken = train.run_checkpoints(str(copy))
    assert [s for s, _ in found] == [4, 6] and broken == []
    assert found[0][1].endswith("best/checkpoint_00000004/checkpoint.pt")


def test_keep_best_config():
    assert tiny_config().train.keep_best is False
    assert tiny_config(**{"train.keep_best": True, "train.eval_every": 100}).train.keep_best
    with pytest.raises(ConfigError) as err:
        tiny_config(**{"train.keep_best": True, "train.eval_every": 401,
                       "train.total_iters": 400})
    message = str(err.value)
    assert "train.keep_best" in message and "train.eval_every" in message
    assert "train.total_iters" in message and "\n" not in message
    with pytest.raises(ConfigError, match="train.keep_best: expected bool"):
        tiny_config(**{"train.keep_best": "yes"})


def _outputs(fids):
    """The loop's outputs with crafted fid_quick values (no grids)."""
    return worker.Outputs(LoopLogger(), samples=lambda state: {},
                          evaluate=lambda state: {"fid_quick": fids[state.step]})


@pytest.mark.parametrize("fids, best, source", [({3: 5.0, 6: 7.0}, 3, None),
                                                ({3: 5.0, 6: 4.0}, 6, "checkpoint_00000006")])
def test_the_train_loop_keeps_its_best_fid_quick_step(tmp_path, monkeypatch, fids, best, source):
    """train.worker._train on rank 0 without Ray: eval at steps 3 and 6, checkpoints at 2, 4, 6."""
    import ray.train

    from stargan_ray.checkpoint import verify_checkpoint

    from .helpers import random_batch, recording_report

    reports = []
    monkeypatch.setattr(ray.train, "report", recording_report(reports))
    monkeypatch.setattr(ray.train, "get_preemption_info", lambda: None)  # no notice
    cfg = tiny_config(**{"train.total_iters": 6, "train.save_every": 2, "train.eval_every": 3,
                         "train.print_every": 3, "train.sample_every": 100,
                         "train.keep_best": True})
    state = TrainState.create(cfg, "cpu", seed=0)
    batches = iter([random_batch(cfg, seed=i) for i in range(6)])
    run_dir = str(tmp_path / "run")
    outputs = _outputs(fids)
    logger = outputs.logger
    worker._train(state, batches, outputs, WorkerSpec(cfg, run_dir, "t", data=None), 0, 1)
    assert reports == [(2, True), (3, False), (4, True), (6, True)]
    saved = [("checkpoint_00000002", 2, "latest"), ("best/checkpoint_00000003", 3, "best"),
             ("checkpoint_00000004", 4, "latest"), ("checkpoint_00000006", 6, "latest")]
    if best == 6:  # a new best at 6: after that step's checkpoint
        saved.append(("best/checkpoint_00000006", 6, "best"))
    assert logger.saved == [(f"{run_dir}/{folder}", s, (alias,)) for folder, s, alias in saved]
    record = train.read_best(run_dir)
    assert record == {"step": best, "fid_quick": fids[best], "source": source,
                      "checkpoint": f"checkpoint_{best:08d}/checkpoint.pt"}
    step, path = train.best_checkpoint(run_dir)
    assert step == best and verify_checkpoint(path, cfg, best) == best
    assert len(list((tmp_path / "run" / "best").iterdir())) == 2  # best.json and one copy
