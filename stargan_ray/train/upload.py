"""Checkpoint uploads: the loop writes the state to a local folder, Ray Train copies it to the run's
storage, in the background with train.checkpoint_upload = "async".

Whatever the mode, a checkpoint folder in storage holds its checkpoint.pt only once the file is
whole: the upload streams it to a hidden <file>.partial beside it and renames that (local disks,
NFS, HDFS); object stores (s3://, gs://) publish an object only when its stream closes, so the file
is written under its name there. A run killed in the middle of an upload (a preempted node, Ctrl+C,
a failed worker) leaves a folder without checkpoint.pt, which discovery (checkpoints.py) skips:
--resume, the Ctrl+C hint, keep_checkpoints pruning and `eval --run` take the previous one.

The local folder lives until its upload is done (Ray's single upload thread deletes it then); one
left by a process that died is removed by the next save on that machine. A save waits for the
previous upload to finish before it writes, so at most two local copies exist at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from ..storage import filesystem, join

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"  # <file>.partial: a file being uploaded (never a complete one)
LOCAL_PREFIX = "stargan-ray-save-"  # <tmp>/stargan-ray-save-<pid>-<random>: a save's local copy
CHUNK_BYTES = 64 * 2**20  # Ray's own copy uses 64 MiB chunks too
# Object stores whose objects appear only when their upload completes.
_PUBLISH_ON_CLOSE = ("S3FileSystem", "GcsFileSystem")

_previous = threading.Event()  # set when the last upload of this process has ended
_previous.set()


# ---------------------------------------------------------------- the local copy


def local_save_dir() -> str:
    """A new local folder for a save's files; waits for the previous upload of this process to
    end first, and removes folders of processes that have died (a run killed mid-upload)."""
    while not wait_for_upload(60):
        log.warning("waiting for the upload of the previous checkpoint before the next save")
    sweep_local_dirs()
    return tempfile.mkdtemp(prefix=f"{LOCAL_PREFIX}{os.getpid()}-")


def wait_for_upload(timeout_s: float | None = None) -> bool:
    """Wait until this process's last checkpoint upload has ended; False on timeout_s."""
    return _previous.wait(timeout_s)


def sweep_local_dirs(root: str | None = None) -> list[str]:
    """Remove the save folders under root (the temp dir) whose process is gone; their paths."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{LOCAL_PREFIX}*"):
        pid = path.name[len(LOCAL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# ---------------------------------------------------------------- the copy to storage


def publish_file(src: str, fs, dest: str) -> int:
    """Copy the local file src to dest in fs so that dest exists only once whole; its bytes."""
    atomic = type(fs).__name__ in _PUBLISH_ON_CLOSE
    target = dest if atomic else dest + PARTIAL_SUFFIX
    copied = 0
    # unbuffered: each read hands on what is there (a buffered read of a pipe waits for a chunk)
    with open(src, "rb", buffering=0) as f, fs.open_output_stream(target) as out:
        while chunk := f.read(CHUNK_BYTES):
            out.write(chunk)
            copied += len(chunk)
    if not atomic:
        fs.move(target, dest)  # a rename on local disks: dest appears whole or not at all
    return copied


def publish_checkpoint(local_dir: str, fs, dest_dir: str) -> int:
    """Every file of local_dir into dest_dir (created), each published whole; the bytes copied."""
    fs.create_dir(dest_dir, recursive=True)
    return sum(publish_file(str(p), fs, f"{dest_dir}/{p.name}")
               for p in sorted(Path(local_dir).iterdir()) if not p.is_dir())


def upload_fn(run_dir: str, on_uploaded: Callable[[], None] | None = None):
    """Ray's checkpoint_upload_fn(checkpoint, dir_name): publish into run_dir/dir_name (the run
    folder is Ray's experiment folder: the same storage path and file system), delete the local
    copy, then on_uploaded() (rank 0's W&B artifact: only a whole file is logged)."""

    def upload(checkpoint, dir_name: str):
        import ray.train

        try:
            fs, dest = filesystem(join(run_dir, dir_name))
            publish_checkpoint(checkpoint.path, fs, dest)
            # only after success: Ray retries a failed upload from the same local folder
            shutil.rmtree(checkpoint.path, ignore_errors=True)
            if on_uploaded is not None:
                _quietly(on_uploaded)
        finally:
            _previous.set()
        return ray.train.Checkpoint(path=dest, filesystem=fs)

    return upload


def _quietly(fn: Callable[[], None]) -> None:
    """Run fn; a failure is logged: the checkpoint is in storage whatever fn does."""
    try:
        fn()
    except Exception as err:
        log.warning("after the upload of a checkpoint: %s", err)


# ---------------------------------------------------------------- ray.train.report


def _mode(upload: str):
    from ray.train import CheckpointUploadMode

    return CheckpointUploadMode.ASYNC if upload == "async" else CheckpointUploadMode.SYNC


def report_checkpoint(metrics: dict[str, Any], local_dir: str | None, run_dir: str, name: str,
                      upload: str, on_uploaded: Callable[[], None] | None = None,
                      **extra: Any) -> None:
    """Report the step on every rank with rank 0's local_dir (None on the others) as checkpoint
    run_dir/name; upload: train.checkpoint_upload. With "async" this returns once the report is
    queued."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(local_dir) if local_dir else None
    if checkpoint is not None:
        _previous.clear()  # set again when this upload ends (upload_fn), however it ends
    try:
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name,
                         checkpoint_upload_mode=_mode(upload),
                         checkpoint_upload_fn=upload_fn(run_dir, on_uploaded),
                         delete_local_checkpoint_after_upload=False, **extra)
    except BaseException:
        _previous.set()  # the report itself failed: nothing is uploading
        raise


def report_metrics(metrics: dict[str, Any], upload: str) -> None:
    """A report without a checkpoint. In async mode it queues behind the upload in flight (Ray
    keeps reports in order): a synchronous one would wait here for that upload to finish."""
    import ray.train

    ray.train.report(metrics, checkpoint=None, checkpoint_upload_mode=_mode(upload))


__all__ = ["PARTIAL_SUFFIX", "local_save_dir", "wait_for_upload", "sweep_local_dirs",
           "publish_file", "publish_checkpoint", "upload_fn", "report_checkpoint",
           "report_metrics"]
