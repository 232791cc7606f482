"""Memory over a long toy run on Ray Train: does anything grow with the step? (issue 23 item 7)

    nice -n 19 .venv/bin/python benchmarks/soak.py [--steps 2000] [--eval-every 500]
        [--interval 5] [--phase 0.5] [--json soak.json] [--markdown soak.md] [--smoke]

A real `stargan-ray train` run (run_training) of experiments/toy.toml on 2 Ray workers with
checkpoints, sample grids, fid_quick (train.eval_every) and W&B offline (RunOptions.wandb), all in
a temporary folder (or --storage, kept: its samples.jsonl is written as the run goes, and
--analyze STORAGE reports on it, on a run stopped early too). While it runs, a thread of this process samples every --interval seconds the resident
memory of every process of the run (this driver and its process tree: Ray's own processes, the
Train controller and workers, Ray Data's workers, W&B's service): RSS and USS (the pages only that
process holds, from /proc/PID/smaps_rollup), the space used in /dev/shm (Ray's object store) and
the size of Ray's session folder (its logs). Sample times are mapped to training steps through
the run's metrics.jsonl (one row with its time every print_every steps).

Report: for each evaluation cycle (the steps between two fid_quick calls) the mean of the samples
at the same phase of the cycle (--phase 0.5: mid-cycle; near 1 the window catches the next
evaluation, whose pause the time->step mapping spreads over the steps logged around it), per role
and in total; the growth per 1000 steps is the slope of those values over the cycles after the first
evaluation, and what the first evaluation keeps is the value of cycle 1 minus that of cycle 0.
The figure is memory, not time: run it under `nice -n 19` on a shared machine. Linux only (/proc).
--smoke: a few steps with tight intervals (tests; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import ROOT  # noqa: F401  (puts the checkout first on sys.path)
from stargan_ray.config import load_experiment
from stargan_ray.train import RunOptions, init_ray, run_training

MB = 1024 * 1024
# Process roles, from the command line Ray gives its processes (ray::ClassName.method).
ROLES = (("TrainWorker", "train_worker"), ("TrainController", "controller"),
         ("wandb", "wandb"), ("ray::", "ray_worker"), ("default_worker.py", "ray_worker"),
         ("raylet", "ray_system"), ("gcs_server", "ray_system"), ("dashboard", "ray_system"),
         ("log_monitor", "ray_system"), ("agent", "ray_system"), ("monitor", "ray_system"))


# ---------------------------------------------------------------- sampling /proc


def _children() -> dict[int, list[int]]:
    """ppid -> pids of every process visible now."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(root: int) -> list[int]:
    """root and all its descendants (Ray's processes of a local instance descend from the
    driver that started it)."""
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += tree.get(pid, [])
    return out


