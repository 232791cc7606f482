"""Evaluation speed: our sharded evaluator against a straightforward run of the official protocol.

    python benchmarks/eval.py [--workers 2] [--domains 2] [--train 40] [--val 4] [--outs 10]

Both sides evaluate the same seeded toy generator on the same embedded-dataset folders, in latent
and reference mode, with the same feature weights (fixture files under torchvision's names in a
temporary TORCH_HOME: the pretrained ones cannot be downloaded here) and the same seeded latent
codes and references, so their numbers agree. The baseline does what the official metrics/eval.py
does, in one process: every generated image is written as PNG and read back, LPIPS rebuilds its
network for each batch and runs AlexNet on both images of every pair, and each task rebuilds
Inception and recomputes the real statistics of its target domain. Ours: Ray workers, in-memory
quantisation, features once per output, real statistics once per domain (cold cache) and from the
cache on a second evaluation (as during training). Prints the times, where the time goes and the
ratios, measured in this one run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stargan_ray.config import load_experiment  # noqa: E402
from stargan_ray.data.synthetic import generate  # noqa: E402
from stargan_ray.metrics import evaluator  # noqa: E402
from stargan_ray.metrics import fid as fidlib  # noqa: E402
from stargan_ray.metrics import lpips as lpipslib  # noqa: E402
from stargan_ray.metrics.weights import FeatureWeights, file_name  # noqa: E402
from stargan_ray.models import build_networks, ema_copy, he_init  # noqa: E402


class Clock:
    """Accumulates wall time per label."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def add(self, label: str, start: float) -> None:
        self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - start


@torch.no_grad()
def official_protocol(nets, cfg, data: evaluator.EvalData, work: Path, weights: FeatureWeights,
                      clock: Clock) -> dict[str, float]:
    """The official metrics/eval.py steps in one process, with our seeded choices."""
    tasks = evaluator.make_tasks(data.domains)
    job = evaluator.Job(cfg, data, tuple(tasks), cfg.eval.num_outs_per_domain, cfg.train.seed)
    loader = evaluator.EvalWorker(job, nets, None, None, "cpu")  # only its image loading / seeds
    results: dict[str, float] = {}
    for mode in evaluator.MODES:
        for t, task in enumerate(tasks):
            fake_dir = work / mode / task.name
            shutil.rmtree(fake_dir, ignore_errors=True)
            fake_dir.mkdir(parents=True)
            batch_values = []
            sources = range(len(data.val[task.src]))
            for b, batch in enumerate(evaluator.chunks(sources, cfg.data.val_batch_size)):
                start = time.perf_counter()
                x_src = loader.images(data.val[task.src][i] for i in batch)
                y_trg = torch.full((len(batch),), task.trg, dtype=torch.long)
                group = []
                for out in range(job.num_outs):
                    draws = [loader.style_draw(mode, task, i, out) for i in batch]
                    if mode == "latent":
                        s_trg = nets.mapping_network(torch.stack([z for z, _ in draws]), y_trg)
                    else:
                        x_ref = loader.images(data.val[task.trg][r] for _, r in draws)
                        s_trg = nets.style_encoder(x_ref, y_trg)
                    x_fake = nets.generator(x_src, s_trg)
                    group.append(x_fake)
                    for k, i in enumerate(batch):  # PNG files, as utils.save_image
                        save_image(((x_fake[k] + 1) / 2).clamp_(0, 1),
                                   fake_dir / f"{i:04d}_{out + 1:02d}.png", nrow=1, padding=0)
                clock.add("generate + PNG write", start)
                start = time.perf_counter()
                lpips_net = lpipslib.build_lpips(weights)  # rebuilt per call, as officially
                pairs = [lpips_net(group[i], group[j]).mean()
                         for i, j in itertools.combinations(range(len(group)), 2)]
                batch_values.append(torch.stack(pairs).mean().item())
                clock.add("LPIPS", start)
            results[f"LPIPS_{mode}/{task.name}"] = float(np.mean(batch_values))
        for task in tasks:
            start = time.perf_counter()
            inception = fidlib.build_inception(weights)  # rebuilt per task, as officially
            stats = []
            for files in (data.train[task.trg], fidlib.list_images(work / mode / task.name)):
                feats = []
                for i in range(0, len(files), cfg.data.val_batch_size):
                    x = torch.stack([fidlib.load_for_inception(f, cfg.model.img_size)
                                     for f in files[i:i + cfg.data.val_batch_size]])
                    feats.append(inception(x))
                feats = torch.cat(feats).numpy()
                stats.append((feats.mean(0), np.cov(feats, rowvar=False)))
            clock.add("Inception (real recomputed per task, PNG read)", start)
            start = time.perf_counter()
            value = fidlib.frechet_distance(*stats[0], *stats[1]).value
            clock.add("Frechet distance (sqrtm)", start)
            results[f"FID_{mode}/{task.name}"] = value
    return results


