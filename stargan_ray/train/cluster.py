"""Connecting to Ray: the cluster in RAY_ADDRESS or a local instance sized for the run."""

from __future__ import annotations

import logging
import math
import os
import socket

from .plan import RunOptions

def init_ray(opts: RunOptions) -> None:
    """Connect to the cluster in RAY_ADDRESS, or start a local one sized for the run.

    A local instance gets at least two logical CPUs beyond the workers' own: workers holding every
    CPU starve Ray Data's decoding tasks, and training then waits forever (docs/ray.md).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(configure_logging=False)
        return
    needed = math.ceil(opts.worker_range[1] * opts.cpus_per_worker) + 2
    start_local_ray(max(os.cpu_count() or 1, needed), configure_logging=False)


def start_local_ray(num_cpus: int, env_vars: dict[str, str] | None = None, **init_kwargs) -> str:
    """Start a new single-node Ray instance whose own processes can find it; returns its address.

    address="local": never the instance that another `ray start` left on this machine. Ray Train
    removes the placement group of a Train run whose controller was killed (a Tune trial that
    ASHA or PBT stopped) from a helper that looks the controller up through the state API, and
    that API finds the cluster through RAY_ADDRESS or /tmp/ray/ray_current_cluster, which names
    the last `ray start`, not this instance. Without a correct RAY_ADDRESS in every worker each
    stopped trial leaks its CPUs until a sweep waits forever for resources.
    """
    import ray

    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    previous = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by ray.init when it starts the head
    try:
        ray.init(address="local", num_cpus=num_cpus,
                 runtime_env={"env_vars": {**(env_vars or {}), "RAY_ADDRESS": address}},
                 **init_kwargs)
    finally:
        if previous is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = previous
    return address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def quiet_ray_data() -> None:
    """One console line per print_every: no Ray Data progress bars in the driver's output."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def quiet_train_reports() -> None:
    """Ray Train logs every ray.train.report of every worker at INFO, metrics included: a flood
    next to our one line per print_every. Its logger is named after its file."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logs
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
