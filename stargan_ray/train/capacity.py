"""Can the cluster ever hold what a run asks for? Checked before any worker or replica is placed.

Ray waits forever for a placement nothing can satisfy (`--gpus-per-worker 1` on a cluster without
GPUs repeats "No available node types can fulfill resource request"). capacity_problem compares
the request with a description of the cluster: its live nodes and, when an autoscaler is
configured, the node types it may add and the most of each resource it may reach. Without an
autoscaler the live nodes are the limit. The comparison is plain Python (tests give it simulated
clusters); cluster_description reads the real one from Ray.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, UserError

Resources = Mapping[str, float]


@dataclass(frozen=True)
class Cluster:
    """What a cluster has: each live node's resources; with an autoscaler, the resources of each
    node type it may start and the most of each resource it may reach (None: no autoscaler)."""

    nodes: Sequence[Resources]
    node_types: Sequence[Resources] = ()
    max_total: Resources | None = None

    @property
    def autoscaling(self) -> bool:
        return self.max_total is not None


@dataclass(frozen=True)
class Request:
    """count units (workers, replicas) of per_unit resources each; flags name them for the user."""

    count: int
    per_unit: Resources
    count_flag: str  # "--num-workers"
    unit: str  # "worker"
    flags: Mapping[str, str] = field(default_factory=dict)  # {"GPU": "--gpus-per-worker"}


def _num(value: float) -> str:
    return f"{value:g}"


def _describe(nodes: Sequence[Resources], keys: Sequence[str]) -> str:
    if not nodes:
        return "no nodes"
    return "; ".join(", ".join(f"{_num(node.get(k, 0))} {k}" for k in keys) for node in nodes)


def capacity_problem(request: Request, cluster: Cluster) -> str | None:
    """None when the cluster (with what its autoscaler may add) can hold the request; else one
    line naming the flag, the numbers asked for and the numbers the cluster has."""
    wanted = {k: v for k, v in request.per_unit.items() if v > 0}
    keys = sorted(wanted)
    shapes = [*cluster.nodes, *cluster.node_types]
    more = (" or any node type its autoscaler may add" if cluster.autoscaling
            else " (no autoscaler is configured to add nodes)")
    for key, amount in sorted(wanted.items()):
        largest = max((node.get(key, 0) for node in shapes), default=0)
        if amount > largest:
            flag = request.flags.get(key, key)
            return (f"{flag} {_num(amount)}: each {request.unit} needs {_num(amount)} {key} on one "
                    f"node, but no node of the cluster has more than {_num(largest)}{more}; its "
                    f"nodes: {_describe(cluster.nodes, keys)}")
    if not any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in shapes):
        asked = ", ".join(f"{_num(wanted[k])} {k}" for k in keys)
        return (f"each {request.unit} needs {asked} on one node, but no node has all of "
                f"that{more}; its nodes: {_describe(cluster.nodes, keys)}")
    for key, amount in sorted(wanted.items()):
        total = amount * request.count
        have = sum(node.get(key, 0) for node in cluster.nodes)
        limit = max(have, cluster.max_total.get(key, 0)) if cluster.autoscaling else have
        if total > limit + 1e-9:
            flag = request.flags.get(key, key)
            where = (f"its autoscaler may grow it to {_num(limit)}" if cluster.autoscaling else
                     "no autoscaler is configured to add more")
            return (f"{request.count_flag} {request.count} x {flag} {_num(amount)} = "
                    f"{_num(total)} {key}, but the cluster has {_num(have)} {key} in all and "
                    f"{where}")
    return None


def cluster_description() -> Cluster:
    """The connected Ray cluster: live nodes, and the autoscaler's node types and limits when a
    cluster config is published (Ray Train checks the same config before placing workers)."""
    import ray

    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        max_total = state.get_max_resources_from_cluster_config() if config else None
    except Exception:  # noqa: BLE001  an older or private API that moved: no autoscaler known
        config, max_total = None, None
    if config is None or max_total is None:
        return Cluster(nodes)
    node_types = [dict(group.resources) for group in config.node_group_configs
                  if group.max_count != 0]
    return Cluster(nodes, node_types, dict(max_total))


def check_capacity(request: Request, cluster: Cluster | None = None) -> None:
    """Raise ConfigError (one line) when nothing the cluster has or may add holds the request."""
    problem = capacity_problem(request, cluster or cluster_description())
    if problem:
        raise ConfigError(problem)


def units_that_fit(request: Request, nodes: Sequence[Resources]) -> int:
    """How many of the request's units the nodes hold now (each unit on one node; units are
    alike, so counting per node is exact)."""
    wanted = {k: v for k, v in request.per_unit.items() if v > 0}
    if not wanted:
        return request.count if nodes else 0
    return sum(min(math.floor(node.get(k, 0) / v + 1e-9) for k, v in wanted.items())
               for node in nodes)


def _asked(request: Request) -> str:
    parts = ", ".join(f"{_num(v)} {k}" for k, v in sorted(request.per_unit.items()) if v > 0)
    return f"{request.count} {request.unit}(s) of {parts or 'no resources'}"


def _there(request: Request, cluster: Cluster) -> str:
    keys = sorted(k for k, v in request.per_unit.items() if v > 0)
    have = ", ".join(f"{_num(sum(n.get(k, 0) for n in cluster.nodes))} {k}" for k in keys)
    return (f"{len(cluster.nodes)} live node(s) with {have or 'no such resources'} in all, room "
            f"for {units_that_fit(request, cluster.nodes)}")


def wait_for_capacity(request: Request, wait_s: float, *,
                      describe: Callable[[], Cluster] = cluster_description,
                      ask: Callable[[list[dict]], None] | None = None,
                      note: Callable[[str], None] = print, poll_s: float = 5.0,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once the live nodes hold the request; raise ConfigError at once when nothing the
    cluster has or may add ever will (capacity_problem), and UserError when an autoscaler may
    add the nodes but they are not there after wait_s. Before waiting, one line through note
    says so; ask (Ray's request_resources) tells the autoscaler what to start and is cleared
    after, so that no standing request keeps nodes up once the run has placed its own."""
    cluster = describe()
    problem = capacity_problem(request, cluster)
    if problem:
        raise ConfigError(problem)
    if units_that_fit(request, cluster.nodes) >= request.count:
        return
    if not cluster.autoscaling:  # enough in all, but split so that no node takes the rest
        raise ConfigError(f"{request.count_flag} {request.count}: asked for "
                          f"{_asked(request)} (each on one node); the cluster has "
                          f"{_there(request, cluster)} (no autoscaler is configured to add more)")
    note(f"stargan-ray: waiting up to {_num(wait_s)} s (--wait) for the autoscaler to add "
         f"nodes: asked for {_asked(request)}; the cluster has {_there(request, cluster)}")
    ask = ask or _request_resources
    deadline = clock() + wait_s
    ask([dict(request.per_unit)] * request.count)
    try:
        while clock() < deadline:
            sleep(min(poll_s, max(0.0, deadline - clock())))
            cluster = describe()
            if units_that_fit(request, cluster.nodes) >= request.count:
                return
    finally:
        ask([])
    raise UserError(f"--wait {_num(wait_s)}: the autoscaler did not add the nodes in time: "
                    f"asked for {_asked(request)}; the cluster has {_there(request, cluster)}")


