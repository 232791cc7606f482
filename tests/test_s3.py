"""Object storage for real: prepare, training, resume and a sweep against an S3 API on loopback.

moto's standalone server runs as a separate process on 127.0.0.1. The endpoint is given the two
ways a user gives it: in the URI's query (``s3://bucket/key?endpoint_override=127.0.0.1:PORT&
scheme=http``), which needs nothing else on any node and is what the runs on the session's Ray
instance use; and in ``AWS_ENDPOINT_URL`` for a ``stargan-ray train`` process that starts its own
local Ray instance (whose workers inherit the variable, as every node of a cluster must have it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Iterator

import pyarrow.fs as pafs
import pytest

from stargan_ray import cli, storage
from stargan_ray.config import to_toml
from stargan_ray.data import prepare as prep
from stargan_ray.data import shards, synthetic
from stargan_ray.data.table import open_table
from stargan_ray.train import latest_checkpoint, run_training
from stargan_ray.train.plan import local_file, ray_storage
from stargan_ray.tune import SweepOptions, read_space, run_sweep

from .helpers import (assert_equal_states, free_port, load_train_state, run_options,
                      tiny_config, tiny_data_config, wait_until)

# Dummy credentials for moto, set at import: before any test starts the session's Ray instance,
# whose workers inherit this environment (a cluster's nodes have their own credentials). No
# instance-metadata lookups: nothing leaves the loopback interface.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

BUCKET = "stargan"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port

    def uri(self, key: str) -> str:
        """The URI form: the endpoint in the query."""
        return f"s3://{BUCKET}/{key}?endpoint_override={self.endpoint}&scheme=http"

    @staticmethod
    def plain(key: str) -> str:
        """The form for AWS_ENDPOINT_URL."""
        return f"s3://{BUCKET}/{key}"

    def fs(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http",
                                 allow_bucket_creation=True)

    def keys(self, prefix: str) -> set[str]:
        """Files under a prefix of the bucket, relative to it."""
        infos = self.fs().get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True,
                                                          allow_not_found=True))
        return {i.path[len(BUCKET) + len(prefix) + 2:] for i in infos
                if i.type == pafs.FileType.File}


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _moto_server(log_path) -> Iterator[tuple[S3Server, subprocess.Popen]]:
    """moto's S3 server in its own process on loopback, with one bucket; stopped at the end."""
    port = free_port()
    log = open(log_path, "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listens(port) or server.poll() is not None,
                   f"moto's server to listen on port {port}", timeout_s=60)
        assert server.poll() is None, "moto server exited; see its server.log"
        s3 = S3Server(f"127.0.0.1:{port}")
        s3.fs().create_dir(BUCKET)
        yield s3, server
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        storage._uri_filesystem.cache_clear()  # FileSystems of an endpoint that is gone


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server for the module's tests."""
    with _moto_server(tmp_path_factory.mktemp("moto") / "server.log") as (server, _):
        yield server


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Synthetic 2-domain train/val at 32 px; the val tree is also uploaded to s3://.../val."""
    return synthetic.generate(tmp_path_factory.mktemp("syn"), img_size=32, num_domains=2,
                              n_train=40, n_val=2, seed=4)


@pytest.fixture(scope="module")
def data(s3, tree):
    """Train shards written by `stargan-ray prepare` to S3 (URI form) and the val tree copied
    there as a plain folder tree (data.val_dir may be either)."""
    train, val = tree
    assert cli.main(["prepare", str(train), s3.uri("data/train"), "--workers", "1",
                     "--shard-mb", "0.02"]) == 0
    pafs.copy_files(str(val), f"{BUCKET}/data/val", destination_filesystem=s3.fs())
    return {"train": "data/train", "val": "data/val"}


# ---------------------------------------------------------------- URIs, no server


