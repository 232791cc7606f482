"""FAN: the frozen face-landmark network ("Adaptive Wing Loss", ICCV 2019) and w_hpf's face masks.

Module and parameter names follow the official StarGAN v2 FAN, so the released ``wing.ckpt``
(``{'state_dict': ...}``) loads with strict=True. The network predicts 98 WFLW landmark heatmaps
plus one boundary channel at 64x64 from a 256x256 image in [0, 1]; ``get_heatmap`` turns them into
the two soft face masks that gate the generator's high-pass skips. ``get_landmark`` gives landmark
coordinates for face alignment (stargan_ray/align.py).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError

FAN_SIZE = 256  # the FAN sees 256x256 images; its coordinate channels are fixed to that size
NUM_LANDMARKS = 98  # WFLW layout

# Landmark index ranges [start, end) of the WFLW layout, as the official mask preprocessing uses.
CHIN = (8, 25)  # face line without its 8 outermost points on each side
EYEBROWS = (33, 51)
EYEBROW_EDGES = (33, 46)  # the two points themselves: outer eyebrow ends
NOSE = (51, 55)
NOSTRILS = (55, 60)
EYES = (60, 76)
LIP_EDGES = (76, 82)  # mouth corners (points) and the start of the lips (range)
LIP_UPPER = (77, 82)
LIP_LOWER = (83, 88)
LIP_INNER = (88, 96)


class WingCheckpointError(ConfigError):
    """The FAN checkpoint (wing.ckpt) is missing or does not hold the FAN's weights."""


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

