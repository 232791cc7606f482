"""Start a new run from the networks of another model (``train --init-from``), domains remapped.

The source is a stargan-ray checkpoint (nets and nets_ema, with the discriminator) or an official
``{step}_nets_ema.ckpt`` / ``{step}_nets.ckpt`` (state dicts keyed by network name; the released
nets_ema files hold G, F and E only, so the discriminator keeps its fresh initialisation).

Only three parts of StarGAN v2 are per domain: the heads of the mapping network
(``unshared.<d>``), of the style encoder (``unshared.<d>``) and the rows of the discriminator's
last 1x1 convolution. Every other tensor is shared by all domains and is copied exactly (its
shape must fit the configured model). A run domain that maps to a file domain (by name when both
sides have names, else by ``--map old=new``, else by position when the counts agree) gets that
domain's head; a new domain gets the mean of the copied heads. Plain torch, no Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .checkpoint import (FORMAT, CheckpointMismatch, _fit_state_dict, _strip_module_prefix,
                         safe_load)
from .config import ExperimentConfig
from .errors import ConfigError
from .models import EMA, TRAINED, build_networks

_HEAD = re.compile(r"^unshared\.(\d+)\.(.+)$")
_HINT = "check model.img_size, model.w_hpf, model.style_dim, model.dim_in, model.max_conv_dim"


@dataclass(frozen=True)
class Source:
    """The networks a file holds: nets (may include the discriminator) and nets_ema state dicts."""

    path: str
    nets: dict[str, dict[str, torch.Tensor]]
    nets_ema: dict[str, dict[str, torch.Tensor]]
    domains: tuple[str, ...]  # () when the file does not name its domains (official files)
    num_domains: int


def read_source(path: str | Path, device: torch.device | str = "cpu", *,
                mmap: bool = False) -> Source:
    """The networks of a stargan-ray checkpoint or an official nets / nets_ema file."""
    data = safe_load(path, device, mmap=mmap)
    if not isinstance(data, Mapping):
        raise CheckpointMismatch(f"{path}: expected a stargan-ray checkpoint or an official "
                                 "nets_ema file (a dict of state dicts keyed by network name)")
    if data.get("format") == FORMAT:
        nets = {name: dict(data["nets"][name]) for name in TRAINED}
        nets_ema = {name: dict(data["nets_ema"][name]) for name in EMA}
        domains = tuple(data.get("domains") or ())
    else:
        found = {name: _strip_module_prefix(data[name]) for name in TRAINED if name in data}
        if not any(name in found for name in EMA):
            raise CheckpointMismatch(f"{path}: no generator, mapping_network or style_encoder "
                                     f"entry (keys: {sorted(map(str, data))[:6]})")
        nets, nets_ema, domains = found, {k: v for k, v in found.items() if k in EMA}, ()
    heads = {int(m.group(1)) for m in map(_HEAD.match, nets_ema.get("mapping_network", {}))
             if m}
    if not heads:
        raise CheckpointMismatch(f"{path}: the file has no mapping_network heads (unshared.*)")
    return Source(str(path), nets, nets_ema, domains, max(heads) + 1)


def domain_map(source: Source, domains: Sequence[str], num_domains: int,
               pairs: Sequence[str] = ()) -> dict[int, int]:
    """{run domain: file domain} from --map old=new pairs, then names, then position.

    old names a file domain (its name or index), new a run domain (its name or index). Without
    names on both sides and without pairs, domains map by position only when the counts agree.
    """
    mapping: dict[int, int] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep:
            raise ConfigError(f"--map {pair!r}: expected OLD=NEW (a file domain, a run domain)")
        mapping[_index(new.strip(), domains, num_domains, "run", pair)] = _index(
            old.strip(), source.domains, source.num_domains, "file", pair)
    if source.domains and domains:
        for d, name in enumerate(domains):
            if d not in mapping and name in source.domains:
                mapping[d] = source.domains.index(name)
    elif not pairs:
        if source.num_domains != num_domains:
            raise ConfigError(
                f"--map: {source.path} has {source.num_domains} unnamed domains and the run has "
                f"{num_domains}; say which file domain each run domain continues, e.g. --map "
                f"0={domains[0] if domains else 0} (file index = run name or index)")
        mapping = {d: d for d in range(num_domains)}
    return mapping


def _index(text: str, names: Sequence[str], count: int, side: str, pair: str) -> int:
    if text in names:
        return list(names).index(text)
    if text.isdigit() and int(text) < count:
        return int(text)
    known = f"names {', '.join(names)} or " if names else ""
    raise ConfigError(f"--map {pair!r}: {text!r} is not a {side} domain ({known}indices 0-"
                      f"{count - 1})")


def _head_keys(sd: Mapping[str, torch.Tensor], name: str) -> dict[str, int]:
    """{key: domain} of the per-domain tensors of a network's state dict ({} for G)."""
    if name in ("mapping_network", "style_encoder"):
        return {k: int(m.group(1)) for k in sd if (m := _HEAD.match(k))}
    if name == "discriminator":
        last = max(int(k.split(".")[1]) for k in sd if k.startswith("main."))
        return {k: -1 for k in sd if k.startswith(f"main.{last}.")}  # rows are the domains
    return {}


