"""Evaluation speed (issue 16 item 2): `stargan-ray eval` with default flags against the official.

`stargan-ray eval` with its default flags against a faithful re-run of the official protocol, and
a projection of the full CelebA-HQ evaluation.

    python benchmarks/eval.py                        # the issue's small AFHQ case, latent mode
    python benchmarks/eval.py --mode both --workers 2 --train 135
    python benchmarks/eval.py --skip-case            # only the CelebA-HQ projection

The case: the afhq experiment at 64 px with narrow networks (model.dim_in 16, model.max_conv_dim
64: the toy experiment's widths), 3 domains (6 tasks) of the embedded dataset, --val sources per
domain, eval.num_outs_per_domain 10, data.val_batch_size 32 (the official default; all sources of
a task are one batch), seeded He-initialised weights saved as a checkpoint. Feature weights: seeded
random Inception / AlexNet written under torchvision's file names in a temporary TORCH_HOME (the
pretrained ones cannot be downloaded here), so the FIDs are large numbers, identical on both sides.

Official side: what clovaai/stargan-v2 metrics/eval.py calculate_metrics does, in this process:
every output written as PNG and read back, LPIPS rebuilt per batch and AlexNet run on both images
of all 45 pairs, Inception rebuilt and the target's train images recomputed for every task, and
scipy's sqrtm for the Frechet trace (frechet_method "sqrtm", the official code path). It takes the
same seeded latent codes / references as ours (EvalWorker.style_draw), so the numbers are those of
the same draws. Ours: the `stargan-ray eval` command itself (its parser, its run()), with the
default --num-workers auto (one worker per GPU when several, else in this process), the default
frechet_method (auto) and folded Inception (eval.inception_folded: batch norms folded into the
convolutions, channels-last), a cold and then a warm real-statistics cache. --workers N passes
--num-workers N instead.

The projection counts the images of each stage in a full CelebA-HQ evaluation (both modes, as the
official `--mode eval` runs), measures each stage's cost per image on this CPU with the celeba_hq
networks at 256 px, and gives the GPU time only as FLOPs / an ASSUMED achieved rate (nothing is
measured on a GPU here).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision.utils import save_image

import common  # noqa: F401  (the repository first on sys.path)
from stargan_ray.checkpoint import load_ema_networks, save_checkpoint
from stargan_ray.config import load_experiment
from stargan_ray.data.synthetic import generate
from stargan_ray.engine import TrainState
from stargan_ray.metrics import evaluator
from stargan_ray.metrics import fid as fidlib
from stargan_ray.metrics import frechet
from stargan_ray.metrics import lpips as lpipslib
from stargan_ray.metrics.weights import FeatureWeights, file_name

NARROW = [("model.dim_in", 16), ("model.max_conv_dim", 64)]  # the toy widths
TOLERANCE = 1e-5  # FID and LPIPS, relative, same draws
# Full CelebA-HQ (the official download's split, as mirrored on the Hugging Face hub as
# mattymchen/celeba-hq): 28,000 train and 2,000 val images in all; 2 domains, 2 tasks, 10 outputs
# per source. The counts of every stage depend only on these totals.
CELEBA_TRAIN, CELEBA_VAL, CELEBA_OUTS = 28_000, 2_000, 10
OFFICIAL_MINUTES = 49 + 51 / 60  # the official README's elapsed time for celeba-hq (both modes)


class Clock:
    """Accumulates wall time per label."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def add(self, label: str, start: float) -> None:
        self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - start


