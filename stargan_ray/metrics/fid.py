"""FID with the official StarGAN v2 protocol, computed from moment sums that shards can add.

Protocol (the numbers users compare with the paper): torchvision's Inception v3 with ImageNet
weights, its blocks called directly (no transform_input), 2048-d average-pool features; every image
goes through PIL: resized to img_size, then to 299x299 (bilinear), scaled to [0, 1] and normalised
with ImageNet mean/std; generated images are first quantised to uint8 exactly as the official PNG
round trip does. Statistics are the mean and the unbiased covariance; the distance uses scipy's
sqrtm, and reports the real part as the official code does.

Features are accumulated as float64 sums (n, sum x, sum x x^T), so statistics computed on any split
of the images add up to those of the whole. Plain torch/numpy/scipy: no Ray here.
"""

from __future__ import annotations

import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.models.inception import BasicConv2d, Inception3

from ..data import folders
from ..storage import atomic_write
from .weights import FeatureWeights, calibrate_batchnorm

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATS_VERSION = 2  # part of every cache key; bump when the protocol changes (2: rows cached)


# ---------------------------------------------------------------- the network


class InceptionFeatures(nn.Module):
    """Inception v3 up to the 2048-d average pool, as the official wrapper calls it.

    folded: batch norms folded into the convolutions and inputs laid out channels-last
    (fold_batchnorm).
    """

    def __init__(self, inception: Inception3) -> None:
        super().__init__()
        self.folded = False
        pool = nn.MaxPool2d(kernel_size=3, stride=2)
        self.blocks = nn.Sequential(
            inception.Conv2d_1a_3x3, inception.Conv2d_2a_3x3, inception.Conv2d_2b_3x3, pool,
            inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3, pool,
            inception.Mixed_5b, inception.Mixed_5c, inception.Mixed_5d, inception.Mixed_6a,
            inception.Mixed_6b, inception.Mixed_6c, inception.Mixed_6d, inception.Mixed_6e,
            inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c,
            nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, 299, 299) ImageNet-normalised -> (N, 2048)."""
        if self.folded:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.blocks(x).flatten(1)


@torch.no_grad()
def fold_batchnorm(net: InceptionFeatures) -> InceptionFeatures:
    """The same function with each eval-mode batch norm folded into the convolution before it,
    laid out channels-last: 1.75x faster on a 2-core CPU (benchmarks/eval.py), features equal up
    to float32 rounding (tests/test_fid.py). Changes net in place and returns it.

    Every torchvision BasicConv2d is conv (no bias) -> batch norm -> ReLU, and an eval-mode batch
    norm is a per-channel affine map, so the pair is one convolution with scaled weights and a bias;
    the norm becomes the identity. Its state dict has conv biases and no bn entries, so a copy is
    rebuilt by folding a fresh network first, then loading.
    """
    for module in net.modules():
        if isinstance(module, BasicConv2d) and isinstance(module.bn, nn.BatchNorm2d):
            conv, bn = module.conv, module.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                               stride=conv.stride, padding=conv.padding, bias=True)
            folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            folded.bias.copy_(bn.bias - bn.running_mean * scale)
            module.conv, module.bn = folded.to(conv.weight.device), nn.Identity()
    net.folded = True
    return net.to(memory_format=torch.channels_last).eval().requires_grad_(False)


def calibration_inputs(seed: int, n: int = 8) -> torch.Tensor:
    """Seeded random images (ImageNet-normalised) for batch-norm calibration.

    Random colour grids from 4x4 to 299x299 cells, upsampled smoothly and blockily: flat regions,
    edges and pixel noise, so the features of photos, drawn shapes and noisy early generator
    outputs all stay near the range the batch norms were calibrated on.
    """
    g = torch.Generator().manual_seed(seed)
    grids = (4, 16, 64, INCEPTION_SIZE)
    images = []
    for i in range(n):
        cells = grids[i % len(grids)]
        low = torch.rand((1, 3, cells, cells), generator=g)
        if (i // len(grids)) % 2:
            images.append(nn.functional.interpolate(low, size=INCEPTION_SIZE, mode="nearest"))
        else:
            images.append(nn.functional.interpolate(low, size=INCEPTION_SIZE, mode="bilinear",
                                                    align_corners=False))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.cat(images) - mean) / std


def random_inception3(seed: int) -> Inception3:
    """torchvision's Inception v3 with seeded random weights and calibrated batch norms."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inception = Inception3(aux_logits=True, init_weights=True)
    calibrate_batchnorm(InceptionFeatures(inception), calibration_inputs(seed))
    return inception.eval()


