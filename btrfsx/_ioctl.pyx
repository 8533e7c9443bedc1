# cython: language_level=3
"""The btrfs ioctls, one flat function per kernel call.

Mechanism only: every function takes file descriptors (and, where the kernel
wants one, a single directory-entry name), packs the kernel's argument struct,
issues the ioctl with the GIL released, retries on EINTR, and raises
``OSError`` (of the subclass its errno maps to) naming the path involved.
There is no policy here: no choices of quota mode, no deciding what a result
means for a layer, nothing that knows the store.  Those live in the Python
modules above.  Two small loops do live here, as mechanism that costs less in
C than through Python: ``subvolume_descendants`` follows ROOT_REF items
breadth-first in one call (every nested subvolume for one remove, instead of
one tree search per level from Python), and ``openat2`` retries EAGAIN, which
the kernel returns when a concurrent rename or mount races a RESOLVE_BENEATH
lookup (a retry like EINTR's, bounded at 16, not a decision).
"""

import os
import uuid as _uuid
from collections import namedtuple

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport errno, EINTR, EOVERFLOW, ENOENT, EEXIST
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memchr, memcmp, memcpy, memset

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)

from btrfsx._uapi cimport *

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<sys/vfs.h>" nogil:
    ctypedef struct statfs_t "struct statfs":
        long f_type
    int c_statfs "statfs"(const char *path, statfs_t *buf)
    int c_fstatfs "fstatfs"(int fd, statfs_t *buf)

cdef extern from "<sys/stat.h>" nogil:
    ctypedef struct stat_t "struct stat":
        unsigned long st_ino
        unsigned int st_mode
    int c_fstat "fstat"(int fd, stat_t *buf)
    bint S_ISDIR(unsigned int mode)

cdef extern from "<fcntl.h>" nogil:
    enum:
        AT_FDCWD
        O_PATH
        O_NOFOLLOW
        O_CLOEXEC
    int c_openat "openat"(int dirfd, const char *path, int flags, ...)

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)

cdef extern from "<stdio.h>" nogil:
    enum:
        RENAME_NOREPLACE
        RENAME_EXCHANGE
    int c_renameat2 "renameat2"(int olddirfd, const char *oldpath, int newdirfd,
                                const char *newpath, unsigned int flags)

cdef extern from "<linux/openat2.h>" nogil:
    struct open_how:
        uint64_t flags
        uint64_t mode
        uint64_t resolve
    enum:
        _RESOLVE_NO_XDEV "RESOLVE_NO_XDEV"
        _RESOLVE_NO_MAGICLINKS "RESOLVE_NO_MAGICLINKS"
        _RESOLVE_NO_SYMLINKS "RESOLVE_NO_SYMLINKS"
        _RESOLVE_BENEATH "RESOLVE_BENEATH"
        _RESOLVE_IN_ROOT "RESOLVE_IN_ROOT"

cdef extern from "<sys/syscall.h>" nogil:
    long syscall(long number, ...)
    enum:
        SYS_openat2

cdef extern from "<errno.h>" nogil:
    enum:
        EAGAIN

cdef extern from "<sys/mount.h>" nogil:
    enum:
        _MS_BIND "MS_BIND"
        _MS_REC "MS_REC"
        _MS_PRIVATE "MS_PRIVATE"
        _MNT_DETACH "MNT_DETACH"
    int c_mount "mount"(const char *source, const char *target, const char *fstype,
                        unsigned long flags, const void *data)
    int c_umount2 "umount2"(const char *target, int flags)


# ---------------------------------------------------------------- constants
# Mirrors of the kernel's names, for callers above this module.

SUPER_MAGIC = <uint32_t>BTRFS_SUPER_MAGIC
FIRST_FREE_OBJECTID = BTRFS_FIRST_FREE_OBJECTID
LAST_FREE_OBJECTID = <uint64_t>BTRFS_LAST_FREE_OBJECTID
FS_TREE_OBJECTID = BTRFS_FS_TREE_OBJECTID
ROOT_TREE_OBJECTID = BTRFS_ROOT_TREE_OBJECTID
QUOTA_TREE_OBJECTID = BTRFS_QUOTA_TREE_OBJECTID
UUID_TREE_OBJECTID = BTRFS_UUID_TREE_OBJECTID
VOL_NAME_MAX = BTRFS_VOL_NAME_MAX

SUBVOL_RDONLY = BTRFS_SUBVOL_RDONLY
SEND_FLAG_NO_FILE_DATA = BTRFS_SEND_FLAG_NO_FILE_DATA
SEND_FLAG_OMIT_STREAM_HEADER = BTRFS_SEND_FLAG_OMIT_STREAM_HEADER
SEND_FLAG_OMIT_END_CMD = BTRFS_SEND_FLAG_OMIT_END_CMD
SEND_FLAG_VERSION = BTRFS_SEND_FLAG_VERSION
SEND_FLAG_COMPRESSED = BTRFS_SEND_FLAG_COMPRESSED
ROOT_SUBVOL_RDONLY = BTRFS_ROOT_SUBVOL_RDONLY

INODE_ITEM_KEY = BTRFS_INODE_ITEM_KEY
INODE_REF_KEY = BTRFS_INODE_REF_KEY
INODE_EXTREF_KEY = BTRFS_INODE_EXTREF_KEY
XATTR_ITEM_KEY = BTRFS_XATTR_ITEM_KEY
DIR_ITEM_KEY = BTRFS_DIR_ITEM_KEY
DIR_INDEX_KEY = BTRFS_DIR_INDEX_KEY
EXTENT_DATA_KEY = BTRFS_EXTENT_DATA_KEY
ROOT_ITEM_KEY = BTRFS_ROOT_ITEM_KEY
ROOT_BACKREF_KEY = BTRFS_ROOT_BACKREF_KEY
ROOT_REF_KEY = BTRFS_ROOT_REF_KEY
QGROUP_STATUS_KEY = BTRFS_QGROUP_STATUS_KEY
QGROUP_INFO_KEY = BTRFS_QGROUP_INFO_KEY
QGROUP_LIMIT_KEY = BTRFS_QGROUP_LIMIT_KEY
QGROUP_RELATION_KEY = BTRFS_QGROUP_RELATION_KEY
UUID_KEY_SUBVOL = BTRFS_UUID_KEY_SUBVOL
UUID_KEY_RECEIVED_SUBVOL = BTRFS_UUID_KEY_RECEIVED_SUBVOL

QGROUP_LEVEL_SHIFT = BTRFS_QGROUP_LEVEL_SHIFT
QGROUP_LIMIT_MAX_RFER = BTRFS_QGROUP_LIMIT_MAX_RFER
QGROUP_LIMIT_MAX_EXCL = BTRFS_QGROUP_LIMIT_MAX_EXCL
QGROUP_STATUS_FLAG_ON = BTRFS_QGROUP_STATUS_FLAG_ON
QGROUP_STATUS_FLAG_RESCAN = BTRFS_QGROUP_STATUS_FLAG_RESCAN
QGROUP_STATUS_FLAG_INCONSISTENT = BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT
QGROUP_STATUS_FLAG_SIMPLE_MODE = BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE

RESOLVE_NO_XDEV = _RESOLVE_NO_XDEV
RESOLVE_NO_MAGICLINKS = _RESOLVE_NO_MAGICLINKS
RESOLVE_NO_SYMLINKS = _RESOLVE_NO_SYMLINKS
RESOLVE_BENEATH = _RESOLVE_BENEATH
RESOLVE_IN_ROOT = _RESOLVE_IN_ROOT

MS_BIND = _MS_BIND
MS_REC = _MS_REC
MS_PRIVATE = _MS_PRIVATE
MNT_DETACH = _MNT_DETACH