def write_fixture_weights(torch_home: Path, seed: int = 0) -> None:
    from torchvision.models import alexnet

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(fidlib.random_inception3(seed).state_dict(), checkpoints / file_name("inception"))
    torch.manual_seed(seed)
    torch.save(alexnet(weights=None).state_dict(), checkpoints / file_name("alexnet"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray workers for ours")
    parser.add_argument("--domains", type=int, default=2)
    parser.add_argument("--train", type=int, default=40, help="train images per domain (real set)")
    parser.add_argument("--val", type=int, default=4, help="val images per domain (sources)")
    parser.add_argument("--outs", type=int, default=10, help="outputs per source")
    parser.add_argument("--cpus", type=int, default=None, help="ray.init num_cpus (default: all)")
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        tmp = Path(tmp)
        os.environ["TORCH_HOME"] = str(tmp / "torch_home")
        write_fixture_weights(tmp / "torch_home")
        train, val = generate(tmp / "data", img_size=32, num_domains=args.domains,
                              n_train=args.train, n_val=args.val)
        cfg = load_experiment("toy", [
            ("model.num_domains", args.domains), ("data.train_dir", str(train)),
            ("data.val_dir", str(val)), ("eval.num_outs_per_domain", args.outs),
            ("eval.feature_weights", "pretrained"), ("data.val_batch_size", min(8, args.val))])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            nets = build_networks(cfg.model)
            for _, module in nets.items():
                module.apply(he_init)
        nets = ema_copy(nets)
        weights = FeatureWeights.from_config(cfg.eval, download=False)
        data = evaluator.EvalData.discover(train, val, args.domains)
        print(f"toy generator, {args.domains} domains, {args.train} train / {args.val} val images "
              f"per domain, {args.outs} outputs, both modes, torch threads "
              f"{torch.get_num_threads()}, {os.cpu_count()} CPUs")

        clock = Clock()
        start = time.perf_counter()
        baseline = official_protocol(nets, cfg, data, tmp / "png", weights, clock)
        t_base = time.perf_counter() - start

        ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False)
        try:
            runs = []
            for _ in range(2):  # cold cache, then warm (as the next evaluation during training)
                start = time.perf_counter()
                ours = evaluator.evaluate(nets, cfg, step=0, mode="both", out_dir=tmp / "ours",
                                          num_workers=args.workers, cache_dir=tmp / "cache",
                                          progress=False)
                runs.append(time.perf_counter() - start)
        finally:
            ray.shutdown()

    worst = max(abs(ours[k] - v) / abs(v) for k, v in baseline.items())
    print(f"baseline (official protocol, 1 process): {t_base:.1f} s")
    for label, seconds in clock.times.items():
        print(f"  {label}: {seconds:.1f} s")
    print(f"ours ({args.workers} Ray workers): cold cache {runs[0]:.1f} s, warm cache "
          f"{runs[1]:.1f} s")
    print(f"largest relative difference of the {len(baseline)} values: {worst:.2e}")
    for key in sorted(baseline):
        print(f"  {key}: baseline {baseline[key]:.6f} ours {ours[key]:.6f}")
    print(f"speed-up: {t_base / runs[0]:.2f}x (cold cache), {t_base / runs[1]:.2f}x (warm cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
