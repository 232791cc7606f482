"""eval.validation: fid_quick beside training (Ray validation tasks) and inline, on real Ray runs.

Two 1-worker runs of one tiny config, beside and inline: the same training (seeded), fid_quick at
steps 8, 16 and 24, the best kept; beside, also the full evaluation at step 24
(train.full_eval_every; at the last step, so that it delays no other validation). Beside, the
worker holds 1 CPU and the validation task the other one of the machine's two cores.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from stargan_ray.config import ConfigError, from_dict
from stargan_ray.data.synthetic import generate
from stargan_ray.plots import read_jsonl
from stargan_ray.train.validation import RECORDS_DIR, fits_beside, task_resources

from .helpers import (intra_op_threads, offline_wandb_run, run_options, tiny_config,
                      tiny_eval_config, wandb_history, wandb_records)

EVAL_STEPS = [8, 16, 24]
FULL_EVAL_STEPS = [24]


def _config(root: Path, validation: str, **overrides):
    train_dir, val_dir = root / "data" / "train", root / "data" / "val"
    if not train_dir.exists():
        generate(root / "data", img_size=32, num_domains=2, n_train=4, n_val=4)
    return tiny_eval_config(train_dir, val_dir, **{
        "train.total_iters": 24, "train.print_every": 2, "train.sample_every": 1000,
        "train.save_every": 24, "train.eval_every": 8, "train.keep_best": True,
        "train.keep_checkpoints": 1, "eval.quick_sources": 4, "eval.quick_outs": 2,
        "eval.validation": validation, "eval.validation_cpus": 1.0, **overrides})


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """The same run beside and inline: {mode: (run folder, config, ray.train.Result)}."""
    from stargan_ray.train import run_training

    root = tmp_path_factory.mktemp("validation")
    out = {}
    for mode in ("beside", "inline"):
        full = {"train.full_eval_every": 24} if mode == "beside" else {}
        cfg = _config(root, mode, **full)
        result = run_training(cfg, run_options(root / "runs", mode, wandb="offline"), note=None)
        out[mode] = (root / "runs" / mode, cfg, result)
    return out


def _fids(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["fid_quick"] for r in read_jsonl(run_dir / "metrics.jsonl")
            if "fid_quick" in r}


def _log_times(run_dir: Path) -> list[float]:
    return [r["time"] for r in read_jsonl(run_dir / "metrics.jsonl") if "images_per_s" in r]


@pytest.mark.ray
def test_beside_numbers_equal_inline_numbers_for_the_same_checkpoint(runs):
    from stargan_ray.checkpoint import load_ema_networks
    from stargan_ray.train.quick_eval import quick_eval

    beside, inline = _fids(runs["beside"][0]), _fids(runs["inline"][0])
    assert sorted(beside) == sorted(inline) == EVAL_STEPS
    assert all(math.isfinite(v) for v in beside.values())
    assert beside == inline  # same training, same function and seeds: equal, not close
    # and equal to fid_quick of the kept checkpoint computed here, in one process
    run_dir, cfg, _ = runs["beside"]
    best = json.loads((run_dir / "best" / "best.json").read_text())
    _, nets_ema = load_ema_networks(run_dir / "best" / best["checkpoint"], cfg, "cpu")
    with intra_op_threads(1):  # as the worker and the task: the same float rounding
        assert quick_eval(nets_ema, cfg, "cpu") == {"fid_quick": beside[best["step"]]}


@pytest.mark.ray
def test_validation_results_are_attached_to_their_checkpoints_in_ray(runs):
    run_dir, _, result = runs["beside"]
    fids = _fids(run_dir)
    (last,) = [m for c, m in result.best_checkpoints if Path(c.path).name == "checkpoint_00000024"]
    assert last["fid_quick"] == fids[24]
    assert not list((run_dir / RECORDS_DIR).glob("*.json"))  # every record was logged


@pytest.mark.ray
def test_keep_best_chooses_from_the_validated_metrics(runs):
    from stargan_ray.checkpoint import verify_checkpoint

    for mode in ("beside", "inline"):
        run_dir, cfg, _ = runs[mode]
        fids = _fids(run_dir)
        best = json.loads((run_dir / "best" / "best.json").read_text())
        step = min(EVAL_STEPS, key=lambda s: (fids[s], s))
        assert (best["step"], best["fid_quick"]) == (step, fids[step]), mode
        assert verify_checkpoint(run_dir / "best" / best["checkpoint"], cfg, step) == step
    assert json.loads((runs["beside"][0] / "best" / "best.json").read_text())["source"] == \
        f"checkpoint_{step:08d}"  # beside: every evaluated step is a checkpoint


@pytest.mark.ray
def test_beside_results_reach_tensorboard_and_wandb_at_their_steps(runs):
    from tensorboard.backend.event_processing import event_accumulator

    run_dir = runs["beside"][0]
    fids = _fids(run_dir)
    acc = event_accumulator.EventAccumulator(str(run_dir))  # events beside metrics.jsonl
    acc.Reload()
    assert {e.step: e.value for e in acc.Scalars("fid_quick")} == pytest.approx(fids, rel=1e-6)
    history = wandb_history(wandb_records(offline_wandb_run(run_dir)))
    rows = [r for r in history if "fid_quick" in r]
    assert {r["eval_step"]: r["fid_quick"] for r in rows} == fids


def _full_evaluation(nets_ema, cfg, step: int) -> dict[str, float]:
    """The full evaluation as `stargan-ray eval` runs it (both modes), in this process."""
    from stargan_ray.metrics.evaluator import EvalOptions, evaluate

    # As the task: one thread and networks built for the call. A network cached by an earlier
    # test was built (random weights, batch norms calibrated) under another thread count, which
    # moves the features by float rounding.
    with intra_op_threads(1):
        results = evaluate(nets_ema, cfg, step=step, mode="both",
                           opts=EvalOptions(progress=False, keep_networks=False))
    return {k: v for k, v in results.items() if v is not None}


@pytest.mark.ray
def test_a_full_evaluation_runs_beside_with_the_evaluators_numbers(runs):
    """Step 24 asks for both evaluations: one task, one record (that the intervals count on
    their own is test_each_step_asks_its_task_for_the_evaluations_due_at_it)."""
    from stargan_ray.checkpoint import load_ema_networks

    run_dir, cfg, _ = runs["beside"]
    records = read_jsonl(run_dir / "metrics.jsonl")
    full = {r["step"]: r for r in records if "FID_latent/mean" in r}
    assert sorted(full) == FULL_EVAL_STEPS
    assert full[24]["fid_quick"] == _fids(run_dir)[24]  # one record with both
    _, nets_ema = load_ema_networks(run_dir / "checkpoint_00000024" / "checkpoint.pt", cfg, "cpu")
    expected = _full_evaluation(nets_ema, cfg, 24)
    assert {"FID_reference/mean", "LPIPS_latent/mean", "LPIPS_reference/mean"} <= set(expected)
    assert {k: full[24][k] for k in expected} == expected  # equal, not close
    assert not any("FID_latent/mean" in r for r in read_jsonl(runs["inline"][0] / "metrics.jsonl"))
    rows = wandb_history(wandb_records(offline_wandb_run(run_dir)))
    assert sorted(r["eval_step"] for r in rows if "FID_latent/mean" in r) == FULL_EVAL_STEPS


@pytest.mark.ray
def test_the_loop_does_not_wait_for_validation(runs):
    """Print intervals of the beside run: none above 3x the median (a ratio within one run)."""
    times = _log_times(runs["beside"][0])
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 11
    assert max(gaps) <= 3 * statistics.median(gaps), gaps


def test_validation_keys_are_checked_at_the_door():
    assert tiny_config().eval.validation == "beside"
    with pytest.raises(ConfigError, match="eval.validation: must be one of beside, inline"):
        tiny_config(**{"eval.validation": "later"})
    with pytest.raises(ConfigError, match="eval.validation_gpus"):
        tiny_config(**{"eval.validation_gpus": -0.5})
    with pytest.raises(ConfigError, match="eval.validation_cpus"):
        tiny_config(**{"eval.validation_cpus": -1.0})


def test_the_task_takes_a_spare_gpu_on_a_gpu_cluster_and_must_fit_beside_the_workers():
    cfg = tiny_config()
    assert task_resources(cfg, gpus_per_worker=1.0) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert task_resources(cfg, gpus_per_worker=0.0) == {"num_cpus": 1.0, "num_gpus": 0.0}
    task = task_resources(cfg, 1.0)
    eight_gpus = {"CPU": 64.0, "GPU": 8.0}
    assert fits_beside(eight_gpus, 7, {"CPU": 8, "GPU": 1}, task)
    assert not fits_beside(eight_gpus, 8, {"CPU": 8, "GPU": 1}, task)
    assert fits_beside({"CPU": 2.0}, 1, {"CPU": 1}, task_resources(cfg, 0.0))
    assert not fits_beside({"CPU": 2.0}, 2, {"CPU": 1}, task_resources(cfg, 0.0))


@pytest.mark.ray
def test_a_run_whose_cluster_has_no_room_beside_evaluates_inline(ray_session, tmp_path):
    """The session's cluster has 8 CPUs: 8 one-CPU workers leave none for the task."""
    from stargan_ray.train.spec import WorkerSpec
    from stargan_ray.train.validation import plan_validation

    cfg = tiny_config(**{"train.eval_every": 2, "train.total_iters": 4})
    spec = WorkerSpec(cfg, str(tmp_path), "t", data=None)
    full, config = plan_validation(spec, run_options(tmp_path, "t", num_workers=8))
    assert config is None and full.cfg.eval.validation == "inline"
    asked = WorkerSpec(replace(cfg, train=replace(cfg.train, full_eval_every=4)), str(tmp_path),
                       "t", data=None)
    inline, config = plan_validation(asked, run_options(tmp_path, "t", num_workers=8))
    assert config is None and inline.cfg.train.full_eval_every == 0  # none inline
    assert from_dict(inline.cfg.to_dict()) == inline.cfg  # what its checkpoints store
    room, config = plan_validation(spec, run_options(tmp_path, "t", num_workers=1))
    assert config is not None and room.cfg.eval.validation == "beside"
    assert config.ray_remote_kwargs == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_tune_trials_evaluate_inline_whatever_the_experiment_says():
    """ASHA and PBT act on the fid_quick a report carries: a trial's is its own step's."""
    from stargan_ray.tune.trial import trial_config

    base = tiny_config(**{"eval.validation": "beside", "train.eval_every": 4,
                          "train.full_eval_every": 8}).to_dict()
    cfg = trial_config(base, {"loss.lambda_ds": 2.0})
    assert cfg.eval.validation == "inline" and cfg.loss.lambda_ds == 2.0
    assert cfg.train.eval_every == 4
    assert cfg.train.full_eval_every == 0  # beside only; the checkpoints' config stays valid
    assert from_dict(cfg.to_dict()) == cfg


