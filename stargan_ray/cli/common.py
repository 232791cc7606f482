"""Argument groups and checks shared by the commands, each defined once.

- add_experiment_args / experiment_from_args: --experiment NAME|PATH and repeated --set.
- add_model_source_args / load_model: --checkpoint | --official-checkpoint, with --experiment and
  --set, resolved to (config, EMA networks, step) the same way for eval, sample and translate.
- add_resource_args / run_resources: --storage, --gpus-per-worker, --cpus-per-worker, --wandb.
- argparse types (int_arg and its positive_int, ...), --device and its check, and the output-overlap check.

argparse types fail with one usage line and exit code 2; the check_* and resolve_* functions raise
ConfigError, which main() prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, load_experiment, with_overrides
from ..config_bounds import SEED_MAX
from ..errors import ConfigError

def add_experiment_args(parser: argparse.ArgumentParser, default: str | None = "toy") -> None:
    """--experiment NAME|PATH and repeated --set section.key=value, shared by subcommands."""
    parser.add_argument("--experiment", "-e", default=default, required=default is None,
                        help="experiment name in experiments/ or a path to a .toml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. loss.lambda_ds=2")


def experiment_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return load_experiment(args.experiment, args.overrides)


def add_model_source_args(parser: argparse.ArgumentParser, *, run: bool = False):
    """--checkpoint | --official-checkpoint [| --run RUN_DIR], --experiment, --set.

    Returns the mutually exclusive group so a command can add a source of its own.
    """
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a stargan-ray checkpoint file or folder, or a W&B "
                     "artifact wandb://ENTITY/PROJECT/NAME:ALIAS")
    src.add_argument("--official-checkpoint", help="an official {step}_nets_ema.ckpt")
    if run:
        src.add_argument("--run", metavar="RUN_DIR",
                         help="every complete checkpoint of a training run: writes "
                              "RUN_DIR/metrics/by_step.csv and by_step.png, prints the best step")
    parser.add_argument("--experiment", "-e",
                        help="experiment name or TOML (required for official files)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. eval.batch_size=8")
    return src


def model_config(args: argparse.Namespace, command: str,
                 extra: list[tuple[str, Any]] | None = None) -> tuple[ExperimentConfig, str]:
    """(config, checkpoint path) for --checkpoint / --official-checkpoint.

    A stargan-ray checkpoint carries its config (--experiment replaces it); an official file has
    only weights, so its shapes come from --experiment. --set and extra overrides apply on top.
    """
    from ..checkpoint import read_config
    from ..dashboards import checkpoint_source

    args.checkpoint = checkpoint_source(args.checkpoint)  # wandb://: the fetched file
    overrides = [*args.overrides, *(extra or [])]
    if args.official_checkpoint:
        if not args.experiment:
            raise ConfigError(f"{command}: --official-checkpoint needs --experiment NAME for "
                              "the shapes")
        return load_experiment(args.experiment, overrides), args.official_checkpoint
    if args.experiment:
        return load_experiment(args.experiment, overrides), args.checkpoint
    return with_overrides(read_config(args.checkpoint), overrides), args.checkpoint


def load_model(args: argparse.Namespace, command: str, device: str,
               extra: list[tuple[str, Any]] | None = None):
    """(config, EMA networks on device, step) for the model named by add_model_source_args."""
    from ..checkpoint import load_ema_networks

    cfg, path = model_config(args, command, extra)
    cfg, nets = load_ema_networks(path, cfg, device)
    return cfg, nets, checkpoint_step(args, path)


def checkpoint_step(args: argparse.Namespace, path: str) -> int:
    """The training step of the model named by add_model_source_args (0 when unknown)."""
    from ..checkpoint import official_step, safe_load

    if args.official_checkpoint:
        return official_step(path) or 0
    return int(safe_load(path, mmap=True).get("step", 0))  # mapped: only the step is read


WING_FILE = "expr/checkpoints/wing.ckpt"  # where the official download script puts them
LM_MEAN_FILE = "expr/checkpoints/celeba_lm_mean.npz"


def add_alignment_args(parser: argparse.ArgumentParser, wing_default: str | None = WING_FILE,
                       wing_help: str = "") -> None:
    """--wing, --lm-mean, --min-confidence: the face alignment of `align` and `translate --align`."""
    parser.add_argument("--wing", default=wing_default,
                        help=wing_help or "FAN landmark checkpoint of the official release "
                                          "(default: %(default)s)")
    parser.add_argument("--lm-mean", default=LM_MEAN_FILE,
                        help="CelebA-HQ mean landmarks of the official release "
                             "(default: %(default)s)")
    parser.add_argument("--min-confidence", type=nonnegative_float, default=0.2,
                        help="skip photos whose mean landmark heatmap peak is below this "
                             "(no face found); 0 disables the check (default: %(default)s)")


def add_resource_args(parser: argparse.ArgumentParser, *, what: str = "run",
                      cpus_minimum: float = 0.0, wandb_help: str = "") -> None:
    """--storage, --gpus-per-worker, --cpus-per-worker, --wandb: where a Ray job runs and logs."""
    parser.add_argument("--gpus-per-worker", type=nonnegative_float, default=0.0,
                        help="GPUs each Ray Train worker takes; 0: CPU only, a fraction shares a "
                             "GPU (default: %(default)s)")
    parser.add_argument("--cpus-per-worker", default=1.0,
                        type=positive_float if cpus_minimum > 0 else nonnegative_float,
                        help="CPUs each Ray Train worker takes (default: %(default)s)")
    parser.add_argument("--storage", default="runs",
                        help=f"{what} storage: a local or shared path, or a URI such as "
                             "s3://bucket/runs")
    parser.add_argument("--wandb", choices=("online", "offline", "disabled"), default=None,
                        help=f"W&B mode{wandb_help} (default: $WANDB_MODE, else offline)")


WAIT_DEFAULT_S = 600.0  # a cloud GPU node takes minutes to boot, pull the image and join


def add_wait_arg(parser: argparse.ArgumentParser, unit: str) -> None:
    """--wait SECONDS: how long a request that only an autoscaler's new nodes can hold waits."""
    parser.add_argument("--wait", type=nonnegative_float, default=WAIT_DEFAULT_S,
                        metavar="SECONDS",
                        help=f"when the live nodes cannot hold the {unit}s but the cluster's "
                             "autoscaler may add nodes that can: say so in one line, ask the "
                             "autoscaler for them and wait this long for them to join, then "
                             "stop with a one-line error naming the numbers (default: "
                             f"{WAIT_DEFAULT_S:g}, minutes for a cloud GPU node to boot and "
                             "join; 0: do not wait). A request nothing can ever hold fails at "
                             "once")