def build_inception(weights: FeatureWeights, device: torch.device | str = "cpu",
                    folded: bool = False) -> InceptionFeatures:
    """The FID network: pretrained file, or seeded random init with calibrated batch norms;
    folded: batch norms folded into the convolutions (eval.inception_folded, fold_batchnorm)."""
    if weights.kind == "random":
        net = InceptionFeatures(random_inception3(weights.seed))
    else:
        inception = Inception3(aux_logits=True, init_weights=False)
        inception.load_state_dict(weights.state_dict("inception"))
        net = InceptionFeatures(inception)
    net = net.eval().requires_grad_(False)
    return (fold_batchnorm(net) if folded else net).to(device)


@functools.lru_cache(maxsize=4)
def cached_inception(weights: FeatureWeights, device: str,
                     folded: bool = False) -> InceptionFeatures:
    """One network per process, device and form: repeated evaluations (training, Tune) reuse it."""
    return build_inception(weights, device, folded)


def inception_from_state(state: dict[str, torch.Tensor], folded: bool) -> InceptionFeatures:
    """Rebuild a network from its state dict (a Ray worker's copy); a folded one is folded first,
    so that its keys (conv biases, no batch norms) fit."""
    net = InceptionFeatures(Inception3(aux_logits=True, init_weights=False))
    if folded:
        net = fold_batchnorm(net)
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def inception_id(weights: FeatureWeights, folded: bool) -> str:
    """The cache identity of the features: the weights file and the network's form."""
    return weights.id("inception") + ("+folded" if folded else "")


# ---------------------------------------------------------------- images


