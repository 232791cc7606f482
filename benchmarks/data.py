"""Input pipeline throughput: Ray Data from folders and from shards vs a torch DataLoader.

    python benchmarks/data.py [--cpus 2] [--img-size 256] [--src-size 512] [--per-domain 200]

Draws a synthetic JPEG tree (--src-size px, like AFHQ's 512 px originals), packs it with
``prepare --img-size <img-size>``, then measures training images per second (three per row:
x_src, x_ref, x_ref2, decoded and augmented, delivered as tensors to this process) for

- the Ray pipeline on a local Ray instance with --cpus CPUs, from the folder tree and from shards;
- a torch DataLoader with the official transforms and balanced sampler (a source loader plus a
  reference loader returning two images of one domain, as the official code pairs them), with
  --cpus worker processes on the same images.

Prints the rates, the ratios, and the CPU cores per GPU that the Ray pipeline needs to feed a
GPU at 350 images/s (256 px, batch 8 at ~15 it/s). The goal: Ray from folders >= DataLoader,
shards > folders. One run on a busy 2-core machine is noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: F401  (the repository first on sys.path)

from stargan_ray.config import load_experiment
from stargan_ray.data import prepare as prep
from stargan_ray.data.synthetic import domain_names, draw_image

GPU_IMAGES_PER_S = 350


def make_tree(root: Path, domains: int, per_domain: int, src_size: int) -> Path:
    for d, name in enumerate(domain_names(domains)):
        (root / name).mkdir(parents=True)
        for i in range(per_domain):
            image = draw_image(name, src_size, np.random.default_rng([9, d, i]))
            image.save(root / name / f"{i:05d}.jpg", quality=95)
    return root


def rate(batches, n_rows: int, warmup_rows: int) -> float:
    """Images/s over n_rows rows after warmup_rows (three images per row)."""
    seen, start = 0, None
    for batch in batches:
        seen += len(batch["y_src"])
        if start is None and seen >= warmup_rows:
            start, seen = time.perf_counter(), 0
        elif start is not None and seen >= n_rows:
            return 3 * seen / (time.perf_counter() - start)
    raise RuntimeError("ran out of batches")


def ray_rate(cfg, rows: int, warmup: int) -> float:
    from stargan_ray.data.pipeline import prepare_train_data, worker_raw_batches

    it = worker_raw_batches(prepare_train_data(cfg), cfg, world_rank=0, world_size=1,
                            start_step=0, prefetch_batches=4)
    try:
        return rate(it, rows, warmup)
    finally:
        it.close()


# ---------------------------------------------------------------- the DataLoader baseline


class _RefPairs(torch.utils.data.Dataset):
    """(image, another image of its domain, domain): the official reference dataset's items."""

    def __init__(self, folder, transform):
        self.samples, self.targets, self.transform = folder.samples, folder.targets, transform
        by_domain: dict[int, list[str]] = {}
        for path, label in self.samples:
            by_domain.setdefault(label, []).append(path)
        rng = random.Random(0)
        self.second = [rng.choice(by_domain[label]) for _, label in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.samples[i]
        load = lambda p: self.transform(Image.open(p).convert("RGB"))  # noqa: E731
        return load(path), load(self.second[i]), label


def dataloader_rate(root: Path, img_size: int, batch: int, workers: int, rows: int,
                    warmup: int) -> float:
    from torchvision import datasets, transforms

    crop = transforms.RandomResizedCrop(img_size, scale=(0.8, 1.0), ratio=(0.9, 1.1))
    transform = transforms.Compose([
        transforms.Lambda(lambda x: crop(x) if random.random() < 0.5 else x),
        transforms.Resize([img_size, img_size]),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
    ])
    source = datasets.ImageFolder(str(root), transform)
    reference = _RefPairs(source, transform)

    def loader(ds):
        counts = np.bincount(ds.targets)
        weights = (1.0 / counts)[ds.targets]
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(weights))
        return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True,
                                           num_workers=workers // 2 or 1, persistent_workers=True,
                                           prefetch_factor=4)

    def rows_forever():
        src, ref = loader(source), loader(reference)
        while True:
            for a, b in zip(src, ref):
                yield {"y_src": a[1], "pair": b}

    return rate(rows_forever(), rows, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--src-size", type=int, default=512)
    parser.add_argument("--domains", type=int, default=2)
    parser.add_argument("--per-domain", type=int, default=200)
    parser.add_argument("--rows", type=int, default=600, help="rows timed per measurement")
    parser.add_argument("--warmup", type=int, default=120)
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="stargan_data_bench_"))
    t = time.perf_counter()
    tree = make_tree(work / "train", args.domains, args.per_domain, args.src_size)
    prep.prepare(str(tree), str(work / "shards"), img_size=args.img_size)
    print(f"data: {args.domains} x {args.per_domain} JPEGs at {args.src_size} px, shards at"
          f" {args.img_size} px (prepared in {time.perf_counter() - t:.1f} s)")
    steps = (args.rows + args.warmup) // 8 + 50  # the planned epochs cover the measurement
    overrides = [("model.img_size", args.img_size), ("model.num_domains", args.domains),
                 ("data.batch_size", 8), ("train.total_iters", steps), ("data.val_dir", str(tree))]
    cfg_folders = load_experiment("toy", overrides + [("data.train_dir", str(tree))])
    cfg_shards = load_experiment("toy", overrides + [("data.train_dir", str(work / "shards"))])

    results = {}
    results["dataloader"] = dataloader_rate(tree, args.img_size, 8, args.cpus, args.rows,
                                            args.warmup)
    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        results["ray_folders"] = ray_rate(cfg_folders, args.rows, args.warmup)
        results["ray_shards"] = ray_rate(cfg_shards, args.rows, args.warmup)
    finally:
        ray.shutdown()

    print(f"{'pipeline':<14}{'images/s':>10}   ({args.cpus} CPUs, {args.img_size} px)")
    for name, value in results.items():
        print(f"{name:<14}{value:>10.1f}")
    print(f"ray_folders / dataloader = {results['ray_folders'] / results['dataloader']:.2f}")
    print(f"ray_shards / ray_folders = {results['ray_shards'] / results['ray_folders']:.2f}")
    print(f"ray_shards / dataloader  = {results['ray_shards'] / results['dataloader']:.2f}")
    for name in ("ray_folders", "ray_shards"):
        per_core = results[name] / args.cpus
        print(f"cores per GPU at {GPU_IMAGES_PER_S} images/s ({name}):"
              f" {GPU_IMAGES_PER_S / per_core:.1f}")


if __name__ == "__main__":
    main()
