"""`stargan-ray` command line: subcommands registered by the modules that own them.

Each module defines add_cli(subparsers); heavy imports (ray, wandb, lpips) stay inside the command
functions so that `stargan-ray --help` is quick. Errors users can cause are ConfigErrors and are
printed as one line with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from .config import ConfigError, load_experiment

COMMAND_MODULES = (
    "stargan_ray.demo",
    "stargan_ray.train",
    "stargan_ray.tune",
    "stargan_ray.metrics.evaluator",
    "stargan_ray.metrics.fid",
    "stargan_ray.sample",
    "stargan_ray.data.prepare",
    "stargan_ray.align",
)


def add_experiment_args(parser: argparse.ArgumentParser, default: str | None = "toy") -> None:
    """--experiment NAME|PATH and repeated --set section.key=value, shared by subcommands."""
    parser.add_argument("--experiment", "-e", default=default, required=default is None,
                        help="experiment name in experiments/ or a path to a .toml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. loss.lambda_ds=2")


def experiment_from_args(args: argparse.Namespace):
    return load_experiment(args.experiment, args.overrides)


def _import_official(args: argparse.Namespace) -> int:
    from .checkpoint import import_official

    cfg = experiment_from_args(args)
    out = import_official(cfg, args.nets_ema, args.out, nets_path=args.nets,
                          optims_path=args.optims, step=args.step)
    print(f"wrote {out}")
    return 0


def _add_import_official(sub) -> None:
    p = sub.add_parser("import-official",
                       help="convert official {step}_nets_ema/_nets/_optims.ckpt files")
    add_experiment_args(p, default=None)
    p.add_argument("--nets-ema", required=True, type=Path, help="official {step}_nets_ema.ckpt")
    p.add_argument("--nets", type=Path, help="official {step}_nets.ckpt (to resume training)")
    p.add_argument("--optims", type=Path, help="official {step}_optims.ckpt (to resume training)")
    p.add_argument("--step", type=int, help="step to record (default: from the file name)")
    p.add_argument("--out", required=True, type=Path, help="stargan-ray checkpoint to write")
    p.set_defaults(func=_import_official)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stargan-ray",
        description="StarGAN v2 on Ray: train, tune, evaluate and sample.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            if hasattr(module, "add_cli"):
                module.add_cli(sub)
    _add_import_official(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"stargan-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