@torch.no_grad()
def official_protocol(nets, cfg, data: evaluator.EvalData, modes: tuple[str, ...], work: Path,
                      weights: FeatureWeights, clock: Clock) -> dict[str, float]:
    """The official metrics/eval.py steps in one process, with our seeded draws."""
    tasks = evaluator.make_tasks(data.domains)
    job = evaluator.Job(cfg, data, tuple(tasks), cfg.eval.num_outs_per_domain, cfg.train.seed)
    loader = evaluator.EvalWorker(job, nets, None, None, "cpu")  # only its image loading / seeds
    batch_size = cfg.data.val_batch_size  # the official FID loader's batch too
    results: dict[str, float] = {}
    for mode in modes:
        for task in tasks:
            fake_dir = work / mode / task.name
            shutil.rmtree(fake_dir, ignore_errors=True)
            fake_dir.mkdir(parents=True)
            batch_values = []
            for batch in evaluator.chunks(range(len(data.val[task.src])), batch_size):
                start = time.perf_counter()
                x_src = loader.images(data.val[task.src][i] for i in batch)
                y_trg = torch.full((len(batch),), task.trg, dtype=torch.long)
                masks = nets.masks(x_src) if cfg.model.w_hpf > 0 else None
                group = []
                for out in range(job.num_outs):
                    draws = [loader.style_draw(mode, task, i, out) for i in batch]
                    if mode == "latent":
                        s_trg = nets.mapping_network(torch.stack([z for z, _ in draws]), y_trg)
                    else:
                        x_ref = loader.images(data.val[task.trg][r] for _, r in draws)
                        s_trg = nets.style_encoder(x_ref, y_trg)
                    x_fake = nets.generator(x_src, s_trg, masks=masks)
                    group.append(x_fake)
                    for k, i in enumerate(batch):  # PNG files, as utils.save_image
                        save_image(((x_fake[k] + 1) / 2).clamp_(0, 1),
                                   fake_dir / f"{i:04d}_{out + 1:02d}.png", nrow=1, padding=0)
                clock.add("generate + PNG write", start)
                start = time.perf_counter()
                lpips_net = lpipslib.build_lpips(weights)  # rebuilt per batch, as officially
                pairs = [lpips_net(group[i], group[j]).mean()
                         for i, j in itertools.combinations(range(len(group)), 2)]
                batch_values.append(torch.stack(pairs).mean().item())
                clock.add("LPIPS (AlexNet on both images of every pair)", start)
            results[f"LPIPS_{mode}/{task.name}"] = float(np.mean(batch_values))
        for task in tasks:
            start = time.perf_counter()
            inception = fidlib.build_inception(weights)  # rebuilt per task, as officially
            stats = []
            for files in (data.train[task.trg], fidlib.list_images(work / mode / task.name)):
                feats = []
                for i in range(0, len(files), batch_size):
                    x = torch.stack([fidlib.load_for_inception(f, cfg.model.img_size)
                                     for f in files[i:i + batch_size]])
                    feats.append(inception(x))
                feats = torch.cat(feats).numpy()
                stats.append((feats.mean(0), np.cov(feats, rowvar=False)))
            clock.add("Inception (real recomputed per task, PNG read)", start)
            start = time.perf_counter()
            # the official code path: scipy's sqrtm of cov1 @ cov2 (never our default "auto")
            value = frechet.frechet_distance(*stats[0], *stats[1], method="sqrtm").value
            clock.add("Frechet distance (scipy sqrtm)", start)
            results[f"FID_{mode}/{task.name}"] = value
    return results


def write_fixture_weights(torch_home: Path, seed: int = 0) -> None:
    """Seeded random Inception / AlexNet under torchvision's file names (as 'pretrained')."""
    from torchvision.models import alexnet

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(fidlib.random_inception3(seed).state_dict(), checkpoints / file_name("inception"))
    torch.manual_seed(seed)
    torch.save(alexnet(weights=None).state_dict(), checkpoints / file_name("alexnet"))


def run_cli_eval(ckpt: Path, train: Path, val: Path, out: Path, mode: str,
                 workers: int | None) -> tuple[float, dict]:
    """`stargan-ray eval` as a user runs it (its own parser and run(), default flags); returns
    the wall time of run() and the values of the JSON files it wrote."""
    from stargan_ray.cli import build_parser

    argv = ["eval", "--checkpoint", str(ckpt), "--train-dir", str(train), "--val-dir", str(val),
            "--out", str(out), "--mode", mode]
    if workers is not None:
        argv += ["--num-workers", str(workers)]
    args = build_parser().parse_args(argv)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    assert args.func(args) == 0
    wall = time.perf_counter() - start
    values: dict = {}
    for path in sorted(out.glob("*.json")):
        values.update(json.loads(path.read_text()))
    return wall, values


