"""Export a trained model for use without this package: ONNX (onnxruntime) or TorchScript.

One module, ``ExportedModel``, holds the EMA generator, mapping network and style encoder and
the domains' mean styles (the truncation centres `translate` uses, MEAN_STYLE_SEED), with two
entry points; all images are (N, 3, S, S) float32 in [-1, 1] at the model's img_size (resize and
normalise as inference.image_to_tensor; quantise as inference.to_pixels), any batch size N:

- latent-guided ``forward(x, y, z, psi[, mask0, mask1])``: y (N,) int64 domain indices, z
  (N, latent_dim) latent codes, psi (N,) float32 truncation toward the domain's mean style
  (1 = none, as `translate --psi 1`);
- reference-guided ``reference(x, x_ref, y[, mask0, mask1])``: the style of x_ref for domain y.

Models with w_hpf > 0 take the FAN masks of x as two more inputs, mask0 and mask1, each
(N, 1, 256, 256) in [0, 1] as models.fan.FAN.get_heatmap(x) returns them (the FAN stays outside
the graph: compute them with it, or with its own export).

TorchScript writes one file with both methods. An ONNX graph has one entry point, so ONNX writes
FILE (latent-guided) and FILE's stem + ".reference.onnx" beside it. Both carry a JSON
description (domains, sizes, inputs): TorchScript as the extra file "stargan_ray.json", ONNX as
the metadata entry "stargan_ray".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .inference import MEAN_STYLE_SEED, Translator
from .models.generator import HPF_SIZES

FORMATS = ("onnx", "torchscript")
META_KEY = "stargan_ray"
MASK_SIZE = 256  # the FAN's masks are 256 px whatever the image size


class ExportedModel(nn.Module):
    """G, F and E of one model with its mean styles: latent- and reference-guided translation."""

    def __init__(self, translator: Translator) -> None:
        super().__init__()
        nets = translator.nets
        self.generator = nets.generator
        self.mapping_network = nets.mapping_network
        self.style_encoder = nets.style_encoder
        self.high_pass = hasattr(nets.generator, "hpf")
        self.img_size = translator.img_size
        means = [translator.mean_style(y) for y in range(translator.num_domains)]
        self.register_buffer("mean_styles", torch.cat(means))
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, psi: torch.Tensor,
                mask0: torch.Tensor | None = None,
                mask1: torch.Tensor | None = None) -> torch.Tensor:
        s = self.mapping_network(z, y)
        s = torch.lerp(self.mean_styles[y], s, psi[:, None])
        return self._generate(x, s, mask0, mask1)

    def reference(self, x: torch.Tensor, x_ref: torch.Tensor, y: torch.Tensor,
                  mask0: torch.Tensor | None = None,
                  mask1: torch.Tensor | None = None) -> torch.Tensor:
        return self._generate(x, self.style_encoder(x_ref, y), mask0, mask1)

    def _generate(self, x, s, mask0, mask1) -> torch.Tensor:
        if not self.high_pass:
            return self.generator(x, s)
        if mask0 is None or mask1 is None:
            raise ValueError("this model has a high-pass path (w_hpf > 0): pass mask0, mask1")
        return self._high_pass_generator(x, s, mask0, mask1)

    def _high_pass_generator(self, x, s, mask0, mask1) -> torch.Tensor:
        """Generator.forward with masks, feature sizes counted in Python ints: the TorchScript
        tracer hands out sizes as tensors, which cannot key the skip features (the parity
        tests hold it to the eager generator)."""
        g, size = self.generator, self.img_size
        h = g.from_rgb(x)
        cache: dict[int, torch.Tensor] = {}
        for block in g.encode:
            if size in HPF_SIZES:
                cache[size] = h
            h = block(h)
            size //= 2 if block.downsample else 1
        for block in g.decode:
            h = block(h, s)
            size *= 2 if block.upsample else 1
            if size in HPF_SIZES:
                mask = F.interpolate(mask0 if size == 32 else mask1, size=size, mode="bilinear")
                h = h + g.hpf(mask * cache[size])
        return g.to_rgb(h)


class _Reference(nn.Module):
    """ExportedModel.reference as a forward (an ONNX graph has one entry point)."""

    def __init__(self, model: ExportedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, x_ref, y, mask0=None, mask1=None):
        return self.model.reference(x, x_ref, y, mask0, mask1)


def example_inputs(model: ExportedModel, cfg, batch: int = 2,
                   seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs of both entry points, {"forward": ..., "reference": ...}, for tracing and checks."""
    g = torch.Generator().manual_seed(seed)
    size, device = cfg.model.img_size, model.mean_styles.device

    def image() -> torch.Tensor:
        return (torch.rand((batch, 3, size, size), generator=g) * 2 - 1).to(device)

    x, x_ref = image(), image()
    y = torch.arange(batch, device=device) % cfg.model.num_domains
    z = torch.randn((batch, cfg.model.latent_dim), generator=g).to(device)
    psi = torch.linspace(0.5, 1.0, batch, device=device)
    masks: tuple[torch.Tensor, ...] = ()
    if model.high_pass:
        masks = tuple(torch.rand((batch, 1, MASK_SIZE, MASK_SIZE), generator=g).to(device)
                      for _ in range(2))
    return {"forward": (x, y, z, psi, *masks), "reference": (x, x_ref, y, *masks)}


