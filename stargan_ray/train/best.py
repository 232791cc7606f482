"""train.keep_best: the write side (the read side, read_best and best_checkpoint, is in
checkpoints.py). The run keeps the state of its lowest fid_quick step in <run>/best/.

Ray's CheckpointConfig keeps either the last N or the best N by a score, not both, so the run keeps
its best itself, beside Ray's last train.keep_checkpoints. <run>/best/best.json
{step, fid_quick, source, checkpoint} names a complete copy at every moment.
"""

from __future__ import annotations

import json
import math
from typing import IO, Any, Callable

from ..checkpoint import CHECKPOINT_FILE
from ..storage import filesystem, join, write_bytes
from .checkpoints import BEST_DIR, BEST_FILE, checkpoint_name, read_best


def keep_best(run_dir: str, step: int, metrics: dict[str, Any], write: Callable[[IO[bytes]], None],
              source: str | None = None) -> bool:
    """Keep the state of step in <run>/best/ when metrics hold a new best (lowest) fid_quick.

    write(stream) writes the checkpoint file into best/checkpoint_<step>/ (written under a
    temporary name, then moved), then best.json replaces the old one atomically, and the previous
    best copy is deleted. A step without a finite fid_quick has no score; ties keep the earlier
    step. source: the run's checkpoint folder of that step, when the step has one (Ray may delete
    it later).
    """
    import pyarrow.fs as pafs

    score = metrics.get("fid_quick")
    if score is None or not math.isfinite(float(score)):
        return False
    old = read_best(run_dir)
    if old is not None and not float(score) < float(old["fid_quick"]):
        return False
    fs, path = filesystem(run_dir)
    best = f"{path}/{BEST_DIR}"
    name = checkpoint_name(step)
    tmp = f"{best}/.tmp_{name}"
    fs.create_dir(tmp, recursive=True)
    with fs.open_output_stream(f"{tmp}/{CHECKPOINT_FILE}") as f:
        write(f)
    if fs.get_file_info(f"{best}/{name}").type != pafs.FileType.NotFound:
        fs.delete_dir(f"{best}/{name}")  # left by an earlier attempt at this step
    fs.move(tmp, f"{best}/{name}")
    record = {"step": step, "fid_quick": float(score), "source": source,
              "checkpoint": f"{name}/{CHECKPOINT_FILE}"}
    write_bytes(join(run_dir, BEST_DIR, BEST_FILE), json.dumps(record, indent=2).encode())
    if old is not None and old["checkpoint"].split("/", 1)[0] != name:
        previous = f"{best}/{old['checkpoint'].split('/', 1)[0]}"
        if fs.get_file_info(previous).type == pafs.FileType.Directory:
            fs.delete_dir(previous)
    return True
