"""`stargan-ray demo`: the first thing a new user runs.

Generates the embedded synthetic dataset (once, cached), trains the toy experiment on 2 Ray
workers on the CPU, writes sample grids, evaluates the final EMA networks with random-feature
FID/LPIPS (clearly labelled: the real metrics need the pretrained Inception/AlexNet files) and
prints where everything is. Only glue around train, checkpoint and metrics.evaluator, so it lives
here in full.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_experiment_args, experiment_from_args, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train the toy experiment on 2 CPU workers, sample, evaluate")
    add_experiment_args(p)
    p.add_argument("--out", default="outputs/demo", help="folder for runs (default outputs/demo)")
    p.add_argument("--name", help="run name (default: demo-<date>-<time>)")
    p.add_argument("--num-workers", type=positive_int, default=2,
                   help="Ray workers on the CPU, for the training and the evaluation "
                        "(default: %(default)s)")
    p.add_argument("--wandb", choices=("online", "offline", "disabled"), default=None,
                   help="W&B mode of the training run (default: $WANDB_MODE, else offline)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import resolve_data_dirs
    from ..train import RunOptions, init_ray, latest_checkpoint, run_training

    started = time.perf_counter()
    cfg = experiment_from_args(args)
    out = Path(args.out).resolve()
    name = args.name or time.strftime("demo-%Y%m%d-%H%M%S")
    opts = RunOptions(num_workers=args.num_workers, cpus_per_worker=1.0, storage=str(out),
                      name=name, max_failures=1, wandb=args.wandb)

    print(f"[demo] 1/3 synthetic dataset ({cfg.model.num_domains} domains, "
          f"{cfg.model.img_size} px)", flush=True)
    train_dir, val_dir = resolve_data_dirs(cfg)
    print(f"[demo]     train: {train_dir}\n[demo]     val:   {val_dir}", flush=True)

    print(f"[demo] 2/3 training {cfg.name} for {cfg.train.total_iters} steps on "
          f"{args.num_workers} Ray workers (CPU)", flush=True)
    init_ray(opts)
    run_training(cfg, opts)
    run_dir = out / name
    step, checkpoint = latest_checkpoint(str(run_dir))

    print("[demo] 3/3 evaluating the EMA generator (random-feature FID/LPIPS)", flush=True)
    metrics_dir = run_dir / "metrics"
    metrics = _evaluate(checkpoint, step, metrics_dir, args.num_workers)
    _summary(run_dir, checkpoint, metrics_dir, metrics, time.perf_counter() - started)
    return 0


def _evaluate(checkpoint: str, step: int, out_dir: Path, num_workers: int) -> dict:
    from ..checkpoint import load_ema_networks
    from ..metrics.evaluator import EvalOptions, evaluate

    cfg, nets_ema = load_ema_networks(checkpoint)
    return evaluate(nets_ema, cfg, step=step, mode="both", out_dir=out_dir,
                    opts=EvalOptions(num_workers, progress=True))


def _summary(run_dir: Path, checkpoint: str, metrics_dir: Path, metrics: dict,
             seconds: float) -> None:
    samples = sorted((run_dir / "samples").glob("*_reference.png"))
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    fid = {k: round(v, 2) for k, v in metrics.items() if k.endswith("/mean") and v is not None}
    print()
    print(f"[demo] done in {seconds / 60:.1f} min")
    print(f"[demo] sample grids:  {run_dir / 'samples'}  (last: {samples[-1].name if samples else '-'})")
    print(f"[demo] checkpoint:    {checkpoint}")
    print(f"[demo] metrics:       {metrics_dir}  {json.dumps(fid)}")
    print("[demo]                (random-feature FID/LPIPS: a smoke signal, not comparable "
          "with published numbers)")
    if wandb_runs:
        print(f"[demo] W&B (offline): {wandb_runs[-1]}  (upload: wandb sync {wandb_runs[-1]})")
    print("[demo] use the model on your own images, or serve it with a web page:")
    print(f"[demo]   stargan-ray translate --checkpoint {checkpoint} --to all --seeds 0,1,2 "
          "--out outputs/translated IMAGE_OR_FOLDER...")
    print(f"[demo]   stargan-ray serve --checkpoint {checkpoint}   "
          "# then open http://127.0.0.1:8000/")

