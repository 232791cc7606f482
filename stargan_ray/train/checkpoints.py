"""Checkpoint discovery, in one room: a run's checkpoint folders, the newest complete one, the kept
best, and the list `eval --run` evaluates. Used by resume (plan), best (keep_best), the worker's
restore, `eval --run` and the Ctrl+C hint (driver).

A run folder is <storage>/<run name>, local or a URI; Ray writes its checkpoint_<step> folders
there, each holding one CHECKPOINT_FILE; train.keep_best keeps a copy under best/.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..checkpoint import (CHECKPOINT_FILE, CheckpointError, CheckpointMismatch, read_config,
                          verify_checkpoint)
from ..config import ExperimentConfig
from ..storage import basename, filesystem, is_uri, join
from .upload import PARTIAL_SUFFIX

CHECKPOINT_PREFIX = "checkpoint_"
BEST_DIR = "best"
BEST_FILE = "best.json"


@dataclass(frozen=True)
class StartPoint:
    """The checkpoint a run begins from: its step and its file or folder (a path or a URI)."""

    step: int
    uri: str

    @property
    def label(self) -> str:
        return basename(self.uri)


def checkpoint_name(step: int) -> str:
    """The folder name of a step's checkpoint: checkpoint_<8 digits>."""
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_folders(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint_<step> folder of a run, newest first; local or URI."""
    import pyarrow.fs as pafs

    fs, path = filesystem(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    steps = []
    for info in infos:
        step = folder_step(info.base_name)
        if info.type == pafs.FileType.Directory and step is not None:
            steps.append((step, join(run_dir, info.base_name)))
    return sorted(steps, reverse=True)


def latest_checkpoint(run_dir: str) -> tuple[int, str] | None:
    """(step, path) of the newest checkpoint_<step> folder of a run (complete or not)."""
    folders = checkpoint_folders(run_dir)
    return folders[0] if folders else None


def folder_step(path: str) -> int | None:
    """The step of a checkpoint_<step> folder path, None for any other name."""
    name = basename(path)
    suffix = name[len(CHECKPOINT_PREFIX):]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


@contextlib.contextmanager
def local_file(uri: str) -> Iterator[str]:
    """A local path for the checkpoint at uri (a file, or a folder holding checkpoint.pt)."""
    if not is_uri(uri):
        yield uri
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        path, info = f"{path}/{CHECKPOINT_FILE}", fs.get_file_info(f"{path}/{CHECKPOINT_FILE}")
    if info.type != pafs.FileType.File:
        raise CheckpointError(f"checkpoint: no such file {uri}")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / CHECKPOINT_FILE
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield str(local)


def newest_complete_checkpoint(run_dir: str, cfg: ExperimentConfig
                               ) -> tuple[StartPoint | None, list[str]]:
    """The run's newest complete checkpoint, whatever Ray's snapshot lists, and the broken ones
    newer than it (one reason each). Complete: loads with weights_only, holds its folder's step.

    A complete checkpoint whose networks do not fit cfg raises CheckpointMismatch: that is a
    config mistake, and falling back to an older checkpoint of the same run would not fix it.
    """
    broken = []
    for step, uri in checkpoint_folders(run_dir):
        try:
            with local_file(uri) as local:
                verify_checkpoint(local, cfg, step)
        except CheckpointMismatch:
            raise
        except CheckpointError as err:
            broken.append(_why_broken(uri, err))
            continue
        return StartPoint(step, uri), broken
    return None, broken


def has_checkpoint_file(folder: str) -> bool:
    """True when folder holds a CHECKPOINT_FILE (published whole by upload.py; cheap to ask)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(folder)
    return fs.get_file_info(f"{path}/{CHECKPOINT_FILE}").type == pafs.FileType.File


def _why_broken(folder: str, err: CheckpointError) -> str:
    """err's text, or what happened when folder holds only a partial upload (a run killed while
    its checkpoint was uploading: upload.py writes <file>.partial, then renames it)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(folder)
    partial = fs.get_file_info(f"{path}/{CHECKPOINT_FILE}{PARTIAL_SUFFIX}")
    if partial.type == pafs.FileType.File and not has_checkpoint_file(folder):
        return (f"checkpoint {folder}: incomplete, its upload did not finish "
                f"({partial.size} bytes of {CHECKPOINT_FILE} arrived)")
    return str(err)


def read_best(run_dir: str) -> dict[str, Any] | None:
    """The run's <run>/best/best.json ({step, fid_quick, source, checkpoint}), or None."""
    import pyarrow.fs as pafs

    fs, path = filesystem(run_dir)
    marker = f"{path}/{BEST_DIR}/{BEST_FILE}"
    if fs.get_file_info(marker).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(marker) as f:
        return json.loads(f.read().decode())


def best_checkpoint(run_dir: str) -> tuple[int, str] | None:
    """(step, checkpoint file) of the run's kept best, or None."""
    record = read_best(run_dir)
    if record is None:
        return None
    return int(record["step"]), join(run_dir, BEST_DIR, record["checkpoint"])


def run_checkpoints(run_dir: str, every: int = 1) -> tuple[list[tuple[int, str]], list[str]]:
    """(step, checkpoint file) of the run's complete checkpoints, oldest first, every K-th of
    them; and one reason per broken checkpoint left out (what `eval --run` evaluates).

    The run's checkpoint_<step> folders, plus the kept best copy (train.keep_best) when Ray has
    since deleted the folder of its step.
    """
    candidates = {step: folder for step, folder in checkpoint_folders(run_dir)}
    best = best_checkpoint(run_dir)
    if best is not None and best[0] not in candidates:
        candidates[best[0]] = join(run_dir, BEST_DIR, checkpoint_name(best[0]))
    complete, broken = [], []
    for step in sorted(candidates):
        path = join(candidates[step], CHECKPOINT_FILE)
        try:
            with local_file(path) as local:  # a URI's file is fetched to be read
                verify_checkpoint(local, read_config(local), step)
        except CheckpointError as err:
            broken.append(_why_broken(candidates[step], err))
            continue
        complete.append((step, path))
    return complete[::every], broken


def prune_checkpoints(run_dir: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` checkpoint_<step> folders that hold a checkpoint file,
    and every folder without one (an upload that never finished); the deleted paths.

    Ray Train keeps train.keep_checkpoints of the checkpoints it registered in this fit; folders
    of an earlier fit whose snapshot was set aside (reconcile_snapshot, --resume-from) are not
    its own and would stay forever. Called by the driver after a run ends, when Ray's are the
    newest and no upload is in flight. The kept best (best/, train.keep_best) is a copy of its
    own and is not counted.
    """
    import pyarrow.fs as pafs

    folders = [path for _, path in checkpoint_folders(run_dir)]
    kept = [path for path in folders if has_checkpoint_file(path)][:keep]
    deleted = []
    for path in folders:
        fs, fs_path = filesystem(path)
        if path not in kept and fs.get_file_info(fs_path).type == pafs.FileType.Directory:
            fs.delete_dir(fs_path)
            deleted.append(path)
    return deleted
