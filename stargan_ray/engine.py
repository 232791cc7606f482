"""One StarGAN v2 training iteration, device-agnostic and without Ray.

train_step() is the official iteration (D step with a latent code, D step with a reference, G step
with latent codes stepping G/F/E, G step with references stepping G, EMA of G/F/E) with the same
values, computed with less work:

- G, F and E do not change during the two D steps, so the latent fake x_fake = G(x_src, F(z_trg))
  is computed once, with its graph, before the D steps; the latent G step reuses it instead of
  recomputing the same value.
- Values that no loss differentiates are computed under no_grad: the detached second outputs
  x_fake2 and their styles, and in the reference G step (which steps G only) every style code
  taken from E on inputs that need no gradient.
- Networks that a step does not update keep requires_grad=False during it (D in both G steps,
  E in the reference G step), so autograd computes only the input gradients that flow through them.
- Stats stay on the device as 0-dim tensors; callers convert them when they log. The EMA update is
  one multi-tensor call per network, and Adam on CUDA is the fused kernel, so a step launches a few
  kernels where the official loop launches one or more per parameter tensor.

benchmarks/README.md records what each change measured (and what was tried and dropped).

Precision (train.precision, train.channels_last, train.compile) is applied per step from state.cfg:
the float32 matmul/convolution mode is set on entry to train_step and the previous process-wide
setting restored on exit, so the engine never leaves global state changed behind it. See
``precision.float32_mode`` and ``precision.StepNetworks``.

With ADA on (loss.ada_target > 0) every image D sees goes through augment.py's pipeline; off,
none of its code runs and the step is the same, bitwise.

This is the only module that calls backward().
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

import torch
from torch import nn

from . import schedules
from .augment import AdaState, ada_on, after_step, noise_for, pair, seen_by_d
from .config import ExperimentConfig
from .losses import GWeights, Stats, d_loss, g_loss
from .models import EMA, TRAINED, Networks, build_networks, ema_copy, he_init
from .precision import StepNetworks, float32_mode


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
    """Everything a run needs to continue exactly: networks, EMA copies, optimisers and step.

    Latent codes are not drawn here: the data pipeline draws z_trg / z_trg2 for each batch from
    the batch's position in the stream, so a resumed run sees the same codes without an RNG state.
    """

    cfg: ExperimentConfig
    nets: Networks
    nets_ema: Networks
    optims: dict[str, torch.optim.Optimizer]
    step: int
    device: torch.device
    # The training data's domain names in id order, recorded in checkpoints so that translate,
    # serve and export can name the domains without the data; () when not known.
    domains: tuple[str, ...] = ()
    # Called between backward() and the optimiser steps with the networks being stepped; the
    # distributed trainer averages their gradients across workers here. None in one process.
    grad_sync: Callable[[list[nn.Module]], None] | None = None
    # torch.compile's backend when train.compile is on (a property of the machine, not of the
    # experiment: "inductor" generates kernels; "aot_eager" traces the same graphs without code
    # generation, which tests use because inductor takes minutes to compile on a small CPU).
    compile_backend: str = "inductor"
    # ADA's p and its interval sums (augment.py; saved in checkpoints); None when it is off.
    ada: AdaState | None = None
    # This worker's rows of the step's data.batch_size (data.layout.lanes_of): ADA draws its
    # parameters for all rows of a step and keeps these. None: the batch is the whole step.
    rows: range | None = None
    # Sums a small tensor over all workers in place (ADA's sign statistics); None in one process.
    stat_sync: Callable[[torch.Tensor], None] | None = None
    # The networks as train_step calls them (autocast / compiled views of nets); built on first
    # use, never saved: they share nets' parameters.
    _step_nets: "StepNetworks | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, cfg: ExperimentConfig, device: torch.device | str, seed: int | None = None,
               fan: nn.Module | None = None) -> "TrainState":
        """Build networks with the official he_init, EMA copies and Adam optimisers.

        Initialisation is seeded locally (fork_rng), so it does not disturb the caller's RNG.
        The EMA copies start equal to the initialised networks (the official code copies them
        before he_init; with beta 0.999 that difference is gone long before any evaluation).
        With train.channels_last the networks (and so their EMA copies and Adam moments) use the
        channels-last memory format; values and state dicts are unchanged by it.
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
        if cfg.train.channels_last:
            for _, module in nets.items():
                module.to(memory_format=torch.channels_last)
        nets_ema = ema_copy(nets)
        return cls(cfg=cfg, nets=nets, nets_ema=nets_ema, optims=build_optimizers(cfg, nets),
                   step=0, device=device,
                   ada=AdaState.create(device) if ada_on(cfg.loss) else None)

    def step_networks(self) -> "StepNetworks":
        cached = self._step_nets
        if (cached is None or cached.source is not self.nets or cached.cfg is not self.cfg
                or cached.backend != self.compile_backend):
            self._step_nets = StepNetworks.build(self.nets, self.cfg, self.compile_backend)
        return self._step_nets


