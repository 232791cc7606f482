"""Hyperparameter search: space files, ASHA early stopping, PBT exploit, results, resume.

The Ray tests run real nested trials (a TorchTrainer per trial) on tiny models. Their metric is a
training loss, not fid_quick: a training loss is a deterministic function of a trial's values
(fixed seeds), which makes the scheduler's decisions certain, and fid_quick costs about half a
minute per evaluation on 2 cores (one 2048x2048 matrix square root per task). The trials of the
ASHA sweep are stopped by ASHA's max_t before train.total_iters, so none of them pays for the
final evaluation either.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import struct
from dataclasses import replace
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from stargan_ray import cli
from stargan_ray.checkpoint import read_config
from stargan_ray.config import get_key, load_experiment, to_toml, with_overrides
from stargan_ray.engine import TrainState, train_step
from stargan_ray.train import latest_checkpoint, run_training
from stargan_ray.tune import (Dist, SweepOptions, check_space, read_space, run_sweep,
                              trial_run_name)
from stargan_ray.tune.schedulers import ClipToSpace
from tests.helpers import (assert_equal_states, load_train_state, random_batch, read_events,
                           run_options, tiny_config)

SHIPPED = [("quick", "toy"), ("lambdas_asha", "afhq"), ("lambdas_asha", "celeba_hq"),
           ("schedules_pbt", "afhq"), ("schedules_pbt", "celeba_hq")]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _experiment_file(tmp: Path, **overrides) -> Path:
    cfg = tiny_config(**{"data.batch_size": 2, "train.sample_every": 1000, **overrides})
    return _write(tmp / "tiny.toml", to_toml(cfg))


def _starts(run_dir: Path) -> list[int]:
    return [e["step"] for e in read_events(run_dir) if e["event"] == "start"]


def _table(path: Path) -> list[dict]:
    return pacsv.read_csv(path).to_pylist()


# ---------------------------------------------------------------- spaces, no Ray


@pytest.mark.parametrize("space_name, experiment", SHIPPED)
def test_shipped_spaces_fit_their_experiments_and_sample_valid_configs(space_name, experiment):
    space = read_space(space_name)
    base = check_space(space, load_experiment(experiment))
    for d in space.searched:
        domain = d.domain()
        values = domain["grid_search"] if isinstance(domain, dict) else [
            domain.sample() for _ in range(20)]
        for value in values:  # what Tune draws is a valid config value
            cfg = with_overrides(base, [(d.key, value)])
            assert d.clip(value) == value
            assert cfg is not None
    if space.scheduler == "pbt":
        assert all(k.split(".")[0] in ("loss", "optim") for k in space.keys())
        assert base.train.eval_every % base.train.save_every == 0


BAD_SPACES = {
    "unknown key": ("[loss]\nlambda_fancy = { uniform = [0.5, 2.0] }\n",
                    "loss.lambda_fancy: not a config key"),
    "unknown distribution": ("[loss]\nlambda_ds = { normal = [1.0, 0.1] }\n",
                             "loss.lambda_ds: unknown distribution 'normal'"),
    "log of zero": ("[loss]\nlambda_ds = { loguniform = [0.0, 2.0] }\n",
                    "loguniform takes [low, high] with 0 < low < high"),
    "reversed range": ("[optim]\nlr = { uniform = [1e-3, 1e-4] }\n",
                       "uniform takes [low, high] with low < high"),
    "float for an int key": ("[loss]\nds_iter = { uniform = [100, 400] }\n",
                             "loss.ds_iter: expected int, got 100.0"),
    "value the config refuses": ("[loss]\nlambda_cyc = { uniform = [-1.0, 1.0] }\n",
                                 "loss.lambda_cyc: must be >= 0"),
    "bad choice": ("[loss]\nds_decay = { choice = [\"linear\", \"exponential\"] }\n",
                   "loss.ds_decay: must be one of"),
    "PBT on the model": ("[scheduler]\nkind = \"pbt\"\nperturbation_interval = 10\n"
                         "[model]\nstyle_dim = { choice = [8, 16] }\n",
                         "model.style_dim: PBT mutates only"),
    "ASHA without grace": ("[scheduler]\nkind = \"asha\"\n[loss]\nlambda_ds = { grid = [1, 2] }\n",
                           "scheduler.grace_period"),
    "ASHA past the run": ("[scheduler]\nkind = \"asha\"\ngrace_period = 10\nmax_t = 100000\n"
                          "[loss]\nlambda_ds = { grid = [1, 2] }\n", "max_t"),
    "fid_quick missing at the end": ("[scheduler]\nkind = \"fifo\"\n[train]\neval_every = 300\n"
                                     "[loss]\nlambda_ds = { grid = [1, 2] }\n",
                                     "train.total_iters (400) must be a multiple of it"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_a_bad_space_fails_with_one_line_before_any_trial(case, tmp_path, capsys):
    body, message = BAD_SPACES[case]
    if "[train]" not in body:
        body = "[train]\neval_every = 100\n" + body
    if "[scheduler]" not in body:
        body = "[scheduler]\nkind = \"asha\"\ngrace_period = 40\n" + body
    space = _write(tmp_path / "bad.toml", body)
    storage = tmp_path / "runs"
    rc = cli.main(["tune", "--experiment", "toy", "--space", str(space),
                   "--storage", str(storage)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert not storage.exists()  # nothing started, nothing written


def test_trials_restarted_from_their_own_checkpoint_continue_their_run():
    assert trial_run_name("abc_00001", None, None) == "abc_00001"
    own = {"step": 40, "run": "abc_00001"}
    assert trial_run_name("abc_00001", own, "/s/trial_abc_00001/checkpoint_000001") == "abc_00001"
    # A PBT exploit: another trial's checkpoint starts a new run, named after that checkpoint,
    # the same name each time the trial restarts from it.
    donor = {"step": 40, "run": "abc_00000"}
    name = trial_run_name("abc_00001", donor, "/s/trial_abc_00000/checkpoint_000001")
    assert name.startswith("abc_00001-00000040-")
    assert name == trial_run_name("abc_00001", donor, "/s/trial_abc_00000/checkpoint_000001")
    assert name != trial_run_name("abc_00001", donor, "/s/trial_abc_00000/checkpoint_000002")
    assert trial_run_name("abc_00001", {"step": 60, "run": name}, "/x") == name


def test_pbt_perturbations_stay_inside_the_searched_ranges():
    clip = ClipToSpace((Dist("loss.lambda_ds", "uniform", (0.5, 2.0)),
                        Dist("loss.ds_iter", "randint", (100, 400)),
                        Dist("loss.ds_decay", "choice", ("linear", "cosine"))))
    out = clip({"loss.lambda_ds": 2.4, "loss.ds_iter": 480, "loss.ds_decay": "cosine"})
    assert out == {"loss.lambda_ds": 2.0, "loss.ds_iter": 399, "loss.ds_decay": "cosine"}
    assert clip({"loss.lambda_ds": 0.3, "loss.ds_iter": 50.4,
                 "loss.ds_decay": "linear"})["loss.ds_iter"] == 100


# ---------------------------------------------------------------- ASHA sweep, interrupted


ASHA_SPACE = """
# Four trials, one at a time: two values of lambda_cyc, twice each. ASHA compares every trial
# at step 4 with those recorded before it; the second trial of the worse value meets a recorded
# better one there, so at least one trial is stopped whatever the values turn out to be.
[tune]
metric = "G/latent_cyc"
mode = "min"
num_samples = 2
max_concurrent = 1
max_failures = 1
[scheduler]
kind = "asha"
grace_period = 4
reduction_factor = 2
max_t = 8
[train]
total_iters = 40
print_every = 4
save_every = 4
eval_every = 40
[loss]
lambda_cyc = { grid = [0.5, 2.0] }
"""


class InterruptAfter:
    """A Tune callback that presses Ctrl+C once n trials have finished."""

    def __new__(cls, n: int):
        from ray.tune import Callback

        class _Interrupt(Callback):
            def __init__(self) -> None:
                self.finished = 0

            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                self.finished += 1
                if self.finished == n:
                    os.kill(os.getpid(), signal.SIGINT)

        return _Interrupt()


@pytest.fixture(scope="module")
def asha_sweep(ray_session, tmp_path_factory):
    """The sweep, interrupted after three trials, then resumed from the command line."""
    tmp = tmp_path_factory.mktemp("asha")
    experiment = _experiment_file(tmp)
    space_file = _write(tmp / "asha.toml", ASHA_SPACE)
    storage = tmp / "runs"
    cfg, space = load_experiment(experiment), read_space(space_file)
    opts = SweepOptions(storage=str(storage), name="sweep", wandb="disabled")
    first = run_sweep(cfg, space, opts, callbacks=[InterruptAfter(3)])
    finished = {r["trial_id"]: sorted(p.name for p in (storage / "sweep" / "train" / r["train_run"])
                                      .glob("checkpoint_*"))
                for r in first.rows if r["state"] in ("completed", "stopped")}
    rc = cli.main(["tune", "--experiment", str(experiment), "--space", str(space_file),
                   "--storage", str(storage), "--name", "sweep", "--resume", "--wandb", "disabled"])
    return {"first": first, "finished": finished, "rc": rc, "dir": storage / "sweep",
            "space": space, "cfg": check_space(space, cfg)}


@pytest.mark.ray
def test_asha_stops_a_trial_before_the_maximum(asha_sweep):
    rows = _table(asha_sweep["dir"] / "results.csv")
    assert len(rows) == 4
    assert {r["state"] for r in rows} <= {"completed", "stopped"}
    stopped = [r for r in rows if r["state"] == "stopped"]
    assert stopped and all(r["steps"] < 8 for r in stopped)
    assert all(r["steps"] >= 8 for r in rows if r["state"] == "completed")
    # each stopped trial was worse at the rung (step 4) than a trial that went on
    at_rung = {r["trial_id"]: next(h["G/latent_cyc"] for h in _history(asha_sweep["dir"],
                                                                         r["trial_id"])
                                   if h["step"] == 4) for r in rows}
    went_on = min(at_rung[r["trial_id"]] for r in rows if r["state"] == "completed")
    assert all(at_rung[r["trial_id"]] > went_on for r in stopped)


@pytest.mark.ray
def test_stopped_trials_give_their_cpus_back(asha_sweep):
    # ASHA killed trials mid-run; their Train runs' placement groups must not outlive them, or
    # a long sweep ends up waiting forever for CPUs.
    import ray
    from ray.util import placement_group, placement_group_table, remove_placement_group
    from ray.util.state import list_tasks

    # Reserve every CPU of the cluster: Ray schedules the reservation once the stopped trials'
    # placement groups are removed and any Ray Data task of theirs has finished its chunk.
    cpus = ray.cluster_resources()["CPU"]
    everything = placement_group([{"CPU": cpus}])
    try:
        if not everything.wait(timeout_seconds=120):  # a hang guard, not a speed check
            live = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
            running = [(t.name, t.state) for t in list_tasks(filters=[("state", "=", "RUNNING")])]
            raise AssertionError(f"hang guard: waited 120 s for the cluster's {cpus:g} CPUs to be "
                                 f"free after the sweep; placement groups: {live}; running "
                                 f"tasks: {running}")
    finally:
        remove_placement_group(everything)


@pytest.mark.ray
def test_an_interrupted_sweep_resumes_and_finishes(asha_sweep):
    first, finished = asha_sweep["first"], asha_sweep["finished"]
    assert first.interrupted
    assert len(finished) == 3
    assert len(first.rows) == 3 or any(r["state"] == "incomplete" for r in first.rows)
    assert asha_sweep["rc"] == 0
    rows = {r["trial_id"]: r for r in _table(asha_sweep["dir"] / "results.csv")}
    assert len(rows) == 4 and set(rows) >= set(finished)
    assert all(r["state"] in ("completed", "stopped") for r in rows.values())
    for trial_id, checkpoints in finished.items():  # finished trials were not run again
        run_dir = asha_sweep["dir"] / "train" / rows[trial_id]["train_run"]
        assert _starts(run_dir) == [0]
        assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == checkpoints


@pytest.mark.ray
def test_results_are_written_as_csv_and_parquet(asha_sweep):
    csv_rows = _table(asha_sweep["dir"] / "results.csv")
    parquet_rows = pq.read_table(asha_sweep["dir"] / "results.parquet").to_pylist()
    assert csv_rows == parquet_rows
    assert {"trial_id", "state", "steps", "best_G/latent_cyc", "best_step",
            "loss.lambda_cyc"} <= set(csv_rows[0])
    assert sorted(r["loss.lambda_cyc"] for r in csv_rows) == [0.5, 0.5, 2.0, 2.0]


@pytest.mark.ray
def test_the_best_config_loads_and_trains(asha_sweep):
    rows = _table(asha_sweep["dir"] / "results.csv")
    best = min(rows, key=lambda r: r["best_G/latent_cyc"])
    cfg = load_experiment(asha_sweep["dir"] / "best.toml")
    assert cfg.loss.lambda_cyc == best["loss.lambda_cyc"]
    assert cfg.name == "sweep-best"
    assert cfg.model == asha_sweep["cfg"].model and cfg.train == asha_sweep["cfg"].train
    state = TrainState.create(cfg, "cpu")
    for seed in range(2):
        stats = train_step(state, random_batch(cfg, seed=seed))
    assert state.step == 2 and all(math.isfinite(v.item()) for v in stats.values())


# ---------------------------------------------------------------- PBT


PBT_SPACE = """
# Two trials ranked by the lambda_ds they train with (constant: ds_decay = "none"). Synchronous
# PBT waits until both reach step 8, so the exploit is certain however the trials' starts are
# spread: the one with the smaller value copies the other's checkpoint and perturbs both searched
# values by x0.8 or x1.2. ADA is on, so the exploit must carry p and the interval's sign sums:
# p is updated at steps 7 and 14 (by 0.14, up: D calls these real images real), so the donor's
# checkpoint at step 8 holds p > 0 and one step of sums, which the exploit's step 12 still holds.
[tune]
metric = "G/lambda_ds"
mode = "max"
num_samples = 2
max_concurrent = 2
max_failures = 1
seed = 1
[scheduler]
kind = "pbt"
perturbation_interval = 8
quantile_fraction = 0.5
resample_probability = 0.0
synch = true
[train]
total_iters = 16
print_every = 4
save_every = 4
eval_every = 16
keep_checkpoints = 8
[loss]
ds_decay = "none"
ada_target = 0.3
ada_interval = 7
ada_kimg = 0.1
lambda_ds = { uniform = [0.25, 2.0] }
[optim]
lr = { loguniform = [1e-4, 1e-2] }
"""


def _history(sweep: Path, trial_id: str) -> list[dict]:
    """Every result Tune recorded for a trial, each with the trial's config at that time."""
    lines = (sweep / f"trial_{trial_id}" / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _wandb_group(offline: Path) -> str | None:
    """The group in the run record of an offline W&B run (None if it was killed before one).

    The .wandb file is a LevelDB-style log: a 7-byte file header, then records cut into chunks
    with 7-byte headers (crc, length, type) that never straddle a 32 KiB block.
    """
    from wandb.proto import wandb_internal_pb2

    data = next(offline.glob("*.wandb")).read_bytes()
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "run":
                return record.run.run_group
    return None


def _assert_exploit_is_exact(donor: Path, first: Path, tmp_path: Path) -> None:
    """The exploit's first checkpoint carries the donor's ADA state (no p update between them:
    the same p, and the donor's interval sums plus the steps since) and equals a run resumed
    from the donor with the mutated values (--resume-from, the same worker restore)."""
    donor_state, exploit = load_train_state(donor), load_train_state(first)
    cfg = exploit.cfg
    steps = exploit.step - donor_state.step
    assert donor_state.step // cfg.loss.ada_interval == exploit.step // cfg.loss.ada_interval
    assert donor_state.ada.p > 0 and donor_state.ada.count > 0  # something to drop
    assert torch.equal(exploit.ada.p, donor_state.ada.p)
    assert exploit.ada.count == donor_state.ada.count + steps * 2 * cfg.data.batch_size
    continued = replace(cfg, train=replace(cfg.train, total_iters=exploit.step))
    run_training(continued, run_options(tmp_path / "continued", "from-donor",
                                        resume_from=str(donor)))
    step, path = latest_checkpoint(str(tmp_path / "continued" / "from-donor"))
    assert step == exploit.step
    assert_equal_states(exploit, load_train_state(path))


@pytest.mark.ray
def test_pbt_exploits_a_checkpoint_and_trains_with_the_mutated_values(ray_session, tmp_path):
    experiment = _experiment_file(tmp_path)
    space = read_space(_write(tmp_path / "pbt.toml", PBT_SPACE))
    result = run_sweep(load_experiment(experiment), space,
                       SweepOptions(storage=str(tmp_path / "runs"), name="pbt"))
    sweep = tmp_path / "runs" / "pbt"
    rows = _table(sweep / "results.csv")
    assert not result.interrupted and {r["state"] for r in rows} == {"completed"}
    histories = {r["trial_id"]: _history(sweep, r["trial_id"]) for r in rows}

    # Every result was trained with the trial's values at that time: the loss weight of each
    # step (ds_decay = "none") and the optimisers' learning rate, also after a restore.
    for history in histories.values():
        for h in history:
            assert h["G/lambda_ds"] == pytest.approx(h["config"]["loss.lambda_ds"], rel=1e-6)
            assert h["lr/generator"] == pytest.approx(h["config"]["optim.lr"], rel=1e-6)

    # An exploit: a Train run named after another trial's Tune checkpoint, started at that
    # checkpoint's step (restored, not from scratch), training with explored values: each one
    # is the donor's value at that checkpoint scaled by 0.8 or 1.2, kept inside its range.
    exploits = [d for d in (sweep / "train").iterdir() if d.name.count("-") == 2]
    assert exploits, sorted(d.name for d in (sweep / "train").iterdir())
    run = exploits[0]
    trial_id, step, digest = run.name.split("-")
    donor = next(c for c in sweep.glob("trial_*/checkpoint_*")
                 if hashlib.sha1(str(c).encode()).hexdigest()[:8] == digest)
    assert not donor.parent.name.endswith(trial_id)
    assert json.loads((donor / ".metadata.json").read_text())["step"] == int(step) > 0
    assert _starts(run) == [int(step)]
    assert all(h["step"] > int(step) for h in histories[trial_id] if h["train_run"] == run.name)
    donor_cfg = read_config(donor / "checkpoint.pt")
    first = min(run.glob("checkpoint_*")) / "checkpoint.pt"
    mutated_cfg = read_config(first)
    for d in space.searched:
        assert any(get_key(mutated_cfg, d.key) == pytest.approx(
            d.clip(get_key(donor_cfg, d.key) * f), rel=1e-9) for f in (0.8, 1.2))
    _assert_exploit_is_exact(donor / "checkpoint.pt", first, tmp_path)

    # W&B: one run per trial (restarts and exploits continue the trial's run id), grouped by the
    # sweep. A run that PBT stopped mid-step may have been killed before writing its run record;
    # each trial's last run ends cleanly and has one.
    ids, groups = {}, {}
    for run_dir in (sweep / "train").iterdir():
        trial = run_dir.name.split("-")[0]
        for offline in (run_dir / "wandb").glob("offline-run-*"):
            ids.setdefault(trial, set()).add(offline.name.split("-", 3)[3])
            groups.setdefault(trial, set()).add(_wandb_group(offline))
    assert set(ids) == set(histories) and all(len(v) == 1 for v in ids.values())
    assert len(set.union(*ids.values())) == len(histories)
    assert all(g - {None} == {"pbt"} for g in groups.values()), groups
