"""Restart time against the step a run restarts from: it must not grow with the step.

    python benchmarks/resume.py [--steps 4 600] [--rounds 2] [--per-domain 150] [--src-size 1024]

Draws a JPEG tree at --src-size px (CelebA-HQ's originals are 1024 px), trains at 256 px with
narrow networks (the cost measured is the data stream's, not the step's), and for each step N
writes a checkpoint at step N (an untrained state whose step counter says N: where the data stream
starts depends on the step alone), then times `--resume-from` that checkpoint through a one-step
Ray Train run on one worker: worker start, restore, the data stream's start at step N, one step,
one checkpoint. The steps run interleaved over --rounds rounds; medians are compared.

For scale it also measures, in this process, what the stream costs per step (decode and
augmentation, amortised over 64 steps), and prints what replaying N steps before the first new
one (what a restart did before the lanes) would add.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: F401  (the repository first on sys.path)

from stargan_ray.checkpoint import save_checkpoint
from stargan_ray.config import load_experiment
from stargan_ray.data.stream import local_raw_batches
from stargan_ray.data.synthetic import domain_names, draw_image
from stargan_ray.engine import TrainState
from stargan_ray.train import RunOptions, init_ray, run_training


def make_tree(root: Path, per_domain: int, src_size: int) -> Path:
    for d, name in enumerate(domain_names(2)):
        (root / name).mkdir(parents=True)
        for i in range(per_domain):
            image = draw_image(name, src_size // 2, np.random.default_rng([7, d, i]))
            image.resize((src_size, src_size)).save(root / name / f"{i:05d}.jpg", quality=90)
    return root


def config(tree: Path, total_iters: int):
    return load_experiment("toy", [
        ("model.img_size", 256), ("model.num_domains", 2), ("model.dim_in", 8),
        ("model.max_conv_dim", 16), ("model.style_dim", 8), ("model.latent_dim", 4),
        ("model.hidden_dim", 16), ("data.batch_size", 8), ("data.train_dir", str(tree)),
        ("data.val_dir", str(tree)), ("train.total_iters", total_iters),
        ("train.save_every", total_iters), ("train.print_every", total_iters),
        ("train.sample_every", 10 ** 9), ("train.eval_every", 10 ** 9)])


def restart_seconds(tree: Path, step: int, work: Path, tag: str) -> float:
    """Wall time of a one-step run resumed from a checkpoint at `step`."""
    cfg = config(tree, step + 1)
    state = TrainState.create(cfg, "cpu")
    state.step = step
    checkpoint = save_checkpoint(state, work / f"start-{tag}.pt")
    opts = RunOptions(num_workers=1, cpus_per_worker=1.0, storage=str(work / "runs"),
                      name=f"resume-{tag}", wandb="disabled", max_failures=0,
                      resume_from=str(checkpoint))
    start = time.perf_counter()
    run_training(cfg, opts, note=None)
    return time.perf_counter() - start


def stream_seconds_per_step(tree: Path, steps: int = 64) -> float:
    """In-process cost of the stream per step (8 rows, 3 images each), amortised over 64 steps:
    one 64-image chunk per lane, so every decode is counted once."""
    cfg = config(tree, 10 ** 6)
    start = time.perf_counter()
    it = local_raw_batches(cfg)
    for _ in range(steps):
        next(it)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 600])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-domain", type=int, default=150)
    parser.add_argument("--src-size", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        work = Path(tmp)
        tree = make_tree(work / "train", args.per_domain, args.src_size)
        per_step = stream_seconds_per_step(tree)
        init_ray(RunOptions(num_workers=1, cpus_per_worker=1.0))
        times: dict[int, list[float]] = {n: [] for n in args.steps}
        for r in range(args.rounds):
            order = args.steps if r % 2 == 0 else list(reversed(args.steps))
            for n in order:
                seconds = restart_seconds(tree, n, work, f"{n}-{r}")
                times[n].append(seconds)
                print(f"round {r}: restart at step {n}: {seconds:.1f} s", flush=True)

    print(f"{2 * args.per_domain} JPEGs of {args.src_size} px, 256 px training, batch 8, "
          "1 worker (1 CPU)")
    print(f"data stream: {per_step:.3f} s per step in-process (amortised over 64 steps)")
    base = statistics.median(times[args.steps[0]])
    for n in args.steps:
        median = statistics.median(times[n])
        print(f"restart at step {n:>6}: median {median:.1f} s (runs: "
              f"{', '.join(f'{t:.1f}' for t in times[n])}); ratio to step {args.steps[0]}: "
              f"{median / base:.2f}; a replay of {n} steps would add about {n * per_step:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
