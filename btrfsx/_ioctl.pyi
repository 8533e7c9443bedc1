"""Type stub for the compiled btrfs ioctl layer (btrfsx/_ioctl.pyx).

The .pyx holds the full docstrings; this stub only gives editors and type
checkers the signatures.  All ``fd`` arguments are open file descriptors and
every failing ioctl raises ``OSError`` (of the subclass its errno maps to).
"""

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, NamedTuple, TypeAlias, TypedDict, Unpack, final
from uuid import UUID

# A directory-entry name or a path, as os.fsencode accepts it.
_Path: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]

# ---------------------------------------------------------------- constants

SUPER_MAGIC: Final[int]
FIRST_FREE_OBJECTID: Final[int]
LAST_FREE_OBJECTID: Final[int]
FS_TREE_OBJECTID: Final[int]
ROOT_TREE_OBJECTID: Final[int]
QUOTA_TREE_OBJECTID: Final[int]
UUID_TREE_OBJECTID: Final[int]
VOL_NAME_MAX: Final[int]

SUBVOL_RDONLY: Final[int]
SEND_FLAG_NO_FILE_DATA: Final[int]
SEND_FLAG_OMIT_STREAM_HEADER: Final[int]
SEND_FLAG_OMIT_END_CMD: Final[int]
SEND_FLAG_VERSION: Final[int]
SEND_FLAG_COMPRESSED: Final[int]
ROOT_SUBVOL_RDONLY: Final[int]

INODE_ITEM_KEY: Final[int]
INODE_REF_KEY: Final[int]
INODE_EXTREF_KEY: Final[int]
XATTR_ITEM_KEY: Final[int]
DIR_ITEM_KEY: Final[int]
DIR_INDEX_KEY: Final[int]
EXTENT_DATA_KEY: Final[int]
ROOT_ITEM_KEY: Final[int]
ROOT_BACKREF_KEY: Final[int]
ROOT_REF_KEY: Final[int]
QGROUP_STATUS_KEY: Final[int]
QGROUP_INFO_KEY: Final[int]
QGROUP_LIMIT_KEY: Final[int]
QGROUP_RELATION_KEY: Final[int]
UUID_KEY_SUBVOL: Final[int]
UUID_KEY_RECEIVED_SUBVOL: Final[int]

QGROUP_LEVEL_SHIFT: Final[int]
QGROUP_LIMIT_MAX_RFER: Final[int]
QGROUP_LIMIT_MAX_EXCL: Final[int]
QGROUP_STATUS_FLAG_ON: Final[int]
QGROUP_STATUS_FLAG_RESCAN: Final[int]
QGROUP_STATUS_FLAG_INCONSISTENT: Final[int]
QGROUP_STATUS_FLAG_SIMPLE_MODE: Final[int]

RESOLVE_NO_XDEV: Final[int]
RESOLVE_NO_MAGICLINKS: Final[int]
RESOLVE_NO_SYMLINKS: Final[int]
RESOLVE_BENEATH: Final[int]
RESOLVE_IN_ROOT: Final[int]

MS_BIND: Final[int]
MS_REC: Final[int]
MS_PRIVATE: Final[int]
MNT_DETACH: Final[int]

SUBVOL_SYNC_WAIT_FOR_ONE: Final[int]
SUBVOL_SYNC_WAIT_FOR_QUEUED: Final[int]
SUBVOL_SYNC_COUNT: Final[int]
SUBVOL_SYNC_PEEK_FIRST: Final[int]
SUBVOL_SYNC_PEEK_LAST: Final[int]

# Passed as a qgroup limit, removes that limit.
QGROUP_LIMIT_NONE: Final[int]

# ---------------------------------------------------------------- results

class SubvolumeInfo(NamedTuple):
    """GET_SUBVOL_INFO of one subvolume; times are float seconds."""

    id: int
    name: str
    parent_id: int
    dir_id: int
    generation: int
    flags: int
    uuid: UUID
    parent_uuid: UUID | None
    received_uuid: UUID | None
    ctransid: int
    otransid: int
    stransid: int
    rtransid: int
    ctime: float
    otime: float
    stime: float
    rtime: float

