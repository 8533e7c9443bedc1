"""The layer driver: the containers/storage btrfs graph driver's operations,
composed from the store, subvolume and quota modules."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from btrfsx import archive, mounts, quota, subvolume, transport
from btrfsx._fd import DIR_NOFOLLOW, open_dir
from btrfsx._version import __version__
from btrfsx.archive import Change
from btrfsx.archive.native import NativeUnavailable, inodes_with_xattrs, native_changes
from btrfsx.errors import ArchiveError, NativeChangesUnavailable, OptionError, PrerequisitesError
from btrfsx.idmap import IDMap, root_pair
from btrfsx.options import check_size, parse_driver_options, parse_storage_opt
from btrfsx.quota import QuotaMode
from btrfsx.store import GcReport, Store, check_layer_id

log = logging.getLogger("btrfsx.driver")



def _privileged() -> bool:
    return os.geteuid() == 0
_SELINUX_XATTR = "security.selinux"


class LayerInfo(NamedTuple):
    """One layer as :meth:`Driver.layer_infos` sees it."""

    id: str
    parent: str | None       #: the layer it was made from, by btrfs's parent UUID
    uuid: str
    created: float           #: the subvolume's creation time (seconds)
    referenced: int | None   #: bytes, with quotas on
    exclusive: int | None    #: bytes, with quotas on
    limit: int | None        #: its size limit in bytes, if it has one


@dataclass
class CreateOpts:
    """Options of a new layer: an SELinux label for its root, and storage
    options (only ``size``)."""

    mount_label: str = ""
    storage_opt: Mapping[str, str] = field(default_factory=dict)


@dataclass
class MountOpts:
    """Options of :meth:`Driver.get`; btrfs layers are plain directories, so
    ``options`` may hold only ``ro`` (accepted and ignored)."""

    mount_label: str = ""
    options: Sequence[str] = ()


def _btrfs_ancestor(path: str) -> str:
    """``path``, or its nearest existing ancestor."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _mkdir_all_as(path: str, mode: int, uid: int, gid: int) -> None:
    """Make ``path`` and its missing parents with ``mode`` and owner (idtools.MkdirAllAs)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        try:
            os.mkdir(p, mode)
        except FileExistsError:
            continue
        os.chmod(p, mode)
        if (uid, gid) != (0, 0):
            os.chown(p, uid, gid)


class _Lineage:
    """The parents btrfs's UUIDs give, corrected by the records of layers
    swapped for their backup after a failed apply_diff (``Store.lineage``)."""

    def __init__(self, records: dict[str, tuple[str, str]]):
        self.records = records
        self.replaced_by = {replaces: uuid for uuid, (_, replaces) in records.items() if replaces}

    def parent(self, uuid: str, parent_uuid: str, find: Callable[[str], str | None]) -> str | None:
        """The parent layer of the subvolume ``uuid`` (whose btrfs parent UUID
        is ``parent_uuid``); ``find`` maps a UUID to a layer, or None."""
        if uuid in self.records:
            parent_uuid = self.records[uuid][0]
        # a parent swapped for its backup lives on under the backup's UUID
        seen = set()
        while True:
            layer = find(parent_uuid)
            if layer is not None or parent_uuid not in self.replaced_by or parent_uuid in seen:
                return layer
            seen.add(parent_uuid)
            parent_uuid = self.replaced_by[parent_uuid]


# how often a limit is retried while quotas keep being turned off under it
_LIMIT_ATTEMPTS = 5


class Driver:
    """Layers as btrfs subvolumes under ``home``, as containers/storage keeps them.

    >>> with Driver("/var/lib/containers/storage/btrfs") as d:
    ...     d.create("base")
    ...     d.create("child", "base", CreateOpts(storage_opt={"size": "1G"}))
    ...     d.get("child")
    '/var/lib/containers/storage/btrfs/subvolumes/child'
    """

    def __init__(self, home: str | os.PathLike, options: Iterable[str] = (),
                 uid_maps: Sequence[IDMap] | None = None, gid_maps: Sequence[IDMap] | None = None):
        self.home = os.path.abspath(os.fspath(home))
        self.options = parse_driver_options(options)
        self.uid_maps = list(uid_maps or ())
        self.gid_maps = list(gid_maps or ())
        self._root = root_pair(self.uid_maps, self.gid_maps)
        probe = _btrfs_ancestor(self.home)
        if not subvolume.on_btrfs(probe):
            raise PrerequisitesError(f"{self.home!r} is not on a btrfs filesystem"
                                     + (f" (nearest existing directory: {probe!r})" if probe != self.home else ""))
        _mkdir_all_as(self.home, 0o700, *self._root)
        self._bind_mounted = self._make_private()
        self._store = Store(self.home, self._root)
        if os.geteuid() == 0:
            for layer in self._store.recover():
                log.warning("layer %r: an apply_diff interrupted by its process's death was undone", layer)
        self._quota_mode: QuotaMode | None = None
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._quota_lock = threading.Lock()
        if self.options.wants_quota:
            self._ensure_quota()

    # ------------------------------------------------------------ setup

    def _make_private(self) -> bool:
        """Make home a private mount point (bind-mounting it on itself when it
        is not one), as mount.MakePrivate does; True when this bind-mounted it."""
        try:
            return mounts.make_private(self.home)
        except PermissionError as e:
            # Rootless: mounts need privileges the caller lacks; layers work without.
            log.warning("cannot make %s a private mount point: %s", self.home, e)
            return False

    def _ensure_quota(self, known_off: bool = False) -> QuotaMode:
        """The quota mode in force, turning quotas on when they are off
        (``known_off``: a qgroup ioctl said so, see :func:`quota.enable`).

        Read afresh on every call: another driver or program on the
        filesystem may have turned quotas off since (which drops every
        qgroup limit), or back on in another mode.  Turning them on again
        re-applies the limits this store's quota files record.
        """
        fd = self._store.home_fd
        current = QuotaMode.OFF if known_off else quota.mode(fd)
        if current is QuotaMode.OFF:
            with self._quota_lock:
                current = QuotaMode.OFF if known_off else quota.mode(fd)
                if current is QuotaMode.OFF:
                    quota.enable(fd, self.options.quota_mode, known_off=known_off)
                    # another process may have enabled them first, in its mode
                    current = quota.mode(fd)
                    self._reapply_limits(current)
        self._quota_mode = current
        return current

    def _reapply_limits(self, mode: QuotaMode) -> None:
        """Set every sized layer's limit again, after quotas were turned on."""
        sized = self._store.sized_layers()
        if not sized:
            return
        log.warning("quotas on the filesystem of %s were off (turned off by another driver or program?): "
                    "turned on again (%s) and the size limits of %d layers re-applied%s", self.home, mode,
                    len(sized), "; simple quotas count only the data written from now on against them"
                    if mode is QuotaMode.SIMPLE else "")
        for layer_id, size in sized.items():
            try:
                with self._store.open_layer(layer_id) as fd:
                    try:
                        quota.set_limit(fd, size)
                    except OSError as e:
                        log.warning("layer %r: cannot re-apply its size limit of %d bytes: %s", layer_id, size,
                                    e.strerror)
            except FileNotFoundError:
                continue  # removed meanwhile

    def _limit(self, fd: int, layer_id: str, size: int) -> None:
        """QGROUP_LIMIT of the layer open at ``fd``, surviving quotas turned
        off (ENOTCONN) or its qgroup gone (ENOENT) since the mode was read:
        each time they are turned on again and the limit retried."""
        for attempt in range(_LIMIT_ATTEMPTS):
            try:
                quota.set_limit(fd, size)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTCONN, errno.ENOENT) or attempt == _LIMIT_ATTEMPTS - 1:
                    raise OSError(e.errno, f"layer {layer_id!r}: cannot apply its size limit: {e.strerror}",
                                  self._store.layer_path(layer_id)) from None
                missing_qgroup = e.errno == errno.ENOENT
            self._ensure_quota(known_off=not missing_qgroup)
            if missing_qgroup:
                try:
                    quota.create_qgroup(fd)
                except FileExistsError:
                    pass

    def _quota_on(self) -> bool:
        if self._quota_mode is None:
            try:
                self._quota_mode = quota.mode(self._store.home_fd)
            except PermissionError:
                self._quota_mode = QuotaMode.OFF
        return self._quota_mode is not QuotaMode.OFF

    # ------------------------------------------------------------ the driver API

    def __str__(self) -> str:
        return "btrfs"

    def __repr__(self) -> str:
        return f"Driver(home={self.home!r})"

    def create(self, id: str, parent: str | None = None, opts: CreateOpts | None = None) -> None:
        """Make layer ``id``: an empty subvolume (root mode 0555), or a
        snapshot of layer ``parent``.  Published atomically under its id."""
        self._create(id, parent, opts, read_write=False)

    def create_read_write(self, id: str, parent: str | None = None, opts: CreateOpts | None = None) -> None:
        """:meth:`create`, with ``btrfs.size`` as the size when ``opts`` gives none."""
        self._create(id, parent, opts, read_write=True)

    def create_from_template(self, id: str, template: str, template_id_mappings=None,
                             parent: str | None = None, parent_id_mappings=None,
                             opts: CreateOpts | None = None, read_write: bool = False) -> None:
        """A layer with the contents of layer ``template`` (a snapshot of it)."""
        self._create(id, template, opts, read_write=read_write)

    def _create(self, layer_id: str, parent: str | None, opts: CreateOpts | None, read_write: bool) -> None:
        check_layer_id(layer_id)
        if parent:
            check_layer_id(parent)
        try:
            size = parse_storage_opt(opts.storage_opt) if opts else None
            if size is None and read_write and self.options.default_size:
                size = self.options.default_size
            if size is not None:
                check_size(size, self.options.min_space)
        except OptionError as e:
            # the containers/storage wording kept after the id: users grep for it
            raise OptionError(f"layer {layer_id!r}: {e}") from None
        try:
            self._create_checked(layer_id, parent, size, opts.mount_label if opts else "")
        except OSError as e:
            raise self._naming(e, layer_id, "create it") from None

    def _naming(self, e: OSError, layer_id: str, doing: str) -> OSError:
        """``e`` as an error that names the layer: as it is when its message
        names one already (every message this module makes does), otherwise
        "layer 'ID': cannot <doing>: <strerror>" on the layer's path, never on
        a staging name the caller did not choose."""
        if e.strerror and "layer '" in e.strerror:
            return e
        return type(e)(e.errno, f"layer {layer_id!r}: cannot {doing}: {e.strerror or e}",
                       self._store.layer_path(layer_id))

    def _create_checked(self, layer_id: str, parent: str | None, size: int | None, label: str) -> None:
        mode = self._ensure_quota() if size is not None else None
        store = self._store
        quota_files = size is not None or store.has_quotas_dir()
        # Only the quota file needs the id's lock: the subvolume itself is
        # published with RENAME_NOREPLACE or made in place by the kernel.
        stripe = store.lock_id(layer_id) if quota_files else None
        try:
            if quota_files:
                self._check_free(layer_id)  # its quota file is about to change
            # A snapshot needing no mode, owner, label or later limit is
            # complete the moment the kernel makes it, so it is made in place
            # unless another create of this driver is in flight: those use
            # staging directories of their own, where they run in parallel.
            with self._inflight_lock:
                in_place = (parent and not label and self._root == (0, 0) and self._inflight == 0
                            and (size is None or mode is QuotaMode.SIMPLE))
                self._inflight += 1
            try:
                if in_place:
                    assert parent is not None  # in_place needs one
                    self._snapshot_in_place(layer_id, parent, size, quota_files)
                else:
                    self._create_staged(layer_id, parent, size, mode, label, quota_files)
            finally:
                with self._inflight_lock:
                    self._inflight -= 1
            # A limit passed with SUBVOL_CREATE or SNAP_CREATE is dropped
            # without an error when quotas are off (Linux 6.x): turned off
            # since the mode was read, they are turned on again, which
            # re-applies this layer's limit with the others.
            if size is not None and quota.mode(store.home_fd) is QuotaMode.OFF:
                self._ensure_quota()
        finally:
            if stripe is not None:
                store.unlock_id(stripe)

    def _snapshot_in_place(self, layer_id: str, parent: str, size: int | None, quota_files: bool) -> None:
        store = self._store
        if size is not None:
            store.write_quota(layer_id, size)
        elif quota_files:
            store.remove_quota(layer_id)  # a stale one from an interrupted remove
        try:
            pfd = self._open_parent(parent)
            try:
                subvolume.snapshot(pfd, store.subvolumes_fd, layer_id, max_referenced=size)
            finally:
                os.close(pfd)
        except BaseException as e:
            if size is not None:
                store.remove_quota(layer_id)
            if isinstance(e, FileExistsError):
                raise FileExistsError(errno.EEXIST, f"layer {layer_id!r} already exists",
                                      store.layer_path(layer_id)) from None
            raise

    def _create_staged(self, layer_id: str, parent: str | None, size: int | None,
                       mode: QuotaMode | None, label: str, quota_files: bool) -> None:
        """Make the layer in a staging directory, finish it there, then publish it."""
        store = self._store
        sfd = store.take_staging()
        try:
            explicit_limit = self._make(sfd, layer_id, parent, size, mode)
            wrote_quota = False
            try:
                self._prepare(sfd, layer_id, parent, size if explicit_limit else None, label)
                if size is not None:
                    store.write_quota(layer_id, size)
                    wrote_quota = True
                elif quota_files:
                    store.remove_quota(layer_id)  # a stale one from an interrupted remove
                store.publish(sfd, layer_id, layer_id)
            except BaseException:
                if wrote_quota:
                    store.remove_quota(layer_id)
                self._discard(sfd, layer_id)
                raise
        finally:
            store.give_staging(sfd)
        if not parent and not _privileged():
            os.chmod(layer_id, 0o555, dir_fd=store.subvolumes_fd)

    def _open_parent(self, parent: str) -> int:
        """The parent layer's fd, for the caller to close; an error naming it
        when it is missing or not a layer.  A plain os.open, not
        Store.open_layer: every child create comes here, and the context
        managers cost about 5 us of a create that is near its target."""
        try:
            fd = os.open(parent, DIR_NOFOLLOW, dir_fd=self._store.subvolumes_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                self._check_layer(parent, "parent layer")  # says what is there instead, or that nothing is
            raise type(e)(e.errno, f"parent layer {parent!r}: cannot open it: {e.strerror}",
                          self._store.layer_path(parent)) from None
        if not subvolume.is_root(os.fstat(fd)):
            os.close(fd)
            self._check_layer(parent, "parent layer")
            # a subvolume again by the time it was looked at: replaced meanwhile
            raise OSError(errno.EAGAIN, f"parent layer {parent!r} was replaced while it was opened",
                          self._store.layer_path(parent))
        return fd

    def _check_free(self, layer_id: str) -> None:
        try:
            os.stat(layer_id, dir_fd=self._store.subvolumes_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise FileExistsError(errno.EEXIST, f"layer {layer_id!r} already exists",
                              self._store.layer_path(layer_id))

    def _make(self, sfd: int, layer_id: str, parent: str | None, size: int | None,
              mode: QuotaMode | None) -> bool:
        """The layer's subvolume, in staging; True when its size limit is still to be set."""
        if not parent:
            subvolume.create(sfd, layer_id, max_referenced=size)
            return False
        pfd = self._open_parent(parent)
        try:
            # Simple quotas apply a limit passed with the snapshot; full qgroups
            # copy the parent's limits over it (Linux 6.18), so there it is set
            # afterwards.
            inherit = size if mode is QuotaMode.SIMPLE else None
            subvolume.snapshot(pfd, sfd, layer_id, max_referenced=inherit)
        finally:
            os.close(pfd)
        return size is not None and inherit is None

    def _prepare(self, sfd: int, layer_id: str, parent: str | None, limit: int | None,
                 label: str) -> None:
        """Mode, limit, owner and label of a layer in staging, before it is published."""
        # The root's mode would otherwise follow the caller's umask.  Moving a
        # directory to another parent needs write permission on it (its ".."
        # changes), which only root may skip: without that privilege the mode
        # is set just after publishing instead.
        if not parent and _privileged():
            os.chmod(layer_id, 0o555, dir_fd=sfd)
        if limit is not None:
            with open_dir(layer_id, sfd) as lfd:
                self._limit(lfd, layer_id, limit)
        if self._root != (0, 0):
            os.chown(layer_id, *self._root, dir_fd=sfd, follow_symlinks=False)
        if label:
            self._relabel(sfd, layer_id, label)

    def _discard(self, dirfd: int, name: str) -> None:
        """Delete a layer that failed to publish, with or without the privilege to destroy it."""
        try:
            subvolume.destroy_empty(dirfd, name)
        except PermissionError:
            subvolume.remove_tree(os.path.join(os.readlink(f"/proc/self/fd/{dirfd}"), name))

    def _relabel(self, dirfd: int, layer_id: str, label: str) -> None:
        with open_dir(layer_id, dirfd) as fd:
            try:
                os.setxattr(fd, _SELINUX_XATTR, label.encode() + b"\0")
            except OSError as e:
                raise OSError(e.errno, f"cannot set SELinux label {label!r} on layer {layer_id!r}: {e.strerror}",
                              self._store.layer_path(layer_id)) from None

    def remove(self, id: str) -> None:
        """Delete layer ``id``, every subvolume nested in it, and its quota file.

        Nested subvolumes are found from btrfs's metadata, not by walking the
        layer.  Its qgroup is not destroyed here (the kernel refuses while
        the subvolume is being dropped); kernels from 6.11 remove it when the
        cleaner is done, :meth:`gc` does on older ones.
        """
        check_layer_id(id)
        store = self._store
        path = store.layer_path(id)
        try:
            stripe = store.lock_id(id) if store.has_quotas_dir() else None
        except OSError as e:
            raise self._naming(e, id, "remove it") from None
        try:
            try:
                subvolume.destroy(store.subvolumes_fd, id, path=store.subvolumes_path)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, f"layer {id!r} does not exist", path) from None
            except PermissionError:
                if self._quota_on():
                    raise
                # Unprivileged callers cannot SNAP_DESTROY; rmdir removes an
                # empty subvolume since Linux 4.18.
                subvolume.remove_tree(path)
            except OSError as e:
                if e.errno == errno.EINVAL and not subvolume.is_subvolume(id, dir_fd=store.subvolumes_fd):
                    raise OSError(errno.EINVAL, f"layer {id!r} is not a btrfs subvolume", path) from None
                raise self._naming(e, id, "remove it") from None
            if stripe is not None:
                store.remove_quota(id)
        finally:
            if stripe is not None:
                store.unlock_id(stripe)
        transport.forget(store, id)  # its read-only twin, if it was sent or received

    def get(self, id: str, options: MountOpts | None = None) -> str:
        """The directory of layer ``id``; re-applies its size limit when it has one."""
        check_layer_id(id)
        store = self._store
        path = store.layer_path(id)
        if options is not None:
            unsupported = [o for o in options.options if o != "ro"]
            if unsupported:
                raise OptionError(f"layer {id!r}: btrfs driver does not support mount options "
                                  f"(only 'ro' is accepted, not {', '.join(map(repr, unsupported))})")
        self._check_layer(id)
        size = store.read_quota(id)
        if size is not None and size >= self.options.min_space:
            if self._quota_mode is None or self._quota_mode is QuotaMode.OFF:
                self._ensure_quota()
            # quotas turned off since are found by the limit's ENOTCONN
            with store.open_layer(id) as fd:
                self._limit(fd, id, size)
        return path

    def put(self, id: str) -> None:
        """Nothing to release: :meth:`get` mounts nothing."""

    def exists(self, id: str) -> bool:
        """Whether layer ``id`` exists: a subvolume at ``subvolumes/ID`` (a
        plain directory or symlink put there by hand is not a layer)."""
        check_layer_id(id)
        return self._store.is_layer(id)

    def layers(self) -> list[str]:
        """The ids of every layer, sorted."""
        return sorted(self._store.list_layers())

    def status_info(self) -> dict[str, str | int | None]:
        """:meth:`status` typed, under the same keys: sizes and the layer
        count as ints, None for what is unset ("Min Space", "Default Size")
        or cannot be read ("Quota Mode" without root)."""
        fd = self._store.home_fd
        mode: str | None
        try:
            mode = str(quota.mode(fd))
        except PermissionError:
            mode = None
        fsid = subvolume.filesystem_uuid(fd)
        return {
            "Driver": f"btrfsx {__version__}",
            "Kernel Version": os.uname().release,
            "Home": self.home,
            "Filesystem UUID": fsid,
            "Quota Mode": mode,
            "Min Space": self.options.min_space or None,
            "Default Size": self.options.default_size or None,
            "Layers": len(self._store.list_layers()),
        }

    def status(self) -> list[tuple[str, str]]:
        """What a person debugging the store wants to know (:meth:`status_info` as text)."""
        unset = {"Quota Mode": "unknown (reading the quota tree needs root)"}
        return [(key, unset.get(key, "none") if value is None else str(value))
                for key, value in self.status_info().items()]

    # ------------------------------------------------------------ diffs

    def _layer_path(self, layer_id: str) -> str:
        """The directory of an existing layer, or the error :meth:`_check_layer` gives."""
        check_layer_id(layer_id)
        self._check_layer(layer_id)
        return self._store.layer_path(layer_id)

    def _check_layer(self, layer_id: str, what: str = "layer") -> None:
        """FileNotFoundError unless ``subvolumes/ID`` is there, and a clear
        error unless it is a subvolume: a symlink put in its place is never
        followed, and a plain directory is not a layer."""
        path = self._store.layer_path(layer_id)
        try:
            st = os.stat(layer_id, dir_fd=self._store.subvolumes_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"{what} {layer_id!r} does not exist", path) from None
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, f"{what} {layer_id!r} is a symlink, not a btrfs subvolume", path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{what} {layer_id!r} is not a directory", path)
        if not subvolume.is_root(st):
            raise OSError(errno.EINVAL, f"{what} {layer_id!r} is a plain directory, not a btrfs subvolume", path)

    def changes(self, id: str, parent: str | None = None) -> list[Change]:
        """What layer ``id`` changed relative to layer ``parent`` (everything,
        as additions, without one), sorted by path."""
        return self._changes(id, parent)

    def _changes(self, id: str, parent: str | None, stats: dict | None = None) -> list[Change]:
        layer = self._layer_path(id)
        if not parent:
            return archive.changes(layer, None, stats=stats)
        parent_path = self._layer_path(parent)
        mode = self.options.changes
        if mode != "naive":
            try:
                found = native_changes(layer, parent_path, stats=stats)
            except NativeUnavailable as e:
                if mode == "native":
                    raise NativeChangesUnavailable(
                        f"layer {id!r}: its changes against {parent!r} cannot be read from btrfs metadata: "
                        f"{e.reason}") from None
                log.debug("layer %r: walking both trees for changes against %r: %s", id, parent, e.reason)
            else:
                log.debug("layer %r: changes against %r read from btrfs metadata", id, parent)
                return found
        return archive.changes(layer, parent_path, stats=stats)

    def diff(self, id: str, parent: str | None = None) -> BinaryIO:
        """Those changes as an uncompressed OCI layer tar stream, produced as it
        is read; owners are translated to container ids.  Close it when done."""
        stats: dict = {}
        found = self._changes(id, parent, stats)
        layer = self._store.layer_path(id)
        # A whole layer: one search of its tree for the inodes with extended
        # attributes costs less than a listxattr per entry.
        xattr_inodes = inodes_with_xattrs(layer) if not parent else None
        return archive.export_changes(layer, found, self.uid_maps, self.gid_maps, stats=stats,
                                      xattr_inodes=xattr_inodes)

    def diff_size(self, id: str, parent: str | None = None) -> int:
        """containers/storage's ChangesSize of those changes."""
        return archive.changes_size(self._store.layer_path(id), self.changes(id, parent))

    def apply_diff(self, id: str, parent: str | None, diff: BinaryIO) -> int:
        """Apply a layer tarball (uncompressed, gzip or zstd) to layer ``id``;
        returns the total size of its files.  All or nothing: on any error the
        layer is put back as it was (from a snapshot taken first), keeping
        its place in the lineage."""
        layer = self._layer_path(id)
        store = self._store
        try:
            stripe = store.lock_id(id)
        except OSError as e:
            raise self._naming(e, id, "apply a tarball to it") from None
        try:
            try:
                sfd = store.take_staging()
            except OSError as e:
                raise self._naming(e, id, "apply a tarball to it") from None
            clean = False
            try:
                try:
                    store.begin_apply(sfd, id)
                except OSError as e:
                    raise self._naming(e, id, "apply a tarball to it") from None
                try:
                    size = archive.apply_layer(layer, diff, self.uid_maps, self.gid_maps)
                except BaseException as e:
                    store.abort_apply(sfd, os.readlink(f"/proc/self/fd/{sfd}"))
                    clean = True
                    if isinstance(e, ArchiveError):
                        raise type(e)(f"layer {id!r} left as it was: {e}") from None
                    if isinstance(e, OSError):
                        raise type(e)(e.errno, f"layer {id!r} left as it was: {e.strerror or e}",
                                      e.filename or layer) from None
                    raise
                store.commit_apply(sfd)
                clean = True
                return size
            finally:
                if clean:
                    store.give_staging(sfd)
                else:
                    store.retire_staging(sfd)  # gc finishes what is left in it
        finally:
            store.unlock_id(stripe)

    # ------------------------------------------------------------ send streams (btrfsx.transport)

    def send(self, id: str, parent: str | None = None, *, protocol: int | None = None) -> BinaryIO:
        """A btrfs send stream of layer ``id``, incremental against layer
        ``parent``, produced as it is read (close it when done).  Sent from
        read-only twins of the layers, made once and kept until the layer
        changes or is removed.  ``protocol``: 1, or 2 (encoded writes: compressed
        extents stay compressed); by default the highest the kernel offers."""
        check_layer_id(id)
        if parent:
            check_layer_id(parent)
        self._check_layer(id)
        try:
            return transport.send(self._store, id, parent or None, protocol)
        except OSError as e:
            raise self._naming(e, id, "send it") from None

    def receive(self, id: str, stream: BinaryIO, parent: str | None = None,
                opts: CreateOpts | None = None) -> int:
        """Make layer ``id`` from a send stream (:meth:`send`'s, here or on another
        machine), incremental against layer ``parent`` when the stream is;
        returns the bytes read.  A writable layer like :meth:`create_read_write`'s
        (``storage_opt`` size, else ``btrfs.size``).  All or nothing."""
        check_layer_id(id)
        if parent:
            check_layer_id(parent)
        try:
            size = parse_storage_opt(opts.storage_opt) if opts else None
            if size is None and self.options.default_size:
                size = self.options.default_size
            if size is not None:
                check_size(size, self.options.min_space)
        except OptionError as e:
            raise OptionError(f"layer {id!r}: {e}") from None
        if size is not None:
            self._ensure_quota()
        try:
            return transport.receive(self._store, id, stream, parent or None, size, self._limit)
        except OSError as e:
            raise self._naming(e, id, "receive it") from None

    def parent(self, id: str) -> str | None:
        """The layer ``id`` was made from, from btrfs's parent UUID (so also for
        layers another program made), or None."""
        self._layer_path(id)
        if _privileged():
            try:
                return self._parent_by_uuid(id)
            except PermissionError:
                pass
        return next(info.parent for info in self.layer_infos([id]))

    def _parent_by_uuid(self, layer_id: str, info=None) -> str | None:
        """parent() from the UUID tree: the cost of a few searches, whatever
        the number of layers (a listing of all layers maps UUIDs by opening
        each).  ``info``: the layer's SubvolumeInfo, when the caller has it."""
        store = self._store
        if info is None:
            with store.open_layer(layer_id) as fd:
                info = subvolume.info(fd)
        return _Lineage(store.lineage()).parent(str(info.uuid), str(info.parent_uuid or ""), store.layer_by_uuid)

    def layer_infos(self, ids: Iterable[str] | None = None) -> list[LayerInfo]:
        """What ``btrfsx ls`` shows of each layer (all, sorted, by default):
        its parent from btrfs's parent UUIDs, creation time, and with quotas
        on its referenced and exclusive bytes and limit."""
        store = self._store
        if ids is not None and _privileged():
            # A few layers: parents from the UUID tree, without opening every layer.
            wanted = [check_layer_id(i) for i in ids]
            try:
                return [info for info in map(self._layer_info, wanted) if info is not None]
            except PermissionError:
                pass
        if ids is None and _privileged():
            try:
                listed = self._all_layer_infos()
            except PermissionError:
                listed = None
            if listed is not None:
                return listed
        every = sorted(store.list_layers())
        wanted = every if ids is None else [check_layer_id(i) for i in ids]
        subvols: dict[str, tuple[int, str, str, float]] = {}  # id -> (subvolid, uuid, parent uuid, otime)
        for layer in set(every) | set(wanted):
            if not store.is_layer(layer):
                continue  # a plain directory would give the subvolume holding it
            try:
                with store.open_layer(layer) as fd:
                    info = subvolume.info(fd)
            except OSError:
                continue  # gone meanwhile, or not a subvolume
            subvols[layer] = (info.id, str(info.uuid), str(info.parent_uuid or ""), info.otime)
        lineage = _Lineage(store.lineage())
        by_uuid = {uuid: layer for layer, (_, uuid, _, _) in subvols.items()}
        quotas = self._quota_on()
        out = []
        for layer in wanted:
            if layer not in subvols:
                continue
            subvolid, uuid, parent_uuid, otime = subvols[layer]
            out.append(LayerInfo(layer, lineage.parent(uuid, parent_uuid, by_uuid.get), uuid, otime,
                                 *self._usage(layer, subvolid, quotas)))
        return out

    def _all_layer_infos(self) -> list[LayerInfo] | None:
        """layer_infos() of every layer from two tree searches (root only):
        one pass over the root tree for the layers, their UUIDs and creation
        times, one over the quota tree for usage and limits; quota files are
        read only for layers without a limit.  None where root items carry
        no UUIDs."""
        store = self._store
        subvols = store.layer_subvolumes()
        if subvols is None:
            return None
        lineage = _Lineage(store.lineage())
        by_uuid = {sub.uuid: layer for layer, sub in subvols.items()}
        usage: dict = {}
        limits: dict = {}
        if self._quota_on():
            usage, limits = quota.qgroup_table(store.home_fd)
        quota_files = store.quota_file_names()
        out = []
        for layer in sorted(subvols):
            sub = subvols[layer]
            info = usage.get(sub.id)
            lim = limits.get(sub.id)
            limit = quota.referenced_limit(lim)
            if limit is None and layer in quota_files:
                limit = store.read_quota(layer)
            out.append(LayerInfo(layer, lineage.parent(sub.uuid, sub.parent_uuid, by_uuid.get), sub.uuid,
                                 sub.otime, None if info is None else info.referenced,
                                 None if info is None else info.exclusive, limit))
        return out

    def _usage(self, layer: str, subvolid: int, quotas: bool) -> tuple[int | None, int | None, int | None]:
        """(referenced, exclusive, limit) of a layer, as far as quotas tell."""
        store = self._store
        referenced = exclusive = limit = None
        if quotas:
            referenced, exclusive, limit = quota.usage(store.home_fd, subvolid)
        if limit is None:
            limit = store.read_quota(layer)
        return referenced, exclusive, limit

    def _layer_info(self, layer: str) -> LayerInfo | None:
        """layer_infos of one layer, its parent from the UUID tree (root only);
        None when it is not a subvolume."""
        if not self._store.is_layer(layer):
            return None  # GET_SUBVOL_INFO on a plain directory describes the subvolume holding it
        try:
            with self._store.open_layer(layer) as fd:
                info = subvolume.info(fd)
        except OSError:
            return None  # gone meanwhile, or not a subvolume
        return LayerInfo(layer, self._parent_by_uuid(layer, info), str(info.uuid), info.otime,
                         *self._usage(layer, info.id, self._quota_on()))

    def metadata(self, id: str) -> dict | None:
        """None, as the original: btrfs layers carry no driver metadata."""
        return None

    def additional_image_stores(self) -> list[str]:
        return []

    def gc(self) -> GcReport:
        """Reclaim what interrupted operations left behind (see :meth:`Store.gc`);
        entries of ``subvolumes/`` that are not subvolumes are reported in
        ``foreign``, never removed."""
        report = self._store.gc()
        if _privileged():
            report.subvolumes.extend(transport.gc(self._store))  # read-only twins of layers gone
        return report

    def disable_quotas(self, force: bool = False) -> bool:
        """Turn quotas off on the filesystem of home; False when they were off.

        Refused (OSError EBUSY, naming them) while layers of this store have
        size limits, unless ``force``: turning quotas off drops every
        qgroup limit on the filesystem, and with simple quotas also the
        accounting of the data already written, which turning them on again
        cannot recover.  Layers of other stores on the same filesystem are
        not seen.  Quotas stay off until a driver next needs them: a sized
        :meth:`create`, a :meth:`get` of a sized layer, or ``btrfs.min_space``.
        """
        fd = self._store.home_fd
        if quota.mode(fd) is QuotaMode.OFF:
            self._quota_mode = QuotaMode.OFF
            return False
        if not force:
            sized = sorted(self._store.sized_layers())
            if sized:
                named = ", ".join(repr(layer) for layer in sized[:5])
                if len(sized) > 5:
                    named += f" and {len(sized) - 5} more"
                raise OSError(errno.EBUSY, f"quotas stay on: layer{'s' if len(sized) > 1 else ''} {named} "
                              f"{'have size limits' if len(sized) > 1 else 'has a size limit'}, which turning "
                              "quotas off would drop (force=True drops them)", self.home)
        with self._quota_lock:
            quota.disable(fd)
            self._quota_mode = QuotaMode.OFF
        return True

    def cleanup(self) -> None:
        """Release the driver: its fds, and the bind mount it made of home.

        Unlike the original driver's Cleanup, quotas are left on: turning
        them off would drop the limit of every sized layer on the filesystem,
        other drivers' and processes' included (see :meth:`disable_quotas`).
        A home that already was a mount point is left mounted.
        """
        self.close()

    def close(self) -> None:
        """The same as :meth:`cleanup`."""
        self._store.close()  # a no-op the second time
        if self._bind_mounted:
            # lazily: other drivers (processes) may still work below it
            if not mounts.detach(self.home):
                log.info("%s was no longer mounted", self.home)
            self._bind_mounted = False

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()
