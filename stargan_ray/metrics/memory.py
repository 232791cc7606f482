"""What an evaluation batch needs in memory, against what the device has, checked before it runs.

A batch too large for the machine is a one-line error naming both numbers (the kernel's
out-of-memory killer gives no message at all). The figures are estimates of the largest buffers
alive at once, not exact peaks:
- Inception v3 at 299 px: 12.7 MB of activations per image, measured on CPU in inference mode
  (peak RSS of batches of 4 and 16 images, torchvision Inception3 with InceptionFeatures);
  counted as 16 MB, plus the input tensor;
- decoding: each of the loader's threads holds an image at img_size (PIL uint8) and its resize;
- the generator: a few feature maps of its widest layer (dim_in channels at img_size) per image,
  the sources and every output kept for LPIPS.
Plain torch: no Ray.
"""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

import torch

from ..config import ConfigError, ExperimentConfig

INCEPTION_SIZE = 299  # fid.INCEPTION_SIZE (fid imports this module, so not from there)
INCEPTION_BYTES_PER_IMAGE = 16 * 2**20
DECODE_THREADS = 4  # fid.features_of_files' pool
LIVE_FEATURE_MAPS = 4  # generator feature maps of the widest layer alive at once (estimate)
FLOAT = 4


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory of device: a CUDA device's free memory (torch.cuda.mem_get_info) plus what
    this process's allocator holds unused, else the host's available RAM (/proc/meminfo
    MemAvailable, else sysconf); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + cached
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def decode_bytes(img_size: int) -> int:
    """Host memory of the loader threads: an image at img_size and its resize, per thread."""
    return DECODE_THREADS * 2 * 3 * img_size ** 2


def inception_bytes(batch_size: int) -> int:
    """Device memory of one Inception batch: its 299 px inputs and activations."""
    return batch_size * (3 * INCEPTION_SIZE ** 2 * FLOAT + INCEPTION_BYTES_PER_IMAGE)


def generator_bytes(cfg: ExperimentConfig, kept_outputs: int) -> int:
    """Device memory of one evaluation item: data.val_batch_size sources through G, with
    kept_outputs outputs of each alive at once (all of them when LPIPS needs them, else 1)."""
    m, n = cfg.model, cfg.data.val_batch_size
    pixels = m.img_size ** 2
    images = n * (kept_outputs + 1) * 3 * pixels * FLOAT
    return images + n * LIVE_FEATURE_MAPS * (m.dim_in or 1) * pixels * FLOAT


def check_memory(device: torch.device | str, host: int, on_device: int, what: str,
                 fix: str) -> None:
    """ConfigError when host + on_device bytes (on a CPU) or either part (on a GPU) exceed what
    is available; what names the work, fix the settings that shrink it."""
    device = torch.device(device)
    parts = [("cpu", host + on_device)] if device.type == "cpu" else \
        [("cpu", host), (str(device), on_device)]
    for where, need in parts:
        have = available_bytes(where)
        if have is not None and need > have:
            raise ConfigError(f"{what} needs about {_size(need)} of memory at once, more than "
                              f"the {_size(have)} available on {where}; {fix}")


def give_back(device: torch.device | str) -> None:
    """Return the memory an evaluation freed to the system: collect reference cycles, on CUDA
    release the caching allocator's unused blocks, and trim glibc's heap (malloc keeps freed
    pages of large activations otherwise: after three toy fid_quick calls in one process and the
    network dropped, trimming took its RSS from 1075 to 801 MB). A no-op without glibc."""
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        pass


def _size(n: int) -> str:
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


__all__ = ["available_bytes", "decode_bytes", "inception_bytes", "generator_bytes",
           "check_memory", "give_back"]