def build_optimizers(cfg: ExperimentConfig, nets: Networks) -> dict[str, torch.optim.Optimizer]:
    """Adam per trained network; the mapping network uses its own (smaller) learning rate.

    On CUDA the fused implementation (one kernel per optimiser step) computes the same update;
    elsewhere torch's default (a loop over parameters on CPU).
    """
    o = cfg.optim
    fused = next(nets.generator.parameters()).device.type == "cuda"
    return {
        name: torch.optim.Adam(getattr(nets, name).parameters(),
                               lr=o.f_lr if name == "mapping_network" else o.lr,
                               betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                               fused=fused or None)
        for name in TRAINED
    }


# ---------------------------------------------------------------- the iteration


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
        # the official operand order, lerp(p, p_ema, beta), as one multi-tensor call
        torch._foreach_copy_(params_ema, torch._foreach_lerp(params, params_ema, beta))


def _prepare(batch: Batch, channels_last: bool) -> Batch:
    if not channels_last:
        return batch
    images = {"x_src", "x_ref", "x_ref2"}
    return Batch(**{f.name: (getattr(batch, f.name).contiguous(memory_format=torch.channels_last)
                             if f.name in images else getattr(batch, f.name))
                    for f in fields(batch)})


def train_step(state: TrainState, batch: Batch) -> Stats:
    """Run one official StarGAN v2 iteration at state.step and advance the step by one.

    With data.batch_per_worker > 0 and a larger batch, each of the iteration's four updates
    accumulates the gradients of micro-batches of at most that many images before it steps (see
    _accumulated_iteration); otherwise the whole batch goes through the networks at once.
    """
    cap = state.cfg.data.batch_per_worker
    with float32_mode(state.cfg.train.precision, state.device):
        batch = _prepare(batch, state.cfg.train.channels_last)
        if cap and len(batch) > cap:
            return _accumulated_iteration(state, split_batch(batch, cap))
        return _iteration(state, batch)


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Consecutive micro-batches of `size` images (the last may be smaller)."""
    columns = {f.name: getattr(batch, f.name).split(size) for f in fields(batch)}
    return [Batch(**{name: parts[i] for name, parts in columns.items()})
            for i in range(len(columns["x_src"]))]


def _iteration(state: TrainState, batch: Batch) -> Stats:
    cfg, nets = state.cfg, state.nets
    run = state.step_networks()
    generator, mapping_network, style_encoder = (run.for_g.generator, run.for_g.mapping_network,
                                                 run.for_g.style_encoder)
    x_real, y_org, y_trg = batch.x_src, batch.y_src, batch.y_ref
    weights = GWeights(cfg.loss.lambda_sty, schedules.lambda_ds_at(cfg.loss, state.step),
                       cfg.loss.lambda_cyc)
    r1_weight = schedules.r1_weight_at(cfg.loss, state.step)
    masks = nets.masks(x_real)
    noise = _step_noise(state, len(batch))

    # Latent fake with its graph: the D step uses it detached, the latent G step reuses it.
    s_trg = mapping_network(batch.z_trg, y_trg)
    x_fake = generator(x_real, s_trg, masks=masks)
    # G, F and E are unchanged until the latent G step: the reference fake of the D step and the
    # second latent fake of the diversity term, in one call.
    with torch.no_grad():
        x_fake_ref = generator(x_real, style_encoder(batch.x_ref, y_trg), masks=masks)
        x_fake2 = generator(x_real, mapping_network(batch.z_trg2, y_trg), masks=masks)

    loss, d_latent = d_loss(run.for_d, x_real, y_org, y_trg, x_fake.detach(), r1_weight,
                            pair(noise, 0))
    _step_optimizers(state, loss, ("discriminator",))
    loss, d_ref = d_loss(run.for_d, x_real, y_org, y_trg, x_fake_ref, r1_weight,
                         pair(noise, 2))
    _step_optimizers(state, loss, ("discriminator",))
    for_g = seen_by_d(run.for_g, noise, 4)

    with frozen(nets.discriminator):
        # G step with latent codes: steps G, F and E.
        s_org = style_encoder(x_real, y_org)
        loss, g_latent = g_loss(for_g, x_real, y_trg, s_trg, x_fake, x_fake2, s_org,
                                nets.masks(x_fake), weights)
        _step_optimizers(state, loss, ("generator", "mapping_network", "style_encoder"))
        del x_fake, x_fake2, s_trg, s_org

        # G step with references: steps G only, after the latent step changed G, F and E.
        with frozen(nets.style_encoder):
            with torch.no_grad():
                s_trg, s_trg2, s_org = (style_encoder(batch.x_ref, y_trg), style_encoder(batch.x_ref2, y_trg),
                                        style_encoder(x_real, y_org))
                x_fake2 = generator(x_real, s_trg2, masks=masks)
            x_fake = generator(x_real, s_trg, masks=masks)
            loss, g_ref = g_loss(seen_by_d(run.for_g, noise, 5), x_real, y_trg, s_trg, x_fake,
                                 x_fake2, s_org, nets.masks(x_fake), weights)
            _step_optimizers(state, loss, ("generator",))

    update_ema(nets, state.nets_ema, cfg.optim.ema_beta)
    stats: Stats = {}
    for prefix, group in (("D/latent_", d_latent), ("D/ref_", d_ref), ("G/latent_", g_latent),
                          ("G/ref_", g_ref)):
        stats.update({prefix + key: value for key, value in group.items()})
    # torch.full, not torch.tensor: a fill on the device instead of a host-to-device copy
    stats["G/lambda_ds"] = torch.full((), weights.lambda_ds, device=x_real.device)
    state.step += 1
    if noise is not None:
        _ada_after_step(state, stats, len(batch), noise.p)
    return stats


class _MicroLosses:
    """The four losses of one micro-batch i, as _accumulated_iteration's updates take them."""

    def __init__(self, state: TrainState, parts: list[Batch], weights: GWeights) -> None:
        self.run, self.nets, self.weights = state.step_networks(), state.nets, weights
        self.r1_weight = schedules.r1_weight_at(state.cfg.loss, state.step)
        self.masks = [state.nets.masks(b.x_src) for b in parts]
        self.noises = _part_noises(state, parts)

    def d_latent(self, i: int, b: Batch):
        g = self.run.for_g
        with torch.no_grad():
            x_fake = g.generator(b.x_src, g.mapping_network(b.z_trg, b.y_ref), masks=self.masks[i])
        return d_loss(self.run.for_d, b.x_src, b.y_src, b.y_ref, x_fake, self.r1_weight,
                      pair(self.noises[i], 0))

    def d_ref(self, i: int, b: Batch):
        g = self.run.for_g
        with torch.no_grad():
            x_fake = g.generator(b.x_src, g.style_encoder(b.x_ref, b.y_ref), masks=self.masks[i])
        return d_loss(self.run.for_d, b.x_src, b.y_src, b.y_ref, x_fake, self.r1_weight,
                      pair(self.noises[i], 2))

    def g_latent(self, i: int, b: Batch):
        g = self.run.for_g
        s_trg = g.mapping_network(b.z_trg, b.y_ref)
        x_fake = g.generator(b.x_src, s_trg, masks=self.masks[i])
        with torch.no_grad():
            x_fake2 = g.generator(b.x_src, g.mapping_network(b.z_trg2, b.y_ref),
                                  masks=self.masks[i])
        s_org = g.style_encoder(b.x_src, b.y_src)
        return g_loss(seen_by_d(g, self.noises[i], 4), b.x_src, b.y_ref, s_trg, x_fake,
                      x_fake2, s_org, self.nets.masks(x_fake), self.weights)

    def g_ref(self, i: int, b: Batch):
        g = self.run.for_g
        with torch.no_grad():
            s_trg, s_trg2, s_org = (g.style_encoder(b.x_ref, b.y_ref),
                                    g.style_encoder(b.x_ref2, b.y_ref),
                                    g.style_encoder(b.x_src, b.y_src))
            x_fake2 = g.generator(b.x_src, s_trg2, masks=self.masks[i])
        x_fake = g.generator(b.x_src, s_trg, masks=self.masks[i])
        return g_loss(seen_by_d(g, self.noises[i], 5), b.x_src, b.y_ref, s_trg, x_fake,
                      x_fake2, s_org, self.nets.masks(x_fake), self.weights)


