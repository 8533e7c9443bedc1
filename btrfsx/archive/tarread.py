"""A fast, strict, streaming tar reader for applying layers.

Python's ``tarfile`` spends more time parsing headers than ``apply_layer``
spends in system calls (issue #6), and in stream mode it takes a corrupt
header after the first member for the end of the archive.  This reader
reads the same members as ``tarfile.open(mode="r|", encoding="utf-8",
errors="surrogateescape")`` does (ustar, v7, GNU long names and base-256
numbers, GNU sparse files, POSIX PAX local and global headers), but raises
:class:`ArchiveError` wherever the archive is damaged instead of ending it
early, and parses PAX records the strict way (as Go's archive/tar and
Python >= 3.11.10 do): a record whose length or framing is wrong is an
error, not the silent end of the header.

End of archive, as tarfile: a zero block, or the stream ending exactly
where a header would start.  Anything after a zero block is not read.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from btrfsx.errors import ArchiveError

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_READ_SIZE = 1 << 18
_CHUNK = 1 << 20
# Go's archive/tar (containers/storage's reader) refuses extension headers
# over 1 MiB; without a bound a hostile layer could make the reader hold
# any amount in memory before its first member.
MAX_EXTENSION = 1 << 20
MAX_EXTENSIONS = 64      # extension headers before one member

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
GNUTYPE_LONGNAME, GNUTYPE_LONGLINK, GNUTYPE_SPARSE = b"L", b"K", b"S"
XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE = b"x", b"g", b"X"

#: as tarfile: the types whose data follows the header (and unknown types)
REGULAR_TYPES = frozenset((REGTYPE, AREGTYPE, CONTTYPE, GNUTYPE_SPARSE))
SUPPORTED_TYPES = frozenset((REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE, DIRTYPE, FIFOTYPE, CONTTYPE, CHRTYPE,
                             BLKTYPE, GNUTYPE_LONGNAME, GNUTYPE_LONGLINK, GNUTYPE_SPARSE))
_PAX_TYPES = frozenset((XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE))
_GNU_TYPES = frozenset((GNUTYPE_LONGNAME, GNUTYPE_LONGLINK, GNUTYPE_SPARSE))

#: name, mode, uid, gid, size, mtime, chksum, type, linkname, magic+version,
#: uname, gname, devmajor, devminor, prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")
_SIGNED = struct.Struct("148b8x356b")


class _Corrupt(Exception):
    """A header field tarfile would call invalid (InvalidHeaderError)."""


def _nti(field: bytes) -> int:
    """tarfile's nti(): octal digits up to the first NUL (surrounding
    whitespace allowed, empty meaning 0), or GNU base-256 after a 0x80
    (positive) or 0xff (negative) byte."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    p = field.find(b"\0")
    if p != -1:
        field = field[:p]
    try:
        return int(field.decode("ascii").strip() or "0", 8)
    except ValueError:
        raise _Corrupt(f"a number field holds {field!r}") from None


