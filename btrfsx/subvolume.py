"""Subvolume policy over the ioctl layer: finding nested subvolumes from
btrfs's own metadata, and destroying a subvolume with everything in it."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from btrfsx import _ioctl
from btrfsx._fd import open_dir


class Nested(NamedTuple):
    """A subvolume below another: its id, its parent's id, and where it sits
    in the parent (directory inode and entry name)."""

    id: int
    parent_id: int
    dirid: int
    name: bytes


def nested_subvolumes(fd: int, subvolid: int) -> list[Nested]:
    """Every subvolume below ``subvolid`` at any depth, parents before their
    children, from the ROOT_REF items of the root tree (root only).  Costs a
    tree search per subvolume found, not a walk of the files."""
    return [tuple.__new__(Nested, t) for t in _ioctl.subvolume_descendants(fd, subvolid)]


def _relative_path(fd: int, sub: Nested, paths: dict[int, bytes]) -> bytes:
    """Path of ``sub`` relative to the outermost subvolume (``paths`` holds its ancestors')."""
    _, dirpath = _ioctl.ino_lookup(fd, sub.dirid, sub.parent_id)
    return os.path.join(paths[sub.parent_id], dirpath, sub.name)


def _make_writable(path: bytes) -> None:
    with open_dir(path) as sfd:
        flags = _ioctl.get_subvolume_flags(sfd)
        if flags & _ioctl.SUBVOL_RDONLY:
            _ioctl.set_subvolume_flags(sfd, flags & ~_ioctl.SUBVOL_RDONLY)


def destroy_nested(fd: int, root_path: str | bytes, subvolid: int) -> int:
    """Destroy every subvolume nested in ``subvolid`` (whose root is at
    ``root_path``), deepest first, by id; returns how many.  A read-only
    subvolume's entries cannot be removed (EROFS), so such a parent is made
    writable first."""
    nested = nested_subvolumes(fd, subvolid)
    paths = {subvolid: os.fsencode(root_path)}
    for sub in reversed(nested):
        try:
            _ioctl.destroy_subvolume_by_id(fd, sub.id)
        except FileNotFoundError:
            continue  # removed meanwhile
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
            for s in nested:  # resolve paths only on this rare path
                if s.id not in paths and s.parent_id in paths:
                    paths[s.id] = _relative_path(fd, s, paths)
            _make_writable(paths[sub.parent_id])
            _ioctl.destroy_subvolume_by_id(fd, sub.id)
    return len(nested)


def destroy(dirfd: int, name: str | bytes, *, path: str | bytes) -> int:
    """Destroy subvolume ``name`` of directory ``dirfd`` (whose path is
    ``path``) with every subvolume nested in it; returns how many nested
    ones there were.  One ioctl when there are none."""
    try:
        _ioctl.destroy_subvolume(dirfd, name)
        return 0
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
    root = os.path.join(os.fsencode(path), os.fsencode(name))
    with open_dir(root) as sfd:
        count = destroy_nested(sfd, root, _ioctl.subvolume_id(sfd))
    _ioctl.destroy_subvolume(dirfd, name)
    return count


def remove_tree(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], *, destroy_subvolumes: bool = False) -> None:
    """Delete a tree file by file, as an unprivileged user can: ``rmdir``
    removes an empty subvolume (kernel 4.18) where SNAP_DESTROY is refused.
    With ``destroy_subvolumes`` (root), subvolumes met on the way, ``path``
    itself included, are destroyed whole instead."""
    path = os.fsencode(path)
    if destroy_subvolumes and _ioctl.is_subvolume(path):
        parent, name = os.path.split(path)
        with open_dir(parent or b".", follow=True) as dfd:
            destroy(dfd, name, path=parent)
        return
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                remove_tree(entry.path, destroy_subvolumes=destroy_subvolumes)
            else:
                os.unlink(entry.path)
    os.rmdir(path)
