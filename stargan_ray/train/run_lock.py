"""One writer per run folder: a run holds <run>/RUN_LOCK while it runs (the driver, not the workers,
so a worker restart, an elastic resize or a Tune trial's retry is the same run).

The lock file records its owner (host, pid, start time, a random token). Local folders get it
with an exclusive create; object stores have no such primitive in pyarrow, so there the run
writes it only when none is there and reads it back to see that its own token won (a race of two
starts within the same second can still let both through; the second then finds the other's
token and stops). A lock is taken over only when its owner is provably gone (same host, and that
pid is not alive or is a younger process) or with force (`train --force`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from typing import Iterator

from ..errors import UserError
from ..storage import exists, filesystem, is_uri, join, read_bytes, write_bytes

RUN_LOCK = "RUN.lock"
log = logging.getLogger(__name__)
_HELD: dict[str, list] = {}  # run_dir -> [Owner, depth]: this process already holds it


class RunFolderHeld(UserError):
    """Another run holds this run folder."""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # time.time() when the lock was taken
    token: str

    @staticmethod
    def me() -> "Owner":
        return Owner(socket.gethostname(), os.getpid(), time.time(), secrets.token_hex(8))

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"pid {self.pid} on host {self.host} since {when}"


def _read(lock: str) -> Owner | None:
    try:
        data = json.loads(read_bytes(lock).decode())
        return Owner(str(data["host"]), int(data["pid"]), float(data["started"]),
                     str(data["token"]))
    except FileNotFoundError:
        return None
    except OSError:
        if not exists(lock):
            return None
        raise
    except (ValueError, KeyError, TypeError):  # unreadable: a start killed while writing it
        return Owner("?", -1, 0.0, "?")


def owner_gone(owner: Owner) -> bool:
    """True only when provably gone: this host, and its pid is not alive (or was reused by a
    process that started after the lock was taken)."""
    if owner.pid == -1:
        return True  # an unreadable lock names no owner: none to wait for
    if owner.host != socket.gethostname():
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    try:
        import psutil

        return psutil.Process(owner.pid).create_time() > owner.started + 1.0
    except Exception:  # no psutil, or the process ended just now
        return False


def _write_new(lock: str, me: Owner) -> bool:
    """Write the lock when there is none; False when another one is there."""
    data = json.dumps(asdict(me)).encode()
    if not is_uri(lock):
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if exists(lock):
        return False
    write_bytes(lock, data)
    return True


def _take(lock: str, run_dir: str, me: Owner, force: bool) -> str | None:
    """Hold the lock for me; a note when a gone (or forced) owner's lock was taken over."""
    if _write_new(lock, me):
        return None
    holder = _read(lock)
    if holder is None and _write_new(lock, me):
        return None  # released between the two looks
    if holder is not None and not force and not owner_gone(holder):
        raise RunFolderHeld(
            f"run folder {run_dir} is held by another run ({holder.describe()}, {RUN_LOCK}); "
            "wait for it to end, choose another --name, or pass --force if that run is gone")
    write_bytes(lock, json.dumps(asdict(me)).encode())
    forced = force and holder is not None and not owner_gone(holder)
    why = "forced" if forced else "its owner is gone"
    who = holder.describe() if holder is not None else "none"
    return f"took over the lock of run folder {run_dir} ({who}; {why})"


@contextlib.contextmanager
def hold_run_folder(run_dir: str, *, force: bool = False,
                    note=log.warning) -> Iterator[None]:
    """Hold run_dir for this process while the block runs; released at exit (also on errors
    and Ctrl+C). Nested holds of the same folder in one process are one hold."""
    if run_dir in _HELD:
        _HELD[run_dir][1] += 1
        try:
            yield
        finally:
            _HELD[run_dir][1] -= 1
        return
    lock, me = join(run_dir, RUN_LOCK), Owner.me()
    took_over = _take(lock, run_dir, me, force)
    if (_read(lock) or me).token != me.token:  # a start at the same moment won the race
        holder = _read(lock)
        raise RunFolderHeld(f"run folder {run_dir} was taken by another run starting at the same "
                            f"time ({holder.describe() if holder else 'unknown'}, {RUN_LOCK})")
    if took_over and note is not None:
        note(took_over)
    _HELD[run_dir] = [me, 1]
    try:
        yield
    finally:
        del _HELD[run_dir]
        _release(lock, me)


def _release(lock: str, me: Owner) -> None:
    try:
        holder = _read(lock)
        if holder is None or holder.token != me.token:
            return  # taken over with --force: the lock is the other run's now
        fs, path = filesystem(lock)
        fs.delete_file(path)
    except OSError as err:  # a storage that failed: the error the run ends with says more
        log.warning("could not remove %s: %s", lock, err)
