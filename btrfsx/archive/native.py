"""What a layer changed, found from btrfs's own metadata (the native path).

A snapshot shares its parent's metadata blocks until either side writes, and
every inode item, directory entry and file extent records the transaction
that wrote it.  When a layer is a snapshot of its parent, the inodes that
can differ between the two are those written after the snapshot's
transaction, in either tree: a ``TREE_SEARCH_V2`` with ``min_transid`` skips
every block older than that, so finding them costs what changed, not what
the layer holds.  Only those inodes' paths are then compared, with the same
rules as the walk (:mod:`btrfsx.archive.changes`).

Why this is exact: any change to a directory's entries (create, unlink,
rename, link) rewrites the directory's inode item, and any change to a
file's metadata, data or extended attributes rewrites the file's; a rename
or link rewrites the inode moved too.  So a directory whose inode was not
written since the snapshot, in either tree, has the same entries on both
sides, each naming an inode that did not change either, and needs no look.

Where it is more precise than the walk (the walk compares size and mtime;
the native path knows which inodes were written): a regular file whose
inode was written after the snapshot (data rewritten, reflinked over, a hole
punched...), or whose path now names another inode, and whose size and
mtime were given back is compared byte for byte, and reported when the
bytes differ.  The walk misses all of these.

An inode item is also rewritten when only its atime moves (relatime does
that on the first read after a change), which changes nothing: such inodes
are told apart by comparing their item with the other tree's.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Iterable

from btrfsx import _ioctl
from btrfsx._fd import DIR_NOFOLLOW, open_dir
from btrfsx.archive.changes import Change, ChangeKind, _added, entry_differs, open_noatime, path_key
from btrfsx.errors import NativeChangesUnavailable

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_ENCODING = sys.getfilesystemencoding()
_ROOT_INO = _ioctl.FIRST_FREE_OBJECTID
_CHUNK = 1 << 20


class NativeUnavailable(NativeChangesUnavailable):
    """The native path cannot answer for this pair of trees; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Tree:
    """The inode items of one subvolume written since transaction ``since``."""

    def __init__(self, fd: int, since: int):
        self.fd = fd
        # only inode items: see changed_since for why the entries, extents
        # and extended attributes written since tell nothing more
        self.written: dict[int, bytes] = {item.objectid: item.data for item in _ioctl.TreeSearch(
            fd, 0, min_objectid=_ROOT_INO, max_objectid=_ioctl.LAST_FREE_OBJECTID,
            min_type=_ioctl.INODE_ITEM_KEY, max_type=_ioctl.EXTENT_DATA_KEY,
            min_transid=since + 1, min_item_transid=since + 1, item_types=(_ioctl.INODE_ITEM_KEY,))}
        self._dirs: dict[int, bytes] = {_ROOT_INO: b""}

    def changed_since(self, other: _Tree, snapshot_ns: int) -> dict[int, int]:
        """The inodes of this tree that may differ from the snapshot, with
        their modes.

        Any change to an inode (its data, entries, extended attributes or
        metadata) rewrites its inode item with a new ctime and ``sequence``
        (i_version); but an item is also rewritten when only its atime moves
        (relatime: on the first read after a change), and then the leaf it
        is in is copied too, with the neighbours' items, entries and
        extents, which changes none of them.  So only inode items count, and
        an inode written since is no change when its item is the snapshot's
        but for atime (and transid), which :func:`same_inode_item_but_atime`
        tells:

        - written on this side only: the other tree still holds the
          snapshot's item;
        - written on both sides (read on both): neither holds it any more,
          but a change to the layer (the snapshot) comes after the snapshot
          was taken, so a ctime before ``snapshot_ns`` (the snapshot's
          otime) on its side says it holds the snapshot's item but for
          atime, and the other side's equal item is then unchanged too.
          This trusts the clock not to have been stepped back past the
          snapshot between it and a change; :func:`_native_changes` does not
          use it when the clock now reads before the snapshot."""
        out = {}
        doubtful: list[int] = []
        both: list[int] = []
        mode = _ioctl.inode_item_mode
        for ino in self.written:
            (both if ino in other.written else doubtful).append(ino)
        before = other.snapshot_items(doubtful)
        same = _ioctl.same_inode_item_but_atime
        for ino in doubtful:
            item = self.written[ino]
            old = before.get(ino)
            if old is None or not same(item, old):
                out[ino] = mode(item)
        decode = _ioctl.decode_inode_item
        for ino in both:
            item = self.written[ino]
            if not (same(item, other.written[ino]) and decode(item).ctime_ns < snapshot_ns):
                out[ino] = mode(item)
        return out

    def snapshot_items(self, inos: list[int]) -> dict[int, bytes]:
        """The inode items of ``inos`` in this tree (those it has).  One
        search per inode when they are few and far between; one search of
        their whole range when they are dense, as after a read of many files
        (relatime), where a search per inode cost 7 us each."""
        if not inos:
            return {}
        low, high = min(inos), max(inos)
        if len(inos) < 64 or len(inos) * 8 < high - low + 1:
            out = {}
            for ino in inos:
                raw = _ioctl.search_item(self.fd, 0, ino, _ioctl.INODE_ITEM_KEY, 0)
                if raw is not None:
                    out[ino] = raw
            return out
        wanted = set(inos)
        return {item.objectid: item.data for item in _ioctl.TreeSearch(
            self.fd, 0, min_objectid=low, max_objectid=high, min_type=_ioctl.INODE_ITEM_KEY,
            max_type=_ioctl.INODE_ITEM_KEY, item_types=(_ioctl.INODE_ITEM_KEY,)) if item.objectid in wanted}

    def _dir_path(self, ino: int) -> bytes:
        path = self._dirs.get(ino)
        if path is None:
            # INO_LOOKUP answers with "a/b/" for a directory
            path = b"/" + _ioctl.ino_lookup(self.fd, ino)[1].rstrip(b"/")
            self._dirs[ino] = path
        return path

    def paths(self, ino: int) -> list[bytes]:
        """Every name of inode ``ino`` in this tree, as paths from its root."""
        if ino == _ROOT_INO:
            return [b""]
        out = []
        for item in _ioctl.TreeSearch(self.fd, 0, min_objectid=ino, max_objectid=ino,
                                      min_type=_ioctl.INODE_REF_KEY, max_type=_ioctl.INODE_EXTREF_KEY,
                                      buf_size=4096):
            if item.type == _ioctl.INODE_REF_KEY:
                refs = _ioctl.decode_inode_refs(item.data, item.offset)
            else:
                refs = _ioctl.decode_inode_extrefs(item.data)
            for ref in refs:
                try:
                    out.append(self._dir_path(ref.parent) + b"/" + ref.name)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise
        return out


