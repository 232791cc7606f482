"""The evaluation over Ray: N actors, each an EvalWorker rebuilt from state dicts, dealt the items
in strides; per-item LPIPS comes back as items finish, the moment sums once at the end.

Ray is imported inside run_ray, so importing this module (and the evaluator) needs no Ray.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from ..models import Networks, ema_networks_from_states
from . import fid as fidlib
from . import lpips as lpipslib
from .eval_plan import Item, Job
from .eval_worker import EvalWorker, ItemResult
from .options import EvalOptions


def _payload(nets: Networks, inception: nn.Module, lpips_net: nn.Module | None) -> dict[str, Any]:
    """CPU state dicts of everything a Ray worker rebuilds (no weights files needed there)."""
    def cpu(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    return {
        "nets": {name: cpu(getattr(nets, name))
                 for name in ("generator", "mapping_network", "style_encoder")},
        "fan": cpu(nets.fan) if nets.fan is not None else None,
        "inception": cpu(inception),
        "inception_folded": inception.folded,  # rebuilt folded, then loaded
        "lpips": cpu(lpips_net) if lpips_net is not None else None,
    }


class RayEvalWorker(EvalWorker):
    """An EvalWorker rebuilt from state dicts inside a Ray actor."""

    def __init__(self, job: Job, payload: dict[str, Any], device: str) -> None:
        nets = ema_networks_from_states(job.cfg.model, payload["nets"], payload["fan"])
        inception = fidlib.inception_from_state(payload["inception"], payload["inception_folded"])
        lpips_net = None
        if payload["lpips"] is not None:
            from torchvision.models import alexnet

            lpips_net = lpipslib.LPIPSNet(alexnet(weights=None).features)
            lpips_net.load_state_dict(payload["lpips"])
            lpips_net.eval().requires_grad_(False).to(device)
        super().__init__(job, nets.to(device), inception.to(device),
                         lpips_net, device)


def run_ray(job: Job, items: list[Item],
            networks: tuple[Networks, nn.Module, nn.Module | None], opts: EvalOptions,
            on_result: Callable[[ItemResult], None]) -> dict[tuple, fidlib.FeatureMoments]:
    """Run the items on opts.num_workers actors (opts.cpus_per_worker CPUs each, and one GPU
    each when opts.device is cuda); networks: (nets, inception, lpips_net or None), sent once as CPU
    state dicts; on_result sees each item's result as it arrives; returns the moment sums added
    up in worker order."""
    import ray

    num_workers = opts.num_workers
    started = not ray.is_initialized()
    if started:  # the CLI: a local instance, or the cluster at RAY_ADDRESS
        ray.init()
    use_gpu = torch.device(opts.device).type == "cuda"
    actor = ray.remote(RayEvalWorker).options(num_cpus=opts.cpus_per_worker,
                                              num_gpus=1 if use_gpu else 0)
    shards = [list(items[k::num_workers]) for k in range(num_workers)]  # strided: balanced
    pending: dict[Any, int] = {}
    workers: list[Any] = []

    def submit(k: int) -> None:
        if shards[k]:
            pending[workers[k].run.remote(shards[k].pop(0))] = k

    try:
        payload = ray.put(_payload(*networks))
        workers += [actor.remote(job, payload, "cuda" if use_gpu else "cpu")
                    for _ in range(num_workers)]
        for k in range(num_workers):
            for _ in range(2):  # one item queued behind the running one keeps workers busy
                submit(k)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(done[0])
            on_result(ray.get(done[0]))
            submit(k)
        moments: dict[tuple, fidlib.FeatureMoments] = {}
        for part in ray.get([w.results.remote() for w in workers]):  # worker order: deterministic
            for key, m in part.items():
                moments[key] = moments[key] + m if key in moments else m
        return moments
    finally:
        for w in workers:
            ray.kill(w)
        if started:
            ray.shutdown()


def auto_workers(gpus: int) -> int:
    """Evaluation workers for --num-workers auto: one per GPU when there are several; else the
    evaluation runs in this process (one GPU, or CPUs only: on a 2-core machine two CPU workers
    took 85.5 s against 68.6 s in-process for the same evaluation)."""
    return gpus if gpus >= 2 else 0


def cluster_gpus() -> int:
    """GPUs of the Ray cluster in RAY_ADDRESS (left connected for run_ray), else of this machine."""
    if os.environ.get("RAY_ADDRESS"):
        import ray

        ray.init(configure_logging=False)
        return int(ray.cluster_resources().get("GPU", 0))
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


__all__ = ["RayEvalWorker", "run_ray", "auto_workers", "cluster_gpus"]
