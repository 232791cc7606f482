"""The one home of the tests' plain helpers: tiny configs, seeded models, batches, checkpoints,
run folders and ports. Fixtures live in conftest.py and build on these."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch

from stargan_ray.checkpoint import load_state_into, read_config, safe_load
from stargan_ray.config import ExperimentConfig, load_experiment
from stargan_ray.engine import Batch, TrainState

T = TypeVar("T")

# ---------------------------------------------------------------- configs


def tiny_config(**overrides) -> ExperimentConfig:
    """The toy experiment at 32 px with the smallest widths, plus overrides ("loss.lambda_ds": 2)."""
    base = {
        "model.img_size": 32, "model.num_domains": 2, "model.dim_in": 8, "model.max_conv_dim": 16,
        "model.style_dim": 8, "model.latent_dim": 4, "model.hidden_dim": 16, "model.w_hpf": 0.0,
        "data.batch_size": 4,
        # the paper's schedule shape (toy keeps lambda_ds constant for its short demo run)
        "loss.lambda_ds": 1.0, "loss.ds_decay": "linear", "optim.f_lr": 1e-4,
    }
    base.update(overrides)
    return load_experiment("toy", list(base.items()))


def tiny_data_config(train_dir, val_dir, **overrides) -> ExperimentConfig:
    """tiny_config reading its images from train_dir and val_dir (paths or URIs)."""
    return tiny_config(**{"data.train_dir": str(train_dir), "data.val_dir": str(val_dir),
                          **overrides})


def tiny_eval_config(train_dir, val_dir, **overrides) -> ExperimentConfig:
    """tiny_config for evaluations of generated data: one source per batch, 2 outputs per source,
    seeded random feature weights (nothing downloaded)."""
    return tiny_data_config(train_dir, val_dir, **{
        "data.val_batch_size": 1, "eval.batch_size": 8, "eval.num_outs_per_domain": 2,
        "eval.feature_weights": "random", **overrides})


def run_options(storage, name: str, **overrides):
    """RunOptions of a one-worker test run that never retries and logs nowhere, plus overrides."""
    from stargan_ray.train import RunOptions

    return RunOptions(**{"num_workers": 1, "cpus_per_worker": 1.0, "storage": str(storage),
                         "name": name, "max_failures": 0, "wandb": "disabled", **overrides})


# ---------------------------------------------------------------- models and batches


def seeded_ema_networks(cfg: ExperimentConfig, seed: int = 0):
    """Networks of cfg.model, He-initialised from a fixed seed, as EMA copies (for sampling and
    evaluation tests that need a model but no training)."""
    from stargan_ray.models import build_networks, ema_copy, he_init

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = build_networks(cfg.model)
        for _, module in nets.items():
            module.apply(he_init)
    return ema_copy(nets)


def random_batch(cfg, n: int | None = None, seed: int = 0) -> Batch:
    """A batch of random images and labels with the official fields."""
    g = torch.Generator().manual_seed(seed)
    n = n or cfg.data.batch_size
    size, domains, latent = cfg.model.img_size, cfg.model.num_domains, cfg.model.latent_dim

    def images():
        return torch.rand((n, 3, size, size), generator=g) * 2 - 1

    return Batch(x_src=images(), y_src=torch.randint(0, domains, (n,), generator=g),
                 x_ref=images(), x_ref2=images(), y_ref=torch.randint(0, domains, (n,), generator=g),
                 z_trg=torch.randn((n, latent), generator=g), z_trg2=torch.randn((n, latent), generator=g))


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference between a and b relative to b's largest magnitude."""
    return ((a - b).abs().max() / b.abs().max()).item()


def stat_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """A train step's stats (0-dim tensors) as Python floats."""
    return {k: float(v) for k, v in stats.items()}


# ---------------------------------------------------------------- image folders


