"""An online W&B run whose server cannot be reached is logged offline at once (the real wandb).

No W&B server is reachable from tests: the servers here are closed or silent ports on 127.0.0.1.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import wandb

from stargan_ray.train import logger as run_logging
from stargan_ray.train.logger import RunLogger, wandb_unreachable

from .helpers import hang_guard, tiny_config

# A hang guard, not a speed check: without the fallback the first step waited ~90 s.
HANG_GUARD_S = 120.0


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture
def online_env(monkeypatch, tmp_path):
    """wandb configured for an online run with a key; settings are reloaded for each test."""
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    wandb.teardown()  # wandb keeps the settings it loaded first in the process
    yield monkeypatch
    wandb.teardown()


def _online_run(run_dir: Path) -> RunLogger:
    with hang_guard(HANG_GUARD_S, "the logger of an online run to start with W&B unreachable"):
        logger = RunLogger(tiny_config(), str(run_dir), run_name="fallback", wandb="online",
                           rank=0)
    logger.log(3, {"G/latent_cyc": 0.25}, "step 3")
    logger.finish()
    # As at the end of a worker process: finish() may return before wandb's service has written
    # the run file; teardown waits for it.
    wandb.teardown()
    return logger


def _offline_folder_with_the_logs(run_dir: Path) -> Path:
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    history = next(folder.glob("*.wandb")).read_bytes()
    assert b"G/latent_cyc" in history
    return folder


def test_a_closed_server_port_gives_an_offline_run_at_once(online_env, closed_port, tmp_path,
                                                            capfd):
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port}")
    logger = _online_run(tmp_path / "run")
    assert logger.wandb is not None  # W&B stayed on, offline
    folder = _offline_folder_with_the_logs(tmp_path / "run")
    lines = [line for line in capfd.readouterr().out.splitlines() if "W&B" in line]
    assert len(lines) == 1
    assert f"127.0.0.1:{closed_port}" in lines[0] and f"`wandb sync {folder}`" in lines[0]
    # at once: the probe's refused connection decided, wandb.init never waited on the server
    assert "wandb.init failed" not in lines[0]


def test_a_server_that_never_answers_gives_an_offline_run_after_the_init_timeout(
        online_env, silent_port, tmp_path, capfd):
    # The host accepts connections, so only wandb.init's own timeout (30 s in use) can tell.
    online_env.setattr(run_logging, "WANDB_INIT_TIMEOUT_S", 3.0)
    online_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent_port}")
    _online_run(tmp_path / "run")
    folder = _offline_folder_with_the_logs(tmp_path / "run")
    (line,) = [line for line in capfd.readouterr().out.splitlines() if "W&B" in line]
    assert "wandb.init failed" in line and f"`wandb sync {folder}`" in line


def test_the_probe_goes_through_the_proxy_the_requests_would_use(monkeypatch, closed_port,
                                                                 silent_port):
    url = "https://wandb.example.invalid"  # a name that never resolves
    for var in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{silent_port}")
    assert wandb_unreachable(url) is None  # the proxy answers for it
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port}")
    assert f"through proxy 127.0.0.1:{closed_port}" in wandb_unreachable(url)
    # wandb's own proxy setting wins over the environment's
    assert wandb_unreachable(url, {"https": f"http://127.0.0.1:{silent_port}"}) is None
    monkeypatch.delenv("HTTPS_PROXY")
    assert "wandb.example.invalid" in wandb_unreachable(url, timeout=3)
