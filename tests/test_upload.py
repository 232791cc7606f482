"""Checkpoint uploads (train/upload.py): an upload killed midway never leaves a checkpoint that
looks complete to --resume, the Ctrl+C hint, `eval --run` or keep_checkpoints pruning; the local
copies of dead processes are swept. The async and sync modes train the same model:
tests/test_train.py resumes a sync-saved run with async uploads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stargan_ray.checkpoint import CHECKPOINT_FILE, save_checkpoint, state_dict
from stargan_ray.config import ConfigError, with_overrides
from stargan_ray.engine import TrainState
from stargan_ray.train import newest_complete_checkpoint, plan_run, run_checkpoints
from stargan_ray.train.checkpoints import prune_checkpoints
from stargan_ray.train.driver import resume_hint
from stargan_ray.train.upload import LOCAL_PREFIX, PARTIAL_SUFFIX, sweep_local_dirs

from .helpers import run_options, tiny_config, wait_until

ROOT = Path(__file__).resolve().parent.parent
# The real upload, in a process of its own that the test kills.
UPLOAD = ("import sys, pyarrow.fs as pafs\n"
          "from stargan_ray.train.upload import publish_checkpoint\n"
          "publish_checkpoint(sys.argv[1], pafs.LocalFileSystem(), sys.argv[2])\n")


def _state(step: int) -> TrainState:
    state = TrainState.create(tiny_config(), "cpu")
    state.step = step
    return state


def _killed_upload(tmp_path: Path, dest: Path, data: bytes) -> int:
    """Upload a checkpoint folder whose file is a pipe; kill the uploader once half the bytes
    reached dest. The bytes that arrived."""
    local = tmp_path / "local"
    local.mkdir()
    pipe = local / CHECKPOINT_FILE
    os.mkfifo(pipe)
    child = subprocess.Popen([sys.executable, "-c", UPLOAD, str(local), str(dest)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    half = len(data) // 2
    partial = dest / f"{CHECKPOINT_FILE}{PARTIAL_SUFFIX}"
    try:
        fd = wait_until(lambda: _open_writer(pipe) or child.poll() is not None,
                        "the uploader to open the checkpoint file")
        assert child.poll() is None, "the uploader ended before it read the checkpoint file"
        with open(fd, "wb") as f:
            f.write(data[:half])
            f.flush()
            wait_until(lambda: partial.is_file() and partial.stat().st_size == half
                       or child.poll() is not None, "half the checkpoint to arrive")
            assert child.poll() is None, "the uploader ended before it was killed"
            child.kill()
            child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return half


def _open_writer(pipe: Path) -> int | None:
    """The write end of the pipe once a reader has opened it (without waiting for one)."""
    try:
        fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None
    os.set_blocking(fd, True)
    return fd


def test_an_upload_killed_midway_leaves_the_previous_checkpoint_the_newest_complete(tmp_path):
    cfg = tiny_config()
    run = tmp_path / "run"
    save_checkpoint(_state(4), run / "checkpoint_00000004" / CHECKPOINT_FILE)
    buffer = io.BytesIO()
    torch.save(state_dict(_state(8)), buffer)
    dest = run / "checkpoint_00000008"
    arrived = _killed_upload(tmp_path, dest, buffer.getvalue())

    assert dest.is_dir() and not (dest / CHECKPOINT_FILE).exists()
    start, broken = newest_complete_checkpoint(str(run), cfg)  # --resume and the Ctrl+C hint
    assert (start.step, start.label) == (4, "checkpoint_00000004")
    assert broken == [f"checkpoint {dest}: incomplete, its upload did not finish ({arrived} "
                      f"bytes of {CHECKPOINT_FILE} arrived)"]
    plan = plan_run(cfg, run_options(tmp_path, "run", resume=True))
    assert plan.start.step == 4
    assert f"skipping broken {broken[0]}" in plan.notes
    assert resume_hint(str(run), cfg, "run") == (
        "interrupted: run 'run' can resume from checkpoint_00000004 (step 4): run the same "
        "command with --resume")
    found, left_out = run_checkpoints(str(run))  # eval --run
    assert [step for step, _ in found] == [4] and left_out == broken
    # keep_checkpoints=1 keeps the complete one, and removes what the killed upload left
    assert prune_checkpoints(str(run), 1) == [str(dest)]
    assert [p.name for p in run.iterdir()] == ["checkpoint_00000004"]


def test_a_run_whose_only_checkpoint_was_cut_off_has_nothing_to_resume(tmp_path):
    buffer = io.BytesIO()
    torch.save(state_dict(_state(2)), buffer)
    _killed_upload(tmp_path, tmp_path / "run" / "checkpoint_00000002", buffer.getvalue())
    with pytest.raises(ConfigError, match="has only broken checkpoints .*its upload did not"):
        plan_run(tiny_config(), run_options(tmp_path, "run", resume=True))


def test_local_copies_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{LOCAL_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{LOCAL_PREFIX}{os.getpid()}-def"
    other = tmp_path / "unrelated-dir"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / CHECKPOINT_FILE).write_bytes(b"x")
    assert sweep_local_dirs(str(tmp_path)) == [str(dead)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_the_upload_mode_is_checked_at_the_door():
    assert tiny_config().train.checkpoint_upload == "async"
    with pytest.raises(ConfigError, match="train.checkpoint_upload.*async, sync"):
        with_overrides(tiny_config(), ["train.checkpoint_upload=later"])
