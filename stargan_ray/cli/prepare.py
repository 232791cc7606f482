"""``stargan-ray prepare SRC OUT``: pack an image folder tree into Parquet shards.

The shards, their order and the manifest are described in ``stargan_ray.data.prepare``.
"""

from __future__ import annotations

import argparse

from .common import MAX_IMG_SIZE, img_size_arg, positive_float, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare", help="pack an image folder tree (SRC/<domain>/<image>) into Parquet shards",
        description=__doc__.split("\n\n")[0])
    p.add_argument("src", metavar="SRC", help="folder tree SRC/<domain>/<image>")
    p.add_argument("out", metavar="OUT", help="output folder or URI (s3://bucket/prefix),"
                   " outside SRC")
    p.add_argument("--img-size", type=img_size_arg, default=None, metavar="N",
                   help=f"model.img_size the shards are for (a power of two, 32 to "
                        f"{MAX_IMG_SIZE}): store PNGs reduced to what the pipeline decodes for "
                        "it (shorter side 1.2 N);"
                   " default: original bytes")
    p.add_argument("--shard-mb", type=positive_float, default=256.0, metavar="M",
                   help="start a new Parquet file after about M MiB (default 256)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="decoding processes (default: CPU count, at most 16)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a shard set already in OUT (default: keep it and stop)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare, summary

    manifest = prepare(args.src, args.out, img_size=args.img_size, shard_mb=args.shard_mb,
                       workers=args.workers, overwrite=args.overwrite)
    print(summary(manifest, args.out))
    return 0
