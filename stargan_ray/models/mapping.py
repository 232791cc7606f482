"""Mapping network F: latent code z and target domain y -> style code s."""

from __future__ import annotations

import torch
from torch import nn


def _select_domain(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """out (batch, num_domains, dim), y (batch,) -> (batch, dim): each sample's own domain head."""
    return out[torch.arange(y.size(0), device=y.device), y]


class MappingNetwork(nn.Module):
    def __init__(self, latent_dim: int = 16, style_dim: int = 64, num_domains: int = 2,
                 hidden_dim: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden_dim), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        self.shared = nn.Sequential(*layers)
        self.unshared = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, style_dim))
            for _ in range(num_domains))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.shared(z)
        out = torch.stack([head(h) for head in self.unshared], dim=1)
        return _select_domain(out, y)