class _Node:
    """A directory on the way to changed paths: which of its names to look at,
    and whether all of them must be looked at (its entries changed)."""

    __slots__ = ("children", "full")

    def __init__(self):
        self.children: dict[bytes, _Node] = {}
        self.full = False


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _fsencode(name: str) -> bytes:
    return name.encode(_FS_ENCODING, "surrogateescape")


def _fsdecode(name: bytes) -> str:
    return name.decode(_FS_ENCODING, "surrogateescape")


def _listdir(path: bytes) -> set[str]:
    # O_NOATIME: the reasons are open_noatime's; here also that a directory
    # listed would be found written on the next call, and listed again.
    # Once per changed directory: a plain try/finally, not open_dir's
    # context manager (about 2 us more a call).
    fd = open_noatime(path, DIR_NOFOLLOW)
    try:
        return set(os.listdir(fd))
    finally:
        os.close(fd)


def _same_bytes(a: bytes, b: bytes) -> bool:
    with open(open_noatime(a, _FILE_FLAGS), "rb", buffering=0) as fa, \
            open(open_noatime(b, _FILE_FLAGS), "rb", buffering=0) as fb:
        while True:
            x = fa.read(_CHUNK)
            if x != fb.read(_CHUNK):
                return False
            if not x:
                return True


