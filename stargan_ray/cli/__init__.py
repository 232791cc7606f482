"""`stargan-ray` command line: one module per command, each with add_parser(sub) and run(args).

Library modules expose functions and classes only; the files here hold the arguments and the few
lines that call the library. Heavy imports (ray, wandb, lpips) stay inside run() so that
`stargan-ray --help` is quick. Errors users can cause derive from errors.UserError and are printed
as one line with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# The command modules of this package, in the order `stargan-ray --help` lists them.
COMMANDS = ("demo", "train", "tune", "eval", "fid", "sample", "translate", "export", "serve",
            "prepare", "import_official", "align")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stargan-ray",
        description="StarGAN v2 on Ray: train, tune, evaluate, translate, export and serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"stargan-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C before a command could say more (e.g. in Ray's start-up)
        print(f"stargan-ray: interrupted: {args.command} stopped before it finished",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
