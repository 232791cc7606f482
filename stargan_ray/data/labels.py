"""Domains from a labels file or CelebA-style attributes instead of ``ROOT/<domain>/`` folders.

- A labels CSV has the columns ``path,domain`` (a header row with those names is optional); a
  path is relative to the image root or absolute.
- An attributes file has CelebA's ``list_attr_celeba.txt`` format: a count line, a line of
  attribute names, then ``file v1 v2 ...`` with 1 / -1. With chosen attributes (``--domains``) an
  image belongs to the one of them it has; images with none or several are left out and
  counted by reason. Files are looked up by name under the root (at any depth).

Either gives the ``DomainFolder`` a folder tree gives: domains in sorted order, images sorted by
(domain, path), so ids are assigned as for folders. A row naming no file is named in
``skipped`` and left out, as an unreadable file is.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter

import numpy as np

from stargan_ray import storage
from stargan_ray.data.folders import (DataError, DomainCountError, DomainFolder, EmptyDomainError,
                                      MissingRootError, TooFewDomainsError, image_files, scan)

NO_DOMAIN = "none of the domains"
SEVERAL_DOMAINS = "several of the domains"


def _read_text(location: str, what: str) -> str:
    try:
        return storage.read_bytes(location).decode("utf-8-sig")
    except FileNotFoundError:
        raise MissingRootError(f"{what} {location}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {location}: cannot read ({type(err).__name__})") from None


def _root_base(root: str) -> str:
    fs, base = storage.filesystem(str(root))
    import pyarrow.fs as pafs

    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise MissingRootError(f"{root}: no such data folder")
    return base


def _in_root(base: str, path: str) -> str:
    """A labels-file path as a path inside the root's file system."""
    if "://" in path:
        return storage.filesystem(path)[1]
    return os.path.normpath(path if os.path.isabs(path) else f"{base}/{path}")


def _folder(root: str, rows: list[tuple[str, str]], skipped: list[tuple[str, str]],
            num_domains: int | None, where: str) -> DomainFolder:
    """DomainFolder of (path, domain name) rows: sorted domains, rows sorted (domain, path)."""
    names = sorted({d for _, d in rows})
    if len(names) < 2:
        raise TooFewDomainsError(f"{where}: found {len(names)} domain(s) with images, need at "
                                 "least 2")
    if num_domains is not None and len(names) != num_domains:
        raise DomainCountError(f"{where}: {len(names)} domains ({', '.join(names)}) but "
                               f"model.num_domains = {num_domains}")
    ids = {name: i for i, name in enumerate(names)}
    ordered = sorted((ids[d], p) for p, d in rows)
    return DomainFolder(str(root), tuple(names), tuple(p for _, p in ordered),
                        np.asarray([i for i, _ in ordered], np.int64), tuple(skipped))


def _existing(root: str, paths: list[str]) -> list[bool]:
    import pyarrow.fs as pafs

    fs = storage.filesystem(str(root))[0]
    return [i.type == pafs.FileType.File for i in fs.get_file_info(paths)] if paths else []


def read_labels(root: str, labels_file: str, num_domains: int | None = None) -> DomainFolder:
    """The images a labels CSV names under root; rows naming no file are in ``skipped``."""
    base = _root_base(root)
    rows: list[tuple[str, str]] = []
    where: dict[str, int] = {}
    lines = csv.reader(io.StringIO(_read_text(labels_file, "labels file")))
    for n, row in enumerate(lines, start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or (n == 1 and [c.lower() for c in cells] == ["path", "domain"]):
            continue
        if len(cells) != 2 or not all(cells):
            raise DataError(f"{labels_file}:{n}: expected two columns path,domain, got {row!r}")
        path = _in_root(base, cells[0])
        if path in where:
            raise DataError(f"{labels_file}:{n}: {cells[0]} is listed already on line "
                            f"{where[path]} (an image has one domain)")
        where[path] = n
        rows.append((path, cells[1]))
    found = _existing(root, [p for p, _ in rows])
    skipped = [(p, f"no such file ({labels_file} line {where[p]})")
               for (p, _), ok in zip(rows, found) if not ok]
    rows = [r for r, ok in zip(rows, found) if ok]
    return _folder(root, rows, skipped, num_domains, labels_file)


def _attribute_rows(attr_file: str, domains: list[str]) -> tuple[list[tuple[str, str]], Counter]:
    """(file name, domain) of the rows with exactly one chosen attribute; left out by reason."""
    lines = _read_text(attr_file, "attributes file").splitlines()
    if len(lines) < 2:
        raise DataError(f"{attr_file}: expected a count line and a line of attribute names")
    header = lines[1].split()
    missing = [d for d in domains if d not in header]
    if missing:
        raise DataError(f"--domains: {', '.join(missing)} not in {attr_file} (it has "
                        f"{', '.join(header)})")
    columns = [header.index(d) for d in domains]
    rows, left_out = [], Counter()
    for n, line in enumerate(lines[2:], start=3):
        cells = line.split()
        if not cells:
            continue
        if len(cells) != len(header) + 1:
            raise DataError(f"{attr_file}:{n}: expected a file name and {len(header)} values")
        has = [domains[k] for k, c in enumerate(columns) if cells[c + 1] == "1"]
        if len(has) == 1:
            rows.append((cells[0], has[0]))
        else:
            left_out[NO_DOMAIN if not has else SEVERAL_DOMAINS] += 1
    return rows, left_out


def read_attributes(root: str, attr_file: str, domains: list[str],
                    num_domains: int | None = None) -> tuple[DomainFolder, dict[str, int]]:
    """The images under root that have exactly one of the `domains` attributes, and how many
    were left out for having none or several of them."""
    if len(set(domains)) < 2:
        raise DataError(f"--domains: need at least 2 different attributes, got "
                        f"{','.join(domains) or 'none'}")
    base = _root_base(root)
    rows, left_out = _attribute_rows(attr_file, domains)
    files, _ = image_files(storage.filesystem(str(root))[0], base)
    by_name: dict[str, list[str]] = {}
    for path in files:
        by_name.setdefault(path.rsplit("/", 1)[-1], []).append(path)
    kept, skipped = [], []
    for name, domain in rows:
        matches = by_name.get(name, [])
        if len(matches) == 1:
            kept.append((matches[0], domain))
        else:
            skipped.append((f"{base}/{name}", "no such file under the root" if not matches else
                            f"{len(matches)} files of this name under the root"))
    folder = _folder(root, kept, skipped, num_domains, attr_file)
    for name in domains:
        if name not in folder.domains:
            raise EmptyDomainError(f"{attr_file}: no image has {name} alone")
    return folder, dict(left_out)


def scan_split(root: str, labels_file: str = "", num_domains: int | None = None) -> DomainFolder:
    """A split's images: from a labels file when one is given, else ``root/<domain>/`` folders."""
    return read_labels(root, labels_file, num_domains) if labels_file else scan(root, num_domains)


__all__ = ["read_labels", "read_attributes", "scan_split", "NO_DOMAIN", "SEVERAL_DOMAINS"]