def test_full_evaluations_are_refused_inline_with_both_keys_named():
    assert tiny_config().train.full_eval_every == 0  # never, unless asked
    tiny_config(**{"train.full_eval_every": 10})  # beside, the default
    with pytest.raises(ConfigError, match=r"train.full_eval_every: .*eval.validation"):
        tiny_config(**{"train.full_eval_every": 10, "eval.validation": "inline"})
    tiny_config(**{"train.full_eval_every": 0, "eval.validation": "inline"})
    with pytest.raises(ConfigError, match="train.full_eval_every: must be >= 0"):
        tiny_config(**{"train.full_eval_every": -1})


def test_each_step_asks_its_task_for_the_evaluations_due_at_it():
    """eval_every and full_eval_every count on their own; a step due for both asks for both."""
    from stargan_ray.train.validation import BesideResults
    from stargan_ray.train.worker import Due

    t = tiny_config(**{"train.total_iters": 24, "train.eval_every": 8,
                       "train.full_eval_every": 12}).train
    asked = {s: BesideResults.request(Due.at(s, t)) for s in range(1, t.total_iters + 1)}
    assert {s: r.fn_kwargs for s, r in asked.items() if r} == {
        8: {"quick": True, "full": False}, 12: {"quick": False, "full": True},
        16: {"quick": True, "full": False}, 24: {"quick": True, "full": True}}


