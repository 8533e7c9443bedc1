"""What a layer changed relative to its parent, found by walking both
(containers/storage's ``ChangesDirs``, the general path)."""

from __future__ import annotations

import enum
import os
import stat
import sys
from typing import NamedTuple

from btrfsx._fd import DIR_FLAGS

# os.fsencode/os.fsdecode, without their Python calls: a whole-layer walk
# makes one of each per entry
_FS_ENCODING = sys.getfilesystemencoding()


def path_key(change: Change) -> bytes:
    """The sort key of a change: its path as bytes (as the kernel orders names)."""
    return change.path.encode(_FS_ENCODING, "surrogateescape")


class ChangeKind(enum.IntEnum):
    """containers/storage's ``ChangeType``, with its values."""

    MODIFY = 0
    ADD = 1
    DELETE = 2


_LETTER = {ChangeKind.MODIFY: "C", ChangeKind.ADD: "A", ChangeKind.DELETE: "D"}


class Change(NamedTuple):
    """One changed path, absolute within the layer (``/etc/passwd``)."""

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{_LETTER[self.kind]} {self.path}"


def xattrs(path: bytes) -> dict[str, bytes]:
    """The extended attributes of ``path``, a symlink's own; none where the
    entry cannot have them (a symlink in the user namespace)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile, or unreadable
    return out


def _same_mtime(a: os.stat_result, b: os.stat_result) -> bool:
    # containers/storage's sameFsTimeSpec: to the second when either side
    # has no sub-second part (a tar without PAX times, an old filesystem)
    if a.st_mtime_ns % 1_000_000_000 == 0 or b.st_mtime_ns % 1_000_000_000 == 0:
        return a.st_mtime_ns // 1_000_000_000 == b.st_mtime_ns // 1_000_000_000
    return a.st_mtime_ns == b.st_mtime_ns


def stat_differs(old: os.stat_result, new: os.stat_result) -> bool:
    """containers/storage's statDifferent: type and mode, owner and device
    number; size and mtime too, except for directories."""
    if (old.st_mode != new.st_mode or old.st_uid != new.st_uid or old.st_gid != new.st_gid
            or old.st_rdev != new.st_rdev):
        return True
    if stat.S_ISDIR(new.st_mode):
        return False
    return old.st_size != new.st_size or not _same_mtime(old, new)


def entry_differs(old_path: bytes, old: os.stat_result, new_path: bytes, new: os.stat_result) -> bool:
    """stat_differs, or a different symlink target or extended attributes
    (containers/storage looks only at ``security.capability``; btrfsx at all)."""
    if stat_differs(old, new):
        return True
    if stat.S_ISLNK(new.st_mode) and os.readlink(old_path) != os.readlink(new_path):
        return True
    return xattrs(old_path) != xattrs(new_path)


_NOATIME = getattr(os, "O_NOATIME", 0)


def open_noatime(path: bytes, flags: int) -> int:
    """``os.open`` with ``O_NOATIME`` where the caller may use it (the
    owner, or CAP_FOWNER), plainly otherwise.  Reading a tree for its changes
    must not write to it: with relatime the first read of a directory after
    a change rewrites its inode item, and on a snapshot that copies the
    metadata leaf it shares with its parent, on both sides when both are
    read, which a transaction then has to commit and every later native
    search has to read again (the leaf is newer than the snapshot)."""
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME)
        except PermissionError:
            pass
    return os.open(path, flags)


def _entries(path: bytes) -> dict[bytes, os.stat_result]:
    out = {}
    # once per directory of a walk: a plain try/finally, not a context
    # manager (open_dir costs about 2 us more a call); following a symlink
    # at the last component, as the layer's own path may be one
    fd = open_noatime(path, DIR_FLAGS)
    try:
        with os.scandir(fd) as it:
            for entry in it:
                out[entry.name.encode(_FS_ENCODING, "surrogateescape")] = entry.stat(follow_symlinks=False)
    finally:
        os.close(fd)
    return out


def _added(root: bytes, rel: bytes, st: os.stat_result, out: list[Change], stats: dict | None = None) -> None:
    out.append(Change(rel.decode(_FS_ENCODING, "surrogateescape"), ChangeKind.ADD))
    if stats is not None:
        stats[rel] = st
    if stat.S_ISDIR(st.st_mode):
        for name, child in _entries(root + rel).items():
            _added(root, rel + b"/" + name, child, out, stats)


def _compare(new_root: bytes, old_root: bytes, rel: bytes, out: list[Change], stats: dict | None) -> bool:
    """Changes below directory ``rel``; True when there were any."""
    start = len(out)
    new_entries = _entries(new_root + rel)
    old_entries = _entries(old_root + rel)
    for name, new in new_entries.items():
        child = rel + b"/" + name
        old = old_entries.pop(name, None)
        if old is None:
            _added(new_root, child, new, out, stats)
            continue
        modified = (stat.S_IFMT(old.st_mode) != stat.S_IFMT(new.st_mode)
                    or entry_differs(old_root + child, old, new_root + child, new))
        if modified:
            out.append(Change(os.fsdecode(child), ChangeKind.MODIFY))
        if stat.S_ISDIR(new.st_mode):
            if stat.S_ISDIR(old.st_mode):
                inner = _compare(new_root, old_root, child, out, stats)
                if inner and not modified:
                    # a directory holding a change travels with the diff, so
                    # that its permissions are restored with it
                    out.append(Change(os.fsdecode(child), ChangeKind.MODIFY))
                    modified = True
            else:
                for grand, st in _entries(new_root + child).items():
                    _added(new_root, child + b"/" + grand, st, out, stats)
        if modified and stats is not None:
            stats[child] = new
    for name in old_entries:
        out.append(Change(os.fsdecode(rel + b"/" + name), ChangeKind.DELETE))
    return len(out) > start


def changes(layer: str | bytes, parent: str | bytes | None = None, *,
            stats: dict[bytes, os.stat_result] | None = None) -> list[Change]:
    """The changes of directory tree ``layer`` against ``parent`` (every
    entry an addition when there is none), sorted by path.  ``stats``, a
    dict, receives the lstat of every added or modified path (as bytes) as
    the walk saw it, for an export to reuse."""
    new_root = os.fsencode(layer).rstrip(b"/")
    out: list[Change] = []
    if parent is None:
        for name, st in _entries(new_root).items():
            _added(new_root, b"/" + name, st, out, stats)
    else:
        _compare(new_root, os.fsencode(parent).rstrip(b"/"), b"", out, stats)
    out.sort(key=path_key)
    return out


def changes_size(layer: str | bytes, found: list[Change]) -> int:
    """containers/storage's ChangesSize: the lstat size of every added or
    modified non-directory, each hard-linked inode counted once."""
    root = os.fsencode(layer).rstrip(b"/")
    seen: set[int] = set()
    total = 0
    for change in found:
        if change.kind == ChangeKind.DELETE:
            continue
        st = os.lstat(root + os.fsencode(change.path))
        if stat.S_ISDIR(st.st_mode):
            continue
        if st.st_nlink > 1:
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
        total += st.st_size
    return total
