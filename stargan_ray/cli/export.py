"""`stargan-ray export`: a model as ONNX graphs or one TorchScript file (see stargan_ray.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import (add_device_arg, add_model_source_args, check_output, checkpoint_step,
                     model_config, resolve_device)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX or TorchScript",
        description="Write the EMA generator, mapping network and style encoder as one module "
                    "with latent-guided (x, y, z, psi) and reference-guided (x, x_ref, y) "
                    "translation, any batch size; w_hpf > 0 models take the FAN masks as inputs "
                    "mask0, mask1. ONNX writes FILE and FILE's stem + .reference.onnx; "
                    "TorchScript one file with forward() and reference(). Needs "
                    "`pip install stargan-ray[export]` for ONNX.")
    add_model_source_args(p)
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                   help="onnx: two graphs, --out and its .reference.onnx beside it; torchscript: "
                        "one file with forward() and reference()")
    p.add_argument("--out", required=True, help="file to write (.onnx / .pt)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export, reference_path
    from ..inference import Translator

    device = resolve_device(args.device)
    if args.format == "onnx":
        import importlib.util

        if importlib.util.find_spec("onnxscript") is None:  # torch.onnx's exporter needs it
            raise ConfigError("--format onnx: needs the packages onnx and onnxscript; "
                              "pip install 'stargan-ray[export]'")
    cfg, path = model_config(args, "export")
    inputs = [path]
    outs = [Path(args.out)] + ([reference_path(args.out)] if args.format == "onnx" else [])
    for out in outs:
        check_output(out, inputs, overwrite=args.overwrite)
    translator = Translator.from_checkpoint(path, cfg, device)
    for written in export(translator, args.format, args.out, step=checkpoint_step(args, path)):
        print(f"wrote {written}")
    return 0
