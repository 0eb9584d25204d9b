"""Atomic output: a directory appears complete or not at all.

Everything is written into a hidden temporary sibling of the destination; only
when every file is written, fsynced and verified is it renamed into place
(``rename`` within one filesystem is atomic on POSIX). An existing destination
is replaced only on request, and a compile that dies leaves at most a hidden
``.NAME.tmp-*`` sibling, which the next run into the same place removes.

Two compiles into one destination at once: each holds an exclusive
``flock`` on ``.NAME.lock`` beside it for its whole run, so the second fails
at once with a clear message instead of interleaving (or deleting the first
one's staging directory as "stale"). The kernel drops the lock when a
process dies, even by SIGKILL.

Permissions are those of any tool: ``mkdtemp`` and ``mkstemp`` create 0700 and
0600 (private, as temporary files should be), so what they made is given 0777 or
0666 masked by the process umask (:func:`apply_umask`) before it is renamed into
place; with umask 022 an artefact is 0755 with 0644 files, readable by a serving
account.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the kernel shows it (Linux: ``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it; put it back at once
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (made by ``mkdtemp``/``mkstemp``, so 0700/0600) the mode ``mkdir``/``open`` would have given it:
    0777 for a directory, 0666 for a file, less the umask."""
    full = 0o777 if stat.S_ISDIR(os.stat(path).st_mode) else 0o666
    os.chmod(path, full & ~current_umask())


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _stale_siblings(dest: Path) -> list[Path]:
    found = [*dest.parent.glob(f".{dest.name}.tmp-*"), *dest.parent.glob(f".{dest.name}.old-*")]
    return [p for p in found if p.is_dir()]


@contextmanager
def staging_dir(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``dest`` when the block exits cleanly."""
    dest = Path(dest)
    if dest.exists() and not force:
        raise InputError(f"{dest} already exists; pass --force to replace it, or choose another directory with -o")
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} exists and is not a directory; remove it or choose another path with -o")
    lock: int | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(dest)
        for stale in _stale_siblings(dest):  # left by a compile that was killed; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        apply_umask(tmp)  # the directory that becomes dest
    except OSError as e:
        _unlock(dest, lock)
        if isinstance(e, PermissionError):
            raise InputError(f"cannot write to {dest.parent}: permission denied; choose a writable directory "
                             "with -o") from None
        if e.errno == errno.ENOSPC:
            raise InputError(f"no space left on the device for {dest}; free space or choose another -o") from None
        raise InputError(f"cannot create {dest}: {e.strerror}; choose another directory with -o") from None
    except BaseException:
        _unlock(dest, lock)
        raise
    try:
        if dest.exists() and not force:  # another compile finished while we waited to start
            raise InputError(f"{dest} already exists; pass --force to replace it, or choose another directory "
                             "with -o")
        yield tmp
        _fsync_tree(tmp)
        if dest.exists():  # --force: swap, so a failure here still leaves one complete directory
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, old / "x")
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise InputError(f"no space left on the device while writing {dest}; nothing was written") from None
        raise InputError(f"writing {dest} failed: {e.strerror or e}; nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _unlock(dest, lock)


def _lock(dest: Path) -> int:
    """Take the exclusive lock of ``dest``; raise InputError at once if another process holds it."""
    path = _lock_path(dest)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The holder unlinks the file on release; a lock on an unlinked inode guards nothing.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        raise InputError(f"another resdsl process is writing {dest} right now; wait for it to finish, or choose "
                         "another directory with -o") from None
    return fd


def _lock_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


def _unlock(dest: Path, fd: int | None) -> None:
    """Release the lock taken by :func:`_lock`, removing its file first (still holding it)."""
    if fd is None:
        return
    try:
        _lock_path(dest).unlink(missing_ok=True)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write one file atomically (temp file in the same directory, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        apply_umask(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
