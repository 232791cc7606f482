"""Ray Train at 256 px on one GPU: a short real training run per experiment (issue 13, item 6).

    .venv/bin/python benchmarks/gpu_train.py --out OUT [--suite-results SUITE/results.json]
    .venv/bin/python benchmarks/gpu_train.py --out OUT --smoke [--experiments afhq]   # CPU

benchmarks/gpu_suite.sh runs it after the suite, so one GPU session of under 8 minutes does both.

Each experiment (celeba_hq, afhq) is a real `stargan-ray train` run (stargan_ray.train.run_training:
the Ray Data pipeline, the TorchTrainer, checkpoints) with 1 worker holding 1 GPU, bf16, the
paper's networks at 256 px and total batch 8, on the embedded synthetic dataset drawn at 256 px
(data "synthetic"), for 200 steps with a log row every 20 and one checkpoint at the end. Rank 0's rows
(the run's metrics.jsonl) give the windows; the first window (worker start, pipeline warm-up, cuDNN's
algorithm search) is dropped and the median of the others is the run's images/s. Per experiment:
images/s, ms/step, the peak of torch.cuda.max_memory_allocated() in the worker (the worker logs
it on CUDA), the counted FLOPs of one train_step per image (benchmarks/flops.py, fake tensors),
achieved TFLOP/s = FLOPs per image x images/s, its share of the bf16 matmul ceiling when the
suite's results.json is given, and the paper's 100k-iteration schedule projected in hours at
those images/s (the schedule's samples, checkpoints and evaluations not included).

CelebA-HQ's FAN (model.w_hpf 1) is loaded by the worker from model.wing_path; when that file does
not exist, seeded random FAN weights are written to a temporary wing file and used instead (the
masks are meaningless, the arithmetic is the same), as benchmarks/gpu_suite.py does.

--budget-s bounds the whole script: an experiment is skipped when less than MIN_RUN_S is left,
and a run still going at the deadline is interrupted (its rows so far still count).

--smoke: the same code on CPU with 32 px networks (those of gpu_suite.py's smoke mode, w_hpf 0),
4 steps reported one by one, fp32; for tests/test_benchmarks_smoke.py. Its figures are not
benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from common import (EXPERIMENTS, SCHEDULE_ITERS, SMOKE_MODEL, load_config, logged_windows,
                    step_flops)
from stargan_ray.config import ExperimentConfig
from stargan_ray.train import RunOptions, init_ray, run_training

GPU_STEPS, GPU_PRINT_EVERY = 200, 20
SMOKE_STEPS, SMOKE_PRINT_EVERY = 4, 1
BUDGET_S = 200.0  # default --budget-s on a GPU: what gpu_suite.sh leaves of 8 minutes
MIN_RUN_S = 45.0  # Ray Train start, data warm-up and two report windows: less is not worth starting
NEVER = 10**9  # sample_every / eval_every: nothing but the forced sample grid at the end


def random_wing_file(folder: Path, seed: int = 0) -> Path:
    """A wing.ckpt-format file ({'state_dict': ...}) of a seeded random FAN, for timing only."""
    from stargan_ray.models.fan import FAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fan = FAN()
    path = folder / "wing-random-weights.ckpt"
    torch.save({"state_dict": fan.state_dict()}, path)
    return path


def run_overrides(smoke: bool) -> list[str]:
    steps, every = (SMOKE_STEPS, SMOKE_PRINT_EVERY) if smoke else (GPU_STEPS, GPU_PRINT_EVERY)
    # bf16 on the GPU; fp32 in the smoke mode, as a CPU without bf16 units runs bf16 far slower
    return [*(SMOKE_MODEL if smoke else []), f"train.precision={'fp32' if smoke else 'bf16'}",
            "data.train_dir=synthetic", "data.val_dir=synthetic",
            f"train.total_iters={steps}", f"train.print_every={every}",
            f"train.save_every={steps}", f"train.sample_every={NEVER}",
            f"train.eval_every={NEVER}"]


def experiment_config(experiment: str, smoke: bool, wing_dir: Path) -> ExperimentConfig:
    """The run's config; a random wing file in wing_dir when the FAN's weights are missing."""
    overrides = run_overrides(smoke)
    cfg = load_config(experiment, overrides, None)
    if cfg.model.w_hpf > 0 and not Path(cfg.model.wing_path).is_file():
        cfg = load_config(experiment, [*overrides,
                                       f"model.wing_path={random_wing_file(wing_dir)}"], None)
    return cfg


def flops_per_image(cfg: ExperimentConfig) -> float:
    """flops.py's count of one train_step at the run's batch, per image."""
    return step_flops(cfg, torch.device("cpu"), fake=True) / cfg.data.batch_size


class Deadline:
    """Interrupts the main thread (SIGINT, which run_training turns into a clean abort) once the
    budget is spent, while armed."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds
        self._timer: threading.Timer | None = None

    def left(self) -> float:
        return self.end - time.perf_counter()

    def __enter__(self) -> "Deadline":
        self._timer = threading.Timer(max(self.left(), 0.0), os.kill,
                                      (os.getpid(), signal.SIGINT))
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def summarize(reports: list[dict[str, Any]], cfg: ExperimentConfig, flops: float,
              bf16_peak: float | None) -> dict[str, Any]:
    """The figures of one run from rank 0's log rows (the first window dropped)."""
    windows = [r["images_per_s"] for r in reports]  # logged_windows: rows that have it
    steady = windows[1:] or windows
    batch = cfg.data.batch_size
    out: dict[str, Any] = {"steps_done": max((r["step"] for r in reports), default=0),
                           "windows_images_per_s": windows, "flops_per_image": flops}
    if not steady:
        return out
    images_per_s = statistics.median(steady)
    peaks = [r["peak_memory_gib"] for r in reports if "peak_memory_gib" in r]
    tflops = flops * images_per_s / 1e12
    out.update(images_per_s=images_per_s, step_s=batch / images_per_s,
               peak_memory_gib=max(peaks) if peaks else None, tflops=tflops,
               percent_of_bf16_peak=100 * tflops / bf16_peak if bf16_peak else None,
               schedule_hours=SCHEDULE_ITERS * batch / images_per_s / 3600)
    return out


