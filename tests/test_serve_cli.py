"""`stargan-ray serve` as a user runs it: mistakes are one line before Ray starts, an open address
needs a token, and Ctrl+C exits 130 with a line and leaves no process of the run behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stargan_ray.cli.serve import descendants

from .helpers import save_synthetic_checkpoint
from .test_serve import free_port

TOKEN = "cli-token-0123456789abcdef"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fresh HOME, Ray's temporary folder inside tmp_path (so a started Ray shows), no cluster."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "STARGAN_RAY_SERVE_TOKEN")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**env, "HOME": str(home), "RAY_TMPDIR": str(tmp_path / "rt"),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent), **extra}


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stargan_ray.cli", "serve", *args]


def refused(capsys, args: list[str], *needles: str) -> str:
    """Run serve in this process: exit 2 with one error line, and Ray not started by it."""
    import ray

    from stargan_ray import cli

    before = ray.is_initialized()
    try:
        rc = cli.main(["serve", *args])
    except SystemExit as exit_:  # argparse: usage line + error line
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and lines[0].startswith("stargan-ray"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert ray.is_initialized() == before, "Ray was started before the mistake was found"
    return lines[0]


def test_mistakes_are_one_line_before_ray_starts(tmp_path, capsys, checkpoint):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:5000])
    refused(capsys, ["--checkpoint", str(corrupt)], "truncated or corrupt")
    refused(capsys, ["--checkpoint", str(checkpoint), "--port", "70000"],
            "--port", "1 to 65535", "70000")
    refused(capsys, ["--checkpoint", str(checkpoint), "--host", "203.0.113.7", "--no-auth"],
            "--host 203.0.113.7", "cannot listen there")


def test_a_busy_port_is_one_line_and_no_ray_process(tmp_path, checkpoint):
    """As a user runs it: a separate process, Ray's folder in tmp_path (it would show a start)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        run = subprocess.run(serve_cmd("--checkpoint", str(checkpoint), "--port", port),
                             env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    err = run.stderr.strip()
    assert run.returncode == 2 and err.startswith("stargan-ray: error: ") and \
        len(err.splitlines()) == 1, (run.returncode, err[-3000:])
    assert f"--port {port}" in err and "in use" in err, err
    assert not (tmp_path / "rt").exists(), "Ray was started before the mistake was found"


def test_an_open_address_needs_a_token_or_no_auth(tmp_path, capsys, monkeypatch, checkpoint):
    monkeypatch.delenv("STARGAN_RAY_SERVE_TOKEN", raising=False)
    refused(capsys, ["--checkpoint", str(checkpoint), "--host", "0.0.0.0"],
            "--host 0.0.0.0: answers anyone", "--token-file", "--no-auth")
    short = tmp_path / "token.txt"
    short.write_text("abc\n")
    refused(capsys, ["--checkpoint", str(checkpoint), "--host", "0.0.0.0", "--token-file",
                     str(short)], "at least 16 characters")
    refused(capsys, ["--checkpoint", str(checkpoint), "--token-file", str(tmp_path / "none")],
            "--token-file", "cannot read it")
    monkeypatch.setenv("STARGAN_RAY_SERVE_TOKEN", "short")
    refused(capsys, ["--checkpoint", str(checkpoint)], "STARGAN_RAY_SERVE_TOKEN")


def default_sigint() -> None:
    """A child of a background job inherits SIGINT ignored (docs/ray.md); Ctrl+C needs it on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.ray
def test_ctrl_c_exits_130_with_a_line_and_leaves_no_process(tmp_path, checkpoint):
    import requests

    port = free_port()
    env = cli_env(tmp_path, STARGAN_RAY_SERVE_TOKEN=TOKEN)
    env["RAY_TMPDIR"] = "/tmp"  # Ray's socket paths must stay short
    proc = subprocess.Popen(serve_cmd("--checkpoint", str(checkpoint), "--port", str(port),
                                      "--max-batch", "2"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 300
        line = ""
        while "http://" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, \
                f"waited 300 s for serve's address line: {proc.stderr.read()[-3000:]}"
            line = proc.stdout.readline()
        assert "needs the bearer token" in line
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url + "/domains", timeout=60).status_code == 401
        r = requests.get(url + "/domains", timeout=60,
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["domains"] == ["circle", "square", "triangle"]
        run_pids = descendants(proc.pid)
        assert len(run_pids) >= 3, run_pids  # Ray's GCS, raylet, workers, agents
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=180)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 130, err[-3000:]
    assert "stargan-ray serve: stopped (Ctrl+C)" in err and "Traceback" not in err, err[-3000:]
    left = [pid for pid in run_pids if alive(pid)]
    assert not left, [open(f"/proc/{pid}/cmdline").read() for pid in left]
