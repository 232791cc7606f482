"""The one config tree: frozen dataclasses loaded from experiment files.

Keys keep the official StarGAN v2 argument names, grouped by section. Paper defaults live in
``experiments/*.toml``; the dataclass defaults below equal the official argparse defaults so that a
file only needs to name what differs. Every value is validated here, at the door.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config_bounds import BOUNDS, Bound  # noqa: F401  (re-exported: config.BOUNDS)
from .errors import ConfigError, UserError  # noqa: F401  (re-exported: config.ConfigError)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
SYNTHETIC = "synthetic"  # data.train_dir value: the embedded dataset, generated into a cache
FITS = ("stretch", "crop", "pad")  # data.fit: how a photo that is not square becomes square


@dataclass(frozen=True)
class ModelConfig:
    img_size: int = 256  # image height and width in px (square)
    num_domains: int = 2  # one output branch of F, E and D per domain
    latent_dim: int = 16  # size of a latent code z_trg
    hidden_dim: int = 512  # width of the mapping network (official --hidden_dim, fixed 512 there)
    style_dim: int = 64  # size of a style code s_trg
    w_hpf: float = 1.0  # weight of the high-pass path (FAN face masks); 0 = none (AFHQ)
    # None means the official formula 2**14 // img_size; small images make that very wide.
    dim_in: int | None = None
    max_conv_dim: int = 512  # channel cap of the convolution stacks
    wing_path: str = ""  # the FAN's wing.ckpt, needed when w_hpf > 0

    def __post_init__(self) -> None:
        if self.dim_in is None and isinstance(self.img_size, int) and self.img_size > 0:
            object.__setattr__(self, "dim_in", 2**14 // self.img_size)


@dataclass(frozen=True)
class LossConfig:
    lambda_reg: float = 1.0  # weight of the R1 penalty on D's real images
    lambda_sty: float = 1.0  # weight of the style reconstruction loss
    lambda_ds: float = 1.0  # weight of the diversity loss at step 0 (see ds_decay)
    lambda_cyc: float = 1.0  # weight of the cycle-consistency loss
    ds_iter: int = 100000  # steps over which lambda_ds decays to 0
    ds_decay: str = "linear"  # linear (official) | cosine | step | none
    ds_step_every: int = 25000  # for ds_decay = "step": halve lambda_ds every this many steps
    r1_interval: int = 1  # lazy R1: every k-th D step, weight scaled by k (1 = official)
    # Adaptive discriminator augmentation (augment.py): the target of r_t = E[sign(D(real))]
    # (StyleGAN2-ADA's 0.6); 0 = off, the paper's training unchanged.
    ada_target: float = 0.0  # r_t's target for adaptive augmentation; 0 turns it off
    ada_interval: int = 4  # steps between two updates of the augmentation probability p
    ada_kimg: float = 500.0  # thousands of images for p to move by 1 (its speed)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4  # Adam learning rate of G, E and D
    f_lr: float = 1e-6  # Adam learning rate of the mapping network F
    beta1: float = 0.0  # Adam beta1
    beta2: float = 0.99  # Adam beta2
    weight_decay: float = 1e-4  # Adam weight decay
    ema_beta: float = 0.999  # decay of the moving average nets_ema


@dataclass(frozen=True)
class DataConfig:
    train_dir: str = "data/celeba_hq/train"  # folders per domain, shards, or "synthetic"
    val_dir: str = "data/celeba_hq/val"  # sources and references of grids and evaluation
    batch_size: int = 8  # images per step over all workers (each takes its share)
    # At most this many images through the networks at once on one worker; a larger share is
    # split into micro-batches whose gradients accumulate (same update). 0: the whole share.
    batch_per_worker: int = 0
    val_batch_size: int = 32  # sources through G at once in evaluation
    randcrop_prob: float = 0.5  # chance of the official random resized crop
    # Domains from a labels CSV (columns path,domain; paths relative to the split's dir) instead
    # of <dir>/<domain>/ folders; "" = folders.
    train_labels: str = ""
    val_labels: str = ""  # the same for val_dir
    # A photo that is not square: stretch (official) | crop (centred square) | pad (whole photo
    # on a square, mid-grey border); see data/shapes.py.
    fit: str = "stretch"
    # Train on shards prepared for a smaller img_size (upsampled images) with a warning.
    allow_upscale: bool = False


@dataclass(frozen=True)
class TrainConfig:
    total_iters: int = 100000  # training steps
    seed: int = 777  # seeds the initial weights and the data stream
    print_every: int = 10  # steps between log lines (console, metrics.jsonl, W&B)
    sample_every: int = 5000  # steps between sample grids
    save_every: int = 10000  # steps between checkpoints
    eval_every: int = 50000  # steps between fid_quick evaluations
    # Steps between full evaluations (official FID/LPIPS, both modes) of the step's checkpoint,
    full_eval_every: int = 0  # as Ray tasks beside training (validation=beside only); 0 = never
    keep_checkpoints: int = 3  # newest checkpoints kept in the run folder
    # Also keep the checkpoint with the lowest fid_quick in <run>/best/ (best.json names it).
    keep_best: bool = False
    # How a checkpoint reaches the run's storage (train/upload.py): async (the loop pays only the
    # write to a local folder; Ray Train copies it in the background) | sync (the loop also waits
    # for the copy). Either way a checkpoint.pt appears in storage only once whole.
    checkpoint_upload: str = "async"
    # Spot nodes (train/preemption.py): every this many steps each worker asks Ray Train whether
    # a node of the run is about to be reclaimed, and a notice saves a checkpoint at once (0: never
    # ask). A preemption restart counts against max_preemptions (-1: no limit, as Ray's default),
    # apart from --max-failures.
    preemption_check_every: int = 10
    max_preemptions: int = -1  # preemption restarts allowed (-1: no limit)
    nan_policy: str = "stop"  # stop | rollback
    precision: str = "fp32"  # fp32 | tf32 | bf16
    channels_last: bool = False  # channels-last memory format for networks and batches
    compile: bool = False  # torch.compile the networks


@dataclass(frozen=True)
class EvalConfig:
    num_outs_per_domain: int = 10  # outputs per source and target domain
    batch_size: int = 32  # images through Inception at once
    feature_weights: str = "pretrained"  # pretrained | random (never for reported numbers)
    inception_path: str = ""  # Inception v3 weights file for FID; "" = torchvision's cache
    alexnet_path: str = ""  # AlexNet weights file for LPIPS; "" = torchvision's cache
    quick_sources: int = 16  # fid_quick: sources per task
    quick_outs: int = 2  # fid_quick: outputs per source
    # FID's trace term (metrics/frechet.py): auto (the smallest exact symmetric eigenproblem: n x n
    # for a set of n < 2048 images, else a Cholesky factor) | eigh (two symmetric
    # eigen-decompositions) | sqrtm (scipy, the official code path). All agree within 1e-6 relative.
    frechet_method: str = "auto"
    # Inception with each batch norm folded into its convolution, channels-last (fid.fold_batchnorm):
    # the same features up to float32 rounding, faster; false runs torchvision's modules as they are.
    inception_folded: bool = True
    # KID beside every FID (not in fid_quick): subsets of min(both set sizes, kid_subset_size)
    # features; torch-fidelity's and clean-fid's defaults.
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # features per KID subset (see kid_subsets)
    # Where train.eval_every's fid_quick runs (train/validation.py): beside = a Ray validation
    # task on the step's checkpoint while the workers train on (the default: training never
    # waits for it; a run whose cluster cannot hold the task beside the workers runs inline with
    # a note) | inline = inside the loop on every rank (the workers wait). Same numbers.
    validation: str = "beside"
    validation_cpus: float = 1.0  # CPUs of the beside task (its torch threads)
    # GPUs of the beside task; -1 = one when the workers train on GPUs, else none.
    validation_gpus: float = -1.0


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "loss.ds_decay": ("linear", "cosine", "step", "none"),
    "data.fit": FITS,
    "train.nan_policy": ("stop", "rollback"),
    "train.checkpoint_upload": ("async", "sync"),
    "train.precision": ("fp32", "tf32", "bf16"),
    "eval.feature_weights": ("pretrained", "random"),
    "eval.frechet_method": ("auto", "eigh", "sqrtm"),
    "eval.validation": ("beside", "inline"),
}


# ---------------------------------------------------------------- type coercion


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args) + " or none"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check value against the field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a table of keys, got {values!r}")
    types_ = _field_types(cls)
    allowed = sorted(types_)
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(f"{section}.{key}: unknown key; allowed keys: {', '.join(allowed)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, types_[key])
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a nested mapping (a parsed experiment file)."""
    allowed = ["name", *SECTIONS]
    sections = {}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown section; allowed: {', '.join(allowed)}")
    name = raw.get("name", "experiment")
    if not isinstance(name, str):
        raise ConfigError(f"name: expected str, got {name!r}")
    for section, cls in SECTIONS.items():
        sections[section] = _build_section(section, cls, raw.get(section, {}))
    cfg = ExperimentConfig(name=name, **sections)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------- validation


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {allowed}, got {value!r}")


