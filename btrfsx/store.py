"""The on-disk layout of a layer store, and what keeps it consistent.

Layout, the same as containers/storage's btrfs driver writes it::

    home/subvolumes/ID      the layer's subvolume
    home/quotas/ID          its size limit in bytes, decimal, when it has one

and btrfsx's own working state beside it, which the original ignores::

    home/.btrfsx/staging/P-N/   one per thread of a live process: layers are
                                made here under their id, then renamed into
                                subvolumes/ (RENAME_NOREPLACE), so a layer is
                                never visible half-made; the directory is
                                flock'ed by its owner for as long as it lives
    home/.btrfsx/locks/NN       per-id lock stripes (flock), so creators and
                                removers of one id in several processes take
                                turns; a dead holder's lock is released by the
                                kernel
    home/.btrfsx/lineage/UUID   for a layer whose subvolume was swapped for a
                                backup (a failed apply_diff): the parent UUID
                                and the UUID it replaces, so the lineage btrfs
                                records stays readable
    home/.btrfsx/oci/ID         btrfsx.oci's import marker of layer ID: JSON
                                naming the subvolume UUID it completed; also
                                that import's lock (flock)

An apply_diff snapshots the layer into its staging directory as ``backup``
and then writes the file ``applying`` there (the layer id and UUIDs).  If it
fails, or its process dies, the backup is swapped back in with
RENAME_EXCHANGE (by the caller, or by :meth:`Store.gc`); removing
``applying`` is the commit point.

Staging directories of their own also let threads snapshot in parallel: the
kernel serialises snapshots into one directory on that directory's lock.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import stat
import threading
import uuid as _uuid
import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import NamedTuple

from btrfsx import _ioctl, quota, subvolume
from btrfsx._fd import DIR_FLAGS, DIR_NOFOLLOW, open_dir, open_file, read_file, try_lock, write_file_atomic
from btrfsx._proc import pid_alive  # store.pid_alive: kept importable from here

SUBVOLUMES = "subvolumes"
QUOTAS = "quotas"
STATE = ".btrfsx"
OCI_MARKERS = os.path.join(STATE, "oci")
LOCK_STRIPES = 64
BACKUP = "backup"
APPLYING = "applying"
_staging_counter = itertools.count()


def _listdir(dirfd: int) -> list[str]:
    """The entries of an open directory, through a fresh open of it: btrfs
    fixes a directory fd's readdir end at open time and refreshes it only on
    a rewind (seen on Linux 6.18), so listing a long-lived fd misses entries
    added since."""
    with open_dir(".", dirfd) as fd:
        return os.listdir(fd)


def check_layer_id(layer_id: str) -> str:
    """A layer id must be one directory entry; ValueError otherwise."""
    if not isinstance(layer_id, str):
        raise TypeError(f"layer id must be a str, not {type(layer_id).__name__}")
    try:
        encoded = os.fsencode(layer_id)
    except UnicodeEncodeError:
        raise ValueError(f"invalid layer id {layer_id!r}: not encodable as a file name") from None
    if (not layer_id or layer_id in (".", "..") or "/" in layer_id or "\0" in layer_id
            or len(encoded) > 255):
        raise ValueError(f"invalid layer id {layer_id!r}: expected a single directory entry of "
                         "1 to 255 bytes, not '.' or '..', without '/' or NUL")
    return layer_id


def _mkdir(path: str, mode: int, owner: tuple[int, int] | None) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            # a symlink here could send the store's writes outside home
            raise NotADirectoryError(errno.ENOTDIR, "expected a directory of the layer store, not a symlink "
                                     "or a file", path) from None
        return
    os.chmod(path, mode)  # not subject to the umask
    if owner and owner != (0, 0):
        os.chown(path, *owner)


class GcReport(NamedTuple):
    """What :meth:`Store.gc` removed, and what it found but left alone."""

    subvolumes: list[str]   #: leftovers of interrupted creates and removes (staging paths)
    quota_files: list[str]  #: quota files of layers that do not exist
    qgroups: list[str]      #: qgroups of subvolumes that are gone, as "0/N"
    #: entries of ``subvolumes/`` that are not subvolumes (put there by hand):
    #: reported, never removed, and not counted by ``bool()``
    foreign: Sequence[str] = ()
    #: OCI import markers (``home/.btrfsx/oci/ID``) of layers that are gone or
    #: were made anew under their id, as layer ids
    oci_markers: Sequence[str] = ()

    def __bool__(self) -> bool:
        return bool(self.subvolumes or self.quota_files or self.qgroups or self.oci_markers)


class LayerSubvolume(NamedTuple):
    """A layer's subvolume as the root tree records it (:meth:`Store.layer_subvolumes`)."""

    id: int             #: subvolume id
    uuid: str
    parent_uuid: str    #: "" when it has none
    otime: float        #: creation time, seconds (as GET_SUBVOL_INFO gives it)


