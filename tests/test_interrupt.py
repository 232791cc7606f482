"""Ctrl+C is always one line and exit code 130, also in Ray's start-up, before a run can say more.

A real `stargan-ray train` in its own session gets SIGINT on its whole process group (what a
terminal's Ctrl+C sends) as soon as its Ray GCS server exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _descendants(pid: int) -> dict[int, str]:
    """{pid: command name} of every process below pid (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            names[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue  # ended meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = names.get(child, "?")
            todo.append(child)
    return found


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_in_rays_start_up_is_one_line_and_exit_130(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local instance
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path / "home"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stargan_ray.cli", "train", "--storage", str(tmp_path / "runs"),
         "--set", "train.total_iters=2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=env)
    started: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180
        while not any("gcs_server" in name for name in started.values()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "waited 180 s for the command to start Ray"
            time.sleep(0.05)
            started = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)  # hang guard: the interrupted command's exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in started:  # Ray's processes this command started, if any outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines and lines[-1].startswith("stargan-ray: interrupted"), err
    assert "Traceback" not in err, err