def inception_transform(img_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The official FID loader's transform (PIL bilinear resizes, ToTensor, ImageNet Normalize)."""
    return transforms.Compose([
        transforms.Resize([img_size, img_size]),
        transforms.Resize([INCEPTION_SIZE, INCEPTION_SIZE]),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def quantize(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, the pixels the official PNG files hold.

    Same float32 operations in the same order as the official denormalize + save_image.
    """
    x01 = ((x.detach().float() + 1) / 2).clamp(0, 1)
    return x01.mul(255).add(0.5).clamp(0, 255).permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()


def uint8_to_inception(images: np.ndarray, img_size: int) -> torch.Tensor:
    """Quantised images (N, H, W, 3) -> Inception input (N, 3, 299, 299)."""
    transform = inception_transform(img_size)
    return torch.stack([transform(Image.fromarray(image)) for image in images])


def list_images(folder: str | Path) -> list[Path]:
    """Image files under folder (recursive, sorted), with training's extensions in any case.

    The official listdir took only png/jpg/jpeg/JPG; the files it took are all still taken.
    """
    return [Path(p) for p in folders.list_image_files(folder)]


def load_for_inception(path: str | Path, img_size: int) -> torch.Tensor:
    """One file through the official transform; raises BadImage for an unreadable file.

    Decoded as training decodes (8-bit RGB files give the official pixels; 16-bit ones are scaled).
    """
    return inception_transform(img_size)(folders.load_image(path))


def _load_or_reason(path: str | Path, img_size: int) -> torch.Tensor | str:
    try:
        return load_for_inception(path, img_size)
    except folders.BadImage as err:
        return str(err)


# ---------------------------------------------------------------- moment sums


@dataclass
class FeatureMoments:
    """n, sum x and sum x x^T of features in float64, and the features themselves: shards combine
    by addition (rows by concatenation). The rows serve KID and the small-set Frechet trace; the
    network's float32 features are kept as they are, so nothing is rounded."""

    n: int
    sum: torch.Tensor  # (d,) float64
    outer: torch.Tensor  # (d, d) float64
    # (n, d) float32 on the CPU, as chunks (concatenated when read); None: sums from elsewhere
    row_chunks: list[torch.Tensor] | None = None

    @property
    def rows(self) -> torch.Tensor | None:
        if self.row_chunks is None:
            return None
        if len(self.row_chunks) != 1:
            dim = self.sum.shape[0]
            self.row_chunks = [torch.cat(self.row_chunks) if self.row_chunks
                               else torch.zeros(0, dim, dtype=torch.float32)]
        return self.row_chunks[0]

    @classmethod
    def zeros(cls, dim: int = FEATURE_DIM, device: torch.device | str = "cpu") -> "FeatureMoments":
        return cls(0, torch.zeros(dim, dtype=torch.float64, device=device),
                   torch.zeros(dim, dim, dtype=torch.float64, device=device), [])

    @classmethod
    def of(cls, features: torch.Tensor | np.ndarray) -> "FeatureMoments":
        features = torch.as_tensor(features)
        moments = cls.zeros(features.shape[1], features.device)
        moments.add(features)
        return moments

    def add(self, features: torch.Tensor) -> None:
        """Accumulate a batch of features (N, d) in place."""
        f = features.detach().to(self.sum.device, torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        if self.row_chunks is not None:
            self.row_chunks.append(features.detach().float().cpu())

    def __add__(self, other: "FeatureMoments") -> "FeatureMoments":
        rows = (None if self.row_chunks is None or other.row_chunks is None
                else [*self.row_chunks, *other.row_chunks])
        return FeatureMoments(self.n + other.n, self.sum + other.sum.to(self.sum.device),
                              self.outer + other.outer.to(self.outer.device), rows)

    def cpu(self) -> "FeatureMoments":
        return FeatureMoments(self.n, self.sum.cpu(), self.outer.cpu(), self.row_chunks)

    def rows_numpy(self) -> np.ndarray | None:
        return None if self.rows is None else self.rows.numpy()

    def mean(self) -> np.ndarray:
        return (self.sum / self.n).cpu().numpy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance, as np.cov(features, rowvar=False)."""
        mu = self.sum / self.n
        return ((self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)).cpu().numpy()

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file + rename): concurrent readers never see half a file."""
        extra = {} if self.rows is None else {"rows": self.rows.numpy()}
        atomic_write(path, lambda f: np.savez(f, n=self.n, sum=self.sum.cpu().numpy(),
                                              outer=self.outer.cpu().numpy(), **extra))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureMoments":
        with np.load(path) as data:
            rows = [torch.from_numpy(data["rows"])] if "rows" in data.files else None
            return cls(int(data["n"]), torch.from_numpy(data["sum"]),
                       torch.from_numpy(data["outer"]), rows)


def stats_key(files: Sequence[str | Path], img_size: int, weights_id: str) -> str:
    """Content key of a folder's statistics: file list, sizes, mtimes, image size, weights."""
    digest = hashlib.sha256(f"v{STATS_VERSION}|{img_size}|{weights_id}".encode())
    for path in files:
        stat = os.stat(path)
        digest.update(f"|{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


@torch.inference_mode()
def features_of_files(paths: Sequence[str | Path], img_size: int, inception: nn.Module,
                      batch_size: int, device: torch.device | str,
                      on_batch: Callable[[int], None] | None = None,
                      on_bad: Callable[[str, str], None] | None = None) -> FeatureMoments:
    """Moment sums of the Inception features of image files (decoded in a thread pool).

    A file that cannot be decoded is left out and passed to on_bad(path, reason) (default: one
    warning line naming it); moments.n counts the files used.
    """
    on_bad = on_bad or folders.report_unreadable
    moments = FeatureMoments.zeros(device=device)
    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            loaded = list(pool.map(lambda p: _load_or_reason(p, img_size), chunk))
            good = [x for x in loaded if isinstance(x, torch.Tensor)]
            for path, x in zip(chunk, loaded):
                if isinstance(x, str):
                    on_bad(str(path), x)
            if good:
                moments.add(inception(torch.stack(good).to(device)))
            if on_batch is not None:
                on_batch(len(chunk))
    return moments


# ---------------------------------------------------------------- the distance
# The Frechet math lives in frechet.py; these names stay importable from here.
from .frechet import FrechetResult, frechet_distance  # noqa: E402


def fid_from_moments(a: FeatureMoments, b: FeatureMoments, method: str = "auto") -> FrechetResult:
    """FID of two feature sets; method "auto" uses their rows for sets smaller than the dimension."""
    result = frechet_distance(a.mean(), a.cov(), b.mean(), b.cov(), method=method,
                              rows1=a.rows_numpy(), rows2=b.rows_numpy())
    dim = a.sum.shape[0]
    few = min(a.n, b.n)
    if few < dim:
        result.warnings.insert(0, f"{few} images is fewer than the {dim} feature dimensions: the "
                                  "covariance is singular and FID is biased upward; compare only "
                                  "FIDs computed from equally many images")
    return result


def list_pair(dir_a: str | Path, dir_b: str | Path) -> tuple[list[Path], list[Path]]:
    """The image files of both folders; a ConfigError naming the folder when one has < 2."""
    from ..config import ConfigError

    listed = (list_images(dir_a), list_images(dir_b))
    for folder, files in zip((dir_a, dir_b), listed):
        if len(files) < 2:
            raise ConfigError(f"{folder}: found {len(files)} image file(s) "
                              f"({', '.join(folders.IMAGE_EXTENSIONS)}), FID needs at least 2")
    return listed


def fid_folders(dir_a: str | Path, dir_b: str | Path, weights: FeatureWeights, *,
                img_size: int = 256, batch_size: int = 50,
                device: torch.device | str = "cpu", folded: bool | None = None) -> FrechetResult:
    """FID between two image folders (the official calculate_fid_given_paths).

    Files that cannot be decoded are named (one warning line each) and left out. folded: see
    fold_batchnorm (False: torchvision's modules as they are; None: eval.inception_folded's
    default).
    """
    from ..config import ConfigError, EvalConfig
    from .memory import check_memory, decode_bytes, inception_bytes

    if folded is None:
        folded = EvalConfig().inception_folded

    listed = list_pair(dir_a, dir_b)
    check_memory(device, decode_bytes(img_size), inception_bytes(batch_size),
                 f"fid at --img-size {img_size} with --batch-size {batch_size}",
                 "lower --batch-size (or --img-size)")
    inception = cached_inception(weights, str(device), folded)
    moments = []
    for folder, files in zip((dir_a, dir_b), listed):
        part = features_of_files(files, img_size, inception, batch_size, device)
        if part.n < 2:
            raise ConfigError(f"{folder}: {part.n} of {len(files)} image files could be read "
                              "(the others are named above), FID needs at least 2")
        moments.append(part)
    return fid_from_moments(*moments)


__all__ = ["InceptionFeatures", "fold_batchnorm", "inception_from_state", "inception_id",
           "build_inception", "random_inception3", "cached_inception",
           "inception_transform", "quantize", "uint8_to_inception", "list_images",
           "list_pair", "load_for_inception", "FeatureMoments", "stats_key", "features_of_files",
           "FrechetResult", "frechet_distance", "fid_from_moments", "fid_folders",
           "INCEPTION_SIZE", "FEATURE_DIM"]
