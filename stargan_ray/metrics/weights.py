"""Feature-network weights for the metrics: torchvision's Inception v3 (FID) and AlexNet (LPIPS).

Pretrained files come from a configured path (eval.inception_path / eval.alexnet_path) or
torchvision's cache, $TORCH_HOME/hub/checkpoints. A missing file is downloaded once when the network
allows it; otherwise the error names the file, its size, its URL and where to put it. Random
weights are used only when asked for by name (eval.feature_weights = "random"); they are seeded,
so two runs agree, and their id says "random" wherever a number is written.

Plain torch: no Ray here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import AlexNet_Weights, Inception_V3_Weights

from ..checkpoint import safe_load
from ..config import ConfigError, EvalConfig

# The weights the official StarGAN v2 evaluation uses (torchvision's pretrained=True).
TORCHVISION_WEIGHTS = {
    "inception": Inception_V3_Weights.IMAGENET1K_V1,  # inception_v3_google-0cc3c7bd.pth
    "alexnet": AlexNet_Weights.IMAGENET1K_V1,  # alexnet-owt-7be5be79.pth
}
CONFIG_KEYS = {"inception": "eval.inception_path", "alexnet": "eval.alexnet_path"}
RANDOM_SEED = 0  # fixed: random weights are a smoke test, not a hyperparameter
DOWNLOAD_TIMEOUT_S = 30


class MissingWeightsError(ConfigError):
    """A pretrained weights file that is neither on disk nor downloadable."""


def file_name(kind: str) -> str:
    return Path(TORCHVISION_WEIGHTS[kind].url).name


def cache_dir() -> Path:
    """torchvision's cache of pretrained files: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_message(kind: str, target: Path, reason: str) -> str:
    weights = TORCHVISION_WEIGHTS[kind]
    size_mib = weights.meta.get("_file_size")
    size = f"{size_mib:.1f} MiB" if size_mib else "size unknown"
    return (f"{file_name(kind)} ({size}, {weights.url}) not found and not downloadable ({reason}); "
            f"put it at {target} or set {CONFIG_KEYS[kind]}=PATH; eval.feature_weights=random "
            f"(--feature-weights random) runs without it, for smoke tests only")


def _download(url: str, target: Path) -> None:
    """Fetch url into target atomically; torchvision names its files with a sha256 prefix."""
    prefix = Path(url).stem.rsplit("-", 1)[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
        if not digest.hexdigest().startswith(prefix):
            raise OSError(f"downloaded file does not match its hash prefix {prefix}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def resolve_file(kind: str, path: str = "", download: bool = True) -> Path:
    """The pretrained file for kind ("inception" | "alexnet"): the given path or the cache."""
    if path:
        given = Path(path).expanduser()
        if not given.is_file():
            raise MissingWeightsError(_missing_message(kind, given, f"{CONFIG_KEYS[kind]}={path} "
                                                       "is not a file"))
        return given
    target = cache_dir() / file_name(kind)
    if target.is_file():
        return target
    if not download:
        raise MissingWeightsError(_missing_message(kind, target, "download disabled"))
    try:
        _download(TORCHVISION_WEIGHTS[kind].url, target)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise MissingWeightsError(_missing_message(kind, target, str(err).strip() or
                                                   type(err).__name__)) from None
    return target


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_id(path: Path) -> str:
    """Content identity of a weights file (name and sha256 prefix), for cache keys and JSON."""
    stat = path.stat()
    return f"{path.name}:{_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)[:16]}"


@dataclass(frozen=True)
class FeatureWeights:
    """Which weights the feature networks use: "pretrained" files or seeded "random" ones.

    Built on the driver, where a missing file fails early; paths are absolute so Ray workers on the
    same (or a shared) file system load the same files.
    """

    kind: str  # "pretrained" | "random"
    inception_path: str = ""
    alexnet_path: str = ""
    seed: int = RANDOM_SEED

    @classmethod
    def from_config(cls, eval_cfg: EvalConfig, need: tuple[str, ...] = ("inception", "alexnet"),
                    download: bool = True) -> "FeatureWeights":
        """Resolve the configured weights; only the networks in need must have their files."""
        if eval_cfg.feature_weights == "random":
            return cls("random")
        if eval_cfg.feature_weights != "pretrained":
            raise ConfigError(f"eval.feature_weights: must be pretrained or random, got "
                              f"{eval_cfg.feature_weights!r}")
        paths = {kind: str(resolve_file(kind, getattr(eval_cfg, f"{kind}_path"),
                                        download).resolve())
                 for kind in need}
        weights = cls("pretrained", paths.get("inception", ""), paths.get("alexnet", ""))
        for kind in need:  # a truncated or foreign file is named here, before any worker starts
            weights.state_dict(kind, mmap=True)
        return weights

    def id(self, kind: str) -> str:
        """What the features of one network depend on: the file's content, or seed + versions."""
        if self.kind == "random":
            return f"random-seed{self.seed}-torchvision{torchvision.__version__.split('+')[0]}"
        return file_id(Path(self.inception_path if kind == "inception" else self.alexnet_path))

    def state_dict(self, kind: str, mmap: bool = False) -> dict[str, torch.Tensor]:
        path = self.inception_path if kind == "inception" else self.alexnet_path
        return safe_load(path, mmap=mmap,
                         expected=f"torchvision's {file_name(kind)} ({CONFIG_KEYS[kind]})")


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, inputs: torch.Tensor) -> None:
    """Set every batch-norm's running statistics to those of one forward pass over inputs.

    Randomly initialised networks keep running mean 0 / variance 1, so activations grow layer by
    layer in eval mode (Inception features reach ~1e11 and FIDs ~1e22). One train-mode pass with a
    cumulative average (momentum None) makes each layer see normalised inputs, as after training.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = module.training
    module.train()
    try:
        module(inputs)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        module.train(was_training)


__all__ = ["FeatureWeights", "MissingWeightsError", "resolve_file", "file_id", "file_name",
           "cache_dir", "calibrate_batchnorm", "TORCHVISION_WEIGHTS", "RANDOM_SEED"]
