"""What is mounted where (from /proc/self/mountinfo), and the private
mount point a driver makes of its home."""

from __future__ import annotations

import errno
import fcntl
import os

from btrfsx import _ioctl
from btrfsx._fd import open_dir


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def is_mountpoint(path: str) -> bool:
    """Whether something is mounted at ``path`` (a bind mount of a directory
    on the same filesystem too, which ``os.path.ismount`` cannot see)."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(_unescape_mountinfo(line.split(" ", 5)[4]) == path for line in f)


def mount_source(path: str | os.PathLike[str]) -> str | None:
    """The source (a device, for a block filesystem) mounted at ``path``, or None."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            if _unescape_mountinfo(before.split(" ")[4]) == path:
                return _unescape_mountinfo(after.split(" ")[1])
    return None


def make_private(path: str) -> bool:
    """Make ``path`` a private mount point, bind-mounting it on itself when
    it is not one (as containers/storage's mount.MakePrivate does); True
    when this bind-mounted it.  PermissionError without the privilege."""
    with open_dir(path, follow=True) as fd:
        # Drivers in several processes: without this lock two could both
        # see no mount yet and stack two bind mounts.
        fcntl.flock(fd, fcntl.LOCK_EX)
        bound = False
        if not is_mountpoint(path):
            _ioctl.mount(path, path, None, _ioctl.MS_BIND)
            bound = True
        _ioctl.mount(None, path, None, _ioctl.MS_PRIVATE)
        return bound


def detach(path: str) -> bool:
    """Unmount ``path`` lazily (MNT_DETACH: whoever still works below it
    keeps its view); False when nothing was mounted there."""
    try:
        _ioctl.umount(path, _ioctl.MNT_DETACH)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return False
    return True
