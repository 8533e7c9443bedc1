"""What is mounted where, from /proc/self/mountinfo."""

from __future__ import annotations

import os


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