# ---------------------------------------------------------------- shared argument checks
# argparse types fail with one usage line and exit code 2; the check_* functions raise
# ConfigError, which main() prints as one line with exit code 2.


def int_arg(minimum: int, maximum: int | None = None, *, multiple_of: int = 1,
            why: str = ""):
    """An argparse type for an integer in [minimum, maximum], a multiple of multiple_of; its
    errors name the value and the rule (argparse puts the flag in front)."""
    rule = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if multiple_of > 1:
        rule += f" and a multiple of {multiple_of}"
    rule += f" ({why})" if why else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {rule}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    parse.__name__ = f"integer {rule}"
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


positive_int = int_arg(1)
nonnegative_int = int_arg(0)
seed_int = int_arg(0, SEED_MAX, why="numpy's seed range")
MAX_IMG_SIZE = 2048  # --img-size: the paper's models are 256 px; 2048 px is 64 times that
img_size_arg = int_arg(1, MAX_IMG_SIZE)
positive_float = _bounded_float(0.0, inclusive=False)
nonnegative_float = _bounded_float(0.0, inclusive=True)


def worker_count(text: str) -> int | tuple[int, int]:
    """N (a fixed size) or MIN-MAX (elastic), each >= 1, MIN <= MAX."""
    low, sep, high = text.partition("-")
    if not sep or not low:  # N, or a negative N such as -1 (not a range with MIN missing)
        return positive_int(text)
    try:
        low_n, high_n = positive_int(low), positive_int(high)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"MIN-MAX must be two integers >= 1, got {text!r}") \
            from None
    if low_n > high_n:
        raise argparse.ArgumentTypeError(f"MIN-MAX needs MIN <= MAX, got {text}")
    return low_n if low_n == high_n else (low_n, high_n)


worker_count.__name__ = "N or MIN-MAX"


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
    from ..data.folders import overlaps

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