def _remap(name: str, own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor],
           mapping: Mapping[int, int], path: str) -> dict[str, torch.Tensor]:
    """A state dict for the configured network: shared tensors from sd, heads remapped."""
    own_heads, file_heads = _head_keys(own, name), _head_keys(sd, name)
    out: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        if key in own_heads:
            out[key] = _head(name, key, own_heads[key], target, sd, mapping, path)
            continue
        if key not in sd or key in file_heads:
            raise CheckpointMismatch(f"{path}: {name} lacks {key} of the configured model; {_HINT}")
        _same_shape(name, key, sd[key].shape, target.shape, path)
        out[key] = sd[key]
    return out


def _head(name: str, key: str, domain: int, target: torch.Tensor,
          sd: Mapping[str, torch.Tensor], mapping: Mapping[int, int], path: str) -> torch.Tensor:
    if domain == -1:  # the discriminator's output conv: one row per domain
        rows = sd[key]
        _same_shape(name, key, rows.shape[1:], target.shape[1:], path)
        copied = rows[sorted(set(mapping.values()))] if mapping else rows
        mean = copied.mean(0)
        return torch.stack([rows[mapping[d]] if d in mapping else mean
                            for d in range(target.shape[0])])
    rest = key.split(".", 2)[2]
    old = mapping.get(domain)
    if old is not None:
        value = sd[f"unshared.{old}.{rest}"]
    else:
        olds = sorted(set(mapping.values())) or sorted(
            {int(m.group(1)) for m in map(_HEAD.match, sd) if m})
        value = torch.stack([sd[f"unshared.{o}.{rest}"] for o in olds]).mean(0)
    _same_shape(name, key, value.shape, target.shape, path)
    return value


def _same_shape(name: str, key: str, found: torch.Size, expected: torch.Size, path: str) -> None:
    if tuple(found) != tuple(expected):
        raise CheckpointMismatch(f"{path}: {name}.{key} has shape {tuple(found)} in the file but "
                                 f"the configured model expects {tuple(expected)}; {_HINT}")


def remapped_networks(source: Source, cfg: ExperimentConfig, mapping: Mapping[int, int],
                      own: Any) -> tuple[dict[str, dict], dict[str, dict]]:
    """(nets, nets_ema) state dicts for networks shaped like `own` (a Networks)."""
    nets, nets_ema = {}, {}
    for group, out in ((source.nets, nets), (source.nets_ema, nets_ema)):
        for name, sd in group.items():
            module = getattr(own, name)
            if name == "generator":  # the official hpf.filter fix, and its strict check
                sd = _fit_state_dict(name, module, sd, source.path)
            out[name] = _remap(name, module.state_dict(), sd, mapping, source.path)
    # An official nets_ema file: the trained G, F, E start as the EMA ones.
    for name in EMA:
        nets.setdefault(name, nets_ema.get(name))
        nets_ema.setdefault(name, nets.get(name))
    return nets, nets_ema


def summary(source: Source, domains: Sequence[str], num_domains: int,
            mapping: Mapping[int, int], has_d: bool) -> str:
    """The one line that says what was copied, mapped and new."""
    def run_name(d: int) -> str:
        return domains[d] if d < len(domains) else str(d)

    def file_name(o: int) -> str:
        return source.domains[o] if o < len(source.domains) else str(o)

    mapped = ", ".join(f"{file_name(o)}->{run_name(d)}" for d, o in sorted(mapping.items()))
    new = [run_name(d) for d in range(num_domains) if d not in mapping]
    dropped = [file_name(o) for o in range(source.num_domains) if o not in mapping.values()]
    parts = [f"init from {Path(source.path).name}: shared layers copied exactly",
             f"domains mapped: {mapped or 'none'}",
             f"new (mean of the copied heads): {', '.join(new) or 'none'}"]
    if dropped:
        parts.append(f"not used: {', '.join(dropped)}")
    parts.append("discriminator: from the file" if has_d else
                 "discriminator: fresh (the file has none)")
    return "; ".join(parts)


def check_init(path: str | Path, cfg: ExperimentConfig, domains: Sequence[str],
               pairs: Sequence[str] = ()) -> str:
    """Check that the file's networks fit cfg under the domain mapping; the summary line.

    The target networks are built on the meta device (no memory, no initialisation), so the
    driver checks a full-size file before any worker starts.
    """
    source = read_source(path, mmap=True)
    mapping = domain_map(source, domains, cfg.model.num_domains, pairs)
    with torch.device("meta"):
        own = build_networks(cfg.model)
    remapped_networks(source, cfg, mapping, own)
    return summary(source, domains, cfg.model.num_domains, mapping, "discriminator" in source.nets)


def init_from(state: Any, path: str | Path, pairs: Sequence[str] = ()) -> str:
    """Load a file's networks into a fresh TrainState (nets and nets_ema); the summary line.

    The optimisers, step and schedules stay those of the fresh state: a new run, not a resume.
    state.domains names the run's domains (by-name mapping); the discriminator keeps its fresh
    initialisation when the file has none.
    """
    cfg = state.cfg
    source = read_source(path, state.device)
    mapping = domain_map(source, state.domains, cfg.model.num_domains, pairs)
    nets, nets_ema = remapped_networks(source, cfg, mapping, state.nets)
    with torch.no_grad():
        for group, target in ((nets, state.nets), (nets_ema, state.nets_ema)):
            for name, sd in group.items():
                if sd is not None and getattr(target, name, None) is not None:
                    getattr(target, name).load_state_dict(sd, strict=True)
    return summary(source, state.domains, cfg.model.num_domains, mapping, "discriminator" in nets)


__all__ = ["Source", "read_source", "domain_map", "remapped_networks", "check_init", "init_from",
           "summary"]
