"""``stargan-ray prepare SRC OUT``: pack an image folder tree into Parquet shards.

The shards, their order and the manifest are described in ``stargan_ray.data.prepare``; the
domains may come from SRC's folders, a labels file (--labels) or attributes (--attributes with
--domains). Exit code 1 when any file was skipped (named in the summary), 0 otherwise.
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
    _add_source_args(p)
    p.add_argument("--shard-mb", type=positive_float, default=256.0, metavar="M",
                   help="start a new Parquet file after about M MiB (default 256)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="decoding processes (default: CPU count, at most 16)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a shard set already in OUT (default: keep it and stop)")
    p.set_defaults(func=run)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """Where the domains come from (SRC is then the image root) and how photos become square."""
    from ..config import FITS

    p.add_argument("--labels", default="", metavar="CSV",
                   help="domains from a CSV with columns path,domain (path relative to SRC or"
                   " absolute) instead of SRC/<domain>/ folders")
    p.add_argument("--attributes", default="", metavar="FILE",
                   help="domains from a CelebA list_attr_celeba.txt-style file (files looked up"
                   " by name under SRC); needs --domains")
    p.add_argument("--domains", default="", metavar="A,B,...",
                   help="with --attributes: the attributes that are the domains; an image with"
                   " none or several of them is left out (counted in the summary)")
    p.add_argument("--fit", choices=FITS, default="stretch",
                   help="a photo that is not square: stretch (official, default), crop (the"
                   " centred square) or pad (the whole photo on a mid-grey square)")


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import Source, prepare, summary

    domains = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    source = Source(labels=args.labels, attributes=args.attributes, domains=domains,
                    fit=args.fit)
    manifest = prepare(args.src, args.out, img_size=args.img_size, shard_mb=args.shard_mb,
                       workers=args.workers, overwrite=args.overwrite, source=source)
    print(summary(manifest, args.out))
    return 1 if manifest["skipped"] else 0
