"""`stargan-ray tune`: search hyperparameters with Ray Tune (ASHA, PBT) over a space file."""

from __future__ import annotations

import argparse
import sys

from .common import (add_experiment_args, add_resource_args, add_wait_arg, experiment_from_args,
                     positive_int)


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search hyperparameters with Ray Tune (ASHA, PBT)")
    add_experiment_args(p)
    p.add_argument("--space", required=True,
                   help="search space: a name in tune_spaces/ or a path to a .toml file")
    p.add_argument("--num-samples", type=positive_int,
                   help="trials (default: the space's tune.num_samples)")
    p.add_argument("--workers-per-trial", type=positive_int, default=1,
                   help="Ray Train workers per trial (one per GPU)")
    # --cpus-per-worker 0 is allowed: each trial has a data pipeline CPU of its own.
    add_resource_args(p, what="sweep", cpus_minimum=0.0,
                      wandb_help=", one run per trial grouped by sweep")
    add_wait_arg(p, "trial's worker")
    p.add_argument("--max-concurrent", type=positive_int,
                   help="trials at once (default: the space's, else what the cluster fits)")
    p.add_argument("--name", help="sweep name (default: EXPERIMENT-SPACE)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep from its storage folder")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the space against the experiment, print it, and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import to_toml
    from ..tune import SweepOptions, check_space, read_space, run_sweep
    from ..tune.results import format_table

    cfg = experiment_from_args(args)
    space = read_space(args.space)
    opts = SweepOptions(storage=args.storage, name=args.name, num_samples=args.num_samples,
                        workers_per_trial=args.workers_per_trial,
                        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                        max_concurrent=args.max_concurrent, resume=args.resume, wandb=args.wandb,
                        wait_s=args.wait)
    if args.dry_run:
        opts.sweep_name(cfg, space)  # the name is checked as a real sweep checks it
        base = check_space(space, cfg)
        print(to_toml(base))
        print(f"# searched: {', '.join(f'{d.key}={d.kind}{list(d.args)}' for d in space.searched)}")
        print(f"# scheduler: {space.scheduler} {dict(space.scheduler_args)}; metric "
              f"{space.metric} ({space.mode}); samples {opts.num_samples or space.num_samples}")
        return 0
    result = run_sweep(cfg, space, opts)
    print(format_table(result.rows))
    for kind, uri in result.files.items():
        print(f"{kind}: {uri}")
    if result.interrupted:
        print(f"sweep interrupted; continue it with --resume (folder {result.sweep_dir})",
              file=sys.stderr)
        return 130
    return 0
