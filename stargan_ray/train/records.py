"""A run's records on its own storage: events.jsonl, metrics.jsonl, plots/, samples/ and the
TensorBoard event files live in the run folder, also when that folder is a URI (s3://, gs://).

With a local run folder the logger writes them in place and nothing here is needed. With a URI,
rank 0 writes them in a local folder (the logger's, in the worker's working directory) and
RecordSync copies every file that changed to the run folder: from a background thread, at most
every UPLOAD_EVERY_S seconds (sooner when nudged, e.g. on a preemption notice), and once more
when the run ends. The loop never waits for an upload; only the last one, at the end, is waited
for (up to FINAL_UPLOAD_TIMEOUT_S). Object stores cannot append, so an appended log is uploaded
whole; it holds one line per print_every, which keeps it small.

On start, the appended logs already in the run folder (written by an earlier start, possibly on
another node) are fetched before anything is appended, so a restart continues them instead of
overwriting or splitting them. A local copy that already holds them (a restart on the same node)
is kept: it may be ahead of the last upload. W&B's folder is not copied (W&B syncs its own runs).
An upload that fails is one warning and is retried at the next round: records never fail a run.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..storage import exists, is_uri, join, read_bytes, write_bytes

log = logging.getLogger(__name__)
APPENDED = ("events.jsonl", "metrics.jsonl")  # continued across restarts, never replaced
UPLOAD_EVERY_S = 30.0  # the longest a record waits on the rank-0 node before it is uploaded
FINAL_UPLOAD_TIMEOUT_S = 60.0  # how long the end of a run waits for its last upload
_SKIPPED_DIRS = ("wandb",)


def records_to_sync(local_dir: Path) -> list[str]:
    """The files of local_dir that belong on the run's storage, as relative posix paths
    (temporary files of atomic writes and W&B's own folder left out)."""
    found = []
    for path in sorted(local_dir.rglob("*")):
        rel = path.relative_to(local_dir)
        if not path.is_file() or rel.parts[0] in _SKIPPED_DIRS \
                or any(part.startswith(".") for part in rel.parts):
            continue
        found.append(rel.as_posix())
    return found


def upload_folder(local_dir: Path, location: str) -> list[str]:
    """Copy every file of local_dir (as records_to_sync lists them) to the folder at location (a
    URI); the locations written."""
    written = []
    for rel in records_to_sync(Path(local_dir)):
        written.append(write_bytes(join(location, rel), (Path(local_dir) / rel).read_bytes()))
    return written


def _complete_lines(data: bytes) -> bytes:
    """data up to its last newline: an upload may have caught a line being appended."""
    return data[:data.rfind(b"\n") + 1]


def _read_stored(location: str) -> bytes | None:
    """The complete lines of a stored log, None when there is none."""
    try:
        return _complete_lines(read_bytes(location))
    except FileNotFoundError:
        return None
    except OSError:
        if not exists(location):  # some stores say 'not found' as a plain OSError
            return None
        raise


def fetch_appended(run_dir: str, local_dir: Path) -> dict[str, bytes]:
    """Before a (re)start appends: the run folder's events.jsonl and metrics.jsonl into local_dir.

    A local copy that begins with the stored one is kept (the same node, maybe ahead of its last
    upload); otherwise the stored one replaces it, and with none stored the local copy (another
    run's, under the same name) is removed. What is stored, by file name.
    """
    local_dir.mkdir(parents=True, exist_ok=True)
    fetched = {}
    for name in APPENDED:
        local = local_dir / name
        stored = _read_stored(join(run_dir, name))
        mine = local.read_bytes() if local.exists() else None
        if stored is None:
            local.unlink(missing_ok=True)
            continue
        if mine is None or not mine.startswith(stored):
            local.write_bytes(stored)
        fetched[name] = stored
    return fetched


class RecordSync:
    """Copies the changed files of a local records folder to a run folder on a URI storage."""

    def __init__(self, run_dir: str, local_dir: Path, every_s: float = UPLOAD_EVERY_S) -> None:
        self.run_dir, self.local_dir, self.every_s = run_dir, Path(local_dir), every_s
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) uploaded
        self._lock = threading.Lock()  # one upload round at a time (thread and close)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._failing = False  # warned about the current run of failed uploads
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, run_dir: str, local_dir: Path) -> "RecordSync | None":
        """For a URI run folder: fetch its appended logs, then upload changes in the background.
        None for a local run folder (written in place)."""
        if not is_uri(run_dir):
            return None
        sync = cls(run_dir, local_dir)
        try:
            fetched = fetch_appended(run_dir, sync.local_dir)
        except OSError as err:  # unreachable now: the uploads will say so again
            log.warning("could not fetch the earlier records of %s: %s", run_dir, err)
            fetched = {}
        for name, stored in fetched.items():  # as stored: not uploaded until appended to
            local = sync.local_dir / name
            if local.read_bytes() == stored:
                stat = local.stat()
                sync._sent[name] = (stat.st_size, stat.st_mtime_ns)
        sync._thread = threading.Thread(target=sync._run, name="records-upload", daemon=True)
        sync._thread.start()
        return sync

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.upload()

    def nudge(self) -> None:
        """Upload soon (a preemption notice: the node may go before the next round)."""
        self._wake.set()

    def upload(self) -> int:
        """Upload every file changed since its last upload; how many were uploaded."""
        with self._lock:
            sent = 0
            for rel in records_to_sync(self.local_dir):
                path = self.local_dir / rel
                try:
                    stat = path.stat()  # before reading: a write after it shows up next round
                    key = (stat.st_size, stat.st_mtime_ns)
                    if self._sent.get(rel) == key:
                        continue
                    data = path.read_bytes()
                    if rel in APPENDED:
                        data = _complete_lines(data)
                    write_bytes(join(self.run_dir, rel), data)
                except OSError as err:
                    self._warn(rel, err)
                    return sent
                self._sent[rel] = key
                sent += 1
            if self._failing:
                log.warning("records of %s are uploaded again", self.run_dir)
            self._failing = False
            return sent

    def _warn(self, rel: str, err: OSError) -> None:
        if not self._failing:
            why = " ".join(str(err).split())[:300] or type(err).__name__
            log.warning("could not upload %s to %s (%s); retrying every %g s, the records stay "
                        "in %s meanwhile", rel, self.run_dir, why, self.every_s, self.local_dir)
        self._failing = True

    def close(self, timeout_s: float = FINAL_UPLOAD_TIMEOUT_S) -> bool:
        """Stop the thread and upload what is left; False (and a warning) when that did not
        finish within timeout_s."""
        self._stop.set()
        self._wake.set()
        last = threading.Thread(target=self.upload, name="records-final-upload", daemon=True)
        last.start()
        last.join(timeout_s)
        if last.is_alive():
            log.warning("the last records of %s were not uploaded within %g s; they are in %s",
                        self.run_dir, timeout_s, self.local_dir)
            return False
        return not self._failing