class _Comparer:
    def __init__(self, new_root: bytes, old_root: bytes, new_changed: dict[int, int], old_changed: dict[int, int],
                 stats: dict | None):
        self.new_root = new_root
        self.old_root = old_root
        self.new_changed = new_changed   # inodes of each side that may differ (_Tree.changed_since)
        self.old_changed = old_changed
        self.stats = stats
        self.out: list[Change] = []

    def modified(self, rel: bytes, new: os.stat_result, old: os.stat_result) -> bool:
        new_path, old_path = self.new_root + rel, self.old_root + rel
        if stat.S_IFMT(old.st_mode) != stat.S_IFMT(new.st_mode) or entry_differs(old_path, old, new_path, new):
            return True
        if not stat.S_ISREG(new.st_mode):
            return False
        # Same size and mtime.  Snapshots keep inode numbers, so the same
        # number on both sides, its inode not rewritten since (but for its
        # atime), is the same data.  Otherwise the data may have changed
        # without a file extent of its own: a reflink (FICLONE,
        # copy_file_range) keeps the generation of the extents it shares,
        # and a punched hole or a truncate-and-extend writes none.
        if new.st_ino == old.st_ino and new.st_ino not in self.new_changed and old.st_ino not in self.old_changed:
            return False
        return not _same_bytes(new_path, old_path)

    def compare(self, rel: bytes, node: _Node) -> bool:
        """Changes below directory ``rel`` (a directory in both trees); True when any."""
        out = self.out
        start = len(out)
        names: Iterable[bytes]
        if node.full:
            # names as os.listdir gives them for a file descriptor (str), so
            # that only the few looked at are encoded
            new_names = _listdir(self.new_root + rel or b"/")
            old_names = _listdir(self.old_root + rel or b"/")
            # a name on both sides whose inode changed on neither is the same entry
            names = {_fsencode(name) for name in new_names ^ old_names}
            names.update(name for name in node.children if _fsdecode(name) in new_names or _fsdecode(name) in old_names)
        else:
            names = node.children.keys()
        for name in names:
            child = rel + b"/" + name
            new = _lstat(self.new_root + child)
            old = _lstat(self.old_root + child)
            if new is None:
                if old is not None:
                    out.append(Change(os.fsdecode(child), ChangeKind.DELETE))
                continue
            if old is None:
                _added(self.new_root, child, new, out, self.stats)
                continue
            modified = self.modified(child, new, old)
            if modified:
                out.append(Change(os.fsdecode(child), ChangeKind.MODIFY))
            if stat.S_ISDIR(new.st_mode):
                if stat.S_ISDIR(old.st_mode):
                    sub = node.children.get(name)
                    if sub is not None and self.compare(child, sub) and not modified:
                        # a directory holding a change travels with the diff
                        out.append(Change(os.fsdecode(child), ChangeKind.MODIFY))
                        modified = True
                else:
                    for grand in os.listdir(self.new_root + child):
                        path = child + b"/" + grand
                        _added(self.new_root, path, os.lstat(self.new_root + path), out, self.stats)
            if modified and self.stats is not None:
                self.stats[child] = new
        return len(out) > start


def inodes_with_xattrs(layer: str | bytes) -> tuple[int, frozenset[int]] | None:
    """``(st_dev, inodes)``: the subvolume ``layer``'s device number and the
    inodes of its tree that have extended attributes (XATTR_ITEMs), found by
    one tree search instead of a ``listxattr`` per entry; None without the
    privilege to search trees.  Extended attributes are written to the tree
    when they are set (no delayed items), so no commit is needed."""
    with open_dir(layer) as fd:
        dev = os.fstat(fd).st_dev
        try:
            found = frozenset(item.objectid for item in _ioctl.TreeSearch(
                fd, 0, min_objectid=_ROOT_INO, max_objectid=_ioctl.LAST_FREE_OBJECTID,
                min_type=_ioctl.XATTR_ITEM_KEY, max_type=_ioctl.XATTR_ITEM_KEY,
                item_types=(_ioctl.XATTR_ITEM_KEY,)))
        except PermissionError:
            return None
        return dev, found