def role_of(pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    return next((role for key, role in ROLES if key in cmd), "other")


def memory_of(pid: int) -> tuple[int, int] | None:
    """(RSS, USS) in bytes from smaps_rollup (one read; the kernel sums the mappings); None when
    the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            kb[parts[0].rstrip(":")] = int(parts[1])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    if not kb.get("Rss"):
        return None  # a zombie: exited, nothing mapped
    return kb["Rss"] * 1024, uss * 1024


def dir_size(path: Path | None) -> int:
    total = 0
    if path is None:
        return 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def take_sample(driver: int, session: Path | None) -> dict:
    """One sample: per process (pid, role, rss, uss), /dev/shm used, the session folder's size."""
    procs = []
    for pid in process_tree(driver):
        mem = memory_of(pid)
        if mem is not None:
            procs.append({"pid": pid, "role": role_of(pid, driver), "rss": mem[0], "uss": mem[1]})
    return {"time": time.time(), "procs": procs, "shm": shutil.disk_usage("/dev/shm").used,
            "session": dir_size(session)}


class Sampler(threading.Thread):
    """Samples every interval seconds until stopped."""

    def __init__(self, interval: float, session: Path | None, raw: Path | None) -> None:
        super().__init__(daemon=True)
        self.interval, self.session, self.raw, self.samples = interval, session, raw, []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            sample = take_sample(os.getpid(), self.session)
            self.samples.append(sample)
            if self.raw is not None:  # as it goes: a run stopped early can still be analysed
                with open(self.raw, "a") as f:
                    f.write(json.dumps(sample) + "\n")
            self.stopped.wait(self.interval)


def ray_session_dir() -> Path | None:
    try:
        from ray._private.worker import _global_node

        return Path(_global_node.get_session_dir_path())
    except Exception:  # a private API: the figure is then missing, not the run
        return None


# ---------------------------------------------------------------- analysis


def add_steps(samples: list[dict], metrics: Path) -> None:
    """Each sample's training step, interpolated between metrics.jsonl's (time, step) rows; None
    outside the logged span (start-up, shutdown)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    times = np.array([r["time"] for r in rows])
    steps = np.array([r["step"] for r in rows])
    for s in samples:
        inside = len(rows) and times[0] <= s["time"] <= times[-1]
        s["step"] = float(np.interp(s["time"], times, steps)) if inside else None


def totals(sample: dict) -> dict[str, float]:
    """MB per role and in total (RSS and USS), plus /dev/shm and the session folder."""
    out: dict[str, float] = {"shm": sample["shm"] / MB, "session": sample["session"] / MB}
    for p in sample["procs"]:
        for kind in ("rss", "uss"):
            for key in (f"{p['role']}_{kind}", f"total_{kind}"):
                out[key] = out.get(key, 0.0) + p[kind] / MB
    return out


def at_phase(samples: list[dict], eval_every: int, steps: int, phase: float,
             width: float = 0.05) -> list[dict]:
    """Per evaluation cycle, the mean of each figure over the samples within width (a fraction
    of a cycle) of its phase point (cycle k: steps k*eval_every to (k+1)*eval_every)."""
    cycles = []
    for k in range(steps // eval_every):
        point = (k + phase) * eval_every
        near = [totals(s) for s in samples
                if s["step"] is not None and abs(s["step"] - point) <= width * eval_every]
        if near:
            keys = set().union(*near)
            cycles.append({"cycle": k, "step": point, "samples": len(near),
                           **{key: float(np.mean([n.get(key, 0.0) for n in near]))
                              for key in sorted(keys)}})
    return cycles


def summarize(cycles: list[dict]) -> dict:
    """Growth per 1000 steps after the first evaluation (least squares over cycles 1..) and what
    the first evaluation keeps (cycle 1 - cycle 0), for every figure."""
    keys = sorted(set().union(*(c.keys() for c in cycles)) - {"cycle", "step", "samples"})
    after = [c for c in cycles if c["cycle"] >= 1]
    growth, first = {}, {}
    if len(after) >= 2:
        x = np.array([c["step"] for c in after])
        growth = {k: float(np.polyfit(x, [c.get(k, 0.0) for c in after], 1)[0] * 1000)
                  for k in keys}
    by_cycle = {c["cycle"]: c for c in cycles}
    if 0 in by_cycle and 1 in by_cycle:
        first = {k: by_cycle[1].get(k, 0.0) - by_cycle[0].get(k, 0.0) for k in keys}
    return {"growth_mb_per_1000_steps": growth, "first_eval_keeps_mb": first}


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"soak: {a['steps']} toy steps, 2 workers, fid_quick every {a['eval_every']}, "
             f"phase {a['phase']} of each cycle; {result['samples']} samples; "
             f"wall {result['wall_s']:.0f} s", "",
             "| figure (MB) | " + " | ".join(f"cycle {c['cycle']} (step {c['step']:.0f})"
                                            for c in result["cycles"])
             + " | growth / 1000 steps | first eval keeps |",
             "| --- | " + " | ".join("---" for _ in result["cycles"]) + " | --- | --- |"]
    growth = result["summary"]["growth_mb_per_1000_steps"]
    first = result["summary"]["first_eval_keeps_mb"]
    keys = [k for k in result["cycles"][0] if k not in ("cycle", "step", "samples")] \
        if result["cycles"] else []
    for k in sorted(keys, key=lambda k: (not k.startswith("total"), k)):
        cells = " | ".join(f"{c.get(k, 0.0):.0f}" for c in result["cycles"])
        g = f"{growth[k]:+.1f}" if k in growth else "-"
        f = f"{first[k]:+.0f}" if k in first else "-"
        lines.append(f"| {k} | {cells} | {g} | {f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the run


# --smoke: small networks and a small fid_quick (the test checks the sampling, not the figures)
SMOKE_SETS = ["model.dim_in=16", "model.max_conv_dim=64", "eval.quick_sources=2",
              "eval.quick_outs=1"]


def config(args: argparse.Namespace):
    return load_experiment("toy", [f"train.total_iters={args.steps}",
                                   f"train.eval_every={args.eval_every}",
                                   f"train.print_every={args.print_every}",
                                   f"train.save_every={args.save_every}",
                                   f"train.sample_every={args.save_every}",
                                   f"eval.validation={args.validation}",
                                   *(SMOKE_SETS if args.smoke else [])])


def soak(args: argparse.Namespace, storage: Path) -> dict:
    """Run the toy training with the sampler running; the samples with their steps."""
    import ray

    started = not ray.is_initialized()
    opts = RunOptions(num_workers=2, cpus_per_worker=1.0, storage=str(storage), name="soak",
                      wandb="offline", max_failures=0)
    init_ray(opts)
    sampler = Sampler(args.interval, ray_session_dir(), storage / "samples.jsonl")
    sampler.start()
    start = time.time()
    try:
        run_training(config(args), opts, note=None)
    finally:
        sampler.stopped.set()
        sampler.join()
        if started:
            ray.shutdown()
    add_steps(sampler.samples, storage / "soak" / "metrics.jsonl")
    return {"wall_s": time.time() - start, "raw": sampler.samples}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=100, help="checkpoints and sample grids")
    p.add_argument("--print-every", type=int, default=20)
    p.add_argument("--validation", choices=("inline", "beside"), default="inline",
                   help="eval.validation: inline (the default here) evaluates in the training "
                        "workers, whose memory this measures; beside in a Ray task")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--phase", type=float, default=0.5, help="where in each cycle to compare")
    p.add_argument("--width", type=float, default=0.05,
                   help="samples within this fraction of a cycle of the phase point count")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--storage", type=Path, default=None,
                   help="a new folder for the run and its samples (kept); default: temporary")
    p.add_argument("--analyze", type=Path, default=None, metavar="STORAGE",
                   help="no run: analyse what a run with --storage left there (a partial run too)")
    p.add_argument("--smoke", action="store_true", help="a few steps (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.eval_every, args.save_every = 12, 4, 4
        args.print_every, args.interval, args.width = 1, 0.5, 0.25
    if args.analyze is not None:  # the samples and metrics.jsonl a run left in --storage
        samples = [json.loads(line) for line in
                   (args.analyze / "samples.jsonl").read_text().splitlines() if line.strip()]
        add_steps(samples, args.analyze / "soak" / "metrics.jsonl")
        run = {"wall_s": samples[-1]["time"] - samples[0]["time"], "raw": samples}
    elif args.storage is not None:
        args.storage.mkdir(parents=True, exist_ok=False)
        run = soak(args, args.storage)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            run = soak(args, Path(tmp))
    samples = run["raw"]
    cycles = at_phase(samples, args.eval_every, args.steps, args.phase, args.width)
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "wall_s": run["wall_s"], "samples": len(samples),
              "cycles": cycles, "summary": summarize(cycles),
              "curve": [{"step": s["step"], **totals(s)} for s in samples]}
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
