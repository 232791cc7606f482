"""plots.py and the RunLogger (train.logger) records behind it: no Ray, a few seconds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stargan_ray import plots
from stargan_ray.train.logger import RunLogger
from tests.helpers import tiny_config

STATS = ("D/latent_real", "D/latent_fake", "D/latent_reg", "D/ref_real", "D/ref_fake",
         "D/ref_reg", "G/latent_adv", "G/latent_sty", "G/latent_ds", "G/latent_cyc", "G/ref_adv",
         "G/ref_sty", "G/ref_ds", "G/ref_cyc", "G/lambda_ds")


def _metrics(step: int) -> dict[str, float]:
    m = {k: 0.01 * i + step / 100.0 for i, k in enumerate(STATS)}
    m.update({"G/lambda_ds": 1.0 - step / 1000.0, "lr/generator": 1e-4, "step": step,
              "images_per_s": 10.0})
    return m


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_losses_figure_draws_every_official_stat():
    records = [_metrics(s) for s in (10, 20, 30)]
    records.append({**_metrics(20), "D/latent_real": 9.0})  # step 20 again (resume): last wins
    records.append({**_metrics(40), "G/latent_adv": float("nan")})
    lines = {label: (x, y) for label, x, y in plots.line_data(plots.losses_figure(records))}
    assert list(lines) == list(STATS)  # official names in the official order
    assert lines["D/latent_real"] == ([10, 20, 30, 40], [0.1, 9.0, 0.3, 0.4])
    assert lines["G/latent_adv"][0] == [10, 20, 30]  # the NaN at 40 is left out
    assert lines["G/lambda_ds"][1] == pytest.approx([0.99, 0.98, 0.97, 0.96])
    assert "lr/generator" not in lines and "images_per_s" not in lines


def _read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every TFRecord event file in folder, parsed with tensorboardX's protobufs."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _logger(run_dir: Path) -> RunLogger:
    cfg = tiny_config()
    return RunLogger(cfg, str(run_dir), run_name="t", wandb="disabled", rank=0)


def test_run_logger_writes_metrics_plot_and_tensorboard(tmp_path):
    logger = _logger(tmp_path)
    for step in (5, 10, 15):
        logger.log(step, _metrics(step), f"[{step}]")
    logger.plot()  # what samples() does every sample_every
    png = tmp_path / "plots" / "losses.png"
    assert _png(png).shape == (1000, 1200, 3)
    first = png.stat().st_mtime_ns
    logger.log(20, _metrics(20), "[20]")
    logger.finish()  # the end of the run redraws with step 20
    assert png.stat().st_mtime_ns >= first

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert records[1]["G/latent_cyc"] == _metrics(10)["G/latent_cyc"]
    steps, values = plots.series(records, "G/lambda_ds")
    assert steps == [5, 10, 15, 20] and values == pytest.approx([0.995, 0.99, 0.985, 0.98])

    scalars = _read_events(tmp_path)
    for key in ("D/latent_reg", "G/ref_sty", "G/lambda_ds", "lr/generator"):
        assert [s for s, _ in scalars[key]] == [5, 10, 15, 20]
        np.testing.assert_allclose([v for _, v in scalars[key]],
                                   [_metrics(s)[key] for s in (5, 10, 15, 20)], rtol=1e-6)
    assert "step" not in scalars


def test_non_zero_rank_writes_nothing(tmp_path):
    logger = RunLogger(tiny_config(), str(tmp_path / "r"), run_name="t", wandb="disabled",
                       rank=1)
    logger.log(5, _metrics(5), "[5]")
    logger.finish()
    assert not (tmp_path / "r").exists()


def test_plotting_errors_never_fail_the_run(tmp_path, monkeypatch, caplog):
    logger = _logger(tmp_path)
    logger.log(5, _metrics(5), "[5]")

    def broken(*a, **k):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "losses_figure", broken)
    monkeypatch.setattr(plots, "_warned", set())
    logger.plot()
    logger.log(10, _metrics(10), "[10]")
    logger.finish()
    assert not (tmp_path / "plots" / "losses.png").exists()
    warnings = [r for r in caplog.records if "losses.png" in r.getMessage()]
    assert len(warnings) == 1 and "no fonts" in warnings[0].getMessage()


def test_scalar_writer_without_any_tensorboard_package(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("torch.utils.tensorboard", "tensorboardX")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    writer = plots.ScalarWriter(tmp_path)
    writer.add_scalars(1, {"G/latent_adv": 1.0})
    writer.close()
    assert not list(tmp_path.iterdir())


class _Result:
    def __init__(self, trial: str, steps, values):
        self.trial = trial
        self.metrics_dataframe = pd.DataFrame({"step": steps, "fid_quick": values,
                                               "trial_id": trial})


def test_trials_png_marks_early_stops_and_highlights_the_best(tmp_path, monkeypatch):
    grid = [_Result("a", [10, 20, 30, 40], [90.0, 80.0, 70.0, 60.0]),
            _Result("b", [10, 20], [95.0, 94.0]),  # stopped by ASHA at 20
            _Result("c", [10, 20, 30, 40], [85.0, 50.0, 40.0, 30.0])]
    grid[0].metrics_dataframe.loc[1, "fid_quick"] = float("nan")  # a report without the metric
    rows = [{"trial_id": "a", "state": "completed"}, {"trial_id": "b", "state": "stopped"},
            {"trial_id": "c", "state": "completed"}]
    drawn = []
    real_figure = plots.trials_figure
    monkeypatch.setattr(plots, "trials_figure",
                        lambda *a, **k: drawn.append(real_figure(*a, **k)) or drawn[-1])
    files = plots.write_trials_png(str(tmp_path), grid, rows, {"trial_id": "c"}, "fid_quick",
                                   trial_id=lambda r: r.trial)
    assert files == {"plot": f"{tmp_path}/plots/trials.png"}
    pixels = _png(tmp_path / "plots" / "trials.png")
    assert pixels.shape == (600, 1000, 3)

    lines = plots.line_data(drawn[0])
    by_label = {label: (x, y) for label, x, y in lines}
    assert by_label["a"] == ([10, 30, 40], [90.0, 70.0, 60.0])
    assert by_label["b (ended early)"] == ([10, 20], [95.0, 94.0])
    assert by_label["c (best)"] == ([10, 20, 30, 40], [85.0, 50.0, 40.0, 30.0])
    ends = [(x, y) for label, x, y in lines if label == "_end"]
    assert ends == [([20], [94.0])]  # only the early-stopped trial gets an end mark
    assert [label for label, _, _ in lines if label != "_end"][-1] == "c (best)"  # drawn on top
    best = [ln for ln in drawn[0].axes[0].get_lines() if ln.get_label() == "c (best)"][0]
    assert best.get_linewidth() > 2 * max(ln.get_linewidth() for ln in drawn[0].axes[0].get_lines()
                                          if ln is not best and ln.get_label() != "_end")
    # The best trial's red is on the image, thick: many pixels of exactly that colour.
    red = np.array([int(plots.BEST_COLOR[i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels.astype(int) - red).sum(axis=2) < 30).sum() > 500


def test_trials_png_error_is_a_warning(tmp_path):
    class Broken:
        @property
        def metrics_dataframe(self):
            raise OSError("gone")

    assert plots.write_trials_png(str(tmp_path), [Broken()], [], None, "fid_quick",
                                  trial_id=lambda r: "x") == {}
    assert not (tmp_path / "plots").exists()


@pytest.mark.ray
def test_a_tiny_training_run_draws_its_losses(ray_session, tmp_path):
    """A real 1-worker Ray Train run of 4 steps: metrics.jsonl, plots/losses.png, events."""
    from stargan_ray.train import RunOptions, run_training

    cfg = tiny_config(**{"train.total_iters": 4, "train.save_every": 4, "train.print_every": 2,
                         "train.sample_every": 2, "train.eval_every": 1000,
                         "data.train_dir": "synthetic", "data.val_dir": "synthetic"})
    run_training(cfg, RunOptions(num_workers=1, cpus_per_worker=1.0, storage=str(tmp_path),
                                 name="p", max_failures=0, wandb="disabled"))
    run_dir = tmp_path / "p"
    records = plots.read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert set(STATS) <= set(records[0])
    assert _png(run_dir / "plots" / "losses.png").shape == (1000, 1200, 3)
    scalars = _read_events(run_dir)
    assert [s for s, _ in scalars["G/latent_cyc"]] == [2, 4]
    np.testing.assert_allclose([v for _, v in scalars["G/latent_cyc"]],
                               [r["G/latent_cyc"] for r in records], rtol=1e-6)


def test_a_worker_group_of_another_size_records_a_resize_with_the_same_total_batch(tmp_path):
    run_dir = tmp_path / "r"
    logger = RunLogger(tiny_config(**{"data.batch_size": 5}), str(run_dir), run_name="t",
                       wandb="disabled", rank=0)
    logger.start(0, 11, 1)
    logger.start(10, 12, 1)  # a restart with the same count: no resize
    logger.start(20, 13, 2)  # grown
    logger.start(25, 14, 1)  # shrunk
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    resizes = [{k: v for k, v in e.items() if k not in ("event", "time")}
               for e in events if e["event"] == "resize"]
    assert resizes == [
        {"step": 20, "workers_before": 1, "workers": 2, "batch_size": 5, "rows_per_worker": [2, 3]},
        {"step": 25, "workers_before": 2, "workers": 1, "batch_size": 5, "rows_per_worker": [5]}]
    assert [e["workers"] for e in events if e["event"] == "start"] == [1, 1, 2, 1]
