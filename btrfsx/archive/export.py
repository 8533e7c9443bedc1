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
import sys
import tarfile
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import cast

from btrfsx.archive._tar import encode_header
from btrfsx.archive.changes import Change, ChangeKind
from btrfsx.archive.changes import xattrs as read_xattrs
from btrfsx.idmap import IDMap, to_container

WHITEOUT_PREFIX = ".wh."
_WHITEOUT = WHITEOUT_PREFIX.encode()
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_ZEROS = bytes(_BLOCK)
_XATTR = "SCHILY.xattr."


def _header(info: tarfile.TarInfo) -> bytes:
    """The header block(s) of one entry described by a TarInfo, PAX records
    first when it needs any (see :func:`encode_header`).

    Byte for byte what tarfile's PAX writer makes (tarfile's own encoder was
    most of an export's time), except for extended attribute values that are
    not UTF-8, such as most ``security.capability`` values: those go in raw,
    as GNU tar writes them, without the ``hdrcharset=BINARY`` record tarfile
    adds and GNU tar 1.34 warns about.  The PAX ``mtime``, when given, is
    the entry's time; ``info.mtime`` otherwise.
    """
    pax = info.pax_headers
    mtime_ns = int(info.mtime * 1_000_000_000)
    if "mtime" in pax:
        sec, _, frac = pax["mtime"].partition(".")
        mtime_ns = int(sec) * 1_000_000_000 + int((frac + "0" * 9)[:9])
    xattrs = [(key[len(_XATTR):].encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
              for key, value in pax.items() if key.startswith(_XATTR)]
    return encode_header(os.fsencode(info.name), info.type, info.mode, info.uid, info.gid, info.size, mtime_ns,
                         os.fsencode(info.linkname), info.devmajor, info.devminor, xattrs)


class _Exporter:
    def __init__(self, root: bytes, uid_maps: Sequence[IDMap] | None, gid_maps: Sequence[IDMap] | None,
                 xattr_inodes: tuple[int, frozenset[int]] | None = None):
        self.root = root
        self.xattr_dev: int | None
        self.xattr_dev, self.xattr_inodes = xattr_inodes or (None, frozenset())
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        self.links: dict[tuple[int, int], bytes] = {}  # (dev, ino) -> first name written
        self._uids: dict[int, int] = {}
        self._gids: dict[int, int] = {}

    def _uid(self, uid: int) -> int:
        out = self._uids.get(uid)
        if out is None:
            out = self._uids[uid] = to_container(uid, self.uid_maps)
        return out

    def _gid(self, gid: int) -> int:
        out = self._gids.get(gid)
        if out is None:
            out = self._gids[gid] = to_container(gid, self.gid_maps)
        return out

    def whiteout(self, path: bytes) -> bytes:
        parent, base = os.path.split(path)
        # Dated 0: a whiteout has no time of its own, and any clock reading
        # (containers/storage writes the time of the export) would make two
        # exports of one layer, or of its copy on another machine, differ.
        return encode_header(os.path.join(parent, _WHITEOUT + base).lstrip(b"/"), tarfile.REGTYPE,
                             0, 0, 0, 0, 0)

    def entry(self, path: bytes, st: os.stat_result | None = None) -> bytes | Iterator[bytes] | None:
        """The tar bytes of one entry: one bytes object for all but a large
        (or shrinking) file, whose data comes in chunks from an iterator;
        None for a socket (they do not travel in tar)."""
        full = self.root + path
        if st is None:
            st = os.lstat(full)
        name = path.lstrip(b"/")
        mode = st.st_mode
        uid = self._uid(st.st_uid)
        gid = self._gid(st.st_gid)
        if st.st_dev == self.xattr_dev and st.st_ino not in self.xattr_inodes:
            xattrs = None  # the layer's tree holds no extended attribute of this inode
        else:
            xattrs = [(os.fsencode(key), value) for key, value in read_xattrs(full).items()]
        perm = stat.S_IMODE(mode)
        if stat.S_ISREG(mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self.links.get(key)
                if first is not None:
                    return encode_header(name, tarfile.LNKTYPE, perm, uid, gid, 0, st.st_mtime_ns, first,
                                         0, 0, xattrs)
                self.links[key] = name
            size = st.st_size
            head = encode_header(name, tarfile.REGTYPE, perm, uid, gid, size, st.st_mtime_ns, b"", 0, 0, xattrs)
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            if size > CHUNK:
                return self._chunks(fd, head, b"", size)
            try:
                data = os.read(fd, size) if size else b""
            except BaseException:
                os.close(fd)
                raise
            if len(data) != size:
                return self._chunks(fd, head, data, size)
            os.close(fd)
            # one piece for the whole entry: most files are small
            return b"".join((head, data, _ZEROS[:-size % _BLOCK]))
        if stat.S_ISDIR(mode):
            return encode_header(name + b"/", tarfile.DIRTYPE, perm, uid, gid, 0, st.st_mtime_ns, b"", 0, 0, xattrs)
        if stat.S_ISLNK(mode):
            return encode_header(name, tarfile.SYMTYPE, perm, uid, gid, 0, st.st_mtime_ns, os.readlink(full),
                                 0, 0, xattrs)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return encode_header(name, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE, perm, uid, gid,
                                 0, st.st_mtime_ns, b"", os.major(st.st_rdev), os.minor(st.st_rdev), xattrs)
        if stat.S_ISFIFO(mode):
            return encode_header(name, tarfile.FIFOTYPE, perm, uid, gid, 0, st.st_mtime_ns, b"", 0, 0, xattrs)
        return None

    @staticmethod
    def _chunks(fd: int, head: bytes, data: bytes, size: int) -> Iterator[bytes]:
        """A file's header and data read from ``fd`` (closed at the end),
        ``data`` being what was read already."""
        try:
            yield head
            if data:
                yield data
            remaining = size - len(data)
            while remaining:
                chunk = os.read(fd, min(CHUNK, remaining))
                if not chunk:
                    # the file shrank while being read: pad to the size
                    # the header promised, as GNU tar does
                    yield bytes(remaining)
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            os.close(fd)
        if size % _BLOCK:
            yield _ZEROS[:-size % _BLOCK]


_FS_ENCODING = sys.getfilesystemencoding()


def _stream(root: bytes, found: Iterable[Change], uid_maps, gid_maps, stats,
            xattr_inodes) -> Generator[bytes, None, None]:
    exporter = _Exporter(root, uid_maps, gid_maps, xattr_inodes)
    delete = ChangeKind.DELETE
    for change in found:
        path = change.path.encode(_FS_ENCODING, "surrogateescape")  # os.fsencode, without its call
        if change.kind == delete:
            yield exporter.whiteout(path)
            continue
        try:
            piece = exporter.entry(path, stats.get(path) if stats else None)
        except FileNotFoundError:
            continue  # removed since the changes were listed
        if type(piece) is bytes:
            yield piece
        elif piece is not None:
            yield from cast("Iterator[bytes]", piece)  # not bytes: entry() makes exact bytes
    yield bytes(2 * _BLOCK)


class TarStream(io.RawIOBase):
    """A readable binary stream of tar bytes produced on demand."""

    def __init__(self, chunks: Generator[bytes, None, None]):
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        # Fill as much of b as the chunks allow: most chunks are one small
        # file's entry, and a call per chunk was a tenth of an export's time.
        want = len(b)
        done = 0
        buffer = self._buffer
        chunks = self._chunks
        while done < want:
            if not buffer:
                try:
                    buffer = memoryview(next(chunks))
                except StopIteration:
                    break
                continue
            n = min(want - done, len(buffer))
            b[done:done + n] = buffer[:n]
            buffer = buffer[n:]
            done += n
        self._buffer = buffer
        return done

    def close(self) -> None:
        if not self.closed:
            self._chunks.close()  # closes the file being read, if any
        super().close()


def export_changes(layer: str | bytes, found: Iterable[Change], uid_maps: Sequence[IDMap] | None = None,
                   gid_maps: Sequence[IDMap] | None = None, *,
                   stats: dict[bytes, os.stat_result] | None = None,
                   xattr_inodes: tuple[int, frozenset[int]] | None = None) -> io.BufferedReader:
    """The tar stream of ``found`` (from :func:`changes`) read from ``layer``;
    ``stats`` are the lstat results :func:`changes` collected, reused instead
    of asking again; ``xattr_inodes`` (from ``native.inodes_with_xattrs``)
    spares a ``listxattr`` for every entry of that device not in it."""
    root = os.fsencode(layer).rstrip(b"/")
    return io.BufferedReader(TarStream(_stream(root, found, uid_maps, gid_maps, stats, xattr_inodes)), CHUNK)