class Store:
    """Directory fds, locks and staging of one home; no layer semantics."""

    def __init__(self, home: str, owner: tuple[int, int] = (0, 0)):
        self.home = home
        self.owner = owner
        self.subvolumes_path = os.path.join(home, SUBVOLUMES)
        self.quotas_path = os.path.join(home, QUOTAS)
        state = os.path.join(home, STATE)
        _mkdir(self.subvolumes_path, 0o700, owner)
        _mkdir(state, 0o700, None)
        self.staging_path = os.path.join(state, "staging")
        _mkdir(self.staging_path, 0o700, None)
        locks = os.path.join(state, "locks")
        _mkdir(locks, 0o700, None)
        self.lineage_path = os.path.join(state, "lineage")
        with ExitStack() as opened:  # closed again if one of them cannot be opened
            def keep(fd: int) -> int:
                opened.callback(os.close, fd)
                return fd
            self.home_fd = keep(os.open(home, DIR_FLAGS))
            self.subvolumes_fd = keep(os.open(SUBVOLUMES, DIR_NOFOLLOW, dir_fd=self.home_fd))
            self.staging_root_fd = keep(os.open(self.staging_path, DIR_NOFOLLOW))
            self._locks_fd = keep(os.open(locks, DIR_NOFOLLOW))
            opened.pop_all()
        self._quotas_fd: int | None = None
        self._subvolumes_key: tuple[int, int] | None = None  # (tree id, inode) of subvolumes/
        self._stripe_fds: list[int | None] = [None] * LOCK_STRIPES
        self._stripe_locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._staging: list[tuple[str, int]] = []
        self._free_staging: list[int] = []
        self._staging_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------ locks

    def lock_id(self, layer_id: str) -> int:
        """Take the lock of one layer id, exclusive across threads and
        processes (striped); returns what :meth:`unlock_id` takes."""
        stripe = zlib.crc32(layer_id.encode("utf-8", "surrogateescape")) % LOCK_STRIPES
        self._stripe_locks[stripe].acquire()
        try:
            fd = self._stripe_fds[stripe]
            if fd is None:
                fd = os.open(f"{stripe:02d}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600,
                             dir_fd=self._locks_fd)
                self._stripe_fds[stripe] = fd
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._stripe_locks[stripe].release()
            raise
        return stripe

    def unlock_id(self, stripe: int) -> None:
        fd = self._stripe_fds[stripe]
        assert fd is not None  # opened by lock_id
        fcntl.flock(fd, fcntl.LOCK_UN)
        self._stripe_locks[stripe].release()

    @contextmanager
    def lock(self, layer_id: str):
        stripe = self.lock_id(layer_id)
        try:
            yield
        finally:
            self.unlock_id(stripe)

    # ------------------------------------------------------------ staging and publishing

    def take_staging(self) -> int:
        """A staging directory fd for one operation; give it back with :meth:`give_staging`.

        Directories are pooled: as many exist as operations have ever run at
        once, so concurrent creates do not share one (the kernel serialises
        snapshots into a directory on its lock) and short-lived threads leak
        nothing.
        """
        with self._staging_lock:
            if self._free_staging:
                return self._free_staging.pop()
        return self._new_staging()

    def give_staging(self, fd: int) -> None:
        with self._staging_lock:
            self._free_staging.append(fd)

    def _new_staging(self) -> int:
        # numbered across every Store of the process: two drivers of one home
        # in one process must not pick the same directory
        name = f"{os.getpid()}-{next(_staging_counter)}"
        os.mkdir(name, 0o700, dir_fd=self.staging_root_fd)
        fd = os.open(name, DIR_FLAGS, dir_fd=self.staging_root_fd)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until close: gc leaves live directories alone
        with self._staging_lock:
            self._staging.append((name, fd))
        return fd

    def publish(self, staging_fd: int, name: str, layer_id: str) -> None:
        """Move a finished layer from staging to its id; FileExistsError if taken."""
        try:
            _ioctl.rename_noreplace(staging_fd, name, self.subvolumes_fd, layer_id)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, f"layer {layer_id!r} already exists",
                                  self.layer_path(layer_id)) from None

    def list_layers(self) -> list[str]:
        """The entries of ``subvolumes/`` that are layers: subvolumes only (a
        plain directory, symlink or file put there by hand is not one)."""
        return [name for name in _listdir(self.subvolumes_fd) if self.is_layer(name)]

    def is_layer(self, name: str) -> bool:
        """Whether ``subvolumes/NAME`` is a subvolume (never following a symlink)."""
        try:
            st = os.stat(name, dir_fd=self.subvolumes_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISDIR(st.st_mode) and st.st_ino == _ioctl.FIRST_FREE_OBJECTID

    def foreign_entries(self) -> list[str]:
        """Paths of the entries of ``subvolumes/`` that are not subvolumes, sorted."""
        return [self.layer_path(name) for name in sorted(_listdir(self.subvolumes_fd)) if not self.is_layer(name)]

    def open_layer(self, layer_id: str) -> AbstractContextManager[int]:
        """``subvolumes/ID`` opened for the block (never through a symlink:
        NotADirectoryError), as a context manager yielding its fd."""
        return open_dir(layer_id, self.subvolumes_fd)

    def layer_path(self, layer_id: str) -> str:
        return os.path.join(self.subvolumes_path, layer_id)

    # ------------------------------------------------------------ quota files

    def quotas_fd(self, create: bool = False) -> int | None:
        """The quotas directory (made when ``create``), opened without
        following a symlink; None when it does not exist."""
        if self._quotas_fd is None:
            if create:
                _mkdir(self.quotas_path, 0o700, self.owner)
            try:
                fd = os.open(QUOTAS, DIR_NOFOLLOW, dir_fd=self.home_fd)
            except FileNotFoundError:
                return None
            with self._staging_lock:
                if self._quotas_fd is None:
                    self._quotas_fd = fd
                else:
                    os.close(fd)
        return self._quotas_fd

    def has_quotas_dir(self) -> bool:
        return self.quotas_fd() is not None

    def read_quota(self, layer_id: str) -> int | None:
        """The size in a layer's quota file, or None (no file, or not a number)."""
        qfd = self.quotas_fd()
        if qfd is None:
            return None
        text = read_file(layer_id, qfd, limit=64)
        # strconv.ParseUint in the original: digits only
        return int(text) if text is not None and text.isdigit() else None

    def write_quota(self, layer_id: str, size: int) -> None:
        """Write ``quotas/ID`` atomically (a temporary file renamed over it)."""
        qfd = self.quotas_fd(create=True)
        assert qfd is not None  # made above
        # named for its writer, so that gc can take one a dead process left
        write_file_atomic(layer_id, str(size).encode(), qfd, 0o644,
                          tmp=f".quota-{os.getpid()}-{threading.get_ident()}.tmp")

    def quota_file_names(self) -> set[str]:
        """The names in ``quotas/`` (empty when it does not exist)."""
        qfd = self.quotas_fd()
        return set(_listdir(qfd)) if qfd is not None else set()

    def sized_layers(self) -> dict[str, int]:
        """Every published layer with a quota file, and its size."""
        qfd = self.quotas_fd()
        if qfd is None:
            return {}
        sized = {}
        for name in _listdir(qfd):
            if name.startswith("."):
                continue  # a quota file being written
            size = self.read_quota(name)
            if size is not None and self.is_layer(name):
                sized[name] = size
        return sized

    def remove_quota(self, layer_id: str) -> bool:
        qfd = self.quotas_fd()
        if qfd is None:
            return False
        try:
            os.unlink(layer_id, dir_fd=qfd)
            return True
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------ apply_diff's backup

    def begin_apply(self, sfd: int, layer_id: str) -> None:
        """Snapshot the layer as ``backup`` in staging ``sfd``, record the
        lineage the backup would need if swapped in, then mark the apply
        begun.  Everything that writes happens here, before the apply: an
        abort on a full disk needs no space."""
        with open_dir(layer_id, self.subvolumes_fd, follow=True) as lfd:
            _ioctl.snapshot(lfd, sfd, BACKUP)
            info = _ioctl.get_subvolume_info(lfd)
        with open_dir(BACKUP, sfd) as bfd:
            backup_uuid = str(_ioctl.get_subvolume_info(bfd).uuid)
        layer_uuid = str(info.uuid)
        parent_uuid = self.lineage().get(layer_uuid, (str(info.parent_uuid or ""), ""))[0]
        self.record_lineage(backup_uuid, parent_uuid, layer_uuid)
        mark = json.dumps({"layer": layer_id, "backup": backup_uuid})  # ids may hold any byte but / and NUL
        write_file_atomic(APPLYING, mark.encode("ascii"), sfd)

    def commit_apply(self, sfd: int) -> None:
        with open(f"/proc/self/fd/{sfd}/{APPLYING}", "rb") as f:
            backup_uuid = json.loads(f.read())["backup"]
        os.unlink(APPLYING, dir_fd=sfd)  # the commit point
        _ioctl.destroy_subvolume(sfd, BACKUP)
        self.forget_lineage(backup_uuid)

    def abort_apply(self, sfd: int, staging_path: str) -> str:
        """Put the backup back under the layer's id (atomically) and drop what
        the failed apply left; returns the layer id.  Writes nothing, so it
        works on a full disk, and may run again after a crash midway."""
        with open(os.path.join(staging_path, APPLYING), "rb") as f:
            mark = json.loads(f.read())
        layer_id, backup_uuid = mark["layer"], mark["backup"]
        try:
            with open_dir(layer_id, self.subvolumes_fd, follow=True) as lfd:
                current: str | None = str(_ioctl.get_subvolume_info(lfd).uuid)
        except FileNotFoundError:
            current = None  # removed meanwhile: nothing to restore
        if current is not None:
            if current != backup_uuid:  # not swapped yet
                _ioctl.rename_exchange(sfd, BACKUP, self.subvolumes_fd, layer_id)
                size = self.read_quota(layer_id)
                if size is not None:
                    with open_dir(layer_id, self.subvolumes_fd, follow=True) as rfd:
                        try:
                            _ioctl.qgroup_limit(rfd, 0, max_referenced=size)
                        except OSError:
                            pass  # quotas off now; get() re-applies the limit
            self._return_nested(os.path.join(staging_path, BACKUP), self.layer_path(layer_id))
        subvolume.remove_tree(os.path.join(staging_path, BACKUP), destroy_subvolumes=True)
        os.unlink(APPLYING, dir_fd=sfd)
        return layer_id

    def _return_nested(self, failed: str, restored: str) -> None:
        """Move the subvolumes nested in the failed copy of a layer back into
        the restored one, where its snapshot left an empty directory for
        each: a snapshot does not take nested subvolumes along."""
        beneath = _ioctl.RESOLVE_BENEATH | _ioctl.RESOLVE_NO_SYMLINKS
        path_dir = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        with open_dir(failed, follow=True) as ffd, open_dir(restored, follow=True) as rfd:
            top = _ioctl.subvolume_id(ffd)
            for sub in subvolume.nested_subvolumes(ffd, top):
                if sub.parent_id != top:
                    continue  # moves with its parent
                _, dirpath = _ioctl.ino_lookup(ffd, sub.dirid, top)
                dirpath = dirpath.rstrip(b"/") or b"."
                with ExitStack() as fds:
                    try:
                        src = _ioctl.openat2(ffd, dirpath, path_dir, 0, beneath)
                        fds.callback(os.close, src)
                        dst = _ioctl.openat2(rfd, dirpath, path_dir, 0, beneath)
                        fds.callback(os.close, dst)
                    except OSError:
                        continue  # its place is gone in the restored copy: it goes with the failed one
                    try:
                        try:
                            os.rmdir(sub.name, dir_fd=dst)  # the snapshot's placeholder
                        except FileNotFoundError:
                            pass
                        os.rename(sub.name, sub.name, src_dir_fd=src, dst_dir_fd=dst)
                    except OSError:
                        pass

    def retire_staging(self, fd: int) -> None:
        """Give up a staging directory an operation could not clean: its lock
        is released, so :meth:`gc` can take what is in it."""
        with self._staging_lock:
            self._staging = [(n, f) for n, f in self._staging if f != fd]
        os.close(fd)

    # ------------------------------------------------------------ lineage

    def record_lineage(self, uuid: str, parent_uuid: str, replaces: str) -> None:
        _mkdir(self.lineage_path, 0o700, None)
        tmp = os.path.join(self.lineage_path, f".{uuid}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{parent_uuid}\n{replaces}\n")
        os.rename(tmp, os.path.join(self.lineage_path, uuid))

    def forget_lineage(self, uuid: str) -> None:
        if not uuid:
            return
        try:
            os.unlink(os.path.join(self.lineage_path, uuid))
        except FileNotFoundError:
            pass

    def lineage(self) -> dict[str, tuple[str, str]]:
        """``{uuid: (parent uuid, replaced uuid)}`` of layers swapped for a backup."""
        out: dict[str, tuple[str, str]] = {}
        try:
            names = os.listdir(self.lineage_path)
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith("."):
                continue
            try:
                with open(os.path.join(self.lineage_path, name)) as f:
                    parent, replaces = (f.read().split("\n") + ["", ""])[:2]
            except FileNotFoundError:
                continue
            out[name] = (parent, replaces)
        return out

    def _subvolumes_dir_key(self) -> tuple[int, int]:
        """(tree id, inode) of ``subvolumes/``: where a layer's ROOT_BACKREF points."""
        if self._subvolumes_key is None:
            self._subvolumes_key = (_ioctl.subvolume_id(self.subvolumes_fd), os.fstat(self.subvolumes_fd).st_ino)
        return self._subvolumes_key

    def layer_subvolumes(self) -> dict[str, LayerSubvolume] | None:
        """Every layer (a subvolume whose entry is in ``subvolumes/``) with its
        subvolume's id, UUIDs and creation time, from one pass over the root
        tree's ROOT_ITEM and ROOT_BACKREF items: the cost of reading the
        subvolumes' items, not of opening each layer.  Root only
        (PermissionError otherwise); None on a kernel whose root items carry
        no UUIDs (legacy items), where only GET_SUBVOL_INFO tells."""
        tree, ino = self._subvolumes_dir_key()
        out: dict[str, LayerSubvolume] = {}
        root_data = b""
        root_id = -1
        for item in _ioctl.TreeSearch(self.home_fd, _ioctl.ROOT_TREE_OBJECTID,
                                      min_objectid=_ioctl.FIRST_FREE_OBJECTID,
                                      max_objectid=_ioctl.LAST_FREE_OBJECTID, min_type=_ioctl.ROOT_ITEM_KEY,
                                      max_type=_ioctl.ROOT_BACKREF_KEY,
                                      item_types=(_ioctl.ROOT_ITEM_KEY, _ioctl.ROOT_BACKREF_KEY)):
            # a subvolume's ROOT_ITEM sorts before its ROOT_BACKREF (same objectid, lower type)
            if item.type == _ioctl.ROOT_ITEM_KEY:
                root_id, root_data = item.objectid, item.data
                continue
            if item.offset != tree or item.objectid != root_id:
                continue  # in another directory tree, or no root item seen (being dropped)
            ref = _ioctl.decode_root_ref(item.data)
            if ref.dirid != ino:
                continue
            root = _ioctl.decode_root_item(root_data)
            if root.uuid is None or root.otime_ns is None:
                return None
            sec, nsec = divmod(root.otime_ns, 1_000_000_000)
            out[os.fsdecode(ref.name)] = LayerSubvolume(item.objectid, str(root.uuid),
                                                        str(root.parent_uuid or ""), sec + nsec / 1e9)
        return out

    def layer_by_uuid(self, uuid: str) -> str | None:
        """The layer whose subvolume has UUID ``uuid``, or None: from the
        UUID tree and the subvolume's ROOT_BACKREF (its name and directory),
        without opening any layer (root only: PermissionError otherwise)."""
        if not uuid:
            return None
        tree, ino = self._subvolumes_dir_key()
        for subvolid in _ioctl.subvolumes_by_uuid(self.home_fd, _uuid.UUID(uuid)):
            # its ROOT_BACKREF is keyed by the tree its directory entry is in:
            # one exact lookup, as the UUID's was
            data = _ioctl.search_item(self.home_fd, _ioctl.ROOT_TREE_OBJECTID, subvolid, _ioctl.ROOT_BACKREF_KEY, tree)
            if data is not None:
                ref = _ioctl.decode_root_ref(data)
                if ref.dirid == ino:
                    return os.fsdecode(ref.name)
        return None

    # ------------------------------------------------------------ garbage collection

    def _orphaned_staging(self):
        """Yield ``(name, fd, path)`` of each staging directory whose owner is
        gone, locked by this caller for the time of the iteration."""
        for name in sorted(_listdir(self.staging_root_fd)):
            with ExitStack() as held:
                try:
                    fd = held.enter_context(open_dir(name, self.staging_root_fd))
                except OSError:
                    continue  # gone meanwhile, or not a directory
                if not try_lock(fd):
                    continue  # its owner lives
                yield name, fd, os.path.join(self.staging_path, name)

    def recover(self) -> list[str]:
        """Undo the apply_diff calls whose process died midway (what a new
        driver does first, so that it never shows a half-applied layer);
        returns the layer ids put back."""
        restored = []
        for _, fd, path in self._orphaned_staging():
            try:
                os.stat(APPLYING, dir_fd=fd)
            except FileNotFoundError:
                continue
            restored.append(self.abort_apply(fd, path))
        return restored

    def gc(self) -> GcReport:
        """Remove what interrupted operations left: staging directories of
        processes that are gone (with the subvolumes in them, an interrupted
        apply_diff undone first), quota files of layers that do not exist,
        and qgroups of subvolumes that are gone."""
        subvolumes: list[str] = []
        for name, fd, path in self._orphaned_staging():
            try:
                os.stat(APPLYING, dir_fd=fd)
            except FileNotFoundError:
                pass
            else:
                restored = self.abort_apply(fd, path)
                subvolumes.append(os.path.join(path, BACKUP) + f" (apply_diff to {restored!r} undone)")
            for entry in sorted(os.listdir(fd)):
                if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    subvolume.remove_tree(os.path.join(path, entry), destroy_subvolumes=True)
                    subvolumes.append(os.path.join(path, entry))
                else:
                    os.unlink(entry, dir_fd=fd)  # a marker written halfway
            os.rmdir(name, dir_fd=self.staging_root_fd)
        quota_files: list[str] = []
        qfd = self.quotas_fd()
        if qfd is not None:
            # one listing of subvolumes/ instead of a lock and a stat per quota
            # file: only a file whose layer is not listed is checked again,
            # under the id's lock, before it goes
            present = set(_listdir(self.subvolumes_fd))
            for name in sorted(_listdir(qfd)):
                if name.startswith(".quota-") and name.endswith(".tmp"):
                    pid = name[len(".quota-"):].split("-", 1)[0]
                    if pid.isdigit() and not pid_alive(int(pid)):
                        os.unlink(name, dir_fd=qfd)
                        quota_files.append(os.path.join(self.quotas_path, name))
                    continue
                if name in present:
                    continue
                with self.lock(name):
                    try:
                        os.stat(name, dir_fd=self.subvolumes_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        if self.remove_quota(name):
                            quota_files.append(os.path.join(self.quotas_path, name))
        qgroups = []
        if os.geteuid() == 0:
            qgroups = [f"0/{q}" for q in quota.remove_stale_qgroups(self.home_fd)]
            if subvolumes:
                _ioctl.sync(self.home_fd)  # a destroyed subvolume's root item loses its refs at commit
            self._prune_lineage()
        return GcReport(subvolumes, quota_files, qgroups, self.foreign_entries(), self._gc_oci_markers())

    def _gc_oci_markers(self) -> list[str]:
        """Remove the OCI import markers of layers that are gone, or whose
        subvolume is not the one the marker names; returns their ids.  A
        marker an import holds (flock) is left alone."""
        directory = os.path.join(self.home, OCI_MARKERS)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        removed = []
        for name in names:
            path = os.path.join(directory, name)
            with ExitStack() as held:
                try:
                    fd = held.enter_context(open_file(path, os.O_RDWR))
                except OSError:
                    continue  # gone meanwhile, or not a marker file
                if not try_lock(fd):
                    continue  # an import is at work on it
                if self._layer_uuid(name) is None or read_marker(fd).get("uuid") != self._layer_uuid(name):
                    os.unlink(path)
                    removed.append(name)
        return removed

    def _layer_uuid(self, name: str) -> str | None:
        """The subvolume UUID of layer ``name``, or None when it is not a layer."""
        if not self.is_layer(name):
            return None
        with open_dir(name, self.subvolumes_fd) as fd:
            return str(_ioctl.get_subvolume_info(fd).uuid)

    def _prune_lineage(self) -> None:
        """Drop lineage records of subvolumes that no longer exist (a layer
        removed after a failed apply, an apply that committed before it could
        drop its record).  A backup still in staging exists, so an apply in
        flight keeps its record."""
        records = self.lineage()
        if not records:
            return
        live = set()
        for item in _ioctl.TreeSearch(self.home_fd, _ioctl.ROOT_TREE_OBJECTID,
                                      min_objectid=_ioctl.FIRST_FREE_OBJECTID,
                                      max_objectid=_ioctl.LAST_FREE_OBJECTID, min_type=_ioctl.ROOT_ITEM_KEY,
                                      max_type=_ioctl.ROOT_ITEM_KEY):
            if item.type == _ioctl.ROOT_ITEM_KEY:
                root = _ioctl.decode_root_item(item.data)
                if root.refs:  # a deleted subvolume keeps its root item, with no refs, until cleaned
                    live.add(str(root.uuid))
        for uuid in records:
            if uuid not in live:
                self.forget_lineage(uuid)

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the fds and remove this process's (empty) staging directories."""
        if self._closed:
            return
        self._closed = True
        with self._staging_lock:
            for name, fd in self._staging:
                try:
                    os.rmdir(name, dir_fd=self.staging_root_fd)
                except OSError:
                    pass  # not empty: a thread is mid-create; gc takes it later
                os.close(fd)
            self._staging.clear()
            self._free_staging.clear()
        for stripe_fd in self._stripe_fds:
            if stripe_fd is not None:
                os.close(stripe_fd)
        if self._quotas_fd is not None:
            os.close(self._quotas_fd)
        for fd in (self._locks_fd, self.staging_root_fd, self.subvolumes_fd, self.home_fd):
            os.close(fd)


def read_marker(fd: int) -> dict:
    """The JSON record of an OCI import marker open at ``fd``; empty when it
    is empty or was torn by a crash while being written."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
