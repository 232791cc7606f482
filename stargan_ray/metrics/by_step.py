"""`stargan-ray eval --run RUN_DIR`: evaluate the complete checkpoints of a run, by step.

Discovery is the training driver's (train.checkpoint_folders, checkpoint.verify_checkpoint), the
numbers are evaluator.evaluate()'s; this module only chooses checkpoints and writes the table
RUN_DIR/metrics/by_step.csv and the plot RUN_DIR/metrics/by_step.png.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import SYNTHETIC, ConfigError
from ..storage import atomic_write_text

METRICS_DIR = "metrics"
CSV_FILE = "by_step.csv"
PNG_FILE = "by_step.png"
_MODES = ("latent", "reference")


def run_checkpoints(run_dir: str, every: int = 1) -> tuple[list[tuple[int, str]], list[str]]:
    """(step, checkpoint file) of the run's complete checkpoints, oldest first, every K-th of
    them; and one reason per broken checkpoint left out.

    The run's checkpoint_<step> folders, plus the kept best copy (train.keep_best) when Ray has
    since deleted the folder of its step.
    """
    from ..checkpoint import CHECKPOINT_FILE, CheckpointError, read_config, verify_checkpoint
    from ..train import best_checkpoint, checkpoint_folders

    candidates = {step: f"{folder}/{CHECKPOINT_FILE}" for step, folder in checkpoint_folders(run_dir)}
    best = best_checkpoint(run_dir)
    if best is not None:
        candidates.setdefault(*best)
    complete, broken = [], []
    for step in sorted(candidates):
        path = candidates[step]
        try:
            verify_checkpoint(path, read_config(path), step)
        except CheckpointError as err:
            broken.append(str(err))
            continue
        complete.append((step, path))
    return complete[::every], broken


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """step, then FID / LPIPS / KID means per mode, for the keys the results hold."""
    keys = ["step"]
    for metric in ("FID", "LPIPS", "KID"):
        for mode in _MODES:
            key = f"{metric}_{mode}/mean"
            if any(key in row for row in rows):
                keys.append(key)
    return keys


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The table, written under a temporary name and moved into place."""
    keys = columns(rows)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(keys)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row[k] for k in keys])
    atomic_write_text(path, text.getvalue())


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """FID and LPIPS means over steps, one line per mode (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, metric in zip(axes, ("FID", "LPIPS")):
            for mode in _MODES:
                key = f"{metric}_{mode}/mean"
                points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=mode)
            ax.set_xlabel("step")
            ax.set_title(f"{metric} (mean over tasks)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def best_row(rows: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """(key, row) with the lowest latent FID mean (reference FID when only that was computed)."""
    for key in ("FID_latent/mean", "FID_reference/mean"):
        scored = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        if scored:
            return key, min(scored, key=lambda r: (r[key], r["step"]))
    return None


def evaluate_run(args: argparse.Namespace, device: str) -> int:
    """The `eval --run` command: args as parsed by evaluator.add_cli, num_workers resolved."""
    from ..cli import check_output
    from ..train import storage_uri
    from .evaluator import _load_networks, evaluate

    if args.out:
        raise ConfigError("--out: eval --run writes RUN_DIR/metrics; leave out --out")
    if "://" in args.run:
        raise ConfigError(f"--run {args.run}: must be a local run folder (copy it from the "
                          "storage first)")
    run_dir = storage_uri(args.run)
    if not Path(run_dir).is_dir():
        raise ConfigError(f"--run {args.run}: no such folder")
    found, broken = run_checkpoints(run_dir, args.every or 1)
    for reason in broken:
        print(f"skipping broken {reason}", file=sys.stderr)
    if not found:
        raise ConfigError(f"--run {args.run}: no complete checkpoint_<step> folder in {run_dir}")
    out = Path(run_dir) / METRICS_DIR
    rows: list[dict[str, Any]] = []
    for i, (step, path) in enumerate(found):
        ns = argparse.Namespace(**{**vars(args), "checkpoint": path, "official_checkpoint": None})
        cfg, nets, _ = _load_networks(ns, "cpu" if args.num_workers else device)
        if i == 0:
            check_output(out, [d for d in (cfg.data.train_dir, cfg.data.val_dir)
                               if d != SYNTHETIC], kind="dir")
        print(f"[{i + 1}/{len(found)}] step {step}: {path}", flush=True)
        results = evaluate(nets, cfg, step=step, mode=args.mode, out_dir=out,
                           num_workers=args.num_workers, device=device)
        rows.append({"step": step, **results})
    write_csv(rows, out / CSV_FILE)
    plot(rows, out / PNG_FILE)
    print(f"wrote {out / CSV_FILE} and {out / PNG_FILE} ({len(rows)} checkpoints)")
    best = best_row(rows)
    if best is None:
        print("best step: none (no finite FID)")
    else:
        key, row = best
        print(f"best step: {row['step']} ({key} {row[key]:.6f})")
    return 0


__all__ = ["run_checkpoints", "columns", "write_csv", "plot", "best_row", "evaluate_run"]
