"""FLOPs and peak tensor memory of one train_step (and FLOPs of each network's forward pass).

    .venv/bin/python benchmarks/flops.py --experiment celeba_hq --batch-size 1
    .venv/bin/python benchmarks/flops.py --experiment afhq --batch-size 8 --memory
    .venv/bin/python benchmarks/flops.py --experiment toy --official /tmp/official \
        --deps /tmp/offdeps

FLOPs are torch's own formulas (torch.utils.flop_counter: 2 per multiply-add of matmuls and
convolutions, forward and backward; element-wise work is not counted), gathered by a dispatch mode
that sees every aten call of the step, including the double backward of R1 and the FAN.

Memory (--memory) is the peak of the bytes held by live tensors while train_step runs its second
iteration (the first one creates Adam's moments): parameters, EMA copies, gradients, optimiser
state, activations kept for backward and temporaries, each storage counted once from the op that
creates it until it is freed. That is what torch.cuda.max_memory_allocated() reports on a GPU
minus the allocator's rounding and library workspaces (cuDNN, cuBLAS), which gpu_suite.sh measures
where a GPU is lent.

Both run on fake tensors by default (shapes and dtypes only, no arithmetic), so a 256 px count
takes seconds on a laptop; --device counts FLOPs on real tensors instead. With --official the
official loop's FLOPs on the same shapes are printed beside ours (benchmarks/step.py explains the
official side; that count makes real parameters, which takes a while at 256 px on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from common import (count, fake_mode, fake_state, fan_for, load_config, make_batches,
                    network_flops, step_flops)
from stargan_ray.config import ExperimentConfig
from stargan_ray.engine import TrainState, train_step


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages: each counted from the op that creates it until it is freed."""

    def __init__(self) -> None:
        super().__init__()
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._live:  # a view of a storage already counted
            return
        size = storage.nbytes()
        self._live[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self.track, out)
        return out


def peak_memory(cfg: ExperimentConfig) -> dict[str, int]:
    """Bytes of live tensors: the weights (nets, EMA, FAN), after one step (plus gradients and
    Adam's moments), and the peak during the second step."""
    with fake_mode():
        state = fake_state(cfg)
        batch = make_batches(cfg, cfg.data.batch_size, 1, torch.device("cpu"))[0]
        live = LiveBytes()
        for _, module in (*state.nets.items(include_fan=True), *state.nets_ema.items()):
            for tensor in (*module.parameters(), *module.buffers()):
                live.track(tensor)
        for tensor in vars(batch).values():
            live.track(tensor)
        weights = live.current
        with live:
            train_step(state, batch)
            between = live.current
            live.peak = between
            train_step(state, batch)
    return {"weights": weights, "between_steps": between, "peak": live.peak}


def official_step_flops(cfg: ExperimentConfig, device: torch.device, official_path: Path,
                        deps: Path | None, fake: bool = True) -> int:
    """FLOPs of one iteration of the official loop (real parameters; fake activations if fake)."""
    from official import OfficialLoop, ema_networks, import_official, official_networks

    official = import_official(official_path, deps)
    state = TrainState.create(cfg, device, fan=fan_for(cfg, device))
    nets, _ = official_networks(official, cfg, state.nets)
    loop = OfficialLoop(official, cfg, nets, ema_networks(nets))
    batch = make_batches(cfg, cfg.data.batch_size, 1, device)[0]
    if not fake:
        return count(lambda: loop.step(batch))
    # Fake activations cannot update real parameters, and Adam's FLOPs are not counted anyway;
    # the official losses call .item() for their logs, which fake tensors cannot answer (the
    # values are only printed). During the count both are stubbed out.
    for optim in loop.optims.values():
        optim.step = lambda closure=None: None  # type: ignore[method-assign]
    item = torch.Tensor.item
    torch.Tensor.item = lambda self: 0.0  # type: ignore[method-assign]
    try:
        with fake_mode(allow_real_inputs=True):
            return count(lambda: loop.step(batch))
    finally:
        torch.Tensor.item = item  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="celeba_hq")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default=None, help="count FLOPs on real tensors on this device")
    p.add_argument("--memory", action="store_true", help="also the peak tensor memory")
    p.add_argument("--official", type=Path, default=None)
    p.add_argument("--deps", type=Path, default=None)
    args = p.parse_args(argv)
    cfg = load_config(args.experiment, args.set, args.batch_size)
    fake = args.device is None
    device = torch.device(args.device or "cpu")
    n = cfg.data.batch_size
    t = cfg.train
    print(f"{cfg.name} | {cfg.model.img_size} px | batch {n} | precision {t.precision} | "
          f"channels_last {t.channels_last} | {'fake tensors' if fake else device}")
    for name, flops in network_flops(cfg).items():
        print(f"  forward {name:16s} {flops / 1e9:10.2f} GFLOP per image")
    ours = step_flops(cfg, device, fake)
    print(f"train_step (ours)      {ours / 1e9:10.1f} GFLOP per step, "
          f"{ours / n / 1e9:.1f} GFLOP per image")
    if args.official is not None:
        theirs = official_step_flops(cfg, device, args.official.resolve(), args.deps, fake)
        print(f"official loop          {theirs / 1e9:10.1f} GFLOP per step, "
              f"{theirs / n / 1e9:.1f} GFLOP per image; ours/official {ours / theirs:.3f}")
    if args.memory:
        mem = peak_memory(cfg)
        print(f"tensor memory: weights (nets, EMA, FAN) {mem['weights'] / 2**30:.2f} GiB, "
              f"between steps {mem['between_steps'] / 2**30:.2f} GiB, "
              f"peak during a step {mem['peak'] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
