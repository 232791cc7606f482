"""Pack an image folder tree into Parquet shards (``stargan-ray prepare SRC OUT``).

The domains come from SRC's folders, a labels file or CelebA-style attributes (``labels``);
``--fit`` makes photos that are not square square (``shapes``): fitted images are stored as
PNGs, so the shards hold squares.

Shards hold *encoded* images (column ``image``): the original file bytes, or with ``--img-size N``
(the model.img_size they are for) a lossless PNG of the image reduced exactly as the pipeline
reduces it on decode (shorter side ``load_size(N)`` = 1.2 N), so training from such shards gives
the same pixels as training from the folder tree, with a fraction of the decoding. Encoded bytes
keep one decoding path for folders and shards and keep shards small (a 308 px PNG of a photo is
about half its raw pixels, a 1024 px original several times more).

Rows are written in the pipeline's canonical order (every domain spread evenly) in row groups of
``GROUP_SIZE`` images: a row group is the unit one pipeline task reads. Every image is fully
decoded here, so a shard set never holds a file the pipeline would have to skip. A
``manifest.json`` written last (domains, per-image domain ids, counts, size, files, a content
hash, skipped files, fit, per-domain size range and images left out) marks the set complete;
the format itself is in ``shards``. OUT may be any URI pyarrow writes (s3://...), outside SRC
(shards inside it would become a domain); a complete set there is kept unless --overwrite.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

from dataclasses import dataclass

import numpy as np
from PIL import Image

from stargan_ray import storage
from stargan_ray.config import FITS
from stargan_ray.data import folders, labels, shapes
from stargan_ray.data.folders import BadImage, DataError
from stargan_ray.data.layout import GROUP_SIZE, spread_order
from stargan_ray.data.sampling import load_size
from stargan_ray.data.shards import (FORMAT, FORMAT_VERSION, MANIFEST, ShardWriter, is_shard_name,
                                     write_manifest)


# ---------------------------------------------------------------- one image


@dataclass(frozen=True)
class Source:
    """Where the domains come from and how photos become square.

    labels: a CSV of path,domain (``labels.read_labels``); attributes + domains: CelebA-style
    attributes (``labels.read_attributes``); neither: SRC/<domain>/ folders. fit: ``shapes``.
    """

    labels: str = ""
    attributes: str = ""
    domains: tuple[str, ...] = ()
    fit: str = "stretch"


def _load(root: str, path: str, img_size: int | None, fit: str
          ) -> tuple[bytes | None, str, tuple[int, int]]:
    """(bytes to store, "", original size) or (None, reason, (0, 0)). Runs in a worker process."""
    try:
        data = folders.read_bytes(storage.filesystem(root)[0], path)
    except OSError as err:
        return None, f"cannot read: {type(err).__name__}: {err}".splitlines()[0], (0, 0)
    try:
        image = folders.decode(data, None if img_size is None else load_size(img_size), fit)
        with Image.open(io.BytesIO(data)) as header:
            size = header.size
    except BadImage as err:
        return None, str(err), (0, 0)
    if img_size is None and fit == "stretch":
        return data, "", size
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), "", size


def _load_star(args: tuple[str, str, int | None, str]) -> tuple[bytes | None, str, tuple]:
    return _load(*args)


def _processed(root: str, paths: list[str], img_size: int | None, fit: str, workers: int
               ) -> Iterator[tuple[bytes | None, str, tuple[int, int]]]:
    jobs = [(root, p, img_size, fit) for p in paths]
    if workers <= 1:
        yield from map(_load_star, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_load_star, jobs, chunksize=16)


def _listing(src: str, source: Source) -> tuple[folders.DomainFolder, dict[str, int]]:
    """The images of SRC by domain and the counts left out by reason (attributes only)."""
    if source.labels and source.attributes:
        raise DataError("--labels and --attributes: give one of them")
    if source.attributes:
        return labels.read_attributes(src, source.attributes, list(source.domains))
    if source.domains:
        raise DataError("--domains: goes with --attributes (the labels or folders name the "
                        "domains)")
    return labels.scan_split(src, source.labels), {}


# ---------------------------------------------------------------- writing


def _check_args(img_size: int | None, shard_mb: float, workers: int | None, fit: str) -> None:
    if img_size is not None and (img_size < 32 or img_size & (img_size - 1)):
        # What model.img_size accepts (config.validate): shards for another size train nothing.
        raise DataError(f"--img-size: must be a power of two >= 32 (a model.img_size), "
                        f"got {img_size}")
    if shard_mb <= 0:
        raise DataError(f"--shard-mb: must be > 0, got {shard_mb}")
    if workers is not None and workers < 1:
        raise DataError(f"--workers: must be >= 1, got {workers}")
    if fit not in FITS:
        raise DataError(f"--fit: must be one of {', '.join(FITS)}, got {fit!r}")


def prepare(src: str, out: str, img_size: int | None = None, shard_mb: float = 256.0,
            workers: int | None = None, group_size: int = GROUP_SIZE,
            progress: bool | None = None, overwrite: bool = False,
            source: Source | None = None) -> dict[str, Any]:
    """Pack the images of ``src`` (``src/<domain>/<image>``, or as ``source`` names them) into
    Parquet shards under ``out``; returns the manifest.

    ``out`` must not be, contain or lie inside ``src``; a shard set already there (a manifest) is
    kept unless ``overwrite``. Raises a DataError naming the argument before anything is written.
    """
    source = source or Source()
    _check_args(img_size, shard_mb, workers, source.fit)
    check_out(src, out)
    folder, left_out = _listing(src, source)
    order = spread_order(folder.labels)
    paths = [folder.paths[i] for i in order]
    fs, base = storage.filesystem(out)
    _clear_out(fs, base, out, overwrite)
    fs.create_dir(base, recursive=True)
    writer = ShardWriter(fs, base, group_size, int(shard_mb * (1 << 20)))
    workers = workers if workers is not None else max(1, min(os.cpu_count() or 1, 16))
    results = _processed(src, paths, img_size, source.fit, workers)
    written = _write(writer, src, paths, folder.labels[order], results,
                     _progress(len(paths), progress), len(folder.domains), source.fit)
    written["skipped"] = [{"path": p, "reason": r} for p, r in folder.skipped] + \
        written["skipped"]
    for name, count in zip(folder.domains, written["counts"]):
        if count == 0:
            raise folders.EmptyDomainError(f"{src}/{name}: no readable images")
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "source": str(src),
        "domains": list(folder.domains), "img_size": img_size,
        "load_size": None if img_size is None else load_size(img_size),
        "group_size": group_size, "files": writer.close(), "fit": source.fit,
        "left_out": left_out, **written,
    }
    write_manifest(out, manifest)  # last: its presence means complete
    return manifest


def _write(writer: ShardWriter, src: str, paths: list[str], labels_: np.ndarray, results,
           bar, num_domains: int, fit: str) -> dict[str, Any]:
    """Add each decoded image to the shards; the manifest's counts, labels, stats, hash and
    skipped files."""
    digest = hashlib.sha256()
    kept: list[int] = []
    skipped: list[dict[str, str]] = []
    stats = [{"min_size": None, "max_size": None, "fitted": 0} for _ in range(num_domains)]
    base = storage.filesystem(src)[1].rstrip("/") + "/"
    for path, label, (data, reason, size) in zip(paths, labels_, results):
        bar.update(1)
        rel = path[len(base):] if path.startswith(base) else path  # a labels file's absolute path
        if data is None:
            skipped.append({"path": path, "reason": reason})
            continue
        writer.add(data, int(label), rel)
        kept.append(int(label))
        digest.update(f"{label}\0{rel}\0".encode())
        digest.update(hashlib.sha256(data).digest())
        _count_size(stats[int(label)], size, fit)
    bar.close()
    counts = np.bincount(np.asarray(kept, np.int64), minlength=num_domains).tolist()
    return {"counts": counts, "labels": kept, "content_hash": digest.hexdigest(),
            "skipped": skipped, "stats": stats}


def _count_size(stat: dict[str, Any], size: tuple[int, int], fit: str) -> None:
    area = size[0] * size[1]
    if stat["min_size"] is None or area < stat["min_size"][0] * stat["min_size"][1]:
        stat["min_size"] = list(size)
    if stat["max_size"] is None or area > stat["max_size"][0] * stat["max_size"][1]:
        stat["max_size"] = list(size)
    stat["fitted"] += int(shapes.is_fitted(size, fit))


def check_out(src: str, out: str) -> None:
    """Refuse an OUT that is, contains or lies inside SRC: its shards would become a domain."""
    if folders.overlaps(src, out):
        raise DataError(f"OUT {out}: is, contains or lies inside the source {src}; write the "
                        "shards somewhere else")


def _clear_out(fs, base: str, out: str, overwrite: bool) -> None:
    """Make OUT ready for a new set without touching anything that is not ours.

    OUT may be missing, empty, or hold a shard set: a complete one (with a manifest) is replaced
    only with ``overwrite``; the part files of an interrupted run (no manifest) are replaced.
    The old manifest goes first, so a failure half way never leaves it describing new files.
    """
    import pyarrow.fs as pafs

    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type != pafs.FileType.Directory:
        raise DataError(f"OUT {out}: exists and is not a directory")
    entries = fs.get_file_info(pafs.FileSelector(base))
    foreign = [e.base_name for e in entries if not e.base_name.startswith(".")
               and not (e.type == pafs.FileType.File
                        and (e.base_name == MANIFEST or is_shard_name(e.base_name)))]
    if foreign:
        raise DataError(f"OUT {out}: holds {foreign[0]!r} and maybe more, not a shard set; give "
                        "a new or empty folder")
    if any(e.base_name == MANIFEST for e in entries):
        if not overwrite:
            raise DataError(f"OUT {out}: already holds a shard set ({MANIFEST}), kept; pass "
                            "--overwrite to replace it")
        fs.delete_file(f"{base}/{MANIFEST}")
    for e in entries:
        if e.type == pafs.FileType.File and is_shard_name(e.base_name):
            fs.delete_file(e.path)


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm

    # Large trees show a bar (on a terminal); small ones stay quiet.
    disable = (total < 500 or None) if enabled is None else not enabled
    return tqdm(total=total, unit="img", desc="prepare", file=sys.stderr, disable=disable)


# ---------------------------------------------------------------- report


SMALL_DOMAIN = 100  # fewer images in a domain: warn (the discriminator overfits small sets)
IMBALANCE = 10  # largest / smallest domain above this: warn


def summary(manifest: dict[str, Any], out: str) -> str:
    """What ``prepare`` prints: per domain its images, size range and how many were fitted;
    images left out and skipped files by reason; warnings; the content hash."""
    fit = manifest.get("fit", "stretch")
    lines = [f"prepared {sum(manifest['counts'])} images into {out}"
             f" ({len(manifest['files'])} file(s), image size "
             f"{manifest['img_size'] or 'original'}, fit {fit})"]
    width = max(len(d) for d in manifest["domains"])
    done = {"crop": "cropped", "pad": "padded"}.get(fit)
    for d, c, st in zip(manifest["domains"], manifest["counts"], manifest.get("stats", [])):
        sizes = ("" if st["min_size"] is None else
                 f"  sizes {'x'.join(map(str, st['min_size']))} to "
                 f"{'x'.join(map(str, st['max_size']))}")
        lines.append(f"  {d:<{width}}  {c}{sizes}" + (f"  {done} {st['fitted']}" if done else ""))
    lines += [f"left out {n} image(s) with {reason}" for reason, n in
              sorted(manifest.get("left_out", {}).items())]
    skipped = manifest["skipped"]
    lines.append(f"skipped {len(skipped)} file(s)" + (":" if skipped else ""))
    lines += [f"  {s['path']}: {s['reason']}" for s in skipped]
    lines += warnings(manifest["domains"], manifest["counts"])
    lines.append(f"content hash {manifest['content_hash']}")
    return "\n".join(lines)


def warnings(domains: list[str], counts: list[int]) -> list[str]:
    """A line for each domain under SMALL_DOMAIN images and for an imbalance over IMBALANCE x."""
    lines = [f"warning: {d} has {c} images, under {SMALL_DOMAIN}: the discriminator will overfit"
             " (collect more, or expect worse results)" for d, c in zip(domains, counts)
             if c < SMALL_DOMAIN]
    if min(counts) > 0 and max(counts) > IMBALANCE * min(counts):
        big, small = int(np.argmax(counts)), int(np.argmin(counts))
        lines.append(f"warning: domains differ over {IMBALANCE}x in size ({domains[big]} "
                     f"{counts[big]}, {domains[small]} {counts[small]}); sources and references"
                     " are drawn per domain, so the small one's images repeat far more often")
    return lines


__all__ = ["Source", "prepare", "summary", "warnings", "check_out", "SMALL_DOMAIN", "IMBALANCE"]
