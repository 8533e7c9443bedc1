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
import struct
import tarfile
from collections.abc import Iterable, Iterator, Sequence

from btrfsx.archive.changes import Change, ChangeKind
from btrfsx.idmap import IDMap, to_container

WHITEOUT_PREFIX = ".wh."
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


def _pax_time(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{sec}.{frac:09d}".rstrip("0").rstrip(".") if frac else str(sec)


_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12s")
_PAX_NAME = b"././@PaxHeader"


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, kind: bytes,
           linkname: bytes, devmajor: int, devminor: int) -> bytes:
    device = kind in (tarfile.CHRTYPE, tarfile.BLKTYPE)
    fields = [name, _octal(mode, 8), _octal(uid, 8), _octal(gid, 8), _octal(size, 12), _octal(mtime, 12),
              b"        ", kind, linkname, b"ustar\0", b"00", b"", b"",
              _octal(devmajor, 8) if device else b"", _octal(devminor, 8) if device else b"", b"", b""]
    buf = _USTAR.pack(*fields)
    return buf[:148] + b"%06o\0 " % sum(buf) + buf[156:]


def _pax_records(pax: dict[str, str]) -> bytes:
    out = []
    for key, value in pax.items():
        record = b" " + key.encode("utf-8") + b"=" + value.encode("utf-8", "surrogateescape") + b"\n"
        n = len(record) + 1
        while len(str(n)) + len(record) != n:  # the length counts its own digits
            n = len(str(n)) + len(record)
        out.append(str(n).encode() + record)
    return b"".join(out)


def _header(info: tarfile.TarInfo) -> bytes:
    """The header block(s) of one entry, PAX records first when it needs any.

    Byte for byte what tarfile's PAX writer makes (tarfile's own encoder is
    most of an export's time), except for extended attribute values that are
    not UTF-8, such as most ``security.capability`` values: those go in raw,
    as GNU tar writes them, without the ``hdrcharset=BINARY`` record tarfile
    adds and GNU tar 1.34 warns about.
    """
    pax = dict(info.pax_headers)
    for field, key in (("name", "path"), ("linkname", "linkpath")):
        value = getattr(info, field)
        if key not in pax and (not value.isascii() or len(value) > 100):
            pax[key] = value
    numbers = {}
    for field, digits in (("uid", 8), ("gid", 8), ("size", 12), ("mtime", 12)):
        value = getattr(info, field)
        if not 0 <= value < 8 ** (digits - 1):
            pax.setdefault(field, str(value))
            value = 0
        numbers[field] = value
    head = b""
    if pax:
        records = _pax_records(pax)
        head = _block(_PAX_NAME, 0, 0, 0, len(records), 0, tarfile.XHDTYPE, b"", 0, 0)
        head += records + b"\0" * (-len(records) % _BLOCK)
    return head + _block(info.name.encode("ascii", "replace")[:100], info.mode, numbers["uid"],
                         numbers["gid"], numbers["size"], numbers["mtime"], info.type,
                         info.linkname.encode("ascii", "replace")[:100], info.devmajor, info.devminor)


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
        # The deletion is what last changed the parent directory, so its mtime
        # dates the whiteout (containers/storage writes the time of the export,
        # which would make two exports of one layer differ).
        try:
            info.mtime = os.lstat(self.root + os.fsencode(parent)).st_mtime_ns // 1_000_000_000
        except FileNotFoundError:
            info.mtime = 0
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
