"""Resuming: the newest complete checkpoint whatever Ray's snapshot says, --resume-from, Ctrl+C,
and the one-line errors of `stargan-ray train` for runs, flags and files that cannot work."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from stargan_ray.checkpoint import (CheckpointError, import_official, safe_load, save_checkpoint,
                                    verify_checkpoint)
from stargan_ray.cli import main
from stargan_ray.config import ConfigError
from stargan_ray.engine import TrainState
from stargan_ray.models import EMA, build_networks, ema_copy
from stargan_ray.train import (SNAPSHOT_FILE, StartPoint, plan_run, reconcile_snapshot,
                               run_training, weights_finite)
from stargan_ray.train.worker import _restore_newest

from .helpers import read_events, run_options, tiny_config, wait_until

# the tiny model of helpers.tiny_config, as --set arguments of the command line
TINY = {"model.img_size": 32, "model.num_domains": 2, "model.dim_in": 8, "model.max_conv_dim": 16,
        "model.style_dim": 8, "model.latent_dim": 4, "model.hidden_dim": 16, "data.batch_size": 4,
        "train.print_every": 2, "train.sample_every": 1000, "train.eval_every": 1000}
_cfg = partial(tiny_config, **TINY)


def _set_args(**overrides) -> list[str]:
    return [arg for k, v in {**TINY, **overrides}.items() for arg in ("--set", f"{k}={v}")]


def _write(folder: Path, step: int, cfg=None, name_step: int | None = None) -> Path:
    """A complete checkpoint of the tiny model at step, in checkpoint_<name_step or step>/."""
    state = TrainState.create(cfg or _cfg(), "cpu")
    state.step = step
    return save_checkpoint(state, folder / f"checkpoint_{name_step or step:08d}" / "checkpoint.pt")


def _snapshot(run_dir: Path, listed: list[int]) -> Path:
    """Ray Train's snapshot as 2.60 writes it (the fields reconcile_snapshot reads)."""
    results = [{"checkpoint_dir_name": f"checkpoint_{s:08d}", "metrics": {"step": s}}
               for s in listed]
    path = run_dir / SNAPSHOT_FILE
    path.write_text(json.dumps({"checkpoint_results": results,
                                "latest_checkpoint_result": results[-1] if results else None}))
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


