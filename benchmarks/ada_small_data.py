"""ADA on a small set: fid_quick at step --steps with and without adaptive augmentation.

    nice -n 19 .venv/bin/python benchmarks/ada_small_data.py \
        [--steps 400] [--seeds 0,1,2] [--per-domain 20] [--ada-target 0.6] [--ada-kimg 2] \
        [--every 50] [--modes off,on] [--threads 1] [--set section.key=value ...] [--out results.json]

The toy experiment on the embedded synthetic set drawn with --per-domain training images per
domain (the small-data case: D can memorise them), trained in this process (no Ray) for --steps
steps per seed, once with loss.ada_target = 0 (off) and once with --ada-target. Afterwards
fid_quick of the EMA networks with RANDOM feature weights (eval.feature_weights = "random"):
comparable between the runs of this script, not with any published FID. Prints, per seed and
mode, the FID, r_t averaged over the last --every steps, and p every --every steps (p's
trajectory); --out writes the same as JSON. The figure is FID and p, not a time: run it under
nice without the heavy lock (on a shared machine, one process per seed runs the seeds side by
side).

--ada-kimg defaults to 2 (p may move by 1 in 2,000 images, 250 toy steps): the paper's 500 is
for runs of millions of images and would leave p near 0 over a few hundred steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stargan_ray.config import load_experiment  # noqa: E402
from stargan_ray.data.stream import local_batches  # noqa: E402
from stargan_ray.data.synthetic import N_VAL, generate  # noqa: E402
from stargan_ray.engine import TrainState, train_step  # noqa: E402
from stargan_ray.metrics import evaluator  # noqa: E402


def one_run(args: argparse.Namespace, data: Path, seed: int, ada: bool, cache: Path) -> dict:
    overrides = [("data.train_dir", str(data / "train")), ("data.val_dir", str(data / "val")),
                 ("eval.feature_weights", "random"), ("train.seed", seed),
                 ("loss.ada_target", args.ada_target if ada else 0.0),
                 ("loss.ada_kimg", args.ada_kimg)]
    overrides += list(args.set)  # "section.key=value", parsed as TOML literals
    cfg = load_experiment(args.experiment, overrides)
    state = TrainState.create(cfg, "cpu")
    batches = local_batches(cfg)
    trajectory, r_t, started = [], [], time.perf_counter()
    for _ in range(args.steps):
        stats = train_step(state, next(batches))
        if ada:
            r_t.append(float(stats["ADA/r_t"]))
            if state.step % args.every == 0:
                trajectory.append((state.step, round(float(state.ada.p), 4)))
        if state.step % args.every == 0:  # progress on stderr: a run takes minutes on a busy CPU
            print(f"seed {seed} ada {ada}: step {state.step} "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    fid = evaluator.fid_quick(state.nets_ema, cfg, cache_dir=cache)
    return {"seed": seed, "ada": ada, "fid_quick_random_features": fid,
            "p": trajectory, "r_t_last": (sum(r_t[-args.every:]) / len(r_t[-args.every:])
                                          if r_t else None),
            "train_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="toy")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-domain", type=int, default=20)
    parser.add_argument("--ada-target", type=float, default=0.6)
    parser.add_argument("--ada-kimg", type=float, default=2.0)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--modes", default="off,on",
                        help="off, on or off,on: without ADA, with it, or both (one process per "
                             "mode runs them side by side)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: fastest on a busy 2-core machine)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_experiment(args.experiment, list(args.set))
    results = []
    with tempfile.TemporaryDirectory(prefix="ada_small_") as tmp:
        data = Path(tmp) / "data"
        generate(data, img_size=cfg.model.img_size, num_domains=cfg.model.num_domains,
                 n_train=args.per_domain, n_val=N_VAL)
        for seed in (int(s) for s in args.seeds.split(",")):
            for ada in (mode == "on" for mode in args.modes.split(",")):
                result = one_run(args, data, seed, ada, Path(tmp) / "cache")
                results.append(result)
                print(json.dumps(result), flush=True)
    for ada in (False, True):
        fids = [r["fid_quick_random_features"] for r in results if r["ada"] == ada]
        if not fids:
            continue
        print(f"{'ADA' if ada else 'no ADA'}: fid_quick (random features) at step {args.steps}: "
              + ", ".join(f"{v:.2f}" for v in fids) + f" (mean {sum(fids) / len(fids):.2f})")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
