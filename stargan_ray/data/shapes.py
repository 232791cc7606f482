"""How a photo that is not square becomes the square the networks take (``data.fit``, ``--fit``).

- ``stretch`` (default, the official behaviour): the whole photo is resized to a square, so a
  landscape photo is squashed sideways.
- ``crop``: the centred square of side min(width, height); what lies outside it is lost.
- ``pad``: the whole photo, centred on a square of side max(width, height) with a constant
  mid-grey border (PAD_FILL). A constant, not a reflection: a reflected border repeats the
  subject (a second, mirrored ear or eye at the edge of a portrait), which the generator would
  learn to draw and the discriminator to expect, while a flat border carries no content. Mid-grey
  is 0 in the networks' [-1, 1] range, the value their own zero padding puts at every border.

Fitting happens when an image is decoded (``folders.decode``), so prepare, training on folders
or shards and translate all see the same square; a square image is unchanged by every fit.
Plain PIL: no Ray here.
"""

from __future__ import annotations

from PIL import Image

from stargan_ray.config import FITS

PAD_FILL = (128, 128, 128)


def reduced_size(size: tuple[int, int], min_side: int | None,
                 fit: str = "stretch") -> tuple[int, int] | None:
    """(w, h) an image of `size` is reduced to before fitting, or None to keep it.

    stretch and crop keep the shorter side at min_side (crop then cuts it square); pad keeps the
    longer side at min_side, since the whole photo goes on a square of that side.
    """
    side = max(size) if fit == "pad" else min(size)
    if min_side is None or side <= min_side:
        return None
    scale = min_side / side
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def fit_square(image: Image.Image, fit: str) -> Image.Image:
    """The image made square by `fit` (stretch leaves it as it is: the resize to img_size
    squashes it later, as the official loaders do)."""
    if fit not in FITS:
        raise ValueError(f"fit: must be one of {', '.join(FITS)}, got {fit!r}")
    width, height = image.size
    if fit == "stretch" or width == height:
        return image
    side = min(width, height) if fit == "crop" else max(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if fit == "crop":
        return image.crop((left, top, left + side, top + side))
    square = Image.new("RGB", (side, side), PAD_FILL)
    square.paste(image, (-left, -top))
    return square


def is_fitted(size: tuple[int, int], fit: str) -> bool:
    """Whether `fit` changes an image of this size (crop or pad on a photo that is not square)."""
    return fit != "stretch" and size[0] != size[1]


__all__ = ["PAD_FILL", "reduced_size", "fit_square", "is_fitted"]
