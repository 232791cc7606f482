"""`stargan-ray train`: one run on Ray Train workers, or its plan with --dry-run."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .common import (add_experiment_args, add_resource_args, add_wait_arg, experiment_from_args,
                     nonnegative_int, positive_float, worker_count)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train on Ray Train workers (CPU or GPU, one or many nodes)")
    add_experiment_args(p)
    p.add_argument("--num-workers", type=worker_count, default=1, metavar="N|MIN-MAX",
                   help="Ray Train workers (one per GPU); MIN-MAX: elastic, starts with what the "
                        "cluster gives (at least MIN), shrinks when nodes are lost and grows when "
                        "they join, with the same total batch (data.batch_size)")
    p.add_argument("--resize-check-every", type=positive_float, default=60.0, metavar="SECONDS",
                   dest="resize_check_s",
                   help="with --num-workers MIN-MAX: how often Ray Train looks for room for more "
                        "workers (a joined node) while the run is healthy; growing restarts the "
                        "workers from the last checkpoint (default: 60, Ray's)")
    # any positive minimum: --cpus-per-worker must be > 0
    add_resource_args(p, what="run", cpus_minimum=1e-9)
    add_wait_arg(p, "worker")
    p.add_argument("--name", help="run name, a plain folder name (default: the experiment name)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its newest complete checkpoint")
    p.add_argument("--resume-from", metavar="PATH",
                   help="start (a new or this run) from a stargan-ray checkpoint file or folder, "
                        "e.g. one written by import-official")
    p.add_argument("--init-from", metavar="PATH",
                   help="start a new run (step 0, fresh optimisers) from the networks of a "
                        "stargan-ray checkpoint or an official 100000_nets_ema.ckpt (which has no "
                        "discriminator: it starts fresh); other domains than the file's are fine")
    p.add_argument("--map", action="append", default=[], metavar="OLD=NEW", dest="init_map",
                   help="with --init-from: the run domain NEW (name or index) continues the file's "
                        "domain OLD (name or index); repeat per domain. Domains with the same name "
                        "on both sides map by themselves; unmapped run domains start from the mean "
                        "of the copied heads")
    p.add_argument("--max-failures", type=nonnegative_int, default=3,
                   help="worker failures to recover from (restoring the last checkpoint)")
    p.add_argument("--force", action="store_true",
                   help="take over the run folder even when its lock names a run that may still "
                        "be alive (another host); a lock whose process is gone is taken anyway")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the Ray resources, then exit")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    from ..train import RunOptions

    return RunOptions(num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, storage=args.storage, name=args.name,
                      resume=args.resume, max_failures=args.max_failures, wandb=args.wandb,
                      resume_from=args.resume_from, force=args.force, init_from=args.init_from,
                      init_map=tuple(args.init_map), resize_check_s=args.resize_check_s)


def batch_line(cfg, num_workers: int) -> str:
    """What one step puts through the networks: the total, per worker, micro-batches."""
    total, cap = cfg.data.batch_size, cfg.data.batch_per_worker
    largest = -(-total // num_workers)  # shares differ by one row when the count does not divide
    share = str(largest) if total % num_workers == 0 else f"{total // num_workers}-{largest}"
    rounds = -(-largest // cap) if cap and cap < largest else 1
    micro = (f"{rounds} accumulation rounds of at most {cap}" if rounds > 1 else "in one pass")
    return (f"batch: {total} images per step in total, {share} per worker over "
            f"{num_workers} worker(s) ({micro})")


def run(args: argparse.Namespace) -> int:
    from ..config import to_toml
    from ..train import TrainingInterrupted, init_ray, plan_run, run_training
    from ..train.capacity import train_request, wait_for_capacity
    from ..train.run_lock import hold_run_folder

    cfg = experiment_from_args(args)
    opts = options_from_args(args)
    plan = plan_run(cfg, opts)  # every check that needs no Ray, before Ray starts (~10 s)
    if args.dry_run:
        for line in plan.notes:
            print(f"# {line}")
        print(to_toml(cfg))
        low, high = opts.worker_range
        for count in sorted({low, high}):
            print(f"# {batch_line(cfg, count)}")
        print("# Ray resources")
        print(json.dumps({**opts.resources(), "storage": plan.run_dir,
                          "start": asdict(plan.start) if plan.start else None}, indent=2))
        return 0
    for line in plan.notes:
        print(line, flush=True)
    try:
        # Held before Ray starts, so a second run on the name is refused at once.
        with hold_run_folder(plan.run_dir, force=opts.force, note=print):
            init_ray(opts)
            # a request no node can ever hold: one line; one for an autoscaler: --wait
            wait_for_capacity(train_request(opts), args.wait,
                              note=lambda line: print(line, flush=True))
            result = run_training(cfg, opts, plan=plan, note=None)
    except TrainingInterrupted as err:
        print(f"stargan-ray: {err}", file=sys.stderr, flush=True)
        return 130
    print(f"run folder: {plan.run_dir}")
    if result.checkpoint is not None:
        print(f"last checkpoint: {result.checkpoint.path}")
    return 0
