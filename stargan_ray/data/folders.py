"""Domains from image folders (the official layout ``ROOT/<domain>/<image>``) and image decoding.

Everything here runs on the driver before any Ray worker starts, so a wrong path or layout fails in
seconds with one line naming the path. Roots may be local paths or any URI pyarrow understands
(``s3://bucket/train``); a cluster needs storage every node can read.

File discovery (``list_image_files``) and decoding (``decode``, ``load_image``) are shared by
every command that reads images (train, prepare, eval, fid, sample, align): one list of
extensions in any case, and any mode Pillow opens (grayscale, palette, RGBA, CMYK, 16-bit)
becomes 8-bit RGB. A file that cannot be decoded raises ``BadImage`` with the reason, which
callers name (``report_unreadable``) and skip instead of crashing.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stargan_ray.data import shapes
from stargan_ray.errors import UserError
from stargan_ray.storage import filesystem  # noqa: F401  (folders.filesystem, used by data)

# Official listdir takes png/jpg/jpeg (and JPG); we match case-insensitively and add the other
# formats Pillow decodes, since users hand in whatever their cameras and scrapers produced.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class DataError(UserError):
    """A data folder or shard set that cannot be trained on; the message names the path."""


class MissingRootError(DataError):
    pass


class TooFewDomainsError(DataError):
    pass


class EmptyDomainError(DataError):
    pass


class DomainCountError(DataError):
    pass


class DomainMismatchError(DataError):
    pass


class BadImage(Exception):
    """A file that is not a decodable image; the message is the reason."""


# ---------------------------------------------------------------- file systems


def _location(path: str) -> tuple[str, str]:
    """(scheme, normalised path) to compare locations; file:// URIs are local paths."""
    if "://" not in path:
        return "file", str(Path(path).expanduser().resolve())
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return "file", str(Path(parsed.path).resolve())
    # Object stores: bucket and key, compared as strings (no symlinks, no "..", no cwd).
    parts = [p for p in f"{parsed.netloc}/{parsed.path}".split("/") if p]
    return parsed.scheme.lower(), "/" + "/".join(parts)


def overlaps(a: str, b: str) -> bool:
    """Whether two folders or URIs are the same or one lies inside the other."""
    (sa, pa), (sb, pb) = _location(a), _location(b)
    if sa != sb:
        return False  # a local tree and an object store never share files
    pa, pb = pa.rstrip("/") + "/", pb.rstrip("/") + "/"
    return pa.startswith(pb) or pb.startswith(pa)


def read_bytes(fs, path: str) -> bytes:
    with fs.open_input_file(path) as f:
        return f.read()


# ---------------------------------------------------------------- domains


@dataclass(frozen=True)
class DomainFolder:
    """One split of a folder tree: sorted domain names and, per image, its path and domain id.

    Images are sorted by (domain, path), as the official loader lists them, so ids match
    official checkpoints. ``paths`` are inside ``fs`` (see ``filesystem``).
    """

    root: str
    domains: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray  # (N,) int64
    # (path, reason) of what was named and left out while listing: broken links, symlink loops,
    # label rows naming no readable file; callers report them with their unreadable files.
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.domains)).tolist()

    def fs(self):
        return filesystem(self.root)[0]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.rsplit("/", 1)[-1].startswith(".")


