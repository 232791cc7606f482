"""Metrics by step for `stargan-ray eval --run RUN_DIR` (the command is cli/eval.py).

Discovery is train.checkpoints.run_checkpoints (the run's checkpoint room), the numbers are
evaluator.evaluate()'s; this module only writes the table RUN_DIR/metrics/by_step.csv and the plot
RUN_DIR/metrics/by_step.png.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from ..storage import atomic_write_text

METRICS_DIR = "metrics"
CSV_FILE = "by_step.csv"
PNG_FILE = "by_step.png"
_MODES = ("latent", "reference")


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


__all__ = ["columns", "write_csv", "plot", "best_row"]
