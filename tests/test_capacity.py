"""A request no node of the cluster can ever hold is one line before anything waits for it.

capacity_problem is given simulated clusters (dicts of resources per node, node types and limits
of an autoscaler); the last test asks a real local Ray instance through `stargan-ray train`.
"""

from __future__ import annotations

import pytest

from stargan_ray import cli
from stargan_ray.train import RunOptions
from stargan_ray.train.capacity import (Cluster, Request, capacity_problem, serve_request,
                                        train_request)

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