def snapshot_transid(layer_fd: int, parent_fd: int) -> int:
    """The transaction in which subvolume ``layer_fd`` was snapshotted from
    subvolume ``parent_fd``; NativeUnavailable when it was not."""
    layer = _ioctl.get_subvolume_info(layer_fd)
    parent = _ioctl.get_subvolume_info(parent_fd)
    if layer.parent_uuid is None or layer.parent_uuid != parent.uuid:
        raise NativeUnavailable(f"it is not a snapshot of the parent (its parent UUID is {layer.parent_uuid}, "
                                f"the parent's UUID {parent.uuid})")
    if layer.received_uuid is not None:
        raise NativeUnavailable("it was received (btrfs receive), not snapshotted")
    return layer.otransid


def _snapshot_point(layer_fd: int, parent_fd: int) -> tuple[int, int]:
    """(transid, otime in ns) of the snapshot that made ``layer_fd`` from
    ``parent_fd``.  The otime is GET_SUBVOL_INFO's float seconds, less a
    microsecond for its rounding (an earlier point only makes fewer inodes
    provably unchanged); 0 when the clock now reads before it (stepped back:
    ctimes do not tell what came after the snapshot)."""
    since = snapshot_transid(layer_fd, parent_fd)
    otime = _ioctl.get_subvolume_info(layer_fd).otime
    if time.time() < otime:
        return since, 0
    return since, int(otime * 1e9) - 1000


def native_changes(layer: str | bytes, parent: str | bytes, *,
                   stats: dict[bytes, os.stat_result] | None = None) -> list[Change]:
    """The changes of subvolume ``layer`` against subvolume ``parent``, which
    it must be a snapshot of; the same list :func:`changes` gives (sorted by
    path).  Raises NativeUnavailable, with the reason, when it cannot tell:
    not a snapshot of ``parent``, nested subvolumes on either side (their
    contents are not in these trees), or no privilege to search trees."""
    new_root = os.fsencode(layer).rstrip(b"/")
    old_root = os.fsencode(parent).rstrip(b"/")
    with open_dir(new_root or b"/") as new_fd, open_dir(old_root or b"/") as old_fd:
        return _native_changes(new_root, old_root, new_fd, old_fd, stats)


def _native_changes(new_root: bytes, old_root: bytes, new_fd: int, old_fd: int, stats: dict | None) -> list[Change]:
    for fd in (new_fd, old_fd):
        if os.fstat(fd).st_ino != _ROOT_INO:
            raise NativeUnavailable("not a subvolume root")
        if _ioctl.get_subvolume_rootrefs(fd):
            raise NativeUnavailable("a nested subvolume is inside")
    since, snapshot_ns = _snapshot_point(new_fd, old_fd)
    try:
        # Inode items and directory indexes are written to the tree when a
        # transaction commits (delayed items), and a file's inode item waits
        # for its dirty data to be written back (Linux 6.18): flush and commit.
        _ioctl.sync(new_fd)
        new = _Tree(new_fd, since)
        old = _Tree(old_fd, since)
    except PermissionError as e:
        raise NativeUnavailable(f"searching btrfs trees needs CAP_SYS_ADMIN ({e.strerror})") from None
    root = _Node()
    new_changed = new.changed_since(old, snapshot_ns)
    old_changed = old.changed_since(new, snapshot_ns)
    for tree, changed in ((new, new_changed), (old, old_changed)):
        for ino, mode in changed.items():
            for path in tree.paths(ino):
                node = root
                if path:
                    for name in path[1:].split(b"/"):
                        node = node.children.setdefault(name, _Node())
                if stat.S_ISDIR(mode):
                    node.full = True
    comparer = _Comparer(new_root, old_root, new_changed, old_changed, stats)
    comparer.compare(b"", root)
    out = comparer.out
    out.sort(key=path_key)
    return out
