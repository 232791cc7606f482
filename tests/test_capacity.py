"""A request no node of the cluster can ever hold is one line before anything waits for it.

capacity_problem is given simulated clusters (dicts of resources per node, node types and limits
of an autoscaler); the last test asks a real local Ray instance through `stargan-ray train`.
"""

from __future__ import annotations

import pytest

from stargan_ray import cli
from stargan_ray.errors import ConfigError, UserError
from stargan_ray.train import RunOptions
from stargan_ray.train.capacity import (Cluster, Request, capacity_problem, serve_request,
                                        train_request, tune_request, units_that_fit,
                                        wait_for_capacity)
from stargan_ray.tune import SweepOptions

CPU_ONLY = Cluster([{"CPU": 8.0, "memory": 1e10}])
TWO_GPU_NODES = Cluster([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])


def _workers(count: int, gpus: float, cpus: float = 1.0) -> Request:
    return train_request(RunOptions(num_workers=count, gpus_per_worker=gpus,
                                    cpus_per_worker=cpus))


def test_a_gpu_per_worker_on_a_cluster_without_gpus_names_the_numbers():
    problem = capacity_problem(_workers(1, 1.0), CPU_ONLY)
    assert problem == ("--gpus-per-worker 1: each worker needs 1 GPU on one node, but no node of "
                       "the cluster has more than 0 (no autoscaler is configured to add nodes); "
                       "its nodes: 8 CPU, 0 GPU")


def test_more_in_all_than_the_nodes_have():
    problem = capacity_problem(_workers(4, 1.0), TWO_GPU_NODES)
    assert problem == ("--num-workers 4 x --gpus-per-worker 1 = 4 GPU, but the cluster has 2 GPU "
                       "in all and no autoscaler is configured to add more")
    assert capacity_problem(_workers(2, 1.0), TWO_GPU_NODES) is None
    assert capacity_problem(_workers(4, 0.5), TWO_GPU_NODES) is None  # fractions pack


def test_a_bundle_is_placed_on_one_node():
    problem = capacity_problem(_workers(1, 2.0), TWO_GPU_NODES)  # 2 GPUs in all, 1 per node
    assert problem is not None and "--gpus-per-worker 2" in problem and "more than 1" in problem
    # each resource exists on some node, but no node has both
    split = Cluster([{"CPU": 16.0}, {"CPU": 1.0, "GPU": 4.0}])
    problem = capacity_problem(_workers(1, 1.0, cpus=8.0), split)
    assert problem is not None and "needs 8 CPU, 1 GPU on one node" in problem


def test_an_autoscaler_may_add_what_the_live_nodes_lack():
    scaling = Cluster([{"CPU": 4.0}], node_types=[{"CPU": 8.0, "GPU": 1.0}],
                      max_total={"CPU": 36.0, "GPU": 4.0})
    assert capacity_problem(_workers(4, 1.0), scaling) is None
    problem = capacity_problem(_workers(5, 1.0), scaling)
    assert problem == ("--num-workers 5 x --gpus-per-worker 1 = 5 GPU, but the cluster has 0 GPU "
                       "in all and its autoscaler may grow it to 4")
    problem = capacity_problem(_workers(1, 2.0), scaling)
    assert problem is not None and "or any node type its autoscaler may add" in problem


def test_serve_replicas_are_checked_the_same_way():
    class Opts:
        replicas, autoscale, cpus_per_replica, gpus_per_replica = 1, None, 1.0, 1.0

    problem = capacity_problem(serve_request(Opts), CPU_ONLY)
    assert problem is not None and problem.startswith("--gpus-per-replica 1: each replica needs")
    Opts.gpus_per_replica, Opts.autoscale = 0.0, (20, 30)
    problem = capacity_problem(serve_request(Opts), CPU_ONLY)
    assert problem == ("--autoscale MIN 20 x --cpus-per-replica 1 = 20 CPU, but the cluster has "
                       "8 CPU in all and no autoscaler is configured to add more")


def test_a_sweep_asks_for_one_trial_s_workers():
    request = tune_request(SweepOptions(workers_per_trial=2, gpus_per_worker=1.0,
                                        cpus_per_worker=0.0))
    assert capacity_problem(request, TWO_GPU_NODES) is None
    problem = capacity_problem(request, CPU_ONLY)
    assert problem is not None and problem.startswith("--gpus-per-worker 1: each worker needs")
    request = tune_request(SweepOptions(workers_per_trial=3, gpus_per_worker=1.0))
    assert capacity_problem(request, TWO_GPU_NODES) == (
        "--workers-per-trial 3 x --gpus-per-worker 1 = 3 GPU, but the cluster has 2 GPU in all "
        "and no autoscaler is configured to add more")


class Autoscaled:
    """A simulated autoscaling cluster on a simulated clock: a CPU head, a 1-GPU node type (at
    most 4), and GPU nodes that join at the given times after the request."""

    def __init__(self, join_at_s: list[float]):
        self.now, self.join_at_s, self.asked = 0.0, join_at_s, []

    def describe(self) -> Cluster:
        gpu_nodes = [{"CPU": 8.0, "GPU": 1.0} for t in self.join_at_s if t <= self.now]
        return Cluster([{"CPU": 4.0}, *gpu_nodes], node_types=[{"CPU": 8.0, "GPU": 1.0}],
                       max_total={"CPU": 36.0, "GPU": 4.0})

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, request: Request, wait_s: float, lines: list[str]) -> None:
        wait_for_capacity(request, wait_s, describe=self.describe, ask=self.asked.append,
                          note=lines.append, clock=lambda: self.now, sleep=self.sleep)


