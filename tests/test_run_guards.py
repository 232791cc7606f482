"""What a run guards (issue 23, train side): every interval on its own, one writer per run folder,
a storage that can be written, a disk that fills up during a checkpoint save. No Ray here: the
loop runs in this process (train.worker._train with ray.train.report recorded) and the lock is
tested with real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from stargan_ray.engine import TrainState
from stargan_ray.errors import UserError
from stargan_ray.train import WorkerSpec, worker

from .helpers import tiny_config
from .helpers import random_batch, recording_report


class _Recorder:
    """RunLogger's surface for train.worker._train, recording the steps of each output."""

    def __init__(self):
        self.steps = {"log": [], "images": [], "evaluation": []}

    def log(self, step, metrics, line):
        self.steps["log"].append(step)

    def images(self, step, images):
        self.steps["images"].append(step)

    def evaluation(self, step, metrics):
        self.steps["evaluation"].append(step)

    def checkpoint_saved(self, checkpoint_dir, step, metrics, aliases):
        self.steps.setdefault("saved", []).append(step)

    def event(self, kind, **fields):
        pass


def _run_loop(tmp_path, monkeypatch, cfg,
              report_logs: bool = False) -> tuple[_Recorder, list[tuple[int, bool]]]:
    import ray.train

    reports = []
    monkeypatch.setattr(ray.train, "report", recording_report(reports))
    monkeypatch.setattr(ray.train, "get_preemption_info", lambda: None)  # no notice
    recorder = _Recorder()
    out = worker.Outputs(recorder, samples=lambda state: {},
                         evaluate=lambda state: {"fid_quick": float(state.step)})
    state = TrainState.create(cfg, "cpu", seed=0)
    batches = iter([random_batch(cfg, seed=i) for i in range(cfg.train.total_iters)])
    spec = WorkerSpec(cfg, str(tmp_path / "run"), "t", data=None, report_logs=report_logs)
    worker._train(state, batches, out, spec, 0, 1)
    return recorder, reports


@pytest.mark.parametrize("report_logs", [False, True], ids=["plain run", "tune trial"])
def test_every_interval_fires_at_exactly_its_own_steps(tmp_path, monkeypatch, report_logs):
    """print 3, sample 5, eval 7, save 4 over 14 steps: none is a multiple of another."""
    cfg = tiny_config(**{"train.total_iters": 14, "train.print_every": 3,
                         "train.sample_every": 5, "train.eval_every": 7, "train.save_every": 4})
    recorder, reports = _run_loop(tmp_path, monkeypatch, cfg, report_logs)
    assert recorder.steps["log"] == [3, 6, 9, 12, 14]  # the last step always logs
    assert recorder.steps["images"] == [5, 10, 14]  # and draws its grids
    assert recorder.steps["evaluation"] == [7, 14]
    # Every rank reports at the same steps: evaluations and saves (with the checkpoint), and in
    # a Tune trial the log steps too (Ray's controller takes one report per poll: docs/ray.md).
    logs = [(3, False), (6, False), (9, False)] if report_logs else []
    assert reports == sorted(logs + [(4, True), (7, False), (8, True), (12, True), (14, True)])


# ---------------------------------------------------------------- --storage


def _train_cli(tmp_path, *args: str) -> list[str]:
    from stargan_ray.config import to_toml

    experiment = tmp_path / "tiny.toml"
    experiment.write_text(to_toml(tiny_config()))  # the toy's synthetic data
    return ["train", "--experiment", str(experiment), *args]


def _one_line_rc2(argv, capsys) -> str:
    from stargan_ray import cli

    try:
        rc = cli.main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("stargan-ray: error: "), err
    return err


@pytest.mark.parametrize("dry_run", [True, False])
def test_storage_on_a_file_is_refused_before_ray_starts(tmp_path, capsys, dry_run):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    argv = _train_cli(tmp_path, "--storage", str(a_file / "runs"), "--name", "r")
    err = _one_line_rc2(argv + (["--dry-run"] if dry_run else []), capsys)
    assert "--storage" in err and "is a file, not a folder" in err and str(a_file) in err
    assert a_file.read_text() == "not a folder"  # untouched


def test_storage_in_a_read_only_folder_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:
        read_only = "/proc/1"  # root writes through permission bits; procfs takes no new files
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        read_only = str(tmp_path / "ro")
    err = _one_line_rc2(_train_cli(tmp_path, "--storage", read_only, "--dry-run"), capsys)
    assert f"--storage {read_only}: cannot write in {read_only}" in err


