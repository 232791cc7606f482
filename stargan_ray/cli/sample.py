"""`stargan-ray sample`: reference / latent grids and an interpolation animation of a model."""

from __future__ import annotations

import argparse

from .common import (add_device_arg, add_model_source_args, check_output, load_model,
                     positive_int, resolve_device, seed_int)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="reference / latent grids and an interpolation animation",
        description="Translate images from --src with the references in --ref (both laid out "
                    "ROOT/<domain>/<image>) and write reference.jpg, latent_psi_*.jpg and an "
                    "interpolation animation into the folder --out. Image files that cannot be "
                    "decoded are named on stderr and the next ones taken.")
    add_model_source_args(p)
    p.add_argument("--src", required=True, help="source images, ROOT/<domain>/<image>")
    p.add_argument("--ref", required=True, help="reference images, ROOT/<domain>/<image>")
    p.add_argument("--out", required=True,
                   help="output folder, created if needed; not inside --src or --ref")
    p.add_argument("--overwrite", action="store_true",
                   help="replace grids an earlier run wrote into --out (default: refuse)")
    p.add_argument("--num-src", type=positive_int, default=8,
                   help="sources (default: %(default)s)")
    p.add_argument("--num-ref", type=positive_int, default=8,
                   help="references (default: %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="latent codes (default: %(default)s)")
    p.add_argument("--animation", choices=("gif", "webp", "mp4"), default="gif",
                   help="interpolation.gif / interpolation.webp, or mp4: the official "
                        "video_ref.mp4 and video_latent.mp4 (needs the [video] extra) "
                        "(default: %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sample import SampleOptions, output_names, sample

    if args.animation == "mp4":
        from ..video import ffmpeg_module

        ffmpeg_module()  # a missing [video] extra is one line before the model loads
    device = resolve_device(args.device)
    # --out is a folder; it must not lie in the image trees it reads (the grids would become
    # sources next time), and the files it would write are kept unless --overwrite
    out = check_output(args.out, [args.src, args.ref], kind="dir")
    for name in output_names(args.animation):
        check_output(out / name, [], overwrite=args.overwrite)
    cfg, nets, _ = load_model(args, "sample", device)
    opts = SampleOptions(args.num_src, args.num_ref, args.seed, args.animation)
    paths = sample(nets, cfg, args.src, args.ref, out, device, opts)
    for path in paths:
        print(path)
    return 0