def worst(baseline: dict[str, float], ours: dict, prefix: str) -> tuple[float, str]:
    diffs = {k: abs(ours[k] - v) / abs(v) for k, v in baseline.items() if k.startswith(prefix)}
    key = max(diffs, key=diffs.get)
    return diffs[key], key


def small_case(args: argparse.Namespace, tmp: Path) -> tuple[int, float]:
    """Official re-run and ours on the small AFHQ case; returns (exit code, seconds per sqrtm)."""
    modes = evaluator.MODES if args.mode == "both" else (args.mode,)
    train, val = generate(tmp / "data", img_size=args.img_size, num_domains=3,
                          n_train=args.train, n_val=args.val)
    cfg = load_experiment("afhq", [*NARROW, ("model.img_size", args.img_size),
                                   ("data.train_dir", str(train)), ("data.val_dir", str(val)),
                                   ("eval.feature_weights", "pretrained")])
    ckpt = save_checkpoint(TrainState.create(cfg, "cpu"), tmp / "checkpoint.pt")
    _, nets = load_ema_networks(ckpt, device="cpu")  # what the CLI loads
    weights = FeatureWeights.from_config(cfg.eval, download=False)
    data = evaluator.EvalData.discover(train, val, 3)
    m = cfg.model
    print(f"case: afhq experiment at {m.img_size} px, narrow networks (dim_in {m.dim_in}, "
          f"max_conv_dim {m.max_conv_dim}, style_dim {m.style_dim}), 3 domains / 6 tasks, "
          f"{args.train} train (real set) and {args.val} val images per domain, "
          f"{cfg.eval.num_outs_per_domain} outputs, mode {args.mode}, val_batch_size "
          f"{cfg.data.val_batch_size}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; frechet_method: ours {cfg.eval.frechet_method!r}, "
          "official 'sqrtm'")

    clock = Clock()
    start = time.perf_counter()
    baseline = official_protocol(nets, cfg, data, modes, tmp / "png", weights, clock)
    t_base = time.perf_counter() - start

    runs = [run_cli_eval(ckpt, train, val, tmp / "ours", args.mode, args.workers)
            for _ in range(2)]  # cold real-statistics cache, then warm (the next evaluation)
    ours = runs[0][1]
    elapsed = [values["elapsed_seconds"] for _, values in runs]

    print(f"\nofficial protocol (1 process): {t_base:.1f} s")
    for label, seconds in clock.times.items():
        print(f"  {label}: {seconds:.1f} s")
    sqrtm_calls = 6 * len(modes)
    per_sqrtm = clock.times["Frechet distance (scipy sqrtm)"] / sqrtm_calls
    print(f"  ({sqrtm_calls} sqrtm calls, {per_sqrtm:.1f} s each)")
    label = "--num-workers auto" if args.workers is None else f"--num-workers {args.workers}"
    print(f"ours (stargan-ray eval {label}): cold cache {runs[0][0]:.1f} s (evaluate "
          f"{elapsed[0]:.1f} s), warm cache {runs[1][0]:.1f} s (evaluate {elapsed[1]:.1f} s)")
    for key in sorted(baseline):
        print(f"  {key}: official {baseline[key]:.6f} ours {ours[key]:.6f}")
    kids = {k: v for k, v in ours.items() if k.startswith("KID_") and "std" not in k}
    print("  KID (ours only): " + ", ".join(f"{k} {v:.6g}" if v is not None else f"{k} null"
                                             for k, v in sorted(kids.items())))
    fid_err, fid_key = worst(baseline, ours, "FID_")
    lpips_err, lpips_key = worst(baseline, ours, "LPIPS_")
    print(f"largest relative difference: FID {fid_err:.2e} ({fid_key}), LPIPS {lpips_err:.2e} "
          f"({lpips_key}); bar {TOLERANCE:g}")
    split_of_ours(clock, data, cfg, modes, runs[0][0], t_base, weights)
    speedup = t_base / runs[0][0]
    print(f"speed-up: {speedup:.2f}x cold cache, {t_base / runs[1][0]:.2f}x warm cache "
          f"(whole run() of the command; bar 3x cold)")
    code = 0
    if max(fid_err, lpips_err) > TOLERANCE:
        print(f"FAIL: values differ by more than {TOLERANCE:g} relative")
        code = 1
    if speedup < 3:
        print("FAIL: less than 3x faster than the official protocol")
        code = 1
    return code, per_sqrtm