def input_names(model: ExportedModel) -> dict[str, list[str]]:
    masks = ["mask0", "mask1"] if model.high_pass else []
    return {"forward": ["x", "y", "z", "psi", *masks], "reference": ["x", "x_ref", "y", *masks]}


def description(model: ExportedModel, cfg, domains: list[str] | None, step: int) -> dict:
    """What a user of the exported file needs to know, stored inside it."""
    return {
        "format": "stargan-ray-export/1", "step": step, "img_size": cfg.model.img_size,
        "num_domains": cfg.model.num_domains, "domains": domains,
        "latent_dim": cfg.model.latent_dim, "style_dim": cfg.model.style_dim,
        "w_hpf": cfg.model.w_hpf, "mean_style_seed": MEAN_STYLE_SEED,
        "inputs": input_names(model), "output": "image (N, 3, S, S) in [-1, 1]",
        "pixels": "uint8 = trunc(clamp((out + 1) / 2, 0, 1) * 255 + 0.5)",
    }


def reference_path(path: str | Path) -> Path:
    """Where ONNX export writes the reference-guided graph beside FILE."""
    path = Path(path)
    return path.with_name(path.stem + ".reference.onnx")


def export_torchscript(model: ExportedModel, inputs: dict, path: str | Path,
                       meta: dict[str, Any]) -> list[Path]:
    """Trace both entry points into one TorchScript file (shapes other than the batch fixed)."""
    import warnings

    with warnings.catch_warnings():
        # the tracer's notes on size() arithmetic, and torch 2.9+'s deprecation of torch.jit
        # (TorchScript files still load in C++ and older torch, which is why users ask for them)
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, inputs, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{META_KEY}.json": json.dumps(meta)})
    return [Path(path)]


def export_onnx(model: ExportedModel, inputs: dict, path: str | Path,
                meta: dict[str, Any]) -> list[Path]:
    """Two ONNX graphs with a dynamic batch: FILE (latent-guided) and its .reference.onnx."""
    import warnings

    names = input_names(model)
    written = []
    for entry, module, out in (("forward", model, Path(path)),
                               ("reference", _Reference(model), reference_path(path))):
        batch = torch.export.Dim("batch", min=1)
        shapes = {name: {0: batch} for name in names[entry]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, inputs[entry], dynamo=True, verbose=False,
                                        input_names=names[entry], output_names=["image"],
                                        dynamic_shapes=shapes, optimize=True)
        program.model.metadata_props[META_KEY] = json.dumps({**meta, "entry": entry})
        program.save(str(out), external_data=False)
        written.append(out)
    return written


def export(translator: Translator, fmt: str, path: str | Path, domains: list[str] | None = None,
           step: int = 0) -> list[Path]:
    """Write the model in fmt ("onnx" or "torchscript") to path; returns the files written.

    domains: the names to record, default the translator's (Translator.domains; none recorded
    when it only knows the indices)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if domains is None and translator.domains_named:
        domains = list(translator.domains)
    model = ExportedModel(translator)
    inputs = example_inputs(model, translator.cfg)
    meta = description(model, translator.cfg, domains, step)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            return export_torchscript(model, inputs, path, meta)
        return export_onnx(model, inputs, path, meta)


__all__ = ["ExportedModel", "export", "export_onnx", "export_torchscript", "example_inputs",
           "input_names", "description", "reference_path", "FORMATS", "META_KEY"]
