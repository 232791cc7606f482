"""`stargan-ray export`: the ONNX graphs in onnxruntime and the TorchScript file in torch give
the eager outputs, at a batch size other than the one exported, with and without FAN masks.

Tolerance: TorchScript replays the same aten kernels, so it is held to 1e-6; ONNX runs other
float32 kernels (onnxruntime's convolutions, its fused instance norm and the exporter's graph
rewrites), measured at about 1e-5 on [-1, 1] outputs here, so it is held to 1e-4, below half a
uint8 level (0.0039 on [-1, 1]).
"""

from __future__ import annotations

import json

import pytest
import torch

from stargan_ray.checkpoint import save_checkpoint
from stargan_ray.cli import main
from stargan_ray.engine import TrainState
from stargan_ray.export import ExportedModel, example_inputs, export, reference_path

from .helpers import tiny_config, tiny_translator

onnx = pytest.importorskip("onnx")  # the [export] extra, part of [test]
ort = pytest.importorskip("onnxruntime")

TS_TOL, ONNX_TOL = 1e-6, 1e-4


def eager(translator, inputs: dict) -> dict[str, torch.Tensor]:
    """The networks called directly, not through ExportedModel."""
    nets = translator.nets
    x, y, z, psi, *masks = inputs["forward"]
    _, x_ref, _, *_ = inputs["reference"]
    masks = tuple(masks) or None
    means = torch.cat([translator.mean_style(int(k)) for k in y])
    with torch.no_grad():
        s_lat = torch.lerp(means, nets.mapping_network(z, y), psi[:, None])
        s_ref = nets.style_encoder(x_ref, y)
        return {"forward": nets.generator(x, s_lat, masks=masks),
                "reference": nets.generator(x, s_ref, masks=masks)}


def run_onnx(path, inputs) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: v.numpy() for i, v in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


@pytest.mark.parametrize("w_hpf", [0.0, 1.0])
def test_onnx_and_torchscript_match_eager_outputs(w_hpf, tmp_path):
    translator = tiny_translator(w_hpf=w_hpf)
    model = ExportedModel(translator)
    inputs = example_inputs(model, translator.cfg, batch=3, seed=7)  # exported at batch 2
    expected = eager(translator, inputs)
    assert not torch.allclose(expected["forward"], expected["reference"], atol=1e-2)

    ts = torch.jit.load(str(export(translator, "torchscript", tmp_path / "m.pt",
                                   ["a", "b", "c"], 9)[0]))
    with torch.no_grad():
        torch.testing.assert_close(ts(*inputs["forward"]), expected["forward"], rtol=0,
                                   atol=TS_TOL)
        torch.testing.assert_close(ts.reference(*inputs["reference"]), expected["reference"],
                                   rtol=0, atol=TS_TOL)

    files = export(translator, "onnx", tmp_path / "m.onnx", ["a", "b", "c"], 9)
    assert files == [tmp_path / "m.onnx", reference_path(tmp_path / "m.onnx")]
    names = ["x", "y", "z", "psi"] + (["mask0", "mask1"] if w_hpf else [])
    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    for entry, path in zip(("forward", "reference"), files):
        torch.testing.assert_close(run_onnx(path, inputs[entry]), expected[entry], rtol=0,
                                   atol=ONNX_TOL)
    meta = json.loads({p.key: p.value for p in onnx.load(str(files[1])).metadata_props}
                      ["stargan_ray"])
    assert meta["entry"] == "reference" and meta["domains"] == ["a", "b", "c"]
    assert meta["step"] == 9 and meta["img_size"] == 32


def test_a_high_pass_export_refuses_to_run_without_masks():
    translator = tiny_translator(w_hpf=1.0)
    model = ExportedModel(translator)
    x, y, z, psi, *_ = example_inputs(model, translator.cfg)["forward"]
    with pytest.raises(ValueError, match="mask0, mask1"):
        model(x, y, z, psi)


def test_export_command_writes_files_that_translate_like_translate(tmp_path, capsys):
    cfg = tiny_config(**{"model.num_domains": 3, "data.train_dir": "synthetic"})
    torch.manual_seed(0)
    ckpt = save_checkpoint(TrainState.create(cfg, "cpu"), tmp_path / "c.pt")
    out = tmp_path / "e" / "model.pt"
    argv = ["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out),
            "--device", "cpu"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    extra = {"stargan_ray.json": ""}
    ts = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["stargan_ray.json"])["domains"] == ["circle", "square", "triangle"]

    from stargan_ray.inference import Translator, latent_codes

    translator = Translator.from_checkpoint(ckpt)
    x = torch.rand((2, 3, 32, 32)) * 2 - 1
    styles = translator.latent_styles(1, [4], psi=0.7)
    expected = translator.translate(x, styles)[:, 0]
    z = latent_codes([4, 4], cfg.model.latent_dim)
    with torch.no_grad():
        got = ts(x, torch.tensor([1, 1]), z, torch.full((2,), 0.7))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

    assert main(argv) == 2  # kept without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([*argv[:-4], "--out", str(ckpt), "--overwrite", "--device", "cpu"]) == 2