def folded_speedup(weights: FeatureWeights, batch: int, img_size: int) -> float:
    """How much faster ours' folded Inception (eval.inception_folded) runs than torchvision's
    modules here: best of 2 on one batch of quantised images, after a warm-up."""
    images = fidlib.quantize(torch.rand(batch, 3, img_size, img_size) * 2 - 1)
    x = fidlib.uint8_to_inception(images, img_size)
    seconds = [per_image(lambda: net(x), batch, 2) for net in
               (fidlib.build_inception(weights), fidlib.build_inception(weights, folded=True))]
    return seconds[0] / seconds[1]


def split_of_ours(clock: Clock, data: evaluator.EvalData, cfg, modes: tuple[str, ...],
                  t_ours: float, t_base: float, weights: FeatureWeights) -> None:
    """Where ours' cold-cache time goes, estimated from the official side's per-image rates
    (same images and process) and the measured speed-up of the folded Inception: the Inception
    pass over every output and each real image once is work the protocol requires of both sides."""
    tasks = evaluator.make_tasks(data.domains)
    outs = cfg.eval.num_outs_per_domain
    fakes = len(modes) * sum(len(data.val[t.src]) for t in tasks) * outs
    real_official = len(modes) * sum(len(data.train[t.trg]) for t in tasks)
    real_ours = sum(len(files) for files in data.train)
    per_inception = (clock.times["Inception (real recomputed per task, PNG read)"]
                     / (fakes + real_official))
    pairs = outs * (outs - 1) // 2
    # official LPIPS runs AlexNet 2 x pairs times per source, ours once per output
    lpips_ours = clock.times["LPIPS (AlexNet on both images of every pair)"] * outs / (2 * pairs)
    folded = folded_speedup(weights, cfg.eval.batch_size, cfg.model.img_size)
    inception_plain = per_inception * (fakes + real_ours)
    inception_ours = inception_plain / folded
    print(f"ours, estimated split at the official side's per-image rates: Inception over "
          f"{fakes} outputs + {real_ours} real images {inception_ours:.1f} s (folded batch norms "
          f"and channels-last measured {folded:.2f}x faster here than torchvision's modules, "
          f"which would take {inception_plain:.1f} s), LPIPS (AlexNet once per output) "
          f"{lpips_ours:.1f} s, generation and everything else "
          f"{t_ours - inception_ours - lpips_ours:.1f} s (the official side: "
          f"{clock.times['generate + PNG write']:.1f} s generating and writing PNGs); the "
          f"Inception pass with torchvision's modules alone would cap the speed-up at "
          f"{t_base / inception_plain:.2f}x here")