def test_paths_inside_a_uri_go_before_its_query():
    uri = "s3://b/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(uri, "run", "checkpoint_00000002") == (
        "s3://b/runs/run/checkpoint_00000002?endpoint_override=127.0.0.1:9000&scheme=http")
    assert storage.join("s3://b/runs/", "x") == "s3://b/runs/x"
    assert storage.join("/data/runs", "x") == "/data/runs/x"
    assert storage.basename(storage.join(uri, "run")) == "run"
    assert storage.uri_at(uri, "b/sweep/ckpt") == (
        "s3://b/sweep/ckpt?endpoint_override=127.0.0.1:9000&scheme=http")
    assert storage.uri_at("/local/runs", "/local/runs/x") == "/local/runs/x"
    fs, path = storage.filesystem(storage.join(uri, "run"))
    assert path == "b/runs/run" and isinstance(fs, pafs.S3FileSystem)


def test_a_tune_checkpoint_on_s3_keeps_the_storage_endpoint():
    from ray.tune import Checkpoint

    from stargan_ray.tune.trial import _uri

    run_storage = "s3://b/sweeps/s/train?endpoint_override=127.0.0.1:9000&scheme=http"
    fs, _ = storage.filesystem(run_storage)
    checkpoint = Checkpoint("b/sweeps/s/trial_1/checkpoint_000001", fs)
    assert _uri(checkpoint, run_storage) == ("s3://b/sweeps/s/trial_1/checkpoint_000001"
                                            "?endpoint_override=127.0.0.1:9000&scheme=http")


# ---------------------------------------------------------------- prepare


def test_prepare_writes_shards_to_s3_that_read_back_like_local_ones(s3, tree, data, tmp_path,
                                                                    capsys):
    train, _ = tree
    keys = s3.keys(data["train"])
    assert shards.MANIFEST in keys and sum(shards.is_shard_name(k) for k in keys) > 1
    remote = shards.read_manifest(s3.uri(data["train"]), num_domains=2)
    local = prep.prepare(str(train), str(tmp_path / "local"), workers=1, shard_mb=0.02)
    assert remote == local  # same files, rows, labels and content hash
    s3_table, _ = open_table(s3.uri(data["train"]), 2)
    local_table, _ = open_table(str(tmp_path / "local"), 2)
    assert s3_table.kind == "shards" and s3_table.num_groups == local_table.num_groups
    assert (s3_table.labels == local_table.labels).all()
    for group in range(s3_table.num_groups):
        assert s3_table.read_group(group) == local_table.read_group(group)
    # a complete set on S3 is kept unless --overwrite, as on local disk
    capsys.readouterr()
    assert cli.main(["prepare", str(train), s3.uri(data["train"]), "--workers", "1"]) == 2
    assert "already holds a shard set" in capsys.readouterr().err


def test_the_endpoint_may_come_from_aws_endpoint_url(s3, tree, data, monkeypatch):
    train, _ = tree
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3.endpoint}")
    try:
        manifest = prep.prepare(str(train), s3.plain("env/train"), workers=1)
        assert shards.read_manifest(s3.plain("env/train"))["content_hash"] == (
            shards.read_manifest(s3.uri(data["train"]))["content_hash"])
        where = ray_storage(s3.plain("runs"))
    finally:
        storage._uri_filesystem.cache_clear()  # resolved with the variable set
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert shards.read_manifest(s3.uri("env/train")) == manifest
    # The FileSystem Ray gets holds the endpoint: a process without the variable reaches it.
    fs = where["storage_filesystem"]
    assert where["storage_path"] == f"{BUCKET}/runs"
    assert fs.get_file_info(f"{BUCKET}/env/train/{shards.MANIFEST}").type == pafs.FileType.File


# ---------------------------------------------------------------- training and resume


def _cfg(s3: S3Server, data: dict[str, str], uri_form: bool = True, **overrides):
    where = s3.uri if uri_form else s3.plain
    return tiny_data_config(where(data["train"]), where(data["val"]), **{
        "data.batch_size": 2, "train.total_iters": 4, "train.save_every": 2,
        "train.print_every": 2, "train.sample_every": 1000, "train.eval_every": 1000,
        "train.keep_checkpoints": 5, **overrides})


