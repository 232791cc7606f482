"""Where files live: one atomic writer for local files and one pyarrow helper for URIs.

Local outputs (checkpoints, cached statistics, JSON results, tables, plots) are written to a
temporary file in the target folder, flushed to disk and renamed over the target, so a reader never
sees half a file and a crash leaves the previous version in place. Paths with a scheme
(``s3://bucket/key``, ``gs://...``) go through pyarrow, whose object stores publish an object only
when its stream is closed. pyarrow is imported lazily: the core does not need it to load.

A URI may carry pyarrow's options as a query (``s3://bucket/runs?endpoint_override=host:port&
scheme=http``); the query belongs to the end of the URI, so paths inside one are made with
``join``, never by appending text, and every URI derived from it keeps the query.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def is_uri(location: str | os.PathLike) -> bool:
    """True for 'scheme://...' locations (object stores, hdfs), False for local paths."""
    return "://" in str(location)


def split_query(location: str) -> tuple[str, str]:
    """(location without its query, "?query" or "") of a URI; a local path has no query."""
    location = str(location)
    if not is_uri(location) or "?" not in location:
        return location, ""
    base, query = location.split("?", 1)
    return base, f"?{query}"


def join(location: str | os.PathLike, *parts: str) -> str:
    """location/part/...: the parts go before a URI's query, which is kept."""
    base, query = split_query(str(location))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + query


def basename(location: str | os.PathLike) -> str:
    """The last path segment of a local path or a URI (its query left out)."""
    return split_query(str(location))[0].rstrip("/").rsplit("/", 1)[-1]


def uri_at(location: str, fs_path: str) -> str:
    """The location of fs_path (a path inside location's file system), as a URI with location's
    scheme and query (its endpoint and options), or as a local path for a local location."""
    if not is_uri(location):
        return fs_path
    scheme = location.split("://", 1)[0]
    return f"{scheme}://{fs_path.lstrip('/')}{split_query(location)[1]}"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call write(f) on a temporary binary file beside path, fsync it, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=4) + "\n")


def filesystem(location: str):
    """(pyarrow FileSystem, path inside it) for a local path or a URI such as s3://bucket/x.

    For S3 the endpoint comes from the URI's query (endpoint_override, scheme) or from the
    AWS_ENDPOINT_URL(_S3) environment variable; the FileSystem then holds it, so one handed to
    another process (Ray pickles it) reaches the same endpoint without the variable there.
    """
    import pyarrow.fs as pafs

    if is_uri(location):
        return _uri_filesystem(location)
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


@functools.lru_cache(maxsize=64)
def _uri_filesystem(location: str):
    # Cached: tasks read many files under one root, and resolving an object store is not free.
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(location)


def exists(location: str) -> bool:
    """True when a file or folder is at location (local path or URI)."""
    if not is_uri(location):
        return Path(location).expanduser().exists()
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(location: str, data: bytes) -> str:
    """Write data to a local path (atomically) or a URI (published when the stream closes)."""
    if not is_uri(location):
        return str(atomic_write_bytes(location, data))
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)
    return location


def read_bytes(location: str) -> bytes:
    if not is_uri(location):
        return Path(location).expanduser().read_bytes()
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def probe_write(location: str) -> str | None:
    """Why a small file cannot be written (and deleted) in the folder at location, as one line;
    None when it can. For object stores, whose folders need no creating."""
    import secrets

    probe = join(location, f".stargan-ray-probe-{secrets.token_hex(6)}")
    try:
        write_bytes(probe, b"probe")
        fs, path = filesystem(probe)
        fs.delete_file(path)
    except Exception as err:  # pyarrow raises OSError and its own kinds
        return " ".join(str(err).split())[:300] or type(err).__name__
    return None


__all__ = ["is_uri", "split_query", "join", "basename", "uri_at", "atomic_write",
           "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "filesystem", "exists", "write_bytes", "read_bytes",
           "probe_write"]
