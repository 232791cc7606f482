"""The evaluation plan: domains and files, tasks, work items, seeds and source choices.

Everything here is decided before any network runs, and is the same however the work is split:
tasks follow the official order, every random choice is seeded by its own key, and items are
small, independent units a worker (in this process or a Ray actor) can run in any order.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..config import SYNTHETIC, ExperimentConfig
from ..data import folders
from ..data.labels import scan_split

MODES = ("latent", "reference")


def result_file(kind: str, step: int, mode: str) -> str:
    """The official name of one results file: FID_{step:05d}_{mode}.json or LPIPS_..."""
    return f"{kind}_{step:05d}_{mode}.json"


@dataclass(frozen=True)
class EvalData:
    """Sorted domains and, per domain, the sorted image paths of the val and train splits."""

    domains: tuple[str, ...]
    val: tuple[tuple[str, ...], ...]
    train: tuple[tuple[str, ...], ...]

    @classmethod
    def discover(cls, train_dir: str | Path, val_dir: str | Path,
                 num_domains: int | None = None, img_size: int | None = None,
                 labels: tuple[str, str] = ("", "")) -> "EvalData":
        """Both splits, listed as training lists them (labels: data.train_labels and
        data.val_labels, "" for domain folders); val images that cannot be decoded are named and
        left out (they are sources and references, so they are checked up front)."""
        val_folder = scan_split(str(val_dir), labels[1], num_domains)
        train_folder = scan_split(str(train_dir), labels[0], num_domains)
        if train_folder.domains != val_folder.domains:
            raise folders.DomainMismatchError(
                f"{val_dir}: val domains ({', '.join(val_folder.domains)}) differ from train "
                f"domains in {train_dir} ({', '.join(train_folder.domains)})")
        val_ok = _readable(val_folder.paths, img_size)
        val, train = [], []
        for d, name in enumerate(val_folder.domains):
            files = tuple(p for p, y, ok in zip(val_folder.paths, val_folder.labels, val_ok)
                          if y == d and ok)
            if not files:
                raise folders.EmptyDomainError(f"{val_dir}/{name}: no readable images (the "
                                               "unreadable ones are named above)")
            val.append(files)
            train.append(tuple(p for p, y in zip(train_folder.paths, train_folder.labels)
                               if y == d))
        return cls(val_folder.domains, tuple(val), tuple(train))


# (path, size, mtime_ns, img_size) -> decodable; fid_quick calls discover at every evaluation of
# a training run, which then decodes (and names) each val file only once.
_checked: dict[tuple[str, int, int, int | None], bool] = {}


def _readable(paths: Sequence[str], img_size: int | None) -> list[bool]:
    """Fully decode each file once (truncation shows only then); name the bad ones."""
    def check(path: str) -> bool:
        try:
            stat = os.stat(path)
        except OSError as err:
            folders.report_unreadable(path, f"cannot read: {type(err).__name__}")
            return False
        key = (path, stat.st_size, stat.st_mtime_ns, img_size)
        if key not in _checked:
            try:
                folders.load_image(path, img_size)  # draft-decodes large JPEGs: cheap
                _checked[key] = True
            except folders.BadImage as err:
                folders.report_unreadable(path, str(err))
                _checked[key] = False
        return _checked[key]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(check, paths))


def resolve_dirs(cfg: ExperimentConfig) -> tuple[str, str]:
    """(train_dir, val_dir) of the config, the embedded dataset generated when it names it."""
    if SYNTHETIC in (cfg.data.train_dir, cfg.data.val_dir):
        from ..data.synthetic import resolve_data_dirs

        return resolve_data_dirs(cfg)
    return cfg.data.train_dir, cfg.data.val_dir


@dataclass(frozen=True)
class Task:
    src: int
    trg: int
    name: str  # "cat2dog"


def make_tasks(domains: Sequence[str]) -> list[Task]:
    """Ordered pairs of distinct domains, by target then source (the official order)."""
    return [Task(s, t, f"{domains[s]}2{domains[t]}")
            for t in range(len(domains)) for s in range(len(domains)) if s != t]


@dataclass(frozen=True)
class Item:
    """One unit of work: real images of a domain, or a batch of sources of one task and mode."""

    kind: str  # "real" | "fake"
    key: tuple  # ("real", trg) or (mode, task index)
    indices: tuple[int, ...]  # file indices (real) or source indices (fake)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the networks (small; shipped to every worker)."""

    cfg: ExperimentConfig
    data: EvalData
    tasks: tuple[Task, ...]
    num_outs: int
    seed: int


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator for one (seed, mode, src, trg, source, output): independent of sharding."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def source_indices(count: int, limit: int | None) -> list[int]:
    """All sources, or `limit` of them evenly spread over the sorted list (fid_quick)."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


def chunks(indices: Sequence[int], size: int) -> Iterable[tuple[int, ...]]:
    for start in range(0, len(indices), size):
        yield tuple(indices[start:start + size])


def plan_items(job: Job, modes: Sequence[str], real_domains: Iterable[int],
               max_sources: int | None = None) -> list[Item]:
    """Real items (eval.batch_size train images) of the targets whose statistics are not cached,
    then fake items (data.val_batch_size sources of one task) per mode."""
    cfg = job.cfg
    items = [Item("real", ("real", trg), c) for trg in real_domains
             for c in chunks(range(len(job.data.train[trg])), cfg.eval.batch_size)]
    for mode in modes:
        for t, task in enumerate(job.tasks):
            sources = source_indices(len(job.data.val[task.src]), max_sources)
            items += [Item("fake", (mode, t), c) for c in chunks(sources, cfg.data.val_batch_size)]
    return items


def image_count(items: Iterable[Item], num_outs: int) -> int:
    """Images the items go through Inception: each real file once, each source num_outs times."""
    return sum(len(i.indices) * (1 if i.kind == "real" else num_outs) for i in items)


__all__ = ["MODES", "result_file", "EvalData", "Task", "make_tasks", "Item", "Job", "seeded_generator",
           "source_indices", "chunks", "plan_items", "image_count", "resolve_dirs"]
