"""Parity with the official StarGAN v2 metrics: FID on two folders and LPIPS on one group.

    python benchmarks/official_parity.py --official /tmp/official [--deps /tmp/official_deps]

--official is a checkout of clovaai/stargan-v2 (it cannot ship with us: CC BY-NC); --deps a folder
with its extra packages (``pip install --target /tmp/official_deps munch``), never our venv.

Both sides get the same images and the same feature weights: fixture files written into a
temporary TORCH_HOME under torchvision's names (a seeded Inception v3 with calibrated batch norms,
a seeded AlexNet), since the pretrained files cannot be downloaded here. The official code runs in
a subprocess with that TORCH_HOME; its LPIPS class calls .cuda() unconditionally, so on a machine
without CUDA the subprocess makes Tensor.cuda a no-op (nothing else is changed). Prints both
values and the relative differences; exits 1 when FID differs by more than 1e-3 or LPIPS by more
than 1e-4 (relative).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import common  # noqa: F401  (the repository first on sys.path)

from stargan_ray.data.synthetic import generate
from stargan_ray.metrics import fid as fidlib
from stargan_ray.metrics import lpips as lpipslib
from stargan_ray.metrics.weights import FeatureWeights, file_name

OFFICIAL_LPIPS_MIN_SIZE = 64
OFFICIAL_SCRIPT = r"""
import json, sys, torch
if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # official LPIPS hard-codes .cuda()
from metrics.fid import calculate_fid_given_paths
from metrics.lpips import calculate_lpips_given_images
args = json.loads(sys.argv[1])
fid = calculate_fid_given_paths(args["paths"], img_size=args["img_size"],
                                batch_size=args["batch_size"])
lpips = None
if args["lpips"]:
    lpips = calculate_lpips_given_images(torch.load(args["group"], weights_only=True))
print("RESULT " + json.dumps({"fid": float(fid), "lpips": lpips}))
"""


def write_fixture_weights(torch_home: Path, seed: int) -> None:
    """Seeded Inception v3 (calibrated) and AlexNet saved under torchvision's file names."""
    from torchvision.models import alexnet

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(fidlib.random_inception3(seed).state_dict(), checkpoints / file_name("inception"))
    torch.manual_seed(seed)
    torch.save(alexnet(weights=None).state_dict(), checkpoints / file_name("alexnet"))


def load_generator_input(path: Path, img_size: int) -> torch.Tensor:
    """An image as the generator sees it: resized to img_size, in [-1, 1]."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((img_size, img_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255).mul(2).sub(1)


def run_official(official: Path, deps: Path | None, torch_home: Path, args: dict) -> dict:
    env = dict(os.environ, TORCH_HOME=str(torch_home),
               PYTHONPATH=os.pathsep.join(p for p in (str(official), str(deps or "")) if p))
    proc = subprocess.run([sys.executable, "-c", OFFICIAL_SCRIPT, json.dumps(args)], cwd=official,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"official code failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="official checkout")
    parser.add_argument("--deps", type=Path, default=None, help="its extra packages (munch)")
    parser.add_argument("--img-size", type=int, default=64, help="protocol img_size")
    parser.add_argument("--stored-size", type=int, default=80,
                        help="size of the PNG files (differs from img-size: both resizes run)")
    parser.add_argument("--images", type=int, default=24, help="images per folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--outputs", type=int, default=10, help="LPIPS outputs per source")
    parser.add_argument("--sources", type=int, default=4, help="LPIPS sources")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.official / "metrics" / "fid.py").is_file():
        sys.exit(f"{args.official}: not a checkout of clovaai/stargan-v2 (no metrics/fid.py)")

    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        tmp = Path(tmp)
        torch_home = tmp / "torch_home"
        write_fixture_weights(torch_home, args.seed)
        train, val = generate(tmp / "data", img_size=args.stored_size, num_domains=2,
                              n_train=args.images, n_val=args.outputs * args.sources)
        paths = [str(train / "circle"), str(train / "square")]
        # LPIPS group: 10 "outputs" for 4 sources, each N x 3 x H x W in [-1, 1]
        images = torch.stack([load_generator_input(p, args.img_size)
                              for p in fidlib.list_images(val / "circle")])
        group = list(images.view(args.outputs, args.sources, 3, args.img_size, args.img_size))
        torch.save(group, tmp / "group.pt")

        t0 = time.perf_counter()
        official = run_official(args.official.resolve(), args.deps, torch_home,
                                {"paths": paths, "img_size": args.img_size,
                                 "batch_size": args.batch_size, "group": str(tmp / "group.pt"),
                                 "lpips": args.img_size >= OFFICIAL_LPIPS_MIN_SIZE})
        t_official = time.perf_counter() - t0

        os.environ["TORCH_HOME"] = str(torch_home)  # ours reads the same cache
        from stargan_ray.config import EvalConfig

        weights = FeatureWeights.from_config(EvalConfig(), download=False)
        t0 = time.perf_counter()
        ours_fid = fidlib.fid_folders(paths[0], paths[1], weights, img_size=args.img_size,
                                      batch_size=args.batch_size)
        ours_lpips = lpipslib.diversity(group, lpipslib.build_lpips(weights))
        t_ours = time.perf_counter() - t0

    rel_fid = abs(ours_fid.value - official["fid"]) / abs(official["fid"])
    print(f"images per folder {args.images}, img_size {args.img_size} "
          f"(files {args.stored_size} px), LPIPS {args.sources} sources x {args.outputs} outputs")
    print(f"FID    official {official['fid']:.6f}  ours {ours_fid.value:.6f}  relative diff "
          f"{rel_fid:.2e}")
    rel_lpips = 0.0
    if official["lpips"] is None:
        print(f"LPIPS  official cannot run at {args.img_size} px (its AlexNet wrapper also runs "
              f"the last max-pool, which needs {OFFICIAL_LPIPS_MIN_SIZE} px); ours "
              f"{ours_lpips:.8f}")
    else:
        rel_lpips = abs(ours_lpips - official["lpips"]) / abs(official["lpips"])
        print(f"LPIPS  official {official['lpips']:.8f}  ours {ours_lpips:.8f}  relative diff "
              f"{rel_lpips:.2e}")
    print(f"time   official {t_official:.1f} s  ours {t_ours:.1f} s")
    for note in ours_fid.warnings:
        print(f"note: {note}")
    return 0 if rel_fid <= 1e-3 and rel_lpips <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
