"""One StarGAN v2 training iteration, device-agnostic and without Ray.

train_step() is the official iteration (D step with a latent code, D step with a reference, G step
with latent codes stepping G/F/E, G step with references stepping G, EMA of G/F/E) with the same
values, computed with less work:

- G, F and E do not change during the two D steps, so the latent fake x_fake = G(x_src, F(z_trg))
  is computed once, with its graph, before the D steps; the latent G step reuses it instead of
  recomputing the same value.
- Values that no loss differentiates are computed under no_grad: the detached second output
  x_fake2 and its style, and in the reference G step (which steps G only) every style code
  taken from E on inputs that need no gradient.
- Networks that a step does not update keep requires_grad=False during it (D in both G steps,
  E in the reference G step), so autograd computes only the input gradients that flow through them.
- Stats stay on the device as 0-dim tensors; callers convert them when they log.

This is the only module that calls backward().
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import torch
from torch import nn

from . import schedules
from .config import ExperimentConfig
from .losses import GWeights, Stats, d_loss, g_loss
from .models import EMA, TRAINED, Networks, build_networks, ema_copy, he_init


@dataclass
class Batch:
    """One training batch with the official field names."""

    x_src: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    y_src: torch.Tensor  # (N,) int64 source domains
    x_ref: torch.Tensor  # (N, 3, H, W) reference images of domain y_ref
    x_ref2: torch.Tensor  # (N, 3, H, W) a second, different reference of domain y_ref
    y_ref: torch.Tensor  # (N,) int64 target domains
    z_trg: torch.Tensor  # (N, latent_dim)
    z_trg2: torch.Tensor  # (N, latent_dim)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})

    def __len__(self) -> int:
        return self.x_src.size(0)


@dataclass
class TrainState:
    """Everything a run needs to continue exactly: networks, EMA copies, optimisers, step, RNG."""

    cfg: ExperimentConfig
    nets: Networks
    nets_ema: Networks
    optims: dict[str, torch.optim.Optimizer]
    step: int
    rng: torch.Generator  # latent codes drawn by the training loop
    device: torch.device
    # Called between backward() and the optimiser steps with the networks being stepped; the
    # distributed trainer averages their gradients across workers here. None in one process.
    grad_sync: Callable[[list[nn.Module]], None] | None = None

    @classmethod
    def create(cls, cfg: ExperimentConfig, device: torch.device | str, seed: int | None = None,
               fan: nn.Module | None = None) -> "TrainState":
        """Build networks with the official he_init, EMA copies and Adam optimisers.

        Initialisation is seeded locally (fork_rng), so it does not disturb the caller's RNG.
        The EMA copies start equal to the initialised networks (the official code copies them
        before he_init; with beta 0.999 that difference is gone long before any evaluation).
        """
        device = torch.device(device)
        seed = cfg.train.seed if seed is None else seed
        if fan is None and cfg.model.w_hpf > 0:
            from .models.fan import load_fan  # only the masked (CelebA-HQ) model needs it

            fan = load_fan(cfg.model.wing_path, device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = build_networks(cfg.model, fan=fan)
            for _, module in nets.items():
                module.apply(he_init)
        nets.to(device)
        nets_ema = ema_copy(nets)
        rng = torch.Generator(device="cpu")
        rng.manual_seed(seed)
        return cls(cfg=cfg, nets=nets, nets_ema=nets_ema, optims=build_optimizers(cfg, nets),
                   step=0, rng=rng, device=device)

    def sample_latents(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw z_trg, z_trg2 from the state's own generator (saved in checkpoints)."""
        shape = (batch_size, self.cfg.model.latent_dim)
        z_trg = torch.randn(shape, generator=self.rng)
        z_trg2 = torch.randn(shape, generator=self.rng)
        return z_trg.to(self.device), z_trg2.to(self.device)


