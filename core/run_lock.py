"""One process per output folder: an advisory lock file `DIR/.lock` for training runs, `eval run` and `data synth`.

The lock is `fcntl.flock` on `DIR/.lock`, which holds the owner's PID, host, start time and command (JSON).
The kernel drops a flock when its process dies, however it dies, so the flock is what decides; the file's
contents only name the owner in messages. A clean release deletes the file; after a kill -9 it lingers
with a PID that is no longer running, and the next process takes it over with a warning.

One case is refused although the flock is free: the file names a process on this host that is still
running and started before the lock was written. That happens when the folder sits on a filesystem
where flock does nothing (some network and FUSE mounts), so that process may well be writing into the
folder; the message says how to clear it. A PID reused by an unrelated, younger process is told apart
by its start time. Owners on another host cannot be checked: there the flock decides (Linux NFS clients
send flock to the server as a byte-range lock, unless mounted with `local_lock=flock`).

Use `folder_lock(DIR)` as a context manager, or `lock_until_return(DIR)` inside a function decorated
with `@releases_folder_locks` when the lock is taken deep inside a long function (the training loops).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# suffixes that make `--out NAME` read as an audio file rather than a folder
AUDIO_FILE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aif", ".aiff", ".wma")

F = TypeVar("F", bound=Callable[..., Any])


class FolderInUseError(OSError):
    """The folder is locked by another process (or looks like it is); the message names the owner."""


class FolderLock:
    """A held lock on `folder` (see `acquire_folder_lock`); `release()` or use it as a context manager."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.path, self._fd = folder, folder / LOCK_NAME, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Delete the lock file, then drop the flock (in that order: a process waiting on the old file
        then sees it is gone and retries on a new one)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------------------- checks