def run_experiment(cfg: ExperimentConfig, opts: RunOptions, storage: Path,
                   deadline: Deadline) -> tuple[list[dict[str, Any]], str, float]:
    """(rank 0's log rows, "done" | "interrupted at the budget" | "failed: ...", wall s)."""
    start = time.perf_counter()
    status = "done"
    try:
        with deadline:
            run_training(cfg, opts, note=None)
    except KeyboardInterrupt:  # the deadline (run_training aborts the workers first)
        status = "interrupted at the budget"
    except Exception as err:  # one failed run must not cost the other its figures
        traceback.print_exc()
        status = f"failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
    wall = time.perf_counter() - start
    return logged_windows(Path(opts.storage) / opts.run_name(cfg)), status, wall


def _fmt(value: float | None, width: int, spec: str) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}s}"


def table(results: dict[str, Any]) -> str:
    """A header line, the column names, one row per experiment (the first word its name)."""
    lines = [f"Ray Train | {results['device_name']} | torch {results['torch']} | "
             f"{results['date']} | 1 worker, {results['precision']}, {results['steps']} steps "
             f"at {results['img_size']} px, batch {results['batch']}"
             + (f" | bf16 matmul peak {results['bf16_peak_tflops']:.3g} TFLOP/s"
                if results.get("bf16_peak_tflops") else ""),
             f"{'experiment':12s} {'img/s':>8s} {'ms/step':>8s} {'peak GiB':>9s} "
             f"{'GFLOP/img':>10s} {'TFLOP/s':>8s} {'% bf16':>7s} {'100k it h':>9s} "
             f"{'wall s':>7s} status"]
    for r in results["runs"]:
        if "skipped" in r:
            lines.append(f"{r['experiment']:12s} {r['skipped']}")
            continue
        step_ms = r["step_s"] * 1e3 if "step_s" in r else None
        lines.append(
            f"{r['experiment']:12s} {_fmt(r.get('images_per_s'), 8, '.2f')} "
            f"{_fmt(step_ms, 8, '.1f')} {_fmt(r.get('peak_memory_gib'), 9, '.2f')} "
            f"{r['flops_per_image'] / 1e9:10.3f} {_fmt(r.get('tflops'), 8, '.4g')} "
            f"{_fmt(r.get('percent_of_bf16_peak'), 7, '.1f')} "
            f"{_fmt(r.get('schedule_hours'), 9, '.2f')} {r['wall_s']:7.0f} "
            f"{r['status']} ({r['steps_done']} steps)")
    return "\n".join(lines)