def image_tree(root: Path, domains=("a", "b"), n: int = 2, size=(8, 8), suffix: str = ".png",
               colour: Callable[[int], tuple[int, int, int]] = lambda i: (200, 30, 30)) -> Path:
    """A training folder of solid-colour images, root/<domain>/<i><suffix>, n per domain."""
    from PIL import Image

    for domain in domains:
        (root / domain).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, colour(i)).save(root / domain / f"{i}{suffix}")
    return root


# ---------------------------------------------------------------- checkpoints and run folders


def save_synthetic_checkpoint(path: Path) -> Path:
    """An untrained, seeded tiny model with the synthetic set's 3 domains, saved to path."""
    from stargan_ray.checkpoint import save_checkpoint

    cfg = tiny_config(**{"model.num_domains": 3, "data.train_dir": "synthetic"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = TrainState.create(cfg, "cpu")
    return save_checkpoint(state, path)


def load_train_state(path: str | Path, device: str = "cpu") -> TrainState:
    """The TrainState saved at path, rebuilt as a resuming worker does (stored config, then
    load_state_into)."""
    state = TrainState.create(read_config(path), device)
    load_state_into(state, safe_load(path, device))
    return state


def read_events(run_dir: Path, missing_ok: bool = False) -> list[dict]:
    """The records of a run's events.jsonl (none yet, with missing_ok, while a run starts)."""
    path = Path(run_dir) / "events.jsonl"
    if missing_ok and not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def registered_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoints the Train controller registered (what a restart restores)."""
    try:
        snapshot = json.loads((Path(run_dir) / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-write
        return []
    return [r["metrics"]["step"] for r in snapshot["checkpoint_results"]]


# ---------------------------------------------------------------- processes

BIN = Path(sys.executable).parent  # the environment's commands: ray, stargan-ray


def free_port() -> int:
    """A TCP port free on loopback now (the library's own chooser is train.cluster's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to n inside the block, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ray_auth_env(token_path: Path) -> dict[str, str]:
    """This process's environment for a Ray cluster with token auth, without any outer address."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def process_tree(roots: list[int], env_entry: str | None = None) -> set[int]:
    """roots and every live process below them, in their sessions, or (env_entry, such as
    "RAY_AUTH_TOKEN_PATH=/tmp/x/auth_token") holding that entry in its environment: what a
    `ray start` run with start_new_session=True and its own env left, daemons and workers too."""
    parent, session, marked = {}, {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":  # already ended, waiting to be reaped
                continue
            if env_entry and env_entry.encode() in (entry / "environ").read_bytes().split(b"\0"):
                marked.add(pid)
        except (OSError, IndexError):  # ended while we read
            continue
        parent[pid], session[pid] = int(fields[1]), int(fields[3])
    tree = {pid for pid in roots if pid in parent} | marked
    while more := {pid for pid in parent if pid not in tree
                   and (parent[pid] in tree or session[pid] in roots)}:
        tree |= more
    return tree - {os.getpid()}


def end_processes(*procs: subprocess.Popen | None, env_entry: str | None = None) -> None:
    """SIGKILL the processes this test started (procs, and what they started: process_tree),
    by pid, then reap procs. Nothing is ended by name: other jobs run the same programs."""
    roots = [p.pid for p in procs if p is not None]
    for _ in range(2):  # a second pass for what a dying process started meanwhile
        for pid in process_tree(roots, env_entry):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        if proc is not None:
            proc.wait(30)


def wait_until(condition: Callable[[], T], what: str | Callable[[], str], timeout_s: float = 300,
               every_s: float = 0.2) -> T:
    """Poll condition until it returns something true and return that. timeout_s is only a hang
    guard: past it the test fails with a message naming what it waited for (what, or what() for
    a message with the latest state)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"hang guard: waited {timeout_s:g} s for "
                                 f"{what() if callable(what) else what}")
        time.sleep(every_s)
    return value


@contextmanager
def hang_guard(timeout_s: float, what: str) -> Iterator[None]:
    """Fail the block, naming what it waited for, if it has not finished after timeout_s (a
    guard against a hang, not a speed check). Main thread only: it uses SIGALRM."""
    def fail(signum, frame):
        raise AssertionError(f"hang guard: waited {timeout_s:g} s for {what}")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
