"""`stargan-ray` command line: subcommands registered by the modules that own them.

Each module defines add_cli(subparsers); heavy imports (ray, wandb, lpips) stay inside the command
functions so that `stargan-ray --help` is quick. Errors users can cause are ConfigErrors and are
printed as one line with exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from pathlib import Path

from .config import load_experiment
from .errors import ConfigError, UserError

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


# ---------------------------------------------------------------- shared argument checks
# argparse types fail with one usage line and exit code 2; the check_* functions raise
# ConfigError, which main() prints as one line with exit code 2.


def _bounded_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _bounded_float(minimum: float, inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {bound} {minimum:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = _bounded_int(1)
nonnegative_int = _bounded_int(0)
positive_float = _bounded_float(0.0, inclusive=False)
nonnegative_float = _bounded_float(0.0, inclusive=True)


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device: cpu, cuda or cuda:N (default: cuda when available)")


def resolve_device(name: str | None, flag: str = "--device") -> str:
    """The --device value checked against this machine; default cuda when available, else cpu."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag}: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag}: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag}: {name!r} asked for, but this machine has no usable CUDA "
                              "device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag}: {name!r} asked for, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return str(device)


def check_output(out: str | Path, inputs: list[str | Path], *, flag: str = "--out",
                 overwrite: bool | None = None, kind: str = "file") -> Path:
    """Refuse an output that is, contains or lies inside an input; keep an existing output.

    kind "file": an existing file is refused unless overwrite is True (None: never allowed, the
    command has no --overwrite); an existing directory is refused. kind "dir": an existing
    non-directory is refused. Local paths are compared after resolving symlinks, URIs by scheme,
    bucket and key (data.folders.overlaps).
    """
    from .data.folders import overlaps

    out_path = Path(out).expanduser()
    for inp in inputs:
        if inp is not None and overlaps(str(out), str(inp)):
            raise ConfigError(f"{flag} {out}: is, contains or lies inside the input {inp}; "
                              "write the output somewhere else")
    if kind == "file":
        if out_path.is_dir():
            raise ConfigError(f"{flag} {out}: is a directory; give a file name")
        if out_path.exists() and not overwrite:
            hint = "; pass --overwrite to replace it" if overwrite is False else ""
            raise ConfigError(f"{flag} {out}: already exists and is kept{hint}")
    elif out_path.exists() and not out_path.is_dir():
        raise ConfigError(f"{flag} {out}: exists and is not a directory")
    return out_path


def _import_official(args: argparse.Namespace) -> int:
    from .checkpoint import import_official

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


def _add_import_official(sub) -> None:
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
    except UserError as err:
        print(f"stargan-ray: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