def _fan_weights(cfg: ExperimentConfig) -> str:
    if cfg.model.w_hpf <= 0:
        return "none"
    return "seeded random" if "wing-random" in str(cfg.model.wing_path) else "wing file"


def _device_name(smoke: bool) -> str:
    if not smoke and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def _bf16_peak(path: Path | None) -> float | None:
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("matmul_tflops", {}).get("bf16")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for train_results.json")
    p.add_argument("--smoke", action="store_true", help="tiny networks on CPU (tests)")
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    p.add_argument("--suite-results", type=Path, default=None,
                   help="gpu_suite's results.json: its bf16 matmul TFLOP/s is the ceiling")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"for the whole script (default {BUDGET_S:.0f} on a GPU, 600 with --smoke)")
    args = p.parse_args(argv)
    deadline = Deadline(args.budget_s or (600.0 if args.smoke else BUDGET_S))
    os.environ.setdefault("WANDB_MODE", "disabled")
    import ray

    started_ray = not ray.is_initialized()  # a caller's instance (tests) is left running
    opts = RunOptions(num_workers=1, gpus_per_worker=0.0 if args.smoke else 1.0,
                      cpus_per_worker=1.0 if args.smoke else 2.0, wandb="disabled",
                      max_failures=0)
    init_ray(opts)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    bf16_peak = _bf16_peak(args.suite_results)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
            for experiment in args.experiments:
                runs.append(_one(experiment, args.smoke, Path(tmp), opts, deadline, bf16_peak))
                print(f"{experiment}: {json.dumps(runs[-1])}", flush=True)
    finally:
        if started_ray:
            ray.shutdown()
    cfg = load_config(args.experiments[0], run_overrides(args.smoke), None)  # batch, size...
    results = {"date": time.strftime("%Y-%m-%d"), "device_name": _device_name(args.smoke),
               "torch": torch.__version__, "smoke": args.smoke, "precision": cfg.train.precision,
               "steps": cfg.train.total_iters, "img_size": cfg.model.img_size,
               "batch": cfg.data.batch_size, "bf16_peak_tflops": bf16_peak, "runs": runs}
    (args.out / "train_results.json").write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    return 0


def _one(experiment: str, smoke: bool, tmp: Path, opts: RunOptions, deadline: Deadline,
         bf16_peak: float | None) -> dict[str, Any]:
    """One experiment's run and figures, or why it was skipped."""
    if deadline.left() < MIN_RUN_S:  # a shorter run is interrupted at the deadline instead
        return {"experiment": experiment, "skipped": f"skipped: {deadline.left():.0f} s left, "
                                                     f"at least {MIN_RUN_S:.0f} s needed"}
    cfg = experiment_config(experiment, smoke, tmp)
    flops = flops_per_image(cfg)
    run_opts = dataclasses.replace(opts, storage=str(tmp / "runs"), name=f"gpu-train-{experiment}")
    reports, status, wall = run_experiment(cfg, run_opts, tmp, deadline)
    return {"experiment": experiment, "status": status, "wall_s": wall,
            "fan": _fan_weights(cfg),
            **summarize(reports, cfg, flops, bf16_peak)}


if __name__ == "__main__":
    sys.exit(main())
