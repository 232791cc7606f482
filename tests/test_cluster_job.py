"""`ray job submit` path: a real local head on loopback, a toy training submitted as a job."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_head():
    """`ray start --head` on loopback with its own ports and temp dir; killed afterwards.

    Own ports for every agent: the test session's Ray instance already holds the defaults.
    """
    temp_dir = tempfile.mkdtemp(prefix="srjob", dir="/tmp")  # short: Ray's socket paths
    dashboard = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={_free_port()}",
           f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
           "--node-ip-address=127.0.0.1", "--num-cpus=4", "--disable-usage-stats",
           "--include-dashboard=true", f"--temp-dir={temp_dir}",
           f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
           f"--runtime-env-agent-port={_free_port()}", f"--ray-client-server-port={_free_port()}"]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)
        subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)


def _retry(fn, timeout: float, retry_on: tuple[type[BaseException], ...]):
    deadline = time.time() + timeout
    while True:
        try:
            return fn()
        except retry_on:
            if time.time() > deadline:
                raise
            time.sleep(2)


@pytest.mark.ray
def test_a_job_submitted_to_a_local_head_trains_and_checkpoints(local_head, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the client reads it at import
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = _retry(lambda: JobSubmissionClient(local_head), 180, (Exception,))
    entrypoint = (f"{BIN / 'stargan-ray'} train --experiment toy --num-workers 1 "
                  "--set model.dim_in=8 --set model.max_conv_dim=16 --set data.batch_size=2 "
                  "--set train.total_iters=4 --set train.save_every=2 --set train.print_every=2 "
                  f"--storage {tmp_path} --name job --wandb disabled")
    # the head's job agent answers "no agent" or drops connections until it is up
    transient = (RuntimeError, OSError)
    job_id = _retry(lambda: client.submit_job(entrypoint=entrypoint), 180, transient)
    deadline = time.time() + 600
    status = _retry(lambda: client.get_job_status(job_id), 60, transient)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, "job did not finish"
        time.sleep(2)
        status = _retry(lambda: client.get_job_status(job_id), 60, transient)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert (tmp_path / "job" / "checkpoint_00000004" / "checkpoint.pt").is_file()
    assert "[4/4]" in logs  # the console line of the last step reached the job log
