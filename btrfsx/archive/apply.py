"""Apply a layer tarball to a directory tree, safely (containers/storage's
``ApplyUncompressedLayer``/``UnpackLayer`` semantics).

Safety does not rest on string checks alone: every entry's parent directory
is opened with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` from the
layer root, and the entry itself is made, replaced or deleted relative to
that directory fd without following a final symlink.  A path that would
leave the layer, or pass through a symlink, fails in the kernel.
"""

from __future__ import annotations

import decimal
import errno
import gzip
import io
import logging
import os
import stat
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import closing
from typing import BinaryIO, Literal, cast, overload

from btrfsx import _ioctl
from btrfsx._fd import DIR_FLAGS, open_dir
from btrfsx.archive.export import WHITEOUT_PREFIX
from btrfsx.archive.tarread import Member, TarReader
from btrfsx.errors import ArchiveError, UnsafeArchiveError
from btrfsx.idmap import IDMap, to_host

log = logging.getLogger("btrfsx.archive")

OPAQUE = WHITEOUT_PREFIX + WHITEOUT_PREFIX + ".opq"
_AUFS_META = WHITEOUT_PREFIX + WHITEOUT_PREFIX
_BENEATH = (_ioctl.RESOLVE_BENEATH | _ioctl.RESOLVE_NO_SYMLINKS | _ioctl.RESOLVE_NO_MAGICLINKS
            | _ioctl.RESOLVE_NO_XDEV)
_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_TAIL = b"\x2a\x4d\x18"  # a skippable frame's magic after its first byte, 0x5?