SUBVOL_SYNC_WAIT_FOR_ONE = BTRFS_SUBVOL_SYNC_WAIT_FOR_ONE
SUBVOL_SYNC_WAIT_FOR_QUEUED = BTRFS_SUBVOL_SYNC_WAIT_FOR_QUEUED
SUBVOL_SYNC_COUNT = BTRFS_SUBVOL_SYNC_COUNT
SUBVOL_SYNC_PEEK_FIRST = BTRFS_SUBVOL_SYNC_PEEK_FIRST
SUBVOL_SYNC_PEEK_LAST = BTRFS_SUBVOL_SYNC_PEEK_LAST

#: Passed as a qgroup limit, removes that limit (the kernel's CLEAR_VALUE).
QGROUP_LIMIT_NONE = <uint64_t>0xFFFFFFFFFFFFFFFF

cdef uint64_t U64_MAX = 0xFFFFFFFFFFFFFFFF
cdef size_t DEFAULT_SEARCH_BUF = 64 * 1024


# ---------------------------------------------------------------- results

def _record(name, fields):
    # module= keeps them picklable: inside a compiled module namedtuple
    # cannot find its caller's __name__.
    return namedtuple(name, fields, module=__name__)


SubvolumeInfo = _record("SubvolumeInfo", [
    "id", "name", "parent_id", "dir_id", "generation", "flags",
    "uuid", "parent_uuid", "received_uuid",
    "ctransid", "otransid", "stransid", "rtransid",
    "ctime", "otime", "stime", "rtime",
])
SubvolumeInfo.__doc__ = """GET_SUBVOL_INFO of one subvolume.  Times are float seconds;
``parent_uuid`` and ``received_uuid`` are None when all zero."""

RootRef = _record("RootRef", ["dirid", "sequence", "name"])
RootRef.__doc__ = "A ROOT_REF or ROOT_BACKREF item: the directory inode and entry name of a subvolume in its parent."

RootItem = _record("RootItem", [
    "generation", "root_dirid", "bytenr", "byte_limit", "bytes_used", "last_snapshot",
    "flags", "refs", "level", "uuid", "parent_uuid", "received_uuid",
    "ctransid", "otransid", "stransid", "rtransid", "ctime_ns", "otime_ns",
])
RootItem.__doc__ = """A ROOT_ITEM.  The uuid fields and the transids after them are None
for a legacy (pre-3.x) root item, which lacks them."""

InodeItem = _record("InodeItem", [
    "generation", "transid", "size", "nbytes", "nlink", "uid", "gid", "mode",
    "rdev", "flags", "sequence", "atime_ns", "ctime_ns", "mtime_ns", "otime_ns",
])

InodeRef = _record("InodeRef", ["parent", "index", "name"])
InodeRef.__doc__ = """One name of an inode: the directory inode it is in, its index there, and the name."""

FileExtent = _record("FileExtent", ["generation", "ram_bytes", "compression", "type"])
FileExtent.__doc__ = """The head of an EXTENT_DATA item: ``generation`` is the transaction that wrote the extent."""

DirItem = _record("DirItem", [
    "location_objectid", "location_type", "location_offset", "transid", "type", "name", "data",
])
DirItem.__doc__ = "One entry of a DIR_ITEM/DIR_INDEX/XATTR_ITEM; ``type`` is the kernel's BTRFS_FT_* file type."

QgroupStatus = _record("QgroupStatus", ["version", "generation", "flags", "rescan", "enable_gen"])
QgroupStatus.__doc__ = "The quota tree's status item; ``enable_gen`` is None before kernel 6.7's simple quotas."
QgroupInfo = _record("QgroupInfo", ["generation", "referenced", "referenced_compressed",
                                       "exclusive", "exclusive_compressed"])
QgroupLimit = _record("QgroupLimit", ["flags", "max_referenced", "max_exclusive",
                                         "rsv_referenced", "rsv_exclusive"])
FsInfo = _record("FsInfo", ["fsid", "num_devices", "max_id", "nodesize", "sectorsize",
                               "generation", "metadata_uuid"])


# ---------------------------------------------------------------- errors

cdef object _fd_path(int fd):
    """The path of an open fd, for error messages only (never on the success path)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"


cdef object _raise_fd(int err, int fd, object name=None):
    path = _fd_path(fd)
    if name is not None:
        path = os.path.join(path, os.fsdecode(name))
    raise OSError(err, os.strerror(err), path)


cdef inline int _ioctl(int fd, unsigned long request, void *arg) noexcept nogil:
    """ioctl() retried on EINTR; returns the result, or -errno."""
    cdef int ret
    while True:
        ret = ioctl(fd, request, arg)
        if ret >= 0:
            return ret
        if errno != EINTR:
            return -errno


cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object)


cdef bytes _entry_name(object name):
    """A name that is exactly one directory entry, as bytes, or ValueError."""
    cdef bytes b
    cdef const char *p
    cdef Py_ssize_t n
    if type(name) is bytes:
        b = <bytes>name
    elif type(name) is str:
        b = PyUnicode_EncodeFSDefault(name)  # os.fsencode without the Python call
    else:
        b = os.fsencode(name)
    p = PyBytes_AS_STRING(b)
    n = PyBytes_GET_SIZE(b)
    if (n == 0 or n > BTRFS_VOL_NAME_MAX or memchr(p, 47, n) != NULL or memchr(p, 0, n) != NULL
            or (p[0] == 46 and (n == 1 or (n == 2 and p[1] == 46)))):
        raise ValueError(
            f"{name!r} is not a valid subvolume name: expected one directory entry "
            f"of 1 to {BTRFS_VOL_NAME_MAX} bytes, not '.' or '..', without '/' or NUL")
    return b


cdef object _uuid_or_none(const uint8_t *raw):
    cdef int i
    for i in range(16):
        if raw[i]:
            return _uuid.UUID(bytes=PyBytes_FromStringAndSize(<const char *>raw, 16))
    return None


cdef inline double _ts(btrfs_ioctl_timespec t) noexcept:
    return <double><int64_t>t.sec + <double>t.nsec / 1e9


cdef inline object _disk_ts_ns(const btrfs_timespec *t):
    return <object><int64_t>le64toh(t.sec) * 1000000000 + le32toh(t.nsec)


cdef btrfs_qgroup_inherit *_make_inherit(object qgroups, object max_referenced,
                                         object max_exclusive, size_t *size) except NULL:
    """A malloc'd qgroup_inherit: add to ``qgroups``, optionally with limits."""
    cdef list ids = [<uint64_t>q for q in qgroups]
    cdef size_t n = len(ids)
    cdef size_t i
    # convert (and fail) before anything is allocated
    cdef uint64_t rfer = max_referenced if max_referenced is not None else 0
    cdef uint64_t excl = max_exclusive if max_exclusive is not None else 0
    size[0] = sizeof(btrfs_qgroup_inherit) + n * sizeof(uint64_t)
    cdef btrfs_qgroup_inherit *inh = <btrfs_qgroup_inherit *>malloc(size[0])
    if inh == NULL:
        raise MemoryError()
    memset(inh, 0, size[0])
    inh.num_qgroups = n
    for i in range(n):
        inh.qgroups[i] = ids[i]
    if max_referenced is not None:
        inh.flags |= BTRFS_QGROUP_INHERIT_SET_LIMITS
        inh.lim.flags |= BTRFS_QGROUP_LIMIT_MAX_RFER
        inh.lim.max_rfer = rfer
    if max_exclusive is not None:
        inh.flags |= BTRFS_QGROUP_INHERIT_SET_LIMITS
        inh.lim.flags |= BTRFS_QGROUP_LIMIT_MAX_EXCL
        inh.lim.max_excl = excl
    return inh


# ---------------------------------------------------------------- subvolumes

