"""The one config tree: frozen dataclasses loaded from experiment files.

Keys keep the official StarGAN v2 argument names, grouped by section. Paper defaults live in
``experiments/*.toml``; the dataclass defaults below equal the official argparse defaults so that a
file only needs to name what differs. Every value is validated here, at the door.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError, UserError  # noqa: F401  (re-exported: config.ConfigError)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
SYNTHETIC = "synthetic"  # data.train_dir value: the embedded dataset, generated into a cache


@dataclass(frozen=True)
class ModelConfig:
    img_size: int = 256
    num_domains: int = 2
    latent_dim: int = 16
    hidden_dim: int = 512  # width of the mapping network (official --hidden_dim, fixed 512 there)
    style_dim: int = 64
    w_hpf: float = 1.0
    # None means the official formula 2**14 // img_size; small images make that very wide.
    dim_in: int | None = None
    max_conv_dim: int = 512
    wing_path: str = ""

    def __post_init__(self) -> None:
        if self.dim_in is None and isinstance(self.img_size, int) and self.img_size > 0:
            object.__setattr__(self, "dim_in", 2**14 // self.img_size)


@dataclass(frozen=True)
class LossConfig:
    lambda_reg: float = 1.0
    lambda_sty: float = 1.0
    lambda_ds: float = 1.0
    lambda_cyc: float = 1.0
    ds_iter: int = 100000
    ds_decay: str = "linear"  # linear (official) | cosine | step | none
    ds_step_every: int = 25000  # for ds_decay = "step": halve lambda_ds every this many steps
    r1_interval: int = 1  # lazy R1: every k-th D step, weight scaled by k (1 = official)
    # Adaptive discriminator augmentation (augment.py): the target of r_t = E[sign(D(real))]
    # (StyleGAN2-ADA's 0.6); 0 = off, the paper's training unchanged.
    ada_target: float = 0.0
    ada_interval: int = 4  # steps between two updates of the augmentation probability p
    ada_kimg: float = 500.0  # thousands of images for p to move by 1 (its speed)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    f_lr: float = 1e-6
    beta1: float = 0.0
    beta2: float = 0.99
    weight_decay: float = 1e-4
    ema_beta: float = 0.999


@dataclass(frozen=True)
class DataConfig:
    train_dir: str = "data/celeba_hq/train"
    val_dir: str = "data/celeba_hq/val"
    batch_size: int = 8  # images per step over all workers (each takes its share)
    # At most this many images through the networks at once on one worker; a larger share is
    # split into micro-batches whose gradients accumulate (same update). 0: the whole share.
    batch_per_worker: int = 0
    val_batch_size: int = 32
    randcrop_prob: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    total_iters: int = 100000
    seed: int = 777
    print_every: int = 10
    sample_every: int = 5000
    save_every: int = 10000
    eval_every: int = 50000
    keep_checkpoints: int = 3
    # Also keep the checkpoint with the lowest fid_quick in <run>/best/ (best.json names it).
    keep_best: bool = False
    nan_policy: str = "stop"  # stop | rollback
    precision: str = "fp32"  # fp32 | tf32 | bf16
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class EvalConfig:
    num_outs_per_domain: int = 10
    batch_size: int = 32
    feature_weights: str = "pretrained"  # pretrained | random (never for reported numbers)
    inception_path: str = ""
    alexnet_path: str = ""
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
    kid_subset_size: int = 1000


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
    "train.nan_policy": ("stop", "rollback"),
    "train.precision": ("fp32", "tf32", "bf16"),
    "eval.feature_weights": ("pretrained", "random"),
    "eval.frechet_method": ("auto", "eigh", "sqrtm"),
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


def validate(cfg: ExperimentConfig) -> None:
    """Raise ConfigError for the first value outside what is allowed."""
    m, loss, o, d, t, e = cfg.model, cfg.loss, cfg.optim, cfg.data, cfg.train, cfg.eval
    size = m.img_size
    _require(size >= 32 and size & (size - 1) == 0, "model.img_size",
             "must be a power of two >= 32", size)
    _require(m.num_domains >= 2, "model.num_domains", "must be >= 2", m.num_domains)
    for key in ("latent_dim", "style_dim", "hidden_dim", "dim_in", "max_conv_dim"):
        value = getattr(m, key)
        _require(value >= 1, f"model.{key}", "must be >= 1", value)
    _require(m.w_hpf >= 0, "model.w_hpf", "must be >= 0 (0 disables the high-pass path)", m.w_hpf)
    if m.w_hpf > 0:
        _require(bool(m.wing_path), "model.wing_path",
                 "must name the FAN checkpoint (wing.ckpt) when model.w_hpf > 0", m.wing_path)
    for key in ("lambda_reg", "lambda_sty", "lambda_ds", "lambda_cyc"):
        value = getattr(loss, key)
        _require(value >= 0 and math.isfinite(value), f"loss.{key}", "must be >= 0", value)
    _require(loss.ds_iter >= 1, "loss.ds_iter", "must be >= 1", loss.ds_iter)
    _require(loss.ds_step_every >= 1, "loss.ds_step_every", "must be >= 1", loss.ds_step_every)
    _require(loss.r1_interval >= 1, "loss.r1_interval", "must be >= 1", loss.r1_interval)
    _require(0 <= loss.ada_target < 1, "loss.ada_target",
             "must be in [0, 1) (0 turns adaptive augmentation off)", loss.ada_target)
    _require(loss.ada_interval >= 1, "loss.ada_interval", "must be >= 1", loss.ada_interval)
    _require(loss.ada_kimg > 0 and math.isfinite(loss.ada_kimg), "loss.ada_kimg", "must be > 0",
             loss.ada_kimg)
    for key in ("lr", "f_lr", "weight_decay"):
        _require(getattr(o, key) >= 0, f"optim.{key}", "must be >= 0", getattr(o, key))
    for key in ("beta1", "beta2", "ema_beta"):
        value = getattr(o, key)
        _require(0 <= value < 1, f"optim.{key}", "must be in [0, 1)", value)
    _require(d.batch_size >= 1, "data.batch_size", "must be >= 1", d.batch_size)
    _require(d.batch_per_worker >= 0, "data.batch_per_worker",
             "must be >= 0 (0: a worker's whole share of data.batch_size at once)",
             d.batch_per_worker)
    _require(d.val_batch_size >= 1, "data.val_batch_size", "must be >= 1", d.val_batch_size)
    _require(0 <= d.randcrop_prob <= 1, "data.randcrop_prob", "must be in [0, 1]", d.randcrop_prob)
    for key in ("total_iters", "print_every", "sample_every", "save_every", "eval_every",
                "keep_checkpoints"):
        _require(getattr(t, key) >= 1, f"train.{key}", "must be >= 1", getattr(t, key))
    if t.keep_best and t.eval_every > t.total_iters:
        raise ConfigError(f"train.keep_best: needs fid_quick, which train.eval_every="
                          f"{t.eval_every} > train.total_iters={t.total_iters} disables")
    _require(e.num_outs_per_domain >= 1, "eval.num_outs_per_domain", "must be >= 1",
             e.num_outs_per_domain)
    _require(e.batch_size >= 1, "eval.batch_size", "must be >= 1", e.batch_size)
    _require(e.quick_sources >= 1, "eval.quick_sources", "must be >= 1", e.quick_sources)
    _require(e.quick_outs >= 1, "eval.quick_outs", "must be >= 1", e.quick_outs)
    _require(e.kid_subsets >= 1, "eval.kid_subsets", "must be >= 1", e.kid_subsets)
    _require(e.kid_subset_size >= 2, "eval.kid_subset_size", "must be >= 2", e.kid_subset_size)
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
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
    "SYNTHETIC",
]