def image_files(fs, base: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files under base inside fs, [(path, reason)] of links not followed).

    Recursive and sorted, hidden files left out. Local trees are walked by ``_local_files``
    (links followed, each real folder and file once); object stores have no links.
    """
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        return _local_files(base)
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                  if i.type == pafs.FileType.File and _is_image(i.path)), []


def _local_files(base: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Walk a local folder following symlinks, entering each real folder once.

    A link back into a folder already listed (``dog/loop -> dog``) is named once and not entered
    again, and a file reached twice (two links to one file) is listed once, so every real image
    counts once. A broken link is named, as an unreadable file is.
    """
    found: list[tuple[str, tuple[int, int]]] = []
    problems: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()

    def walk(folder: str) -> None:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in visited:
            problems.append((folder, "symlink loop: links to a folder already listed "
                             f"({os.path.realpath(folder)}), not followed again"))
            return
        visited.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            problems.append((folder, f"cannot list: {_reason(err)}"))
            return
        for entry in entries:
            try:
                if entry.is_dir():  # follows links
                    walk(entry.path)
                elif entry.is_file():
                    if _is_image(entry.name):
                        target = entry.stat()
                        found.append((entry.path, (target.st_dev, target.st_ino)))
                elif entry.is_symlink() and not entry.name.startswith("."):
                    problems.append((entry.path, f"broken symlink to {os.readlink(entry.path)}"))
            except OSError as err:  # a link chain too long, a permission error
                problems.append((entry.path, f"cannot read: {_reason(err)}"))

    walk(base)
    files, seen = [], set()
    for path, key in sorted(found):
        if key not in seen:
            seen.add(key)
            files.append(path)
    return files, problems


def report_links(problems: list[tuple[str, str]]) -> None:
    """Name each link that was not followed (loops, broken links) in one warning line."""
    for path, reason in problems:
        _log.warning("not listed: %s: %s", path, reason)


def list_image_files(folder: str | Path) -> list[str]:
    """The image files of one folder (recursive, sorted), as training lists a domain's images.

    Raises MissingRootError when folder is not a directory. Local paths come back absolute.
    """
    import pyarrow.fs as pafs

    fs, base = filesystem(str(folder))
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise MissingRootError(f"{folder}: no such folder")
    files, problems = image_files(fs, base)
    report_links(problems)
    if "://" in str(folder):  # keep the scheme so that load_image can open them again
        prefix = str(folder).split("://", 1)[0] + "://"
        files = [prefix + f for f in files]
    return files