def create_subvolume(int dirfd, name, *, qgroups=(), max_referenced=None, max_exclusive=None):
    """Create the empty subvolume ``name`` in the directory ``dirfd``.

    ``qgroups`` adds its new qgroup to those (higher-level) qgroups;
    ``max_referenced``/``max_exclusive`` set the new qgroup's limits in the
    same transaction (with quotas enabled).
    """
    cdef bytes b = _entry_name(name)
    cdef btrfs_ioctl_vol_args args
    cdef btrfs_ioctl_vol_args_v2 args2
    cdef btrfs_qgroup_inherit *inh = NULL
    cdef size_t inh_size = 0
    cdef int ret
    if not qgroups and max_referenced is None and max_exclusive is None:
        memset(&args, 0, sizeof(args))
        memcpy(args.name, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        with nogil:
            ret = _ioctl(dirfd, BTRFS_IOC_SUBVOL_CREATE, &args)
    else:
        inh = _make_inherit(qgroups, max_referenced, max_exclusive, &inh_size)
        memset(&args2, 0, sizeof(args2))
        args2.flags = BTRFS_SUBVOL_QGROUP_INHERIT
        args2.size = inh_size
        args2.qgroup_inherit = inh
        memcpy(args2.name, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        with nogil:
            ret = _ioctl(dirfd, BTRFS_IOC_SUBVOL_CREATE_V2, &args2)
        free(inh)
    if ret < 0:
        _raise_fd(-ret, dirfd, b)


def snapshot(int src_fd, int dst_dirfd, name, bint readonly=False, *, qgroups=(),
             max_referenced=None, max_exclusive=None):
    """Snapshot the subvolume open at ``src_fd`` as ``name`` in ``dst_dirfd``.

    ``src_fd`` must be the subvolume's root directory.  Nested subvolumes are
    not included (they appear as empty directories in the snapshot).
    """
    cdef bytes b = _entry_name(name)
    cdef btrfs_ioctl_vol_args_v2 args
    cdef btrfs_qgroup_inherit *inh = NULL
    cdef size_t inh_size = 0
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.fd = src_fd
    if readonly:
        args.flags |= BTRFS_SUBVOL_RDONLY
    if qgroups or max_referenced is not None or max_exclusive is not None:
        inh = _make_inherit(qgroups, max_referenced, max_exclusive, &inh_size)
        args.flags |= BTRFS_SUBVOL_QGROUP_INHERIT
        args.size = inh_size
        args.qgroup_inherit = inh
    memcpy(args.name, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    with nogil:
        ret = _ioctl(dst_dirfd, BTRFS_IOC_SNAP_CREATE_V2, &args)
    free(inh)
    if ret < 0:
        _raise_fd(-ret, dst_dirfd, b)


def destroy_subvolume(int dirfd, name):
    """Delete the subvolume ``name`` in ``dirfd`` (SNAP_DESTROY).

    The kernel refuses with ENOTEMPTY while subvolumes are nested in it, and
    drops its data asynchronously (the cleaner thread) after returning.
    """
    cdef bytes b = _entry_name(name)
    cdef btrfs_ioctl_vol_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    memcpy(args.name, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    with nogil:
        ret = _ioctl(dirfd, BTRFS_IOC_SNAP_DESTROY, &args)
    if ret < 0:
        _raise_fd(-ret, dirfd, b)


def destroy_subvolume_by_id(int fd, uint64_t subvolid):
    """Delete subvolume ``subvolid`` of the filesystem ``fd`` is on (SNAP_DESTROY_V2, kernel 5.7)."""
    cdef btrfs_ioctl_vol_args_v2 args
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.flags = BTRFS_SUBVOL_SPEC_BY_ID
    args.subvolid = subvolid
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_SNAP_DESTROY_V2, &args)
    if ret < 0:
        _raise_fd(-ret, fd, f"<subvolume {subvolid}>")


def subvolume_id(int fd):
    """The id of the subvolume that ``fd`` is in (INO_LOOKUP of its root)."""
    cdef btrfs_ioctl_ino_lookup_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.objectid = BTRFS_FIRST_FREE_OBJECTID
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_INO_LOOKUP, &args)
    if ret < 0:
        _raise_fd(-ret, fd)
    return args.treeid


def ino_lookup(int fd, uint64_t objectid, uint64_t treeid=0):
    """INO_LOOKUP: ``(treeid, path)`` of inode ``objectid`` in subvolume ``treeid``.

    ``treeid`` 0 means the subvolume ``fd`` is in.  ``path`` is bytes, relative
    to that subvolume's root, with the trailing ``/`` the kernel puts after
    every component; it is empty for the root itself.
    """
    cdef btrfs_ioctl_ino_lookup_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.treeid = treeid
    args.objectid = objectid
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_INO_LOOKUP, &args)
    if ret < 0:
        _raise_fd(-ret, fd)
    return args.treeid, PyBytes_FromStringAndSize(
        args.name, strnlen(args.name, BTRFS_INO_LOOKUP_PATH_MAX))


def get_subvolume_info(int fd):
    """GET_SUBVOL_INFO (kernel 4.18, unprivileged) of the subvolume ``fd`` is in."""
    cdef btrfs_ioctl_get_subvol_info_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, &args)
    if ret < 0:
        _raise_fd(-ret, fd)
    return SubvolumeInfo(
        args.treeid,
        os.fsdecode(PyBytes_FromStringAndSize(args.name, strnlen(args.name, BTRFS_VOL_NAME_MAX + 1))),
        args.parent_id, args.dirid, args.generation, args.flags,
        _uuid.UUID(bytes=PyBytes_FromStringAndSize(<const char *>args.uuid, 16)),
        _uuid_or_none(args.parent_uuid), _uuid_or_none(args.received_uuid),
        args.ctransid, args.otransid, args.stransid, args.rtransid,
        _ts(args.ctime), _ts(args.otime), _ts(args.stime), _ts(args.rtime),
    )


def get_subvolume_rootrefs(int fd):
    """The subvolumes directly below the one ``fd`` is in, as ``[(subvolid, dirid), ...]``.

    GET_SUBVOL_ROOTREF (kernel 4.18) returns at most 255 per call and
    EOVERFLOW when there are more; this calls it until the list is complete.
    ``dirid`` is the inode of the directory holding each one.
    """
    cdef btrfs_ioctl_get_subvol_rootref_args args
    cdef int ret, i
    cdef list out = []
    memset(&args, 0, sizeof(args))
    while True:
        with nogil:
            ret = _ioctl(fd, BTRFS_IOC_GET_SUBVOL_ROOTREF, &args)
        if ret < 0 and ret != -EOVERFLOW:
            _raise_fd(-ret, fd)
        for i in range(args.num_items):
            out.append((args.rootref[i].treeid, args.rootref[i].dirid))
        if ret != -EOVERFLOW:
            return out
        # the kernel left min_treeid at the next id to look at


def get_subvolume_flags(int fd):
    """SUBVOL_GETFLAGS: ``SUBVOL_RDONLY`` or 0 for the subvolume root ``fd``."""
    cdef uint64_t flags = 0
    cdef int ret
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, &flags)
    if ret < 0:
        _raise_fd(-ret, fd)
    return flags


def set_subvolume_flags(int fd, uint64_t flags):
    """SUBVOL_SETFLAGS on the subvolume root ``fd`` (only ``SUBVOL_RDONLY`` is settable)."""
    cdef int ret
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, &flags)
    if ret < 0:
        _raise_fd(-ret, fd)


def send(int subvol_fd, int out_fd, uint64_t parent_root=0, clone_sources=(), uint64_t flags=0,
         uint32_t version=0):
    """SEND: write a send stream of the read-only subvolume ``subvol_fd`` to
    ``out_fd`` (a pipe or file), incremental against read-only subvolume id
    ``parent_root`` when not 0, cloning extents from the subvolume ids
    ``clone_sources``.  ``version`` is used with ``SEND_FLAG_VERSION`` (2:
    kernel 5.19; ``SEND_FLAG_COMPRESSED`` writes compressed extents as they
    are).  Returns when the whole stream is written; the GIL is released
    meanwhile, so another thread can read the pipe.  EINTR is raised, not
    retried."""
    cdef btrfs_ioctl_send_args args
    cdef Py_ssize_t n = len(clone_sources), i
    cdef uint64_t *ids = NULL
    cdef int ret
    memset(&args, 0, sizeof(args))
    if n:
        ids = <uint64_t *>malloc(n * sizeof(uint64_t))
        if ids == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            ids[i] = clone_sources[i]
        args.send_fd = out_fd
        args.clone_sources_count = n
        args.clone_sources = ids
        args.parent_root = parent_root
        args.flags = flags
        args.version = version
        # Not retried on EINTR: the kernel has written part of a stream by
        # then, and a second one after it would be a corrupt stream.
        with nogil:
            ret = ioctl(subvol_fd, BTRFS_IOC_SEND, &args)
            if ret < 0:
                ret = -errno
    finally:
        free(ids)
    if ret < 0:
        _raise_fd(-ret, subvol_fd)