_opts = partial(run_options, cpus_per_worker=0.5)  # one worker, no retry, no W&B


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of `stargan-ray train ...` run in this process."""
    try:
        code = main(["train", *argv])
    except SystemExit as exit_:  # argparse refusing a value
        code = exit_.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- choosing the start (no Ray)


def test_resume_takes_the_newest_checkpoint_that_ray_does_not_list(tmp_path):
    run = tmp_path / "r"
    _write(run, 4), _write(run, 8)
    snapshot = _snapshot(run, [4])  # copied storage, an imported checkpoint, a lost registration
    plan = plan_run(_cfg(**{"train.total_iters": 12}), _opts(tmp_path, "r", resume=True))
    assert plan.start == StartPoint(8, f"{tmp_path}/r/checkpoint_00000008")
    assert plan.notes == ["resuming run 'r' from checkpoint_00000008 (step 8)"]
    aside = reconcile_snapshot(plan.run_dir, plan.start)  # Ray would restore step 4 from it
    assert aside and not snapshot.exists() and Path(aside).exists()


def test_a_snapshot_that_agrees_with_the_start_is_kept(tmp_path):
    run = tmp_path / "r"
    _write(run, 4), _write(run, 8)
    snapshot = _snapshot(run, [4, 8])
    assert reconcile_snapshot(str(run), StartPoint(8, f"{run}/checkpoint_00000008")) is None
    assert snapshot.exists()
    # a folder it lists was deleted: Ray's controller would fail on it
    _snapshot(run, [2, 4, 8])
    assert reconcile_snapshot(str(run), StartPoint(8, f"{run}/checkpoint_00000008"))
    assert not snapshot.exists()


def test_broken_newer_checkpoints_are_skipped_and_named(tmp_path):
    run = tmp_path / "r"
    _write(run, 4)
    _truncate(_write(run, 12))  # crash or full disk during the save
    _write(run, 4, name_step=8)  # holds another step than its name
    (run / "checkpoint_00000016").mkdir()  # a save that never wrote its file
    _snapshot(run, [4, 8, 12])
    plan = plan_run(_cfg(**{"train.total_iters": 20}), _opts(tmp_path, "r", resume=True))
    assert plan.start.step == 4
    skipped, resuming = plan.notes[:-1], plan.notes[-1]
    assert [re.search(r"checkpoint_\d{8}", n).group() for n in skipped] == [
        "checkpoint_00000016", "checkpoint_00000012", "checkpoint_00000008"]
    assert "truncated or corrupt" in skipped[1] and "holds step 4, not the step 8" in skipped[2]
    assert resuming == "resuming run 'r' from checkpoint_00000004 (step 4)"


def test_the_worker_restores_the_newer_of_rays_checkpoint_and_the_start(tmp_path):
    from ray.train import Checkpoint  # a plain object: no cluster is started

    cfg = _cfg()
    older, newer = _write(tmp_path, 4).parent, _write(tmp_path, 8).parent
    for own, start, expected in ((Checkpoint(str(newer)), StartPoint(4, str(older)), 8),
                                 (Checkpoint(str(older)), StartPoint(8, str(newer)), 8),
                                 (None, StartPoint(4, str(older / "checkpoint.pt")), 4),
                                 (Checkpoint(str(older)), None, 4)):
        state = TrainState.create(cfg, "cpu")
        _restore_newest(state, own, start)
        assert state.step == expected


def test_non_finite_ema_weights_are_never_checkpointed():
    state = TrainState.create(_cfg(), "cpu")
    assert weights_finite(state)
    with torch.no_grad():
        next(state.nets_ema.generator.parameters()).view(-1)[0] = float("nan")
    assert not weights_finite(state)


# ---------------------------------------------------------------- one-line errors (no Ray)


def test_resume_with_nothing_to_resume_is_one_line(tmp_path, capsys):
    code, err = _cli(capsys, "--name", "nosuchrun", "--resume", "--storage", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("stargan-ray: error: --resume: run 'nosuchrun' has no checkpoint")
    _truncate(_write(tmp_path / "broken", 4))
    code, err = _cli(capsys, "--name", "broken", "--resume", "--storage", str(tmp_path),
                     *_set_args())
    assert code == 2 and "only broken checkpoints" in err and err.count("\n") == 1


def test_resume_with_other_network_shapes_fails_before_ray_starts(tmp_path, capsys):
    _write(tmp_path / "px32", 4)
    code, err = _cli(capsys, "--name", "px32", "--resume", "--storage", str(tmp_path),
                     *_set_args(**{"model.img_size": 64}))
    assert code == 2 and err.count("\n") == 1, err
    assert "does not fit the configured model" in err
    assert "model.img_size=32 in the checkpoint but 64 in the config" in err


def test_resume_from_an_imported_checkpoint_checks_its_networks(tmp_path, capsys):
    cfg = _cfg(**{"train.total_iters": 30})
    ema = ema_copy(build_networks(cfg.model))
    torch.save({name: getattr(ema, name).state_dict() for name in EMA},
               tmp_path / "000020_nets_ema.ckpt")
    imported = import_official(cfg, tmp_path / "000020_nets_ema.ckpt", tmp_path / "imported.pt")
    plan = plan_run(cfg, _opts(tmp_path, "fresh", resume_from=str(imported)))
    assert plan.start == StartPoint(20, str(imported.resolve()))
    assert plan.run_dir == f"{tmp_path}/fresh"
    assert plan.notes == [f"run 'fresh' starts from {imported.resolve()} (step 20)"]
    _write(tmp_path / "fresh", 24)  # a later checkpoint of another line would win a --resume
    with pytest.raises(ConfigError, match="already has checkpoints after step 20"):
        plan_run(cfg, _opts(tmp_path, "fresh", resume_from=str(imported)))
    code, err = _cli(capsys, "--resume-from", str(imported), "--storage", str(tmp_path),
                     *_set_args(**{"model.num_domains": 3, "train.total_iters": 30}))
    assert code == 2 and err.count("\n") == 1 and "model.num_domains=2 in the checkpoint" in err
    code, err = _cli(capsys, "--resume-from", str(tmp_path / "000020_nets_ema.ckpt"),
                     "--storage", str(tmp_path), *_set_args())
    assert code == 2 and "not a stargan-ray checkpoint" in err and "import-official" in err


@pytest.mark.parametrize("argv", [
    ["--name", "../escape"], ["--name", "a/b"], ["--name", ".hidden"],
    ["--num-workers", "0"], ["--num-workers", "-1", "--dry-run"], ["--gpus-per-worker", "-1"],
    ["--cpus-per-worker", "0", "--dry-run"], ["--max-failures", "-1"],
    ["--resume", "--resume-from", "x.pt"]])
def test_run_names_and_resources_that_cannot_work_are_refused(tmp_path, capsys, argv):
    code, err = _cli(capsys, "--storage", str(tmp_path / "S"), *argv)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("stargan-ray: error:", "stargan-ray train: error:"))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "S").exists()


@pytest.mark.parametrize("content, kind", [
    (b"not a checkpoint\n", "text"), (b'{"step": 3}', "text"),
    (b"[model]\nimg_size = 32\n", "text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a PNG image"), (b"", "nothing, it is empty")])
def test_a_file_that_is_not_a_torch_checkpoint_is_named_plainly(tmp_path, content, kind):
    path = tmp_path / "given.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    assert str(err.value) == (f"checkpoint {path}: not a torch checkpoint file (it holds {kind}); "
                              "give a file written by stargan-ray train or import-official")


# ---------------------------------------------------------------- Ray runs


def _complete(run_dir: Path, step: int) -> bool:
    try:
        return verify_checkpoint(run_dir / f"checkpoint_{step:08d}", _cfg(), step) == step
    except CheckpointError:
        return False


def _listed(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / SNAPSHOT_FILE).read_text())["checkpoint_results"])
    except (FileNotFoundError, ValueError):  # not written yet, or mid-write
        return 0


@pytest.mark.ray
def test_ctrl_c_names_the_checkpoint_and_resume_skips_a_broken_newest(ray_session, tmp_path,
                                                                       capsys):
    run_dir = tmp_path / "sig"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stargan_ray.cli", "train", "--storage", str(tmp_path), "--name",
         "sig", "--cpus-per-worker", "0.5", "--wandb", "disabled",
         *_set_args(**{"train.total_iters": 1000, "train.save_every": 2})],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: _listed(run_dir) >= 2 or proc.poll() is not None,
                   "two checkpoints to be registered", every_s=0.05)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)  # a hang guard: Ctrl+C ends the run
        except subprocess.TimeoutExpired:
            raise AssertionError("hang guard: waited 120 s for the run to exit after Ctrl+C") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    on_disk = next(s for s in range(998, 0, -2) if _complete(run_dir, s))  # newest complete
    assert last == (f"stargan-ray: interrupted: run 'sig' can resume from checkpoint_{on_disk:08d}"
                    f" (step {on_disk}): run the same command with --resume")

    # The newest one broke afterwards (say a disk error): resume falls back and names it, and
    # the run writes that step again into the same folder.
    broken = run_dir / f"checkpoint_{on_disk:08d}" / "checkpoint.pt"
    _truncate(broken)
    run_training(_cfg(**{"train.total_iters": on_disk + 2, "train.save_every": 2}),
                 _opts(tmp_path, "sig", resume=True))
    out = capsys.readouterr().out
    assert f"skipping broken checkpoint {broken}: not a readable torch checkpoint" in out
    assert f"resuming run 'sig' from checkpoint_{on_disk - 2:08d} (step {on_disk - 2})" in out
    starts = [e["step"] for e in read_events(run_dir) if e["event"] == "start"]
    assert starts == [0, on_disk - 2]
    assert _complete(run_dir, on_disk)
