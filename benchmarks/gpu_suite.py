"""The GPU benchmark suite behind benchmarks/gpu_suite.sh (see there for how to run it).

Measures, on one device and in one process, without anything from the network:
- the dense matmul throughput the device reaches in fp32 (IEEE), tf32 and bf16: the ceiling the
  training step's achieved TFLOP/s is compared with;
- FLOPs of one train_step per experiment (counted on fake tensors, benchmarks/flops.py);
- train_step time, images/s, peak memory and achieved TFLOP/s at 256 px for celeba_hq and afhq,
  batch 8 and 16, precision fp32 / tf32 / bf16, with and without channels_last and compile, and the
  projected time of the paper's 100k-iteration schedule at batch 8;
- the evaluator's images/s (generator, Inception features, LPIPS: the work of one evaluation item,
  stargan_ray.metrics.evaluator.EvalWorker) at 32 and 64 sources per item, on the embedded
  synthetic dataset drawn at 256 px with seeded random feature weights (no downloads).

Cases run most important first and the whole run keeps to --budget-s: a case whose estimated
duration does not fit in what is left is recorded as skipped. CelebA-HQ's FAN gets seeded random
weights when model.wing_path does not exist (the masks are meaningless, the arithmetic is the
same). Results go to OUT/results.json; the summary table is printed last.

--smoke runs the same code end to end on CPU at tiny sizes (32 px networks, 64 px evaluation,
batch 2 and 4, compile skipped) so that the test suite keeps it working where no GPU is lent.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from common import (EXPERIMENTS, SCHEDULE_ITERS, SMOKE_MODEL, fan_for, load_config, step_flops,
                    synchronize, time_train_step)
from stargan_ray.config import ExperimentConfig

ALL_COMBOS = tuple((p, cl, c) for p in ("bf16", "tf32", "fp32") for cl in (True, False)
                   for c in (False, True))  # (precision, channels_last, compile)
SMOKE_COMBOS = (("bf16", True, False), ("tf32", False, False), ("fp32", False, False))


@dataclass
class Plan:
    device: torch.device
    batches: tuple[int, ...]
    combos: tuple[tuple[str, bool, bool], ...]
    eval_batches: tuple[int, ...]
    eval_experiments: tuple[str, ...]
    eval_img_size: int
    num_outs: int
    overrides: list[str]
    matmul_size: int
    steps: int
    repeats: int
    warmup: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:  # every code path once, at sizes a shared 2-core CPU runs in seconds
        return Plan(torch.device(args.device or "cpu"), (2,), SMOKE_COMBOS, (2,), ("afhq",), 64,
                    2, SMOKE_MODEL, 128, steps=1, repeats=1, warmup=0)
    return Plan(torch.device(args.device or "cuda"), (8, 16), ALL_COMBOS, (32, 64), EXPERIMENTS,
                256, 10, [], 8192, steps=5, repeats=3, warmup=3)


@dataclass
class Case:
    kind: str  # "train" | "eval"
    experiment: str
    batch: int
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.kind == "eval":
            return f"eval {self.experiment} b{self.batch}"
        flags = "".join([" cl" if self.channels_last else "", " compile" if self.compile else ""])
        return f"{self.experiment} b{self.batch} {self.precision}{flags}"


def train_cases(plan: Plan) -> list[Case]:
    """The plan's combinations, the most informative first (the budget cuts from the end)."""
    def priority(combo: tuple[str, bool, bool]) -> tuple:
        precision, cl, compiled = combo
        # eager before compiled, bf16 before tf32 before fp32, channels_last first
        return (compiled, ("bf16", "tf32", "fp32").index(precision), not cl)

    return [Case("train", experiment, batch, precision, cl, compiled)
            for precision, cl, compiled in sorted(plan.combos, key=priority)
            for batch in sorted(plan.batches, reverse=True)
            for experiment in EXPERIMENTS]


def tier(case: Case) -> int:
    """Run order under the time budget: bf16 eager, the evaluator, bf16 compiled with
    channels_last, tf32 eager, fp32 eager, then the other compiled combinations."""
    if case.kind == "eval":
        return 1
    if not case.compile:
        return {"bf16": 0, "tf32": 3, "fp32": 4}[case.precision]
    return 2 if case.precision == "bf16" and case.channels_last else 5


def experiment_config(plan: Plan, case: Case) -> ExperimentConfig:
    overrides = [*plan.overrides, f"train.precision={case.precision}",
                 f"train.channels_last={str(case.channels_last).lower()}",
                 f"train.compile={str(case.compile).lower()}"]
    return load_config(case.experiment, overrides, case.batch)


# ---------------------------------------------------------------- measurements