# ---------------------------------------------------------------- tree search

@cython.final
cdef class SearchItem:
    """One item returned by TREE_SEARCH_V2: its key, the transid of the
    metadata block that holds it, and the item's bytes."""
    cdef readonly uint64_t transid
    cdef readonly uint64_t objectid
    cdef readonly uint32_t type
    cdef readonly uint64_t offset
    cdef readonly bytes data

    def __repr__(self):
        return (f"SearchItem(objectid={self.objectid}, type={self.type}, offset={self.offset}, "
                f"transid={self.transid}, len={len(self.data or b'')})")

    @property
    def key(self):
        return (self.objectid, self.type, self.offset)


@cython.final
cdef class TreeSearch:
    """Iterate over the items of tree ``tree_id`` between two keys (TREE_SEARCH_V2, root only).

    Keys compare as (objectid, type, offset) triples: every item with
    ``(min_objectid, min_type, min_offset) <= key <= (max_objectid, max_type,
    max_offset)`` is returned, so a range with ``min_objectid != max_objectid``
    can yield items of any type in between; filter by ``item.type``.
    ``min_transid``/``max_transid`` skip whole metadata blocks by the
    generation they were written in, which is coarser than the items' own
    generations.  ``min_item_transid`` filters by those, here, without
    making a Python object of every item skipped: only INODE_ITEMs (by their
    transid), DIR_ITEMs, DIR_INDEXes and XATTR_ITEMs (by any entry's
    transid) and EXTENT_DATA items (by their generation) written in that
    transaction or later are returned, and no item of another type.
    ``item_types``, an iterable of key types, keeps only items of those
    types (also in C; the kernel still copies every item of the key range).
    Memory stays at one buffer of
    ``buf_size`` bytes whatever the size of the tree.  ``tree_id`` 0 is the
    subvolume ``fd`` is in.
    """
    cdef int fd
    cdef btrfs_ioctl_search_args_v2 *args
    cdef size_t buf_size
    cdef uint64_t max_objectid, max_offset
    cdef uint32_t max_type
    cdef uint64_t min_item_transid
    cdef bint filter_types
    cdef uint64_t type_mask[4]   # bit t set: keep items of key type t
    cdef uint32_t remaining      # items left in the buffer
    cdef size_t pos              # offset of the next header in the buffer
    cdef bint done

    def __cinit__(self, int fd, uint64_t tree_id, *, uint64_t min_objectid=0,
                  uint64_t max_objectid=0xFFFFFFFFFFFFFFFF, uint32_t min_type=0,
                  uint32_t max_type=255, uint64_t min_offset=0,
                  uint64_t max_offset=0xFFFFFFFFFFFFFFFF, uint64_t min_transid=0,
                  uint64_t max_transid=0xFFFFFFFFFFFFFFFF, uint64_t min_item_transid=0,
                  item_types=None, size_t buf_size=DEFAULT_SEARCH_BUF):
        if buf_size < 4096:
            raise ValueError(f"buf_size must be at least 4096 bytes, not {buf_size}")
        self.fd = fd
        self.buf_size = buf_size
        self.args = <btrfs_ioctl_search_args_v2 *>malloc(sizeof(btrfs_ioctl_search_args_v2) + buf_size)
        if self.args == NULL:
            raise MemoryError()
        memset(self.args, 0, sizeof(btrfs_ioctl_search_args_v2))
        self.args.key.tree_id = tree_id
        self.args.key.min_objectid = min_objectid
        self.args.key.max_objectid = max_objectid
        self.args.key.min_type = min_type
        self.args.key.max_type = max_type
        self.args.key.min_offset = min_offset
        self.args.key.max_offset = max_offset
        self.args.key.min_transid = min_transid
        self.args.key.max_transid = max_transid
        self.max_objectid = max_objectid
        self.max_type = max_type
        self.max_offset = max_offset
        self.min_item_transid = min_item_transid
        memset(self.type_mask, 0, sizeof(self.type_mask))
        self.filter_types = item_types is not None
        if item_types is not None:
            for t in item_types:
                if not 0 <= t <= 255:
                    raise ValueError(f"item_types holds {t!r}: key types are 0 to 255")
                self.type_mask[t >> 6] |= (<uint64_t>1) << (t & 63)
        self.remaining = 0
        self.pos = 0
        self.done = False

    def __dealloc__(self):
        free(self.args)

    def __iter__(self):
        return self

    cdef int _fill(self) except -1:
        """Run the next search; sets ``done`` when the range is exhausted."""
        cdef int ret
        self.args.key.nr_items = 0xFFFFFFFF
        self.args.buf_size = self.buf_size
        with nogil:
            ret = _ioctl(self.fd, BTRFS_IOC_TREE_SEARCH_V2, self.args)
        if ret == -EOVERFLOW:
            # A single item larger than the buffer; the kernel put the size it
            # needs in buf_size.  Items are at most a node (64 KiB), so this
            # happens only for a caller's small buffer.
            self._grow(self.args.buf_size)
            return self._fill()
        if ret < 0:
            _raise_fd(-ret, self.fd)
        self.remaining = self.args.key.nr_items
        self.pos = 0
        if self.remaining == 0:
            self.done = True
        return 0

    cdef int _grow(self, size_t needed) except -1:
        cdef btrfs_ioctl_search_args_v2 *bigger = <btrfs_ioctl_search_args_v2 *>malloc(
            sizeof(btrfs_ioctl_search_args_v2) + needed)
        if bigger == NULL:
            raise MemoryError()
        memcpy(bigger, self.args, sizeof(btrfs_ioctl_search_args_v2))
        free(self.args)
        self.args = bigger
        self.buf_size = needed
        return 0

    cdef bint _advance(self, uint64_t objectid, uint32_t type, uint64_t offset) noexcept:
        """Set the search start just past ``key``, carrying across
        (objectid, type, offset); False when nothing can follow it."""
        cdef btrfs_ioctl_search_key *k = &self.args.key
        if offset < U64_MAX:
            k.min_objectid, k.min_type, k.min_offset = objectid, type, offset + 1
        elif type < 255:
            k.min_objectid, k.min_type, k.min_offset = objectid, type + 1, 0
        elif objectid < U64_MAX:
            k.min_objectid, k.min_type, k.min_offset = objectid + 1, 0, 0
        else:
            return False
        # stop once the start passes the end key
        if k.min_objectid != self.max_objectid:
            return k.min_objectid < self.max_objectid
        if k.min_type != self.max_type:
            return k.min_type < self.max_type
        return k.min_offset <= self.max_offset

    def __next__(self):
        cdef btrfs_ioctl_search_header *sh
        cdef const char *data
        cdef SearchItem item
        while True:
            if self.remaining == 0:
                if self.done:
                    raise StopIteration
                self._fill()
                if self.done:
                    raise StopIteration
            sh = <btrfs_ioctl_search_header *>(self.args.buf + self.pos)
            data = <const char *>(self.args.buf + self.pos + sizeof(btrfs_ioctl_search_header))
            self.pos += sizeof(btrfs_ioctl_search_header) + sh.len
            self.remaining -= 1
            if self.remaining == 0 and not self._advance(sh.objectid, sh.type, sh.offset):
                self.done = True
            if self.filter_types and not (self.type_mask[(sh.type >> 6) & 3] >> (sh.type & 63)) & 1:
                continue
            if self.min_item_transid and not _written_since(sh.type, data, sh.len, self.min_item_transid):
                continue
            item = SearchItem.__new__(SearchItem)
            item.transid = sh.transid
            item.objectid = sh.objectid
            item.type = sh.type
            item.offset = sh.offset
            item.data = PyBytes_FromStringAndSize(data, sh.len)
            return item


