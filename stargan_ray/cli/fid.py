"""`stargan-ray fid`: FID between two image folders (the official calculate_fid_given_paths)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import MAX_IMG_SIZE, add_device_arg, img_size_arg, positive_int, resolve_device


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fid", help="FID between two image folders (official StarGAN v2 protocol)",
        description="FID between two folders of images with torchvision's Inception v3, as the "
                    "official calculate_fid_given_paths. The value is the last line of output. "
                    "Files that cannot be decoded are named on stderr and left out.")
    p.add_argument("dir_a", help="first image folder (searched recursively)")
    p.add_argument("dir_b", help="second image folder")
    p.add_argument("--img-size", type=img_size_arg, default=256,
                   help=f"images are resized to this (1 to {MAX_IMG_SIZE}), then to 299 "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=50,
                   help="Inception batch, checked against the device's free memory "
                        "(default: %(default)s)")
    p.add_argument("--feature-weights", choices=("pretrained", "random"), default="pretrained",
                   help="random: seeded random Inception, for smoke tests only")
    p.add_argument("--inception-path", default="",
                   help="inception_v3_google-0cc3c7bd.pth (default: $TORCH_HOME/hub/checkpoints)")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="also print details as JSON on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import EvalConfig
    from ..metrics.fid import fid_folders, list_pair
    from ..metrics.weights import FeatureWeights

    device = resolve_device(args.device)
    list_pair(args.dir_a, args.dir_b)  # a wrong folder is named before any weights are loaded
    eval_cfg = EvalConfig(feature_weights=args.feature_weights, inception_path=args.inception_path)
    weights = FeatureWeights.from_config(eval_cfg, need=("inception",))
    result = fid_folders(args.dir_a, args.dir_b, weights, img_size=args.img_size,
                         batch_size=args.batch_size, device=device,
                         folded=eval_cfg.inception_folded)
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if args.json:
        info = {"FID": result.value, "feature_weights": weights.kind,
                "weights_id": weights.id("inception"), "warnings": result.warnings}
        print(json.dumps(info), file=sys.stderr)
    print(f"{result.value:.6f}")
    return 0