class _Prefixed(io.RawIOBase):
    """``head`` then the rest of ``stream``: undoes the peek at the magic
    bytes.  Counts the bytes it hands on (where a gzip stream was cut), and
    keeps the OSError the stream raised: that one is the input's, not the
    entry's being applied when it came."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head = head
        self._stream = stream
        self.count = 0
        self.failure: OSError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            self.count += n
            return n
        try:
            data = self._stream.read(len(b))
        except OSError as e:
            self.failure = e
            raise
        n = len(data)
        b[:n] = data
        self.count += n
        return n


# what the zstd frame tracker expects next
_MAGIC, _DESCRIPTOR, _BLOCK, _SKIPPABLE_SIZE = range(4)
_ZSTD_FRAME = 0xFD2FB528
_SKIPPABLE_FRAME = 0x184D2A50  # to 0x184D2A5F
_DICTIONARY_ID_SIZE = (0, 1, 2, 4)
_TRUNCATED_ZSTD = "the zstd stream is truncated: it ends inside a frame, after {} compressed bytes"
_NOT_A_FRAME = "the zstd stream is corrupt: byte {} starts neither a zstd frame nor a skippable frame"


class _ZstdFrames:
    """The bytes of a zstd stream, handed on unchanged, its frames followed
    as they pass (RFC 8878, section 3.1): python-zstandard's stream_reader
    takes input that ends inside a frame for the end of the data, so that a
    cut stream would apply as a shorter layer, or an empty one.  Only the
    headers are parsed; block contents, skippable frames' data and
    checksums are skipped by count, so that a read costs a few operations
    per block (up to 128 KiB of data each), not per byte."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.count = 0          # bytes handed on
        self._skip = 0          # bytes still to pass before the next header
        self._want = _MAGIC     # the header that comes next, ...
        self._need = 4          # ... its length,
        self._part = b""        # its bytes so far, when a read ended inside it,
        self._at = 0            # and where it starts
        self._checksum = False  # the current frame ends in a 4-byte checksum

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        size = len(data)
        if not size:
            if n:
                self._check_end()
            return data
        pos = self._skip
        if pos < size:
            pos = self._headers(data, pos)
        self._skip = pos - size
        self.count += size
        return data

    def _headers(self, data: bytes, pos: int) -> int:
        """Parse the headers of ``data`` from ``pos`` on; where the next one
        starts (beyond ``data`` when a block continues in the next read)."""
        size = len(data)
        while pos < size:
            if not self._part:
                self._at = self.count + pos
            need = self._need - len(self._part)
            if pos + need > size:
                self._part += data[pos:]
                return size
            header = self._part + data[pos:pos + need] if self._part else data[pos:pos + need]
            self._part = b""
            pos += need + self._parse(header)
        return pos

    def _parse(self, header: bytes) -> int:
        """Take in the header expected next; the count of bytes between it
        and the next header."""
        want = self._want
        if want == _BLOCK:
            fields = int.from_bytes(header, "little")
            kind = (fields >> 1) & 3
            if kind == 3:
                raise ArchiveError(f"the zstd stream is corrupt: the block at byte {self._at} has the "
                                   "reserved block type 3")
            skip = 1 if kind == 1 else fields >> 3  # an RLE block holds the one byte it repeats
            if fields & 1:  # the frame's last block
                if self._checksum:
                    skip += 4
                self._want, self._need = _MAGIC, 4
            return skip
        if want == _MAGIC:
            magic = int.from_bytes(header, "little")
            if magic == _ZSTD_FRAME:
                self._want, self._need = _DESCRIPTOR, 1
            elif magic & 0xFFFFFFF0 == _SKIPPABLE_FRAME:
                self._want, self._need = _SKIPPABLE_SIZE, 4
            else:
                raise ArchiveError(_NOT_A_FRAME.format(self._at))
            return 0
        if want == _DESCRIPTOR:
            descriptor = header[0]
            if descriptor & 0x08:
                raise ArchiveError(f"the zstd stream is corrupt: the frame at byte {self._at - 4} sets the "
                                   "reserved bit of its header")
            self._checksum = bool(descriptor & 0x04)
            single_segment = descriptor & 0x20
            content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            self._want, self._need = _BLOCK, 3
            # the window descriptor (which a single-segment frame has not),
            # the dictionary id and the content size
            return (0 if single_segment else 1) + _DICTIONARY_ID_SIZE[descriptor & 3] + content_size
        self._want, self._need = _MAGIC, 4  # the skippable frame's size read: its data, then a frame
        return int.from_bytes(header, "little")

    def _check_end(self) -> None:
        """ArchiveError unless the stream ended where a frame may start."""
        if self._want == _MAGIC and not self._skip:
            part = self._part
            if not part:
                return
            if not (_ZSTD_MAGIC.startswith(part)
                    or (part[0] & 0xF0 == 0x50 and _SKIPPABLE_TAIL.startswith(part[1:]))):
                raise ArchiveError(_NOT_A_FRAME.format(self._at))
        raise ArchiveError(_TRUNCATED_ZSTD.format(self.count))


def _open(stream: BinaryIO) -> tuple[BinaryIO, str, _Prefixed]:
    """The tar bytes of an uncompressed, gzip or zstd stream (told apart by
    their first bytes), the compression ("tar" for none) and the reader of
    ``stream`` under the decompression."""
    head = b""
    while len(head) < 4:
        more = stream.read(4 - len(head))
        if not more:
            break
        head += more
    source = _Prefixed(head, stream)
    raw = cast(BinaryIO, io.BufferedReader(source, _CHUNK))
    if head.startswith(_GZIP_MAGIC):
        return decompressor(raw, "gzip"), "gzip", source
    # and one that ends inside its first magic number: a truncated zstd stream, not a tar
    if ((len(head) >= 2 and _ZSTD_MAGIC.startswith(head))
            or (len(head) == 4 and head[0] & 0xF0 == 0x50 and head[1:] == _SKIPPABLE_TAIL)):
        return decompressor(raw, "zstd"), "zstd", source
    return raw, "tar", source