cdef bint _written_since(uint32_t type, const char *data, size_t size, uint64_t transid) noexcept nogil:
    """Whether the item's own transid (or any of its entries') is at least ``transid``."""
    cdef size_t pos = 0
    cdef const btrfs_dir_item *d
    if type == BTRFS_INODE_ITEM_KEY:
        return size >= sizeof(btrfs_inode_item) and le64toh((<const btrfs_inode_item *>data).transid) >= transid
    if type == BTRFS_EXTENT_DATA_KEY:
        return (size >= BTRFS_FILE_EXTENT_INLINE_DATA_START
                and le64toh((<const btrfs_file_extent_item *>data).generation) >= transid)
    if type == BTRFS_DIR_ITEM_KEY or type == BTRFS_DIR_INDEX_KEY or type == BTRFS_XATTR_ITEM_KEY:
        while pos < size and size - pos >= sizeof(btrfs_dir_item):
            d = <const btrfs_dir_item *>(data + pos)
            if le64toh(d.transid) >= transid:
                return True
            pos += sizeof(btrfs_dir_item) + le16toh(d.name_len) + le16toh(d.data_len)
        return False
    return False


def tree_search(int fd, uint64_t tree_id, **key):
    """``TreeSearch(fd, tree_id, **key)``: a streaming iterator of SearchItem."""
    return TreeSearch(fd, tree_id, **key)


cdef enum:
    SEARCH_ONE_BUF = 4096


cdef inline void _key_range(btrfs_ioctl_search_args_v2 *args, size_t buf_size, uint64_t tree_id,
                            uint64_t objectid, uint32_t type, uint64_t min_offset, uint64_t max_offset,
                            uint32_t nr_items) noexcept nogil:
    """Reset ``args`` for a TREE_SEARCH_V2 of the items of one (objectid,
    type) whose offsets are in ``[min_offset, max_offset]``, any transid."""
    memset(args, 0, sizeof(btrfs_ioctl_search_args_v2))
    args.key.tree_id = tree_id
    args.key.min_objectid = objectid
    args.key.max_objectid = objectid
    args.key.min_type = type
    args.key.max_type = type
    args.key.min_offset = min_offset
    args.key.max_offset = max_offset
    args.key.max_transid = U64_MAX
    args.key.nr_items = nr_items
    args.buf_size = buf_size


cdef object _search_one(int fd, uint64_t tree_id, uint64_t objectid, uint32_t type, uint64_t offset):
    """The data of the item with exactly this key, or None.

    One TREE_SEARCH_V2 asking for one item: the kernel's copy loop goes on
    through the rest of the leaf until the buffer or ``nr_items`` is full,
    testing every later key against the range (Linux 6.18), so without the
    limit a lookup in a tree of small items (the UUID and quota trees) costs
    a walk of a whole leaf, hundreds of items once the tree has filled one."""
    cdef btrfs_ioctl_search_args_v2 *args = <btrfs_ioctl_search_args_v2 *>malloc(
        sizeof(btrfs_ioctl_search_args_v2) + SEARCH_ONE_BUF)
    cdef btrfs_ioctl_search_header *sh
    cdef int ret
    cdef size_t need = SEARCH_ONE_BUF
    if args == NULL:
        raise MemoryError()
    try:
        while True:
            _key_range(args, need, tree_id, objectid, type, offset, offset, 1)
            with nogil:
                ret = _ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, args)
            if ret == -EOVERFLOW and args.buf_size > need:
                # an item larger than the buffer: the kernel said how large
                need = args.buf_size
                free(args)
                args = <btrfs_ioctl_search_args_v2 *>malloc(sizeof(btrfs_ioctl_search_args_v2) + need)
                if args == NULL:
                    raise MemoryError()
                continue
            if ret < 0:
                _raise_fd(-ret, fd)
            if args.key.nr_items == 0:
                return None
            sh = <btrfs_ioctl_search_header *>args.buf
            return PyBytes_FromStringAndSize(<const char *>(args.buf + sizeof(btrfs_ioctl_search_header)), sh.len)
    finally:
        free(args)


cdef enum:
    ROOT_REF_BUF = 16384


cdef int _root_refs(int fd, uint64_t subvolid, btrfs_ioctl_search_args_v2 *args, list out) except -1:
    """Append the ROOT_REF items of subvolume ``subvolid`` to ``out`` as
    ``(child id, subvolid, dirid, name)``, in id order.  ``args`` has
    ROOT_REF_BUF bytes of buffer."""
    cdef btrfs_ioctl_search_header *sh
    cdef const btrfs_root_ref *ref
    cdef uint64_t min_offset = 0, last = 0
    cdef uint32_t i, n
    cdef size_t pos
    cdef int ret
    while True:
        _key_range(args, ROOT_REF_BUF, BTRFS_ROOT_TREE_OBJECTID, subvolid, BTRFS_ROOT_REF_KEY, min_offset,
                   U64_MAX, 0xFFFFFFFF)
        with nogil:
            ret = _ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, args)
        if ret < 0:
            _raise_fd(-ret, fd)
        n = args.key.nr_items
        if n == 0:
            return 0
        pos = 0
        for i in range(n):
            sh = <btrfs_ioctl_search_header *>(args.buf + pos)
            pos += sizeof(btrfs_ioctl_search_header)
            if sh.len < sizeof(btrfs_root_ref):
                raise ValueError(f"ROOT_REF item of subvolume {sh.objectid} too short: {sh.len} bytes")
            ref = <const btrfs_root_ref *>(args.buf + pos)
            if sizeof(btrfs_root_ref) + le16toh(ref.name_len) > sh.len:
                raise ValueError(f"ROOT_REF item of subvolume {sh.objectid} overruns its {sh.len} bytes")
            out.append((sh.offset, subvolid, le64toh(ref.dirid),
                        PyBytes_FromStringAndSize(<const char *>(ref + 1), le16toh(ref.name_len))))
            pos += sh.len
            last = sh.offset
        if last == U64_MAX:
            return 0
        min_offset = last + 1


def subvolume_descendants(int fd, uint64_t subvolid):
    """Every subvolume below subvolume ``subvolid``, at any depth, parents
    before their children: ``(id, parent id, directory inode, name)`` tuples
    from the ROOT_REF items of the root tree (TREE_SEARCH_V2, root only): the
    searches a ``TreeSearch`` of each subvolume's ROOT_REF range makes, in
    one call, without an object per item on the way."""
    cdef btrfs_ioctl_search_args_v2 *args = <btrfs_ioctl_search_args_v2 *>malloc(
        sizeof(btrfs_ioctl_search_args_v2) + ROOT_REF_BUF)
    cdef list out = []
    cdef list frontier = [subvolid]
    cdef Py_ssize_t start
    if args == NULL:
        raise MemoryError()
    try:
        while frontier:
            start = len(out)
            _root_refs(fd, frontier.pop(), args, out)
            frontier.extend([t[0] for t in out[start:]])
    finally:
        free(args)
    return out


def subvolumes_by_uuid(int fd, uuid, bint received=False):
    """The ids of the subvolumes whose UUID (or, with ``received``, received
    UUID) is ``uuid`` (a uuid.UUID), from the UUID tree (TREE_SEARCH_V2,
    root only): one or none, in practice.  The tree keys a UUID as
    (its first 8 bytes, UUID_KEY_*, its last 8 bytes), each read little-endian."""
    cdef bytes raw = uuid.bytes
    cdef bytes data = _search_one(fd, BTRFS_UUID_TREE_OBJECTID, int.from_bytes(raw[:8], "little"),
                                  BTRFS_UUID_KEY_RECEIVED_SUBVOL if received else BTRFS_UUID_KEY_SUBVOL,
                                  int.from_bytes(raw[8:], "little"))
    if data is None:
        return []
    if len(data) % 8:
        raise ValueError(f"UUID item of {uuid} is {len(data)} bytes, not a whole number of subvolume ids")
    return [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data), 8)]


