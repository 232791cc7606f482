"""The official code's training iteration, for the comparisons of step.py and flops.py.

--official is a checkout of clovaai/stargan-v2 (it cannot ship with us: CC BY-NC); step.py's
docstring says how to make one and what --deps holds.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

import torch

import common  # noqa: F401  (the repository first on sys.path)
from stargan_ray.config import ExperimentConfig
from stargan_ray.engine import Batch
from stargan_ray.models import EMA, TRAINED, Networks


def install_placeholders() -> list[str]:
    """Stand-ins for the official code's imports that its training iteration never calls.

    core/utils.py imports ffmpeg (video export) and core/wing.py imports cv2 and skimage (face
    alignment and heatmap preprocessing). Where such a package is missing, an empty module takes
    its import's place; any use of it raises. Nothing the benchmarked loop runs comes from them.
    """

    def unavailable(name: str) -> Callable:
        def fail(*args, **kwargs):
            raise RuntimeError(f"{name} is a placeholder installed by benchmarks/official.py")
        return fail

    installed = []
    for name, children in (("ffmpeg", ()), ("cv2", ()), ("skimage", ("filters",))):
        if importlib.util.find_spec(name) is not None:
            continue
        for full in (name, *(f"{name}.{child}" for child in children)):
            module = types.ModuleType(full)
            module.__getattr__ = _placeholder_attr(full, unavailable)  # type: ignore[method-assign]
            sys.modules[full] = module
        installed.append(name)
    return installed


def _placeholder_attr(module: str, unavailable: Callable) -> Callable:
    def getattr_(attr: str):
        if attr.startswith("__"):  # module metadata (inspect, pickle) is absent, not a function
            raise AttributeError(attr)
        return unavailable(f"{module}.{attr}")
    return getattr_


def import_official(path: Path, deps: Path | None) -> types.SimpleNamespace:
    """The official solver and model modules from a checkout (core/, metrics/)."""
    if not (path / "core" / "solver.py").is_file():
        sys.exit(f"--official {path}: no core/solver.py there; see this file's docstring")
    if deps is not None:
        sys.path.append(str(deps))
    sys.path.insert(0, str(path))
    placeholders = install_placeholders()
    try:
        from core import model, solver  # type: ignore[import-not-found]
    except ModuleNotFoundError as err:
        sys.exit(f"the official code needs {err.name!r}: pip install --target <dir> {err.name} "
                 f"and pass --deps <dir>")
    return types.SimpleNamespace(solver=solver, model=model, placeholders=placeholders)


def official_networks(official, cfg: ExperimentConfig, nets: Networks) -> tuple[Networks, str]:
    """The official module classes loaded with our weights, when they can express cfg.model."""
    m = cfg.model
    if m.dim_in != 2**14 // m.img_size or m.hidden_dim != 512:
        return copy.deepcopy(nets), "copies of ours (official classes fix dim_in and hidden_dim)"
    om = official.model
    built = Networks(
        generator=om.Generator(m.img_size, m.style_dim, m.max_conv_dim, m.w_hpf),
        mapping_network=om.MappingNetwork(m.latent_dim, m.style_dim, m.num_domains),
        style_encoder=om.StyleEncoder(m.img_size, m.style_dim, m.num_domains, m.max_conv_dim),
        discriminator=om.Discriminator(m.img_size, m.num_domains, m.max_conv_dim),
        fan=nets.fan)
    for name in TRAINED:
        target = getattr(built, name)
        target.load_state_dict(getattr(nets, name).state_dict(), strict=True)
        source = next(getattr(nets, name).parameters())
        target.to(device=source.device, dtype=source.dtype)
    return built, "official classes"


def ema_networks(nets: Networks) -> Networks:
    copies = {name: copy.deepcopy(getattr(nets, name)) for name in EMA}
    return Networks(**copies, discriminator=None, fan=nets.fan)


class OfficialLoop:
    """One iteration of the official Solver.train body, with the official loss functions."""

    def __init__(self, official, cfg: ExperimentConfig, nets: Networks, nets_ema: Networks) -> None:
        from munch import Munch

        self.solver = official.solver
        self.nets = Munch({name: module for name, module in nets.items(include_fan=True)})
        self.nets_ema = Munch({name: module for name, module in nets_ema.items()})
        loss, o = cfg.loss, cfg.optim
        self.args = Munch(lambda_reg=loss.lambda_reg, lambda_sty=loss.lambda_sty,
                          lambda_ds=loss.lambda_ds, lambda_cyc=loss.lambda_cyc,
                          ds_iter=loss.ds_iter, w_hpf=cfg.model.w_hpf)
        self.initial_lambda_ds = loss.lambda_ds
        self.ema_beta = o.ema_beta  # the official loop hard-codes 0.999, the paper value
        self.optims = Munch({
            name: torch.optim.Adam(params=self.nets[name].parameters(),
                                   lr=o.f_lr if name == "mapping_network" else o.lr,
                                   betas=[o.beta1, o.beta2], weight_decay=o.weight_decay)
            for name in TRAINED})

    def _update(self, loss: torch.Tensor, *names: str) -> None:
        """The official _reset_grad, backward and optimiser steps of one loss, in its order."""
        for optim in self.optims.values():
            optim.zero_grad()
        loss.backward()
        for name in names:
            self.optims[name].step()

    def step(self, batch: Batch) -> None:
        s, nets, args = self.solver, self.nets, self.args
        # the official fetcher hands out fresh tensors; compute_d_loss sets requires_grad on x_real
        x_real, y_org = batch.x_src.detach(), batch.y_src
        x_ref, x_ref2, y_trg = batch.x_ref, batch.x_ref2, batch.y_ref
        z_trg, z_trg2 = batch.z_trg, batch.z_trg2
        masks = nets.fan.get_heatmap(x_real) if args.w_hpf > 0 else None

        d_loss, _ = s.compute_d_loss(nets, args, x_real, y_org, y_trg, z_trg=z_trg, masks=masks)
        self._update(d_loss, "discriminator")
        d_loss, _ = s.compute_d_loss(nets, args, x_real, y_org, y_trg, x_ref=x_ref, masks=masks)
        self._update(d_loss, "discriminator")

        g_loss, _ = s.compute_g_loss(nets, args, x_real, y_org, y_trg, z_trgs=[z_trg, z_trg2],
                                     masks=masks)
        self._update(g_loss, "generator", "mapping_network", "style_encoder")
        g_loss, _ = s.compute_g_loss(nets, args, x_real, y_org, y_trg, x_refs=[x_ref, x_ref2],
                                     masks=masks)
        self._update(g_loss, "generator")

        for name in EMA:
            s.moving_average(nets[name], self.nets_ema[name], beta=self.ema_beta)
        if args.lambda_ds > 0:
            args.lambda_ds -= self.initial_lambda_ds / args.ds_iter