def test_a_request_for_an_autoscaler_says_so_and_goes_on_when_the_nodes_join():
    cluster, lines = Autoscaled(join_at_s=[20.0, 40.0]), []
    cluster.wait(_workers(2, 1.0), 120, lines)
    assert lines == ["stargan-ray: waiting up to 120 s (--wait) for the autoscaler to add nodes: "
                     "asked for 2 worker(s) of 1 CPU, 1 GPU; the cluster has 1 live "
                     "node(s) with 4 CPU, 0 GPU in all, room for 0"]
    assert 40.0 <= cluster.now < 120.0
    # the autoscaler was asked for the two bundles, and the standing request was cleared
    assert cluster.asked == [[{"CPU": 1.0, "GPU": 1.0}] * 2, []]


def test_a_request_the_autoscaler_does_not_meet_in_time_is_one_line_naming_the_numbers():
    cluster, lines = Autoscaled(join_at_s=[20.0, 500.0]), []
    with pytest.raises(UserError) as err:
        cluster.wait(_workers(2, 1.0), 60, lines)
    assert str(err.value) == ("--wait 60: the autoscaler did not add the nodes in time: "
                              "asked for 2 worker(s) of 1 CPU, 1 GPU; the cluster has 2 live "
                              "node(s) with 12 CPU, 1 GPU in all, room for 1")
    assert len(lines) == 1 and cluster.now == pytest.approx(60.0)
    assert cluster.asked[-1] == []  # no request left behind for nodes nobody will use


def test_no_wait_when_the_live_nodes_hold_it_or_nothing_ever_will():
    cluster, lines = Autoscaled(join_at_s=[]), []
    cluster.wait(_workers(2, 0.0, cpus=2.0), 60, lines)  # the head holds two
    with pytest.raises(ConfigError):  # 5 GPUs: more than the autoscaler may reach
        cluster.wait(_workers(5, 1.0), 60, lines)
    assert lines == [] and cluster.asked == [] and cluster.now == 0.0
    # --wait 0 on a request for the autoscaler: the line, then at once the error
    with pytest.raises(UserError, match="--wait 0: the autoscaler did not add"):
        cluster.wait(_workers(1, 1.0), 0, lines)
    assert len(lines) == 1 and cluster.now == 0.0


def test_units_are_placed_whole_on_one_node():
    request = _workers(4, 0.0, cpus=1.0)
    split = [{"CPU": 1.5}, {"CPU": 1.5}, {"CPU": 1.5}]  # 4.5 CPUs in all, room for 3 workers
    assert units_that_fit(request, split) == 3
    assert capacity_problem(request, Cluster(split)) is None  # the totals alone would pass
    with pytest.raises(ConfigError) as err:
        wait_for_capacity(request, 60, describe=lambda: Cluster(split), ask=None)
    assert str(err.value) == ("--num-workers 4: asked for 4 worker(s) of 1 CPU (each on "
                              "one node); the cluster has 3 live node(s) with 4.5 CPU in all, "
                              "room for 3 (no autoscaler is configured to add more)")


@pytest.mark.ray
def test_train_refuses_gpus_no_node_has_before_waiting(ray_session, tmp_path, capsys):
    import ray

    most = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    storage = tmp_path / "runs"
    rc = cli.main(["train", "--storage", str(storage), "--gpus-per-worker", str(most + 1),
                   "--set", "train.total_iters=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.splitlines() == [f"stargan-ray: error: --gpus-per-worker {most + 1:g}: each worker "
                                f"needs {most + 1:g} GPU on one node, but no node of the cluster "
                                f"has more than {most:g} (no autoscaler is configured to add "
                                f"nodes); its nodes: " + err.split("its nodes: ")[-1]]
    assert not list(storage.glob("*/checkpoint_*"))


@pytest.mark.ray
def test_train_waits_for_a_published_autoscaler_then_stops_after_wait(ray_session, tmp_path,
                                                                      capsys):
    """The real path on the session's Ray: an autoscaler's cluster config published in the GCS
    (as the autoscaler publishes it) with a 1-GPU node type that never starts (nothing runs the
    autoscaler here). train says it waits, asks, and after --wait stops with one line, exit 2."""
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[autoscaler_pb2.NodeGroupConfig(
        name="gpu", resources={"CPU": 8, "GPU": 1}, max_count=2)])
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY
    namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    storage = tmp_path / "runs"
    _internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        rc = cli.main(["train", "--storage", str(storage), "--gpus-per-worker", "1",
                       "--wait", "3", "--set", "train.total_iters=2"])
    finally:
        _internal_kv_del(key, namespace=namespace)
    out, err = capsys.readouterr()
    assert rc == 2, err
    waiting = [line for line in out.splitlines() if "--wait" in line]
    assert len(waiting) == 1 and waiting[0].startswith(
        "stargan-ray: waiting up to 3 s (--wait) for the autoscaler to add nodes: asked "
        "for 1 worker(s) of 1 CPU, 1 GPU; the cluster has "), out
    assert err.strip().splitlines() == [
        "stargan-ray: error: --wait 3: the autoscaler did not add the nodes in time: asked "
        "for 1 worker(s) of 1 CPU, 1 GPU; the cluster has " + err.split("the cluster has ")[-1]
        .strip()]
    assert "room for 0" in err and not list(storage.glob("*/checkpoint_*"))


@pytest.mark.ray
def test_tune_refuses_gpus_no_node_has_before_writing_the_sweep(ray_session, tmp_path, capsys):
    import ray

    most = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    storage = tmp_path / "sweeps"
    rc = cli.main(["tune", "--space", "quick", "--storage", str(storage), "--name", "s",
                   "--gpus-per-worker", str(most + 1)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(
        f"stargan-ray: error: --gpus-per-worker {most + 1:g}: each worker needs"), err
    assert not (storage / "s").exists()  # a sweep that never started leaves no folder