class _Logger:
    """What BesideResults hands the run's logger."""

    def __init__(self) -> None:
        self.evaluations, self.saved = [], []

    def evaluation(self, step, metrics):
        self.evaluations.append((step, metrics))

    def checkpoint_saved(self, folder, step, metrics, aliases):
        self.saved.append((folder, step, aliases))


def _saved_checkpoint(cfg, run_dir: Path, step: int):
    """A seeded TrainState at step, saved as run_dir's checkpoint folder: (state, its Ray
    Checkpoint), what the validation task is handed."""
    import ray.train

    from stargan_ray.checkpoint import save_checkpoint
    from stargan_ray.engine import TrainState

    state = TrainState.create(cfg, "cpu", seed=3)
    state.step = step
    folder = run_dir / f"checkpoint_{step:08d}"
    save_checkpoint(state, folder / "checkpoint.pt")
    return state, ray.train.Checkpoint.from_directory(str(folder))


def test_the_validation_function_gives_the_inline_number_and_rank_0_logs_it(tmp_path,
                                                                              monkeypatch):
    """validate_checkpoint (what the Ray task runs) on a checkpoint folder, without Ray."""
    monkeypatch.setenv("STARGAN_RAY_CACHE", str(tmp_path / "cache"))
    from stargan_ray.train.quick_eval import quick_eval
    from stargan_ray.train.validation import BesideResults, validate_checkpoint

    cfg = _config(tmp_path, "beside")
    run_dir = tmp_path / "run"
    state, checkpoint = _saved_checkpoint(cfg, run_dir, 8)
    metrics = validate_checkpoint(checkpoint, cfg=cfg.to_dict(), run_dir=str(run_dir),
                                  device="cpu", threads=1)
    with intra_op_threads(1):  # the task's threads: the same float rounding
        assert metrics == quick_eval(state.nets_ema, cfg, "cpu")  # equal, not close
    assert json.loads((run_dir / "best" / "best.json").read_text())["step"] == 8
    logger = _Logger()
    beside = BesideResults(str(run_dir), logger, rank=0)
    assert BesideResults(str(run_dir), _Logger(), rank=1).pick_up() == []  # rank 0 only
    assert beside.pick_up() == [8]
    assert logger.evaluations == [(8, metrics)]
    assert logger.saved == [(f"{run_dir}/best/checkpoint_00000008", 8, ("best",))]
    assert beside.pick_up() == []  # logged once


def test_the_validation_function_runs_the_full_evaluation_when_asked(tmp_path, monkeypatch):
    """validate_checkpoint with full=True (a full_eval_every step that is no eval_every step):
    the evaluator's numbers for the checkpoint's nets_ema, no fid_quick, no best; logged once."""
    monkeypatch.setenv("STARGAN_RAY_CACHE", str(tmp_path / "cache"))
    from stargan_ray.train.validation import BesideResults, validate_checkpoint

    cfg = _config(tmp_path, "beside", **{"train.full_eval_every": 12})
    run_dir = tmp_path / "run"
    state, checkpoint = _saved_checkpoint(cfg, run_dir, 12)
    metrics = validate_checkpoint(checkpoint, cfg=cfg.to_dict(), run_dir=str(run_dir),
                                  device="cpu", threads=1, quick=False, full=True)
    assert metrics == _full_evaluation(state.nets_ema, cfg, 12)  # equal, not close
    assert "FID_latent/mean" in metrics and "fid_quick" not in metrics
    assert not (run_dir / "best").exists()  # no fid_quick, no score
    logger = _Logger()
    assert BesideResults(str(run_dir), logger, rank=0).pick_up() == [12]
    assert logger.evaluations == [(12, metrics)] and logger.saved == []
