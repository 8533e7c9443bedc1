"""A layer's changes as an uncompressed tar stream in the OCI layer format
(containers/storage's ``ExportChanges``): PAX headers for long names,
nanosecond times and extended attributes (``SCHILY.xattr.*``), hard links
within the layer as tar hard links, deletions as ``.wh.NAME`` whiteouts.

The stream is produced as it is read: nothing of a layer is held in memory
beyond one header and one chunk of one file.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence

from btrfsx.archive.changes import Change, ChangeKind
from btrfsx.idmap import IDMap, to_container

WHITEOUT_PREFIX = ".wh."
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


def _pax_time(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}.{frac:09d}".rstrip("0").rstrip(".") if frac else str(sec)


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Exporter:
    def __init__(self, root: bytes, uid_maps: Sequence[IDMap] | None, gid_maps: Sequence[IDMap] | None):
        self.root = root
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        self.links: dict[tuple[int, int], str] = {}  # (dev, ino) -> first name written

    def whiteout(self, path: str) -> bytes:
        parent, base = os.path.split(path)
        info = tarfile.TarInfo(os.path.join(parent, WHITEOUT_PREFIX + base).lstrip("/"))
        info.mode = 0
        info.mtime = int(time.time())
        return _header(info)

    def entry(self, path: str) -> Iterator[bytes]:
        full = self.root + os.fsencode(path)
        st = os.lstat(full)
        name = path.lstrip("/")
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid = to_container(st.st_uid, self.uid_maps)
        info.gid = to_container(st.st_gid, self.gid_maps)
        info.mtime = st.st_mtime_ns // 1_000_000_000
        if st.st_mtime_ns % 1_000_000_000:
            info.pax_headers["mtime"] = _pax_time(st.st_mtime_ns)
        try:
            for key in os.listxattr(full, follow_symlinks=False):
                value = os.getxattr(full, key, follow_symlinks=False)
                info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        except OSError:
            pass  # no xattr support for this entry (e.g. a symlink's user namespace)
        mode = st.st_mode
        if stat.S_ISREG(mode) and st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = first
                yield _header(info)
                return
            self.links[(st.st_dev, st.st_ino)] = name
        if stat.S_ISREG(mode):
            info.type = tarfile.REGTYPE
            info.size = st.st_size
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                yield _header(info)
                remaining = st.st_size
                while remaining:
                    chunk = os.read(fd, min(CHUNK, remaining))
                    if not chunk:
                        # the file shrank while being read: pad to the size
                        # the header promised, as GNU tar does
                        yield b"\0" * remaining
                        break
                    remaining -= len(chunk)
                    yield chunk
            finally:
                os.close(fd)
            if st.st_size % _BLOCK:
                yield b"\0" * (_BLOCK - st.st_size % _BLOCK)
            return
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            info.name = name + "/"
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.fsdecode(os.readlink(full))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor = os.major(st.st_rdev)
            info.devminor = os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            return  # sockets do not travel in tar
        yield _header(info)


def _stream(root: bytes, found: Iterable[Change], uid_maps, gid_maps) -> Iterator[bytes]:
    exporter = _Exporter(root, uid_maps, gid_maps)
    for change in found:
        if change.kind == ChangeKind.DELETE:
            yield exporter.whiteout(change.path)
        else:
            try:
                yield from exporter.entry(change.path)
            except FileNotFoundError:
                continue  # removed since the changes were listed
    yield b"\0" * (2 * _BLOCK)


class TarStream(io.RawIOBase):
    """A readable binary stream of tar bytes produced on demand."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buffer:
            try:
                self._buffer = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._chunks.close()  # closes the file being read, if any
        super().close()


def export_changes(layer: str | bytes, found: Iterable[Change], uid_maps: Sequence[IDMap] | None = None,
                   gid_maps: Sequence[IDMap] | None = None) -> io.BufferedReader:
    """The tar stream of ``found`` (from :func:`changes`) read from ``layer``."""
    root = os.fsencode(layer).rstrip(b"/")
    return io.BufferedReader(TarStream(_stream(root, found, uid_maps, gid_maps)), CHUNK)