def _request_resources(bundles: list[dict]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{k: v for k, v in b.items() if v > 0} for b in bundles])


def train_request(opts: Any) -> Request:
    """What a Train run (RunOptions) asks for: its minimum worker count of one bundle each."""
    per_worker = opts.resources()["resources_per_worker"]
    return Request(opts.worker_range[0], per_worker, "--num-workers", "worker",
                   {"CPU": "--cpus-per-worker", "GPU": "--gpus-per-worker"})


def tune_request(opts: Any) -> Request:
    """What one trial of a sweep (SweepOptions) asks for: its Train workers, one bundle each
    (the trial's own data-pipeline CPU is left out: a fraction beside them)."""
    return Request(opts.workers_per_trial,
                   {"CPU": opts.cpus_per_worker, "GPU": opts.gpus_per_worker},
                   "--workers-per-trial", "worker",
                   {"CPU": "--cpus-per-worker", "GPU": "--gpus-per-worker"})


def serve_request(opts: Any) -> Request:
    """What a Serve app (ServeOptions) asks for: its minimum replica count, one bundle each."""
    count = opts.autoscale[0] if opts.autoscale else opts.replicas
    flag = "--autoscale MIN" if opts.autoscale else "--replicas"
    return Request(count, {"CPU": opts.cpus_per_replica, "GPU": opts.gpus_per_replica}, flag,
                   "replica", {"CPU": "--cpus-per-replica", "GPU": "--gpus-per-replica"})


__all__ = ["Cluster", "Request", "capacity_problem", "cluster_description", "check_capacity",
           "units_that_fit", "wait_for_capacity", "train_request", "tune_request", "serve_request"]
