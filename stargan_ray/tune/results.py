"""What a sweep leaves: one row per trial, the best trial and its config, results files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, to_toml, with_overrides
from ..storage import filesystem, join, write_bytes
from .space import TIME_ATTR, Space


def trial_dirname(trial) -> str:
    """Name and folder of a trial from its id, so results, folders and runs line up."""
    return f"trial_{trial.trial_id}"


def result_trial_id(result) -> str:
    """The trial id of a Tune result, from its last report or else its folder name."""
    trial_id = result.metrics.get("trial_id") if result.metrics else None
    return trial_id or Path(result.path).name.removeprefix("trial_")


def trial_budget(space: Space, base: ExperimentConfig) -> int:
    """Steps a trial runs unless stopped early: ASHA's max_t, else train.total_iters."""
    if space.scheduler == "asha":
        return space.setting("max_t", base.train.total_iters)
    return base.train.total_iters


def results_table(grid, space: Space, base: ExperimentConfig) -> list[dict[str, Any]]:
    """One row per trial: id, state, steps run, best metric and its step, searched values.

    state: completed (ran its budget, see trial_budget), stopped (early, by the scheduler),
    error (after its retries), incomplete (the sweep was interrupted; --resume continues it).
    """
    best_key = f"best_{space.metric}"
    budget = trial_budget(space, base)
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        row: dict[str, Any] = {"trial_id": result_trial_id(result), "state": "", "steps": 0,
                               best_key: None, "best_step": None}
        if history is not None and space.metric in history and TIME_ATTR in history:
            history = history.dropna(subset=[space.metric])
            if len(history):
                pick = history[space.metric].idxmin() if space.mode == "min" else \
                    history[space.metric].idxmax()
                row[best_key] = float(history[space.metric][pick])
                row["best_step"] = int(history[TIME_ATTR][pick])
                row["steps"] = int(history[TIME_ATTR].max())
        for d in space.searched:
            row[d.key] = result.config.get(d.key)
        done = bool(result.metrics and result.metrics.get("done"))
        if result.error is not None:
            row["state"] = "error"
        elif row["steps"] >= budget:
            row["state"] = "completed"
        else:
            row["state"] = "stopped" if done else "incomplete"
        row["error"] = None if result.error is None else str(result.error).strip().splitlines()[-1]
        row["train_run"] = (result.metrics or {}).get("train_run", "")
        rows.append(row)
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def best_row(rows: list[dict[str, Any]], space: Space) -> dict[str, Any] | None:
    key = f"best_{space.metric}"
    scored = [r for r in rows if r[key] is not None and math.isfinite(r[key])]
    if not scored:
        return None
    sign = 1 if space.mode == "min" else -1
    return min(scored, key=lambda r: sign * r[key])


def best_config(base: ExperimentConfig, space: Space, best: dict[str, Any],
                sweep: str) -> ExperimentConfig:
    values = [(d.key, best[d.key]) for d in space.searched]
    return with_overrides(base, [("name", f"{sweep}-best"), *values])


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    columns = [c for c in rows[0] if c not in ("error", "train_run")]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    lines += [f"{r['trial_id']}: {r['error']}" for r in rows if r["error"]]
    return "\n".join(lines)


def write_results(sweep_dir: str, rows: list[dict[str, Any]], best: dict[str, Any] | None,
                  base: ExperimentConfig, space: Space, sweep: str) -> dict[str, str]:
    """results.csv and results.parquet (one row per trial) and best.toml in the sweep folder."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = filesystem(sweep_dir)
    columns = list(rows[0]) if rows else ["trial_id"]
    table = pa.table({c: _column([r[c] for r in rows]) for c in columns})
    with fs.open_output_stream(f"{path}/results.csv") as f:
        pacsv.write_csv(table, f)
    pq.write_table(table, f"{path}/results.parquet", filesystem=fs)
    files = {"csv": join(sweep_dir, "results.csv"), "parquet": join(sweep_dir, "results.parquet")}
    if best is not None:
        cfg = best_config(base, space, best, sweep)
        searched = ", ".join(f"{d.key}={best[d.key]!r}" for d in space.searched)
        header = (f"# Best trial {best['trial_id']} of sweep {sweep}: "
                  f"best_{space.metric}={best[f'best_{space.metric}']:.6g} at step "
                  f"{best['best_step']}.\n# Searched: {searched}\n")
        files["best"] = join(sweep_dir, "best.toml")
        write_bytes(files["best"], (header + to_toml(cfg)).encode())
    return files


def _column(values: list[Any]) -> list[Any]:
    """One Arrow type per column: a column mixing ints and floats becomes float."""
    if any(isinstance(v, float) for v in values):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    return values
