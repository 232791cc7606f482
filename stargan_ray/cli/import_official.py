"""`stargan-ray import-official`: convert official {step}_nets_ema/_nets/_optims.ckpt files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import add_experiment_args, check_output, experiment_from_args, nonnegative_int


def add_parser(sub) -> None:
    p = sub.add_parser("import-official",
                       help="convert official {step}_nets_ema/_nets/_optims.ckpt files")
    add_experiment_args(p, default=None)
    p.add_argument("--nets-ema", required=True, type=Path, help="official {step}_nets_ema.ckpt")
    p.add_argument("--nets", type=Path, help="official {step}_nets.ckpt (to resume training)")
    p.add_argument("--optims", type=Path, help="official {step}_optims.ckpt (to resume training)")
    p.add_argument("--step", type=nonnegative_int,
                   help="step to record (default: from the file name)")
    p.add_argument("--out", required=True, type=Path,
                   help="stargan-ray checkpoint to write (not one of the input files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import import_official

    # Checked before the networks are built: the official files are inputs, never replaced.
    inputs = [p for p in (args.nets_ema, args.nets, args.optims) if p is not None]
    out = check_output(args.out, inputs, overwrite=args.overwrite)
    for parent in out.resolve().parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {args.out}: {parent} is not a directory")
    cfg = experiment_from_args(args)
    written = import_official(cfg, args.nets_ema, out, nets_path=args.nets,
                              optims_path=args.optims, step=args.step)
    print(f"wrote {written}")
    return 0
