"""Parity of our FAN, face masks, landmarks and alignment with the official StarGAN v2 code.

Both FANs get the same random weights, written once in the released wing.ckpt layout and loaded
by each side's own loader; both see the same images. Prints max |ours - official| of the raw
heatmaps, of both masks (full get_heatmap, and the preprocessing alone on blob heatmaps), of the
landmarks, of the alignment matrices, and the difference of aligned images (ours warps bicubic
with torch, the official Lanczos with OpenCV on uint8, so those differ by design).

The official code needs munch, opencv and scikit-image; install them outside the project:
    pip install --target /tmp/offdeps munch scikit-image opencv-python-headless
    git -C <mirror> archive HEAD core | tar -x -C /tmp/official
    PYTHONPATH=/tmp/offdeps .venv/bin/python benchmarks/fan_parity.py --official /tmp/official
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import common  # noqa: F401  (the repository first on sys.path)
from stargan_ray.align import FaceAligner, similarity_matrix
from stargan_ray.models.fan import FAN, face_masks, load_fan


@contextlib.contextmanager
def cuda_visible(flag: bool):
    """The official modules pick cuda whenever it exists; pin them to the device under test."""
    original = torch.cuda.is_available
    torch.cuda.is_available = lambda: flag
    try:
        yield
    finally:
        torch.cuda.is_available = original


def import_official(root: Path):
    sys.path.insert(0, str(root))
    import core.wing as wing  # noqa: E402  (the official module)

    from skimage.filters import gaussian

    # scikit-image >= 0.19 renamed multichannel=True to channel_axis=-1; same filter.
    wing.gaussian = lambda img, sigma, multichannel=False: gaussian(
        img, sigma=sigma, channel_axis=-1 if multichannel else None)
    return wing


def randomize(fan: FAN, generator: torch.Generator) -> None:
    """Random weights with plausible batch-norm statistics (default init makes BN a no-op)."""
    with torch.no_grad():
        for name, tensor in fan.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.dim() == 1:  # BN weight
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)


def calibrate_heads(fan: FAN, x: torch.Tensor) -> None:
    """Rescale l0 per channel so ~5% of each heatmap exceeds the 0.1 truncation, peaks near 1.1.

    With raw random weights every heatmap channel passes the truncation almost everywhere and
    both masks saturate at 1, which would make the mask comparison vacuous.
    """
    heat = fan.get_heatmap(x, b_preprocess=False).transpose(0, 1).flatten(1)  # (98, N*64*64)
    q = heat.quantile(0.95, dim=1)
    peak = heat.amax(dim=1)
    a = 1.0 / (peak - q).clamp_min(1e-6)
    with torch.no_grad():
        fan.l0.weight[:-1] *= a.view(-1, 1, 1, 1)
        fan.l0.bias[:-1] = a * (fan.l0.bias[:-1] - q) + 0.1


def face_like(size: int, rng: np.random.Generator) -> np.ndarray:
    """A drawn face: skin ellipse, eyes, nose, mouth on noisy background; (size, size, 3) uint8."""
    from PIL import Image, ImageDraw

    bg = rng.integers(0, 255, 3)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in bg))
    d = ImageDraw.Draw(img)
    s = size / 256
    cx, cy = size / 2 + rng.normal(0, 8) * s, size / 2 + rng.normal(0, 8) * s
    d.ellipse([cx - 70 * s, cy - 95 * s, cx + 70 * s, cy + 95 * s], fill=(224, 172, 140))
    for ex in (-30, 30):
        d.ellipse([cx + (ex - 12) * s, cy - 30 * s, cx + (ex + 12) * s, cy - 18 * s],
                  fill=(40, 30, 30))
    d.line([cx, cy - 10 * s, cx, cy + 20 * s], fill=(150, 100, 90), width=max(1, int(4 * s)))
    d.chord([cx - 28 * s, cy + 30 * s, cx + 28 * s, cy + 60 * s], 0, 180, fill=(160, 50, 60))
    arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 6, (size, size, 3))
    return arr.clip(0, 255).astype(np.uint8)


def load_images(folder: str | None, count: int, size: int, seed: int) -> torch.Tensor:
    from PIL import Image

    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.is_file())[:count]
        arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
                  for p in paths]
    else:
        rng = np.random.default_rng(seed)
        arrays = [face_like(size, rng) for _ in range(count)]
    x = torch.from_numpy(np.stack(arrays).astype(np.float32)).permute(0, 3, 1, 2)
    return x / 255 * 2 - 1


def blob_heatmaps(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 98, size, size): one Gaussian blob per landmark at a random spot, plus faint noise."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centres = torch.rand(n, 98, 2, generator=generator) * (size * 0.6) + size * 0.2
    sigma = size / 64 * 1.5
    d2 = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
    noise = torch.rand(n, 98, size, size, generator=generator) * 0.05
    return torch.exp(-d2 / (2 * sigma**2)) + noise


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of clovaai/stargan-v2")
    parser.add_argument("--images", default=None, help="folder of photos (default: drawn faces)")
    parser.add_argument("--num", type=int, default=2, help="images per comparison")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    wing = import_official(Path(args.official))
    generator = torch.Generator().manual_seed(args.seed)

    x = load_images(args.images, args.num, args.img_size, args.seed).to(device)
    ours = FAN()
    randomize(ours, generator)
    calibrate_heads(ours, x[:1])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "wing.ckpt"
        torch.save({"state_dict": ours.state_dict()}, ckpt)
        ours = load_fan(ckpt, device)
        with cuda_visible(device.type == "cuda"):
            official = wing.FAN(fname_pretrained=str(ckpt)).to(device).eval()
        # the official loader drops unknown keys silently: check both key sets match exactly
        official.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"], strict=True)
        print(f"parameters: ours {sum(p.numel() for p in ours.parameters()):,}, "
              f"official {sum(p.numel() for p in official.parameters()):,}; "
              f"official strict load of our wing.ckpt: ok")

        raw_ours = ours.get_heatmap(x, b_preprocess=False)
        raw_off = official.get_heatmap(x, b_preprocess=False)
        print(f"raw heatmaps {tuple(raw_ours.shape)}: "
              f"max |diff| {max_diff(raw_ours, raw_off):.3e}")

        m_ours = ours.get_heatmap(x)
        m_off = official.get_heatmap(x)
        for i in range(2):
            inner = ((m_off[i] > 0) & (m_off[i] < 1)).float().mean().item()
            print(f"mask{i} (get_heatmap) {tuple(m_ours[i].shape)}: max |diff| "
                  f"{max_diff(m_ours[i], m_off[i]):.3e}; mean {m_off[i].mean().item():.3f}, "
                  f"fraction strictly inside (0, 1): {inner:.3f}")

        blobs = blob_heatmaps(args.num, 256, generator).to(device)
        p_ours = face_masks(blobs.clone())
        p_off = wing.preprocess(blobs.clone())
        for i in range(2):
            print(f"mask{i} (preprocess on blob heatmaps): max |diff| "
                  f"{max_diff(p_ours[i], p_off[i]):.3e}; mean {p_off[i].mean().item():.3f}")

        lm_ours = ours.get_landmark(x).cpu()
        lm_off = official.get_landmark(x)
        print(f"landmarks {tuple(lm_ours.shape)}: max |diff| {max_diff(lm_ours, lm_off):.3e} px")

        # alignment: the first image's landmarks, rotated 10 degrees and scaled, as the mean
        lm = lm_off[0].double().numpy() * (256 / args.img_size)
        theta = np.deg2rad(10)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        ref = (lm - lm.mean(0)) @ rot.T * 0.9 + lm.mean(0) + np.array([6.0, -4.0])
        np.savez(Path(tmp) / "lm.npz", mean=ref.astype(np.float32))
        with cuda_visible(device.type == "cuda"):
            off_aligner = wing.FaceAligner(str(ckpt), str(Path(tmp) / "lm.npz"), args.img_size)
        aligner = FaceAligner(ours, np.float32(ref), args.img_size)
        matrix_diff = max(
            np.abs(similarity_matrix(lm_ * 1.0, aligner.ref) - off_aligner.landmarks2mat(lm_))
            .max() for lm_ in lm_off.double().numpy())
        print(f"alignment matrices: max |diff| {matrix_diff:.3e}")
        a_off = off_aligner.align(x.clone())
        for i in range(args.num):
            a_ours = aligner.align(x[i]).image
            diff = ((a_ours.clamp(-1, 1) - a_off[i].clamp(-1, 1)).abs() * 127.5).cpu()
            print(f"aligned image {i}: |diff| in 0-255 levels: mean {diff.mean().item():.2f}, "
                  f"99th pct {diff.flatten().quantile(0.99).item():.1f}, "
                  f"max {diff.max().item():.1f}")


if __name__ == "__main__":
    main()