def check_bounds(cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the key, the value and the rule for a number out of BOUNDS."""
    for key, bound in BOUNDS.items():
        value = get_key(cfg, key)
        if value is not None and not bound.allows(value):
            raise ConfigError(f"{key}: must be {bound.rule(isinstance(value, float))}, "
                              f"got {value!r}")


def validate(cfg: ExperimentConfig) -> None:
    """Raise ConfigError for the first value outside what is allowed."""
    check_bounds(cfg)
    m, t = cfg.model, cfg.train
    if m.w_hpf > 0:
        _require(bool(m.wing_path), "model.wing_path",
                 "must name the FAN checkpoint (wing.ckpt) when model.w_hpf > 0", m.wing_path)
    if t.keep_best and t.eval_every > t.total_iters:
        raise ConfigError(f"train.keep_best: needs fid_quick, which train.eval_every="
                          f"{t.eval_every} > train.total_iters={t.total_iters} disables")
    if t.full_eval_every and cfg.eval.validation == "inline":
        raise ConfigError("train.full_eval_every: full evaluations run only beside training; "
                          "set eval.validation=\"beside\" (got \"inline\") or full_eval_every=0")
    gpus = cfg.eval.validation_gpus
    _require(gpus == -1 or gpus >= 0, "eval.validation_gpus",
             "must be -1 (one when the workers use GPUs) or >= 0", gpus)
    for key, choices in CHOICES.items():
        value = get_key(cfg, key)
        _require(value in choices, key, f"must be one of {', '.join(choices)}", value)


# ---------------------------------------------------------------- loading and overrides


def experiment_path(name_or_path: str | Path) -> Path:
    """Resolve an experiment name (``toy``) or a path to its TOML file."""
    return toml_file(name_or_path, EXPERIMENTS_DIR, "experiment")


def toml_file(name_or_path: str | Path, folder: Path, what: str) -> Path:
    """A path to a .toml file, or the name of one in folder; the error lists the names there."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{what}: no such file {path}")
        return path
    candidate = folder / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in folder.glob("*.toml"))
    raise ConfigError(f"{what}: {name_or_path!r} is neither a file nor one of {', '.join(known)}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:  # an image, a checkpoint, a file in another encoding
        byte = err.object[err.start]
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text: byte {byte:#04x} at offset "
                          f"{err.start})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.lambda_ds=2"`` -> ("loss.lambda_ds", 2). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    """Return a copy of the nested mapping with ``section.key=value`` overrides applied."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "name":
            out["name"] = value
            continue
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise ConfigError(f"{key}: overrides name section.key with section one of "
                              f"{', '.join(SECTIONS)}")
        section, name = parts
        if name not in _field_types(SECTIONS[section]):
            allowed = ", ".join(sorted(_field_types(SECTIONS[section])))
            raise ConfigError(f"{key}: unknown key; allowed keys: {allowed}")
        out.setdefault(section, {})[name] = value
    return out


def load_experiment(name_or_path: str | Path,
                    overrides: Iterable[str | tuple[str, Any]] = ()) -> ExperimentConfig:
    """Load ``experiments/<name>.toml`` (or a path) and apply overrides such as ``"loss.lambda_ds=2"``."""
    path = experiment_path(name_or_path)
    raw = read_toml(path)
    raw.setdefault("name", path.stem)
    return from_dict(apply_overrides(raw, overrides))


def with_overrides(cfg: ExperimentConfig,
                   overrides: Iterable[str | tuple[str, Any]]) -> ExperimentConfig:
    """A validated copy of cfg with overrides applied (used by Tune trials)."""
    return from_dict(apply_overrides(cfg.to_dict(), overrides))


def get_key(cfg: ExperimentConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def config_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def to_toml(cfg: ExperimentConfig) -> str:
    """Serialise a config as an experiment file that load_experiment accepts as is."""
    lines = [f"name = {_toml_value(cfg.name)}", ""]
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for f in fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if value is not None:
                lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


__all__ = [
    "ConfigError", "ModelConfig", "LossConfig", "OptimConfig", "DataConfig", "TrainConfig",
    "EvalConfig", "ExperimentConfig", "load_experiment", "with_overrides", "from_dict",
    "apply_overrides", "parse_override", "to_toml", "config_keys", "get_key", "replace",
    "SYNTHETIC", "FITS",
]
