"""What a request may ask for: the checks of POST /translate's fields, without Ray or HTTP.

Every check raises BadRequest naming the field and the problem; the app answers it as a 4xx JSON
error. Requests carry image bytes only, never a path, so no request can name a file on the server.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..inference import MAX_SEED

_DIGITS = re.compile("[0-9]{1,30}")


@dataclass(frozen=True)
class Limits:
    """Per-request limits: the whole body in bytes, each image in pixels, outputs per request;
    a clip's frames, seconds and pixels per frame (POST /translate_video)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000  # a 48 MP phone photo is refused, 8K x 5K is not
    max_outputs: int = 16
    max_video_frames: int = 300
    max_video_seconds: float = 10.0
    max_frame_pixels: int = 1920 * 1080


class BadRequest(Exception):
    """A request the server refuses; status 400, 401 without the token, 413 when too large."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def payload(self) -> dict:
        return {"error": str(self), "field": self.field}


def token_sha256(token: str) -> str:
    """What the server keeps of its bearer token: the token itself never enters Serve's config."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_bearer(header: str | None, sha256: str | None) -> None:
    """Pass when no token is configured or `Authorization: Bearer <token>` holds it; else 401.

    The message never repeats what was sent; the comparison takes the same time for any token.
    """
    if sha256 is None:
        return
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token_sha256(given.strip()), sha256):
        raise BadRequest("token", "missing or wrong bearer token; send the header "
                                  "'Authorization: Bearer <token>' (the page: its Token field)",
                         401)


def read_image(data: bytes | None, field: str, limits: Limits) -> Image.Image:
    """An uploaded file decoded to RGB as training and `translate` decode files."""
    from ..data.folders import BadImage, decode

    if data is None:
        raise BadRequest(field, "missing; send the photo as a multipart file field "
                                f"named {field!r}")
    if not data:
        raise BadRequest(field, "empty file")
    if len(data) > limits.max_bytes:
        raise BadRequest(field, f"{len(data)} bytes, more than the limit of {limits.max_bytes}",
                         413)
    # The header alone gives the size: refuse huge images before decoding a single pixel.
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise BadRequest(field, f"more pixels than the limit of {limits.max_pixels}", 413) \
            from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadRequest(field, "not an image (send a PNG, JPEG, WebP, BMP or GIF file)") \
            from None
    if width * height > limits.max_pixels:
        raise BadRequest(field, f"{width} x {height} pixels, more than the limit of "
                                f"{limits.max_pixels}", 413)
    try:
        return decode(data)
    except BadImage as err:
        raise BadRequest(field, f"cannot decode the image ({err})") from None


def parse_domain(text: str | None, names: list[str]) -> int:
    """A domain name of the model, or its index."""
    if text is None or not text.strip():
        raise BadRequest("domain", f"missing; one of {', '.join(names)}")
    text = text.strip()
    if text in names:
        return names.index(text)
    if _DIGITS.fullmatch(text) and int(text) < len(names):
        return int(text)
    raise BadRequest("domain", f"unknown domain {text!r}; the model's domains are "
                               f"{', '.join(names)} (or their index 0-{len(names) - 1})")


def parse_seeds(text: str | None, limits: Limits) -> list[int]:
    """"0,1,2" or ranges "0-3" (inclusive), repeats dropped, order kept; default seed 0."""
    if text is None or not text.strip():
        return [0]
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not _DIGITS.fullmatch(first) or (dash and not _DIGITS.fullmatch(last)):
            raise BadRequest("seeds", f"expected non-negative integers such as 0,1,2 or 0-3, "
                                      f"got {text!r}")
        lo, hi = int(first), int(last if dash else first)
        if hi > MAX_SEED:
            raise BadRequest("seeds", f"{hi} is above the largest seed {MAX_SEED}")
        if hi < lo:
            raise BadRequest("seeds", f"the range {part.strip()!r} runs downwards")
        if hi - lo >= limits.max_outputs:
            raise too_many(hi - lo + 1, limits)
        seeds += [s for s in range(lo, hi + 1) if s not in seeds]
        if len(seeds) > limits.max_outputs:
            raise too_many(len(seeds), limits)
    return seeds


def parse_seed(text: str | None) -> int:
    """A clip's one seed (default 0)."""
    if text is None or not text.strip():
        return 0
    if not _DIGITS.fullmatch(text.strip()) or int(text) > MAX_SEED:
        raise BadRequest("seed", f"expected one non-negative integer up to {MAX_SEED} (a clip "
                                 f"takes one style), got {text!r}")
    return int(text)


def parse_psi(text: str | None) -> float:
    if text is None or not text.strip():
        return 1.0
    try:
        psi = float(text)
    except ValueError:
        raise BadRequest("psi", f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= psi <= 1.0:
        raise BadRequest("psi", f"must be between 0 and 1, got {text}")
    return psi


def parse_steps(text: str | None, styles: int, limits: Limits) -> int | None:
    """steps: outputs along the line from the first style to the second (the page's slider)."""
    if text is None or not text.strip():
        return None
    if not _DIGITS.fullmatch(text.strip()) or int(text) < 2:
        raise BadRequest("steps", f"expected an integer of at least 2, got {text!r}")
    if styles != 2:
        raise BadRequest("steps", f"interpolation needs exactly two styles (two seeds or two "
                                  f"references), got {styles}")
    if int(text) > limits.max_outputs:
        raise too_many(int(text), limits)
    return int(text)


def too_many(count: int, limits: Limits) -> BadRequest:
    return BadRequest("outputs", f"{count} outputs asked for, more than the limit of "
                                 f"{limits.max_outputs} per request")
