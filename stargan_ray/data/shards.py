"""The prepared shard format: Parquet files of encoded images and the manifest that lists them.

A shard set is a folder (or URI prefix) of ``part-NNNNN.parquet`` files with columns ``image``
(encoded bytes), ``domain`` (int32) and ``path`` (relative to the source), in row groups of one
layout group each, and a ``manifest.json`` written last: its presence marks the set complete.
``prepare`` writes sets with ``ShardWriter`` and ``write_manifest``; the pipeline finds them with
``is_shards``, checks them with ``read_manifest`` and reads one group with ``read_row_group``.
"""

from __future__ import annotations

import json
from typing import Any

from stargan_ray import storage
from stargan_ray.data.folders import DataError, DomainCountError, MissingRootError

MANIFEST = "manifest.json"
FORMAT = "stargan-ray-shards"
FORMAT_VERSION = 1
SCHEMA_FIELDS = (("image", "binary"), ("domain", "int32"), ("path", "string"))


def is_shard_name(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def is_shards(root: str) -> bool:
    """True when root holds a manifest (a complete shard set), False for a folder tree."""
    import pyarrow.fs as pafs

    fs, base = storage.filesystem(root)
    return fs.get_file_info(f"{base}/{MANIFEST}").type == pafs.FileType.File


def read_manifest(root: str, num_domains: int | None = None) -> dict[str, Any]:
    """The manifest of a shard set, checked; raises a DataError subclass naming the path."""
    fs, base = storage.filesystem(root)
    try:
        with fs.open_input_stream(f"{base}/{MANIFEST}") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise MissingRootError(f"{root}: no {MANIFEST}; not a prepared shard set") from None
    except ValueError as err:
        raise DataError(f"{root}/{MANIFEST}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise DataError(f"{root}/{MANIFEST}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    domains = manifest["domains"]
    if num_domains is not None and len(domains) != num_domains:
        raise DomainCountError(f"{root}: {len(domains)} domains ({', '.join(domains)}) but"
                               f" model.num_domains = {num_domains}")
    return manifest


def write_manifest(out: str, manifest: dict[str, Any]) -> None:
    """Write the manifest last (atomically on local disk): its presence means complete."""
    base = out if storage.is_uri(out) else storage.filesystem(out)[1]  # ~ expanded
    storage.write_bytes(storage.join(base, MANIFEST), json.dumps(manifest, indent=1).encode())


def read_row_group(root: str, shard_files: tuple[tuple[str, int], ...], group: int
                   ) -> dict[str, list]:
    """Columns image, domain, path of row group ``group`` counted over all files in order.

    ``shard_files`` are (path inside root's file system, number of row groups) pairs.
    """
    import pyarrow.parquet as pq

    fs = storage.filesystem(root)[0]
    for path, row_groups in shard_files:
        if group < row_groups:
            with fs.open_input_file(path) as f:
                table = pq.ParquetFile(f).read_row_group(group,
                                                         columns=["image", "domain", "path"])
            return table.to_pydict()
        group -= row_groups
    raise IndexError(group)  # pragma: no cover - callers derive groups from shard_files


class ShardWriter:
    """Row groups of exactly group_size rows (the last may be short); new file past shard_bytes."""

    def __init__(self, fs, base: str, group_size: int, shard_bytes: int) -> None:
        import pyarrow as pa

        self.fs, self.base, self.group_size, self.shard_bytes = fs, base, group_size, shard_bytes
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in SCHEMA_FIELDS])
        self.files: list[dict[str, Any]] = []
        self.rows: list[tuple[bytes, int, str]] = []
        self.writer = None
        self.file_bytes = 0

    def add(self, image: bytes, domain: int, path: str) -> None:
        self.rows.append((image, domain, path))
        if len(self.rows) == self.group_size:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        if self.writer is None:
            name = f"part-{len(self.files):05d}.parquet"
            self.writer = pq.ParquetWriter(f"{self.base}/{name}", self.schema, filesystem=self.fs,
                                           compression="none")  # images are compressed already
            self.files.append({"path": name, "rows": 0, "row_groups": 0})
            self.file_bytes = 0
        images, domains, paths = zip(*self.rows)
        table = pa.table([pa.array(images, pa.binary()), pa.array(domains, pa.int32()),
                          pa.array(paths, pa.string())], schema=self.schema)
        self.writer.write_table(table, row_group_size=len(self.rows))
        self.files[-1]["rows"] += len(self.rows)
        self.files[-1]["row_groups"] += 1
        self.file_bytes += sum(len(i) for i in images)
        self.rows = []
        if self.file_bytes >= self.shard_bytes:
            self.writer.close()
            self.writer = None

    def close(self) -> list[dict[str, Any]]:
        """Flush the last row group and close; returns the manifest's ``files`` entries."""
        self._flush()
        if self.writer is not None:
            self.writer.close()
        return self.files


__all__ = ["MANIFEST", "FORMAT", "FORMAT_VERSION", "SCHEMA_FIELDS", "is_shard_name", "is_shards",
           "read_manifest", "write_manifest", "read_row_group", "ShardWriter"]
