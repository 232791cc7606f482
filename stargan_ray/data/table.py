"""The images of one split in canonical order, from a folder tree, shards or memory.

An ``ImageTable`` knows each image's domain and how to read one layout group of encoded images;
decoding and sampling happen in ``sampling``. A file that fails the header probe when a folder
tree is opened is left out and returned, so the caller reports it once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stargan_ray import storage
from stargan_ray.config import SYNTHETIC
from stargan_ray.data import folders, shards
from stargan_ray.data.folders import BadImage, DataError, DomainMismatchError
from stargan_ray.data.labels import scan_split
from stargan_ray.data.layout import GROUP_SIZE, spread_order
from stargan_ray.data.synthetic import resolve_data_dirs

if TYPE_CHECKING:
    from stargan_ray.config import ExperimentConfig


log = logging.getLogger("stargan_ray.data")


@dataclass(frozen=True)
class ImageTable:
    """The images of one split in canonical order, and how to read a group of them.

    kind "folders": files under a root; "memory": the same with the bytes held here (the small
    synthetic set, which then needs no storage shared across nodes); "shards": prepared Parquet.
    """

    kind: str
    root: str
    domains: tuple[str, ...]
    labels: np.ndarray  # (N,) int64, canonical order
    group_size: int
    paths: tuple[str, ...] = ()
    blobs: tuple[bytes, ...] = ()
    shard_files: tuple[tuple[str, int], ...] = ()  # (file path in fs, row groups), in order

    @property
    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.domains)).tolist()

    @property
    def num_groups(self) -> int:
        return math.ceil(len(self.labels) / self.group_size)

    def read_group(self, group: int) -> list[tuple[int, int, "bytes | BadImage", str]]:
        """[(index, label, encoded bytes or the read error, path)] of one group."""
        lo, hi = group * self.group_size, min((group + 1) * self.group_size, len(self.labels))
        if self.kind == "shards":
            cols = shards.read_row_group(self.root, self.shard_files, group)
            return [(lo + k, int(d), img, p)
                    for k, (img, d, p) in enumerate(zip(cols["image"], cols["domain"],
                                                        cols["path"]))]
        if self.kind == "memory":
            return [(i, int(self.labels[i]), self.blobs[i], self.paths[i]) for i in range(lo, hi)]
        fs = storage.filesystem(self.root)[0]
        rows = []
        for i in range(lo, hi):
            try:
                data: bytes | BadImage = folders.read_bytes(fs, self.paths[i])
            except OSError as err:  # vanished or unreadable since the probe
                data = BadImage(f"cannot read: {type(err).__name__}: {err}".splitlines()[0])
            rows.append((i, int(self.labels[i]), data, self.paths[i]))
        return rows


def open_table(root: str, num_domains: int | None, *, preload: bool = False,
               probe: bool = True, labels: str = "") -> tuple[ImageTable, list[tuple[str, str]]]:
    """The ImageTable of a folder tree (or a root with a labels file) or shard set, and the files
    left out: those that failed the probe and those the listing named (``DomainFolder.skipped``)."""
    if shards.is_shards(root):
        _no_labels_for_shards(root, labels)
        manifest = shards.read_manifest(root, num_domains)
        base = storage.filesystem(root)[1]
        files = tuple((f"{base}/{f['path']}", int(f["row_groups"])) for f in manifest["files"])
        labels_arr = np.asarray(manifest["labels"], np.int64)
        return ImageTable("shards", root, tuple(manifest["domains"]), labels_arr,
                          int(manifest["group_size"]), shard_files=files), []
    folder = scan_split(root, labels, num_domains)
    bad: list[tuple[str, str]] = list(folder.skipped)
    if probe:
        folder, unreadable = folders.drop_unreadable(folder)
        bad += unreadable
    order = spread_order(folder.labels)
    paths = tuple(folder.paths[i] for i in order)
    blobs = ()
    if preload:
        fs = folder.fs()
        blobs = tuple(folders.read_bytes(fs, p) for p in paths)
    kind = "memory" if preload else "folders"
    return ImageTable(kind, root, folder.domains, folder.labels[order], GROUP_SIZE, paths=paths,
                      blobs=blobs), bad


def _no_labels_for_shards(root: str, labels: str) -> None:
    if labels:
        raise DataError(f"{labels}: a labels file for the shard set {root}, whose manifest names "
                        "the domains already; leave data.train_labels / data.val_labels empty")


def domains_of(root: str, num_domains: int | None, labels: str = "") -> tuple[str, ...]:
    """Domain names of a folder tree (or labels file) or shard set, checked against num_domains."""
    if shards.is_shards(root):
        _no_labels_for_shards(root, labels)
        return tuple(shards.read_manifest(root, num_domains)["domains"])
    return scan_split(root, labels, num_domains).domains


def check_shards_fit(root: str, cfg: "ExperimentConfig") -> None:
    """Shards prepared for a smaller img_size would train on upsampled images, and shards fitted
    one way (prepare --fit) cannot be fitted another: refuse both in one line.

    data.allow_upscale = true trains on the smaller shards with a warning.
    """
    if not shards.is_shards(root):
        return
    manifest = shards.read_manifest(root)
    size, want = manifest.get("img_size"), cfg.model.img_size
    if size is not None and size < want:
        if not cfg.data.allow_upscale:
            raise DataError(f"{root}: shards prepared with --img-size {size} for model.img_size ="
                            f" {want} would train on upsampled images; prepare them again with "
                            f"--img-size {want} (or set data.allow_upscale = true)")
        log.warning("%s: shards prepared with --img-size %d are upsampled to model.img_size = %d "
                    "(data.allow_upscale)", root, size, want)
    fit = manifest.get("fit", "stretch")
    if fit != "stretch" and fit != cfg.data.fit:
        raise DataError(f"{root}: shards prepared with --fit {fit} hold square images already; "
                        f"data.fit = {cfg.data.fit!r} cannot apply (set data.fit = {fit!r})")


def open_train_table(cfg: "ExperimentConfig", probe: bool = True
                     ) -> tuple[ImageTable, list[tuple[str, str]]]:
    """Resolve, validate (train and val) and open the training images of an experiment."""
    train_dir, val_dir = resolve_data_dirs(cfg)
    n, d = cfg.model.num_domains, cfg.data
    for root in (train_dir, val_dir):
        check_shards_fit(root, cfg)
    table, bad = open_table(train_dir, n, preload=d.train_dir == SYNTHETIC, probe=probe,
                            labels=d.train_labels)
    val_domains = domains_of(val_dir, n, d.val_labels)
    if val_domains != table.domains:
        raise DomainMismatchError(f"{val_dir}: val domains ({', '.join(val_domains)}) differ from"
                                  f" train domains in {train_dir} ({', '.join(table.domains)})")
    return table, bad


__all__ = ["ImageTable", "open_table", "domains_of", "check_shards_fit", "open_train_table"]
