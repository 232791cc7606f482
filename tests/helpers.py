"""The one home of the tests' plain helpers: tiny configs, seeded models, batches, checkpoints,
run folders and ports. Fixtures live in conftest.py and build on these."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image

from stargan_ray.checkpoint import load_state_into, read_config, safe_load
from stargan_ray.config import ExperimentConfig, load_experiment
from stargan_ray.engine import Batch, TrainState
from stargan_ray.models import EMA, TRAINED, build_networks, ema_copy, he_init
from stargan_ray.models.fan import FAN

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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = build_networks(cfg.model)
        for _, module in nets.items():
            module.apply(he_init)
    return ema_copy(nets)


def tiny_translator(w_hpf: float = 0.0, batch_size: int = 16):
    """A Translator of seeded He-initialised tiny networks with 3 domains (with a random FAN when
    w_hpf > 0)."""
    cfg = tiny_config(**{"model.num_domains": 3, "model.w_hpf": w_hpf,
                         "model.wing_path": "wing.ckpt" if w_hpf > 0 else ""})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = build_networks(cfg.model, fan=FAN() if w_hpf > 0 else None)
        for _, module in nets.items():
            module.apply(he_init)
    nets = ema_copy(nets)
    for _, module in nets.items(include_fan=True):
        module.eval()
    from stargan_ray.inference import Translator

    return Translator(nets, cfg, torch.device("cpu"), batch_size)


def randomized_fan(seed: int) -> FAN:
    """A FAN whose every parameter and batch-norm statistic is random (not the defaults)."""
    g = torch.Generator().manual_seed(seed)
    fan = FAN()
    with torch.no_grad():
        for name, t in fan.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
    return fan


def sparsify_heads(fan: FAN, x: torch.Tensor) -> None:
    """Rescale the landmark head so ~5% of each heatmap passes the 0.1 truncation.

    Random weights otherwise give heatmaps above 0.1 nearly everywhere and masks that are all 1.
    """
    heat = fan.get_heatmap(x, b_preprocess=False).transpose(0, 1).flatten(1)
    q, peak = heat.quantile(0.95, dim=1), heat.amax(dim=1)
    a = 1.0 / (peak - q).clamp_min(1e-6)
    with torch.no_grad():
        fan.l0.weight[:-1] *= a.view(-1, 1, 1, 1)
        fan.l0.bias[:-1] = a * (fan.l0.bias[:-1] - q) + 0.1


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


def confident_d(state):
    """Shift D's output up: an untrained D calls most images fake (r_t near -1), and p would
    stay at 0; a D that calls every real image real (r_t = 1) makes p rise."""
    with torch.no_grad():
        state.nets.discriminator.main[-1].bias.add_(10.0)
    return state


def assert_identical_networks(a, b) -> None:
    """Two TrainStates hold bit-for-bit the same networks and EMA copies."""
    for name in TRAINED:
        for pa, pb in zip(getattr(a.nets, name).parameters(), getattr(b.nets, name).parameters()):
            assert torch.equal(pa, pb), name
    for name in EMA:
        for pa, pb in zip(getattr(a.nets_ema, name).parameters(),
                          getattr(b.nets_ema, name).parameters()):
            assert torch.equal(pa, pb), name


def assert_equal_states(a, b) -> None:
    """Two TrainStates hold the same networks and EMA copies (within 1e-6), and the same ADA
    state (p and the interval's sums) exactly when ADA is on."""
    assert (a.ada is None) == (b.ada is None), "ADA on in one state only"
    if a.ada is not None:
        for key, value in a.ada.state_dict().items():
            assert torch.equal(value, getattr(b.ada, key)), (key, value, getattr(b.ada, key))
    for name in TRAINED:
        for (key, pa), pb in zip(getattr(a.nets, name).named_parameters(),
                                 getattr(b.nets, name).parameters()):
            assert torch.allclose(pa, pb, rtol=0, atol=1e-6), f"{name}.{key}"
    for name in EMA:
        for pa, pb in zip(getattr(a.nets_ema, name).parameters(),
                          getattr(b.nets_ema, name).parameters()):
            assert torch.allclose(pa, pb, rtol=0, atol=1e-6)


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
    for domain in domains:
        (root / domain).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", size, colour(i)).save(root / domain / f"{i}{suffix}")
    return root


COLOURS = ((220, 40, 40), (40, 40, 220))


def write_colour_tree(root, counts, size=32, seed=0):
    """root/d<k>/<i>.png with counts[k] images of colour family k, each a little different."""
    rng = np.random.default_rng(seed)
    for label, count in enumerate(counts):
        folder = root / f"d{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.asarray(COLOURS[label], np.int16)
            pixels = base + rng.integers(-30, 30, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def colour_domain(images: torch.Tensor) -> np.ndarray:
    """Domain told by the pixels: red-dominant images are 0, blue-dominant 1."""
    means = images.float().mean((2, 3))
    return (means[:, 2] > means[:, 0]).long().numpy()


def face_points(rng: np.random.Generator) -> np.ndarray:
    """98 landmarks with eyes (60-75, 96, 97) left/right above the mouth corners (76, 82)."""
    pts = rng.normal(128, 30, (98, 2))
    pts[60:68], pts[96] = rng.normal((100, 110), 3, (8, 2)), (100, 110)
    pts[68:76], pts[97] = rng.normal((156, 110), 3, (8, 2)), (156, 110)
    pts[76], pts[82] = (110, 170), (146, 170)
    return pts


# ---------------------------------------------------------------- checkpoints and run folders


def save_synthetic_checkpoint(path: Path) -> Path:
    """An untrained, seeded tiny model with the synthetic set's 3 domains, saved to path."""
    from stargan_ray.checkpoint import save_checkpoint

    cfg = tiny_config(**{"model.num_domains": 3, "data.train_dir": "synthetic"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = TrainState.create(cfg, "cpu")
    return save_checkpoint(state, path)


def official_files(tmp_path, cfg, prefix=True, drop_filter=True):
    """Files as the official code saves them at step 20 (module. prefixes, no hpf.filter buffer
    unless asked), from random networks of cfg.model; returns (nets, nets_ema)."""
    nets = build_networks(cfg.model)
    ema = ema_copy(nets)
    for p in ema.generator.parameters():
        p.data.normal_()

    def dump(networks):
        out = {}
        for name, module in networks.items():
            sd = module.state_dict()
            if drop_filter:
                sd.pop("hpf.filter", None)
            out[name] = {("module." + k if prefix else k): v for k, v in sd.items()}
        return out

    torch.save(dump(ema), tmp_path / "000020_nets_ema.ckpt")
    torch.save(dump(nets), tmp_path / "000020_nets.ckpt")
    return nets, ema


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


class LoopLogger:
    """RunLogger's surface for train.worker._train without files: keeps the events and the
    checkpoints it is told were saved (folder, step, aliases)."""

    def __init__(self):
        self.events = []
        self.saved = []

    def event(self, kind, **fields):
        self.events.append((kind, fields))

    def checkpoint_saved(self, checkpoint_dir, step, metrics, aliases):
        self.saved.append((checkpoint_dir, step, aliases))

    def log(self, step, metrics, line):
        pass

    def images(self, step, images):
        pass

    def evaluation(self, step, metrics):
        pass


def recording_report(reports: list):
    """ray.train.report as Ray runs it for one worker, without Ray: the checkpoint's upload
    function (train/upload.py) runs at once, then (step, with a checkpoint) joins reports."""
    def report(metrics, checkpoint=None, checkpoint_dir_name=None, checkpoint_upload_fn=None,
               **kw):
        if checkpoint is not None and checkpoint_upload_fn is not None:
            checkpoint_upload_fn(checkpoint, checkpoint_dir_name)
        reports.append((metrics["step"], checkpoint is not None))

    return report


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


# ---------------------------------------------------------------- W&B offline runs


WANDB_BLOCK = 32768  # the .wandb log's block size


def wandb_records(offline_run: Path) -> list:
    """Every record of an offline W&B run's .wandb file (wandb_internal_pb2.Record).

    The file is a LevelDB-style log: a 7-byte header, then records cut into chunks with 7-byte
    headers (crc, length, type: 1 full, 2 first, 3 middle, 4 last) that never straddle a block.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = offline_run.glob("*.wandb")
    data, pos, chunks, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < 7:
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return records


def wandb_of_type(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def wandb_history(records) -> list[dict]:
    """Each history record as {key: decoded value}, nested keys joined by '/'."""
    rows = []
    for h in wandb_of_type(records, "history"):
        row: dict = {}
        for item in h.item:
            path = [item.key] if item.key else list(item.nested_key)
            value = json.loads(item.value_json)
            if len(path) == 1:
                row[path[0]] = value
            else:  # a media value's fields: ["eval/tasks", "_type"]
                row.setdefault(path[0], {})[path[1]] = value
        rows.append(row)
    return rows


def offline_wandb_run(folder: Path) -> Path:
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]
