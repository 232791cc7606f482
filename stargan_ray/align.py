"""`stargan-ray align`: align face photos to the CelebA-HQ mean landmarks (the official align mode).

A model trained on CelebA-HQ expects faces placed like CelebA-HQ's. For each photo (resized to a
square, as officially) the FAN finds 98 landmarks; a similarity transform (rotation from the eye /
mouth axis, scale from eye centres and mouth corners, translation of the landmark mean) moves them
onto the mean landmarks, and the photo, padded by mirroring with a blurred fade, is warped with it.
The warp is bicubic (torch.grid_sample) where the official code used OpenCV's Lanczos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError
from .inference import load_image_tensor
from .models.fan import FAN, NUM_LANDMARKS, heatmap_peaks

LM_MEAN_HELP = ("the CelebA-HQ mean landmarks of the official StarGAN v2 release, which the "
                "official `bash download.sh wing` downloads into "
                "expr/checkpoints/celeba_lm_mean.npz")
EYE_LEFT = [*range(60, 68), 96]  # eye contour + pupil, WFLW layout
EYE_RIGHT = [*range(68, 76), 97]
MOUTH_LEFT, MOUTH_RIGHT = 76, 82
SCALE_POINTS = [96, 97, 76, 82]  # pupils and mouth corners set the scale


# ---------------------------------------------------------------------------------------------
# Similarity transform (float64 numpy, 3x3 homogeneous, maps source pixels to aligned pixels)
# ---------------------------------------------------------------------------------------------

def _translation(offset: np.ndarray) -> np.ndarray:
    t = np.eye(3)
    t[:2, 2] = offset
    return t


def face_xaxis(landmarks: np.ndarray) -> np.ndarray:
    """Unit 'horizontal' axis of a face: eye axis minus the eye-to-mouth axis rotated by 90°."""
    eye_left, eye_right = landmarks[EYE_LEFT].mean(0), landmarks[EYE_RIGHT].mean(0)
    mouth_center = (landmarks[MOUTH_LEFT] + landmarks[MOUTH_RIGHT]) * 0.5
    up = (eye_left + eye_right) * 0.5 - mouth_center
    axis = (eye_right - eye_left) - np.array([up[1], -up[0]])
    return axis / np.linalg.norm(axis)


def _rotation(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotation taking unit vector src onto unit vector dst."""
    c = float(np.clip(np.dot(src, dst), -1.0, 1.0))  # rounding could push |c| past 1 (sqrt of < 0)
    s = math.sqrt(1.0 - c * c) * np.sign(src[0] * dst[1] - src[1] * dst[0])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _scale(landmarks: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean ratio of the distances of pupils and mouth corners from the landmark mean."""
    dist = np.linalg.norm(landmarks - landmarks.mean(0), axis=1)
    dist_ref = np.linalg.norm(ref - ref.mean(0), axis=1)
    scale = (dist_ref / dist)[SCALE_POINTS].mean()
    return np.diag([scale, scale, 1.0])


def similarity_matrix(landmarks: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """3x3 matrix moving (98, 2) landmarks onto ref: centre, rotate, scale, move to ref's centre."""
    rotation = _rotation(face_xaxis(landmarks), face_xaxis(ref))
    return (_translation(ref.mean(0)) @ _scale(landmarks, ref) @ rotation
            @ _translation(-landmarks.mean(0)))


# ---------------------------------------------------------------------------------------------
# Image operations (torch, (C, H, W) float in [0, 1])
# ---------------------------------------------------------------------------------------------

def _gaussian_blur(x: torch.Tensor, sigma: int) -> torch.Tensor:
    """Separable Gaussian over (N, C, H, W), edges repeated, kernel radius 4 sigma (as scipy)."""
    if sigma <= 0:
        return x
    radius = int(4 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.size(1)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pad_mirror(img: torch.Tensor, landmarks: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Pad half the size on every side by reflection, fading into a blur of the padded image.

    The fade hides the mirrored copies of the face that a rotation would otherwise bring in.
    Returns the (C, 2H, 2W) image and the landmarks moved with it.
    """
    _, h, w = img.shape
    padded = F.pad(img[None], (w // 2, w // 2, h // 2, h // 2), mode="reflect")
    ph, pw = padded.shape[-2:]
    small = F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)
    blurred = F.interpolate(_gaussian_blur(small, ph // 100), size=(ph, pw), mode="bilinear",
                            align_corners=False)

    def ramp(n: int) -> torch.Tensor:  # 0 at both borders, 1 from a quarter of the height inwards
        r = (torch.arange(n, dtype=img.dtype, device=img.device) / (ph // 4)).clamp(0, 1)
        return torch.minimum(r, r.flip(0))

    weight = torch.minimum(ramp(ph)[:, None], ramp(pw)[None, :]) ** 4
    out = padded * weight + blurred * (1 - weight)
    return out[0], landmarks + np.array([pw // 4, ph // 4])


def warp(img: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """The top-left size x size of img warped by matrix (source -> output pixel coordinates).

    Pixel centres sit at integer coordinates (OpenCV's convention); outside the image is black.
    """
    _, h, w = img.shape
    inverse = np.linalg.inv(matrix)
    v, u = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64),
                       indexing="ij")
    src = inverse @ np.stack([u.ravel(), v.ravel(), np.ones(size * size)])
    src_x, src_y = src[0] / src[2], src[1] / src[2]
    grid = np.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], axis=-1)
    grid_t = torch.from_numpy(grid.reshape(1, size, size, 2)).to(img.device, img.dtype)
    return F.grid_sample(img[None], grid_t, mode="bicubic", padding_mode="zeros",
                         align_corners=False)[0]


# ---------------------------------------------------------------------------------------------
# Aligner
# ---------------------------------------------------------------------------------------------

def load_mean_landmarks(path: str | Path) -> np.ndarray:
    """The (98, 2) CelebA-HQ mean landmarks (256 px coordinates) from celeba_lm_mean.npz."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; it is {LM_MEAN_HELP}")
    try:
        with np.load(path, allow_pickle=False) as data:
            mean = np.asarray(data["mean"], dtype=np.float64)
    except (KeyError, ValueError, OSError) as err:
        raise ConfigError(f"{path}: expected an .npz with a 'mean' array ({LM_MEAN_HELP}); {err}")
    if mean.shape != (NUM_LANDMARKS, 2):
        raise ConfigError(f"{path}: 'mean' has shape {mean.shape}, expected ({NUM_LANDMARKS}, 2)")
    return mean


@dataclass
class AlignResult:
    image: torch.Tensor | None  # (3, size, size) in [-1, 1] (not clamped), None when skipped
    confidence: float  # mean over landmarks of the heatmap peak
    reason: str = ""  # why it was skipped


class FaceAligner:
    """Aligns (3, S, S) images in [-1, 1] to the mean landmarks, which are given at 256 px."""

    def __init__(self, fan: FAN, mean_landmarks: np.ndarray, img_size: int,
                 min_confidence: float = 0.0) -> None:
        if img_size % 64 != 0:
            raise ConfigError(f"--img-size: must be a multiple of 64 (the FAN's 64 px heatmaps), "
                              f"got {img_size}")
        self.fan = fan
        self.ref = np.asarray(mean_landmarks, dtype=np.float64) * (img_size / 256)
        self.img_size = img_size
        self.min_confidence = min_confidence

    def landmarks(self, x: torch.Tensor) -> tuple[np.ndarray, float]:
        """(98, 2) landmarks in pixels of x (3, S, S) and their confidence."""
        heatmaps = self.fan.get_heatmap(x[None], b_preprocess=False)
        points = heatmap_peaks(heatmaps)[0] * (x.size(1) // heatmaps.size(2))
        confidence = heatmaps.flatten(2).amax(2).mean().item()
        return points.double().cpu().numpy(), confidence

    def align(self, x: torch.Tensor) -> AlignResult:
        if tuple(x.shape[1:]) != (self.img_size, self.img_size):
            raise ValueError(f"expected a (3, {self.img_size}, {self.img_size}) image, got "
                             f"{tuple(x.shape)}")
        points, confidence = self.landmarks(x)
        if self.min_confidence > 0 and not confidence >= self.min_confidence:
            return AlignResult(None, confidence, f"no face found (landmark confidence "
                                                 f"{confidence:.3f} < {self.min_confidence})")
        return self.align_to(x, points, confidence)

    def align_to(self, x: torch.Tensor, points: np.ndarray, confidence: float = 1.0) -> AlignResult:
        """Warp x so that the given landmarks (98, 2) land on the mean ones (a video passes
        landmarks smoothed over time instead of each frame's own)."""
        padded, points = pad_mirror(x * 0.5 + 0.5, points)
        with np.errstate(divide="ignore", invalid="ignore"):
            matrix = similarity_matrix(points, self.ref)
        if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
            return AlignResult(None, confidence, "no face found (degenerate landmarks)")
        aligned = warp(padded, matrix, self.img_size)
        return AlignResult(aligned * 2 - 1, confidence)


# ---------------------------------------------------------------------------------------------
# Files and CLI
# ---------------------------------------------------------------------------------------------

def _write_image(x: torch.Tensor, path: Path) -> None:
    from PIL import Image

    pixels = ((x * 0.5 + 0.5) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(path)


def input_files(inp: str | Path) -> list[tuple[Path, str]]:
    """(path, relative name) of every image file under inp (recursive, sorted, listed as
    training lists images); the outputs of align_folder take the same relative names."""
    from .data import folders

    inp = Path(inp)
    if not inp.is_dir():
        raise ConfigError(f"--inp: {inp} is not a directory")
    base = inp.expanduser().resolve()
    files = [Path(p) for p in folders.list_image_files(inp)]
    if not files:
        raise ConfigError(f"--inp: {inp} holds no image files "
                          f"({', '.join(folders.IMAGE_EXTENSIONS)}, any case)")
    return [(path, path.relative_to(base).as_posix()) for path in files]


def align_folder(inp: str | Path, out: str | Path, aligner: FaceAligner,
                 device: torch.device | str = "cpu", log=print) -> tuple[list[str], list[str]]:
    """Align every image file under inp (recursive, sorted, listed as training lists images)
    into out under the same relative names; returns (aligned, skipped) relative names.

    A file that cannot be decoded is named on stderr and skipped; the rest are still aligned.
    """
    from .data import folders

    files, out = input_files(inp), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    aligned, skipped = [], []
    for path, name in files:
        try:
            x = load_image_tensor(path, aligner.img_size).to(device)
        except folders.BadImage as err:
            skipped.append(name)
            folders.report_unreadable(path, str(err))
            continue
        result = aligner.align(x)
        if result.image is None:
            skipped.append(name)
            log(f"skipped {name}: {result.reason}")
            continue
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        _write_image(result.image, out / name)
        aligned.append(name)
        log(f"aligned {name} (landmark confidence {result.confidence:.3f})")
    return aligned, skipped


__all__ = ["FaceAligner", "AlignResult", "align_folder", "input_files", "similarity_matrix",
           "pad_mirror", "warp", "load_mean_landmarks"]
