"""Quota policy over the ioctl layer: which mode is on, turning it on, and
qgroups left behind by removed subvolumes."""

from __future__ import annotations

import enum
import errno
import logging

from btrfsx import _ioctl

log = logging.getLogger("btrfsx.quota")


class QuotaMode(str, enum.Enum):
    """A filesystem's quota mode, spelled as the ``btrfsx.quota`` option
    spells it (``QuotaMode("qgroups")``, the spelling before 0.1.0, is
    still QGROUP)."""

    OFF = "off"
    QGROUP = "qgroup"
    SIMPLE = "simple"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> QuotaMode | None:
        return cls.QGROUP if value == "qgroups" else None


def mode(fd: int) -> QuotaMode:
    """The quota mode of the filesystem ``fd`` is on."""
    status = _ioctl.quota_status(fd)
    if status is None or not status.flags & _ioctl.QGROUP_STATUS_FLAG_ON:
        return QuotaMode.OFF
    if status.flags & _ioctl.QGROUP_STATUS_FLAG_SIMPLE_MODE:
        return QuotaMode.SIMPLE
    return QuotaMode.QGROUP


def enable(fd: int, prefer: str | None = None, *, known_off: bool = False) -> QuotaMode:
    """Turn quotas on unless they are; returns the mode in force.

    ``known_off``: a qgroup ioctl just failed with ENOTCONN, so quotas are
    off whatever the quota tree still says (with other processes turning
    them off and on, its status item was seen ON while the kernel had no
    quota root, on Linux 6.x); the kernel's enable is a no-op when they are
    on after all.

    A mode already on is kept whatever ``prefer`` says.  Otherwise ``prefer``
    "qgroup" asks for full qgroups; anything else takes simple quotas where
    the kernel has them (6.7+), whose cost does not grow with the number of
    snapshots sharing extents, and full qgroups elsewhere.
    """
    current = QuotaMode.OFF if known_off else mode(fd)
    if current is not QuotaMode.OFF:
        return current
    if prefer != "qgroup":
        try:
            _ioctl.quota_enable(fd, simple=True)
            return QuotaMode.SIMPLE
        except OSError as e:
            # kernels before 6.7 reject the unknown command with EINVAL
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY):
                raise
            log.info("simple quotas unavailable (%s); using full qgroups", e)
    _ioctl.quota_enable(fd)
    # Enabling full qgroups starts a rescan; limits act on its results.
    _ioctl.quota_rescan_wait(fd)
    return QuotaMode.QGROUP


def disable(fd: int) -> None:
    if mode(fd) is not QuotaMode.OFF:
        _ioctl.quota_disable(fd)


def subvolume_ids(fd: int) -> set[int]:
    """Ids of every subvolume with a root item (deleted ones the cleaner has
    not dropped yet included)."""
    return {item.objectid for item in _ioctl.TreeSearch(
        fd, _ioctl.ROOT_TREE_OBJECTID, min_objectid=_ioctl.FIRST_FREE_OBJECTID,
        max_objectid=_ioctl.LAST_FREE_OBJECTID, min_type=_ioctl.ROOT_ITEM_KEY,
        max_type=_ioctl.ROOT_ITEM_KEY, item_types=(_ioctl.ROOT_ITEM_KEY,))}


def qgroup_table(fd: int) -> tuple[dict[int, _ioctl.QgroupInfo], dict[int, _ioctl.QgroupLimit]]:
    """The usage and the limits of every level-0 qgroup, by qgroup id, from
    one search of the quota tree (root only); both empty when quotas are off.
    What :func:`_ioctl.qgroup_usage` and :func:`_ioctl.qgroup_limits` give
    for one qgroup, for all of them at the cost of one pass."""
    usage: dict[int, _ioctl.QgroupInfo] = {}
    limits: dict[int, _ioctl.QgroupLimit] = {}
    try:
        for item in _ioctl.TreeSearch(fd, _ioctl.QUOTA_TREE_OBJECTID, min_objectid=0, max_objectid=0,
                                      min_type=_ioctl.QGROUP_INFO_KEY, max_type=_ioctl.QGROUP_LIMIT_KEY,
                                      item_types=(_ioctl.QGROUP_INFO_KEY, _ioctl.QGROUP_LIMIT_KEY)):
            if item.offset >> _ioctl.QGROUP_LEVEL_SHIFT:
                continue  # a higher-level qgroup: no subvolume's own
            if item.type == _ioctl.QGROUP_INFO_KEY:
                usage[item.offset] = _ioctl.decode_qgroup_info(item.data)
            else:
                limits[item.offset] = _ioctl.decode_qgroup_limit(item.data)
    except FileNotFoundError:
        return {}, {}  # quotas off: no quota tree
    return usage, limits


def stale_qgroups(fd: int) -> list[int]:
    """Level-0 qgroups whose subvolume is gone.  Kernels from 6.11 remove
    these themselves once the cleaner drops the subvolume; older ones keep
    them forever."""
    try:
        qgroups = [item.offset for item in _ioctl.TreeSearch(
            fd, _ioctl.QUOTA_TREE_OBJECTID, min_objectid=0, max_objectid=0,
            min_type=_ioctl.QGROUP_INFO_KEY, max_type=_ioctl.QGROUP_INFO_KEY)
            if item.type == _ioctl.QGROUP_INFO_KEY]
    except FileNotFoundError:
        return []  # quotas off
    live = subvolume_ids(fd)
    return [q for q in qgroups
            if q >> _ioctl.QGROUP_LEVEL_SHIFT == 0 and q >= _ioctl.FIRST_FREE_OBJECTID and q not in live]


def remove_stale_qgroups(fd: int) -> list[int]:
    """Destroy the qgroups :func:`stale_qgroups` finds; returns those removed."""
    removed = []
    for qgroupid in stale_qgroups(fd):
        try:
            _ioctl.qgroup_destroy(fd, qgroupid)
            removed.append(qgroupid)
        except OSError as e:
            # EBUSY: the subvolume is still being dropped; ENOENT: gone meanwhile
            if e.errno not in (errno.EBUSY, errno.ENOENT):
                raise
    return removed


def set_limit(fd: int, size: int) -> None:
    """Limit the subvolume ``fd`` is in to ``size`` referenced bytes (its own qgroup)."""
    _ioctl.qgroup_limit(fd, 0, max_referenced=size)


def create_qgroup(fd: int) -> None:
    """The level-0 qgroup of the subvolume ``fd`` is in (FileExistsError when there is one)."""
    _ioctl.qgroup_create(fd, _ioctl.subvolume_id(fd))


def referenced_limit(limits: _ioctl.QgroupLimit | None) -> int | None:
    """The referenced-bytes limit a QGROUP_LIMIT item sets, or None."""
    if limits is not None and limits.flags & _ioctl.QGROUP_LIMIT_MAX_RFER:
        return limits.max_referenced
    return None


def usage(fd: int, subvolid: int) -> tuple[int | None, int | None, int | None]:
    """(referenced, exclusive, limit) bytes of subvolume ``subvolid``'s
    qgroup, each None where the quota tree has none."""
    info = _ioctl.qgroup_usage(fd, subvolid)
    limit = referenced_limit(_ioctl.qgroup_limits(fd, subvolid))
    if info is None:
        return None, None, limit
    return info.referenced, info.exclusive, limit