def matmul_peak(device: torch.device, size: int, iters: int = 10) -> dict[str, float]:
    """Dense matmul TFLOP/s per precision: fp32 (IEEE), tf32 and bf16."""
    from stargan_ray.precision import float32_mode

    out = {}
    for precision, dtype in (("fp32", torch.float32), ("tf32", torch.float32),
                             ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        with float32_mode(precision, device):
            a @ b  # warm-up
            synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                a @ b
            synchronize(device)
        out[precision] = 2 * size**3 * iters / (time.perf_counter() - start) / 1e12
    return out


def step_flops_per_image(plan: Plan, experiment: str) -> float:
    """FLOPs of one train_step per image (convolutions and matmuls are linear in the batch)."""
    cfg = load_config(experiment, plan.overrides, 1)
    return float(step_flops(cfg, plan.device, fake=True))


def run_train_case(plan: Plan, case: Case) -> dict[str, Any]:
    cfg = experiment_config(plan, case)
    timing = time_train_step(cfg, plan.device, steps=plan.steps, repeats=plan.repeats,
                             warmup=plan.warmup)
    return {"step_s": timing.step_s, "images_per_s": timing.images_per_s,
            "repeats_s": [w for w, _ in timing.repeats],
            "peak_memory_gib": (timing.peak_memory_bytes / 2**30
                                if timing.peak_memory_bytes is not None else None)}


class EvalBench:
    """One evaluation item (latent mode, `batch` sources, num_outs outputs each) on the worker."""

    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan, self.root = plan, root
        self._data: dict[int, tuple[Path, Path]] = {}
        self._features: tuple | None = None

    def data(self, num_domains: int, n_val: int) -> tuple[Path, Path]:
        from stargan_ray.data.synthetic import generate

        if num_domains not in self._data:
            folder = self.root / f"synthetic-{num_domains}d"
            self._data[num_domains] = generate(folder, self.plan.eval_img_size, num_domains,
                                               n_train=1, n_val=n_val)
        return self._data[num_domains]

    def features(self) -> tuple:
        from stargan_ray.config import EvalConfig
        from stargan_ray.metrics import fid as fidlib
        from stargan_ray.metrics import lpips as lpipslib
        from stargan_ray.metrics.weights import FeatureWeights

        if self._features is None:
            weights = FeatureWeights("random")
            folded = EvalConfig().inception_folded  # the evaluator's default form
            self._features = (fidlib.build_inception(weights, self.plan.device, folded),
                              lpipslib.build_lpips(weights, self.plan.device))
        return self._features

    def run(self, case: Case) -> dict[str, Any]:
        from stargan_ray.engine import TrainState
        from stargan_ray.metrics.evaluator import EvalData, EvalWorker, Item, Job, make_tasks

        plan = self.plan
        cfg = load_config(case.experiment, [*plan.overrides,
                                            f"model.img_size={plan.eval_img_size}",
                                            f"eval.batch_size={case.batch}"], case.batch)
        train_dir, val_dir = self.data(cfg.model.num_domains, max(plan.eval_batches))
        data = EvalData.discover(train_dir, val_dir, cfg.model.num_domains)
        state = TrainState.create(cfg, plan.device, fan=fan_for(cfg, plan.device))
        inception, lpips_net = self.features()
        job = Job(cfg, data, tuple(make_tasks(data.domains)), plan.num_outs, cfg.train.seed)
        worker = EvalWorker(job, state.nets_ema, inception, lpips_net, plan.device)
        item = Item("fake", ("latent", 0), tuple(range(case.batch)))
        worker.run(item)  # warm-up; decodes and keeps the source images
        times = []
        for _ in range(plan.repeats):
            synchronize(plan.device)
            start = time.perf_counter()
            worker.run(item)
            synchronize(plan.device)
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        images = case.batch * plan.num_outs
        return {"item_s": median, "images_per_s": images / median, "repeats_s": times,
                "images_per_item": images}


# ---------------------------------------------------------------- budget and table


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def estimate_s(plan: Plan, case: Case, done: list[Case]) -> float:
    """Seconds a case will take, from cases already measured (conservative where none is)."""
    steps = plan.warmup + plan.steps * plan.repeats
    similar = [c for c in done if c.kind == case.kind and c.experiment == case.experiment
               and c.precision == case.precision and "step_s" in c.result]
    if case.kind == "eval":
        evals = [c for c in done if c.kind == "eval" and "item_s" in c.result]
        per_image = max((c.result["item_s"] / c.result["images_per_item"] for c in evals),
                        default=0.05)
        return 10 + (plan.repeats + 1) * per_image * case.batch * plan.num_outs
    if similar:
        per_image = max(c.result["step_s"] / c.batch for c in similar)
    else:
        per_image = max((c.result["step_s"] / c.batch for c in done if "step_s" in c.result),
                        default=0.2)
        if case.precision == "fp32":
            per_image *= 4  # IEEE float32 runs far below tf32 / bf16 on tensor-core GPUs
    setup = 5 + (120 if case.compile else 0)  # networks, optimisers; compilation
    return setup + steps * per_image * case.batch


def table(results: dict[str, Any]) -> str:
    peaks = results["matmul_tflops"]
    lines = [f"GPU suite | {results['device_name']} | torch {results['torch']} | "
             f"{results['date']} | matmul peak TFLOP/s: "
             + ", ".join(f"{k} {v:.3g}" for k, v in peaks.items()),
             f"{'case':34s} {'ms/step':>9s} {'img/s':>8s} {'peak GiB':>9s} {'TFLOP/s':>8s} "
             f"{'% peak':>7s} {'100k it h':>9s}"]
    for c in results["cases"]:
        r = c["result"]
        name = Case(**{k: c[k] for k in ("kind", "experiment", "batch", "precision",
                                        "channels_last", "compile")}).name
        if "skipped" in r or "error" in r:
            lines.append(f"{name:34s} {r.get('skipped') or r.get('error')}")
        elif c["kind"] == "eval":
            lines.append(f"{name:34s} {r['item_s'] * 1e3 / r['images_per_item']:9.2f} "
                         f"{r['images_per_s']:8.1f}   (per generated image: G + Inception + LPIPS)")
        else:
            peak = r["peak_memory_gib"]
            mem = f"{peak:9.2f}" if peak is not None else f"{'-':>9s}"
            hours = (f"{SCHEDULE_ITERS * r['step_s'] / 3600:9.2f}" if c["batch"] == 8
                     else f"{'':9s}")
            lines.append(f"{name:34s} {r['step_s'] * 1e3:9.1f} {r['images_per_s']:8.1f} {mem} "
                         f"{r['tflops']:8.3g} {r['percent_of_peak']:7.1f} {hours}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (tests)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="stop starting cases after this many seconds in all (default 7.5 min)")
    args = p.parse_args(argv)
    plan = make_plan(args)
    if args.smoke:
        torch.set_num_threads(1)  # a shared 2-core test machine: see tests/test_precision.py
    budget = Budget(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    device_name = (torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda"
                   else platform.processor() or platform.machine())
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "device": str(plan.device), "device_name": device_name,
        "torch": torch.__version__, "smoke": args.smoke, "plan": {
            k: (str(v) if isinstance(v, torch.device) else v) for k, v in asdict(plan).items()}}
    print(f"GPU suite on {device_name} ({plan.device}), torch {torch.__version__}, "
          f"budget {args.budget_s:.0f} s{' (smoke)' if args.smoke else ''}", flush=True)

    results["matmul_tflops"] = matmul_peak(plan.device, plan.matmul_size)
    print("matmul TFLOP/s: " + ", ".join(f"{k} {v:.3g}" for k, v in
                                         results["matmul_tflops"].items()), flush=True)
    flops = {exp: step_flops_per_image(plan, exp) for exp in EXPERIMENTS}
    results["step_flops_per_image"] = flops
    print("train_step FLOPs per image: " + ", ".join(f"{k} {v / 1e12:.3f} T" if v > 1e11
                                                     else f"{k} {v / 1e9:.3f} G"
                                                     for k, v in flops.items()), flush=True)

    train = train_cases(plan)
    evals = [Case("eval", exp, b) for b in plan.eval_batches for exp in plan.eval_experiments]
    ordered = sorted(train + evals, key=tier)  # stable: train_cases' order within a tier
    done: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        bench = EvalBench(plan, Path(tmp))
        for case in ordered:
            need = estimate_s(plan, case, done)
            if need > budget.left():
                case.result = {"skipped": f"skipped: ~{need:.0f} s needed, "
                                          f"{budget.left():.0f} s left"}
            elif case.compile and plan.device.type != "cuda":
                case.result = {"skipped": "skipped: compile is timed on GPUs only"}
            else:
                case.result = _run_case(plan, case, bench, flops, results["matmul_tflops"])
            done.append(case)
            print(f"{case.name:34s} {_brief(case.result)}", flush=True)
    results["cases"] = [asdict(c) for c in ordered]
    results["elapsed_s"] = args.budget_s - budget.left()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    return 0


def _run_case(plan: Plan, case: Case, bench: EvalBench, flops: dict[str, float],
              peaks: dict[str, float]) -> dict[str, Any]:
    try:
        if case.kind == "eval":
            return bench.run(case)
        result = run_train_case(plan, case)
        tflops = flops[case.experiment] * case.batch / result["step_s"] / 1e12
        result.update(tflops=tflops, percent_of_peak=100 * tflops / peaks[case.precision],
                      flops_per_step=flops[case.experiment] * case.batch)
        return result
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as err:  # one failed case must not cost the rest of the run
        traceback.print_exc()
        first_line = str(err).splitlines()[0][:120] if str(err) else ""
        return {"error": f"{type(err).__name__}: {first_line}"}
    finally:
        if case.compile:
            torch._dynamo.reset()
        gc.collect()
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()


def _brief(result: dict[str, Any]) -> str:
    if "skipped" in result or "error" in result:
        return result.get("skipped") or result["error"]
    if "item_s" in result:
        return f"{result['images_per_s']:.1f} images/s"
    mem = result["peak_memory_gib"]
    return (f"{result['step_s'] * 1e3:.1f} ms/step, {result['images_per_s']:.1f} images/s, "
            f"{result['tflops']:.3g} TFLOP/s"
            + (f", peak {mem:.2f} GiB" if mem is not None else ""))


if __name__ == "__main__":
    sys.exit(main())