def test_storage_uri_gets_a_probe_write(tmp_path, capsys):
    """A URI that cannot be written (a file:// location under a file) fails at the probe."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = _one_line_rc2(_train_cli(tmp_path, "--storage", f"file://{a_file}/runs", "--dry-run"),
                        capsys)
    assert f"--storage file://{a_file}/runs: cannot write there" in err
    assert a_file.read_text() == "x"


# ---------------------------------------------------------------- one writer per run folder


def _write_lock(run_dir, host: str, pid: int, started: float | None = None) -> None:
    from stargan_ray.train.run_lock import RUN_LOCK

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_LOCK).write_text(json.dumps({"host": host, "pid": pid, "token": "other",
                                                "started": started or time.time()}))


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid now (until the system reuses it)


def test_a_lock_whose_owner_is_gone_is_taken_over_and_released(tmp_path):
    from stargan_ray.train.run_lock import RUN_LOCK, hold_run_folder

    run_dir = tmp_path / "run"
    _write_lock(run_dir, socket.gethostname(), _gone_pid())
    notes = []
    with hold_run_folder(str(run_dir), note=notes.append):
        held = json.loads((run_dir / RUN_LOCK).read_text())
        assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
        assert len(notes) == 1 and "took over" in notes[0] and "its owner is gone" in notes[0]
    assert not (run_dir / RUN_LOCK).exists()  # released at exit


@pytest.mark.parametrize("owner", ["this host, alive", "another host"])
def test_a_live_or_unprovable_owner_is_refused_unless_forced(tmp_path, owner):
    from stargan_ray.train.run_lock import RUN_LOCK, RunFolderHeld, hold_run_folder

    run_dir = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname() if owner == "this host, alive" else "elsewhere.example"
        _write_lock(run_dir, host, sleeper.pid if host != "elsewhere.example" else 4242)
        before = (run_dir / RUN_LOCK).read_text()
        with pytest.raises(RunFolderHeld) as err:
            with hold_run_folder(str(run_dir)):
                pass
        assert isinstance(err.value, UserError) and "\n" not in str(err.value)
        assert f"on host {host}" in str(err.value) and "--force" in str(err.value)
        assert (run_dir / RUN_LOCK).read_text() == before  # the owner's lock stays
        with hold_run_folder(str(run_dir), force=True, note=None):
            assert json.loads((run_dir / RUN_LOCK).read_text())["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()


def _checkpoint_lambdas(run_dir) -> list[float]:
    from stargan_ray.checkpoint import read_config

    return [read_config(p / "checkpoint.pt").loss.lambda_ds
            for p in sorted(run_dir.glob("checkpoint_*")) if p.is_dir()]  # not Ray's snapshot


@pytest.mark.ray
def test_a_second_run_on_a_held_name_is_refused_and_the_first_keeps_its_folder(
        ray_session, tmp_path, capsys):
    from stargan_ray.train.run_lock import RUN_LOCK

    run_dir = tmp_path / "runs" / "dup"
    first_args = _train_cli(tmp_path, "--storage", str(tmp_path / "runs"), "--name", "dup",
                            "--cpus-per-worker", "0.5", "--wandb", "disabled",
                            "--set", "train.total_iters=4", "--set", "train.save_every=2",
                            "--set", "loss.lambda_ds=1.0")
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    first = subprocess.Popen([sys.executable, "-m", "stargan_ray.cli", *first_args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not (run_dir / RUN_LOCK).exists():
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline, "the first run took no lock in 300 s"
            time.sleep(0.05)
        second = [a if a != "loss.lambda_ds=1.0" else "loss.lambda_ds=2.0" for a in first_args]
        err = _one_line_rc2(second, capsys)
        assert "is held by another run" in err and f"pid {first.pid} on host" in err, err
        out, err_first = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err_first
    assert "last checkpoint:" in out
    assert _checkpoint_lambdas(run_dir) == [1.0, 1.0]  # both the first run's
    assert not (run_dir / RUN_LOCK).exists()  # released when the first run ended


# ---------------------------------------------------------------- a full disk during a save


def test_a_full_disk_during_a_save_stops_the_run_with_one_line(tmp_path, monkeypatch):
    """ENOSPC from the checkpoint write (injected: no small disk can be made here) at step 4:
    the loop returns (no worker failure for Ray to retry), nothing of checkpoint 4 is left, and
    the driver reads one line with the cause, the size and --resume."""
    import errno

    from stargan_ray.train import consume_stop_reason, saving

    run_dir = tmp_path / "run"
    real_write = saving.write_checkpoint_file

    def full_at_4(state, folder):
        if state.step < 4:
            return real_write(state, folder)
        (run_dir / "checkpoint_00000004").mkdir(parents=True)  # as a half-done upload leaves it
        (run_dir / "checkpoint_00000004" / "checkpoint.pt").write_bytes(b"trunc")
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))

    monkeypatch.setattr(saving, "write_checkpoint_file", full_at_4)
    cfg = tiny_config(**{"train.total_iters": 8, "train.print_every": 2, "train.save_every": 2,
                         "train.sample_every": 100, "train.eval_every": 100})
    recorder, reports = _run_loop(tmp_path, monkeypatch, cfg)
    assert reports == [(2, True)]  # step 4 reported nothing; steps 5-8 never ran
    assert recorder.steps["log"] == [2, 4]
    assert not (run_dir / "checkpoint_00000004").exists()
    reason = consume_stop_reason(str(run_dir))
    assert reason is not None and "\n" not in reason
    assert reason.startswith("disk full: saving checkpoint_00000004 failed "
                             "(No space left on device")
    assert " MiB; free that much, then run the same command with --resume" in reason
    assert float(reason.split("needs ")[1].split(" MiB")[0]) > 0.1  # the tiny model's size
    assert consume_stop_reason(str(run_dir)) is None  # consumed: reported once


def test_keep_checkpoints_leaves_exactly_that_many_folders(tmp_path):
    """Folders of an earlier fit whose snapshot was set aside are not Ray's to prune: the driver
    prunes the run folder to train.keep_checkpoints when the run ends (best/ is not counted)."""
    from stargan_ray.train.checkpoints import prune_checkpoints

    run_dir = tmp_path / "run"
    for step in (2, 4, 6, 8, 10):
        (run_dir / f"checkpoint_{step:08d}").mkdir(parents=True)
        (run_dir / f"checkpoint_{step:08d}" / "checkpoint.pt").write_bytes(b"x")
    (run_dir / "best" / "checkpoint_00000002").mkdir(parents=True)
    deleted = prune_checkpoints(str(run_dir), 3)
    assert sorted(p.rsplit("/", 1)[1] for p in deleted) == ["checkpoint_00000002",
                                                            "checkpoint_00000004"]
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == [
        "checkpoint_00000006", "checkpoint_00000008", "checkpoint_00000010"]
    assert (run_dir / "best" / "checkpoint_00000002").is_dir()