def _accumulated_iteration(state: TrainState, parts: list[Batch]) -> Stats:
    """The iteration of _iteration over micro-batches: same updates, up to float rounding.

    Every loss is a per-sample mean and the networks normalise per sample (instance norm, no
    batch statistics), so the loss of the whole batch is the size-weighted mean of the
    micro-batches' losses, and so are its gradients. Each of the four updates (D latent, D
    reference, G latent, G reference) accumulates its gradients over all micro-batches before
    one optimiser step, in the official order, so later updates see the earlier ones as in one
    pass. The latent fakes are recomputed per update instead of kept with their graphs (G, F, E
    do not change before the latent G step; graphs would hold the memory the cap is there to save).
    """
    cfg, nets = state.cfg, state.nets
    weights = GWeights(cfg.loss.lambda_sty, schedules.lambda_ds_at(cfg.loss, state.step),
                       cfg.loss.lambda_cyc)
    losses = _MicroLosses(state, parts, weights)
    stats: Stats = {}
    stats.update(_accumulate(state, parts, losses.d_latent, ("discriminator",), "D/latent_"))
    stats.update(_accumulate(state, parts, losses.d_ref, ("discriminator",), "D/ref_"))
    with frozen(nets.discriminator):
        stats.update(_accumulate(state, parts, losses.g_latent,
                                 ("generator", "mapping_network", "style_encoder"), "G/latent_"))
        with frozen(nets.style_encoder):
            stats.update(_accumulate(state, parts, losses.g_ref, ("generator",), "G/ref_"))
    update_ema(nets, state.nets_ema, cfg.optim.ema_beta)
    stats["G/lambda_ds"] = torch.full((), weights.lambda_ds, device=parts[0].x_src.device)
    state.step += 1
    if losses.noises[0] is not None:
        _ada_after_step(state, stats, sum(map(len, parts)), losses.noises[0].p)
    return stats


