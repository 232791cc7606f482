"""What a checkpoint save costs the training loop, with train.checkpoint_upload sync and async.

One Ray Train worker builds the complete CelebA-HQ state (nets, nets_ema, Adam moments after one
optimiser step: about 1.3 GB) and saves it through the loop's own save_report into a run folder on
local storage, alternating sync and async (sync, async, async, sync, ...). For each save it times
how long the loop waited (save_report's return) and, for async, when the upload had finished.
The figure is the ratio of the loop's waits, async over sync, medians of the repeats.

    python benchmarks/checkpoint_upload.py --repeats 2 --storage /tmp/ckpt-bench
    python benchmarks/checkpoint_upload.py --smoke --storage /tmp/x   # the toy model (tests)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import common  # noqa: F401  (puts the repository first on sys.path)

SMOKE = ["model.img_size=32", "model.dim_in=8", "model.max_conv_dim=16", "model.w_hpf=0.0"]


def build_state(experiment: str, overrides: list[str]):
    """The experiment's TrainState on the CPU with Adam moments (one step on random gradients)."""
    import torch

    from stargan_ray.config import load_experiment
    from stargan_ray.engine import TrainState
    from stargan_ray.models.fan import FAN

    cfg = load_experiment(experiment, overrides)
    fan = FAN() if cfg.model.w_hpf > 0 else None  # frozen, not in the checkpoint
    state = TrainState.create(cfg, "cpu", fan=fan)
    for _, module in state.nets.items():
        for p in module.parameters():
            p.grad = torch.randn_like(p)
    for opt in state.optims.values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    return state


def _worker(config: dict) -> None:
    import ray.train

    from stargan_ray.train import upload
    from stargan_ray.train.saving import save_report

    state = build_state(config["experiment"], config["overrides"])
    run_dir = config["run_dir"]
    rows = []
    for i, mode in enumerate(config["modes"]):
        state.cfg = replace(state.cfg, train=replace(state.cfg.train, checkpoint_upload=mode))
        state.step = i + 1
        start = time.perf_counter()
        assert save_report(state, {"step": state.step}, 0, 1, run_dir) is None
        loop_s = time.perf_counter() - start
        upload.wait_for_upload()  # until the copy is in storage
        rows.append({"mode": mode, "loop_s": loop_s, "stored_s": time.perf_counter() - start})
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            json.dump(rows, f)


def measure(experiment: str, overrides: list[str], repeats: int, storage: str) -> dict:
    """Run the worker in the caller's Ray (tests) or a new one; the saves' figures."""
    import ray
    import ray.train
    from ray import cloudpickle
    from ray.train.torch import TorchTrainer

    if __name__ != "__main__":  # imported (tests): the workers cannot import this script
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    modes = [m for i in range(repeats) for m in (("sync", "async") if i % 2 == 0
                                                  else ("async", "sync"))]
    out = tempfile.mktemp(suffix=".json")
    name = f"upload-{int(time.time())}"
    TorchTrainer(_worker, train_loop_config={
        "experiment": experiment, "overrides": overrides, "modes": modes, "out": out,
        "run_dir": str(Path(storage, name))},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1))).fit()
    rows = json.loads(Path(out).read_text())
    size = next(Path(storage, name).glob("checkpoint_*/checkpoint.pt")).stat().st_size
    shutil.rmtree(Path(storage, name), ignore_errors=True)
    loop = {m: statistics.median(r["loop_s"] for r in rows if r["mode"] == m)
            for m in ("sync", "async")}
    return {"experiment": experiment, "checkpoint_bytes": size, "saves": rows,
            "loop_s": loop, "ratio_async_over_sync": loop["async"] / loop["sync"],
            "async_stored_s": statistics.median(r["stored_s"] for r in rows
                                                if r["mode"] == "async")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="celeba_hq")
    p.add_argument("--repeats", type=int, default=2, help="saves per mode")
    p.add_argument("--storage", required=True, help="a local folder for the run (emptied)")
    p.add_argument("--smoke", action="store_true", help="tiny networks (tests)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    import ray

    started = not ray.is_initialized()  # a caller's instance (tests) is left running
    if started:
        ray.init(num_cpus=2, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(common.ROOT)}})
    try:
        result = measure(args.experiment, SMOKE if args.smoke else [], args.repeats,
                         str(Path(args.storage).resolve()))
    finally:
        if started:
            ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    loop = result["loop_s"]
    print(f"{args.experiment}: checkpoint {result['checkpoint_bytes'] / 2**30:.2f} GiB; the loop "
          f"waited {loop['sync']:.2f} s (sync) and {loop['async']:.2f} s (async): ratio "
          f"{result['ratio_async_over_sync']:.3f}; async copy in storage after "
          f"{result['async_stored_s']:.2f} s (medians of {args.repeats} saves per mode)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
