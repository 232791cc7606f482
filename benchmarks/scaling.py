"""Data-parallel scaling of the toy training on Ray Train: 1 worker against 2 workers, on CPU.

    .venv/bin/python benchmarks/scaling.py [--iters 60] [--print-every 10] [--workers 1 2]

Each run is a real `stargan-ray train` run (stargan_ray.train.run_training: Ray Data pipeline,
TorchTrainer, gradient all-reduce, checkpoints) of experiments/toy.toml with the per-worker batch
of the experiment, so N workers train on N times the images per step (weak scaling). The training
loop reports its throughput (images/s over all workers) every print_every steps; a Train callback
collects every report, the first window (worker start-up, pipeline warm-up) is dropped and the
median of the others is the run's figure. Scaling efficiency = images/s(N) / (N * images/s(1)).

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stargan_ray.config import load_experiment  # noqa: E402
from stargan_ray.train import RunOptions, init_ray, run_training  # noqa: E402


def _collector(path: str):
    """A Train callback (it runs in the controller actor) appending rank 0's reports to a file."""
    from ray.train import UserCallback

    class CollectReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            with open(path, "a") as f:
                f.write(json.dumps(metrics[0]) + "\n")

    return CollectReports()


def run(workers: int, iters: int, print_every: int, storage: Path) -> dict:
    cfg = load_experiment("toy", [f"train.total_iters={iters}", f"train.print_every={print_every}",
                                  f"train.save_every={iters}", f"train.sample_every={iters}",
                                  f"train.eval_every={iters}"])
    opts = RunOptions(num_workers=workers, cpus_per_worker=1.0, storage=str(storage),
                      name=f"scaling-{workers}w", wandb="disabled", max_failures=0)
    reports = storage / f"reports-{workers}.jsonl"
    start = time.perf_counter()
    run_training(cfg, opts, callbacks=[_collector(str(reports))])
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in reports.read_text().splitlines()]
    windows = [r["images_per_s"] for r in rows if "images_per_s" in r]
    steady = windows[1:] or windows
    return {"workers": workers, "images_per_s": statistics.median(steady),
            "windows_images_per_s": windows, "batch_per_worker": cfg.data.batch_size,
            "iters": iters, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--print-every", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import ray

    init_ray(RunOptions(num_workers=max(args.workers), cpus_per_worker=1.0))
    try:
        with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
            results = [run(n, args.iters, args.print_every, Path(tmp)) for n in args.workers]
    finally:
        ray.shutdown()
    base = next((r for r in results if r["workers"] == 1), None)
    load = os.getloadavg()
    print(f"toy training, {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f}")
    for r in results:
        line = (f"{r['workers']} worker(s): {r['images_per_s']:7.1f} images/s (median of windows "
                f"{', '.join(f'{x:.1f}' for x in r['windows_images_per_s'])}; first dropped), "
                f"run wall {r['wall_s']:.0f} s")
        if base is not None and r is not base:
            r["efficiency"] = r["images_per_s"] / (r["workers"] * base["images_per_s"])
            line += f", scaling efficiency {r['efficiency']:.2f}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