def check_output_dir_arg(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output *folder* argument that names a file: an existing file, or a name with an audio
    suffix (`--out x.mp3` would otherwise become a folder called x.mp3). Creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{flag} {folder} is a file; give a folder")
    if folder.suffix.lower() in AUDIO_FILE_SUFFIXES and not folder.is_dir():
        raise ValueError(f"{flag} {folder} looks like an audio file name; give a folder")
    return folder


def check_folder_free(folder: str | os.PathLike) -> None:
    """Refuse early, before any long work, what `acquire_folder_lock` would refuse later; creates nothing.

    It tests the flock with a shared lock that it drops at once (the processes of one `accelerate launch`
    all test before they meet at their first collective call, so none of them is mistaken for an owner)."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (or unreadable: acquire_folder_lock reports it)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderInUseError(_busy_message(folder, _read_owner(path))) from None
    finally:
        os.close(fd)  # drops the shared lock
    owner = _read_owner(path)
    if owner is not None and _owner_running(owner):
        raise FolderInUseError(_not_holding_message(folder, owner))


# ---------------------------------------------------------------------------------------- locking


def acquire_folder_lock(folder: str | os.PathLike) -> FolderLock:
    """Lock the existing folder `folder` for this process, or raise `FolderInUseError` at once (no waiting).

    A lock file left by a process that is no longer running is taken over with a warning."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    for _ in range(20):  # only loops while owners keep releasing between our open() and flock()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(_busy_message(folder, _read_owner(path))) from None
        except BaseException:
            os.close(fd)
            raise
        if not _same_file(fd, path):  # its owner released (and deleted) it meanwhile: lock the new file
            os.close(fd)
            continue
        try:
            _take_over(folder, _read_owner(path))
            _write_owner(fd)
        except BaseException:
            os.close(fd)  # leave the file: it may name a live owner (see _take_over)
            raise
        return FolderLock(folder, fd)
    raise FolderInUseError(f"{folder}: could not lock {path}: other processes keep taking and releasing it")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[FolderLock]:
    """`with folder_lock(DIR):` holds the lock of the existing folder DIR for the block."""
    lock = acquire_folder_lock(folder)
    try:
        yield lock
    finally:
        lock.release()


# locks taken by `lock_until_return`, released when the decorated function returns or raises
_SCOPE: ContextVar[contextlib.ExitStack | None] = ContextVar("soundsmith_folder_lock_scope", default=None)


def releases_folder_locks(func: F) -> F:
    """Decorator: folder locks that `func` takes with `lock_until_return` are released when it returns or
    raises, however deep inside it they were taken (so long functions need no re-indented `with`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            token = _SCOPE.set(stack)
            try:
                return func(*args, **kwargs)
            finally:
                _SCOPE.reset(token)

    return wrapper  # type: ignore[return-value]


def lock_until_return(folder: str | os.PathLike) -> FolderLock:
    """Lock `folder` until the enclosing `@releases_folder_locks` function returns or raises."""
    scope = _SCOPE.get()
    if scope is None:
        raise RuntimeError("lock_until_return() needs an enclosing @releases_folder_locks function")
    lock = acquire_folder_lock(folder)
    scope.callback(lock.release)
    return lock


def run_on_main_process(state: Any, func: Callable[[], Any]) -> None:
    """Run `func` (e.g. taking a folder lock) on the main process of `accelerate launch` only; if it fails
    with a one-line error (OSError, ValueError), every process raises it: otherwise the others would wait
    forever at their next collective call.

    `state`: an `accelerate.Accelerator` or `PartialState` (anything with is_main_process, num_processes)."""
    error: OSError | ValueError | None = None
    if state.is_main_process:
        try:
            func()
        except (OSError, ValueError) as err:
            error = err
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = [None if error is None else " ".join(str(error).split())]
        broadcast_object_list(message)  # from the main process to all
        if error is None and message[0] is not None:
            raise OSError(message[0])  # the main process's one-line error, on the others
    if error is not None:
        raise error


# -------------------------------------------------------------------------------------- internals


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_owner(fd: int) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
             "started_at": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}
    data = (json.dumps(owner) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The owner recorded in a lock file; None if there is no file or it holds nothing readable."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    return owner


def _take_over(folder: Path, previous: dict[str, Any] | None) -> None:
    """We hold the flock of a file that may name an earlier owner: refuse if that owner looks alive (a
    filesystem where flock is a no-op), else note the stale lock and carry on."""
    if previous is None:
        return
    if _owner_running(previous):
        raise FolderInUseError(_not_holding_message(folder, previous))
    log.warning("%s: taking over the stale lock of PID %s on %s (started %s), whose process has ended",
                folder, previous["pid"], previous.get("host", "?"), _started(previous))


def _owner_running(owner: dict[str, Any]) -> bool:
    """True if the recorded owner is on this host and its PID runs a process that is not younger than the lock."""
    if owner.get("host") != socket.gethostname():
        return False  # cannot be checked from here; the flock decides
    pid = owner["pid"]
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = _process_start_time(pid)
    if started is None:  # a zombie, or no /proc: a zombie is dead, else assume it is the owner
        return not _is_zombie(pid)
    locked_at = owner.get("started")
    # a PID reused after the owner died belongs to a process started after the lock was written
    return not (isinstance(locked_at, (int, float)) and started > locked_at + 2.0)


def _process_start_time(pid: int) -> float | None:
    """Unix time at which process `pid` started (Linux /proc), None if unknown or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].startswith("Z")


def _started(owner: dict[str, Any]) -> str:
    return str(owner.get("started_at") or "at an unknown time")


def _not_holding_message(folder: Path, owner: dict[str, Any]) -> str:
    return (f"{folder / LOCK_NAME} names PID {owner['pid']} on this host (started {_started(owner)}), which is "
            f"still running but does not hold the lock (flock may not work on this filesystem); if that process "
            f"is not writing into {folder}, delete {folder / LOCK_NAME} and run again")


def _busy_message(folder: Path, owner: dict[str, Any] | None) -> str:
    if owner is None:
        who = "another process (its lock file names no owner yet)"
    else:
        who = f"PID {owner['pid']} on {owner.get('host', '?')} (since {_started(owner)})"
    return f"{folder} is in use by {who}; wait for it to finish or choose another --out"