class RootRef(NamedTuple):
    """A ROOT_REF or ROOT_BACKREF item."""

    dirid: int
    sequence: int
    name: bytes

class RootItem(NamedTuple):
    """A ROOT_ITEM; the fields from ``uuid`` on are None for a legacy root item."""

    generation: int
    root_dirid: int
    bytenr: int
    byte_limit: int
    bytes_used: int
    last_snapshot: int
    flags: int
    refs: int
    level: int
    uuid: UUID | None
    parent_uuid: UUID | None
    received_uuid: UUID | None
    ctransid: int | None
    otransid: int | None
    stransid: int | None
    rtransid: int | None
    ctime_ns: int | None
    otime_ns: int | None

class InodeItem(NamedTuple):
    """An INODE_ITEM; times are integer nanoseconds."""

    generation: int
    transid: int
    size: int
    nbytes: int
    nlink: int
    uid: int
    gid: int
    mode: int
    rdev: int
    flags: int
    sequence: int
    atime_ns: int
    ctime_ns: int
    mtime_ns: int
    otime_ns: int

class InodeRef(NamedTuple):
    """One name of an inode: the directory inode it is in, its index there, and the name."""

    parent: int
    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as at run time
    name: bytes

class FileExtent(NamedTuple):
    """The head of an EXTENT_DATA item."""

    generation: int
    ram_bytes: int
    compression: int
    type: int

class DirItem(NamedTuple):
    """One entry of a DIR_ITEM/DIR_INDEX/XATTR_ITEM."""

    location_objectid: int
    location_type: int
    location_offset: int
    transid: int
    type: int
    name: bytes
    data: bytes

class QgroupStatus(NamedTuple):
    """The quota tree's status item; ``enable_gen`` is None before kernel 6.7."""

    version: int
    generation: int
    flags: int
    rescan: int
    enable_gen: int | None

class QgroupInfo(NamedTuple):
    generation: int
    referenced: int
    referenced_compressed: int
    exclusive: int
    exclusive_compressed: int

class QgroupLimit(NamedTuple):
    flags: int
    max_referenced: int
    max_exclusive: int
    rsv_referenced: int
    rsv_exclusive: int

class FsInfo(NamedTuple):
    """FS_INFO; ``generation``/``metadata_uuid`` are None before kernel 5.6."""

    fsid: UUID
    num_devices: int
    max_id: int
    nodesize: int
    sectorsize: int
    generation: int | None
    metadata_uuid: UUID | None

# ---------------------------------------------------------------- subvolumes

def create_subvolume(
    dirfd: int,
    name: _Path,
    *,
    qgroups: Iterable[int] = (),
    max_referenced: int | None = None,
    max_exclusive: int | None = None,
) -> None:
    """Create the empty subvolume ``name`` in the directory ``dirfd``."""

def snapshot(
    src_fd: int,
    dst_dirfd: int,
    name: _Path,
    readonly: bool = False,
    *,
    qgroups: Iterable[int] = (),
    max_referenced: int | None = None,
    max_exclusive: int | None = None,
) -> None:
    """Snapshot the subvolume root open at ``src_fd`` as ``name`` in ``dst_dirfd``."""

def destroy_subvolume(dirfd: int, name: _Path) -> None:
    """Delete the subvolume ``name`` in ``dirfd`` (SNAP_DESTROY)."""

def destroy_subvolume_by_id(fd: int, subvolid: int) -> None:
    """Delete subvolume ``subvolid`` of the filesystem of ``fd`` (SNAP_DESTROY_V2)."""

def subvolume_id(fd: int) -> int:
    """The id of the subvolume that ``fd`` is in."""

def ino_lookup(fd: int, objectid: int, treeid: int = 0) -> tuple[int, bytes]:
    """INO_LOOKUP: ``(treeid, path)`` of inode ``objectid`` in subvolume ``treeid``."""

