"""Complete, atomic, weights-only checkpoints, and import of the official checkpoint files.

A checkpoint is one file holding everything a run needs to continue exactly: nets, nets_ema,
optimiser states, the step, the resolved config and the RNG states. The frozen FAN is not stored
(it is loaded from model.wing_path). Files are written under a temporary name and renamed, so a run
killed during a save leaves the previous checkpoint intact. Every load uses weights_only=True: a
pickle that would run code is refused.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import ExperimentConfig, from_dict
from .errors import UserError
from .storage import atomic_write
from .models import EMA, TRAINED, Networks, build_networks, ema_copy

FORMAT = "stargan-ray/1"
CHECKPOINT_FILE = "checkpoint.pt"  # name inside a checkpoint folder (e.g. a Ray Train checkpoint)


class CheckpointError(UserError):
    """A checkpoint file that is missing, unsafe, or does not fit the configured model."""


# ---------------------------------------------------------------- writing


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over path."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _state_dicts(nets: Networks, names: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: getattr(nets, name).state_dict() for name in names}


def state_dict(state) -> dict[str, Any]:
    """Everything of a TrainState as tensors, numbers and strings (loadable with weights_only)."""
    rng = {"torch": torch.get_rng_state()}
    if state.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(state.device)
    out = {
        "format": FORMAT,
        "step": state.step,
        "config": state.cfg.to_dict(),
        "nets": _state_dicts(state.nets, TRAINED),
        "nets_ema": _state_dicts(state.nets_ema, EMA),
        "optims": {name: opt.state_dict() for name, opt in state.optims.items()},
        "rng": rng,
        "domains": list(state.domains),
    }
    if state.ada is not None:  # ADA's p and interval sums, only when it is on
        out["ada"] = state.ada.state_dict()
    return out


def save_checkpoint(state, path: str | Path) -> Path:
    """Write the complete TrainState to path atomically."""
    return atomic_save(state_dict(state), path)


# ---------------------------------------------------------------- reading


# torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle stream.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_OTHER_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"))


OUR_FILES = "a file written by stargan-ray train or import-official"


def _not_torch(path: Path, head: bytes, expected: str = OUR_FILES) -> str:
    kind = next((name for magic, name in _OTHER_KINDS if head.startswith(magic)), None)
    if kind is None:
        kind = "nothing, it is empty" if not head else (
            "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "another format")
    return f"checkpoint {path}: not a torch checkpoint file (it holds {kind}); give {expected}"


def safe_load(path: str | Path, device: torch.device | str = "cpu", *, mmap: bool = False,
              expected: str = OUR_FILES) -> Any:
    """torch.load with weights_only=True and errors that say what is wrong with the file.

    mmap maps a zip-format file instead of reading it: checking a large checkpoint is then cheap.
    expected: what the file should have been, for the error about a file that is no torch file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    # Sniff first: the unpickler reads text or images as opcodes and fails with KeyError: 101
    # or "objects other than tensors", which says nothing about the real problem.
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(_not_torch(path, head, expected))
    zipped = head.startswith(_TORCH_MAGIC[0])
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path}: refused to load, it holds objects other than tensors and plain "
            f"data (weights_only=True): {first}") from None
    except Exception as err:  # truncated archive, zip of something else, corrupt records
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = first.split(". ")[0]  # torch appends paragraphs of advice
        raise CheckpointError(f"checkpoint {path}: not a readable torch checkpoint, truncated or "
                              f"corrupt ({first})") from None


def read_config(path: str | Path) -> ExperimentConfig:
    """The resolved config stored in one of our checkpoints (mapped, not read: weights unused)."""
    data = safe_load(path, mmap=True)
    _check_format(data, path)
    return from_dict(data["config"])


def read_domains(path: str | Path) -> tuple[str, ...] | None:
    """The domain names one of our checkpoints records (mapped, weights unused); None for an
    official file or one written before checkpoints kept them."""
    data = safe_load(path, mmap=True)
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        return None
    return tuple(data.get("domains") or ()) or None