def decompressor(raw: BinaryIO, compression: str) -> BinaryIO:
    """The tar bytes of ``raw``, compressed with ``compression`` ("gzip",
    "zstd", or "tar" for none): btrfsx's one decompressor, that of
    :func:`apply_layer` once it has told the compression from the first
    bytes, and of OCI imports, which know it from the media type.  A
    truncated or corrupt zstd stream raises ArchiveError (saying so and
    where: python-zstandard alone takes a frame cut short for the end of
    the stream); the other errors are those of :func:`stream_errors`."""
    if compression == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if compression == "zstd":
        import zstandard
        frames = cast(BinaryIO, _ZstdFrames(raw))
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(frames, read_across_frames=True))
    if compression == "tar":
        return raw
    raise ValueError(f"unknown compression {compression!r}: expected 'gzip', 'zstd' or 'tar'")


def decompressed(stream: BinaryIO) -> BinaryIO:
    """The tar bytes of an uncompressed, gzip or zstd stream (told apart by
    their first bytes)."""
    return _open(stream)[0]


def _clean(name: str, what: str) -> str:
    """A tar name as a path relative to the layer root, as Go's
    filepath.Clean after dropping a leading '/'; UnsafeArchiveError if it
    climbs above the root."""
    if "\0" in name:
        raise UnsafeArchiveError(f"{what} {name!r} contains a NUL byte")
    # already clean (no empty, "." or ".." part): as it is, without the split
    if (name and name[0] != "/" and name[-1] not in "/." and "//" not in name and "/." not in name
            and not name.startswith(("./", ".."))):
        return name
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeArchiveError(f"{what} {name!r} leads outside the layer")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _mtime_ns(info: Member) -> int:
    """The entry's mtime to the nanosecond where a PAX record carries it
    (tarfile's own float loses the last digits)."""
    text = info.pax_headers.get("mtime")
    if text:
        # the usual "SECONDS.FRACTION" without Decimal, which costs more
        # than the rest of this entry's parsing
        seconds, dot, fraction = text.partition(".")
        if seconds.isdigit() and seconds.isascii() and (not dot or (fraction.isdigit() and fraction.isascii())):
            return int(seconds) * 1_000_000_000 + (int(fraction[:9].ljust(9, "0")) if fraction else 0)
        try:
            return int(decimal.Decimal(text).scaleb(9).to_integral_value(rounding=decimal.ROUND_FLOOR))
        except decimal.InvalidOperation:
            pass
    return int(info.mtime) * 1_000_000_000


