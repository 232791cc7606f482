"""`ray job submit` path: a real local head on loopback, a toy training submitted as a job.

The head runs with token authentication and a token of its own, in a file that the head and the
submitting client are both pointed to (RAY_AUTH_TOKEN_PATH), exactly as docs/cluster.md tells
users to do. Nothing relies on a ~/.ray/auth_token that an earlier `ray.init` may have left behind.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from .helpers import BIN, end_processes, free_port, ray_auth_env, wait_until


@pytest.fixture(scope="module")
def local_head():
    """`ray start --head` on loopback with its own token, ports and temp dir; killed afterwards.

    Own ports for every agent: the test session's Ray instance may hold the defaults. One head
    for the module: it takes about 30 s to start. Yields (dashboard address, token file).
    """
    temp_dir = tempfile.mkdtemp(prefix="srjob", dir="/tmp")  # short: Ray's socket paths
    token_path = Path(temp_dir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    dashboard = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}",
           f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
           "--node-ip-address=127.0.0.1", "--num-cpus=4", "--disable-usage-stats",
           "--include-dashboard=true", f"--temp-dir={temp_dir}",
           f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--ray-client-server-port={free_port()}"]
    head = subprocess.Popen(cmd, env=ray_auth_env(token_path), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{dashboard}", token_path
    finally:
        end_processes(head, env_entry=f"RAY_AUTH_TOKEN_PATH={token_path}")


def _ray_job(args: list[str], address: str, token_path: Path, timeout: float = 120
             ) -> subprocess.CompletedProcess:
    command, *rest = args  # options before the entrypoint's "--"
    return subprocess.run([str(BIN / "ray"), "job", command, "--address", address, *rest],
                          env=ray_auth_env(token_path), capture_output=True, text=True,
                          timeout=timeout)


def _output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr  # the job CLI logs its status lines to stderr


def _ray_job_once_up(args: list[str], address: str, token_path: Path
                     ) -> subprocess.CompletedProcess:
    """`ray job ...` tried again until it succeeds: the head's dashboard and job agent refuse
    connections until they are up."""
    tries = []

    def succeeded() -> bool:
        tries.append(_ray_job(args, address, token_path))
        return tries[-1].returncode == 0

    wait_until(succeeded, lambda: f"the head to answer `ray job {args[0]}`: "
               + _output(tries[-1])[-4000:], timeout_s=180, every_s=3)
    return tries[-1]


@pytest.mark.ray
def test_a_job_submitted_to_a_local_head_trains_and_checkpoints(local_head, tmp_path):
    address, token_path = local_head
    job_id = f"stargan-{secrets.token_hex(4)}"
    entrypoint = (f"{BIN / 'stargan-ray'} train --experiment toy --num-workers 1 "
                  "--set model.dim_in=8 --set model.max_conv_dim=16 --set data.batch_size=2 "
                  "--set train.total_iters=4 --set train.save_every=2 --set train.print_every=2 "
                  f"--storage {tmp_path} --name job --wandb disabled")
    _ray_job_once_up(["submit", "--no-wait", "--submission-id", job_id, "--",
                      *entrypoint.split()], address, token_path)

    def finished() -> str:
        status = _output(_ray_job(["status", job_id], address, token_path)).lower()
        done = any(f"' {word}" in status for word in ("succeeded", "failed", "was stopped"))
        return status if done else ""

    status = wait_until(finished, f"job {job_id} to finish", timeout_s=600, every_s=3)
    logs = _output(_ray_job(["logs", job_id], address, token_path))
    assert f"job '{job_id}' succeeded" in status, logs[-3000:]
    assert (tmp_path / "job" / "checkpoint_00000004" / "checkpoint.pt").is_file()
    assert "[4/4]" in logs  # the console line of the last step reached the job log


def test_a_client_without_the_heads_token_is_refused(local_head, tmp_path):
    """The head really checks tokens: a client holding another token cannot submit."""
    address, token_path = local_head
    wrong = tmp_path / "other_token"
    wrong.write_text(secrets.token_hex(32))
    _ray_job_once_up(["list"], address, token_path)  # the head answers the right token
    refused = _ray_job(["list"], address, wrong)
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()