def _check_format(data: Any, path: str | Path) -> None:
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a stargan-ray checkpoint (format {FORMAT});"
                              " official files load with `stargan-ray import-official`")


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint whose networks do not fit the configured model."""


def check_fits(data: Mapping[str, Any], cfg: ExperimentConfig, path: str | Path) -> None:
    """Raise CheckpointMismatch unless every stored network tensor has the shape cfg builds.

    The networks are built on the meta device: no memory and no initialisation, so the driver
    can check a CelebA-HQ checkpoint in milliseconds before any worker starts.
    """
    with torch.device("meta"):
        nets = build_networks(cfg.model)
    config = data.get("config")
    stored = config.get("model", {}) if isinstance(config, Mapping) else {}
    differ = [f"model.{k}={stored[k]!r} in the checkpoint but {v!r} in the config"
              for k, v in cfg.to_dict()["model"].items()
              if k in stored and stored[k] != v and k != "wing_path"]
    hint = ("; ".join(differ[:3]) if differ else
            "check model.img_size, model.w_hpf, model.num_domains, model.style_dim, model.dim_in")
    for group, names in (("nets", TRAINED), ("nets_ema", EMA)):
        for name in names:
            problem = _state_dict_problem(getattr(nets, name).state_dict(), data[group][name])
            if problem:
                raise CheckpointMismatch(f"checkpoint {path}: {group}.{name}{problem}; {hint}")


def verify_checkpoint(path: str | Path, cfg: ExperimentConfig, step: int | None = None) -> int:
    """The step of a complete checkpoint that fits cfg; CheckpointError says what is wrong.

    Complete: it loads with weights_only, holds every part of a TrainState and, when step is
    given (the number in its folder name), that step. CheckpointMismatch: complete but built for
    other network shapes (a config mistake, not a broken file).
    """
    data = safe_load(path, mmap=True)
    _check_format(data, path)
    try:
        found = int(data["step"])
        parts = [data[k] for k in ("nets", "nets_ema", "optims", "rng")]
        for group, names in ((parts[0], TRAINED), (parts[1], EMA), (parts[2], TRAINED)):
            for name in names:
                group[name]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: incomplete, it lacks {err}") from None
    if step is not None and found != step:
        raise CheckpointError(f"checkpoint {path}: holds step {found}, not the step {step} of "
                              "its folder name")
    check_fits(data, cfg, path)
    return found


def load_state_into(state, data: Mapping[str, Any]) -> None:
    """Restore a TrainState in place from state_dict() output."""
    for name in TRAINED:
        getattr(state.nets, name).load_state_dict(data["nets"][name])
    for name in EMA:
        getattr(state.nets_ema, name).load_state_dict(data["nets_ema"][name])
    for name, opt in state.optims.items():
        opt.load_state_dict(data["optims"][name])
    state.step = int(data["step"])
    state.domains = tuple(data.get("domains", ()))  # absent in files from before they were kept
    if state.ada is not None and data.get("ada"):
        state.ada.load_state_dict(data["ada"])  # else p starts at 0 (ADA turned on now)
    rng = data["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    # rng["loop"], in checkpoints written before the pipeline drew the latent codes, is unused.
    if "cuda" in rng and state.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), state.device)


# ---------------------------------------------------------------- official checkpoints

_OFFICIAL_STEP = re.compile(r"^(\d+)_(nets_ema|nets|optims)\.ckpt$")


def official_step(path: str | Path) -> int | None:
    """The step in an official file name such as 100000_nets_ema.ckpt."""
    match = _OFFICIAL_STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # nn.DataParallel in the official code saves keys as "module.<name>".
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _fit_state_dict(name: str, module: nn.Module, sd: Mapping[str, torch.Tensor],
                    path: str | Path) -> dict[str, torch.Tensor]:
    """Check an official state dict against our module; add the buffer the releases lack."""
    sd = _strip_module_prefix(sd)
    own = module.state_dict()
    # The released CelebA-HQ generator predates the HighPass filter buffer: use our constant.
    if "hpf.filter" in own and "hpf.filter" not in sd:
        sd["hpf.filter"] = own["hpf.filter"]
    hint = "check model.img_size, model.w_hpf, model.num_domains, model.style_dim, model.dim_in"
    problem = _state_dict_problem(own, sd)
    if problem:
        raise CheckpointError(f"{path}: {name}{problem}; {hint}")
    return dict(sd)


def _state_dict_problem(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> str:
    """What keeps sd from loading strictly into a module whose state dict is own ("" if nothing),
    phrased to follow the network's name."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        return (f" does not fit the configured model ({len(missing)} missing keys, e.g. "
                f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    for key, value in sd.items():
        if tuple(value.shape) != tuple(own[key].shape):
            return (f".{key} has shape {tuple(value.shape)} in the file but the configured "
                    f"model expects {tuple(own[key].shape)}")
    return ""


