"""Count the floating-point operations of one train_step (and of each network's forward pass).

    .venv/bin/python benchmarks/flops.py --experiment celeba_hq --batch-size 1
    .venv/bin/python benchmarks/flops.py --experiment toy --official /tmp/official --deps /tmp/offdeps

Counts are torch's own FLOP formulas (torch.utils.flop_counter: 2 per multiply-add of matmuls and
convolutions, forward and backward; element-wise work is not counted), gathered by a dispatch mode
that sees every aten call of the step, including the double backward of R1 and the FAN. By
default the step runs on fake tensors (shapes only, no arithmetic), so a 256 px count takes
seconds on a laptop; --device runs it for real instead. With --official the official loop's count
on the same shapes is printed beside ours (benchmarks/step.py explains the official side).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step import fan_for, load_config, make_batches  # noqa: E402

from stargan_ray.config import ExperimentConfig  # noqa: E402
from stargan_ray.engine import Batch, TrainState, train_step  # noqa: E402


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
def _fake(enabled: bool) -> Iterator[None]:
    """Fake tensors: every op computes shapes only. Parameters made before stay real."""
    if not enabled:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield


def count(fn: Callable[[], object], fake: bool) -> int:
    with _fake(fake), FlopCount() as counter:
        fn()
    return counter.total


def _frozen_adam(state: TrainState) -> None:
    """Fake tensors cannot update real parameters, and Adam's FLOPs are not counted anyway:
    replace the optimisers' step by one that leaves everything as it is."""
    for optim in state.optims.values():
        optim.step = lambda closure=None: None  # type: ignore[method-assign]


def step_flops(cfg: ExperimentConfig, device: torch.device, fake: bool = True) -> int:
    """FLOPs of one train_step at cfg's shapes and batch size."""
    state = TrainState.create(cfg, device, fan=fan_for(cfg, device))
    batch = make_batches(cfg, cfg.data.batch_size, 1, device)[0]
    if fake:
        _frozen_adam(state)
    return count(lambda: train_step(state, batch), fake)


def network_flops(cfg: ExperimentConfig, device: torch.device, fake: bool = True) -> dict[str, int]:
    """FLOPs of one forward pass per image of each network (and the FAN's mask computation)."""
    state = TrainState.create(cfg, device, fan=fan_for(cfg, device))
    b: Batch = make_batches(cfg, 1, 1, device)[0]
    nets = state.nets
    s_trg = torch.zeros(1, cfg.model.style_dim, device=device)
    masks = None
    if nets.fan is not None:
        with torch.no_grad(), _fake(fake):
            masks = nets.fan.get_heatmap(b.x_src)
    calls: dict[str, Callable[[], object]] = {
        "generator": lambda: nets.generator(b.x_src, s_trg, masks=masks),
        "mapping_network": lambda: nets.mapping_network(b.z_trg, b.y_ref),
        "style_encoder": lambda: nets.style_encoder(b.x_src, b.y_src),
        "discriminator": lambda: nets.discriminator(b.x_src, b.y_src),
    }
    if nets.fan is not None:
        calls["fan"] = lambda: nets.fan.get_heatmap(b.x_src)
    out = {}
    with torch.no_grad():
        for name, call in calls.items():
            out[name] = count(call, fake)
    return out


def official_step_flops(cfg: ExperimentConfig, device: torch.device, official_path: Path,
                        deps: Path | None, fake: bool = True) -> int:
    from step import OfficialLoop, ema_networks, import_official, official_networks

    official = import_official(official_path, deps)
    state = TrainState.create(cfg, device, fan=fan_for(cfg, device))
    nets, _ = official_networks(official, cfg, state.nets)
    loop = OfficialLoop(official, cfg, nets, ema_networks(nets))
    batch = make_batches(cfg, cfg.data.batch_size, 1, device)[0]
    if not fake:
        return count(lambda: loop.step(batch), fake)
    for optim in loop.optims.values():
        optim.step = lambda closure=None: None  # type: ignore[method-assign]
    # The official losses call .item() for their logs, which fake tensors cannot answer; the
    # values are only printed, so during the count they read as 0.
    item = torch.Tensor.item
    torch.Tensor.item = lambda self: 0.0  # type: ignore[method-assign]
    try:
        return count(lambda: loop.step(batch), fake)
    finally:
        torch.Tensor.item = item  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="celeba_hq")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default=None, help="count on real tensors on this device")
    p.add_argument("--official", type=Path, default=None)
    p.add_argument("--deps", type=Path, default=None)
    args = p.parse_args(argv)
    cfg = load_config(args.experiment, args.set, args.batch_size)
    fake = args.device is None
    device = torch.device(args.device or "cpu")
    n = cfg.data.batch_size
    print(f"{cfg.name} | {cfg.model.img_size} px | batch {n} | "
          f"{'fake tensors' if fake else device}")
    for name, flops in network_flops(cfg, device, fake).items():
        print(f"  forward {name:16s} {flops / 1e9:10.2f} GFLOP per image")
    ours = step_flops(cfg, device, fake)
    print(f"train_step (ours)      {ours / 1e9:10.1f} GFLOP per step, "
          f"{ours / n / 1e9:.1f} GFLOP per image")
    if args.official is not None:
        theirs = official_step_flops(cfg, device, args.official.resolve(), args.deps, fake)
        print(f"official loop          {theirs / 1e9:10.1f} GFLOP per step, "
              f"{theirs / n / 1e9:.1f} GFLOP per image; ours/official {ours / theirs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
