"""`stargan-ray align`: align face photos to the CelebA-HQ mean landmarks (official align mode)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_alignment_args, add_device_arg, check_output, int_arg, resolve_device


def add_parser(sub) -> None:
    p = sub.add_parser(
        "align", help="align face photos to the CelebA-HQ mean landmarks (official align mode)",
        description="Align custom face photos like CelebA-HQ so a CelebA-HQ model can translate "
                    "them. Photos where no face is found, and files that cannot be decoded, are "
                    "reported and skipped; exits 1 when none was aligned.")
    p.add_argument("--inp", required=True, help="folder of input photos (searched recursively)")
    p.add_argument("--out", required=True,
                   help="output folder (same relative file names); not inside --inp")
    add_alignment_args(p)
    p.add_argument("--img-size", type=int_arg(64, 1024, multiple_of=64,
                                              why="the FAN's 64 px heatmaps"), default=256,
                   help="output size, a multiple of 64 up to 1024 (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace aligned photos an earlier run wrote into --out (default: refuse)")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..align import FaceAligner, align_folder, input_files, load_mean_landmarks
    from ..models.fan import load_fan

    device = torch.device(resolve_device(args.device))
    # the outputs keep the input names: an --out that overlaps --inp would overwrite the photos
    check_output(args.out, [args.inp], kind="dir")
    for _, name in input_files(args.inp):  # existing outputs are kept unless --overwrite
        check_output(Path(args.out) / name, [], overwrite=args.overwrite)
    mean = load_mean_landmarks(args.lm_mean)
    aligner = FaceAligner(load_fan(args.wing, device), mean, args.img_size, args.min_confidence)
    aligned, skipped = align_folder(args.inp, args.out, aligner, device)
    print(f"aligned {len(aligned)} photo(s) into {args.out}; skipped {len(skipped)}"
          + (f": {', '.join(skipped)}" if skipped else ""))
    return 0 if aligned else 1