class AddCoordsTh(nn.Module):
    """Appends normalised row / column coordinates (and their radius) to the input channels.

    The coordinates are non-persistent buffers: they follow .to(device) and stay out of the state
    dict, like the official plain attributes. The official boundary channels are never fed in a
    single-stack FAN (the hourglass gets no previous heatmap), so they are not built here.
    """

    def __init__(self, height: int, width: int, with_r: bool) -> None:
        super().__init__()
        rows = torch.arange(height).unsqueeze(1).expand(height, width).float()
        cols = torch.arange(width).unsqueeze(0).expand(height, width).float()
        rows = (rows / (height - 1)) * 2 - 1
        cols = (cols / (width - 1)) * 2 - 1
        coords = torch.stack([rows, cols], dim=0)
        if with_r:
            rr = torch.sqrt(torch.pow(rows, 2) + torch.pow(cols, 2))
            coords = torch.cat([coords, (rr / torch.max(rr)).unsqueeze(0)], dim=0)
        self.register_buffer("coords", coords.unsqueeze(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coords = self.coords.to(x.dtype).expand(x.size(0), -1, -1, -1)
        return torch.cat([x, coords], dim=1)


class CoordConvTh(nn.Module):
    """CoordConv: a convolution over the input plus its coordinate channels."""

    def __init__(self, height: int, width: int, with_r: bool, in_channels: int,
                 out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.addcoords = AddCoordsTh(height, width, with_r)
        in_channels += 3 if with_r else 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.addcoords(x))


def _conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, 1, 1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation block of three 3x3 convs (widths out/2, out/4, out/4), concatenated."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, out_planes // 2)
        self.bn2 = nn.BatchNorm2d(out_planes // 2)
        self.conv2 = _conv3x3(out_planes // 2, out_planes // 4)
        self.bn3 = nn.BatchNorm2d(out_planes // 4)
        self.conv3 = _conv3x3(out_planes // 4, out_planes // 4)
        self.downsample = None
        if in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_planes), nn.ReLU(True),
                nn.Conv2d(in_planes, out_planes, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat((out1, out2, out3), 1) + residual


class HourGlass(nn.Module):
    """A CoordConv, then a recursive hourglass of ConvBlocks (b1_/b2_/b2_plus_/b3_ + level)."""

    def __init__(self, depth: int = 4, num_features: int = 256) -> None:
        super().__init__()
        self.depth = depth
        self.coordconv = CoordConvTh(64, 64, True, num_features, num_features, kernel_size=1)
        self._add_level(depth, num_features)

    def _add_level(self, level: int, features: int) -> None:
        self.add_module(f"b1_{level}", ConvBlock(features, features))
        self.add_module(f"b2_{level}", ConvBlock(features, features))
        if level > 1:
            self._add_level(level - 1, features)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(features, features))
        self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        up1 = self._modules[f"b1_{level}"](x)
        low = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2, stride=2))
        if level > 1:
            low = self._level(level - 1, low)
        else:
            low = self._modules[f"b2_plus_{level}"](low)
        low = self._modules[f"b3_{level}"](low)
        return up1 + F.interpolate(low, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, self.coordconv(x))


class FAN(nn.Module):
    """Single-stack FAN: 256 px image in [0, 1] -> (N, 99, 64, 64) heatmaps: 98 landmarks, boundary.

    Frozen: no parameter requires grad and the module stays in eval mode even when .train() is
    called, so its batch norms always use the released running statistics.
    """

    def __init__(self, num_landmarks: int = NUM_LANDMARKS) -> None:
        super().__init__()
        self.conv1 = CoordConvTh(FAN_SIZE, FAN_SIZE, True, 3, 64, kernel_size=7, stride=2,
                                 padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        self.m0 = HourGlass(depth=4, num_features=256)
        self.top_m_0 = ConvBlock(256, 256)
        self.conv_last0 = nn.Conv2d(256, 256, 1, 1, 0)
        self.bn_end0 = nn.BatchNorm2d(256)
        self.l0 = nn.Conv2d(256, num_landmarks + 1, 1, 1, 0)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FAN":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        x = self.conv4(self.conv3(x))
        x = self.top_m_0(self.m0(x))
        x = F.relu(self.bn_end0(self.conv_last0(x)))
        return self.l0(x)

    def _landmark_heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in [-1, 1] -> (N, 98, 64, 64) heatmaps, boundary channel dropped.

        Runs in the FAN's own precision even under autocast: the mask thresholds and min-max
        normalisation are those of the float32 official code.
        """
        with torch.autocast(x.device.type, enabled=False):
            x = F.interpolate(x.to(self.l0.weight.dtype), size=FAN_SIZE, mode="bilinear",
                              align_corners=False)
            return self(x * 0.5 + 0.5)[:, :-1]

    @torch.no_grad()
    def get_heatmap(self, x: torch.Tensor, b_preprocess: bool = True
                    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) in [-1, 1] -> the masks (mask0, mask1), each (N, 1, 256, 256) in [0, 1].

        mask0 covers the whole face, mask1 the face without face line, mouth and eyebrows.
        With b_preprocess=False: the raw (N, 98, 64, 64) landmark heatmaps.
        """
        heatmaps = self._landmark_heatmaps(x)
        if not b_preprocess:
            return heatmaps
        heatmaps = F.interpolate(heatmaps, scale_factor=FAN_SIZE // heatmaps.size(2),
                                 mode="bilinear", align_corners=True)
        return face_masks(heatmaps)

    @torch.no_grad()
    def get_landmark(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in [-1, 1] -> (N, 98, 2) landmark (x, y) in pixels of x."""
        heatmaps = self._landmark_heatmaps(x)
        return heatmap_peaks(heatmaps) * (x.size(2) // heatmaps.size(2))


def heatmap_peaks(heatmaps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2) (x, y) of each channel's maximum, in heatmap pixels.

    As the official: the arg-max pixel moved a quarter pixel towards its larger neighbour in x
    and in y (interior pixels only), then half a pixel back (argmax + 1 - 0.5 in its 1-based terms).
    """
    n, c, h, w = heatmaps.shape
    idx = heatmaps.flatten(2).argmax(dim=2)
    px, py = idx % w, idx // w
    preds = torch.stack([px, py], dim=-1).to(heatmaps.dtype)

    interior = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    flat = heatmaps.flatten(2)

    def at(dx: int, dy: int) -> torch.Tensor:
        xi = (px + dx).clamp(0, w - 1)
        yi = (py + dy).clamp(0, h - 1)
        return flat.gather(2, (yi * w + xi).unsqueeze(2)).squeeze(2)

    diff = torch.stack([at(1, 0) - at(-1, 0), at(0, 1) - at(0, -1)], dim=-1)
    preds = preds + torch.where(interior.unsqueeze(-1), diff.sign() * 0.25, 0.0)
    return preds + 0.5


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------

def _normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Min-max normalise each (sample, channel) map to [0, 1]."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w)
    max_val = flat.max(dim=1, keepdim=True)[0]
    min_val = flat.min(dim=1, keepdim=True)[0]
    return ((flat - min_val) / (max_val - min_val + eps)).view(n, c, h, w)


def _shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """Cyclically move heatmaps n pixels up (n > 0) or down (n < 0), as the official shift."""
    return torch.roll(x, shifts=-n, dims=2)


def face_masks(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 98, H, W) landmark heatmaps -> (mask0, mask1), each (N, 1, H, W) in [0, 1].

    The official preprocessing: drop values below 0.1, min-max normalise each map, then move and
    sharpen (power) each facial part so the sum covers the face, zero the outer face line and the
    eyebrow / lip end points. mask1 also drops face line, lips and eyebrows. Unlike the official
    code, NaNs are zeroed in both masks (it only cleaned mask0); the masks agree otherwise.
    """
    x = _normalize(torch.where(heatmaps < 0.1, torch.zeros_like(heatmaps), heatmaps))
    sw = x.size(2) // 256  # shifts are in pixels of a 256 px map
    for (start, end), n, p in ((CHIN, 0, 3), (EYEBROWS, -7 * sw, 2), (NOSTRILS, 8 * sw, 4),
                               (LIP_UPPER, -8 * sw, 4), (LIP_LOWER, 8 * sw, 4),
                               (LIP_INNER, -2 * sw, 3)):
        x[:, start:end] = _shift(x[:, start:end], n) ** p

    zero_out = [*range(0, CHIN[0]), *range(CHIN[1], EYEBROWS[0]),
                EYEBROW_EDGES[0], EYEBROW_EDGES[1], LIP_EDGES[0], LIP_EDGES[1]]
    x[:, zero_out] = 0

    x[:, NOSE[0] + 1:NOSE[1]] = _shift(x[:, NOSE[0] + 1:NOSE[1]], 4 * sw)  # nose tip moves up
    eyes = x[:, EYES[0]:EYES[1]]
    x[:, EYES[0]:EYES[1]] = _shift(eyes, -8) ** 3 + _shift(eyes, -24)  # eyes spread downwards

    x2 = x.clone()
    for start, end in (CHIN, (LIP_EDGES[0], LIP_INNER[1]), EYEBROWS):
        x2[:, start:end] = 0

    masks = []
    for m in (x.sum(dim=1, keepdim=True), x2.sum(dim=1, keepdim=True)):
        masks.append(torch.where(torch.isnan(m), torch.zeros_like(m), m).clamp_(0, 1))
    return masks[0], masks[1]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

WING_HELP = ("the FAN landmark checkpoint of the official StarGAN v2 release, which the official "
             "`bash download.sh wing` downloads into expr/checkpoints/wing.ckpt")


def load_fan(path: str | Path, device: torch.device | str) -> FAN:
    """Build the frozen FAN from a ``wing.ckpt`` file ({'state_dict': weights}) on ``device``.

    Every parameter and buffer must be in the file and nothing else may be; the only tolerated
    gap is BatchNorm's ``num_batches_tracked`` counter, which eval mode never reads.
    """
    path = Path(path)
    if not path.is_file():
        raise WingCheckpointError(
            f"{path}: no such file; it is {WING_HELP}. Put it there or point model.wing_path "
            "(align: --wing) at it; `--set model.w_hpf=0` trains the non-paper variant "
            "without face masks instead")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WingCheckpointError(
            f"{path}: not a plain tensor checkpoint (loading with weights_only=True refuses its "
            f"contents); expected {WING_HELP}") from None
    except Exception as err:  # torch.load fails with many types on foreign files
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        raise WingCheckpointError(f"{path}: cannot be read (weights only) as {WING_HELP}; "
                                  f"{reason}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WingCheckpointError(
            f"{path}: expected a dict with a 'state_dict' entry ({WING_HELP})")

    fan = FAN()
    state = checkpoint["state_dict"]
    expected = fan.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WingCheckpointError(
            f"{path}: not the FAN's weights: missing keys {_preview(missing)}, "
            f"unexpected keys {_preview(unexpected)}")
    try:
        fan.load_state_dict({**expected, **state}, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise WingCheckpointError(f"{path}: {' '.join(str(err).split())}") from None
    return fan.to(device)


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


__all__ = ["FAN", "WingCheckpointError", "face_masks", "heatmap_peaks", "load_fan"]