def _final(s3: S3Server, name: str):
    step, folder = latest_checkpoint(s3.uri(f"runs/{name}"))
    with local_file(folder) as path:
        return step, load_train_state(path)


@pytest.fixture(scope="module")
def straight(s3, data, tmp_path_factory):
    """`stargan-ray train` in its own process, endpoint in AWS_ENDPOINT_URL and plain s3://
    URIs for data and storage, on the local Ray instance it starts: 4 steps nobody stops."""
    tmp = tmp_path_factory.mktemp("straight")
    experiment = tmp / "tiny.toml"
    experiment.write_text(to_toml(_cfg(s3, data, uri_form=False)))
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{s3.endpoint}"}
    env.pop("RAY_ADDRESS", None)  # its own local instance, not the session's
    proc = subprocess.run([sys.executable, "-m", "stargan_ray.cli", "train", "--experiment",
                           str(experiment), "--storage", s3.plain("runs"), "--name", "straight",
                           "--num-workers", "1", "--max-failures", "0", "--wandb", "disabled"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _final(s3, "straight")


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_on_s3_stops_resumes_and_ends_like_an_uninterrupted_one(s3, data, straight,
                                                                      ray_session):
    step, reference = straight
    assert step == 4 and reference.step == 4
    assert {"checkpoint_00000002/checkpoint.pt", "checkpoint_00000004/checkpoint.pt"} <= (
        s3.keys("runs/straight"))
    run_training(_cfg(s3, data, **{"train.total_iters": 2}), run_options(s3.uri("runs"), "resumed"))
    assert s3.keys("runs/resumed") >= {"checkpoint_00000002/checkpoint.pt"}
    first = s3.fs().get_file_info(f"{BUCKET}/runs/resumed/checkpoint_00000002/checkpoint.pt")
    run_training(_cfg(s3, data), run_options(s3.uri("runs"), "resumed", resume=True))
    step, state = _final(s3, "resumed")
    assert step == 4 and state.step == 4
    # It continued from step 2: the checkpoint of step 2 was not written again.
    again = s3.fs().get_file_info(f"{BUCKET}/runs/resumed/checkpoint_00000002/checkpoint.pt")
    assert again.mtime == first.mtime and again.size == first.size
    assert_equal_states(state, reference)


# ---------------------------------------------------------------- a sweep

SPACE = """
[tune]
metric = "G/latent_cyc"
mode = "min"
num_samples = 1
max_concurrent = 1
[scheduler]
kind = "fifo"
[loss]
lambda_cyc = { choice = [0.5, 2.0] }
"""


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_keeps_its_state_trials_and_results_on_s3(s3, data, ray_session, tmp_path,
                                                         capsys):
    space_file = tmp_path / "space.toml"
    space_file.write_text(SPACE)
    cfg = _cfg(s3, data)
    result = run_sweep(cfg, read_space(space_file),
                       SweepOptions(storage=s3.uri("sweeps"), name="sweep", wandb="disabled"))
    assert not result.interrupted
    assert result.files["csv"] == s3.uri("sweeps/sweep/results.csv")
    keys = s3.keys("sweeps/sweep")
    assert {"sweep.json", "tuner.pkl", "results.csv", "results.parquet", "best.toml"} <= keys
    (row,) = result.rows  # one trial: what is on S3 matters here, not the search
    assert row["state"] == "completed" and row["loss.lambda_cyc"] in (0.5, 2.0)
    assert f"train/{row['train_run']}/checkpoint_00000004/checkpoint.pt" in keys
    csv = storage.read_bytes(s3.uri("sweeps/sweep/results.csv")).decode()
    assert len(csv.strip().splitlines()) == 2  # header and the trial
    # Tune restores a sweep from S3 (nothing is left to run here)
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(to_toml(cfg))
    assert cli.main(["tune", "--experiment", str(experiment), "--space", str(space_file),
                     "--storage", s3.uri("sweeps"), "--name", "sweep", "--resume",
                     "--wandb", "disabled"]) == 0
    assert storage.read_bytes(s3.uri("sweeps/sweep/results.csv")).decode() == csv


# ---------------------------------------------------------------- the run's records on S3


def _lines(s3: S3Server, key: str) -> list[str]:
    return storage.read_bytes(s3.uri(key)).decode().splitlines()


def test_records_are_uploaded_as_they_change_and_a_start_elsewhere_continues_them(s3, tmp_path):
    """RecordSync without Ray: node A's records reach the run folder (complete lines only, no
    W&B folder or temporary file); node B, with an empty local folder, fetches the appended logs
    and appends after them; a local copy ahead of the store is kept, a stale one replaced."""
    from stargan_ray.train.records import RecordSync

    run = s3.uri("records-unit/run")
    a = tmp_path / "node_a"
    sync = RecordSync.start(run, a)
    (a / "events.jsonl").write_text('{"event": "start", "step": 0}\n')
    (a / "metrics.jsonl").write_text('{"step": 2}\n{"step": 4}\n{"step": 6')  # mid-append
    (a / "samples").mkdir()
    (a / "samples" / "000002_latent.png").write_bytes(b"png")
    (a / "wandb").mkdir()
    (a / "wandb" / "run.wandb").write_bytes(b"w&b's own")
    (a / "samples" / ".000004_latent.png.tmp").write_bytes(b"half")
    assert sync.upload() == 3
    assert s3.keys("records-unit/run") == {"events.jsonl", "metrics.jsonl",
                                           "samples/000002_latent.png"}
    assert _lines(s3, "records-unit/run/metrics.jsonl") == ['{"step": 2}', '{"step": 4}']
    assert sync.upload() == 0  # nothing changed
    with open(a / "metrics.jsonl", "a") as f:
        f.write("}\n")
    assert sync.close()
    assert _lines(s3, "records-unit/run/metrics.jsonl")[-1] == '{"step": 6}'

    b = tmp_path / "node_b"  # another node: nothing local
    sync = RecordSync.start(run, b)
    assert (b / "metrics.jsonl").read_text().splitlines() == [
        '{"step": 2}', '{"step": 4}', '{"step": 6}']
    with open(b / "metrics.jsonl", "a") as f:
        f.write('{"step": 8}\n')
    with open(b / "events.jsonl", "a") as f:
        f.write('{"event": "start", "step": 6}\n')
    assert sync.close()
    assert _lines(s3, "records-unit/run/metrics.jsonl") == [
        '{"step": 2}', '{"step": 4}', '{"step": 6}', '{"step": 8}']
    assert [json.loads(x)["step"] for x in _lines(s3, "records-unit/run/events.jsonl")] == [0, 6]
    assert "samples/000002_latent.png" in s3.keys("records-unit/run")  # node A's stays

    with open(b / "metrics.jsonl", "a") as f:  # ahead of the store (not uploaded yet): kept
        f.write('{"step": 10}\n')
    RecordSync.start(run, b).close()
    assert _lines(s3, "records-unit/run/metrics.jsonl")[-1] == '{"step": 10}'
    # node A's copy is behind and differs from the store: replaced by it
    RecordSync.start(run, a).close()
    assert (a / "metrics.jsonl").read_text().splitlines()[-1] == '{"step": 10}'
    # a run folder without records (a new run under a name used before here): local ones go
    RecordSync.start(s3.uri("records-unit/new"), a).close()
    assert not (a / "metrics.jsonl").exists() and not (a / "events.jsonl").exists()


def test_records_that_cannot_be_uploaded_stay_local_and_never_fail(tmp_path, caplog):
    """An unreachable store (nothing listens on the port): one warning, the records stay in the
    local folder, close returns False instead of raising."""
    from stargan_ray.train.records import RecordSync

    port = free_port()
    run = f"s3://{BUCKET}/x/run?endpoint_override=127.0.0.1:{port}&scheme=http"
    sync = RecordSync.start(run, tmp_path / "local")
    (tmp_path / "local" / "events.jsonl").write_text('{"event": "start"}\n')
    assert not sync.close(timeout_s=120)
    warnings = [r.getMessage() for r in caplog.records if "could not" in r.getMessage()]
    assert warnings and all("\n" not in w for w in warnings), warnings
    assert (tmp_path / "local" / "events.jsonl").read_text() == '{"event": "start"}\n'


def test_a_run_logger_on_s3_puts_its_records_there_and_one_elsewhere_continues_them(
        s3, tmp_path, monkeypatch):
    """RunLogger (rank 0, no Ray) on a URI run folder, in two working folders one after the
    other (two nodes): each appends to what the other left on S3; the loss plot covers both."""
    from PIL import Image

    from stargan_ray.train.logger import RunLogger

    cfg = tiny_config()
    run = s3.uri("logger/run")
    for node, steps in (("a", (2, 4)), ("b", (6,))):
        (tmp_path / node).mkdir()
        monkeypatch.chdir(tmp_path / node)
        logger = RunLogger(cfg, run, run_name="run", wandb="disabled")
        logger.event("start", step=steps[0] - 2)
        for step in steps:
            logger.log(step, {"G/latent_adv": float(step)}, f"[{step}]")
        logger.images(steps[-1], {"latent": Image.new("RGB", (8, 8))})
        logger.finish()
    keys = s3.keys("logger/run")
    assert {"events.jsonl", "metrics.jsonl", "plots/losses.png", "samples/000004_latent.png",
            "samples/000006_latent.png"} <= keys, keys
    assert [json.loads(x)["step"] for x in _lines(s3, "logger/run/metrics.jsonl")] == [2, 4, 6]
    assert [json.loads(x)["step"] for x in _lines(s3, "logger/run/events.jsonl")] == [0, 4]
    assert sum(k.startswith("events.out.tfevents") for k in keys) == 2  # one per start


def _train_elsewhere(s3: S3Server, cfg, name: str, root, *extra: str
                     ) -> subprocess.CompletedProcess:
    """`stargan-ray train` as on another machine: its own working folder, HOME and local Ray
    instance (so its workers write their records in another local folder)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "home").mkdir(exist_ok=True)
    experiment = root / "tiny.toml"
    experiment.write_text(to_toml(cfg))
    env = {**os.environ, "HOME": str(root / "home")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "stargan_ray.cli", "train", "--experiment",
                           str(experiment), "--storage", s3.uri("runs"), "--name", name,
                           "--num-workers", "1", "--max-failures", "0", "--wandb", "disabled",
                           *extra], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.ray
@pytest.mark.slow
def test_a_runs_records_live_on_s3_and_a_restart_elsewhere_continues_them(
        s3, data, tree, ray_session, tmp_path, monkeypatch):
    records = {"train.print_every": 2, "train.sample_every": 2}
    run_training(_cfg(s3, data, **records), run_options(s3.uri("runs"), "records"))
    keys = s3.keys("runs/records")
    assert {"events.jsonl", "metrics.jsonl", "plots/losses.png", "samples/000002_latent.png",
            "samples/000004_reference.png"} <= keys, keys
    assert any(k.startswith("events.out.tfevents") for k in keys)  # TensorBoard's
    assert not any(k.startswith("wandb/") for k in keys)
    assert [json.loads(x)["step"] for x in _lines(s3, "runs/records/metrics.jsonl")] == [2, 4]
    plot = s3.fs().get_file_info(f"{BUCKET}/runs/records/plots/losses.png")

    # --resume on "another machine": no local folder of this run there
    proc = _train_elsewhere(s3, _cfg(s3, data, **records, **{"train.total_iters": 6}),
                            "records", tmp_path / "elsewhere", "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming run 'records' from checkpoint_00000004" in proc.stdout
    metrics = [json.loads(x) for x in _lines(s3, "runs/records/metrics.jsonl")]
    assert [m["step"] for m in metrics] == [2, 4, 6]  # appended after the earlier ones
    starts = [e["step"] for e in map(json.loads, _lines(s3, "runs/records/events.jsonl"))
              if e["event"] == "start"]
    assert starts == [0, 4]
    assert {"samples/000002_latent.png", "samples/000006_latent.png"} <= s3.keys("runs/records")
    again = s3.fs().get_file_info(f"{BUCKET}/runs/records/plots/losses.png")
    assert again.mtime > plot.mtime  # redrawn, from all three records
    assert not (tmp_path / "elsewhere" / "runs_local").exists()  # workers write in Ray's folder

    # eval --run from a folder that never saw the run: results go to the run folder on S3
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    monkeypatch.setenv("STARGAN_RAY_CACHE", str(tmp_path / "cache"))
    assert cli.main(["eval", "--run", s3.uri("runs/records"), "--num-workers", "0",
                     "--device", "cpu", "--mode", "latent", "--feature-weights", "random",
                     # local images: eval reads no shards, and its per-domain paths under a
                     # URI with a query are not made with storage.join yet
                     "--train-dir", str(tree[0]), "--val-dir", str(tree[1]),
                     "--set", "eval.num_outs_per_domain=2", "--set", "eval.batch_size=8",
                     "--set", "data.val_batch_size=1"]) == 0
    keys = s3.keys("runs/records/metrics")
    assert {"by_step.csv", "by_step.png", "FID_00002_latent.json",
            "FID_00006_latent.json"} <= keys, keys
    csv = storage.read_bytes(s3.uri("runs/records/metrics/by_step.csv")).decode().splitlines()
    assert [row.split(",")[0] for row in csv[1:]] == ["2", "4", "6"]
    assert list(fresh.iterdir()) == []  # nothing written where it ran


# ---------------------------------------------------------------- one writer per run folder


HOLDER = """
import sys, time
from stargan_ray.train.run_lock import hold_run_folder
with hold_run_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_run_folder_on_s3_is_held_refused_in_one_line_and_taken_with_force(
        s3, data, tmp_path, capsys):
    """A live run (another process) holds runs/held on S3: a second `train` on that name is one
    line naming the owner and writes nothing there; --force takes the lock over; the owner's
    exit then leaves the new holder's lock alone."""
    from stargan_ray.train.run_lock import RUN_LOCK, hold_run_folder

    from stargan_ray.checkpoint import save_checkpoint
    from stargan_ray.engine import TrainState

    run, cfg = s3.uri("runs/held"), _cfg(s3, data)
    state = TrainState.create(cfg, "cpu", seed=0)
    state.step = 2
    save_checkpoint(state, tmp_path / "checkpoint.pt")  # the first run's, at step 2
    first = (tmp_path / "checkpoint.pt").read_bytes()
    storage.write_bytes(storage.join(run, "checkpoint_00000002", "checkpoint.pt"), first)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run], stdout=subprocess.PIPE,
                              text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held", "the holder took no lock"
        before = s3.keys("runs/held")
        experiment = tmp_path / "tiny.toml"
        experiment.write_text(to_toml(cfg))
        argv = ["train", "--experiment", str(experiment), "--storage", s3.uri("runs"),
                "--name", "held", "--resume", "--wandb", "disabled"]
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("stargan-ray: error: run folder "), err
        assert f"held by another run (pid {holder.pid} on host" in err and "--force" in err
        assert s3.keys("runs/held") == before
        assert storage.read_bytes(storage.join(run, "checkpoint_00000002",
                                               "checkpoint.pt")) == first
        notes = []
        with hold_run_folder(run, force=True, note=notes.append):
            owner = json.loads(storage.read_bytes(storage.join(run, RUN_LOCK)))
            assert owner["pid"] == os.getpid() and "forced" in notes[0]
            holder.terminate()
            holder.wait(30)
            owner = json.loads(storage.read_bytes(storage.join(run, RUN_LOCK)))
            assert owner["pid"] == os.getpid()  # the old owner's exit did not release it
        assert RUN_LOCK not in s3.keys("runs/held")  # released at exit
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- a store that fails mid-run


@pytest.mark.ray
@pytest.mark.slow
def test_an_object_store_that_stops_during_a_run_ends_it_with_one_line(tree, ray_session,
                                                                       tmp_path):
    """The run's own moto server is stopped once the first checkpoint is there: the run ends
    with StorageFailed (one line: what failed, --resume), not Ray's retries and tracebacks."""
    from stargan_ray.train.storage_faults import StorageFailed

    train, val = tree
    cfg = tiny_data_config(train, val, **{
        "data.batch_size": 2, "train.total_iters": 400, "train.save_every": 2,
        "train.print_every": 2, "train.sample_every": 1000, "train.eval_every": 1000})
    with _moto_server(tmp_path / "server.log") as (doomed, server):
        def stop_after_the_first_checkpoint() -> None:
            wait_until(lambda: "checkpoint_00000002/checkpoint.pt" in doomed.keys("runs/doomed"),
                       "the first checkpoint on S3", timeout_s=400)
            server.terminate()

        stopper = threading.Thread(target=stop_after_the_first_checkpoint, daemon=True)
        stopper.start()
        with pytest.raises(StorageFailed) as err:
            run_training(cfg, run_options(doomed.uri("runs"), "doomed", max_failures=3))
        stopper.join(10)
    message = str(err.value)
    assert "\n" not in message and message.startswith("storage failed: "), message
    assert doomed.uri("runs/doomed").split("?")[0] in message
    assert message.endswith("when the storage takes writes again, run the same command with "
                            "--resume"), message


def test_a_lock_on_a_store_that_failed_is_left_with_a_warning(tmp_path, caplog):
    """Releasing RUN.lock on a store that stopped answering is a warning, so the error the run
    ends with (StorageFailed) is what the user sees, not the release's OSError."""
    from stargan_ray.train.run_lock import hold_run_folder

    with _moto_server(tmp_path / "server.log") as (gone, server):
        with hold_run_folder(gone.uri("runs/r"), note=None):
            server.terminate()
            server.wait(30)
    assert any("could not remove" in r.getMessage() for r in caplog.records)


def test_a_save_on_a_store_that_stopped_stops_the_loop_without_a_worker_failure(
        tmp_path, monkeypatch):
    """The loop in this process (ray.train.report recorded): the store goes after the save of
    step 2; the save of step 4 reports nothing, the loop returns (no exception for Ray to retry)
    and the driver's line says what failed and --resume."""
    import ray.train

    from stargan_ray.engine import TrainState
    from stargan_ray.train import WorkerSpec, worker
    from stargan_ray.train.storage_faults import failed_storage_line

    from .helpers import LoopLogger, random_batch, recording_report

    cfg = tiny_config(**{"train.total_iters": 8, "train.print_every": 2, "train.save_every": 2,
                         "train.sample_every": 100, "train.eval_every": 100})
    with _moto_server(tmp_path / "server.log") as (gone, server):
        reports = []
        record = recording_report(reports)  # runs each checkpoint's upload, as Ray would

        def report(metrics, checkpoint=None, **kw):
            record(metrics, checkpoint=checkpoint, **kw)
            if metrics["step"] == 2:
                server.terminate()
                server.wait(30)

        monkeypatch.setattr(ray.train, "report", report)
        monkeypatch.setattr(ray.train, "get_preemption_info", lambda: None)
        logger = LoopLogger()
        out = worker.Outputs(logger, samples=lambda state: {}, evaluate=lambda state: {})
        state = TrainState.create(cfg, "cpu", seed=0)
        batches = iter([random_batch(cfg, seed=i) for i in range(8)])
        run = gone.uri("runs/r")
        worker._train(state, batches, out, WorkerSpec(cfg, run, "r", data=None), 0, 1)
        assert reports == [(2, True)] and state.step == 4
        assert logger.events[-1][0] == "stopped"
        assert logger.events[-1][1]["reason"].startswith("storage failed: saving "
                                                         "checkpoint_00000004 to ")
        line = failed_storage_line(run, "checkpoint_00000002")
    assert line is not None and "\n" not in line
    assert "the last checkpoint this run saved is checkpoint_00000002" in line
    assert line.endswith("run the same command with --resume")
    assert failed_storage_line(str(tmp_path / "local"), None) is None
