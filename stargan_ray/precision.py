"""Precision views of the networks for train_step: float32 modes, bf16 autocast, torch.compile.

Precision (train.precision, train.channels_last, train.compile) is applied per step from the
config: the float32 matmul/convolution mode is set on entry and the previous process-wide setting
restored on exit, so training never leaves global state changed behind it. Plain torch, no Ray.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .config import ExperimentConfig
from .models import Networks


@contextlib.contextmanager
def float32_mode(precision: str, device: torch.device) -> Iterator[None]:
    """Set how float32 matmuls and convolutions run on CUDA for the duration of a step.

    "fp32" means IEEE float32 (torch's own default lets cuDNN convolutions use TF32 on Ampere and
    newer GPUs; here fp32 means what it says); "tf32" and "bf16" allow TF32 (under bf16 the only
    float32 convolutions left are the frozen FAN's). The process-wide flags are restored on exit.
    Other devices have no such flags.
    """
    if device.type != "cuda":
        yield
        return
    mode = "ieee" if precision == "fp32" else "tf32"
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):  # torch >= 2.9
        saved = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        matmul.fp32_precision = cudnn.conv.fp32_precision = mode
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision = saved
    else:  # the flags older releases have
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved


class Autocast(nn.Module):
    """Runs a network under bfloat16 autocast and returns float32.

    Every loss, its reduction and the R1 penalty (the squared norm of a float32 input gradient)
    are then computed in float32 outside autocast; only the networks' matmuls and convolutions
    run in bfloat16. bfloat16 has float32's exponent range, so no loss scaling is needed.
    """

    def __init__(self, module: nn.Module, device_type: str) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return out.float()


@dataclass
class StepNetworks:
    """The networks as train_step calls them: nets themselves in fp32 / tf32, under autocast for
    bf16, compiled with train.compile.

    R1 differentiates the discriminator's input gradient (a double backward), which compiled
    graphs do not support, so the D steps call an uncompiled discriminator (``for_d``); the G
    steps, where D is frozen and only passes gradients through, call the compiled one.
    """

    source: Networks
    cfg: ExperimentConfig
    backend: str
    for_g: Networks  # the views the G steps call
    for_d: Networks  # the views the D steps call: for_g's G, F, E and an uncompiled D

    @classmethod
    def build(cls, nets: Networks, cfg: ExperimentConfig,
              backend: str = "inductor") -> "StepNetworks":
        t = cfg.train
        device_type = next(nets.generator.parameters()).device.type

        def view(module: nn.Module, compile_: bool) -> nn.Module:
            if t.precision == "bf16":
                module = Autocast(module, device_type)
            if compile_:
                # static shapes: every call in a step has the batch size of the step
                module = torch.compile(module, backend=backend, dynamic=False)
            return module

        for_g = Networks(**{name: view(module, t.compile) for name, module in nets.items()},
                         fan=nets.fan)
        for_d = Networks(generator=for_g.generator, mapping_network=for_g.mapping_network,
                         style_encoder=for_g.style_encoder,
                         discriminator=view(nets.discriminator, False), fan=nets.fan)
        return cls(source=nets, cfg=cfg, backend=backend, for_g=for_g, for_d=for_d)


__all__ = ["float32_mode", "Autocast", "StepNetworks"]
