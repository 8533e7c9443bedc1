"""Helpers shared by the test modules."""

import os
import subprocess

from btrfsx import _ioctl


def attached_images() -> set[str]:
    """The backing files of every attached loop device."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                         capture_output=True, text=True).stdout
    return {line.strip().removesuffix(" (deleted)") for line in out.splitlines() if line.strip()}


def mounted_targets() -> set[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    return set(out.split())


def limit_of(home, layer_path) -> int | None:
    """The max_referenced limit of the qgroup of the subvolume at ``layer_path``, after a commit."""
    fd = os.open(home, os.O_RDONLY)
    try:
        _ioctl.sync(fd)
        limits = _ioctl.qgroup_limits(fd, subvolume_id(layer_path))
    finally:
        os.close(fd)
    return limits.max_referenced if limits and limits.flags & _ioctl.QGROUP_LIMIT_MAX_RFER else None


def write_past(path, nbytes: int) -> None:
    """Write ``nbytes`` of incompressible data to ``path`` and fsync it (EDQUOT beyond a limit)."""
    with open(path, "wb") as f:
        f.write(os.urandom(nbytes))
        os.fsync(f.fileno())


def subvolume_id(path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _ioctl.subvolume_id(fd)
    finally:
        os.close(fd)