class _Applier:
    def __init__(self, root_fd: int, uid_maps: Sequence[IDMap] | None, gid_maps: Sequence[IDMap] | None,
                 source: _Prefixed | None = None):
        self.root_fd = root_fd
        self.source = source
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        self.size = 0
        self.unpacked: set[str] = set()
        self.dirs: list[tuple[str, Member]] = []
        self._fds: OrderedDict[str, int] = OrderedDict()  # open parent directories, LRU

    # ------------------------------------------------------------ directories

    @overload
    def parent_fd(self, rel: str, create: Literal[True] = True) -> int: ...
    @overload
    def parent_fd(self, rel: str, create: bool) -> int | None: ...

    def parent_fd(self, rel: str, create: bool = True) -> int | None:
        """An O_PATH fd of directory ``rel`` (relative to the root), resolved
        beneath the root without following any symlink; made if missing
        (None instead without ``create``)."""
        if rel == "":
            return self.root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        try:
            fd = _ioctl.openat2(self.root_fd, rel, _PATH_DIR, 0, _BENEATH)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EXDEV):
                raise UnsafeArchiveError(f"{rel!r} passes through a symlink or leaves the layer") from None
            if e.errno == errno.ENOTDIR:
                raise ArchiveError(f"{rel!r} is not a directory in the layer") from None
            if e.errno == errno.ENOENT:
                if not create:
                    return None
                # a parent the tar did not list: made as GNU tar does
                up, _, base = rel.rpartition("/")
                os.mkdir(base, 0o755, dir_fd=self.parent_fd(up))
                return self.parent_fd(rel)
            raise
        self._fds[rel] = fd
        if len(self._fds) > 64:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _forget(self, rel: str) -> None:
        """Drop cached fds of ``rel`` and below: it is being removed or replaced."""
        for key in [k for k in self._fds if k == rel or k.startswith(rel + "/")]:
            os.close(self._fds.pop(key))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # ------------------------------------------------------------ removal

    def remove(self, pfd: int, base: str, rel: str) -> None:
        """Remove ``base`` of directory ``pfd`` and all below it, following nothing."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        self._forget(rel)
        if stat.S_ISDIR(st.st_mode):
            dfd = _ioctl.openat2(pfd, base, DIR_FLAGS, 0, _BENEATH)
            try:
                for name in os.listdir(dfd):
                    self.remove(dfd, name, f"{rel}/{name}")
            finally:
                os.close(dfd)
            # an emptied nested subvolume goes with rmdir too (Linux 4.18)
            os.rmdir(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)

    # ------------------------------------------------------------ entries

    def apply(self, info: Member, tar: TarReader) -> None:
        try:
            self._apply(info, tar)
        except (OverflowError, ValueError) as e:
            # ids, times or names out of range for the system calls (a uid of
            # 2**40, an mtime of 1e999, a NUL in an xattr name)
            if isinstance(e, ArchiveError):
                raise
            raise ArchiveError(f"entry {info.name!r} cannot be applied: {e}") from None
        except OSError as e:
            raise self._named(e, info) from None

    def _named(self, e: OSError, info: Member) -> OSError:
        """``e`` (ENOSPC, EROFS, EACCES...) with the entry it failed on: the
        system calls name only the last component, or nothing (a write, an
        fchown).  The input stream's own errors are left as they are, and so
        are those without an errno (gzip's BadGzipFile is an OSError), which
        apply_layer words itself."""
        if e.errno is None or (self.source is not None and e is self.source.failure):
            return e
        return OSError(e.errno, f"entry {info.name!r} cannot be applied: {e.strerror}")

    def _apply(self, info: Member, tar: TarReader) -> None:
        rel = _clean(info.name, "entry")
        parent, _, base = rel.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, base, info.name)
            return
        if rel == "":
            if not info.isdir():
                raise ArchiveError(f"entry {info.name!r} names the layer root but is not a directory")
            self.dirs.append(("", info))
            return
        pfd = self.parent_fd(parent)
        # No stat first: each kind is made with a call that fails with EEXIST
        # rather than follow or overwrite what is there, and only then is
        # that removed (a directory kept for a directory) and the call
        # made again, as GNU tar does.
        if info.isreg():
            self.regular(pfd, base, rel, info, tar)
        elif info.isdir():
            try:
                os.mkdir(base, 0o700, dir_fd=pfd)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(base, dir_fd=pfd, follow_symlinks=False).st_mode):
                    self.remove(pfd, base, rel)
                    os.mkdir(base, 0o700, dir_fd=pfd)
            self.dirs.append((rel, info))
        elif info.issym():
            if "\0" in info.linkname:
                raise UnsafeArchiveError(f"symlink {info.name!r} has a NUL byte in its target")
            self._replacing(pfd, base, rel, lambda: os.symlink(info.linkname, base, dir_fd=pfd))
            self.metadata(pfd, base, info, symlink=True)
        elif info.islnk():
            target = _clean(info.linkname, "hard link target")
            if not target:
                raise UnsafeArchiveError(f"hard link {info.name!r} points at the layer root")
            tparent, _, tbase = target.rpartition("/")

            def link() -> None:
                # the target's directory looked up again after a removal,
                # which may have closed (or removed) it; never made, as
                # the parents of other entries are: the target must exist
                tfd = self.parent_fd(tparent, create=False)
                try:
                    if tfd is None:
                        raise FileNotFoundError
                    os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    raise ArchiveError(f"hard link {info.name!r} points at {info.linkname!r}, which is neither "
                                       "in the layer nor earlier in the tarball") from None
                except PermissionError:
                    if stat.S_ISDIR(os.stat(tbase, dir_fd=tfd, follow_symlinks=False).st_mode):
                        raise ArchiveError(f"hard link {info.name!r} points at {info.linkname!r}, which is a "
                                           "directory") from None
                    raise
            self._replacing(pfd, base, rel, link)
        elif info.ischr() or info.isblk() or info.isfifo():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK if info.isblk() else stat.S_IFIFO
            device = os.makedev(info.devmajor, info.devminor) if not info.isfifo() else 0

            def mknod():
                try:
                    os.mknod(base, kind | 0o600, device, dir_fd=pfd)
                except PermissionError:
                    raise PermissionError(errno.EPERM, "creating a device node needs root") from None
            self._replacing(pfd, base, rel, mknod)
            self.metadata(pfd, base, info)
        else:
            raise ArchiveError(f"entry {info.name!r} has an unsupported tar type {info.type!r}")
        self.unpacked.add(rel)

    def _replacing(self, pfd: int, base: str, rel: str, make) -> None:
        """``make()`` entry ``base`` of ``pfd``; if something is in the way,
        remove it and make again."""
        try:
            make()
        except FileExistsError:
            self.remove(pfd, base, rel)
            make()

    def regular(self, pfd: int, base: str, rel: str, info: Member, tar: TarReader) -> None:
        # once per file of the tarball: a plain try/finally, not _fd.open_file
        # (its context manager costs a few microseconds a file, and an apply
        # of small files is near its target against tar -x)
        try:
            fd = os.open(base, _NEW_FILE, 0o600, dir_fd=pfd)
        except FileExistsError:
            self.remove(pfd, base, rel)
            fd = os.open(base, _NEW_FILE, 0o600, dir_fd=pfd)
        try:
            for chunk in tar.chunks(info, _CHUNK):
                written = os.write(fd, chunk)
                if written < len(chunk):
                    _write_all(fd, memoryview(chunk)[written:])
            self.size += info.size
            self.metadata_fd(fd, info)
        finally:
            os.close(fd)

    def whiteout(self, parent: str, base: str, name: str) -> None:
        pfd = self.parent_fd(parent, create=False)
        if pfd is None:
            return  # nothing below a directory that does not exist
        if base == OPAQUE:
            # everything in this directory that this tar did not write goes
            for child in self._list(pfd):
                path = f"{parent}/{child}" if parent else child
                if path not in self.unpacked:
                    self.remove(pfd, child, path)
            return
        if base.startswith(_AUFS_META):
            return  # AUFS bookkeeping (.wh..wh.plnk and the like)
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise UnsafeArchiveError(f"whiteout {name!r} names no entry of its directory")
        self.remove(pfd, target, f"{parent}/{target}" if parent else target)

    def _list(self, pfd: int) -> list[str]:
        dfd = _ioctl.openat2(pfd, ".", DIR_FLAGS, 0, _BENEATH)
        try:
            return os.listdir(dfd)
        finally:
            os.close(dfd)

    # ------------------------------------------------------------ metadata

    def _ids(self, info: Member) -> tuple[int, int]:
        try:
            return to_host(info.uid, self.uid_maps), to_host(info.gid, self.gid_maps)
        except ValueError as e:
            raise ArchiveError(f"entry {info.name!r}: {e}") from None

    def _xattrs(self, info: Member):
        for key, value in info.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                yield key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape")

    def metadata_fd(self, fd: int, info: Member, prune: bool = False) -> None:
        """Owner, then mode (chown clears setuid), xattrs and times, through an
        open fd.  ``prune`` (a directory that existed before) also removes the
        xattrs the entry no longer has, but an SELinux label, which belongs
        to the store rather than to the image."""
        uid, gid = self._ids(info)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, info.mode & 0o7777)
        wanted = dict(self._xattrs(info)) if info.pax_headers else {}
        if prune:
            for key in os.listxattr(fd):
                if key not in wanted and key != "security.selinux":
                    _setxattr(lambda: os.removexattr(fd, key), key, info.name)  # noqa: B023 (called at once)
        for key, value in wanted.items():
            _setxattr(lambda: os.setxattr(fd, key, value), key, info.name)  # noqa: B023 (called at once)
        ns = _mtime_ns(info)
        os.utime(fd, ns=(ns, ns))

    def metadata(self, pfd: int, base: str, info: Member, symlink: bool = False) -> None:
        """The same for an entry that cannot be opened (symlink, device, FIFO)."""
        uid, gid = self._ids(info)
        os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if not symlink:
            os.chmod(base, info.mode & 0o7777, dir_fd=pfd)  # not a symlink: nothing to follow
        proc = f"/proc/self/fd/{pfd}/{base}"
        if info.pax_headers:
            for key, value in self._xattrs(info):
                _setxattr(lambda: os.setxattr(proc, key, value, follow_symlinks=False),  # noqa: B023 (called at once)
                          key, info.name)
        ns = _mtime_ns(info)
        os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def finish(self) -> None:
        """Directory metadata last, deepest first, so that writing into a
        directory does not undo its mtime and a read-only mode does not
        stand in the way."""
        for rel, info in sorted(self.dirs, key=lambda d: d[0].count("/") + (d[0] != ""), reverse=True):
            fd = (os.dup(self.root_fd) if rel == "" else
                  _ioctl.openat2(self.root_fd, rel, DIR_FLAGS, 0, _BENEATH))
            try:
                self.metadata_fd(fd, info, prune=True)
            except (OverflowError, ValueError) as e:
                raise ArchiveError(f"entry {info.name!r} cannot be applied: {e}") from None
            except OSError as e:
                raise self._named(e, info) from None
            finally:
                os.close(fd)


def stream_errors() -> tuple[type[BaseException], ...]:
    """What reading a corrupt or truncated stream through :func:`decompressor`
    raises (besides ArchiveError), by layer of decoding."""
    import zstandard
    return (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError,
            UnicodeError)


def stream_error(e: BaseException, compression: str, count: int) -> ArchiveError:
    """The error ``e`` of the decompressor of ``compression``, ``count``
    compressed bytes into the stream, in a user's words."""
    if compression == "gzip":
        if isinstance(e, EOFError):
            # raised only once the input is used up: its length is where it was cut
            return ArchiveError(f"the gzip stream is truncated: it ends after {count} compressed bytes")
        if isinstance(e, (zlib.error, gzip.BadGzipFile)):
            return ArchiveError(f"the gzip stream is corrupt: {e}")
    elif compression == "zstd":
        import zstandard
        if isinstance(e, zstandard.ZstdError):
            return ArchiveError(f"the zstd stream is corrupt: {str(e).removeprefix('zstd decompress error: ')}")
    return ArchiveError(f"cannot read the layer tarball: {e}")


def _write_all(fd: int, data) -> None:
    """Write all of ``data`` (what is left after a short write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _setxattr(call, key: str, name: str) -> None:
    try:
        call()
    except OSError as e:
        # as containers/storage: not every filesystem or caller may set every namespace
        if e.errno not in (errno.ENOTSUP, errno.EPERM):
            raise OSError(e.errno, f"extended attribute {key}: {e.strerror}") from None
        log.warning("could not set extended attribute %s on %s: %s", key, name, e)


def apply_layer(root: str | bytes, stream: BinaryIO, uid_maps: Sequence[IDMap] | None = None,
                gid_maps: Sequence[IDMap] | None = None) -> int:
    """Apply the tar (or gzip or zstd tar) ``stream`` to directory ``root``;
    returns the total size of its regular files' contents.  On an error the
    tree is left part-applied: callers wanting all-or-nothing work on a copy."""
    tar_stream, compression, source = _open(stream)
    # the caller's root may be reached through a symlink: followed
    with open_dir(root, follow=True) as root_fd, closing(_Applier(root_fd, uid_maps, gid_maps, source)) as applier:
        try:
            tar = TarReader(tar_stream)
            for info in tar:
                applier.apply(info, tar)
            # The rest of the stream too (the tar's padding, a compressed
            # stream's end), so that a gzip or zstd stream cut or damaged
            # there is an error, wherever its tar ends.
            while tar_stream.read(_CHUNK):
                pass
        except stream_errors() as e:
            raise stream_error(e, compression, source.count) from None
        applier.finish()
        return applier.size
