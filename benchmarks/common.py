"""What the benchmark scripts share; no script imports another script.

Run a script as `python benchmarks/NAME.py`: its folder is then first on sys.path, so `import
common` finds this file, and importing it puts the repository first too (the checkout's
stargan_ray, not an installed one).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))

from stargan_ray.config import ExperimentConfig, load_experiment, with_overrides  # noqa: E402
from stargan_ray.engine import Batch, TrainState, build_optimizers, train_step  # noqa: E402
from stargan_ray.models import EMA, Networks, build_networks  # noqa: E402

# The GPU suite's experiments and model sizes (gpu_suite.py and gpu_train.py).
EXPERIMENTS = ("celeba_hq", "afhq")
SCHEDULE_ITERS = 100_000  # the paper's schedule, at batch 8
SMOKE_MODEL = ["model.img_size=32", "model.dim_in=8", "model.max_conv_dim=16",
               "model.hidden_dim=16", "model.style_dim=8", "model.latent_dim=4",
               "model.w_hpf=0.0"]  # the FAN sees 256 px whatever the model size: too slow here


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_windows(run_dir: Path) -> list[dict]:
    """Rank 0's log rows of a run, one per print_every window (images_per_s, and on CUDA
    peak_memory_gib), from its metrics.jsonl; [] before the first. Ray's reports are fewer: a
    plain run reports its checkpoints and evaluations only."""
    from stargan_ray.plots import read_jsonl

    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in read_jsonl(path) if "images_per_s" in r] if path.exists() else []


# ---------------------------------------------------------------- configs, batches, timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(cfg: ExperimentConfig, batch_size: int, count: int, device: torch.device,
                 seed: int = 0) -> list[Batch]:
    """Random images in [-1, 1], labels and latent codes with the official field names."""
    g = torch.Generator().manual_seed(seed)
    size, domains, latent = cfg.model.img_size, cfg.model.num_domains, cfg.model.latent_dim

    def images() -> torch.Tensor:
        return torch.rand((batch_size, 3, size, size), generator=g) * 2 - 1

    def labels() -> torch.Tensor:
        return torch.randint(0, domains, (batch_size,), generator=g)

    def codes() -> torch.Tensor:
        return torch.randn((batch_size, latent), generator=g)

    return [Batch(x_src=images(), y_src=labels(), x_ref=images(), x_ref2=images(), y_ref=labels(),
                  z_trg=codes(), z_trg2=codes()).to(device) for _ in range(count)]


def fan_for(cfg: ExperimentConfig, device: torch.device, seed: int = 0) -> nn.Module | None:
    """The FAN for w_hpf > 0: the wing checkpoint when it exists, else seeded random weights.

    Random weights give meaningless masks but the same arithmetic, which is all a timing needs.
    """
    if cfg.model.w_hpf <= 0:
        return None
    from stargan_ray.models.fan import FAN, load_fan

    if cfg.model.wing_path and Path(cfg.model.wing_path).is_file():
        return load_fan(cfg.model.wing_path, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FAN().to(device)


def load_config(experiment: str, overrides: list[str], batch_size: int | None) -> ExperimentConfig:
    cfg = load_experiment(experiment, overrides)
    if batch_size is not None:
        cfg = with_overrides(cfg, [("data.batch_size", batch_size)])
    return cfg


def time_steps(step: Callable[[Batch], object], batches: list[Batch], steps: int,
               device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds per step of `steps` consecutive calls, device synchronised.

    On a CPU shared with other jobs the process CPU time is the steadier measure of the work done
    (with --threads 1 it excludes time spent waiting for a core); on a GPU only wall time means
    anything.
    """
    if steps == 0:
        return 0.0, 0.0
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(batches[i % len(batches)])
    synchronize(device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


@dataclass
class StepTiming:
    step_s: float  # median wall seconds per train_step
    cpu_s: float  # median process CPU seconds per train_step
    images_per_s: float  # from the wall time
    repeats: list[tuple[float, float]]  # (wall, cpu) per repetition
    peak_memory_bytes: int | None  # CUDA only: peak allocated during the timed steps


def time_train_step(cfg: ExperimentConfig, device: torch.device, *, steps: int, repeats: int,
                    warmup: int, seed: int = 0) -> StepTiming:
    """Median time of our train_step for one config (step.py, gpu_suite.py)."""
    state = TrainState.create(cfg, device, seed=seed, fan=fan_for(cfg, device))
    batches = make_batches(cfg, cfg.data.batch_size, 4, device, seed)

    def step(batch: Batch) -> object:
        return train_step(state, batch)

    time_steps(step, batches, warmup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [time_steps(step, batches, steps, device) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    return StepTiming(wall, cpu, cfg.data.batch_size / wall, times, peak)


# ---------------------------------------------------------------- FLOP counting


class FlopCount(TorchDispatchMode):
    """Adds up torch's FLOP formulas over every aten call made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


@contextlib.contextmanager
def fake_mode(allow_real_inputs: bool = False) -> Iterator[None]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=allow_real_inputs):
        yield


def fake_state(cfg: ExperimentConfig) -> TrainState:
    """A TrainState whose every tensor is fake (call inside fake_mode()); values are meaningless.

    Built on the default device directly: moving fake parameters (TrainState.create's .to) and
    deep-copying them (ema_copy) are not supported, so the EMA copies are fresh networks.
    """
    fan = None
    if cfg.model.w_hpf > 0:
        from stargan_ray.models.fan import FAN

        fan = FAN()
    nets = build_networks(cfg.model, fan=fan)
    fresh = build_networks(cfg.model)
    nets_ema = Networks(**{name: getattr(fresh, name).requires_grad_(False) for name in EMA},
                        fan=fan)
    if cfg.train.channels_last:  # what module.to(memory_format=...) does, which fakes refuse
        for _, module in (*nets.items(), *nets_ema.items()):
            for param in module.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
    return TrainState(cfg=cfg, nets=nets, nets_ema=nets_ema, optims=build_optimizers(cfg, nets),
                      step=0, device=torch.device("cpu"))


def count(fn: Callable[[], object]) -> int:
    with FlopCount() as counter:
        fn()
    return counter.total


def step_flops(cfg: ExperimentConfig, device: torch.device, fake: bool = True) -> int:
    """FLOPs of one train_step at cfg's shapes and batch size."""
    if fake:
        with fake_mode():
            state = fake_state(cfg)
            batch = make_batches(cfg, cfg.data.batch_size, 1, torch.device("cpu"))[0]
            return count(lambda: train_step(state, batch))
    state = TrainState.create(cfg, device, fan=fan_for(cfg, device))
    batch = make_batches(cfg, cfg.data.batch_size, 1, device)[0]
    return count(lambda: train_step(state, batch))


def network_flops(cfg: ExperimentConfig) -> dict[str, int]:
    """FLOPs of one forward pass per image of each network (and of the FAN's masks)."""
    with fake_mode(), torch.no_grad():
        nets = fake_state(cfg).nets
        b: Batch = make_batches(cfg, 1, 1, torch.device("cpu"))[0]
        s_trg = torch.zeros(1, cfg.model.style_dim)
        masks = nets.masks(b.x_src)
        calls: dict[str, Callable[[], object]] = {
            "generator": lambda: nets.generator(b.x_src, s_trg, masks=masks),
            "mapping_network": lambda: nets.mapping_network(b.z_trg, b.y_ref),
            "style_encoder": lambda: nets.style_encoder(b.x_src, b.y_src),
            "discriminator": lambda: nets.discriminator(b.x_src, b.y_src),
        }
        if nets.fan is not None:
            calls["fan"] = lambda: nets.fan.get_heatmap(b.x_src)
        return {name: count(call) for name, call in calls.items()}