def build_optimizers(cfg: ExperimentConfig, nets: Networks) -> dict[str, torch.optim.Optimizer]:
    """Adam per trained network; the mapping network uses its own (smaller) learning rate."""
    o = cfg.optim
    return {
        name: torch.optim.Adam(getattr(nets, name).parameters(),
                               lr=o.f_lr if name == "mapping_network" else o.lr,
                               betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        for name in TRAINED
    }


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off parameter gradients of networks a step does not update; input gradients still flow."""
    saved = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, flags in zip(modules, saved):
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)


def _step_optimizers(state: TrainState, loss: torch.Tensor, names: tuple[str, ...]) -> None:
    for name in names:
        state.optims[name].zero_grad(set_to_none=True)
    loss.backward()
    if state.grad_sync is not None:
        state.grad_sync([getattr(state.nets, name) for name in names])
    for name in names:
        state.optims[name].step()


@torch.no_grad()
def update_ema(nets: Networks, nets_ema: Networks, beta: float) -> None:
    """nets_ema = lerp(nets, nets_ema, beta) for G, F and E, as the official moving_average."""
    for name in EMA:
        params = list(getattr(nets, name).parameters())
        params_ema = list(getattr(nets_ema, name).parameters())
        for p, p_ema in zip(params, params_ema):
            p_ema.copy_(torch.lerp(p, p_ema, beta))


def _masks(nets: Networks, x: torch.Tensor, w_hpf: float):
    return nets.fan.get_heatmap(x) if w_hpf > 0 else None


def train_step(state: TrainState, batch: Batch) -> Stats:
    """Run one official StarGAN v2 iteration at state.step and advance the step by one."""
    cfg, nets = state.cfg, state.nets
    G, F, E, D = nets.generator, nets.mapping_network, nets.style_encoder, nets.discriminator
    x_real, y_org, y_trg = batch.x_src, batch.y_src, batch.y_ref
    weights = GWeights(cfg.loss.lambda_sty, schedules.lambda_ds(cfg.loss, state.step),
                       cfg.loss.lambda_cyc)
    r1_weight = schedules.r1_weight(cfg.loss, state.step)
    masks = _masks(nets, x_real, cfg.model.w_hpf)

    # Latent fake with its graph: the D step uses it detached, the latent G step reuses it.
    s_trg = F(batch.z_trg, y_trg)
    x_fake = G(x_real, s_trg, masks=masks)
    with torch.no_grad():
        x_fake_ref = G(x_real, E(batch.x_ref, y_trg), masks=masks)

    stats: Stats = {}
    loss, d_latent = d_loss(nets, x_real, y_org, y_trg, x_fake.detach(), r1_weight)
    _step_optimizers(state, loss, ("discriminator",))
    loss, d_ref = d_loss(nets, x_real, y_org, y_trg, x_fake_ref, r1_weight)
    _step_optimizers(state, loss, ("discriminator",))

    with frozen(D):
        # G step with latent codes: steps G, F and E.
        with torch.no_grad():
            x_fake2 = G(x_real, F(batch.z_trg2, y_trg), masks=masks)
        s_org = E(x_real, y_org)
        loss, g_latent = g_loss(nets, x_real, y_trg, s_trg, x_fake, x_fake2, s_org,
                                _masks(nets, x_fake, cfg.model.w_hpf), weights)
        _step_optimizers(state, loss, ("generator", "mapping_network", "style_encoder"))
        del x_fake, x_fake2, s_trg, s_org

        # G step with references: steps G only, after the latent step changed G, F and E.
        with frozen(E):
            with torch.no_grad():
                s_trg = E(batch.x_ref, y_trg)
                x_fake2 = G(x_real, E(batch.x_ref2, y_trg), masks=masks)
                s_org = E(x_real, y_org)
            x_fake = G(x_real, s_trg, masks=masks)
            loss, g_ref = g_loss(nets, x_real, y_trg, s_trg, x_fake, x_fake2, s_org,
                                 _masks(nets, x_fake, cfg.model.w_hpf), weights)
            _step_optimizers(state, loss, ("generator",))

    update_ema(nets, state.nets_ema, cfg.optim.ema_beta)
    for prefix, group in (("D/latent_", d_latent), ("D/ref_", d_ref), ("G/latent_", g_latent),
                          ("G/ref_", g_ref)):
        stats.update({prefix + key: value for key, value in group.items()})
    stats["G/lambda_ds"] = torch.tensor(weights.lambda_ds, device=x_real.device)
    state.step += 1
    return stats


def stats_to_floats(stats: Stats) -> dict[str, float]:
    """Convert a step's stats to Python floats with one device synchronisation."""
    keys = list(stats)
    values = torch.stack([stats[k].detach().float() for k in keys]).cpu().tolist()
    return dict(zip(keys, values))


def non_finite(stats: Stats) -> list[str]:
    """Names of stats that are NaN or infinite (one synchronisation)."""
    keys = list(stats)
    finite = torch.isfinite(torch.stack([stats[k].detach().float() for k in keys])).cpu()
    return [k for k, ok in zip(keys, finite.tolist()) if not ok]
