"""fid_quick during training: every rank computes a share of the sources and the shares are summed
by an all-reduce (metrics.evaluator.fid_quick with shard and reduce). The training loop calls it on
every rank at the same steps and hands the value to the run's logger."""

from __future__ import annotations

import torch

from ..config import ExperimentConfig
from ..models import Networks


def sum_over_ranks(device: torch.device | str):
    """reduce for sharded metrics: the elementwise sum of a CPU tensor over the default process
    group, all-reduced on device (NCCL takes CUDA tensors, gloo CPU ones), returned on the CPU."""
    import torch.distributed as dist

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        on_device = tensor.to(device, copy=True)
        dist.all_reduce(on_device)
        return on_device.cpu()

    return reduce


def quick_eval(nets_ema: Networks, cfg: ExperimentConfig, device: torch.device | str, *,
               rank: int = 0, world: int = 1) -> dict[str, float]:
    """{"fid_quick": value} of nets_ema, the same on every rank (empty where the evaluator is
    unavailable). Every rank must call this at the same steps."""
    try:
        from ..metrics.evaluator import fid_quick
    except ImportError:
        return {}
    sharded = world > 1
    # keep_networks=False: the Inception network and its buffers would otherwise stay in every
    # training worker (and its GPU) until the next evaluation (benchmarks/soak.py)
    value = fid_quick(nets_ema, cfg, device=device, shard=(rank, world) if sharded else None,
                      reduce=sum_over_ranks(device) if sharded else None, keep_networks=False)
    return {"fid_quick": value}