def search_item(int fd, uint64_t tree_id, uint64_t objectid, uint32_t type, uint64_t offset):
    """The bytes of the item with exactly this key in tree ``tree_id`` (0: the
    subvolume ``fd`` is in), or None when there is none (TREE_SEARCH_V2, root only)."""
    return _search_one(fd, tree_id, objectid, type, offset)


# ---------------------------------------------------------------- item decoders

cdef inline const char *_need(bytes data, size_t size, str what) except NULL:
    if <size_t>PyBytes_GET_SIZE(data) < size:
        raise ValueError(f"{what} item too short: {PyBytes_GET_SIZE(data)} bytes, expected at least {size}")
    return PyBytes_AS_STRING(data)


def decode_inode_item(bytes data not None):
    """An INODE_ITEM (also the first part of a ROOT_ITEM)."""
    cdef const btrfs_inode_item *i = <const btrfs_inode_item *>_need(data, sizeof(btrfs_inode_item), "INODE_ITEM")
    return InodeItem(
        le64toh(i.generation), le64toh(i.transid), le64toh(i.size), le64toh(i.nbytes),
        le32toh(i.nlink), le32toh(i.uid), le32toh(i.gid), le32toh(i.mode),
        le64toh(i.rdev), le64toh(i.flags), le64toh(i.sequence),
        _disk_ts_ns(&i.atime), _disk_ts_ns(&i.ctime), _disk_ts_ns(&i.mtime), _disk_ts_ns(&i.otime),
    )


def inode_item_mode(bytes data not None):
    """The mode of an INODE_ITEM, without decoding the rest."""
    cdef const btrfs_inode_item *i = <const btrfs_inode_item *>_need(data, sizeof(btrfs_inode_item), "INODE_ITEM")
    return le32toh(i.mode)


def same_inode_item_but_atime(bytes a not None, bytes b not None):
    """Whether two INODE_ITEMs are equal in every field but the two an atime
    update rewrites (``transid`` and ``atime``)."""
    cdef const btrfs_inode_item *x = <const btrfs_inode_item *>_need(a, sizeof(btrfs_inode_item), "INODE_ITEM")
    cdef const btrfs_inode_item *y = <const btrfs_inode_item *>_need(b, sizeof(btrfs_inode_item), "INODE_ITEM")
    cdef const char *p = <const char *>x
    cdef const char *q = <const char *>y
    cdef size_t after_transid = <size_t>(<const char *>&x.size - p)
    cdef size_t atime = <size_t>(<const char *>&x.atime - p)
    cdef size_t after_atime = <size_t>(<const char *>&x.ctime - p)
    return (x.generation == y.generation
            and memcmp(p + after_transid, q + after_transid, atime - after_transid) == 0
            and memcmp(p + after_atime, q + after_atime, sizeof(btrfs_inode_item) - after_atime) == 0)


def decode_root_item(bytes data not None):
    """A ROOT_ITEM of the root tree (key: subvolume id, ROOT_ITEM_KEY, 0 or snapshot transid)."""
    cdef size_t legacy = btrfs_legacy_root_item_size()
    cdef const btrfs_root_item *r = <const btrfs_root_item *>_need(data, legacy, "ROOT_ITEM")
    # The kernel trusts the fields after generation_v2 only while it equals
    # generation: a kernel without them (before 3.x) rewrites the item
    # without updating generation_v2.
    cdef bint full = (<size_t>PyBytes_GET_SIZE(data) >= sizeof(btrfs_root_item)
                      and r.generation_v2 == r.generation)
    return RootItem(
        le64toh(r.generation), le64toh(r.root_dirid), le64toh(r.bytenr), le64toh(r.byte_limit),
        le64toh(r.bytes_used), le64toh(r.last_snapshot), le64toh(r.flags), le32toh(r.refs),
        r.level,
        _uuid.UUID(bytes=PyBytes_FromStringAndSize(<const char *>r.uuid, 16)) if full else None,
        _uuid_or_none(r.parent_uuid) if full else None,
        _uuid_or_none(r.received_uuid) if full else None,
        le64toh(r.ctransid) if full else None, le64toh(r.otransid) if full else None,
        le64toh(r.stransid) if full else None, le64toh(r.rtransid) if full else None,
        _disk_ts_ns(&r.ctime) if full else None, _disk_ts_ns(&r.otime) if full else None,
    )


def decode_root_ref(bytes data not None):
    """A ROOT_REF (parent id, ROOT_REF_KEY, child id) or ROOT_BACKREF (child, ROOT_BACKREF_KEY, parent)."""
    cdef const btrfs_root_ref *r = <const btrfs_root_ref *>_need(data, sizeof(btrfs_root_ref), "ROOT_REF")
    cdef size_t n = le16toh(r.name_len)
    _need(data, sizeof(btrfs_root_ref) + n, "ROOT_REF")
    return RootRef(le64toh(r.dirid), le64toh(r.sequence),
                   PyBytes_FromStringAndSize(<const char *>(r + 1), n))


def decode_dir_items(bytes data not None):
    """The entries packed in one DIR_ITEM, DIR_INDEX or XATTR_ITEM (a DIR_ITEM
    holds several when names collide in the hash), as a list of DirItem."""
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef size_t size = PyBytes_GET_SIZE(data)
    cdef size_t pos = 0, name_len, data_len
    cdef const btrfs_dir_item *d
    cdef list out = []
    while pos < size:
        if size - pos < sizeof(btrfs_dir_item):
            raise ValueError(f"DIR_ITEM truncated at byte {pos} of {size}")
        d = <const btrfs_dir_item *>(p + pos)
        name_len = le16toh(d.name_len)
        data_len = le16toh(d.data_len)
        if size - pos - sizeof(btrfs_dir_item) < name_len + data_len:
            raise ValueError(f"DIR_ITEM entry at byte {pos} overruns the item ({size} bytes)")
        pos += sizeof(btrfs_dir_item)
        out.append(DirItem(
            le64toh(d.location.objectid), d.location.type, le64toh(d.location.offset),
            le64toh(d.transid), d.type,
            PyBytes_FromStringAndSize(p + pos, name_len),
            PyBytes_FromStringAndSize(p + pos + name_len, data_len),
        ))
        pos += name_len + data_len
    return out


cdef list _decode_refs(bytes data, bint extended, uint64_t parent):
    """The names packed in an INODE_REF (in directory ``parent``) or, with
    ``extended``, an INODE_EXTREF (each name with its directory)."""
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef size_t size = PyBytes_GET_SIZE(data)
    cdef size_t head = sizeof(btrfs_inode_extref) if extended else sizeof(btrfs_inode_ref)
    cdef str what = "INODE_EXTREF" if extended else "INODE_REF"
    cdef size_t pos = 0, name_len
    cdef uint64_t index
    cdef list out = []
    while pos < size:
        if size - pos < head:
            raise ValueError(f"{what} truncated at byte {pos} of {size}")
        if extended:
            parent = le64toh((<const btrfs_inode_extref *>(p + pos)).parent_objectid)
            index = le64toh((<const btrfs_inode_extref *>(p + pos)).index)
            name_len = le16toh((<const btrfs_inode_extref *>(p + pos)).name_len)
        else:
            index = le64toh((<const btrfs_inode_ref *>(p + pos)).index)
            name_len = le16toh((<const btrfs_inode_ref *>(p + pos)).name_len)
        pos += head
        if size - pos < name_len:
            raise ValueError(f"{what} name at byte {pos} overruns the item ({size} bytes)")
        out.append(InodeRef(parent, index, PyBytes_FromStringAndSize(p + pos, name_len)))
        pos += name_len
    return out


def decode_inode_refs(bytes data not None, uint64_t parent):
    """The names packed in one INODE_REF item (key: inode, INODE_REF_KEY,
    ``parent`` directory), as a list of InodeRef."""
    return _decode_refs(data, False, parent)