def scan(root: str, num_domains: int | None = None) -> DomainFolder:
    """List ``root/<domain>/**/<image>`` and check the layout; raises a DataError subclass."""
    import pyarrow.fs as pafs

    fs, base = filesystem(str(root))
    info = fs.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        raise MissingRootError(f"{root}: no such data folder")
    subdirs = sorted((i for i in fs.get_file_info(pafs.FileSelector(base))
                      if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")),
                     key=lambda i: i.base_name)
    if len(subdirs) < 2:
        raise TooFewDomainsError(f"{root}: found {len(subdirs)} domain folder(s), need at least 2"
                                 " (layout ROOT/<domain>/<image>)")
    if num_domains is not None and len(subdirs) != num_domains:
        names = ", ".join(d.base_name for d in subdirs)
        raise DomainCountError(f"{root}: {len(subdirs)} domains ({names}) but model.num_domains ="
                               f" {num_domains}")
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for label, sub in enumerate(subdirs):
        files, problems = image_files(fs, sub.path)
        skipped += problems
        if not files:
            raise EmptyDomainError(f"{root}/{sub.base_name}: domain folder has no images"
                                   f" ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return DomainFolder(str(root), tuple(d.base_name for d in subdirs), tuple(paths),
                        np.asarray(labels, np.int64), tuple(skipped))


# ---------------------------------------------------------------- decoding


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; 16/32-bit values are scaled, not clipped."""
    if image.mode.startswith(("I", "F")):
        pixels = np.asarray(image, dtype=np.float64)
        peak = float(pixels.max()) if pixels.size else 0.0
        if image.mode.startswith("I;16") or peak > 255:
            top = 65535.0
        else:
            top = 1.0 if image.mode == "F" and peak <= 1 else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # The official loader drops alpha (convert('RGB')); we do the same, via RGBA for palettes.
        image = image.convert("RGBA")
    return image.convert("RGB") if image.mode != "RGB" else image


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _reason(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not an image Pillow can read"
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def decode(data: bytes, min_side: int | None = None, fit: str = "stretch") -> Image.Image:
    """Fully decode image bytes to upright RGB, made square by `fit` (``shapes``); an image
    larger than min_side is reduced first (``shapes.reduced_size``: aspect kept).

    EXIF orientation is applied (a phone photo is read upright, as viewers show it; the
    official loader ignores it, which the official data sets never need). Raises BadImage for
    empty, truncated or non-image data.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            target = shapes.reduced_size(image.size, min_side, fit)
            if target is not None:
                image.draft(None, target)  # JPEG: decode at 1/2, 1/4, 1/8 scale when enough
            image.load()
            orientation = image.getexif().get(_ORIENTATION, 1)
            if orientation != 1:
                if orientation in (5, 6, 7, 8) and target is not None:
                    target = target[::-1]  # the image turns a quarter
                image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
            if target is not None and image.size != target:
                image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
            return shapes.fit_square(image, fit)
    except _DECODE_ERRORS as err:
        raise BadImage(_reason(err)) from None


_ORIENTATION = 0x0112  # the EXIF tag


def load_image(path: str | Path, min_side: int | None = None, fit: str = "stretch") -> Image.Image:
    """Read and fully decode one image file (local path or URI) to 8-bit RGB, as ``decode``.

    Raises BadImage for a file that cannot be read or decoded.
    """
    try:
        if "://" in str(path):
            data = read_bytes(*filesystem(str(path)))
        else:
            data = Path(path).read_bytes()
    except OSError as err:
        raise BadImage(f"cannot read: {_reason(err)}") from None
    return decode(data, min_side, fit)


_log = logging.getLogger("stargan_ray.data")


def report_unreadable(path: str | Path, reason: str) -> None:
    """One warning line naming a skipped file, in the words the training pipeline uses.

    Without a logging configuration (the command line), it goes to stderr as it is.
    """
    _log.warning("skipping unreadable image %s: %s", path, reason)


def probe(fs, path: str) -> str | None:
    """Cheap check of a file before training (open + header): None if it looks like an image.

    Catches empty, unreadable and non-image files; truncation is only found by a full decode,
    which the pipeline does and then skips the file.
    """
    try:
        with fs.open_input_file(path) as f:
            if f.size() == 0:
                return "empty file"
            with Image.open(f) as image:  # reads only as far as the header
                image.size  # noqa: B018
        return None
    except _DECODE_ERRORS as err:
        return _reason(err)


def drop_unreadable(folder: DomainFolder,
                    threads: int = 8) -> tuple[DomainFolder, list[tuple[str, str]]]:
    """Probe every file; return the folder without the bad ones and the (path, reason) list.

    Raises EmptyDomainError when a domain is left with no readable image.
    """
    fs = folder.fs()
    with ThreadPoolExecutor(threads) as pool:
        reasons = list(pool.map(lambda p: probe(fs, p), folder.paths))
    keep = np.asarray([r is None for r in reasons], bool)
    bad = [(p, r) for p, r in zip(folder.paths, reasons) if r is not None]
    labels = folder.labels[keep]
    for label, name in enumerate(folder.domains):
        if not (labels == label).any():
            files = int((folder.labels == label).sum())
            raise EmptyDomainError(f"{folder.root}/{name}: no readable images"
                                   f" ({files} files, all unreadable)")
    paths = tuple(p for p, k in zip(folder.paths, keep) if k)
    return DomainFolder(folder.root, folder.domains, paths, labels, folder.skipped), bad


__all__ = ["DomainFolder", "scan", "decode", "to_rgb", "probe", "drop_unreadable",
           "list_image_files", "load_image", "report_unreadable", "filesystem", "read_bytes",
           "BadImage", "DataError", "MissingRootError",
           "TooFewDomainsError", "EmptyDomainError", "DomainCountError", "DomainMismatchError",
           "IMAGE_EXTENSIONS", "image_files", "report_links"]