def per_image(fn: Callable[[], object], images: int, repeats: int) -> float:
    """Seconds per image of fn (which handles `images` images): best of repeats, after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / images


@torch.no_grad()
def celeba_costs(tmp: Path, batch: int, repeats: int) -> dict[str, float]:
    """CPU seconds per image of each stage, celeba_hq networks (random weights) at 256 px."""
    from torchvision.models import alexnet

    from stargan_ray.models import build_networks
    from stargan_ray.models.fan import FAN

    cfg = load_experiment("celeba_hq")
    size = cfg.model.img_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = build_networks(cfg.model, fan=FAN().eval())
        inception = fidlib.InceptionFeatures(fidlib.random_inception3(0)).eval()
        folded = fidlib.fold_batchnorm(copy.deepcopy(inception))  # ours (eval.inception_folded)
        lpips_net = lpipslib.LPIPSNet(alexnet(weights=None).features).eval()
    for _, module in nets.items(include_fan=True):
        module.eval()
    x = torch.rand(batch, 3, size, size) * 2 - 1
    y = torch.zeros(batch, dtype=torch.long)
    s = nets.mapping_network(torch.randn(batch, cfg.model.latent_dim), y)
    masks = nets.masks(x)
    images = fidlib.quantize(x)
    png = tmp / "cost"
    png.mkdir(exist_ok=True)

    def write() -> None:
        for k in range(batch):
            save_image((x[k] + 1) / 2, png / f"{k}.png", nrow=1, padding=0)

    write()
    outs = [x.roll(k, dims=3) for k in range(CELEBA_OUTS)]  # 10 outputs of `batch` sources
    costs = {
        "generator": per_image(lambda: nets.generator(x, s, masks=masks), batch, repeats),
        "style_encoder": per_image(lambda: nets.style_encoder(x, y), batch, repeats),
        "fan": per_image(lambda: nets.masks(x), batch, repeats),
        "inception": per_image(lambda: inception(fidlib.uint8_to_inception(images, size)),
                               batch, repeats),
        "inception_folded": per_image(lambda: folded(fidlib.uint8_to_inception(images, size)),
                                      batch, repeats),
        "alexnet": per_image(lambda: lpips_net.features(x), batch, repeats),
        "png_write": per_image(write, batch, repeats),
        "png_read": per_image(lambda: [fidlib.load_for_inception(png / f"{k}.png", size)
                                       for k in range(batch)], batch, repeats),
        # ours per source: AlexNet once per output, the 45 pair distances from those features
        "lpips_ours_per_source": per_image(
            lambda: lpipslib.pairwise_per_source(outs, lpips_net), batch, 1),
    }
    rng = np.random.default_rng(0)  # a full-rank pair, as full CelebA-HQ tasks have (n > 2048)
    a, b = (rng.standard_normal((2048, 2048)) / 64 for _ in range(2))
    start = time.perf_counter()
    frechet.frechet_distance(np.zeros(2048), a @ a.T, np.zeros(2048), b @ b.T, method="auto")
    costs["frechet_auto"] = time.perf_counter() - start
    return costs


def celeba_counts() -> dict[str, dict[str, float]]:
    """Images (calls for the Frechet step) per stage of a full CelebA-HQ evaluation, both modes."""
    outs = CELEBA_VAL * CELEBA_OUTS  # per mode: each domain is the source of one task
    pairs = CELEBA_OUTS * (CELEBA_OUTS - 1) // 2
    common = {"generator": 2 * outs, "style_encoder": outs, "fan": 2 * CELEBA_VAL}
    official = {**common, "inception": 2 * outs + 2 * CELEBA_TRAIN,  # real set per task & mode
                "alexnet": 2 * CELEBA_VAL * pairs * 2, "png_write": 2 * outs,
                "png_read": 2 * outs, "frechet_sqrtm": 4}
    ours = {**common, "inception_folded": 2 * outs + CELEBA_TRAIN,  # real set once (cold cache)
            "lpips_ours_per_source": 2 * CELEBA_VAL, "frechet_auto": 4}
    return {"official": official, "ours": ours}


def network_gflops() -> dict[str, float]:
    """Forward GFLOP per image (fake tensors: exact, no arithmetic) of the celeba_hq networks at
    256 px, Inception at 299 and LPIPS' AlexNet at 256; ours' LPIPS per source adds 10 AlexNets."""
    from common import count, fake_mode, load_config, network_flops
    from torchvision.models import alexnet
    from torchvision.models.inception import Inception3

    nets = network_flops(load_config("celeba_hq", [], 1))
    with fake_mode(), torch.no_grad():
        inc = fidlib.InceptionFeatures(Inception3(aux_logits=True, init_weights=False)).eval()
        alex = alexnet(weights=None).features.eval()
        inception = count(lambda: inc(torch.zeros(1, 3, 299, 299)))
        alex_flops = count(lambda: alex(torch.zeros(1, 3, 256, 256)))
    g = {"generator": nets["generator"], "style_encoder": nets["style_encoder"],
         "fan": nets["fan"], "inception": inception, "inception_folded": inception,
         "alexnet": alex_flops,
         "lpips_ours_per_source": CELEBA_OUTS * alex_flops}
    return {k: v / 1e9 for k, v in g.items()}


def projection(args: argparse.Namespace, tmp: Path, per_sqrtm: float | None) -> None:
    costs = celeba_costs(tmp, args.cost_batch, args.cost_repeats)
    if per_sqrtm is None:  # measured in the small case when it ran (2048 x 2048 sqrtm)
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((2048, 2048)) / 64 for _ in range(2))
        start = time.perf_counter()
        frechet.frechet_distance(np.zeros(2048), a @ a.T, np.zeros(2048), b @ b.T, method="sqrtm")
        per_sqrtm = time.perf_counter() - start
    costs["frechet_sqrtm"] = per_sqrtm
    gflops = network_gflops()
    counts = celeba_counts()
    print("\nfull CelebA-HQ evaluation (2 domains, 2 tasks, both modes, 28,000 train / 2,000 val, "
          "10 outputs), celeba_hq networks at 256 px")
    print(f"  {'stage':24s} {'CPU s/image':>12s} {'GFLOP/image':>12s} {'official n':>11s} "
          f"{'ours n':>9s}")
    for stage in sorted(set(counts["official"]) | set(counts["ours"])):
        g = f"{gflops[stage]:.2f}" if stage in gflops else "host"
        print(f"  {stage:24s} {costs[stage]:12.4f} {g:>12s} "
              f"{counts['official'].get(stage, 0):11,d} {counts['ours'].get(stage, 0):9,d}")
    totals = {}
    for side, count in counts.items():
        cpu = sum(n * costs[s] for s, n in count.items())
        flop = sum(n * gflops[s] for s, n in count.items() if s in gflops) * 1e9
        host = sum(n * costs[s] for s, n in count.items() if s not in gflops)
        totals[side] = (cpu, flop, host)
        print(f"  {side}: {cpu / 3600:.1f} h on this CPU (1 process, measured per-image costs x "
              f"counts); {flop / 1e15:.2f} PFLOP in the networks; host-side work (PNG, "
              f"Frechet) {host:.0f} s on this CPU")
    rate = args.assume_tflops * 1e12
    off_cpu, off_flop, off_host = totals["official"]
    _, our_flop, our_host = totals["ours"]
    print(f"  GPU time, NOT MEASURED (no GPU lent): t = FLOP / R + host, with R = "
          f"{args.assume_tflops:g} TFLOP/s achieved per GPU ASSUMED, host work at this CPU's "
          "measured speed, file decoding of the real images and Ray start not counted:")
    print(f"    official, 1 GPU (its code uses one): {off_flop / rate / 60:.1f} + "
          f"{off_host / 60:.1f} = {(off_flop / rate + off_host) / 60:.1f} min")
    for k in (1, 8):
        t = our_flop / (k * rate) + our_host
        print(f"    ours, {k} GPU{'s' if k > 1 else ''}: {our_flop / (k * rate) / 60:.1f} + "
              f"{our_host / 60:.2f} = {t / 60:.1f} min")
    implied = off_flop / (OFFICIAL_MINUTES * 60) / 1e12
    print(f"  for scale: the official README's {OFFICIAL_MINUTES:.1f} min (one GPU) for these "
          f"{off_flop / 1e15:.2f} PFLOP means at least {implied:.1f} TFLOP/s achieved there (all "
          "its time counted as network time)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None,
                        help="pass --num-workers N to ours (default: the CLI default, auto)")
    parser.add_argument("--mode", choices=("latent", "reference", "both"), default="latent")
    parser.add_argument("--train", type=int, default=45, help="train images per domain (real set)")
    parser.add_argument("--val", type=int, default=15, help="val images per domain (sources)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--skip-case", action="store_true", help="only the CelebA-HQ projection")
    parser.add_argument("--skip-projection", action="store_true")
    parser.add_argument("--cost-batch", type=int, default=2, help="images per cost measurement")
    parser.add_argument("--cost-repeats", type=int, default=2)
    parser.add_argument("--assume-tflops", type=float, default=10.0,
                        help="ASSUMED achieved TFLOP/s per GPU for the GPU projection")
    args = parser.parse_args()

    code, per_sqrtm = 0, None
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        tmp = Path(tmp)
        os.environ["TORCH_HOME"] = str(tmp / "torch_home")
        os.environ["STARGAN_RAY_CACHE"] = str(tmp / "cache")  # cold real-statistics cache
        write_fixture_weights(tmp / "torch_home")
        if not args.skip_case:
            code, per_sqrtm = small_case(args, tmp)
        if not args.skip_projection:
            projection(args, tmp, per_sqrtm)
    return code


if __name__ == "__main__":
    sys.exit(main())