def decode_inode_extrefs(bytes data not None):
    """The names packed in one INODE_EXTREF item (the overflow of an inode
    with more hard links in one directory than an INODE_REF holds)."""
    return _decode_refs(data, True, 0)


def decode_file_extent(bytes data not None):
    """The head of an EXTENT_DATA item (inline or regular)."""
    cdef const btrfs_file_extent_item *e = <const btrfs_file_extent_item *>_need(
        data, BTRFS_FILE_EXTENT_INLINE_DATA_START, "EXTENT_DATA")
    return FileExtent(le64toh(e.generation), le64toh(e.ram_bytes), e.compression, e.type)


def decode_qgroup_status(bytes data not None):
    # Kernel 6.7 appended enable_gen (the generation simple quotas were turned
    # on in) to the four fields before it; headers from 6.7 on declare it, so
    # the sizes here are fixed rather than sizeof() of the installed struct.
    cdef const btrfs_qgroup_status_item *s = <const btrfs_qgroup_status_item *>_need(
        data, 32, "QGROUP_STATUS")
    cdef object enable_gen = None
    cdef uint64_t raw
    if PyBytes_GET_SIZE(data) >= 40:
        memcpy(&raw, PyBytes_AS_STRING(data) + 32, 8)
        enable_gen = le64toh(raw)
    return QgroupStatus(le64toh(s.version), le64toh(s.generation), le64toh(s.flags),
                        le64toh(s.rescan), enable_gen)


def decode_qgroup_info(bytes data not None):
    cdef const btrfs_qgroup_info_item *i = <const btrfs_qgroup_info_item *>_need(
        data, sizeof(btrfs_qgroup_info_item), "QGROUP_INFO")
    return QgroupInfo(le64toh(i.generation), le64toh(i.rfer), le64toh(i.rfer_cmpr),
                      le64toh(i.excl), le64toh(i.excl_cmpr))


def decode_qgroup_limit(bytes data not None):
    cdef const btrfs_qgroup_limit_item *l = <const btrfs_qgroup_limit_item *>_need(
        data, sizeof(btrfs_qgroup_limit_item), "QGROUP_LIMIT")
    return QgroupLimit(le64toh(l.flags), le64toh(l.max_rfer), le64toh(l.max_excl),
                       le64toh(l.rsv_rfer), le64toh(l.rsv_excl))


# ---------------------------------------------------------------- quotas

cdef int _quota_ctl(int fd, uint64_t cmd) except -1:
    cdef btrfs_ioctl_quota_ctl_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.cmd = cmd
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_QUOTA_CTL, &args)
    if ret < 0:
        _raise_fd(-ret, fd)
    return 0


def quota_enable(int fd, bint simple=False):
    """Turn quotas on for the filesystem of ``fd``: full qgroups, or with
    ``simple`` the simple quotas of kernel 6.7+ (EINVAL on older kernels)."""
    _quota_ctl(fd, BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA if simple else BTRFS_QUOTA_CTL_ENABLE)


def quota_disable(int fd):
    _quota_ctl(fd, BTRFS_QUOTA_CTL_DISABLE)


def quota_rescan(int fd):
    """Start a quota rescan (EINPROGRESS if one is running)."""
    cdef btrfs_ioctl_quota_rescan_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_QUOTA_RESCAN, &args)
    if ret < 0:
        _raise_fd(-ret, fd)


def quota_rescan_wait(int fd):
    """Wait for a running rescan to finish; starts nothing and returns at once when none runs."""
    cdef int ret
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_QUOTA_RESCAN_WAIT, NULL)
    if ret < 0:
        _raise_fd(-ret, fd)


def quota_rescan_status(int fd):
    """``(running, progress)``: whether a rescan runs, and the objectid it reached."""
    cdef btrfs_ioctl_quota_rescan_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_QUOTA_RESCAN_STATUS, &args)
    if ret < 0:
        _raise_fd(-ret, fd)
    return bool(args.flags), args.progress


cdef int _qgroup_create(int fd, uint64_t qgroupid, uint64_t create) except -1:
    cdef btrfs_ioctl_qgroup_create_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.create = create
    args.qgroupid = qgroupid
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_QGROUP_CREATE, &args)
    if ret < 0:
        _raise_fd(-ret, fd, f"<qgroup {qgroupid >> 48}/{qgroupid & 0xFFFFFFFFFFFF}>")
    return 0


def qgroup_create(int fd, uint64_t qgroupid):
    _qgroup_create(fd, qgroupid, 1)


def qgroup_destroy(int fd, uint64_t qgroupid):
    """Remove a qgroup; the kernel refuses (EBUSY) while its subvolume exists."""
    _qgroup_create(fd, qgroupid, 0)


def qgroup_limit(int fd, uint64_t qgroupid, max_referenced=None, max_exclusive=None):
    """Set the limits of ``qgroupid`` (0: the subvolume ``fd`` is in).

    A limit left None is not changed; ``QGROUP_LIMIT_NONE`` removes it.
    """
    cdef btrfs_ioctl_qgroup_limit_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.qgroupid = qgroupid
    if max_referenced is not None:
        args.lim.flags |= BTRFS_QGROUP_LIMIT_MAX_RFER
        args.lim.max_rfer = max_referenced
    if max_exclusive is not None:
        args.lim.flags |= BTRFS_QGROUP_LIMIT_MAX_EXCL
        args.lim.max_excl = max_exclusive
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, &args)
    if ret < 0:
        _raise_fd(-ret, fd, f"<qgroup {qgroupid >> 48}/{qgroupid & 0xFFFFFFFFFFFF}>")


cdef object _quota_item(int fd, uint64_t objectid, uint32_t type, uint64_t offset):
    """An item of the quota tree, or None; None too when quotas are off (no quota tree)."""
    try:
        return _search_one(fd, BTRFS_QUOTA_TREE_OBJECTID, objectid, type, offset)
    except FileNotFoundError:
        return None


def quota_status(int fd):
    """The quota tree's QgroupStatus, or None when quotas are off."""
    data = _quota_item(fd, 0, BTRFS_QGROUP_STATUS_KEY, 0)
    return None if data is None else decode_qgroup_status(data)


def qgroup_usage(int fd, uint64_t qgroupid):
    """QgroupInfo (referenced and exclusive bytes) of ``qgroupid``, or None when
    it has none (no such qgroup, or quotas off)."""
    data = _quota_item(fd, 0, BTRFS_QGROUP_INFO_KEY, qgroupid)
    return None if data is None else decode_qgroup_info(data)


def qgroup_limits(int fd, uint64_t qgroupid):
    """QgroupLimit of ``qgroupid``, or None when it has none."""
    data = _quota_item(fd, 0, BTRFS_QGROUP_LIMIT_KEY, qgroupid)
    return None if data is None else decode_qgroup_limit(data)


# ---------------------------------------------------------------- sync and filesystem

def sync(int fd):
    """Commit the current transaction (and wake the cleaner to drop deleted subvolumes)."""
    cdef int ret
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_SYNC, NULL)
    if ret < 0:
        _raise_fd(-ret, fd)


def start_sync(int fd):
    """Start committing the current transaction; returns its transid for wait_sync."""
    cdef uint64_t transid = 0
    cdef int ret
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_START_SYNC, &transid)
    if ret < 0:
        _raise_fd(-ret, fd)
    return transid


def wait_sync(int fd, uint64_t transid=0):
    """Wait until transaction ``transid`` (0: the current one) is committed."""
    cdef int ret
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_WAIT_SYNC, &transid)
    if ret < 0:
        _raise_fd(-ret, fd)


