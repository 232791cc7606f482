"""Pack an image folder tree into Parquet shards (``stargan-ray prepare SRC OUT``).

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
hash, skipped files) marks the set complete; the format itself is in ``shards``. OUT may be any
URI pyarrow writes (s3://...), outside SRC (shards inside it would become a domain); a complete
set there is kept unless --overwrite.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

import numpy as np

from stargan_ray import storage
from stargan_ray.data import folders
from stargan_ray.data.folders import BadImage, DataError
from stargan_ray.data.layout import GROUP_SIZE, spread_order
from stargan_ray.data.sampling import load_size
from stargan_ray.data.shards import (FORMAT, FORMAT_VERSION, MANIFEST, ShardWriter, is_shard_name,
                                     write_manifest)


# ---------------------------------------------------------------- one image


def _load(root: str, path: str, img_size: int | None) -> tuple[bytes | None, str]:
    """(bytes to store, "") or (None, reason). Runs in a worker process."""
    try:
        data = folders.read_bytes(storage.filesystem(root)[0], path)
    except OSError as err:
        return None, f"cannot read: {type(err).__name__}: {err}".splitlines()[0]
    try:
        image = folders.decode(data, None if img_size is None else load_size(img_size))
    except BadImage as err:
        return None, str(err)
    if img_size is None:
        return data, ""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), ""


def _load_star(args: tuple[str, str, int | None]) -> tuple[bytes | None, str]:
    return _load(*args)


def _processed(root: str, paths: list[str], img_size: int | None, workers: int
               ) -> Iterator[tuple[bytes | None, str]]:
    jobs = [(root, p, img_size) for p in paths]
    if workers <= 1:
        yield from map(_load_star, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_load_star, jobs, chunksize=16)


# ---------------------------------------------------------------- writing


def prepare(src: str, out: str, img_size: int | None = None, shard_mb: float = 256.0,
            workers: int | None = None, group_size: int = GROUP_SIZE,
            progress: bool | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Pack ``src/<domain>/<image>`` into Parquet shards under ``out``; returns the manifest.

    ``out`` must not be, contain or lie inside ``src``; a shard set already there (a manifest) is
    kept unless ``overwrite``. Raises a DataError naming the argument before anything is written.
    """
    if img_size is not None and (img_size < 32 or img_size & (img_size - 1)):
        # What model.img_size accepts (config.validate): shards for another size train nothing.
        raise DataError(f"--img-size: must be a power of two >= 32 (a model.img_size), "
                        f"got {img_size}")
    if shard_mb <= 0:
        raise DataError(f"--shard-mb: must be > 0, got {shard_mb}")
    if workers is not None and workers < 1:
        raise DataError(f"--workers: must be >= 1, got {workers}")
    check_out(src, out)
    folder = folders.scan(src)
    order = spread_order(folder.labels)
    paths = [folder.paths[i] for i in order]
    labels = folder.labels[order]
    fs, base = storage.filesystem(out)
    _clear_out(fs, base, out, overwrite)
    fs.create_dir(base, recursive=True)
    writer = ShardWriter(fs, base, group_size, int(shard_mb * (1 << 20)))
    workers = workers if workers is not None else max(1, min(os.cpu_count() or 1, 16))
    digest = hashlib.sha256()
    kept: list[int] = []
    skipped: list[dict[str, str]] = []
    prefix = len(storage.filesystem(src)[1].rstrip("/")) + 1
    bar = _progress(len(paths), progress)
    results = _processed(src, paths, img_size, workers)
    for path, label, (data, reason) in zip(paths, labels, results):
        bar.update(1)
        rel = path[prefix:]
        if data is None:
            skipped.append({"path": path, "reason": reason})
            continue
        writer.add(data, int(label), rel)
        kept.append(int(label))
        digest.update(f"{label}\0{rel}\0".encode())
        digest.update(hashlib.sha256(data).digest())
    bar.close()
    files = writer.close()
    counts = np.bincount(np.asarray(kept, np.int64), minlength=len(folder.domains)).tolist()
    for name, count in zip(folder.domains, counts):
        if count == 0:
            raise folders.EmptyDomainError(f"{src}/{name}: no readable images")
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "source": str(src),
        "domains": list(folder.domains), "counts": counts, "img_size": img_size,
        "load_size": None if img_size is None else load_size(img_size),
        "group_size": group_size, "files": files, "labels": kept,
        "content_hash": digest.hexdigest(), "skipped": skipped,
    }
    write_manifest(out, manifest)  # last: its presence means complete
    return manifest


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


def summary(manifest: dict[str, Any], out: str) -> str:
    """What ``prepare`` printed: images per domain, skipped files and the content hash."""
    lines = [f"prepared {sum(manifest['counts'])} images into {out}"
             f" ({len(manifest['files'])} file(s), image size "
             f"{manifest['img_size'] or 'original'})"]
    width = max(len(d) for d in manifest["domains"])
    lines += [f"  {d:<{width}}  {c}" for d, c in zip(manifest["domains"], manifest["counts"])]
    skipped = manifest["skipped"]
    lines.append(f"skipped {len(skipped)} file(s)" + (":" if skipped else ""))
    lines += [f"  {s['path']}: {s['reason']}" for s in skipped]
    lines.append(f"content hash {manifest['content_hash']}")
    return "\n".join(lines)


__all__ = ["prepare", "summary", "check_out"]
