"""Native changes (issue #8): a layer's changes read from btrfs metadata.

``btrfsx.archive.native.native_changes`` must give the walk's answer
(``btrfsx.archive.changes.changes``) for a layer snapshotted from its parent,
or a more precise one.  The differential test below generates random trees
and random mutation sequences, on the snapshot and sometimes on the parent
after the snapshot, and checks the rule:

    native ⊇ naive, and every entry only native reports is a MODIFY of a
    regular file present in both trees whose (type, mode, owner, size,
    mtime, xattrs) the walk sees as equal but whose bytes differ (a
    "hidden rewrite"), or a MODIFY of a directory that is an ancestor of
    such a file.

and the precision promised: every hidden rewrite, found by reading both
trees' bytes, is reported by the native path (so native is exactly the
walk's answer plus the hidden rewrites and their directories).

A failing case prints its seed and mutation lists; replay one with
``BTRFSX_NATIVE_SEED=<seed> pytest tests/test_native_changes.py -k differential_native``.
The default suite runs ``BTRFSX_NATIVE_CASES`` cases (300, a few seconds);
the long run (``--run-slow``) ``BTRFSX_NATIVE_LONG_CASES`` (3000), other
seeds; ``BTRFSX_NATIVE_BASE_SEED`` moves both to other seeds.

The focused tests after it read like the feature list: the Driver's choice
of path and its log, the ``btrfsx.changes`` option, nested subvolumes,
changes of the parent after the snapshot, where native is the more precise,
uncommitted and unwritten-back data, ``diff``/``diff_size`` agreement, and
what an unprivileged process gets.
"""

from __future__ import annotations

import ctypes
import fcntl
import io
import logging
import mmap
import os
import random
import stat
import struct
import subprocess
import sys
import tarfile
import time

import pytest

from btrfsx import ArchiveError, Change, ChangeKind, Driver, NativeChangesUnavailable, _ioctl
from btrfsx.archive.changes import changes as naive_changes
from btrfsx.archive.native import native_changes
from btrfsx.testing import build_layer

pytestmark = pytest.mark.btrfs

ADD, MODIFY, DELETE = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
KiB = 1024

OWNERS = [(0, 0), (1000, 1000), (65534, 65534), (1000, 0)]
FILE_MODES = [0o644, 0o600, 0o755, 0o444, 0o640]
DIR_MODES = [0o755, 0o700, 0o750]
#: Sizes that matter to btrfs: empty, inline (≤ 2048 bytes by default), just
#: over the inline limit, and several pages in regular extents.
SIZES = [0, 1, 37, 700, 2048, 2049, 4096, 5 * KiB + 3, 12 * KiB, 20 * KiB]
#: A fixed second, so that restored or shared mtimes are exact nanoseconds
#: (never a whole second, where the walk compares to the second only).
T0 = 1_700_000_000_123_456_789


def _as_set(found: list[Change]) -> set[tuple[str, ChangeKind]]:
    return {(c.path, c.kind) for c in found}


def _write(path: str, data: bytes, mode: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644 if mode is None else mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _pwrite(path: str, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _give_back_times(path: str, st: os.stat_result) -> None:
    """The atime and mtime of ``st`` given back to ``path``."""
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


# ---------------------------------------------------------------- system calls Python lacks

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
AT_FDCWD = -100
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
FICLONE = 0x40049409


def _exchange(a: str, b: str) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), a)


def _fallocate(path: str, mode: int, offset: int, length: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        if _libc.fallocate(fd, mode, offset, length) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


def _clone(src: str, dst: str) -> None:
    """The whole of ``src`` reflinked over ``dst`` (cp --reflink)."""
    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY)
    try:
        fcntl.ioctl(d, FICLONE, s)
    finally:
        os.close(s)
        os.close(d)


# ---------------------------------------------------------------- random trees and mutations

