"""StarGAN v2 networks in plain torch, with the official module and parameter names."""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Iterator

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import AdaIN, AdainResBlk, HighPass, ResBlk
from .encoders import Discriminator, StyleEncoder
from .generator import Generator
from .mapping import MappingNetwork

TRAINED = ("generator", "mapping_network", "style_encoder", "discriminator")
EMA = ("generator", "mapping_network", "style_encoder")


@dataclass
class Networks:
    """The networks of one model. nets_ema uses discriminator=None; fan is frozen and shared."""

    generator: nn.Module
    mapping_network: nn.Module
    style_encoder: nn.Module
    discriminator: nn.Module | None = None
    fan: nn.Module | None = None

    def items(self, include_fan: bool = False) -> Iterator[tuple[str, nn.Module]]:
        for f in fields(self):
            module = getattr(self, f.name)
            if module is not None and (include_fan or f.name != "fan"):
                yield f.name, module

    def masks(self, x: torch.Tensor) -> torch.Tensor | None:
        """FAN masks for the high-pass path of x; None for models without one (w_hpf = 0).

        A FAN is attached exactly when model.w_hpf > 0 (engine, checkpoint and evaluator load it
        only then), so its presence is the one condition every caller uses.
        """
        if self.fan is not None:
            return self.fan.get_heatmap(x)
        if hasattr(self.generator, "hpf"):
            # Without masks the generator would silently skip its high-pass path.
            raise ValueError("the generator has a high-pass path (model.w_hpf > 0) but no FAN "
                             "is attached; load it with models.fan.load_fan(model.wing_path)")
        return None

    def to(self, device: torch.device | str) -> "Networks":
        for _, module in self.items(include_fan=True):
            module.to(device)
        return self


def he_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU gain) weights and zero biases, as the official he_init."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)


def build_networks(cfg: ModelConfig, fan: nn.Module | None = None) -> Networks:
    """Build G, F, E, D for a model config (default PyTorch init; see engine for he_init)."""
    return Networks(
        generator=Generator(cfg.img_size, cfg.style_dim, cfg.max_conv_dim, cfg.w_hpf, cfg.dim_in),
        mapping_network=MappingNetwork(cfg.latent_dim, cfg.style_dim, cfg.num_domains,
                                       cfg.hidden_dim),
        style_encoder=StyleEncoder(cfg.img_size, cfg.style_dim, cfg.num_domains, cfg.max_conv_dim,
                                   cfg.dim_in),
        discriminator=Discriminator(cfg.img_size, cfg.num_domains, cfg.max_conv_dim, cfg.dim_in),
        fan=fan,
    )


def ema_copy(nets: Networks) -> Networks:
    """EMA copies of G, F and E (no discriminator); the frozen FAN is shared, not copied."""
    copies = {name: copy.deepcopy(getattr(nets, name)) for name in EMA}
    for module in copies.values():
        module.requires_grad_(False)
    return Networks(**copies, discriminator=None, fan=nets.fan)


def ema_networks_from_states(cfg: ModelConfig, states: dict[str, dict[str, torch.Tensor]],
                             fan_state: dict[str, torch.Tensor] | None = None) -> Networks:
    """Frozen G, F and E (and the FAN) in eval mode from state dicts: what a Ray actor rebuilds
    from the CPU copies it is sent (no weights files needed on its node)."""
    from .fan import FAN

    built = build_networks(cfg)
    nets = Networks(built.generator, built.mapping_network, built.style_encoder)
    for name, state in states.items():
        getattr(nets, name).load_state_dict(state)
    if fan_state is not None:
        nets.fan = FAN()
        nets.fan.load_state_dict(fan_state)
    for _, module in nets.items(include_fan=True):
        module.eval().requires_grad_(False)
    return nets


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "AdaIN", "AdainResBlk", "HighPass", "ResBlk", "Generator", "MappingNetwork", "StyleEncoder",
    "Discriminator", "Networks", "build_networks", "ema_copy", "ema_networks_from_states", "he_init",
    "count_parameters",
    "TRAINED", "EMA",
]
