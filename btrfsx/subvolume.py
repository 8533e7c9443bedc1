"""Subvolumes over the ioctl layer: making, snapshotting and describing
one, finding nested subvolumes from btrfs's own metadata, and destroying a
subvolume with everything in it.  The driver and the modules above it use
these, not :mod:`btrfsx._ioctl`."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from btrfsx import _ioctl
from btrfsx._fd import open_dir

SubvolumeInfo = _ioctl.SubvolumeInfo

#: The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
ROOT_INO = _ioctl.FIRST_FREE_OBJECTID


def on_btrfs(path_or_fd: int | str | bytes | os.PathLike[str]) -> bool:
    """Whether a path or an open fd is on a btrfs filesystem (statfs)."""
    return _ioctl.fs_magic(path_or_fd) == _ioctl.SUPER_MAGIC


def is_root(st: os.stat_result) -> bool:
    """Whether ``st`` (of a directory on btrfs) is a subvolume's root."""
    return st.st_ino == ROOT_INO


def is_subvolume(name: str | bytes, *, dir_fd: int) -> bool:
    """Whether ``name`` in directory ``dir_fd`` is a subvolume's root."""
    return _ioctl.is_subvolume(name, dir_fd=dir_fd)


def create(dirfd: int, name: str | bytes, *, max_referenced: int | None = None) -> None:
    """An empty subvolume ``name`` in ``dirfd``, limited to ``max_referenced``
    bytes when given (its qgroup made with the limit, in the same ioctl)."""
    _ioctl.create_subvolume(dirfd, name, max_referenced=max_referenced)


def snapshot(src_fd: int, dst_dirfd: int, name: str | bytes, *, readonly: bool = False,
             max_referenced: int | None = None) -> None:
    """A snapshot of the subvolume ``src_fd`` as ``name`` in ``dst_dirfd``."""
    _ioctl.snapshot(src_fd, dst_dirfd, name, readonly=readonly, max_referenced=max_referenced)


def destroy_empty(dirfd: int, name: str | bytes) -> None:
    """Destroy subvolume ``name`` of ``dirfd``, which holds no nested one
    (ENOTEMPTY otherwise): one SNAP_DESTROY."""
    _ioctl.destroy_subvolume(dirfd, name)


def info(fd: int) -> SubvolumeInfo:
    """What btrfs records of the subvolume ``fd`` is in (GET_SUBVOL_INFO)."""
    return _ioctl.get_subvolume_info(fd)


def subvolume_id(fd: int) -> int:
    """The id of the subvolume ``fd`` is in."""
    return _ioctl.subvolume_id(fd)


def set_readonly(fd: int) -> None:
    """Make the subvolume whose root is ``fd`` read-only."""
    _ioctl.set_subvolume_flags(fd, _ioctl.get_subvolume_flags(fd) | _ioctl.SUBVOL_RDONLY)


def commit(fd: int) -> None:
    """Write back dirty data and commit the transaction of the filesystem
    ``fd`` is on (BTRFS_IOC_SYNC)."""
    _ioctl.sync(fd)


def filesystem_uuid(fd: int) -> str:
    """The UUID of the filesystem ``fd`` is on."""
    return str(_ioctl.fs_info(fd).fsid)


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
