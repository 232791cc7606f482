"""`stargan-ray` command line: one module per command, each with add_parser(sub) and run(args).

Library modules expose functions and classes only; the files here hold the arguments and the few
lines that call the library. Heavy imports (ray, wandb, lpips) stay inside run() so that
`stargan-ray --help` is quick. Errors users can cause derive from errors.UserError and are printed
as one line with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ..errors import UserError
from .common import (add_device_arg, add_experiment_args, check_output,  # noqa: F401
                     experiment_from_args, nonnegative_float, nonnegative_int, positive_float,
                     positive_int, resolve_device)

# (command module in this package, module that still registers it with add_cli while it moves)
COMMANDS = (
    ("demo", "stargan_ray.demo"),
    ("train", "stargan_ray.train"),
    ("tune", "stargan_ray.tune"),
    ("eval", "stargan_ray.metrics.evaluator"),
    ("fid", "stargan_ray.metrics.fid"),
    ("sample", None),
    ("translate", None),
    ("export", None),
    ("serve", None),
    ("prepare", "stargan_ray.data.prepare"),
    ("import_official", None),
    ("align", None),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stargan-ray",
        description="StarGAN v2 on Ray: train, tune, evaluate and sample.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, legacy in COMMANDS:
        module_name = f"{__name__}.{name}"
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).add_parser(sub)
        elif legacy is not None:
            importlib.import_module(legacy).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"stargan-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
