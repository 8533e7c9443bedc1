"""File descriptors of directories and lock files, opened and closed in one
place (mechanism: no knowledge of the store).

A layer's directory is never reached through a symlink (one in its place is
not a layer, and following it would let a link elsewhere stand in for it),
so :func:`open_dir` does not follow a symlink at the path's last component
unless told to; every fd is ``O_CLOEXEC``, so a command a caller runs (a
template's ``run``, ``btrfs receive``) inherits none.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DIR_FLAGS", "DIR_NOFOLLOW", "open_dir", "open_file", "read_file", "write_file_atomic",
           "locked", "try_lock"]

#: A directory, read-only, not inherited by children.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: The same, refusing a symlink at the last component: NotADirectoryError,
#: as Linux reports O_NOFOLLOW|O_DIRECTORY on a symlink (ENOTDIR, not ELOOP).
DIR_NOFOLLOW = DIR_FLAGS | os.O_NOFOLLOW


@contextmanager
def open_dir(path: str | bytes | os.PathLike, dir_fd: int | None = None, *, follow: bool = False) -> Iterator[int]:
    """An fd of directory ``path`` (relative to ``dir_fd`` if given), closed
    when the block ends; a symlink at its last component is NotADirectoryError unless
    ``follow``."""
    fd = os.open(path, DIR_FLAGS if follow else DIR_NOFOLLOW, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def open_file(path: str | bytes | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o600,
              dir_fd: int | None = None, *, follow: bool = False) -> Iterator[int]:
    """An fd of file ``path`` opened with ``flags`` (``O_CLOEXEC`` added, and
    ``O_NOFOLLOW`` unless ``follow``), closed when the block ends."""
    flags |= os.O_CLOEXEC if follow else os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, mode, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def read_file(path: str | bytes | os.PathLike, dir_fd: int | None = None, limit: int = 1 << 20) -> bytes | None:
    """The first ``limit`` bytes of a small record file (never through a
    symlink); None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = b""
        while len(data) < limit and (chunk := os.read(fd, limit - len(data))):
            data += chunk
        return data
    finally:
        os.close(fd)


def write_file_atomic(name: str, data: bytes, dir_fd: int, mode: int = 0o600, tmp: str | None = None) -> None:
    """Replace ``name`` in directory ``dir_fd`` with ``data``, whole or not at
    all: written to ``tmp`` (default ``NAME.tmp``) and renamed over it, so a
    reader or a crash never sees a torn record."""
    tmp = tmp or name + ".tmp"
    with open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, dir_fd) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


@contextmanager
def locked(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[int | None]:
    """Hold an exclusive flock on ``path`` (made, mode 0600, if missing) for
    the block; yields its fd.  With ``blocking=False`` yields None at once
    when another process holds it (the caller skips what it guards)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if blocking:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        else:
            yield fd if try_lock(fd) else None
    finally:
        os.close(fd)  # releases the lock


def try_lock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` if nobody holds one: False when a
    live holder has it (a lock whose holder died is free again)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
