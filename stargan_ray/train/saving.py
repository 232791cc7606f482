"""A checkpoint save in the training loop: rank 0 writes the complete state, checks that the run's
storage can take it, and every rank reports it to Ray Train (a barrier).

A full disk is not a worker failure: Ray would restart the workers from the last checkpoint and the
save would fail again (each retry replaying the steps since). The ranks agree on the verdict, no
checkpoint is reported, the partial folder is removed, and the run stops itself with one line:
what failed, how much space the checkpoint needs, and how to resume.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import CHECKPOINT_FILE, state_dict
from ..engine import TrainState
from ..storage import filesystem, is_uri, join
from .checkpoints import checkpoint_name
from .storage_faults import storage_fault
from .upload import local_save_dir, report_checkpoint

log = logging.getLogger(__name__)


class NonFiniteWeights(RuntimeError):
    """A save step found non-finite weights: no checkpoint is written, and Ray Train counts the
    worker as failed (it restarts from the last checkpoint, up to max_failures)."""


def weights_finite(state: TrainState) -> bool:
    """True when every weight of nets and nets_ema is finite (EMA nets are what users sample)."""
    flags = [torch.isfinite(p).all() for nets in (state.nets, state.nets_ema)
             for _, m in nets.items() for p in m.parameters()]
    return bool(torch.stack(flags).all())


def write_checkpoint_file(state: TrainState, folder: str) -> int:
    """torch.save the complete state into folder/CHECKPOINT_FILE; its size in bytes."""
    path = Path(folder) / CHECKPOINT_FILE
    torch.save(state_dict(state), path)
    return path.stat().st_size


def _state_bytes(state: TrainState) -> int:
    """About what a checkpoint of state takes (its tensors), for a save that failed early."""
    def size(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    return size(state_dict(state))


def _free_bytes(run_dir: str) -> int | None:
    """Free space where the run folder is (local storage); None for object stores."""
    if is_uri(run_dir):
        return None
    path = Path(run_dir)
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


def _space_problem(state: TrainState, folder: str, run_dir: str) -> str | None:
    """Rank 0: write the checkpoint into folder; None, or why it cannot be kept (disk full)."""
    name = checkpoint_name(state.step)
    need = None
    try:
        need = write_checkpoint_file(state, folder)
        free = _free_bytes(run_dir)
        if free is not None and free < need:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), run_dir)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        need = need or _state_bytes(state)
        where = err.filename or folder
        return (f"disk full: saving {name} failed ({os.strerror(errno.ENOSPC)}: {where}); the "
                f"checkpoint needs {need / 2**20:.1f} MiB; free that much, then run the same "
                "command with --resume")
    return None


def _agree(problem: str | None, rank: int, world: int, device: torch.device) -> bool:
    """Rank 0's verdict on every rank (one broadcast per save): True when the save failed."""
    failed = problem is not None
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([1 if failed else 0], device=device)
        dist.broadcast(flag, src=0)
        failed = bool(flag.item())
    return failed


def remove_partial(run_dir: str, name: str) -> None:
    """Remove what a failed save left of run_dir/name (nothing is kept of a failed checkpoint)."""
    import pyarrow.fs as pafs

    try:
        fs, path = filesystem(join(run_dir, name))
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir(path)
    except OSError as err:
        log.warning("could not remove the partial checkpoint %s: %s", name, err)


def save_report(state: TrainState, metrics: dict[str, Any], rank: int, world: int,
                run_dir: str, on_uploaded: Callable[[], None] | None = None,
                validation: Any = False) -> str | None:
    """Every rank reports (a barrier); rank 0 attaches the complete state as a checkpoint, whose
    upload runs as train.checkpoint_upload says (upload.py): with "async" the loop goes on once
    the state is in a local folder. on_uploaded: rank 0, once the checkpoint is in storage.
    None when saved; on a full disk, the one-line reason on rank 0 ("" on the others) and no
    report on any rank. validation: ask Ray to validate the checkpoint (True, or a
    ValidationTaskConfig: train/validation.py); rank 0, which holds the checkpoint, asks."""
    if not weights_finite(state):
        raise NonFiniteWeights(f"non-finite weights at step {state.step}; checkpoint not written")
    name = checkpoint_name(state.step)
    local = local_save_dir() if rank == 0 else None  # lives until its upload is done
    try:
        problem = (storage_fault(run_dir, state.step) or _space_problem(state, local, run_dir)
                   if rank == 0 else None)
        failed = _agree(problem, rank, world, state.device)
    except BaseException:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
        raise
    if failed:
        if rank == 0:
            shutil.rmtree(local, ignore_errors=True)
            remove_partial(run_dir, name)
        return problem or ""
    extra = {"validation": validation} if validation and rank == 0 else {}
    report_checkpoint(metrics, local, run_dir, name, state.cfg.train.checkpoint_upload,
                      on_uploaded, **extra)
    return None
