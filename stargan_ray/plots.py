"""Plots for users without W&B: records in, PNG out (matplotlib, Agg backend; no Ray).

losses_figure / write_losses_png: the official loss stats and G/lambda_ds of one run over steps,
from the records rank 0 logs every print_every (<run>/metrics.jsonl).
trials_figure / write_trials_png: the tune metric of every trial of a sweep over steps; trials
stopped early (or failed) end with a cross, the best trial is drawn thick in red.
line_data(fig): the (label, steps, values) of every line drawn, for tests and checks.
ScalarWriter: the same scalars as TensorBoard event files (torch's SummaryWriter, else
tensorboardX, else nothing).

Nothing here may fail a training run or a sweep: the write_* helpers and ScalarWriter catch
every error and warn once per kind.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

from .storage import atomic_write_bytes, basename, join, write_bytes

log = logging.getLogger(__name__)

# The official stats (the names engine.train_step logs, as the official solver does), drawn in
# this order; D/ref_* and G/ref_* as logged.
D_LATENT = ("D/latent_real", "D/latent_fake", "D/latent_reg")
G_LATENT = ("G/latent_adv", "G/latent_sty", "G/latent_ds", "G/latent_cyc")
LAMBDA_DS = "G/lambda_ds"
BEST_COLOR = "#d62728"  # the best trial's line
OTHER_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf", "#ff7f0e")
EARLY_STATES = ("stopped", "error", "incomplete")  # trials that did not run their budget
_warned: set[str] = set()


def _warn_once(what: str, err: BaseException) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("%s failed (warned once, then silent): %s: %s", what,
                    type(err).__name__, err)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a file; a torn last line (a run killed while writing) is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(records: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of key, sorted by step; a step logged twice (resume, rollback) keeps its
    last record; non-finite values are left out."""
    by_step: dict[int, float] = {}
    for r in records:
        if "step" in r and key in r:
            by_step[int(r["step"])] = r[key]
    steps = [s for s in sorted(by_step) if _finite(by_step[s])]
    return steps, [float(by_step[s]) for s in steps]