def _num(field: bytes) -> int:
    """_nti, faster.  int() of the bytes takes the usual fields (octal
    digits, then NULs or blanks) to what nti does, and refuses all else
    (base-256, a NUL inside), which _nti then decides exactly."""
    try:
        return int(field.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        return _nti(field)


def _nts(field: bytes) -> str:
    p = field.find(b"\0")
    if p != -1:
        field = field[:p]
    return field.decode("utf-8", "surrogateescape")


def _describe(pending: Member | None) -> str | None:
    """The extension header ``pending`` as error messages name it."""
    if pending is None:
        return None
    kind = {GNUTYPE_LONGNAME: "GNU long name", GNUTYPE_LONGLINK: "GNU long link",
            XGLTYPE: "PAX global header"}.get(pending.type, "PAX header")
    return f"the {kind} at byte {pending.offset}"


def _expected(pending: Member | None, offset: int) -> str:
    """The header that starts at ``offset``, as error messages name it."""
    return f"the header that must follow {_describe(pending)}" if pending else f"the header at byte {offset}"


def _block(count: int) -> int:
    """``count`` rounded up to whole blocks (tarfile's _block, negative counts too)."""
    blocks, remainder = divmod(count, BLOCK)
    return (blocks + 1) * BLOCK if remainder else blocks * BLOCK


class Member:
    """One archive member: the attributes of tarfile.TarInfo that a layer
    needs, with the same values."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "uname", "gname",
                 "devmajor", "devminor", "pax_headers", "sparse", "offset", "offset_data", "next_offset")
    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float  # an int from the header, a float from a PAX record
    linkname: str
    uname: str
    gname: str
    devmajor: int
    devminor: int
    pax_headers: dict[str, str]
    # a sparse file's (offset, numbytes) data runs, else None; an old GNU
    # sparse header holds (runs, extended, realsize) here until _proc_sparse
    sparse: list[tuple[int, int]] | None
    offset: int
    offset_data: int
    next_offset: int

    def isreg(self) -> bool:
        return self.type in REGULAR_TYPES

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def ischr(self) -> bool:
        return self.type == CHRTYPE

    def isblk(self) -> bool:
        return self.type == BLKTYPE

    def isfifo(self) -> bool:
        return self.type == FIFOTYPE

    def issparse(self) -> bool:
        return self.sparse is not None

    def __repr__(self) -> str:
        return f"<Member {self.name!r} type={self.type!r} size={self.size}>"


class TarReader:
    """Members of the tar stream ``stream`` in order (iterate); the data of
    the current member through :meth:`chunks`.  Data left unread is skipped
    when the next member is asked for."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        # read1 where there is one: what has arrived so far, so that a slow
        # stream's entries are applied as they come, as tarfile's 10 KiB reads did
        self._read_some = getattr(stream, "read1", stream.read)
        self._buf = b""
        self._pos = 0          # index of the next unread byte in _buf
        self._base = 0         # stream offset of _buf[0]
        self._eof = False
        self._next_offset = 0  # where the next header starts (tarfile's TarFile.offset)
        self._done = False
        self._last: Member | None = None       # the member last yielded
        self.pax_headers: dict[str, str] = {}  # global ('g') records so far

    # ------------------------------------------------------------ the stream

    def tell(self) -> int:
        return self._base + self._pos

    def _fill(self, n: int) -> bool:
        """At least ``n`` unread bytes in the buffer, or False at the end."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos:]]
        self._base += self._pos
        self._pos = 0
        while have < n and not self._eof:
            more = self._read_some(max(_READ_SIZE, n - have))
            if not more:
                self._eof = True
                break
            parts.append(more)
            have += len(more)
        self._buf = b"".join(parts)
        return have >= n

    def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        if len(self._buf) - self._pos < n:
            self._fill(n)
        pos = self._pos
        data = self._buf[pos:pos + n]
        self._pos = pos + len(data)
        return data

    def _skip(self, n: int) -> bool:
        """Skip ``n`` bytes; False if the stream ends first."""
        while n > 0:
            have = len(self._buf) - self._pos
            if have >= n:
                self._pos += n
                return True
            n -= have
            self._base += len(self._buf)
            self._buf, self._pos = b"", 0
            if self._eof:
                return False
            more = self._read_some(min(max(n, _READ_SIZE), _CHUNK))
            if not more:
                self._eof = True
                return False
            self._buf = more
        return True

    def _seek(self, offset: int, m: Member) -> None:
        """Move forward to stream ``offset`` (tarfile's stream seeks forward
        only), within or past the data of member ``m``."""
        here = self.tell()
        if offset < here:
            raise ArchiveError(f"cannot read the layer tarball: the data of {m.name!r} overlaps the next header "
                               f"(byte {offset}, already at {here})")
        if not self._skip(offset - here):
            raise self._truncated(self._in_data(m))

    def _end(self) -> int:
        """Where the stream ended, once it has: the buffer holds its last bytes."""
        return self._base + len(self._buf)

    def _truncated(self, inside: str) -> ArchiveError:
        """The error for the stream ending inside ``inside``."""
        return ArchiveError(f"the layer tarball is truncated at byte {self._end()}, inside {inside}")

    def _in_data(self, m: Member) -> str:
        """Where in the data of ``m`` (or in its padding) the stream ended."""
        stored = m.size if m.sparse is None else sum(numbytes for _, numbytes in m.sparse)
        done = self._end() - m.offset_data
        if done >= stored:
            return f"the padding after the contents of {m.name!r}"
        return f"the contents of {m.name!r} ({max(done, 0)} of {stored} bytes)"

    # ------------------------------------------------------------ headers

    def _header(self, pending: Member | None) -> Member | None:
        """The next header block, parsed as tarfile's frombuf; None at the
        end of the archive (only where no extension header is ``pending``)."""
        offset = self._base + self._pos
        if len(self._buf) - self._pos < BLOCK and not self._fill(BLOCK):
            rest = len(self._buf) - self._pos
            if rest == 0 and pending is None:
                if offset == 0:
                    raise ArchiveError("the layer tarball is empty")
                return None
            raise self._truncated(f"{_expected(pending, offset)} ({rest} of {BLOCK} bytes)")
        buf, pos = self._buf, self._pos
        self._pos = pos + BLOCK
        (name, mode, uid, gid, size, mtime, chksum, type_, linkname, _magic, uname, gname, devmajor, devminor,
         prefix) = _HEADER.unpack_from(buf, pos)
        block = buf[pos:pos + BLOCK]
        if block == _ZERO_BLOCK:
            if pending is not None:
                raise ArchiveError(f"cannot read the layer tarball: a zero block at byte {offset}, where "
                                   f"{_expected(pending, offset)} was expected")
            return None
        m = Member()
        try:
            # _num inline: this is the hottest loop of an apply
            try:
                chk = int(chksum.rstrip(b"\0 ") or b"0", 8)
                m.mode = int(mode.rstrip(b"\0 ") or b"0", 8)
                m.uid = int(uid.rstrip(b"\0 ") or b"0", 8)
                m.gid = int(gid.rstrip(b"\0 ") or b"0", 8)
                m.size = int(size.rstrip(b"\0 ") or b"0", 8)
                m.mtime = int(mtime.rstrip(b"\0 ") or b"0", 8)
                m.devmajor = int(devmajor.rstrip(b"\0 ") or b"0", 8)
                m.devminor = int(devminor.rstrip(b"\0 ") or b"0", 8)
            except ValueError:
                chk = _nti(chksum)
                m.mode, m.uid, m.gid = _nti(mode), _nti(uid), _nti(gid)
                m.size, m.mtime = _nti(size), _nti(mtime)
                m.devmajor, m.devminor = _nti(devmajor), _nti(devminor)
            if chk != 256 + sum(block) - sum(chksum) and chk != 256 + sum(_SIGNED.unpack(block)):
                raise _Corrupt(f"bad checksum {chk}")
        except _Corrupt as e:
            where = f" ({_expected(pending, offset)})" if pending else ""
            raise ArchiveError(f"cannot read the layer tarball: corrupt header at byte {offset}{where}: {e}") from None
        p = name.find(b"\0")
        m.name = (name[:p] if p != -1 else name).decode("utf-8", "surrogateescape")
        m.type = type_
        m.linkname = _nts(linkname) if linkname[0] else ""
        m.uname = _nts(uname) if uname[0] else ""
        m.gname = _nts(gname) if gname[0] else ""
        m.pax_headers = {}
        m.sparse = None
        m.offset = offset
        m.offset_data = offset + BLOCK
        # old V7 tar: a directory is a regular file whose name ends in '/'
        if type_ == AREGTYPE and m.name.endswith("/"):
            m.type = type_ = DIRTYPE
        if type_ == GNUTYPE_SPARSE:
            self._old_sparse_structs(m, block)
        if type_ == DIRTYPE:
            m.name = m.name.rstrip("/")
        if prefix[0] and type_ not in _GNU_TYPES:  # ustar's split long name
            m.name = _nts(prefix) + "/" + m.name
        return m

    def _old_sparse_structs(self, m: Member, block: bytes) -> None:
        try:
            structs = [(_num(block[p:p + 12]), _num(block[p + 12:p + 24])) for p in range(386, 482, 24)]
            m.sparse = (structs, bool(block[482]), _num(block[483:495]))  # type: ignore[assignment]  # see Member
        except _Corrupt as e:
            raise ArchiveError(f"cannot read the layer tarball: GNU sparse member {m.name!r}: {e}") from None

    def _pax_records(self, data: bytes, size: int, owner: Member) -> list[tuple[str, str]]:
        """The records of a PAX header's ``size`` bytes: "LEN KEY=VALUE\\n",
        LEN counting the whole record.  Trailing NULs end them (as tarfile)."""
        records = []
        pos = 0
        end = min(size, len(data))
        while pos < end and data[pos]:
            space = data.find(b" ", pos, pos + 21)
            digits = data[pos:space] if space > pos else b""
            if not digits.isdigit():
                raise ArchiveError(f"cannot read the layer tarball: PAX header at byte {owner.offset}: "
                                   f"record at {pos} does not start with its length")
            length = int(digits)
            last = pos + length - 1
            # the shortest record is "5 k=\n"
            if length < 5 or last >= end or data[last] != 0x0A:
                raise ArchiveError(f"cannot read the layer tarball: PAX header at byte {owner.offset}: "
                                   f"record at {pos} has a bad length {length} (expected a newline "
                                   f"at its end within the header's {size} bytes)")
            equals = data.find(b"=", space + 1, last)
            if equals <= space + 1:
                raise ArchiveError(f"cannot read the layer tarball: PAX header at byte {owner.offset}: "
                                   f"record at {pos} has no KEY=VALUE")
            records.append((data[space + 1:equals].decode("utf-8", "surrogateescape"),
                            data[equals + 1:last].decode("utf-8", "surrogateescape")))
            pos += length
        return records

    def _extension_data(self, h: Member) -> bytes:
        if h.size < 0:
            raise ArchiveError(f"cannot read the layer tarball: extension header at byte {h.offset} "
                               f"has a negative size {h.size}")
        if h.size > MAX_EXTENSION:
            raise ArchiveError(f"cannot read the layer tarball: extension header at byte {h.offset} "
                               f"holds {h.size} bytes, more than the {MAX_EXTENSION} allowed")
        data = self._read(_block(h.size))
        if len(data) < _block(h.size):
            what = f"the records of {_describe(h)}" if h.type in _PAX_TYPES else _describe(h)
            if len(data) >= h.size:
                raise self._truncated(f"the padding after {what}")
            raise self._truncated(f"{what} ({len(data)} of {h.size} bytes)")
        return data

    def _member(self) -> Member | None:
        """tarfile's TarInfo.fromtarfile: extension headers (GNU long names,
        PAX) are read up to the member they describe, then applied innermost
        first, so that where two give the same field the outer one wins."""
        chain: list[tuple[bytes, Any, Any]] = []  # (type, name or PAX records, PAX data or None)
        h = None
        while True:
            h = self._header(h)
            if h is None:
                return None
            t = h.type
            if len(chain) >= MAX_EXTENSIONS and (t in _PAX_TYPES or t == GNUTYPE_LONGNAME
                                                 or t == GNUTYPE_LONGLINK):
                raise ArchiveError(f"cannot read the layer tarball: more than {MAX_EXTENSIONS} extension "
                                   f"headers in a row before byte {h.offset}")
            if t in _PAX_TYPES:
                data = self._extension_data(h)
                records = self._pax_records(data, h.size, h)
                pax = self.pax_headers if t == XGLTYPE else self.pax_headers.copy()
                pax.update(records)
                chain.append((t, pax, data))
            elif t == GNUTYPE_LONGNAME or t == GNUTYPE_LONGLINK:
                chain.append((t, _nts(self._extension_data(h)), None))
            else:
                break
        m = h
        if t == GNUTYPE_SPARSE:
            self._proc_sparse(m)
        else:
            m.next_offset = m.offset_data + (_block(m.size) if t in REGULAR_TYPES or t not in SUPPORTED_TYPES
                                             else 0)
            if self.pax_headers:
                self._apply_pax(m, self.pax_headers)
            if m.type == DIRTYPE:
                m.name = m.name.rstrip("/")
        for t, value, data in reversed(chain):
            if t == GNUTYPE_LONGNAME:
                m.name = value
                if m.type == DIRTYPE:
                    m.name = m.name.removesuffix("/")
            elif t == GNUTYPE_LONGLINK:
                m.linkname = value
            else:
                pax = value
                if "GNU.sparse.map" in pax or "GNU.sparse.size" in pax or (
                        pax.get("GNU.sparse.major") == "1" and pax.get("GNU.sparse.minor") == "0"):
                    self._pax_sparse(m, pax, data)
                if t != XGLTYPE:
                    self._apply_pax(m, pax, own=True)
                    if "size" in pax:
                        m.next_offset = m.offset_data + (_block(m.size) if m.type in REGULAR_TYPES
                                                         or m.type not in SUPPORTED_TYPES else 0)
        return m

    def _apply_pax(self, m: Member, pax: dict[str, str], own: bool = False) -> None:
        """tarfile's _apply_pax_info: PAX records over the header's fields.
        ``own``: ``pax`` is this member's alone (a local header's), so that
        it need not be copied."""
        for key, value in pax.items():
            if key == "path":
                m.name = value.rstrip("/")
            elif key == "mtime":
                try:
                    m.mtime = float(value)
                except ValueError:
                    m.mtime = 0
            elif key == "linkpath":
                m.linkname = value
            elif key in ("uid", "gid", "size"):
                try:
                    number = int(value)
                except ValueError:
                    number = 0
                setattr(m, key, number)
            elif key == "uname":
                m.uname = value
            elif key == "gname":
                m.gname = value
            elif key == "GNU.sparse.name":
                m.name = value
            elif key in ("GNU.sparse.size", "GNU.sparse.realsize"):
                try:
                    m.size = int(value)
                except ValueError:
                    raise ArchiveError(f"member {m.name!r}: PAX record {key}={value!r} is not a number") from None
        m.pax_headers = pax if own else pax.copy()

    # ------------------------------------------------------------ sparse files

    def _proc_sparse(self, m: Member) -> None:
        """An old GNU sparse member ('S'): its map in the header and in
        extension blocks after it (tarfile's _proc_sparse)."""
        structs, extended, realsize = cast("tuple[list[tuple[int, int]], bool, int]", m.sparse)
        while extended:
            block = self._read(BLOCK)
            if len(block) < BLOCK:
                raise self._truncated(f"the sparse map of {m.name!r}")
            for p in range(0, 504, 24):
                try:
                    offset, numbytes = _num(block[p:p + 12]), _num(block[p + 12:p + 24])
                except _Corrupt as e:
                    raise ArchiveError(f"GNU sparse member {m.name!r}: bad map entry: {e}") from None
                if offset and numbytes:
                    structs.append((offset, numbytes))
            extended = bool(block[504])
        m.sparse = structs
        m.offset_data = self.tell()
        m.next_offset = m.offset_data + _block(m.size)
        m.size = realsize

    def _pax_sparse(self, m: Member, pax: dict[str, str], data: bytes) -> None:
        """GNU's PAX sparse formats 0.1, 0.0 and 1.0 (tarfile's _proc_gnusparse_*)."""
        try:
            if "GNU.sparse.map" in pax:
                numbers = [int(x) for x in pax["GNU.sparse.map"].split(",")]
                m.sparse = list(zip(numbers[::2], numbers[1::2]))
            elif "GNU.sparse.size" in pax:
                offsets = [int(x) for x in re.findall(br"\d+ GNU.sparse.offset=(\d+)\n", data)]
                numbytes = [int(x) for x in re.findall(br"\d+ GNU.sparse.numbytes=(\d+)\n", data)]
                m.sparse = list(zip(offsets, numbytes))
            else:
                numbers = []
                block = self._read(BLOCK)
                fields, _, rest = block.partition(b"\n")
                count = int(fields)
                while len(numbers) < count * 2:
                    if b"\n" not in rest:
                        more = self._read(BLOCK)
                        if len(more) < BLOCK:
                            raise self._truncated(f"the sparse map of {m.name!r}")
                        rest += more
                    number, _, rest = rest.partition(b"\n")
                    numbers.append(int(number))
                m.offset_data = self.tell()
                m.sparse = list(zip(numbers[::2], numbers[1::2]))
        except ValueError:
            raise ArchiveError(f"cannot read the layer tarball: the GNU sparse map of {m.name!r} "
                               f"is not a list of numbers") from None

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Member]:
        while not self._done:
            if self._next_offset != self._base + self._pos and self._next_offset:
                assert self._last is not None  # a next offset is set from a member
                self._seek(self._next_offset, self._last)
            m = self._member()
            if m is None:
                self._done = True
                return
            self._next_offset = m.next_offset
            self._last = m
            yield m

    def chunks(self, m: Member, size: int = _CHUNK) -> Iterator[memoryview | bytes]:
        """The data of regular member ``m``, the one last yielded, in pieces
        of at most ``size`` bytes; ArchiveError if the stream ends first."""
        if m.sparse is not None:
            yield from self._sparse_chunks(m, size)
            return
        remaining = m.size
        if remaining <= 0:
            if remaining < 0:
                raise ArchiveError(f"member {m.name!r} has a negative size {remaining}")
            return
        if self._base + self._pos != m.offset_data:
            self._seek(m.offset_data, m)
        while remaining:
            have = len(self._buf) - self._pos
            if have < remaining and have < size:
                if not self._fill(min(remaining, size)):
                    have = len(self._buf) - self._pos
                    if have == 0:
                        raise self._truncated(f"the contents of {m.name!r} ({m.size - remaining} of {m.size} "
                                              "bytes)")
                have = len(self._buf) - self._pos
            n = min(have, remaining, size)
            pos = self._pos
            self._pos = pos + n
            remaining -= n
            yield memoryview(self._buf)[pos:pos + n]

    def _sparse_chunks(self, m: Member, size: int) -> Iterator[memoryview | bytes]:
        """tarfile's _FileInFile over a sparse map: data runs from the
        archive, holes as zeros, in file order."""
        assert m.sparse is not None  # chunks() calls this for sparse members only
        runs: list[tuple[bool, int, int, int | None]] = []
        last, real = 0, m.offset_data
        for offset, numbytes in m.sparse:
            if offset > last:
                runs.append((False, last, offset, None))
            runs.append((True, offset, offset + numbytes, real))
            real += numbytes
            last = offset + numbytes
        if last < m.size:
            runs.append((False, last, m.size, None))
        position, index = 0, 0
        while position < m.size:
            for _ in range(len(runs)):
                is_data, start, stop, source = runs[index]
                if start <= position < stop:
                    break
                index = (index + 1) % len(runs)
            else:
                raise ArchiveError(f"cannot read the layer tarball: the sparse map of {m.name!r} "
                                   f"does not cover byte {position}")
            n = min(size, stop - position, m.size - position)
            if is_data:
                assert source is not None
                self._seek(source + position - start, m)
                data = self._read(n)
                if len(data) < n:
                    raise self._truncated(self._in_data(m))
                yield data
            else:
                yield bytes(n)
            position += n