def _accumulate(state: TrainState, parts: list[Batch],
                loss_of: Callable[[int, Batch], tuple[torch.Tensor, Stats]],
                names: tuple[str, ...], prefix: str) -> Stats:
    """One update: size-weighted gradients of every micro-batch, then one optimiser step."""
    total = sum(len(b) for b in parts)
    for name in names:
        state.optims[name].zero_grad(set_to_none=True)
    stats: Stats = {}
    for i, b in enumerate(parts):
        loss, group = loss_of(i, b)
        share = len(b) / total
        (loss * share).backward()
        if "signs" in group:  # ADA: a sum over images, not a mean
            stats[prefix + "signs"] = stats.get(prefix + "signs", 0) + group.pop("signs")
        for key, value in group.items():
            stats[prefix + key] = stats.get(prefix + key, 0) + value * share
    if state.grad_sync is not None:
        state.grad_sync([getattr(state.nets, name) for name in names])
    for name in names:
        state.optims[name].step()
    return stats


def _step_noise(state: TrainState, n: int):
    """ADA's draws for this step's rows; None when ADA is off."""
    if state.ada is None:
        return None
    return noise_for(state.cfg, state.step, state.rows, n, state.ada.p, state.device)


def _part_noises(state: TrainState, parts: list[Batch]) -> list:
    """ADA's draws of each micro-batch: those of the whole batch, split (Nones when off)."""
    noise = _step_noise(state, sum(map(len, parts)))
    return noise.split(len(parts[0])) if noise is not None else [None] * len(parts)


def _ada_after_step(state: TrainState, stats: Stats, n: int, p: torch.Tensor) -> None:
    """Replace the D steps' sign sums in stats by ADA/p and ADA/r_t; p's update (augment.py)."""
    signs = stats.pop("D/latent_signs") + stats.pop("D/ref_signs")  # 2 D steps of n images
    stats.update(after_step(state.ada, state.cfg, state.step, signs, 2 * n, p, state.stat_sync))