def load_official_networks(path: str | Path, networks: Networks) -> list[str]:
    """Load an official {step}_nets.ckpt or {step}_nets_ema.ckpt into networks (strict).

    Returns the names of the networks loaded. The official files are dicts of state dicts keyed
    by network name; a 'fan' entry (saved alongside by the official code) is skipped, since the
    FAN is loaded from its own wing.ckpt.
    """
    data = safe_load(path)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of state dicts keyed by network name")
    loaded = []
    for name, module in networks.items():
        if name not in data:
            continue
        module.load_state_dict(_fit_state_dict(name, module, data[name], path), strict=True)
        loaded.append(name)
    if not loaded:
        raise CheckpointError(f"{path}: no network entries found (keys: {sorted(data)[:6]})")
    return loaded


def load_official_optimizers(path: str | Path, optims: Mapping[str, torch.optim.Optimizer]) -> None:
    """Load an official {step}_optims.ckpt (Adam state dicts keyed by network name)."""
    data = safe_load(path)
    for name, opt in optims.items():
        if name not in data:
            raise CheckpointError(f"{path}: no optimizer state for {name}")
        opt.load_state_dict(data[name])


def import_official(cfg: ExperimentConfig, nets_ema_path: str | Path, out: str | Path, *,
                    nets_path: str | Path | None = None, optims_path: str | Path | None = None,
                    step: int | None = None, device: torch.device | str = "cpu") -> Path:
    """Convert official checkpoint files into one stargan-ray checkpoint.

    Without nets_path the trained networks start as copies of the EMA networks and the
    discriminator keeps its fresh initialisation: such a checkpoint evaluates and samples exactly,
    but resuming training from it is not the official run.
    """
    from .engine import TrainState

    state = TrainState.create(cfg, device)
    load_official_networks(nets_ema_path, state.nets_ema)
    if nets_path is not None:
        load_official_networks(nets_path, state.nets)
    else:
        for name in EMA:
            getattr(state.nets, name).load_state_dict(getattr(state.nets_ema, name).state_dict())
    if optims_path is not None:
        load_official_optimizers(optims_path, state.optims)
    found = official_step(nets_ema_path)
    state.step = step if step is not None else (found or 0)
    return save_checkpoint(state, out)


def load_ema_networks(path: str | Path, cfg: ExperimentConfig | None = None,
                      device: torch.device | str = "cpu") -> tuple[ExperimentConfig, Networks]:
    """EMA networks for evaluation and sampling from our checkpoint or an official nets_ema file.

    Official files carry no config, so cfg is required for them.
    """
    data = safe_load(path)
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        if cfg is not None:  # --experiment / --set: shapes other than the file's are one line
            check_fits(data, cfg, path)
        cfg = cfg or from_dict(data["config"])
        nets = ema_copy(build_networks(cfg.model))
        for name in EMA:
            getattr(nets, name).load_state_dict(data["nets_ema"][name])
    else:
        if cfg is None:
            raise CheckpointError(f"{path}: an official checkpoint needs --experiment for its shapes")
        nets = ema_copy(build_networks(cfg.model))
        load_official_networks(path, nets)
    if cfg.model.w_hpf > 0:
        from .models.fan import load_fan

        nets.fan = load_fan(cfg.model.wing_path, device)
    for _, module in nets.items():
        module.eval()
    return cfg, nets.to(device)
