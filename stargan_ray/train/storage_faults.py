"""An object store that stops taking writes during a run (the bucket removed, the endpoint gone,
writes denied) ends the run with one line that says what failed and how to continue, not with
Ray's retries and tracebacks.

A retry would not help: every restart would fail the same way, each replaying the steps since the
last checkpoint. So, as for a full disk (saving.py), rank 0 checks before each checkpoint save
that the run folder takes a write (one small probe object, written and deleted); when it does not,
the ranks agree, nothing is reported and the run stops itself. The reason cannot be left in the
run folder then, so the driver asks the storage again when the run ends (or when Ray gives up,
for a store that failed in the middle of an upload) and raises StorageFailed with the line.
"""

from __future__ import annotations

from ..errors import UserError
from ..storage import is_uri, probe_write
from .checkpoints import checkpoint_name


class StorageFailed(UserError):
    """The run's object storage stopped taking writes; the message says how to continue."""


def storage_fault(run_dir: str, step: int) -> str | None:
    """Rank 0, before the save of step: why the run folder (a URI) cannot take the checkpoint,
    as one line; None when it can, and always for a local folder (its disk is checked when the
    checkpoint is written)."""
    if not is_uri(run_dir):
        return None
    why = probe_write(run_dir)
    if why is None:
        return None
    return (f"storage failed: saving {checkpoint_name(step)} to {run_dir} is not possible "
            f"({why}); the checkpoints saved before are where they were; when the storage "
            "takes writes again, run the same command with --resume")


def failed_storage_line(run_dir: str, last_checkpoint: str | None) -> str | None:
    """Driver, after a run ended early or failed: the one line when its URI run folder no longer
    takes writes (None when it does, or for a local folder). last_checkpoint: the newest
    checkpoint Ray registered in this fit, if any."""
    if not is_uri(run_dir):
        return None
    why = probe_write(run_dir)
    if why is None:
        return None
    last = f"; the last checkpoint this run saved is {last_checkpoint}" if last_checkpoint else ""
    return (f"storage failed: the run folder {run_dir} no longer takes writes ({why}){last}; "
            "when the storage takes writes again, run the same command with --resume")
