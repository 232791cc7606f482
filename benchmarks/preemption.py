"""What asking for preemption notices costs the training loop.

`ray.train.get_preemption_info()` is a barrier across the workers (rank 0's answer is broadcast),
so train.preemption_check_every trades its cost against how soon a notice is seen (Ray's watcher
itself polls the cluster every 5 s). This runs a Ray Train group of N CPU workers that time K
calls in a row, beside the time of one toy training step in the same worker, and prints both.

    python benchmarks/preemption.py --workers 2 --calls 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import common  # noqa: F401  (puts the repository first on sys.path)


def _worker(config: dict) -> None:
    import ray.train
    import torch

    from stargan_ray.config import load_experiment
    from stargan_ray.engine import Batch, TrainState, train_step

    torch.set_num_threads(1)
    calls = config["calls"]
    ray.train.get_preemption_info()  # the first call sets up the collective
    start = time.perf_counter()
    for _ in range(calls):
        ray.train.get_preemption_info()
    per_call = (time.perf_counter() - start) / calls
    cfg = load_experiment("toy", ["data.batch_size=4"])
    state = TrainState.create(cfg, "cpu")
    size, n = cfg.model.img_size, 4
    x, y = torch.rand(n, 3, size, size) * 2 - 1, torch.zeros(n, dtype=torch.long)
    z = torch.randn(n, cfg.model.latent_dim)
    batch = Batch(x_src=x, y_src=y, x_ref=x, x_ref2=x, y_ref=y + 1, z_trg=z, z_trg2=z)
    train_step(state, batch)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        train_step(state, batch)
    step = (time.perf_counter() - start) / 3
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            json.dump({"per_call_ms": per_call * 1e3, "toy_step_ms": step * 1e3}, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=max(2, args.workers), configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(common.ROOT)}})
    out = tempfile.mktemp(suffix=".json")
    TorchTrainer(_worker, train_loop_config={"calls": args.calls, "out": out},
                 scaling_config=ray.train.ScalingConfig(
                     num_workers=args.workers, resources_per_worker={"CPU": 1})).fit()
    with open(out) as f:
        result = json.load(f)
    ray.shutdown()
    ratio = result["per_call_ms"] / result["toy_step_ms"]
    print(f"{args.workers} workers: get_preemption_info {result['per_call_ms']:.2f} ms a call, "
          f"a toy step {result['toy_step_ms']:.1f} ms ({ratio:.1%} of a step; at "
          f"train.preemption_check_every=10: {ratio / 10:.2%})")


if __name__ == "__main__":
    main()