def loss_keys(records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The D and G loss names present in records: the official latent ones, then ref_*."""
    present = {k for r in records for k in r}

    def ordered(latent: tuple[str, ...], ref_prefix: str) -> list[str]:
        suffixes = [k.split("_", 1)[1] for k in latent]  # ref_* in the latent order, then others
        refs = sorted((k for k in present if k.startswith(ref_prefix)), key=lambda k: (
            suffixes.index(k[len(ref_prefix):]) if k[len(ref_prefix):] in suffixes
            else len(suffixes), k))
        return [k for k in latent if k in present] + refs

    return ordered(D_LATENT, "D/ref_"), ordered(G_LATENT, "G/ref_")


def losses_figure(records: list[dict[str, Any]], title: str = ""):
    """Three panels over steps: D losses, G losses, G/lambda_ds."""
    plt = _pyplot()
    d_keys, g_keys = loss_keys(records)
    fig, axes = plt.subplots(3, 1, figsize=(12, 10), dpi=100, sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 1.4]})
    for ax, keys, name in ((axes[0], d_keys, "discriminator"), (axes[1], g_keys, "generator"),
                           (axes[2], [LAMBDA_DS], "lambda_ds")):
        drawn = 0
        for key in keys:
            steps, values = series(records, key)
            if steps:
                ax.plot(steps, values, label=key, linewidth=1.3,
                        marker="." if len(steps) < 30 else None)
                drawn += 1
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside
        else:
            ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes)
    axes[-1].set_xlabel("step")
    fig.suptitle(title or "training losses")
    fig.tight_layout()
    return fig


def trials_figure(histories: dict[str, tuple[list[int], list[float]]], metric: str, *,
                  best: str | None = None, ended_early: Iterable[str] = (), title: str = ""):
    """The metric of every trial over steps. histories: trial id -> (steps, values) in report
    order. Trials in ended_early end with a cross; the best trial is thick, red and on top."""
    plt = _pyplot()
    early = set(ended_early)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    others = [t for t in sorted(histories) if t != best]
    for i, trial in enumerate(others + ([best] if best in histories else [])):
        steps, values = histories[trial]
        if not steps:
            continue
        is_best = trial == best
        color = BEST_COLOR if is_best else OTHER_COLORS[i % len(OTHER_COLORS)]
        label = f"{trial} (best)" if is_best else trial
        if trial in early:
            label += " (ended early)"
        ax.plot(steps, values, color=color, label=label, linewidth=3.0 if is_best else 1.2,
                alpha=1.0 if is_best else 0.75, zorder=3 if is_best else 2,
                marker="." if len(steps) < 30 else None)
        if trial in early:
            ax.plot([steps[-1]], [values[-1]], linestyle="none", marker="X", markersize=11,
                    color=color, markeredgecolor="black", zorder=4, label="_end")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if histories:
        ax.legend(loc="best", fontsize=8, ncol=1 + len(histories) // 12)
    ax.set_title(title or f"{metric} per trial (x: stopped early)")
    fig.tight_layout()
    return fig


def line_data(fig) -> list[tuple[str, list[float], list[float]]]:
    """(label, x, y) of every line of every axes of fig, in drawing order."""
    return [(line.get_label(), [float(v) for v in line.get_xdata()],
             [float(v) for v in line.get_ydata()])
            for ax in fig.axes for line in ax.get_lines()]


def png_bytes(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write then rename: a viewer refreshing the PNG never reads half a file."""
    atomic_write_bytes(path, data)


def write_losses_png(run_dir: str | Path, title: str = "") -> Path | None:
    """<run_dir>/plots/losses.png from <run_dir>/metrics.jsonl; None (and one warning) on error."""
    run_dir = Path(run_dir)
    try:
        records = read_jsonl(run_dir / "metrics.jsonl")
        out = run_dir / "plots" / "losses.png"
        _write_atomic(out, png_bytes(losses_figure(records, title or run_dir.name)))
        return out
    except Exception as err:  # plotting never fails a run
        _warn_once("plots/losses.png", err)
        return None


def _history(frame, metric: str, step_key: str) -> tuple[list[int], list[float]]:
    """(steps, values) in report order from a Tune metrics dataframe (or a list of dicts)."""
    if frame is None:
        return [], []
    rows = frame.to_dict("records") if hasattr(frame, "to_dict") else list(frame)
    pairs = [(int(r[step_key]), float(r[metric])) for r in rows
             if _finite(r.get(step_key)) and _finite(r.get(metric))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def write_trials_png(sweep_dir: str, grid, rows: list[dict[str, Any]],
                     best: dict[str, Any] | None, metric: str, *, trial_id, step_key: str = "step"
                     ) -> dict[str, str]:
    """<sweep_dir>/plots/trials.png from the per-trial results Tune holds (each Result's
    metrics_dataframe); sweep_dir may be any pyarrow URI. {"plot": uri}, or {} on error."""
    try:
        histories = {trial_id(r): _history(r.metrics_dataframe, metric, step_key) for r in grid}
        early = [r["trial_id"] for r in rows if r.get("state") in EARLY_STATES]
        fig = trials_figure(histories, metric, best=best["trial_id"] if best else None,
                            ended_early=early, title=f"{basename(sweep_dir)}: {metric} per trial"
                            " (x: ended early)")
        data = png_bytes(fig)
        uri = join(sweep_dir, "plots", "trials.png")
        write_bytes(uri, data)
        return {"plot": uri}
    except Exception as err:  # the results table is written already; a plot never fails a sweep
        _warn_once("plots/trials.png", err)
        return {}


class ScalarWriter:
    """TensorBoard event files in a folder, when torch.utils.tensorboard (needs the tensorboard
    package) or tensorboardX can be imported; otherwise every call does nothing."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir, self._writer, self._tried = str(log_dir), None, False

    def _open(self, purge_step: int | None):
        self._tried = True
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                return None
        try:
            return SummaryWriter(log_dir=self.log_dir, purge_step=purge_step)
        except Exception as err:
            _warn_once("TensorBoard writer", err)
            return None

    def add_scalars(self, step: int, metrics: dict[str, Any]) -> None:
        """One scalar per finite number of metrics at step. The first call sets purge_step, so a
        resumed run hides what an earlier attempt logged from that step on."""
        def write(writer) -> None:
            for key, value in metrics.items():
                if key != "step" and _finite(value):
                    writer.add_scalar(key, float(value), step)

        self._write(step, write, "TensorBoard logging")

    def _write(self, step: int, write, what: str) -> None:
        """write(writer), then flush; the writer is opened on the first call (purge_step = step).
        A failure warns once (what) and closes the writer: logging never fails a run."""
        if not self._tried:
            self._writer = self._open(step)
        if self._writer is None:
            return
        try:
            write(self._writer)
            self._writer.flush()
        except Exception as err:
            _warn_once(what, err)
            self.close()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as err:
                _warn_once("TensorBoard close", err)
