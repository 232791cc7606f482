"""`stargan-ray eval`: FID and LPIPS of a checkpoint, or of every checkpoint of a run (--run)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..config import SYNTHETIC
from ..errors import ConfigError
from .common import (add_device_arg, add_model_source_args, check_output, load_model,
                     nonnegative_int, positive_int, resolve_device)


def _workers_arg(text: str) -> int | str:
    """--num-workers: auto, or an integer >= 0."""
    if text == "auto":
        return text
    try:
        return nonnegative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected auto or an integer >= 0, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="FID and LPIPS of a checkpoint (official protocol, sharded over Ray)",
        description="Evaluate a checkpoint with the official StarGAN v2 protocol and write "
                    "FID_{step}_{mode}.json / LPIPS_{step}_{mode}.json. Image files that cannot "
                    "be decoded are named on stderr and left out.")
    add_model_source_args(p, run=True)
    p.add_argument("--every", type=positive_int, metavar="K",
                   help="with --run: every K-th checkpoint by step (the oldest first)")
    p.add_argument("--train-dir", help="real images for FID (data.train_dir)")
    p.add_argument("--val-dir", help="sources and references (data.val_dir)")
    p.add_argument("--num-workers", type=_workers_arg, default="auto",
                   help="Ray workers (one GPU each on cuda); 0 runs in this process; auto (the "
                        "default): one per GPU of the cluster when it has several, else 0")
    p.add_argument("--mode", choices=("latent", "reference", "both"), default="both",
                   help="latent: styles from random codes; reference: styles from val images of "
                        "the target domain; both (default)")
    p.add_argument("--feature-weights", choices=("pretrained", "random"),
                   help="random: seeded random Inception/AlexNet, for smoke tests only")
    add_device_arg(p)
    p.add_argument("--out", help="output folder (default: outputs/<experiment>/eval)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results files an earlier eval wrote (default: refuse)")
    p.add_argument("--wandb", choices=("online", "offline", "disabled"), default=None,
                   help="also log the results as a W&B run with a table per checkpoint "
                        "(default: $WANDB_MODE, else disabled)")
    p.set_defaults(func=run)


def _extra(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """--train-dir, --val-dir and --feature-weights as config overrides (after --set)."""
    flags = (("data.train_dir", args.train_dir), ("data.val_dir", args.val_dir),
             ("eval.feature_weights", args.feature_weights))
    return [(key, value) for key, value in flags if value]


def _check_out(out: str | Path, cfg, args: argparse.Namespace, steps: list[int],
               extra: tuple[str, ...] = ()) -> None:
    """OUT is no input; the files this eval would write there are kept unless --overwrite."""
    from ..metrics.eval_plan import MODES, result_file

    check_output(out, [d for d in (cfg.data.train_dir, cfg.data.val_dir) if d != SYNTHETIC],
                 kind="dir")
    modes = MODES if args.mode == "both" else (args.mode,)
    names = [result_file(kind, step, m) for step in steps for m in modes
             for kind in ("FID", "LPIPS")]
    for name in [*names, *extra]:
        check_output(Path(out) / name, [], overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.every is not None and not args.run:
        raise ConfigError("--every: only with --run RUN_DIR")
    if args.num_workers == "auto":
        from ..metrics.eval_ray import auto_workers, cluster_gpus

        args.num_workers = auto_workers(cluster_gpus())
        print(f"evaluation workers: {args.num_workers or 'none (in this process)'}")
    if args.run:
        return _run_dir(args, device)
    from ..metrics.evaluator import EvalOptions, evaluate

    cfg, nets, step = load_model(args, "eval", "cpu" if args.num_workers else device,
                                 extra=_extra(args))
    out = args.out or str(Path("outputs") / cfg.name / "eval")
    _check_out(out, cfg, args, [step])
    results = evaluate(nets, cfg, step=step, mode=args.mode, out_dir=out,
                       opts=EvalOptions(args.num_workers, device))
    _dashboards(args, out, cfg, [(step, results)])
    for key, value in results.items():
        print(f"{key}: {'null' if value is None else f'{value:.6f}'}")
    print(f"wrote {out}/FID_{step:05d}_*.json and LPIPS_{step:05d}_*.json")
    return 0


def _run_folder(text: str) -> str:
    """The run folder named by --run: a local folder, or a URI (s3://...) holding one."""
    from ..storage import exists, is_uri
    from ..train import storage_uri

    run_dir = storage_uri(text)
    if is_uri(run_dir):
        if not exists(run_dir):
            raise ConfigError(f"--run {text}: no such run folder on that storage")
        return run_dir
    if not Path(run_dir).is_dir():
        raise ConfigError(f"--run {text}: no such folder")
    return run_dir


@contextlib.contextmanager
def _metrics_folder(run_dir: str, names: list[str], overwrite: bool) -> Iterator[Path]:
    """Where eval --run writes: RUN_DIR/metrics, or for a URI run folder a local folder that is
    uploaded to RUN_DIR/metrics at the end (existing results there are kept unless
    --overwrite, as on a local disk)."""
    from ..metrics import by_step
    from ..storage import exists, is_uri, join
    from ..train.records import upload_folder

    if not is_uri(run_dir):
        yield Path(run_dir) / by_step.METRICS_DIR
        return
    stored = join(run_dir, by_step.METRICS_DIR)
    for name in names:
        if not overwrite and exists(join(stored, name)):
            raise ConfigError(f"--run: {join(stored, name)} already exists and is kept; pass "
                              "--overwrite to replace it")
    with tempfile.TemporaryDirectory(prefix="stargan-ray-eval-") as local:
        yield Path(local)
        upload_folder(Path(local), stored)


def _run_dir(args: argparse.Namespace, device: str) -> int:
    """`eval --run`: every complete checkpoint of the run; RUN_DIR/metrics/by_step.csv and .png
    (a URI run folder's checkpoints are fetched one at a time, its results uploaded)."""
    from ..metrics import by_step
    from ..metrics.eval_plan import MODES, result_file
    from ..metrics.evaluator import EvalOptions, evaluate
    from ..storage import join
    from ..train.checkpoints import local_file, run_checkpoints

    if args.out:
        raise ConfigError("--out: eval --run writes RUN_DIR/metrics; leave out --out")
    run_dir = _run_folder(args.run)
    found, broken = run_checkpoints(run_dir, args.every or 1)
    for reason in broken:
        print(f"skipping broken {reason}", file=sys.stderr)
    if not found:
        raise ConfigError(f"--run {args.run}: no complete checkpoint_<step> folder in {run_dir}")
    modes = MODES if args.mode == "both" else (args.mode,)
    names = [result_file(kind, step, m) for step, _ in found for m in modes
             for kind in ("FID", "LPIPS")] + [by_step.CSV_FILE, by_step.PNG_FILE]
    rows: list[dict[str, Any]] = []
    with _metrics_folder(run_dir, names, args.overwrite) as out:
        for i, (step, path) in enumerate(found):
            with local_file(path) as local:
                one = argparse.Namespace(**{**vars(args), "checkpoint": local,
                                            "official_checkpoint": None})
                cfg, nets, _ = load_model(one, "eval", "cpu" if args.num_workers else device,
                                          extra=_extra(args))
            if i == 0:
                _check_out(out, cfg, args, [s for s, _ in found],
                           (by_step.CSV_FILE, by_step.PNG_FILE))
            print(f"[{i + 1}/{len(found)}] step {step}: {path}", flush=True)
            results = evaluate(nets, cfg, step=step, mode=args.mode, out_dir=out,
                               opts=EvalOptions(args.num_workers, device))
            rows.append({"step": step, **results})
        _dashboards(args, out, cfg, [(r["step"], {k: v for k, v in r.items() if k != "step"})
                                     for r in rows])
        by_step.write_csv(rows, out / by_step.CSV_FILE)
        by_step.plot(rows, out / by_step.PNG_FILE)
    _summary(rows, join(run_dir, by_step.METRICS_DIR))
    return 0


def _summary(rows: list[dict[str, Any]], out: str) -> None:
    from ..metrics import by_step
    from ..storage import join

    print(f"wrote {join(out, by_step.CSV_FILE)} and {join(out, by_step.PNG_FILE)} "
          f"({len(rows)} checkpoints)")
    best = by_step.best_row(rows)
    if best is None:
        print("best step: none (no finite FID)")
    else:
        key, row = best
        print(f"best step: {row['step']} ({key} {row[key]:.6f})")


def _dashboards(args: argparse.Namespace, out: str | Path, cfg,
                evaluated: list[tuple[int, dict[str, Any]]]) -> None:
    """The results as TensorBoard scalars in out and, when W&B is on, a W&B table per step."""
    import os

    from ..dashboards import EvalDashboards
    from ..data.folders import scan
    from ..metrics.eval_plan import resolve_dirs

    domains = scan(resolve_dirs(cfg)[1], cfg.model.num_domains).domains
    mode = args.wandb or os.environ.get("WANDB_MODE") or "disabled"
    dashboards = EvalDashboards(out, cfg.to_dict(), f"eval-{cfg.name}", mode)
    for step, results in evaluated:
        dashboards.add(step, results, domains)
    dashboards.close()
