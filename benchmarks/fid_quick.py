"""Time per fid_quick evaluation split over N processes (a gloo group on loopback), against one.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/fid_quick.py [--shards 1,2] [--evals 3] \
        [--rounds 2] [--train 40] [--threads 1] [--set data.val_batch_size=4 ...]

Each process stands for one Ray Train worker (one intra-op thread, as threads_per_worker's
default) and calls fid_quick exactly as train.quick_eval does: shard=(rank, world) and
quick_eval.sum_over_ranks as the reduce. Per world size, one group of processes: the first
evaluation is cold (empty real-statistics cache: the train images are sharded too), the next
--evals are warm (the steady state of a training run). Rank 0 times each evaluation from a barrier
before it to its return. The world sizes run one after the other, --rounds times, interleaved;
figures are medians. Prints the times, the speed-ups over one process and each world's FID against
the one-process value. Toy experiment, seeded untrained generator, random feature weights,
an embedded-style dataset drawn with --train images per domain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import free_port
from stargan_ray.config import load_experiment
from stargan_ray.data.synthetic import generate
from stargan_ray.metrics import evaluator
from stargan_ray.metrics import fid as fidlib
from stargan_ray.metrics.weights import FeatureWeights
from stargan_ray.models import build_networks, ema_copy, he_init


def experiment(args: argparse.Namespace, data: Path):
    overrides = [("data.train_dir", str(data / "train")), ("data.val_dir", str(data / "val")),
                 ("eval.feature_weights", "random")]
    overrides += [tuple(item.split("=", 1)) for item in args.set]
    cfg = load_experiment(args.experiment, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = build_networks(cfg.model)
        for _, module in nets.items():
            module.apply(he_init)
    return cfg, ema_copy(nets)


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, data: str,
              out: str) -> None:
    """One worker: cold evaluation, then --evals warm ones; rank 0 writes the times."""
    import torch.distributed as dist

    from stargan_ray.train.quick_eval import sum_over_ranks

    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    cfg, nets = experiment(args, Path(data))
    fidlib.cached_inception(FeatureWeights.from_config(cfg.eval, need=("inception",)), "cpu")
    shard = dict(shard=(rank, world), reduce=sum_over_ranks("cpu")) if world > 1 else {}

    def timed() -> tuple[float, float]:
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        value = evaluator.fid_quick(nets, cfg, cache_dir=Path(out) / "cache", **shard)
        return time.perf_counter() - start, value

    cold, value = timed()
    warm = [timed()[0] for _ in range(args.evals)]
    if rank == 0:
        Path(out, "times.json").write_text(json.dumps({"cold": cold, "warm": warm,
                                                       "value": value}))
    if world > 1:
        dist.destroy_process_group()


def run_world(world: int, args: argparse.Namespace, data: Path, work: Path) -> dict:
    import torch.multiprocessing as mp

    out = Path(tempfile.mkdtemp(prefix=f"w{world}_", dir=work))
    mp.spawn(rank_main, args=(world, free_port(), args, str(data), str(out)), nprocs=world,
             join=True)
    return json.loads((out / "times.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="toy")
    parser.add_argument("--shards", default="1,2", help="world sizes, e.g. 1,2,4")
    parser.add_argument("--evals", type=int, default=3, help="warm evaluations per world size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train", type=int, default=40, help="train images per domain")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    worlds = [int(w) for w in args.shards.split(",")]
    with tempfile.TemporaryDirectory(prefix="fid_quick_bench_") as tmp:
        work = Path(tmp)
        os.environ["STARGAN_RAY_CACHE"] = str(work / "sr")
        cfg, _ = experiment(args, work / "data")
        generate(work / "data", img_size=cfg.model.img_size, num_domains=cfg.model.num_domains,
                 n_train=args.train, n_val=max(cfg.eval.quick_sources, 2))
        runs: dict[int, list[dict]] = {w: [] for w in worlds}
        for _ in range(args.rounds):
            for world in worlds:
                runs[world].append(run_world(world, args, work / "data", work))
    report(cfg, args, worlds, runs)


def report(cfg, args: argparse.Namespace, worlds: list[int], runs: dict[int, list[dict]]) -> None:
    tasks = cfg.model.num_domains * (cfg.model.num_domains - 1)
    sources = cfg.eval.quick_sources  # main() draws this many val images per domain
    items = tasks * -(-sources // cfg.data.val_batch_size)
    print(f"{args.experiment}: {tasks} tasks x {sources} sources x {cfg.eval.quick_outs} outputs "
          f"({items} fake items of data.val_batch_size={cfg.data.val_batch_size}), "
          f"{args.train} train images per domain; {args.threads} thread(s) per process, "
          f"{os.cpu_count()} CPUs; medians of {args.rounds} rounds")
    cold = {w: statistics.median(r["cold"] for r in runs[w]) for w in worlds}
    warm = {w: statistics.median(t for r in runs[w] for t in r["warm"]) for w in worlds}
    base = worlds[0]
    value = runs[base][0]["value"]
    print(f"{'shards':>6} {'cold s':>8} {'warm s/eval':>12} {'warm speed-up':>14} "
          f"{'cold speed-up':>14} {'FID':>12} {'max |dFID| vs ' + str(base):>16}")
    for w in worlds:
        diff = max(abs(r["value"] - value) for r in runs[w])
        print(f"{w:>6} {cold[w]:>8.2f} {warm[w]:>12.2f} {warm[base] / warm[w]:>14.2f} "
              f"{cold[base] / cold[w]:>14.2f} {runs[w][0]['value']:>12.6f} {diff:>16.3g}")


if __name__ == "__main__":
    main()
