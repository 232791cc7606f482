"""Data-parallel scaling of the toy training on Ray Train: 1 worker against 2 workers, on CPU.

    .venv/bin/python benchmarks/scaling.py [--iters 40] [--print-every 10] [--workers 1 2] [--rounds 2]

Each run is a real `stargan-ray train` run (stargan_ray.train.run_training: Ray Data pipeline,
TorchTrainer, gradient all-reduce, checkpoints) of experiments/toy.toml with the experiment's
batch per worker: data.batch_size (the total per step) is set to N times the toy's, so N workers
train on N times the images per step (weak scaling). The training
loop logs its throughput (images/s over all workers) every print_every steps (the run's
metrics.jsonl); the first window (worker start-up, pipeline warm-up) is dropped and the
median of the others is the run's figure. Scaling efficiency = images/s(N) / (N * images/s(1)).
Runs alternate between the worker counts for --rounds rounds (1, 2, then 2, 1, ...), so that a
change in the load of a shared machine does not fall on one side only; the figures are medians
over rounds, and each round's own efficiency is printed too.

Every run also pays for what the loop does at its last step (samples, fid_quick, a checkpoint);
none of that falls inside a measured window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import logged_windows
from stargan_ray.config import load_experiment
from stargan_ray.train import RunOptions, init_ray, run_training


def run(workers: int, iters: int, print_every: int, storage: Path, tag: str) -> dict:
    per_worker = load_experiment("toy").data.batch_size
    cfg = load_experiment("toy", [f"data.batch_size={per_worker * workers}",
                                  f"train.total_iters={iters}", f"train.print_every={print_every}",
                                  f"train.save_every={iters}", f"train.sample_every={iters}",
                                  f"train.eval_every={iters}"])
    opts = RunOptions(num_workers=workers, cpus_per_worker=1.0, storage=str(storage),
                      name=f"scaling-{workers}w-{tag}", wandb="disabled", max_failures=0)
    start = time.perf_counter()
    run_training(cfg, opts)
    wall = time.perf_counter() - start
    windows = [r["images_per_s"] for r in logged_windows(storage / opts.run_name(cfg))]
    steady = windows[1:] or windows
    return {"workers": workers, "round": tag, "images_per_s": statistics.median(steady),
            "windows_images_per_s": windows, "batch_per_worker": per_worker,
            "iters": iters, "wall_s": wall, "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--print-every", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import ray

    init_ray(RunOptions(num_workers=max(args.workers), cpus_per_worker=1.0))
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
            for r in range(args.rounds):
                order = args.workers if r % 2 == 0 else args.workers[::-1]
                results += [run(n, args.iters, args.print_every, Path(tmp), str(r)) for n in order]
    finally:
        ray.shutdown()
    print(f"toy training, batch {results[0]['batch_per_worker']} per worker, {os.cpu_count()} CPUs")
    for r in results:
        load = r["load_average"]
        print(f"round {r['round']}, {r['workers']} worker(s): {r['images_per_s']:6.1f} images/s "
              f"(windows {', '.join(f'{x:.1f}' for x in r['windows_images_per_s'])}; first "
              f"dropped), run wall {r['wall_s']:.0f} s, load average after it {load[0]:.1f}")
    summary = {}
    for n in args.workers:
        summary[n] = statistics.median(r["images_per_s"] for r in results if r["workers"] == n)
    line = ", ".join(f"{n} worker(s) {v:.1f} images/s" for n, v in summary.items())
    if 1 in summary:
        for n in args.workers:
            if n == 1:
                continue
            per_round = [a["images_per_s"] / (n * b["images_per_s"])
                         for a in results for b in results
                         if a["workers"] == n and b["workers"] == 1 and a["round"] == b["round"]]
            line += (f"; scaling efficiency {n} workers: {summary[n] / (n * summary[1]):.2f} "
                     f"(per round: {', '.join(f'{e:.2f}' for e in per_round)})")
    print(f"median over {args.rounds} rounds: {line}")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "median_images_per_s": summary},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