class Tree:
    """Random changes to the directory tree at ``root``, each one recorded
    (``log``) as a line that says what was done, readably."""

    def __init__(self, root: str, rng: random.Random):
        self.root = root
        self.rng = rng
        self.log: list[str] = []
        self._serial = 0
        self.bulk = 0             # files in /bulk (build_layer's tNNN/dNN/fNNNN)
        self.bulk_fraction = 0.05
        self.applied: dict[str, int] = {}  # mutation kind -> times applied

    # -- looking at the tree (sorted, so a seed always picks the same targets)

    def _entries(self) -> list[tuple[str, os.stat_result]]:
        out = []
        stack = [""]
        while stack:
            rel = stack.pop()
            for name in sorted(os.listdir(self.root + rel or "/")):
                child = f"{rel}/{name}"
                st = os.lstat(self.root + child)
                out.append((child, st))
                if stat.S_ISDIR(st.st_mode) and name != "bulk":  # m_bulk's business
                    stack.append(child)
        out.sort()
        return out

    def _paths(self, of_mode) -> list[str]:
        """The entries whose ``st_mode`` passes ``of_mode``."""
        return [p for p, st in self._entries() if of_mode(st.st_mode)]

    def files(self) -> list[str]:
        return self._paths(stat.S_ISREG)

    def files_over(self, size: int) -> list[str]:
        """The regular files of more than ``size`` bytes."""
        return [f for f in self.files() if os.lstat(self.p(f)).st_size > size]

    def dirs(self, with_root: bool = True) -> list[str]:
        return ([""] if with_root else []) + self._paths(stat.S_ISDIR)

    def symlinks(self) -> list[str]:
        return self._paths(stat.S_ISLNK)

    def not_dirs(self) -> list[str]:
        return self._paths(lambda mode: not stat.S_ISDIR(mode))

    def not_symlinks(self) -> list[str]:
        return self._paths(lambda mode: not stat.S_ISLNK(mode))

    def anything(self) -> list[str]:
        return [p for p, _ in self._entries()]

    def pick(self, paths: list[str]) -> str | None:
        """One of ``paths`` at random (None, and no draw, when there are none)."""
        return self.rng.choice(paths) if paths else None

    def two_alike(self, key, keep=lambda key: True) -> tuple[str, str] | None:
        """Two files of one ``key(file)`` (a ``keep(key)`` one) at random, or None."""
        groups: dict = {}
        for f in self.files():
            groups.setdefault(key(f), []).append(f)
        pairs = [g for k, g in groups.items() if len(g) >= 2 and keep(k)]
        if not pairs:
            return None
        a, b = self.rng.sample(self.rng.choice(pairs), 2)
        return a, b

    def p(self, rel: str) -> str:
        return self.root + rel

    def _name(self, prefix: str = "n") -> str:
        self._serial += 1
        return f"{prefix}{self._serial:03d}"

    def _new_path(self, prefix: str) -> str:
        """A new name in a random directory."""
        return f"{self.rng.choice(self.dirs())}/{self._name(prefix)}"

    def _data(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def _other_data(self, old: bytes) -> bytes:
        """Random bytes as many as ``old`` but not ``old``."""
        new = self._data(len(old))
        while new == old:
            new = self._data(len(old))
        return new

    def _size(self) -> int:
        return self.rng.choice(SIZES)

    def note(self, line: str) -> None:
        self.log.append(line)

    def _empty_and_rmdir(self, d: str) -> None:
        """Empty directory ``d`` (deepest first) and remove it."""
        for dirpath, dirnames, filenames in os.walk(self.p(d), topdown=False):
            for name in filenames:
                os.unlink(os.path.join(dirpath, name))
            for name in dirnames:
                full = os.path.join(dirpath, name)
                (os.unlink if os.path.islink(full) else os.rmdir)(full)
        os.rmdir(self.p(d))

    def _rename(self, f: str, to: str) -> None:
        os.rename(self.p(f), self.p(to))
        self.note(f"rename {f} -> {to}")

    def _link(self) -> tuple[str, str] | None:
        """A random file hard-linked under a new name: (file, new name), or None."""
        f = self.pick(self.files())
        if f is None:
            return None
        to = self._new_path("h")
        os.link(self.p(f), self.p(to))
        return f, to

    # -- building a base tree

    def build(self) -> None:
        rng = self.rng
        dirs = [""]
        for _ in range(rng.randint(2, 6)):
            parent = rng.choice(dirs)
            if parent.count("/") >= 3:  # 2-3 levels deep
                parent = ""
            d = f"{parent}/{self._name('d')}"
            os.mkdir(self.p(d), rng.choice(DIR_MODES))
            dirs.append(d)
        files = []
        for _ in range(rng.randint(4, 14)):
            f = f"{rng.choice(dirs)}/{self._name('f')}"
            _write(self.p(f), self._data(self._size()), rng.choice(FILE_MODES))
            files.append(f)
        # pairs of files alike in everything but their bytes, for swaps
        for _ in range(rng.randint(0, 2)):
            size = rng.choice([5, 3000, 8 * KiB])
            a, b = f"{rng.choice(dirs)}/{self._name('s')}", f"{rng.choice(dirs)}/{self._name('s')}"
            for f in (a, b):
                _write(self.p(f), self._data(size), 0o644)
                os.utime(self.p(f), ns=(T0, T0))
                files.append(f)
        for f in rng.sample(files, min(len(files), rng.randint(0, 3))):
            os.chown(self.p(f), *rng.choice(OWNERS))
        for f in rng.sample(files, min(len(files), rng.randint(0, 3))):
            os.setxattr(self.p(f), f"user.{self._name('x')}", self._data(rng.randint(0, 40)))
        if rng.random() < 0.5:
            os.setxattr(self.p(rng.choice(dirs)), "user.dir", b"d")
        for _ in range(rng.randint(0, 3)):
            target = rng.choice(files + ["/etc/passwd", "../nowhere", "x" * 200])
            os.symlink(target, self.p(f"{rng.choice(dirs)}/{self._name('l')}"))
        for f in rng.sample(files, min(len(files), rng.randint(0, 2))):
            os.link(self.p(f), self.p(f"{rng.choice(dirs)}/{self._name('h')}"))
        if rng.random() < 0.7:
            os.mkfifo(self.p(f"{rng.choice(dirs)}/{self._name('p')}"), 0o600)
        if rng.random() < 0.3:
            os.mknod(self.p(f"{rng.choice(dirs)}/{self._name('c')}"), stat.S_IFCHR | 0o644, os.makedev(1, 3))
        for d in dirs[1:]:
            if rng.random() < 0.2:
                os.chown(self.p(d), *rng.choice(OWNERS))
        if rng.random() < self.bulk_fraction:
            # thousands of inodes: a tree of several levels, most of whose
            # blocks the snapshot shares and the search must skip
            self.bulk = rng.randint(500, 3000)
            os.mkdir(self.p("/bulk"))
            build_layer(self.p("/bulk"), self.bulk)

    # -- the mutations; each returns False when the tree has nothing it applies to

    def m_create(self) -> bool:
        f = self._new_path("c")
        size = self._size()
        _write(self.p(f), self._data(size))
        self.note(f"create {f} ({size} bytes)")
        return True

    def m_create_odd_name(self) -> bool:
        """A name with a space, a newline, non-ASCII or bytes that are not UTF-8."""
        name = self.rng.choice(["sp ace", "new\nline", "ü-umlaut", os.fsdecode(b"\xff\xfe-not-utf8"), "-dash",
                                "z" * 255])
        f = f"{self.rng.choice(self.dirs())}/{name}"
        if os.path.lexists(self.p(f)):
            return False
        _write(self.p(f), self._data(self._size()))
        self.note(f"create {f!r}")
        return True

    def m_mkdir(self) -> bool:
        d = self._new_path("m")
        os.mkdir(self.p(d))
        self.note(f"mkdir {d}")
        if self.rng.random() < 0.5:
            _write(self.p(d + "/inner"), self._data(self._size()))
            self.note(f"create {d}/inner")
        return True

    def m_write(self) -> bool:
        f = self.pick(self.files())
        if f is None:
            return False
        size = os.lstat(self.p(f)).st_size
        offset = self.rng.randint(0, size)
        n = self.rng.randint(1, 3000)
        _pwrite(self.p(f), self._data(n), offset)
        self.note(f"write {n} bytes at {offset} into {f}")
        return True

    def m_rewrite_same_size_restore_mtime(self) -> bool:
        """Different bytes, same size, the old mtime given back: the walk
        cannot see it, the native path must."""
        f = self.pick(self.files_over(0))
        if f is None:
            return False
        st = os.lstat(self.p(f))
        _pwrite(self.p(f), self._other_data(_read(self.p(f))), 0)
        _give_back_times(self.p(f), st)
        self.note(f"rewrite {f} with other bytes of the same size, mtime restored")
        return True

    def m_rewrite_identical_restore_mtime(self) -> bool:
        f = self.pick(self.files())
        if f is None:
            return False
        st = os.lstat(self.p(f))
        _write(self.p(f), _read(self.p(f)))
        _give_back_times(self.p(f), st)
        self.note(f"rewrite {f} with its own bytes, mtime restored")
        return True

    def m_swap_alike(self) -> bool:
        """Two files of the same size and mtime (and mode, owner, xattrs)
        exchanged by three renames."""
        def alike(f: str) -> tuple:
            st = os.lstat(self.p(f))
            return (st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid,
                    tuple(sorted(_xattrs(self.p(f)).items())))
        pair = self.two_alike(alike)
        if pair is None:
            return False
        a, b = pair
        tmp = f"{os.path.dirname(a)}/{self._name('tmp')}"
        os.rename(self.p(a), self.p(tmp))
        os.rename(self.p(b), self.p(a))
        os.rename(self.p(tmp), self.p(b))
        self.note(f"swap {a} and {b} (same size and mtime) by renames")
        return True

    def m_truncate(self) -> bool:
        f = self.pick(self.files())
        if f is None:
            return False
        size = self.rng.choice([0, 1, 100, 3000, 9 * KiB, 30 * KiB])
        os.truncate(self.p(f), size)
        self.note(f"truncate {f} to {size}")
        return True

    def m_append(self) -> bool:
        f = self.pick(self.files())
        if f is None:
            return False
        n = self.rng.choice([1, 100, 3000, 10 * KiB])
        with open(self.p(f), "ab") as fh:
            fh.write(self._data(n))
        self.note(f"append {n} bytes to {f}")
        return True

    def m_chmod(self) -> bool:
        # the root too: neither side may report it
        f = self.rng.choice([""] + self.not_symlinks())
        mode = self.rng.choice(FILE_MODES + DIR_MODES)
        os.chmod(self.p(f), mode)
        self.note(f"chmod {mode:o} {f}")
        return True

    def m_chmod_and_back(self) -> bool:
        f = self.pick(self.not_symlinks())
        if f is None:
            return False
        mode = stat.S_IMODE(os.lstat(self.p(f)).st_mode)
        os.chmod(self.p(f), 0o711)
        os.chmod(self.p(f), mode)
        self.note(f"chmod 711 {f} and back to {mode:o}")
        return True

    def m_chown(self) -> bool:
        f = self.pick(self.anything())
        if f is None:
            return False
        owner = self.rng.choice(OWNERS)
        os.chown(self.p(f), *owner, follow_symlinks=False)
        self.note(f"chown {owner[0]}:{owner[1]} {f}")
        return True

    def m_utime(self) -> bool:
        f = self.pick(self.anything())
        if f is None:
            return False
        # whole seconds too: the walk compares to the second when either
        # side has no sub-second part (sameFsTimeSpec), as tar-made files
        t = T0 + self.rng.choice([0, 1, 10**9, -(10**9), 7 * 10**9 + 5, -123_456_789, 376_543_211])
        os.utime(self.p(f), ns=(t, t), follow_symlinks=False)  # a symlink's own mtime too
        self.note(f"utime {f} to {t}")
        return True

    def m_xattr_set(self) -> bool:
        entries = [("", os.lstat(self.p("") or "/"))] + self._entries()
        f, st = self.rng.choice(entries)
        if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            name = self.rng.choice(["user.a", "user.b", "user.dir", "trusted.t"])
        else:
            # user.* is for files and directories only; root may give
            # trusted.* to symlinks, fifos and devices too
            name = self.rng.choice(["trusted.t", "trusted.u"])
        value = self.rng.choice([b"", b"1", b"2", self._data(100)])
        os.setxattr(self.p(f), name, value, follow_symlinks=False)
        self.note(f"setxattr {name}={value[:8]!r} on {f}")
        return True

    def m_xattr_remove(self) -> bool:
        f = self.pick([p for p in self.anything() if _xattrs(self.p(p))])
        if f is None:
            return False
        name = self.rng.choice(sorted(_xattrs(self.p(f))))
        os.removexattr(self.p(f), name, follow_symlinks=False)
        self.note(f"removexattr {name} from {f}")
        return True

    def m_rename_within(self) -> bool:
        f = self.pick(self.anything())
        if f is None:
            return False
        self._rename(f, f"{os.path.dirname(f)}/{self._name('r')}")
        return True

    def m_rename_across(self) -> bool:
        f = self.pick(self.anything())
        if f is None:
            return False
        dirs = [d for d in self.dirs() if not (d + "/").startswith(f + "/") and d != os.path.dirname(f)]
        if not dirs:
            return False
        self._rename(f, f"{self.rng.choice(dirs)}/{self._name('r')}")
        return True

    def m_rename_over(self) -> bool:
        """Rename a file over another (the target's inode goes away)."""
        files = self.files()
        if len(files) < 2:
            return False
        a, b = self.rng.sample(files, 2)
        if os.path.samefile(self.p(a), self.p(b)):
            return False
        os.rename(self.p(a), self.p(b))
        self.note(f"rename {a} over {b}")
        return True

    def m_link(self) -> bool:
        linked = self._link()
        if linked is None:
            return False
        self.note("link {} -> {}".format(*linked))
        return True

    def m_link_then_unlink(self) -> bool:
        linked = self._link()
        if linked is None:
            return False
        f, to = linked
        os.unlink(self.p(f))
        self.note(f"link {f} -> {to}, unlink {f}")
        return True

    def m_unlink(self) -> bool:
        f = self.pick(self.not_dirs())
        if f is None:
            return False
        os.unlink(self.p(f))
        self.note(f"unlink {f}")
        return True

    def m_rmdir(self) -> bool:
        """Empty a directory (deepest first) and remove it."""
        d = self.pick(self.dirs(with_root=False))
        if d is None:
            return False
        self._empty_and_rmdir(d)
        self.note(f"empty and rmdir {d}")
        return True

    def m_file_to_dir(self) -> bool:
        f = self.pick(self.not_dirs())
        if f is None:
            return False
        os.unlink(self.p(f))
        os.mkdir(self.p(f))
        _write(self.p(f + "/x"), self._data(self._size()))
        self.note(f"replace {f} by a directory holding x")
        return True

    def m_dir_to_file(self) -> bool:
        d = self.pick(self.dirs(with_root=False))
        if d is None:
            return False
        self._empty_and_rmdir(d)
        _write(self.p(d), self._data(self._size()))
        self.note(f"replace directory {d} by a file")
        return True

    def m_symlink_retarget(self) -> bool:
        f = self.pick(self.symlinks())
        if f is None:
            return False
        target = self.rng.choice(["/etc/hostname", "a/b", os.readlink(self.p(f)) + "x", "y" * 100])
        if self.rng.random() < 0.5:
            os.unlink(self.p(f))
            os.symlink(target, self.p(f))
            how = "unlink and symlink"
        else:
            tmp = f"{os.path.dirname(f)}/{self._name('tmp')}"
            os.symlink(target, self.p(tmp))
            os.rename(self.p(tmp), self.p(f))
            how = "rename over"
        self.note(f"retarget {f} -> {target!r} ({how})")
        return True

    def m_delete_recreate(self) -> bool:
        """Unlink a file and make a new one of the same name: sometimes the
        same bytes and metadata (no change), sometimes other bytes of the
        same size with the old mtime (a change only the native path sees)."""
        f = self.pick(self.files())
        if f is None:
            return False
        st = os.lstat(self.p(f))
        data = _read(self.p(f))
        xattrs = _xattrs(self.p(f))
        same = self.rng.random() < 0.5
        if not same and data:
            data = self._other_data(data)
        os.unlink(self.p(f))
        _write(self.p(f), data, stat.S_IMODE(st.st_mode))
        os.chmod(self.p(f), stat.S_IMODE(st.st_mode))
        os.chown(self.p(f), st.st_uid, st.st_gid)
        for name, value in xattrs.items():
            os.setxattr(self.p(f), name, value)
        _give_back_times(self.p(f), st)
        self.note(f"delete and recreate {f} ({'same' if same else 'other'} bytes, same size and metadata)")
        return True

    def m_fifo(self) -> bool:
        f = self._new_path("p")
        os.mkfifo(self.p(f), 0o644)
        self.note(f"mkfifo {f}")
        return True

    def m_read(self) -> bool:
        """Read a file and list a directory: atime updates (relatime) rewrite
        inode items without changing anything a diff carries."""
        f = self.pick(self.files())
        if f is None:
            return False
        _read(self.p(f))
        os.listdir(self.p(os.path.dirname(f)) or "/")
        self.note(f"read {f}")
        return True

    def m_exchange(self) -> bool:
        """renameat2(RENAME_EXCHANGE) of two entries, of any types."""
        paths = self.anything()
        if len(paths) < 2:
            return False
        a, b = self.rng.sample(paths, 2)
        if (a + "/").startswith(b + "/") or (b + "/").startswith(a + "/"):
            return False
        _exchange(self.p(a), self.p(b))
        self.note(f"exchange {a} and {b}")
        return True

    # -- changes of file data that write no file extent item of their own
    # (a reflink keeps the generation of the extents it shares; a hole is
    # no item at all): an early version decided "same data" from file
    # extent items alone and missed these

    def m_clone_over(self) -> bool:
        """FICLONE another file's extents over a file of the same size, mtime restored."""
        # not inline (btrfs clones no inline extent into a file with others)
        pair = self.two_alike(lambda f: os.lstat(self.p(f)).st_size, keep=lambda size: size > 4096)
        if pair is None:
            return False
        dst, src = pair
        st = os.lstat(self.p(dst))
        if st.st_ino == os.lstat(self.p(src)).st_ino:
            return False  # hard links of one inode: a clone onto itself
        _clone(self.p(src), self.p(dst))
        _give_back_times(self.p(dst), st)
        self.note(f"clone {src} over {dst} (same size), mtime restored")
        return True

    def m_punch_hole(self) -> bool:
        f = self.pick(self.files_over(8 * KiB))
        if f is None:
            return False
        st = os.lstat(self.p(f))
        _fallocate(self.p(f), FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 4096, 4096)
        _give_back_times(self.p(f), st)
        self.note(f"punch a hole at 4096+4096 in {f}, mtime restored")
        return True

    def m_truncate_and_extend(self) -> bool:
        f = self.pick(self.files_over(0))
        if f is None:
            return False
        st = os.lstat(self.p(f))
        os.truncate(self.p(f), 0)
        os.truncate(self.p(f), st.st_size)
        _give_back_times(self.p(f), st)
        self.note(f"truncate {f} to 0 and back to {st.st_size}, mtime restored")
        return True

    def m_bulk(self) -> bool:
        """One change to one of the thousands of files in /bulk."""
        if not self.bulk:
            return False
        k = self.rng.randrange(self.bulk)
        f = f"/bulk/t{k // 50 // 25:03d}/d{k // 50 % 25:02d}/f{k % 50:04d}"
        if not os.path.lexists(self.p(f)) or not stat.S_ISREG(os.lstat(self.p(f)).st_mode):
            return False
        how = self.rng.choice(["hidden rewrite", "append", "unlink", "chmod", "rename"])
        if how == "hidden rewrite":
            _same_size_rewrite(self.p(f))
        elif how == "append":
            with open(self.p(f), "ab") as fh:
                fh.write(b"more")
        elif how == "unlink":
            os.unlink(self.p(f))
        elif how == "chmod":
            os.chmod(self.p(f), 0o600)
        else:
            os.rename(self.p(f), self.p(f + "r"))
        self.note(f"{how} {f}")
        return True

    def m_mmap_write(self) -> bool:
        """Change bytes through a shared mapping, unmapped without msync; half
        the time with the mtime given back (a hidden rewrite)."""
        f = self.pick(self.files_over(0))
        if f is None:
            return False
        st = os.lstat(self.p(f))
        offset = self.rng.randrange(st.st_size)
        fd = os.open(self.p(f), os.O_RDWR)
        try:
            with mmap.mmap(fd, st.st_size) as m:
                m[offset] = (m[offset] + 1) % 256
        finally:
            os.close(fd)
        hidden = self.rng.random() < 0.5
        if hidden:
            _give_back_times(self.p(f), st)
        self.note(f"mmap write at {offset} of {f}" + (", mtime restored" if hidden else ""))
        return True

    def m_rename_dir_over_empty_dir(self) -> bool:
        dirs = self.dirs(with_root=False)
        empty = [d for d in dirs if not os.listdir(self.p(d))]
        if not empty:  # make one, for a later turn
            e = self._new_path("e")
            os.mkdir(self.p(e))
            self.note(f"mkdir {e} (empty)")
            return True
        target = self.rng.choice(empty)
        sources = [d for d in dirs if d != target and not (target + "/").startswith(d + "/")]
        if not sources:
            return False
        d = self.rng.choice(sources)
        os.rename(self.p(d), self.p(target))
        self.note(f"rename directory {d} over the empty directory {target}")
        return True

    def m_mknod(self) -> bool:
        """A character device made, or made again with another number."""
        devices = self._paths(stat.S_ISCHR)
        if devices and self.rng.random() < 0.6:
            f = self.rng.choice(devices)
            os.unlink(self.p(f))
        else:
            f = self._new_path("c")
        dev = os.makedev(1, self.rng.choice([3, 5, 7]))
        os.mknod(self.p(f), stat.S_IFCHR | 0o644, dev)
        self.note(f"mknod {f} c {os.major(dev)} {os.minor(dev)}")
        return True

    MUTATIONS = {
        "create": 3, "mkdir": 1, "write": 3, "rewrite_same_size_restore_mtime": 3,
        "rewrite_identical_restore_mtime": 1, "swap_alike": 2, "truncate": 2, "append": 2,
        "chmod": 2, "chmod_and_back": 1, "chown": 2, "utime": 2, "xattr_set": 2, "xattr_remove": 1,
        "rename_within": 2, "rename_across": 2, "rename_over": 1, "link": 1, "link_then_unlink": 2,
        "unlink": 2, "rmdir": 1, "file_to_dir": 1, "dir_to_file": 1, "symlink_retarget": 2,
        "delete_recreate": 2, "fifo": 1, "read": 2, "exchange": 1, "bulk": 3,
        "mmap_write": 2, "rename_dir_over_empty_dir": 1, "mknod": 1, "create_odd_name": 1,
        "clone_over": 2, "punch_hole": 2, "truncate_and_extend": 2,
    }

    def mutate(self, count: int, mutations: dict[str, int] | None = None) -> None:
        mutations = mutations or self.MUTATIONS
        kinds = list(mutations)
        weights = list(mutations.values())
        done = 0
        tries = 0
        while done < count and tries < count * 10:
            tries += 1
            kind = self.rng.choices(kinds, weights)[0]
            if getattr(self, "m_" + kind)():
                done += 1
                self.applied[kind] = self.applied.get(kind, 0) + 1


# ---------------------------------------------------------------- the rule

def _same_mtime(a: os.stat_result, b: os.stat_result) -> bool:
    # the walk's rule (containers/storage's sameFsTimeSpec)
    if a.st_mtime_ns % 10**9 == 0 or b.st_mtime_ns % 10**9 == 0:
        return a.st_mtime_ns // 10**9 == b.st_mtime_ns // 10**9
    return a.st_mtime_ns == b.st_mtime_ns


def _walk_equal(layer: str, parent: str, path: str) -> bool:
    """Regular files on both sides that the walk's rules cannot tell apart."""
    try:
        new, old = os.lstat(layer + path), os.lstat(parent + path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (stat.S_ISREG(new.st_mode) and new.st_mode == old.st_mode and new.st_uid == old.st_uid
            and new.st_gid == old.st_gid and new.st_size == old.st_size and _same_mtime(new, old)
            and _xattrs(layer + path) == _xattrs(parent + path))


def hidden_rewrites(layer: str, parent: str) -> set[str]:
    """Every path that is a regular file in both trees, alike in all the walk
    compares, with different bytes: the changes only the native path sees."""
    out = set()
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            names = set(os.listdir(layer + rel or "/")) & set(os.listdir(parent + rel or "/"))
        except (NotADirectoryError, FileNotFoundError):
            continue
        for name in names:
            path = f"{rel}/{name}"
            new, old = os.lstat(layer + path), os.lstat(parent + path)
            if stat.S_ISDIR(new.st_mode) and stat.S_ISDIR(old.st_mode):
                stack.append(path)
            elif _walk_equal(layer, parent, path) and _read(layer + path) != _read(parent + path):
                out.add(path)
    return out


def disagreements(layer: str, parent: str, native: list[Change], naive: list[Change]) -> list[str]:
    """What breaks the rule, readably; empty when all is well.

    The expected answer is the walk's plus every hidden rewrite (bytes differ,
    nothing the walk compares does) as a MODIFY, with each directory above
    one as a MODIFY too (a directory holding a change travels with the diff).
    So native ⊇ naive, every entry only native has is justified, and, the
    precision promised, no hidden rewrite is missed."""
    problems = []
    if [c.path for c in native] != sorted((c.path for c in native), key=os.fsencode):
        problems.append("native list is not sorted by path")
    if len(set(native)) != len(native):
        problems.append("native list has duplicates")
    nat, nai = _as_set(native), _as_set(naive)
    hidden = hidden_rewrites(layer, parent)
    justified = {(h, MODIFY) for h in hidden}
    for h in hidden:
        parts = h.split("/")
        justified |= {("/".join(parts[:i]), MODIFY) for i in range(2, len(parts))}
    for path, kind in sorted(nai - nat):
        problems.append(f"native misses {kind.name} {path}, which the walk reports")
    for path, kind in sorted(nat - nai - justified):
        problems.append(f"native alone reports {kind.name} {path}, unjustified (not a hidden rewrite "
                        f"nor a directory above one)")
    for path, kind in sorted(justified - nat - nai):
        problems.append(f"native misses {kind.name} {path}: "
                        + ("its bytes differ though size, mtime and metadata are the same" if path in hidden
                           else "a directory above such a file"))
    return problems


# ---------------------------------------------------------------- the differential test

APPLIED: dict[str, int] = {}  # what the differential tests did, for the summary they print


def _run_case(d: Driver, seed: int, n: int, mutations: dict[str, int] | None = None,
              ) -> tuple[list[str], list[str], list[str], int]:
    """One case with ids P<n> and L<n>; returns (problems, layer log, parent
    log, how many entries only native reported)."""
    rng = random.Random(seed)
    p_id, l_id = f"P{n}", f"L{n}"
    d.create(p_id)
    parent = d.get(p_id)
    os.chmod(parent, 0o755)
    base = Tree(parent, rng)
    base.build()
    d.create(l_id, p_id)
    layer = d.get(l_id)
    new = Tree(layer, rng)
    new._serial = base._serial  # new names never collide with the base tree's
    new.bulk = base.bulk
    old = Tree(parent, rng)
    old.bulk = base.bulk
    try:
        new.mutate(rng.randint(1, 20), mutations)
        # half the time the parent's new names are the layer's new names: the
        # same name made on both sides after the snapshot, often with the same
        # inode number (each tree numbers its new inodes from the snapshot's)
        old._serial = base._serial if rng.random() < 0.5 else new._serial + 1000
        if rng.random() < 0.25:
            old.mutate(rng.randint(1, 5))
        native = native_changes(layer, parent)
        naive = naive_changes(layer, parent)
        problems = disagreements(layer, parent, native, naive)
        if not problems and rng.random() < 0.2:
            # a second round: changes already committed (by the first call's
            # sync) and new ones not yet, on either side
            new.note("-- compared; then:")
            old.note("-- compared; then:")
            new.mutate(rng.randint(1, 5), mutations)
            if rng.random() < 0.3:
                old.mutate(rng.randint(1, 3))
            native = native_changes(layer, parent)
            naive = naive_changes(layer, parent)
            problems = disagreements(layer, parent, native, naive)
    except Exception as e:
        # an error mid-case (a mutation, or either path raising) is replayable too
        raise AssertionError(f"seed {seed}: replay with BTRFSX_NATIVE_SEED={seed}: {type(e).__name__}: {e}\n"
                             f"  mutations of the layer: {new.log}\n"
                             f"  mutations of the parent after the snapshot: {old.log}") from e
    extra = len(_as_set(native) - _as_set(naive))
    if problems:
        problems += [f"native: {[str(c) for c in native]}", f"naive:  {[str(c) for c in naive]}"]
    d.remove(l_id)
    d.remove(p_id)
    for kind, count in {**new.applied, **{"parent " + k: v for k, v in old.applied.items()}}.items():
        APPLIED[kind] = APPLIED.get(kind, 0) + count
    APPLIED["cases with /bulk"] = APPLIED.get("cases with /bulk", 0) + bool(base.bulk)
    return problems, new.log, old.log, extra


def _differential(d: Driver, seeds: list[int], mutations: dict[str, int] | None = None) -> dict:
    stats = {"cases": 0, "extra": 0, "cases_with_extra": 0, "failures": []}
    for n, seed in enumerate(seeds):
        problems, layer_log, parent_log, extra = _run_case(d, seed, n, mutations)
        stats["cases"] += 1
        stats["extra"] += extra
        stats["cases_with_extra"] += bool(extra)
        if problems:
            stats["failures"].append(
                f"seed {seed}: replay with BTRFSX_NATIVE_SEED={seed}\n"
                f"  mutations of the layer: {layer_log}\n  mutations of the parent after the snapshot: {parent_log}\n"
                + "\n".join("  " + p for p in problems))
    return stats


def _seeds(default_count: int, count_env: str) -> list[int]:
    if os.environ.get("BTRFSX_NATIVE_SEED"):
        return [int(os.environ["BTRFSX_NATIVE_SEED"])]
    count = int(os.environ.get(count_env, default_count))
    base = int(os.environ.get("BTRFSX_NATIVE_BASE_SEED", 8_000_000))
    return [base + i for i in range(count)]


def _check(stats: dict, started: float) -> None:
    elapsed = time.monotonic() - started
    print("applied:", ", ".join(f"{k} {v}" for k, v in sorted(APPLIED.items())))
    APPLIED.clear()
    print(f"{stats['cases']} cases in {elapsed:.1f} s; {stats['cases_with_extra']} with entries only native "
          f"reported ({stats['extra']} entries, all hidden rewrites or their directories)")
    assert not stats["failures"], "\n\n".join(stats["failures"][:5]) + (
        f"\n\n... {len(stats['failures'])} failing cases in all" if len(stats["failures"]) > 5 else "")
    # the generator must exercise the precision cases, or the test proves little
    if stats["cases"] >= 100:
        assert stats["cases_with_extra"] > 0


def test_differential_native_against_naive(driver):
    """A few hundred random trees and mutation sequences: native ⊇ naive,
    and what native alone reports is a hidden rewrite or its directory."""
    started = time.monotonic()
    _check(_differential(driver, _seeds(300, "BTRFSX_NATIVE_CASES")), started)


@pytest.mark.slow
def test_differential_native_against_naive_long(driver):
    started = time.monotonic()
    seeds = _seeds(3000, "BTRFSX_NATIVE_LONG_CASES")
    if not os.environ.get("BTRFSX_NATIVE_SEED"):
        seeds = [s + 1_000_000 for s in seeds]  # not the default run's seeds again
    _check(_differential(driver, seeds), started)


# ---------------------------------------------------------------- focused tests

NATIVE_LOG = "' read from btrfs metadata"  # "changes against 'A' read from ..."
WALK_LOG = "walking both trees"


def _base(d: Driver, id: str = "A") -> str:
    """Layer ``id`` with a small tree: /etc/conf, /etc/passwd (5 KiB),
    /bin/sh (12 KiB), /big (20 KiB), /empty, /tmp/ and a symlink /link."""
    d.create(id)
    root = d.get(id)
    os.chmod(root, 0o755)
    os.makedirs(root + "/etc/deep/er")
    os.mkdir(root + "/bin")
    os.mkdir(root + "/tmp")
    _write(root + "/etc/conf", b"key=value\n")
    _write(root + "/etc/passwd", b"root:x:0:0::/root:/bin/sh\n" * 200)
    _write(root + "/etc/deep/er/file", b"deep\n")
    _write(root + "/bin/sh", bytes(range(256)) * 48)
    _write(root + "/big", b"b" * 20 * KiB)
    _write(root + "/empty", b"")
    os.symlink("etc/conf", root + "/link")
    return root


def _log_says(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.name == "btrfsx.driver")


def _same_size_rewrite(path: str) -> None:
    """Other bytes of the same size, the old mtime given back."""
    st = os.lstat(path)
    _write(path, bytes(255 - b for b in _read(path)))
    _give_back_times(path, st)


def test_driver_uses_the_native_path_for_a_snapshot_and_walks_otherwise(driver, caplog):
    """changes(B, A) with B a snapshot of A is read from btrfs metadata;
    changes(C, B) with B and C both snapshots of A is walked; both answers
    are the walk's."""
    caplog.set_level(logging.DEBUG, logger="btrfsx.driver")
    _base(driver)
    driver.create("B", "A")
    driver.create("C", "A")
    b, c = driver.get("B"), driver.get("C")
    _write(b + "/etc/conf", b"key=other value\n")
    os.unlink(b + "/big")
    _write(c + "/tmp/new", b"new")
    os.chmod(c + "/bin/sh", 0o700)

    caplog.clear()
    found = driver.changes("B", "A")
    assert _log_says(caplog, NATIVE_LOG) and not _log_says(caplog, WALK_LOG)
    assert found == naive_changes(b, driver.get("A"))
    assert [str(x) for x in found] == ["D /big", "C /etc", "C /etc/conf"]

    caplog.clear()
    found = driver.changes("C", "B")
    assert _log_says(caplog, WALK_LOG) and not _log_says(caplog, NATIVE_LOG)
    # the log says why: C is not a snapshot of B
    assert any("not a snapshot" in r.getMessage() for r in caplog.records)
    assert found == naive_changes(c, b)
    assert [str(x) for x in found] == ["A /big", "C /bin", "C /bin/sh", "C /etc", "C /etc/conf",
                                       "C /tmp", "A /tmp/new"]

    # the other way round (the parent is the snapshot) is walked too
    caplog.clear()
    assert driver.changes("A", "B") == naive_changes(driver.get("A"), b)
    assert _log_says(caplog, WALK_LOG) and not _log_says(caplog, NATIVE_LOG)


def test_changes_native_raises_naming_layer_parent_and_reason(home):
    """btrfsx.changes=native: a pair the native path cannot read raises
    NativeChangesUnavailable instead of walking; a snapshot pair works."""
    with Driver(home, ["btrfsx.changes=native"]) as d:
        _base(d)
        d.create("B", "A")
        d.create("C", "A")
        _write(d.get("C") + "/x", b"x")
        with pytest.raises(NativeChangesUnavailable) as err:
            d.changes("C", "B")
        message = str(err.value)
        assert "'C'" in message and "'B'" in message and "not a snapshot of the parent" in message
        assert [str(x) for x in d.changes("C", "A")] == ["A /x"]
        # without a parent every entry is an addition, no btrfs metadata needed
        assert ("/x", ADD) in _as_set(d.changes("C"))


def test_native_changes_says_why_it_cannot(driver):
    """native_changes itself: a directory that is not a subvolume root, a
    layer that is no snapshot of the parent (either way round), each a
    NativeChangesUnavailable with the reason, never a wrong answer."""
    a = _base(driver)
    driver.create("B", "A")
    b = driver.get("B")
    driver.create("C")
    with pytest.raises(NativeChangesUnavailable, match="not a subvolume root"):
        native_changes(b + "/etc", a + "/etc")
    for layer, parent in ((a, b), (driver.get("C"), a), (b, b)):
        with pytest.raises(NativeChangesUnavailable, match="not a snapshot of the parent"):
            native_changes(layer, parent)


def test_changes_naive_never_uses_the_native_path(home, caplog):
    caplog.set_level(logging.DEBUG, logger="btrfsx.driver")
    with Driver(home, ["btrfsx.changes=naive"]) as d:
        _base(d)
        d.create("B", "A")
        _write(d.get("B") + "/etc/conf", b"key=other value\n")
        _same_size_rewrite(d.get("B") + "/big")  # only the native path would see this
        caplog.clear()
        found = d.changes("B", "A")
        assert not _log_says(caplog, NATIVE_LOG) and not _log_says(caplog, WALK_LOG)
        assert [str(x) for x in found] == ["C /etc", "C /etc/conf"]  # /big unseen: it was the walk


@pytest.mark.parametrize("where", ["layer", "parent"])
def test_a_nested_subvolume_means_the_walk(home, caplog, where):
    """A nested subvolume's contents are in another tree: auto walks (and
    says why), native refuses, naming the reason."""
    caplog.set_level(logging.DEBUG, logger="btrfsx.driver")
    with Driver(home) as d, Driver(home, ["btrfsx.changes=native"]) as strict:
        _base(d)
        d.create("B", "A")
        root = d.get("B" if where == "layer" else "A")
        fd = os.open(root + "/tmp", os.O_RDONLY | os.O_DIRECTORY)
        try:
            _ioctl.create_subvolume(fd, "nested")
        finally:
            os.close(fd)
        _write(root + "/tmp/nested/inside", b"in a nested subvolume")
        caplog.clear()
        found = d.changes("B", "A")
        assert _log_says(caplog, WALK_LOG) and not _log_says(caplog, NATIVE_LOG)
        assert any("nested subvolume" in r.getMessage() for r in caplog.records)
        assert found == naive_changes(d.get("B"), d.get("A"))
        kind = ADD if where == "layer" else DELETE
        assert ("/tmp/nested", kind) in _as_set(found)
        with pytest.raises(NativeChangesUnavailable, match="nested subvolume"):
            strict.changes("B", "A")
        with pytest.raises(NativeChangesUnavailable, match="nested subvolume"):
            native_changes(d.get("B"), d.get("A"))
        strict.close()


def test_the_placeholder_of_a_nested_subvolume_once_it_is_gone(driver, caplog):
    """A snapshot holds an empty placeholder directory (inode 2, no inode
    item in its tree) where its source had a nested subvolume; once that
    subvolume is deleted from the parent the native path is usable again,
    and agrees with the walk about the placeholder, there and removed."""
    caplog.set_level(logging.DEBUG, logger="btrfsx.driver")
    a = _base(driver)
    fd = os.open(a + "/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _ioctl.create_subvolume(fd, "nested")
        _write(a + "/tmp/nested/f", b"f")
        driver.create("B", "A")
        b = driver.get("B")
        assert os.lstat(b + "/tmp/nested").st_ino == 2 and os.listdir(b + "/tmp/nested") == []
        with pytest.raises(NativeChangesUnavailable, match="nested subvolume"):
            native_changes(b, a)
        _ioctl.destroy_subvolume(fd, "nested")
    finally:
        os.close(fd)
    caplog.clear()
    assert [str(x) for x in driver.changes("B", "A")] == ["C /tmp", "A /tmp/nested"] == \
        [str(x) for x in naive_changes(b, a)]
    assert _log_says(caplog, NATIVE_LOG)
    os.rmdir(b + "/tmp/nested")
    assert native_changes(b, a) == naive_changes(b, a) == []


def test_changes_of_the_parent_after_the_snapshot_are_reported(driver):
    """The native path reads both trees: a file modified, deleted or added in
    the parent after the snapshot is a change of the layer against it."""
    a = _base(driver)
    driver.create("B", "A")
    b = driver.get("B")
    _write(a + "/etc/conf", b"changed in the parent\n")
    os.unlink(a + "/bin/sh")
    _write(a + "/tmp/added", b"added to the parent")
    os.rename(a + "/etc/deep", a + "/moved")
    _same_size_rewrite(a + "/big")   # a hidden rewrite, in the parent this time
    found = native_changes(b, a)
    assert [str(x) for x in found] == [
        "C /big",             # only native: same size and mtime, other bytes
        "C /bin", "A /bin/sh",  # deleted from the parent: the layer has it
        "C /etc", "C /etc/conf", "A /etc/deep", "A /etc/deep/er", "A /etc/deep/er/file",
        "D /moved",
        "C /tmp", "D /tmp/added",
    ]
    assert _as_set(found) - _as_set(naive_changes(b, a)) == {("/big", MODIFY)}


def test_a_rewrite_with_size_and_mtime_given_back_is_seen_by_native_only(driver):
    """Precision (a): other bytes of the same size and the old mtime: the
    walk sees nothing, the native path reports the file and its directories."""
    a = _base(driver)
    driver.create("B", "A")
    b = driver.get("B")
    for path in ("/etc/deep/er/file", "/etc/passwd", "/bin/sh"):  # inline, 5 KiB, 12 KiB
        _same_size_rewrite(b + path)
    assert naive_changes(b, a) == []
    assert [str(x) for x in native_changes(b, a)] == [
        "C /bin", "C /bin/sh", "C /etc", "C /etc/deep", "C /etc/deep/er", "C /etc/deep/er/file", "C /etc/passwd"]


def test_two_alike_files_swapped_by_renames_are_seen_by_native_only(driver):
    """Precision (b): two files of the same size, mode and mtime exchanged by
    renames: the walk sees the same names with the same stat; the native
    path sees other inodes there and compares bytes."""
    d = driver
    d.create("A")
    a = d.get("A")
    os.chmod(a, 0o755)
    os.mkdir(a + "/dir")
    for name, byte in (("one", b"1"), ("two", b"2")):
        _write(a + "/dir/" + name, byte * 6000)
        os.utime(a + "/dir/" + name, ns=(T0, T0))
    d.create("B", "A")
    b = d.get("B")
    os.rename(b + "/dir/one", b + "/dir/tmp")
    os.rename(b + "/dir/two", b + "/dir/one")
    os.rename(b + "/dir/tmp", b + "/dir/two")
    assert naive_changes(b, a) == []
    assert [str(x) for x in native_changes(b, a)] == ["C /dir", "C /dir/one", "C /dir/two"]


def test_nothing_changed_when_bytes_and_metadata_are_given_back(driver):
    """Both agree there is no change: a file rewritten with its own bytes and
    its mtime given back (native compares the bytes), a chmod undone, a file
    deleted and made again alike, and files only read (atime)."""
    a = _base(driver)
    driver.create("B", "A")
    b = driver.get("B")
    st = os.lstat(b + "/bin/sh")
    _write(b + "/bin/sh", _read(b + "/bin/sh"))
    _give_back_times(b + "/bin/sh", st)
    os.chmod(b + "/etc/passwd", 0o600)
    os.chmod(b + "/etc/passwd", 0o644)
    os.chmod(b + "/etc", 0o700)
    os.chmod(b + "/etc", 0o755)
    st = os.lstat(b + "/big")
    os.unlink(b + "/big")
    _write(b + "/big", b"b" * 20 * KiB)
    _give_back_times(b + "/big", st)
    for path in ("/etc/conf", "/etc/deep/er/file"):
        _read(b + path)
        _read(a + path)
    assert naive_changes(b, a) == []
    assert native_changes(b, a) == []


def test_uncommitted_changes_and_dirty_pages_are_seen(driver):
    """No sync before asking: the native path commits first.  An append
    whose pages are still dirty changed the inode in memory only (its item
    reaches the tree at writeback); an early version missed it."""
    a = _base(driver)
    driver.create("B", "A")
    b = driver.get("B")
    with open(b + "/etc/passwd", "ab") as f:
        f.write(b"nobody:x:65534:65534::/:/bin/false\n")
        f.flush()
        # still open, never fsynced: the data is in the page cache
        assert [str(x) for x in native_changes(b, a)] == ["C /etc", "C /etc/passwd"]
    _write(b + "/tmp/fresh", b"fresh")
    fd = os.open(b + "/big", os.O_WRONLY)
    try:
        st = os.fstat(fd)
        os.pwrite(fd, b"X" * 100, 9000)  # dirty pages of a hidden rewrite
        _give_back_times(b + "/big", st)
        found = native_changes(b, a)
    finally:
        os.close(fd)
    assert [str(x) for x in found] == ["C /big", "C /etc", "C /etc/passwd", "C /tmp", "A /tmp/fresh"]
    assert _as_set(found) - _as_set(naive_changes(b, a)) == {("/big", MODIFY)}


def test_uncommitted_changes_just_after_the_snapshot(driver):
    """The first write after the snapshot, asked about at once, many times."""
    _base(driver)
    for i in range(20):
        driver.create(f"B{i}", "A")
        b = driver.get(f"B{i}")
        with open(b + "/etc/conf", "ab") as f:
            f.write(b"x")
        assert [str(x) for x in native_changes(b, driver.get("A"))] == ["C /etc", "C /etc/conf"]


def test_apply_diff_onto_a_snapshot_then_changes(driver, caplog):
    """The containers/storage flow: B made from A, a layer tar applied to it,
    then its changes: read natively, the walk's answer, and the applied
    layer's own changes.  After a failed apply_diff the layer is put back
    (from a snapshot of itself, no longer A's snapshot): the walk, the same
    answer."""
    caplog.set_level(logging.DEBUG, logger="btrfsx.driver")
    a = _base(driver)
    driver.create("C", "A")
    c = driver.get("C")
    _write(c + "/etc/conf", b"from C, a little longer\n")
    os.unlink(c + "/bin/sh")
    os.makedirs(c + "/opt/app")
    _write(c + "/opt/app/run", b"r" * 9000)
    os.chmod(c + "/tmp", 0o1777)
    expected = driver.changes("C", "A")
    driver.create("B", "A")
    with driver.diff("C", "A") as tar:
        driver.apply_diff("B", "A", tar)
    caplog.clear()
    found = driver.changes("B", "A")
    assert _log_says(caplog, NATIVE_LOG)
    assert found == naive_changes(driver.get("B"), a) == expected

    with driver.diff("C", "A") as tar:
        data = tar.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        cut = t.getmember("opt/app/run").offset_data + 4000
    with pytest.raises(ArchiveError):
        driver.apply_diff("B", "A", io.BytesIO(data[:cut]))  # cut off inside /opt/app/run
    caplog.clear()
    found = driver.changes("B", "A")
    assert found == naive_changes(driver.get("B"), a) == expected
    # docs/changes.md: the layer swapped back from its backup is no snapshot of A
    assert _log_says(caplog, WALK_LOG) and not _log_says(caplog, NATIVE_LOG)


def _tar(stream) -> list[tuple]:
    with stream, tarfile.open(fileobj=io.BytesIO(stream.read()), mode="r|") as t:
        return [(m.name, m.type, m.size, m.mode, m.uid, m.gid, m.mtime, m.linkname) for m in t]


def test_diff_and_diff_size_agree_between_native_and_naive(home):
    """Two drivers on one home, one native, one naive: the same diff tar and
    diff_size for a layer with every kind of change the walk can see; for a
    hidden rewrite the native diff carries the file."""
    with Driver(home, ["btrfsx.changes=native"]) as native, Driver(home, ["btrfsx.changes=naive"]) as naive:
        _base(native)
        native.create("B", "A")
        b = native.get("B")
        _write(b + "/etc/conf", b"key=other, longer\n")
        os.unlink(b + "/big")
        os.rename(b + "/etc/deep", b + "/bin/deep")
        os.link(b + "/bin/sh", b + "/bin/bash")
        os.setxattr(b + "/etc/conf", "user.x", b"1")
        os.chown(b + "/empty", 1000, 1000)
        os.unlink(b + "/link")
        os.symlink("bin/sh", b + "/link")
        os.mkfifo(b + "/tmp/fifo")
        assert native.changes("B", "A") == naive.changes("B", "A")
        assert _tar(native.diff("B", "A")) == _tar(naive.diff("B", "A"))
        with native.diff("B", "A") as x, naive.diff("B", "A") as y:
            assert x.read() == y.read()  # the same bytes, not just the same members
        assert native.diff_size("B", "A") == naive.diff_size("B", "A") > 0

        _same_size_rewrite(b + "/etc/passwd")
        assert "etc/passwd" in [m[0] for m in _tar(native.diff("B", "A"))]
        assert "etc/passwd" not in [m[0] for m in _tar(naive.diff("B", "A"))]
        assert native.diff_size("B", "A") == naive.diff_size("B", "A") + os.lstat(b + "/etc/passwd").st_size
        naive.close()



def test_many_changes_across_many_leaves(driver):
    """Thousands of files, a third of them changed in ways the walk sees or
    not: the tree search spans many leaves and several buffers, and the
    answer is the expected one, entry for entry."""
    d = driver
    d.create("A")
    a = d.get("A")
    os.chmod(a, 0o755)
    build_layer(a, 6000)
    d.create("B", "A")
    b = d.get("B")
    rng = random.Random(6000)
    files = sorted(f"/t{k // 50 // 25:03d}/d{k // 50 % 25:02d}/f{k % 50:04d}" for k in range(6000))
    for f in rng.sample(files, 2000):
        how = rng.randrange(5)
        if how == 0:
            os.chmod(b + f, 0o600)
        elif how == 1:
            st = os.lstat(b + f)
            _write(b + f, _read(b + f).upper())  # same size
            _give_back_times(b + f, st)
        elif how == 2:
            os.unlink(b + f)
        elif how == 3:
            os.setxattr(b + f, "user.k", b"v")
        else:
            _read(b + f)  # atime only
    found = native_changes(b, a)
    assert disagreements(b, a, found, naive_changes(b, a)) == []
    assert len(found) > 1600


def test_a_hidden_rewrite_past_the_first_mebibyte(driver):
    """A 3 MiB file whose last byte alone changed, mtime given back: found
    (the byte comparison reads past its first chunk)."""
    d = driver
    d.create("A")
    a = d.get("A")
    os.chmod(a, 0o755)
    _write(a + "/large", b"\0" * (3 << 20))
    d.create("B", "A")
    b = d.get("B")
    st = os.lstat(b + "/large")
    _pwrite(b + "/large", b"\1", (3 << 20) - 1)
    _give_back_times(b + "/large", st)
    assert naive_changes(b, a) == []
    assert [str(x) for x in native_changes(b, a)] == ["C /large"]


def test_every_name_of_a_file_with_many_hard_links(driver):
    """A file with 120 long-named hard links in one directory (beyond one
    INODE_REF item: the rest are INODE_EXTREFs) rewritten invisibly to the
    walk: each of its names is reported; one name more, one less, in
    another directory too, are seen by both."""
    d = driver
    d.create("A")
    a = d.get("A")
    os.chmod(a, 0o755)
    os.mkdir(a + "/links")
    os.mkdir(a + "/other")
    _write(a + "/links/original", b"o" * 6000)
    names = [f"{i:03d}-" + "n" * 200 for i in range(120)]
    for name in names:
        os.link(a + "/links/original", a + "/links/" + name)
    os.link(a + "/links/original", a + "/other/elsewhere")
    fd = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _ioctl.sync(fd)
        ino = os.lstat(a + "/links/original").st_ino
        kinds = {item.type for item in _ioctl.TreeSearch(fd, 0, min_objectid=ino, max_objectid=ino,
                                                         min_type=_ioctl.INODE_REF_KEY,
                                                         max_type=_ioctl.INODE_EXTREF_KEY)}
    finally:
        os.close(fd)
    assert kinds == {_ioctl.INODE_REF_KEY, _ioctl.INODE_EXTREF_KEY}  # the names are in both kinds of item
    d.create("B", "A")
    b = d.get("B")
    _same_size_rewrite(b + "/links/original")
    expected = {("/links", MODIFY), ("/other", MODIFY), ("/links/original", MODIFY), ("/other/elsewhere", MODIFY)}
    expected |= {("/links/" + name, MODIFY) for name in names}
    assert naive_changes(b, a) == []
    found = native_changes(b, a)
    assert _as_set(found) == expected
    assert len(found) == len(expected)
    os.link(b + "/links/original", b + "/links/" + "m" * 250)
    os.unlink(b + "/links/" + names[77])
    found = native_changes(b, a)
    assert disagreements(b, a, found, naive_changes(b, a)) == []
    assert {("/links/" + "m" * 250, ADD), ("/links/" + names[77], DELETE)} <= _as_set(found)


def test_a_snapshot_of_a_snapshot(driver, caplog):
    """C from B from A: C against B is native, against A the walk; B changed
    after C was made is seen; all agree with the walk."""
    caplog.set_level(logging.DEBUG, logger="btrfsx.driver")
    a = _base(driver)
    driver.create("B", "A")
    b = driver.get("B")
    _write(b + "/etc/conf", b"in B, longer than before\n")
    driver.create("C", "B")
    c = driver.get("C")
    _write(c + "/tmp/in-c", b"c")
    os.unlink(b + "/big")      # the parent, after the snapshot
    caplog.clear()
    assert [str(x) for x in driver.changes("C", "B")] == ["A /big", "C /tmp", "A /tmp/in-c"]
    assert _log_says(caplog, NATIVE_LOG)
    caplog.clear()
    assert driver.changes("C", "A") == naive_changes(c, a)
    assert [str(x) for x in driver.changes("C", "A")] == ["C /etc", "C /etc/conf", "C /tmp", "A /tmp/in-c"]
    assert _log_says(caplog, WALK_LOG)


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_NOCOW_FL = 0x80086601, 0x40086602, 0x00800000


def test_hidden_rewrites_of_nocow_preallocated_and_mapped_files(driver):
    """Data written in place where btrfs can (a NOCOW file, written twice
    so the second write finds the extent the layer's own), into a
    preallocated extent, and through a shared mapping still mapped and
    dirty when asked: each with size and mtime given back, each found."""
    d = driver
    d.create("A")
    a = d.get("A")
    os.chmod(a, 0o755)
    fd = os.open(a + "/nocow", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", FS_NOCOW_FL))  # only while empty
        os.write(fd, b"n" * 16 * KiB)
    finally:
        os.close(fd)
    fd = os.open(a + "/prealloc", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 16 * KiB)
    finally:
        os.close(fd)
    _write(a + "/mapped", b"m" * 16 * KiB)
    for name in ("nocow", "prealloc", "mapped"):
        os.utime(a + "/" + name, ns=(T0, T0))
    d.create("B", "A")
    b = d.get("B")
    fd = os.open(b + "/nocow", os.O_RDONLY)
    try:
        assert struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0] & FS_NOCOW_FL
    finally:
        os.close(fd)
    for data in (b"1" * 4096, b"2" * 4096):  # the second write is in place
        fd = os.open(b + "/nocow", os.O_WRONLY)
        try:
            os.pwrite(fd, data, 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    _pwrite(b + "/prealloc", b"p" * 4096, 8192)
    fd = os.open(b + "/mapped", os.O_RDWR)
    m = mmap.mmap(fd, 16 * KiB)
    try:
        m[5000:5004] = b"MMAP"
        for name in ("nocow", "prealloc", "mapped"):
            os.utime(b + "/" + name, ns=(T0, T0))
        found = native_changes(b, a)   # the mapped page is still dirty here
        assert naive_changes(b, a) == []
    finally:
        m.close()
        os.close(fd)
    assert [str(x) for x in found] == ["C /mapped", "C /nocow", "C /prealloc"]


# Data changes that write no file extent item of a new generation: a reflink
# copies the source's items (their generation is the source's), and a hole
# (NO_HOLES, mkfs's default) is the absence of an item.  With the size and
# mtime given back the walk cannot see them; the native path must, though it
# cannot tell from file extent items (an early version decided "same data"
# from those alone and missed every one of these): the inode item says the
# file changed (ctime, sequence).


def _extentless_case(driver, change) -> tuple[str, str]:
    """Layers A and B (a snapshot of A) holding /dir/x and /dir/y, 8 KiB each,
    of different bytes, the same mtime; ``change(b)`` applied to B."""
    driver.create("A")
    a = driver.get("A")
    os.chmod(a, 0o755)
    os.mkdir(a + "/dir")
    _write(a + "/dir/x", b"x" * 8 * KiB)
    _write(a + "/dir/y", b"y" * 8 * KiB)
    _write(a + "/dir/inline", b"i" * 100)
    for name in ("x", "y", "inline"):
        os.utime(a + "/dir/" + name, ns=(T0, T0))
    driver.create("B", "A")
    b = driver.get("B")
    change(b)
    return b, a


def _expect_hidden(b: str, a: str, path: str) -> None:
    assert _read(b + path) != _read(a + path)           # a real change,
    assert naive_changes(b, a) == []                     # invisible to the walk,
    assert [str(x) for x in native_changes(b, a)] == ["C /dir", f"C {path}"]


def test_a_reflink_over_a_file_is_seen_by_native(driver):
    def change(b):
        _clone(b + "/dir/y", b + "/dir/x")               # cp --reflink=always y x
        os.utime(b + "/dir/x", ns=(T0, T0))
    _expect_hidden(*_extentless_case(driver, change), "/dir/x")


def test_copy_file_range_over_a_file_is_seen_by_native(driver):
    def change(b):
        src, dst = os.open(b + "/dir/y", os.O_RDONLY), os.open(b + "/dir/x", os.O_WRONLY)
        try:
            assert os.copy_file_range(src, dst, 8 * KiB) == 8 * KiB   # btrfs reflinks it
        finally:
            os.close(src)
            os.close(dst)
        os.utime(b + "/dir/x", ns=(T0, T0))
    _expect_hidden(*_extentless_case(driver, change), "/dir/x")


def test_a_punched_hole_is_seen_by_native(driver):
    def change(b):
        _fallocate(b + "/dir/x", FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 4096)
        os.utime(b + "/dir/x", ns=(T0, T0))
    _expect_hidden(*_extentless_case(driver, change), "/dir/x")


@pytest.mark.parametrize("name", ["x", "inline"])
def test_truncate_and_extend_is_seen_by_native(driver, name):
    def change(b):
        size = os.lstat(f"{b}/dir/{name}").st_size
        os.truncate(f"{b}/dir/{name}", 0)
        os.truncate(f"{b}/dir/{name}", size)                # all zeros now, and no extent item
        os.utime(f"{b}/dir/{name}", ns=(T0, T0))
    _expect_hidden(*_extentless_case(driver, change), f"/dir/{name}")


def test_the_same_new_name_reflinked_on_both_sides_is_seen_by_native(driver):
    """After the snapshot each tree numbers its new inodes from the same
    point: /dir/n made in both (the layer's a reflink of x, the parent's of
    y) has one inode number on both sides and no extent item of a new
    generation; "same number, no data written" is not "same data" here."""
    def change(b):
        for root, src in ((b, "x"), (driver.get("A"), "y")):
            _write(root + "/dir/n", b"")
            _clone(f"{root}/dir/{src}", root + "/dir/n")
            os.utime(root + "/dir/n", ns=(T0, T0))
    b, a = _extentless_case(driver, change)
    assert os.lstat(b + "/dir/n").st_ino == os.lstat(a + "/dir/n").st_ino
    _expect_hidden(b, a, "/dir/n")

# ---------------------------------------------------------------- without privilege

def _as_nobody(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python process as uid and gid 65534 (it prints what
    it found; a traceback fails the test).  Modules are imported while still
    root: the interpreter's standard library may be where nobody can read."""
    prelude = ("import os, sys, logging, btrfsx, btrfsx.archive.native, btrfsx.archive.changes\n"
               "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)


def test_native_changes_needs_cap_sys_admin(btrfs_fs):
    """As an unprivileged user the tree search is refused: native_changes
    raises NativeChangesUnavailable saying so, not a PermissionError."""
    top = btrfs_fs.mountpoint / "unpriv"
    top.mkdir()
    os.chmod(top, 0o755)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _ioctl.create_subvolume(fd, "A")
        os.chmod(top / "A", 0o755)
        _write(str(top / "A" / "f"), b"f" * 5000)
        afd = os.open(top / "A", os.O_RDONLY | os.O_DIRECTORY)
        try:
            _ioctl.snapshot(afd, fd, "B")
        finally:
            os.close(afd)
    finally:
        os.close(fd)
    _write(str(top / "B" / "g"), b"g")
    a, b = str(top / "A"), str(top / "B")
    assert [str(x) for x in native_changes(b, a)] == ["A /g"]  # as root it works
    proc = _as_nobody(f"""
from btrfsx import NativeChangesUnavailable
from btrfsx.archive.native import native_changes
from btrfsx.archive.changes import changes
try:
    native_changes({b!r}, {a!r})
except NativeChangesUnavailable as e:
    print("unavailable:", e)
except PermissionError as e:
    print("permission error:", e)
else:
    print("no error")
print("walk:", [str(c) for c in changes({b!r}, {a!r})])
""")
    assert proc.returncode == 0, proc.stderr
    assert "unavailable:" in proc.stdout and "CAP_SYS_ADMIN" in proc.stdout, proc.stdout
    assert "walk: ['A /g']" in proc.stdout


def test_rootless_driver_falls_back_to_the_walk(btrfs_fs):
    """A rootless Driver (auto) gets the walk's answer, and says why in its log."""
    home = btrfs_fs.mountpoint / "rootless"
    home.mkdir()
    os.chown(home, 65534, 65534)
    proc = _as_nobody(f"""
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="LOG %(name)s %(message)s")
from btrfsx import Driver, NativeChangesUnavailable
d = Driver({str(home)!r})
d.create("A")
os.chmod(d.get("A"), 0o755)
open(os.path.join(d.get("A"), "f"), "wb").write(b"f" * 5000)
d.create("B", "A")
open(os.path.join(d.get("B"), "g"), "wb").write(b"g")
print("changes:", [str(c) for c in d.changes("B", "A")])
strict = Driver({str(home)!r}, ["btrfsx.changes=native"])
try:
    strict.changes("B", "A")
except NativeChangesUnavailable as e:
    print("native:", e)
strict.close()
d.remove("B"); d.remove("A")
d.cleanup()
""")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "changes: ['A /g']" in proc.stdout
    walked = [line for line in proc.stdout.splitlines() if line.startswith("LOG btrfsx.driver") and WALK_LOG in line]
    assert walked and "CAP_SYS_ADMIN" in walked[0], proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line.startswith("LOG") and NATIVE_LOG in line]
    assert "native: layer 'B'" in proc.stdout and "CAP_SYS_ADMIN" in proc.stdout


# ---- issue #15 (4): the setups where the native path was slow, kept exact

def _grid(root: str, dirs: int, files: int) -> None:
    """``dirs`` directories of ``files`` files of 32 bytes each."""
    for i in range(dirs):
        os.mkdir(f"{root}/d{i:03d}")
        for j in range(files):
            _write(f"{root}/d{i:03d}/f{j:04d}", b"x" * 32)


def _ten_changes(root: str, dirs: list[int]) -> None:
    """4 files modified, 3 added, 3 deleted, in directories ``dirs`` (10, cycled)."""
    for k in range(4):
        with open(f"{root}/d{dirs[k]:03d}/f{k:04d}", "ab") as f:
            f.write(b"changed\n")
    for k in range(3):
        _write(f"{root}/d{dirs[4 + k]:03d}/new{k}", b"y" * 32)
    for k in range(3):
        os.unlink(f"{root}/d{dirs[7 + k]:03d}/f{k + 10:04d}")


def _trees(layer: str, parent: str):
    """The native path's two trees of ``layer`` against ``parent`` (after a commit)."""
    from btrfsx.archive.native import _snapshot_point, _Tree
    nfd, ofd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY), os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        since, snapshot_ns = _snapshot_point(nfd, ofd)
        _ioctl.sync(nfd)
        new, old = _Tree(nfd, since), _Tree(ofd, since)
        return (new.changed_since(old, snapshot_ns), old.changed_since(new, snapshot_ns), len(new.written),
                len(old.written))
    finally:
        os.close(nfd)
        os.close(ofd)


TEN_CHANGES = ["C /d000", "C /d000/f0000", "C /d001", "C /d001/f0001", "C /d002", "C /d002/f0002", "C /d003",
               "C /d003/f0003", "C /d004", "A /d004/new0", "C /d005", "A /d005/new1", "C /d006", "A /d006/new2",
               "C /d007", "D /d007/f0010", "C /d008", "D /d008/f0011", "C /d009", "D /d009/f0012"]


def test_a_base_written_and_snapshotted_in_one_transaction(driver):
    """Files written through get() and the snapshot taken before any commit:
    the base's inodes were written in the snapshot's own transaction, and
    none of them is taken for a change (only the 10 changed inodes and the
    directories whose entries changed are)."""
    driver.create("base")
    _grid(driver.get("base"), 20, 50)
    driver.create("child", "base")      # no commit since the files were written
    child = driver.get("child")
    _ten_changes(child, list(range(10)))
    os.sync()
    assert [str(c) for c in driver.changes("child", "base")] == TEN_CHANGES
    assert native_changes(child, driver.get("base")) == naive_changes(child, driver.get("base"))
    new_changed, old_changed, _, _ = _trees(child, driver.get("base"))
    assert len(new_changed) == 13 and not old_changed   # 4 modified, 3 added, the 6 directories


def test_a_base_that_is_itself_a_child(driver):
    """base -> mid -> child, mid changed before and after child's snapshot:
    exact, and only what changed since child's snapshot is looked at."""
    driver.create("base")
    _grid(driver.get("base"), 20, 50)
    driver.create("mid", "base")
    mid = driver.get("mid")
    _write(mid + "/d000/in-mid", b"before the child's snapshot")
    os.unlink(mid + "/d001/f0020")
    driver.create("child", "mid")
    child = driver.get("child")
    _ten_changes(child, list(range(10, 20)))
    _write(mid + "/d019/after", b"in mid, after the child's snapshot")
    os.sync()
    found = driver.changes("child", "mid")
    assert found == naive_changes(child, mid)
    assert ("/d000/in-mid", ADD) not in _as_set(found) and ("/d019/after", DELETE) in _as_set(found)
    assert len(found) == 20 + 1
    assert driver.changes("child", "base") == naive_changes(child, driver.get("base"))   # the walk


def test_both_trees_read_then_native(driver):
    """A reader without O_NOATIME (ls -R, a build) rewrites every
    directory's inode item on each side (relatime): the native path still
    gives the walk's answer, and looks only at what changed (those
    directories' ctimes are older than the snapshot on both sides)."""
    driver.create("base")
    base = driver.get("base")
    _grid(base, 20, 50)
    # a directory changed in the snapshot's clock tick is not provably
    # unchanged by its ctime (it is then looked at): not the case tested
    time.sleep(0.05)
    driver.create("child", "base")
    child = driver.get("child")
    _ten_changes(child, list(range(10)))
    os.chmod(child + "/d015", 0o700)              # changed in the child, read in both
    os.sync()
    for root in (base, child):
        for dirpath, _, _ in os.walk(root):
            os.listdir(dirpath)
    expected = sorted(TEN_CHANGES + ["C /d015"], key=lambda c: c[2:])
    assert [str(c) for c in native_changes(child, base)] == expected
    assert [str(c) for c in naive_changes(child, base)] == expected
    new_changed, old_changed, new_written, old_written = _trees(child, base)
    assert new_written > 20 and old_written > 20   # every directory's inode item rewritten (atime)
    # 4 modified, 3 added, the 6 directories whose entries changed, d015;
    # in the parent, those 7 directories (rewritten on both sides, not alike)
    assert len(new_changed) == 14 and len(old_changed) == 7 and old_changed.keys() <= new_changed.keys()


def test_a_change_on_each_side_of_a_directory_read_on_both(driver):
    """Both sides read (atimes rewritten), then one entry added in the
    parent's directory and another in the child's: each side's directory is
    newer than the snapshot, and both additions are found."""
    driver.create("base")
    base = driver.get("base")
    _grid(base, 3, 10)
    driver.create("child", "base")
    child = driver.get("child")
    for root in (base, child):
        for dirpath, _, _ in os.walk(root):
            os.listdir(dirpath)
    os.sync()
    _write(base + "/d001/only-in-base", b"b")
    _write(child + "/d001/only-in-child", b"c")
    os.sync()
    assert [str(c) for c in native_changes(child, base)] == ["C /d001", "D /d001/only-in-base",
                                                            "A /d001/only-in-child"]
    assert native_changes(child, base) == naive_changes(child, base)


def test_a_clock_before_the_snapshot_gives_up_the_ctime_rule(driver, monkeypatch):
    """Ctimes older than the snapshot prove nothing once the clock was
    stepped back past it: then inodes rewritten on both sides are looked at."""
    from btrfsx.archive import native
    driver.create("base")
    driver.create("child", "base")
    fd = os.open(driver.get("child"), os.O_RDONLY | os.O_DIRECTORY)
    pfd = os.open(driver.get("base"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        since, snapshot_ns = native._snapshot_point(fd, pfd)
        otime = _ioctl.get_subvolume_info(fd).otime
        assert since == _ioctl.get_subvolume_info(fd).otransid
        assert abs(snapshot_ns - otime * 1e9) < 2000 and snapshot_ns < otime * 1e9
        monkeypatch.setattr(native.time, "time", lambda: otime - 3600)
        assert native._snapshot_point(fd, pfd) == (since, 0)
    finally:
        os.close(fd)
        os.close(pfd)


def test_alike_unlinks_on_both_sides(driver):
    """One name unlinked from a directory on each side, names of one length,
    in one clock tick: the directory's inode items are alike on both sides
    but for atime, its entries are not (seed 9000814 of the long run, when
    items written on both sides were compared with each other)."""
    driver.create("base")
    base = driver.get("base")
    for name in ("f009", "f013"):
        _write(f"{base}/{name}", b"x")
    driver.create("child", "base")
    child = driver.get("child")
    os.unlink(child + "/f013")
    os.unlink(base + "/f009")
    os.sync()
    assert [str(c) for c in native_changes(child, base)] == ["A /f009", "D /f013"]
    assert native_changes(child, base) == naive_changes(child, base)


def test_reading_changes_leaves_atimes_alone(driver):
    """Neither path rewrites the inodes it reads (O_NOATIME): a walk would
    otherwise rewrite every directory's inode item in both trees, which the
    next commit writes and every later native search reads again."""
    driver.create("base")
    base = driver.get("base")
    _grid(base, 5, 20)
    driver.create("child", "base")
    child = driver.get("child")
    _ten_changes(child, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    _same_size_rewrite_keep_mtime = child + "/d000/f0005"
    with open(_same_size_rewrite_keep_mtime, "r+b") as f:
        st = os.fstat(f.fileno())
        f.write(b"z" * 32)
    _give_back_times(_same_size_rewrite_keep_mtime, st)
    os.sync()

    # every path known without listing a directory (a listing would move atimes)
    paths = [""] + [f"/d{i:03d}" for i in range(5)] + [f"/d{i:03d}/f{j:04d}" for i in range(5) for j in range(20)]

    def atimes():
        return {(root, p): os.lstat(root + p).st_atime_ns
                for root in (base, child) for p in paths if os.path.lexists(root + p)}
    before = atimes()
    naive_changes(child, base)
    found = native_changes(child, base)
    assert ("/d000/f0005", MODIFY) in _as_set(found)   # its bytes were compared
    assert atimes() == before


def test_changes_with_cold_caches(driver):
    """With every cache dropped, the native path reads what it needs from
    disk and gives the walk's answer."""
    driver.create("base")
    base = driver.get("base")
    _grid(base, 20, 50)
    driver.create("child", "base")
    child = driver.get("child")
    _ten_changes(child, [3, 17, 5, 11, 0, 19, 8, 2, 14, 7])
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    found = native_changes(child, base)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    assert found == naive_changes(child, base)
    assert len(found) == 20


def test_changes_in_many_directories(driver):
    """Changes in every directory, on both sides, of every kind: additions
    and deletions (entries rewritten), renames across directories, a
    directory made and one removed, attributes; the walk's answer."""
    driver.create("base")
    base = driver.get("base")
    _grid(base, 40, 25)
    driver.create("child", "base")
    child = driver.get("child")
    for i in range(40):
        d = f"{child}/d{i:03d}"
        kind = i % 5
        if kind == 0:
            _write(f"{d}/f0000", b"other bytes, longer")
        elif kind == 1:
            _write(f"{d}/added", b"a")
        elif kind == 2:
            os.unlink(f"{d}/f0003")
        elif kind == 3:
            os.rename(f"{d}/f0004", f"{child}/d{(i + 1) % 40:03d}/moved-from-{i}")
        else:
            os.chmod(f"{d}/f0005", 0o600)
    os.mkdir(f"{child}/d000/newdir")
    _write(f"{child}/d000/newdir/inside", b"i")
    for name in os.listdir(f"{child}/d039"):
        os.unlink(f"{child}/d039/{name}")
    os.rmdir(f"{child}/d039")
    _write(f"{base}/d020/in-the-parent", b"p")    # the parent, after the snapshot
    os.sync()
    found = native_changes(child, base)
    assert found == naive_changes(child, base)
    assert ("/d039", DELETE) in _as_set(found) and ("/d020/in-the-parent", DELETE) in _as_set(found)
