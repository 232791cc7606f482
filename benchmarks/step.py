"""Time engine.train_step; with --official, also the official loop on identical shapes and batches.

    .venv/bin/python benchmarks/step.py --experiment toy --device cpu --batch-size 8
    .venv/bin/python benchmarks/step.py --experiment toy --official /tmp/official \
        --deps /tmp/offdeps

--official is a checkout of clovaai/stargan-v2 (it cannot ship with us: CC BY-NC), made with
    mkdir -p /tmp/official && git -C <mirror of clovaai/stargan-v2> archive HEAD core metrics \
        | tar -x -C /tmp/official
--deps a folder holding its extra package munch (``pip install --target /tmp/offdeps munch``); it is
appended to sys.path, so our own packages win over any duplicates there (PYTHONPATH works too).

With --official, both sides start from the same weights and see the same batches. The official side
runs the official compute_d_loss / compute_g_loss / moving_average in the order of the official
Solver.train loop (two D steps, two G steps, EMA, lambda_ds decay), with the official module classes
where they can express the config (dim_in = 2**14 // img_size, a 512-wide mapping network) and
otherwise with copies of our modules, which have the official structure and parameter names. Before
timing, one iteration of each side in float64 from identical weights must leave every parameter of
nets and nets_ema equal to rounding. Timed repetitions alternate between the two sides (and swap
who goes first), so load from other processes on the machine affects both alike; the figures are
medians over repetitions.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from common import fan_for, load_config, make_batches, time_steps, time_train_step
from official import OfficialLoop, ema_networks, import_official, official_networks
from stargan_ray.config import ExperimentConfig, with_overrides
from stargan_ray.engine import Batch, TrainState, build_optimizers, train_step
from stargan_ray.models import EMA, TRAINED, Networks

PARITY_ATOL = 1e-9  # float64: rounding differences after one iteration are ~1e-15


def _float64(batch: Batch) -> Batch:
    return Batch(**{k: (v.double() if v.is_floating_point() else v)
                    for k, v in vars(batch).items()})


def _max_difference(a: Networks, b: Networks, names: tuple[str, ...]) -> tuple[float, str, int]:
    worst, where, count = 0.0, "", 0
    for name in names:
        for (key, p), q in zip(getattr(a, name).named_parameters(), getattr(b, name).parameters()):
            count += 1
            diff = (p.detach() - q.detach()).abs().max().item()
            if diff > worst:
                worst, where = diff, f"{name}.{key}"
    return worst, where, count


@dataclass
class Parity:
    max_abs_diff: float  # over every parameter of nets and nets_ema
    where: str  # the tensor where it occurs
    tensors: int
    moved: float  # max |after - before| of our parameters: the iteration did change them
    official_networks: str

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.moved > 0


def check_parity(official, cfg: ExperimentConfig, device: torch.device, batch: Batch,
                 seed: int) -> Parity:
    """One iteration of each side in float64 from identical weights and the same batch."""
    cfg = with_overrides(cfg, [("train.precision", "fp32"), ("train.compile", False)])
    state = TrainState.create(cfg, device, seed=seed, fan=fan_for(cfg, device))
    for nets in (state.nets, state.nets_ema):
        for _, module in nets.items():
            module.double()
    state.optims = build_optimizers(cfg, state.nets)
    before = copy.deepcopy(state.nets)
    ref_nets, kind = official_networks(official, cfg, state.nets)
    loop = OfficialLoop(official, cfg, ref_nets, ema_networks(ref_nets))
    batch = _float64(batch)
    train_step(state, batch)
    loop.step(batch)
    nets_ema = Networks(**dict(loop.nets_ema), discriminator=None)
    d_nets, where_nets, n_nets = _max_difference(state.nets, Networks(**dict(loop.nets)), TRAINED)
    d_ema, where_ema, n_ema = _max_difference(state.nets_ema, nets_ema, EMA)
    worst, where = max((d_nets, f"nets.{where_nets}"), (d_ema, f"nets_ema.{where_ema}"))
    moved = _max_difference(state.nets, before, TRAINED)[0]
    return Parity(worst, where if worst > 0 else "", n_nets + n_ema, moved, kind)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="toy", help="experiment name or TOML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.precision=bf16 (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
    p.add_argument("--steps", type=int, default=10, help="train steps per timed repetition")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (per side)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (per side)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official", type=Path, default=None, help="checkout of clovaai/stargan-v2")
    p.add_argument("--deps", type=Path, default=None,
                   help="folder with munch for the official code")
    p.add_argument("--no-parity", action="store_true", help="skip the float64 parity check")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.experiment, args.set, args.batch_size)
    t = cfg.train
    print(f"experiment {cfg.name} | {cfg.model.img_size} px | batch {cfg.data.batch_size} | "
          f"{device} | precision {t.precision} | channels_last {t.channels_last} | "
          f"compile {t.compile} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{platform.processor() or platform.machine()}")
    result: dict = {"experiment": cfg.name, "img_size": cfg.model.img_size,
                    "batch_size": cfg.data.batch_size, "device": str(device),
                    "precision": t.precision, "channels_last": t.channels_last,
                    "compile": t.compile, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "overrides": args.set}

    if args.official is None:
        timing = time_train_step(cfg, device, steps=args.steps, repeats=args.repeats,
                                 warmup=args.warmup, seed=args.seed)
        print(f"ours: {timing.step_s * 1e3:.1f} ms/step wall ({timing.cpu_s * 1e3:.1f} ms process "
              f"CPU), {timing.images_per_s:.1f} images/s; medians of {args.repeats} x "
              f"{args.steps} steps: {', '.join(f'{w * 1e3:.1f}' for w, _ in timing.repeats)} ms")
        if timing.peak_memory_bytes is not None:
            print(f"peak memory: {timing.peak_memory_bytes / 2**30:.2f} GiB")
        result.update(step_s=timing.step_s, cpu_s=timing.cpu_s, images_per_s=timing.images_per_s,
                      repeats_s=timing.repeats, peak_memory_bytes=timing.peak_memory_bytes)
    else:
        official = import_official(args.official.resolve(), args.deps)
        if official.placeholders:
            print("placeholder modules for unused official imports: "
                  + ", ".join(official.placeholders))
        batches = make_batches(cfg, cfg.data.batch_size, 4, device, args.seed)
        if not args.no_parity:
            parity = check_parity(official, cfg, device, batches[0], args.seed)
            diff = (f"{parity.max_abs_diff:.2e} at {parity.where}" if parity.max_abs_diff > 0
                    else "0 (bitwise equal)")
            print(f"parity (float64, one iteration, official side: {parity.official_networks}): "
                  f"max |ours - official| over {parity.tensors} parameter tensors of nets and "
                  f"nets_ema = {diff}; the iteration moved parameters by up to {parity.moved:.2e} "
                  f"({'ok' if parity.ok else 'FAILED'}, tolerance {PARITY_ATOL:g})")
            result.update(parity_max_abs_diff=parity.max_abs_diff, parity_ok=parity.ok,
                          official_networks=parity.official_networks)
            if not parity.ok:
                return 1
        result.update(compare(official, cfg, device, batches, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def compare(official, cfg: ExperimentConfig, device: torch.device, batches: list[Batch],
            args: argparse.Namespace) -> dict:
    """Interleaved timing of our train_step and the official loop from identical weights."""
    state = TrainState.create(cfg, device, seed=args.seed, fan=fan_for(cfg, device))
    ref_nets, kind = official_networks(official, cfg, state.nets)
    loop = OfficialLoop(official, cfg, ref_nets, ema_networks(ref_nets))
    sides: dict[str, Callable[[Batch], object]] = {
        "ours": lambda batch: train_step(state, batch), "official": loop.step}
    for step in sides.values():
        time_steps(step, batches, args.warmup, device)
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "official": []}
    for r in range(args.repeats):
        order = ("ours", "official") if r % 2 == 0 else ("official", "ours")
        for name in order:
            times[name].append(time_steps(sides[name], batches, args.steps, device))
    out: dict = {"official_networks": kind, "repeats": args.repeats, "steps": args.steps}
    n = cfg.data.batch_size
    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)
    for c, clock in enumerate(clocks):
        med = {name: statistics.median(t[c] for t in values) for name, values in times.items()}
        per_repeat = statistics.median(a[c] / b[c]
                                       for a, b in zip(times["ours"], times["official"]))
        for name in ("ours", "official"):
            print(f"{clock:4s} {name:9s}: {med[name] * 1e3:8.1f} ms/step, "
                  f"{n / med[name]:7.1f} images/s   "
                  f"[{', '.join(f'{t[c] * 1e3:.0f}' for t in times[name])}]")
        ratio = med["ours"] / med["official"]
        print(f"{clock:4s} ratio ours/official: {ratio:.3f} (ratio of medians; median of "
              f"per-repeat ratios {per_repeat:.3f})")
        out[clock] = {"ours_step_s": med["ours"], "official_step_s": med["official"],
                      "ratio": ratio, "ratio_per_repeat_median": per_repeat,
                      "ours_repeats_s": [t[c] for t in times["ours"]],
                      "official_repeats_s": [t[c] for t in times["official"]]}
    print(f"({args.repeats} interleaved repeats of {args.steps} steps per side after "
          f"{args.warmup} warm-up steps; official side: {kind})")
    return out


if __name__ == "__main__":
    sys.exit(main())