def get_subvolume_info(fd: int) -> SubvolumeInfo:
    """GET_SUBVOL_INFO of the subvolume ``fd`` is in."""

def get_subvolume_rootrefs(fd: int) -> list[tuple[int, int]]:
    """``[(subvolid, dirid), ...]`` of the subvolumes directly below the one ``fd`` is in."""

def get_subvolume_flags(fd: int) -> int:
    """SUBVOL_GETFLAGS: ``SUBVOL_RDONLY`` or 0."""

def set_subvolume_flags(fd: int, flags: int) -> None:
    """SUBVOL_SETFLAGS on the subvolume root ``fd``."""

def send(subvol_fd: int, out_fd: int, parent_root: int = 0, clone_sources: Sequence[int] = (), flags: int = 0,
         version: int = 0) -> None:
    """SEND of the read-only subvolume ``subvol_fd`` into ``out_fd``, GIL released."""

# ---------------------------------------------------------------- tree search

@final
class SearchItem:
    """One TREE_SEARCH_V2 item: its key, its block's transid and its bytes."""

    @property
    def transid(self) -> int: ...
    @property
    def objectid(self) -> int: ...
    @property
    def type(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def key(self) -> tuple[int, int, int]:
        """``(objectid, type, offset)``."""

class _SearchKey(TypedDict, total=False):
    min_objectid: int
    max_objectid: int
    min_type: int
    max_type: int
    min_offset: int
    max_offset: int
    min_transid: int
    max_transid: int
    min_item_transid: int
    item_types: Iterable[int] | None
    buf_size: int

@final
class TreeSearch(Iterator[SearchItem]):
    """Iterate over the items of tree ``tree_id`` between two keys (TREE_SEARCH_V2)."""

    def __new__(
        cls,
        fd: int,
        tree_id: int,
        *,
        min_objectid: int = 0,
        max_objectid: int = 0xFFFFFFFFFFFFFFFF,
        min_type: int = 0,
        max_type: int = 255,
        min_offset: int = 0,
        max_offset: int = 0xFFFFFFFFFFFFFFFF,
        min_transid: int = 0,
        max_transid: int = 0xFFFFFFFFFFFFFFFF,
        min_item_transid: int = 0,
        item_types: Iterable[int] | None = None,
        buf_size: int = 65536,
    ) -> TreeSearch: ...
    def __iter__(self) -> TreeSearch: ...
    def __next__(self) -> SearchItem: ...

def tree_search(fd: int, tree_id: int, **key: Unpack[_SearchKey]) -> TreeSearch:
    """``TreeSearch(fd, tree_id, **key)``."""

# ---------------------------------------------------------------- item decoders

def subvolumes_by_uuid(fd: int, uuid: UUID, received: bool = False) -> list[int]:
    """The ids of the subvolumes with this UUID (the UUID tree)."""

def subvolume_descendants(fd: int, subvolid: int) -> list[tuple[int, int, int, bytes]]:
    """Every subvolume below ``subvolid``: (id, parent id, directory inode, name), parents first."""

def search_item(fd: int, tree_id: int, objectid: int, type: int, offset: int) -> bytes | None:
    """The bytes of the item with exactly this key, or None."""

def decode_inode_item(data: bytes) -> InodeItem:
    """An INODE_ITEM (also the first part of a ROOT_ITEM)."""

def inode_item_mode(data: bytes) -> int:
    """The mode of an INODE_ITEM, without decoding the rest."""

def same_inode_item_but_atime(a: bytes, b: bytes) -> bool:
    """Whether two INODE_ITEMs are equal in every field but transid and atime."""

def decode_root_item(data: bytes) -> RootItem:
    """A ROOT_ITEM of the root tree."""

def decode_root_ref(data: bytes) -> RootRef:
    """A ROOT_REF or ROOT_BACKREF item."""

def decode_dir_items(data: bytes) -> list[DirItem]:
    """The entries packed in one DIR_ITEM, DIR_INDEX or XATTR_ITEM."""

def decode_inode_refs(data: bytes, parent: int) -> list[InodeRef]:
    """The names packed in one INODE_REF item."""

def decode_inode_extrefs(data: bytes) -> list[InodeRef]:
    """The names packed in one INODE_EXTREF item."""

def decode_file_extent(data: bytes) -> FileExtent:
    """The head of an EXTENT_DATA item."""

def decode_qgroup_status(data: bytes) -> QgroupStatus:
    """A QGROUP_STATUS item."""

def decode_qgroup_info(data: bytes) -> QgroupInfo:
    """A QGROUP_INFO item."""

def decode_qgroup_limit(data: bytes) -> QgroupLimit:
    """A QGROUP_LIMIT item."""

# ---------------------------------------------------------------- quotas

def quota_enable(fd: int, simple: bool = False) -> None:
    """Turn quotas on (full qgroups, or simple quotas on kernel 6.7+)."""

def quota_disable(fd: int) -> None:
    """Turn quotas off."""

def quota_rescan(fd: int) -> None:
    """Start a quota rescan."""

def quota_rescan_wait(fd: int) -> None:
    """Wait for a running rescan to finish."""

def quota_rescan_status(fd: int) -> tuple[bool, int]:
    """``(running, progress)`` of the quota rescan."""

def qgroup_create(fd: int, qgroupid: int) -> None:
    """Create the qgroup ``qgroupid``."""

def qgroup_destroy(fd: int, qgroupid: int) -> None:
    """Remove the qgroup ``qgroupid``."""

def qgroup_limit(
    fd: int,
    qgroupid: int,
    max_referenced: int | None = None,
    max_exclusive: int | None = None,
) -> None:
    """Set the limits of ``qgroupid``; None leaves one unchanged, QGROUP_LIMIT_NONE removes it."""

def quota_status(fd: int) -> QgroupStatus | None:
    """The quota tree's status, or None when quotas are off."""

def qgroup_usage(fd: int, qgroupid: int) -> QgroupInfo | None:
    """QgroupInfo of ``qgroupid``, or None when it has none."""

def qgroup_limits(fd: int, qgroupid: int) -> QgroupLimit | None:
    """QgroupLimit of ``qgroupid``, or None when it has none."""

# ---------------------------------------------------------------- sync and filesystem

def sync(fd: int) -> None:
    """Commit the current transaction."""

def start_sync(fd: int) -> int:
    """Start committing the current transaction; returns its transid."""

def wait_sync(fd: int, transid: int = 0) -> None:
    """Wait until transaction ``transid`` (0: the current one) is committed."""

def subvolume_sync_wait(fd: int, subvolid: int = 0, mode: int = 0) -> int:
    """SUBVOL_SYNC_WAIT (kernel 6.13); ``mode`` defaults to SUBVOL_SYNC_WAIT_FOR_ONE."""

def fs_info(fd: int) -> FsInfo:
    """FS_INFO of the filesystem ``fd`` is on."""

def fs_magic(path_or_fd: int | _Path) -> int:
    """The statfs f_type of a path or an open fd."""

def is_subvolume(path_or_fd: int | _Path, *, dir_fd: int = -100) -> bool:
    """Whether an fd or a path (relative to ``dir_fd``, default AT_FDCWD) is a subvolume root."""

def rename_noreplace(old_dirfd: int, old: _Path, new_dirfd: int, new: _Path) -> None:
    """renameat2(RENAME_NOREPLACE) of one directory entry to another; FileExistsError if taken."""

def mount(source: _Path | None, target: _Path, fstype: _Path | None = None, flags: int = 0,
          data: _Path | None = None) -> None:
    """mount(2)."""

def umount(target: _Path, flags: int = 0) -> None:
    """umount2(2)."""

def openat2(dirfd: int, path: _Path, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2) under RESOLVE_* restrictions; returns the new fd."""

def rename_exchange(old_dirfd: int, old: _Path, new_dirfd: int, new: _Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two existing entries atomically."""