def subvolume_sync_wait(int fd, uint64_t subvolid=0, uint32_t mode=BTRFS_SUBVOL_SYNC_WAIT_FOR_ONE):
    """SUBVOL_SYNC_WAIT (kernel 6.13; ENOTTY before): wait for the cleaner to
    drop deleted subvolume ``subvolid`` (FOR_ONE), or all queued ones
    (FOR_QUEUED); the COUNT and PEEK modes return a count or an id at once."""
    cdef btrfs_ioctl_subvol_wait args
    cdef int ret
    memset(&args, 0, sizeof(args))
    args.subvolid = subvolid
    args.mode = mode
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_SUBVOL_SYNC_WAIT, &args)
    if ret < 0:
        _raise_fd(-ret, fd, f"<subvolume {subvolid}>" if subvolid else None)
    if mode == BTRFS_SUBVOL_SYNC_COUNT:
        return args.count
    if mode in (BTRFS_SUBVOL_SYNC_PEEK_FIRST, BTRFS_SUBVOL_SYNC_PEEK_LAST):
        return args.subvolid
    return 0


def fs_info(int fd):
    """FS_INFO of the filesystem ``fd`` is on: fsid, device count, node and sector sizes, generation."""
    cdef btrfs_ioctl_fs_info_args args
    cdef int ret
    memset(&args, 0, sizeof(args))
    # BTRFS_FS_INFO_FLAG_GENERATION | BTRFS_FS_INFO_FLAG_METADATA_UUID (kernel 5.6)
    args.flags = (1 << 1) | (1 << 2)
    with nogil:
        ret = _ioctl(fd, BTRFS_IOC_FS_INFO, &args)
    if ret < 0:
        _raise_fd(-ret, fd)
    return FsInfo(
        _uuid.UUID(bytes=PyBytes_FromStringAndSize(<const char *>args.fsid, 16)),
        args.num_devices, args.max_id, args.nodesize, args.sectorsize,
        args.generation if args.flags & (1 << 1) else None,
        _uuid.UUID(bytes=PyBytes_FromStringAndSize(<const char *>args.metadata_uuid, 16))
        if args.flags & (1 << 2) else None,
    )


cdef bytes _path_arg(object path):
    cdef bytes p = os.fsencode(path)
    if b"\0" in p:
        raise ValueError(f"embedded NUL in path {path!r}")
    return p


def fs_magic(path_or_fd):
    """The statfs f_type of a path or an open fd (``SUPER_MAGIC`` on btrfs)."""
    cdef statfs_t st
    cdef int ret, err = 0, fd
    cdef bytes p
    cdef const char *cp
    if isinstance(path_or_fd, int):
        fd = path_or_fd
        with nogil:
            ret = c_fstatfs(fd, &st)
            if ret < 0:
                err = errno
        if ret < 0:
            _raise_fd(err, fd)
    else:
        p = _path_arg(path_or_fd)
        cp = p
        with nogil:
            ret = c_statfs(cp, &st)
            if ret < 0:
                err = errno
        if ret < 0:
            raise OSError(err, os.strerror(err), os.fsdecode(p))
    return <uint32_t>st.f_type


cdef int _is_subvolume_fd(int fd, bint *result) noexcept nogil:
    """0 or -errno; ``result``: fd is a directory with the subvolume root inode on btrfs."""
    cdef stat_t st
    cdef statfs_t sfs
    result[0] = False
    if c_fstat(fd, &st) < 0:
        return -errno
    if st.st_ino != BTRFS_FIRST_FREE_OBJECTID or not S_ISDIR(st.st_mode):
        return 0
    if c_fstatfs(fd, &sfs) < 0:
        return -errno
    result[0] = <uint32_t>sfs.f_type == <uint32_t>BTRFS_SUPER_MAGIC
    return 0


def is_subvolume(path_or_fd, *, int dir_fd=AT_FDCWD):
    """Whether an open fd, or a path (relative to ``dir_fd``; a final symlink
    is not followed), is the root directory of a btrfs subvolume.  False on
    other filesystems."""
    cdef int ret, fd
    cdef bint result = False
    cdef bytes p
    if isinstance(path_or_fd, int):
        fd = path_or_fd
        with nogil:
            ret = _is_subvolume_fd(fd, &result)
        if ret < 0:
            _raise_fd(-ret, fd)
        return result
    p = _path_arg(path_or_fd)
    cdef const char *cp = p
    with nogil:
        fd = c_openat(dir_fd, cp, O_PATH | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0:
            ret = -errno
        else:
            ret = _is_subvolume_fd(fd, &result)
            c_close(fd)
    if ret < 0:
        if dir_fd != AT_FDCWD and not os.path.isabs(p):
            _raise_fd(-ret, dir_fd, p)
        raise OSError(-ret, os.strerror(-ret), os.fsdecode(p))
    return result


# ---------------------------------------------------------------- plain syscalls the layers above need

cdef int _renameat2(int old_dirfd, object old, int new_dirfd, object new, unsigned int flags) except -1:
    cdef bytes a = _entry_name(old)
    cdef bytes b = _entry_name(new)
    cdef const char *ca = a
    cdef const char *cb = b
    cdef int ret, err = 0
    with nogil:
        ret = c_renameat2(old_dirfd, ca, new_dirfd, cb, flags)
        if ret < 0:
            err = errno
    if ret < 0:
        if err == EEXIST:
            _raise_fd(err, new_dirfd, b)
        _raise_fd(err, old_dirfd, a)
    return 0


def rename_noreplace(int old_dirfd, old, int new_dirfd, new):
    """renameat2(RENAME_NOREPLACE): move ``old`` to ``new`` atomically, or
    FileExistsError if ``new`` exists (rename(2) would replace an empty
    directory).  Both names are single entries of their directories."""
    _renameat2(old_dirfd, old, new_dirfd, new, RENAME_NOREPLACE)


def rename_exchange(int old_dirfd, old, int new_dirfd, new):
    """renameat2(RENAME_EXCHANGE): swap two existing entries atomically."""
    _renameat2(old_dirfd, old, new_dirfd, new, RENAME_EXCHANGE)


def mount(source, target, fstype=None, unsigned long flags=0, data=None):
    """mount(2)."""
    cdef bytes s = _path_arg(source) if source is not None else None
    cdef bytes t = _path_arg(target)
    cdef bytes f = _path_arg(fstype) if fstype is not None else None
    cdef bytes d = _path_arg(data) if data is not None else None
    cdef const char *cs = NULL
    cdef const char *ct = t
    cdef const char *cf = NULL
    cdef const char *cd = NULL
    if s is not None:
        cs = s
    if f is not None:
        cf = f
    if d is not None:
        cd = d
    cdef int ret, err = 0
    with nogil:
        ret = c_mount(cs, ct, cf, flags, cd)
        if ret < 0:
            err = errno
    if ret < 0:
        raise OSError(err, os.strerror(err), os.fsdecode(t))


def umount(target, int flags=0):
    """umount2(2)."""
    cdef bytes t = _path_arg(target)
    cdef const char *ct = t
    cdef int ret, err = 0
    with nogil:
        ret = c_umount2(ct, flags)
        if ret < 0:
            err = errno
    if ret < 0:
        raise OSError(err, os.strerror(err), os.fsdecode(t))



def openat2(int dirfd, path, int flags, int mode=0, uint64_t resolve=0):
    """openat2(2) (Linux 5.6): open ``path`` relative to ``dirfd`` under the
    ``RESOLVE_*`` restrictions; returns the new fd.  With RESOLVE_BENEATH a
    path that would leave ``dirfd`` fails with EXDEV, with
    RESOLVE_NO_SYMLINKS one through a symlink with ELOOP."""
    cdef bytes p = _path_arg(path)
    cdef const char *cp = p
    cdef open_how how
    cdef long ret
    cdef int err = 0, attempts = 0
    memset(&how, 0, sizeof(how))
    how.flags = <uint64_t><unsigned int>flags
    how.mode = mode
    how.resolve = resolve
    with nogil:
        while True:
            ret = syscall(SYS_openat2, dirfd, cp, &how, sizeof(how))
            if ret >= 0:
                break
            err = errno
            # EAGAIN: a rename or mount raced the resolution (RESOLVE_BENEATH/IN_ROOT)
            if err == EINTR or (err == EAGAIN and attempts < 16):
                attempts += 1
                continue
            break
    if ret < 0:
        _raise_fd(err, dirfd, os.fsdecode(p))
    return <int>ret
