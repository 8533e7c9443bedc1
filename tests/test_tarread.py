"""btrfsx.archive.tarread against Python's tarfile: on every archive tarfile
reads (written by tarfile in its three formats, by GNU tar in five, by hand
for the corners, and at random by Hypothesis) the reader yields the same
members with the same data, read the way apply_layer used to read them
(``tarfile.open(mode="r|", encoding="utf-8", errors="surrogateescape")``
with a corrupt later header an error); on damaged archives it raises
ArchiveError, also where tarfile in stream mode would quietly stop."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from btrfsx.archive.apply import _mtime_ns
from btrfsx.archive.tarread import MAX_EXTENSION, MAX_EXTENSIONS, TarReader
from btrfsx.errors import ArchiveError

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "btrfsx-hypothesis"))
FUZZ = settings(database=None, max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


# ================================================================ the two readers

def _entry(info, data: bytes | None) -> tuple:
    xattrs = {k: v for k, v in info.pax_headers.items() if k.startswith(("SCHILY.xattr.", "LIBARCHIVE.xattr."))}
    return (info.name, info.type, info.mode, info.uid, info.gid, info.mtime, _mtime_ns(info), info.size,
            info.linkname, info.devmajor, info.devminor, xattrs, dict(info.pax_headers), data)


class _Strict(tarfile.TarInfo):
    """apply_layer's former _StrictTarInfo: a broken later header is an error."""

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            raise ArchiveError(str(e)) from None


def by_tarfile(data: bytes) -> list[tuple]:
    """The members as the tarfile-based apply_layer read them (data of regular files only)."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", errors="surrogateescape",
                      tarinfo=_Strict) as tar:
        for info in tar:
            content = None
            if info.isreg():
                content = tar.extractfile(info).read(info.size)
                if len(content) != info.size:
                    raise ArchiveError(f"short data in {info.name!r}")
            out.append(_entry(info, content))
    return out


def by_tarread(data: bytes, stream=None) -> list[tuple]:
    reader = TarReader(stream or io.BufferedReader(io.BytesIO(data)))
    out = []
    for info in reader:
        content = b"".join(bytes(c) for c in reader.chunks(info, 1000)) if info.isreg() else None
        out.append(_entry(info, content))
    return out


def tarfile_fails(data: bytes) -> bool:
    try:
        by_tarfile(data)
    except Exception:  # noqa: BLE001 -- any failure of the old reader
        return True
    return False


def same(data: bytes) -> list[tuple]:
    expected = by_tarfile(data)
    assert by_tarread(data) == expected
    return expected


class _Trickle(io.RawIOBase):
    """A stream that hands out a few bytes at a time (a slow network)."""

    def __init__(self, data: bytes, step: int = 7):
        self.data, self.step = data, step

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.step, len(self.data))
        b[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


# ================================================================ archives written by tarfile

def _info(name, kind=tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode, info.uid, info.gid, info.mtime = 0o644, 1000, 1000, 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _write(entries, fmt, **kwargs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape",
                      **kwargs) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _corpus(fmt) -> list[tuple]:
    long_dir = "/".join(["directory%02d" % i for i in range(12)])  # 143 characters
    entries = [(_info("top", tarfile.DIRTYPE, mode=0o755), None),
               (_info("top/empty"), b"")]
    entries += [(_info(f"top/size{n}", mode=0o600 + n % 8), bytes(range(256)) * (n // 256) + b"z" * (n % 256))
                for n in (1, 511, 512, 513, 1023, 1024, 1025, 10240, 100_003)]
    entries += [(_info("top/sym", tarfile.SYMTYPE, linkname="size1"), None),
                (_info("top/hard", tarfile.LNKTYPE, linkname="top/size1"), None),
                (_info("top/fifo", tarfile.FIFOTYPE), None),
                (_info("top/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
                (_info("top/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
                (_info("top/caf\u00e9-\u00fc\u4e2d", mode=0o4755), b"unicode\n"),
                (_info(long_dir + "/split-into-prefix"), b"prefix\n")]
    if fmt != tarfile.USTAR_FORMAT:
        entries += [(_info("long/" + "n" * 300), b"long name\n"),
                    (_info("long/" + "d" * 200, tarfile.DIRTYPE), None),
                    (_info("long/sym", tarfile.SYMTYPE, linkname="t" * 250), None),
                    (_info("long/hard", tarfile.LNKTYPE, linkname="long/" + "n" * 300), None),
                    (_info("ids/big", uid=2 ** 30, gid=2 ** 33 + 5), b"big ids\n"),
                    (_info("ids/old", mtime=-(10 ** 10)), b"before 1653\n"),
                    (_info("ids/late", mtime=8 ** 11 + 3), b"after 2242\n"),
                    (_info("non-utf8-caf\udce9"), b"latin-1 name\n"),
                    (_info("sym-to-non-utf8", tarfile.SYMTYPE, linkname="caf\udce9"), None)]
    if fmt == tarfile.PAX_FORMAT:
        entries += [(_info("pax/frac", mtime=1_700_000_000.25), b"fraction\n"),
                    (_info("pax/xattrs", pax_headers={"SCHILY.xattr.user.plain": "value",
                                                     "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff\udc80",
                                                     "SCHILY.xattr.user.empty": "",
                                                     "LIBARCHIVE.xattr.user.b64": "aGVsbG8=",
                                                     "SCHILY.xattr.user.long": "v" * 1000}), b"x\n"),
                    (_info("pax/nsec", pax_headers={"mtime": "1700000000.123456789"}), b"ns\n"),
                    (_info("pax/negative", pax_headers={"mtime": "-1.5"}), b"neg\n"),
                    (_info("pax/dir-xattr", tarfile.DIRTYPE, pax_headers={"SCHILY.xattr.user.d": "1"}), None),
                    (_info("pax/comment", pax_headers={"comment": "= and \n inside"}), b"c\n")]
    return entries


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_tarfile_archives(fmt):
    data = _write(_corpus(fmt), fmt)
    members = same(data)
    assert len(members) == len(_corpus(fmt))
    assert by_tarread(data, _Trickle(data)) == members  # a stream that comes in dribs


def test_global_pax_header():
    data = _write([(_info("a"), b"a\n"), (_info("b", pax_headers={"uid": "7"}), b"b\n")], tarfile.PAX_FORMAT,
                  pax_headers={"comment": "global", "uid": "42", "SCHILY.xattr.user.g": "all"})
    members = same(data)
    assert [(m[0], m[3], m[11]) for m in members] == [("a", 42, {"SCHILY.xattr.user.g": "all"}),
                                                      ("b", 7, {"SCHILY.xattr.user.g": "all"})]


def test_pax_nanoseconds_survive():
    (member,) = same(_write([(_info("f", pax_headers={"mtime": "1700000000.987654321"}), b"")], tarfile.PAX_FORMAT))
    assert member[6] == 1_700_000_000_987_654_321


# ================================================================ archives written by GNU tar

def _gnu_tree(root: str) -> bool:
    """A tree for GNU tar; True if it has xattrs (the filesystem takes user.*)."""
    os.makedirs(f"{root}/d/" + "/".join(["sub%03d" % i for i in range(30)]))
    for n in (0, 1, 511, 512, 513, 4096, 70_000):
        with open(f"{root}/d/f{n}", "wb") as f:
            f.write(os.urandom(n))
    with open(f"{root}/d/" + "long" * 40, "w") as f:
        f.write("long\n")
    with open(f"{root}/d/caf\u00e9", "w") as f:
        f.write("utf-8\n")
    with open(os.fsencode(root) + b"/d/caf\xe9", "w") as f:
        f.write("latin-1\n")
    os.symlink("f1", f"{root}/d/sym")
    os.symlink("x" * 200, f"{root}/d/longsym")
    os.link(f"{root}/d/f1", f"{root}/d/hard")
    os.mkfifo(f"{root}/d/fifo")
    with open(f"{root}/d/sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"in the middle")
        f.seek((3 << 20) - 5)
        f.write(b"tail!")
    os.utime(f"{root}/d/f1", ns=(0, 1_700_000_000_123_456_789))
    try:
        os.setxattr(f"{root}/d/f1", "user.plain", b"value")
        os.setxattr(f"{root}/d/f1", "user.binary", b"\x00\xff\x80")
        return True
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("tar") is None, reason="no GNU tar")
@pytest.mark.parametrize("fmt, sparse", [(f, False) for f in ("gnu", "oldgnu", "posix", "ustar", "v7")]
                         + [(f, True) for f in ("gnu", "oldgnu", "posix")])  # ustar and v7 hold no sparse files
def test_gnu_tar_archives(tmp_path, fmt, sparse):
    has_xattrs = _gnu_tree(str(tmp_path / "src"))
    args = ["tar", f"--format={fmt}", "-cf", "-", "-C", str(tmp_path / "src"), "--numeric-owner"]
    if sparse:
        args.append("--sparse")
    if fmt == "posix" and has_xattrs:
        args.append("--xattrs")
    if fmt in ("ustar", "v7"):  # names and targets these formats cannot hold
        args += ["--exclude=longsym", "--exclude=" + "long" * 40, "--exclude=sub0*"]
    proc = subprocess.run(args + ["d"], capture_output=True)
    assert proc.stdout, proc.stderr
    members = same(proc.stdout)
    names = {m[0] for m in members}
    assert "d/f70000" in names and "d/sym" in names
    if sparse:
        (sp,) = [m for m in members if m[0] == "d/sparse"]
        assert sp[7] == 3 << 20 and sp[13][1 << 20:(1 << 20) + 13] == b"in the middle"
        assert sp[13][-5:] == b"tail!"
    if fmt == "posix" and has_xattrs:
        (f1,) = [m for m in members if m[0] == "d/f1"]
        assert f1[11]["SCHILY.xattr.user.binary"].encode("utf-8", "surrogateescape") == b"\x00\xff\x80"
        assert f1[6] == 1_700_000_000_123_456_789


@pytest.mark.skipif(shutil.which("tar") is None, reason="no GNU tar")
@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
def test_gnu_tar_pax_sparse_versions(tmp_path, version):
    """GNU tar's three PAX encodings of a sparse file's map, which tarfile
    reads (so apply_layer took them) and so does the reader."""
    _gnu_tree(str(tmp_path / "src"))
    proc = subprocess.run(["tar", "--format=posix", "--sparse", f"--sparse-version={version}", "-cf", "-",
                           "-C", str(tmp_path / "src"), "d/sparse", "d/f4096"], capture_output=True, check=True)
    members = same(proc.stdout)
    assert [m[0] for m in members] == ["d/sparse", "d/f4096"]
    expected = bytearray(3 << 20)
    expected[1 << 20:(1 << 20) + 13] = b"in the middle"
    expected[-5:] = b"tail!"
    assert members[0][7] == 3 << 20 and members[0][13] == expected


# ================================================================ corners written by hand

def _header(name=b"f", mode=b"0000644\0", uid=b"0001750\0", gid=b"0001750\0", size=b"00000000000\0",
            mtime=b"14524277400\0", type_=b"0", linkname=b"", magic=b"ustar\x0000", devmajor=b"0000000\0",
            devminor=b"0000000\0", prefix=b"", chksum=None, signed=False) -> bytes:
    block = bytearray(struct.pack("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x", name, mode, uid, gid, size,
                                  mtime, b" " * 8, type_, linkname, magic, b"user", b"group", devmajor, devminor,
                                  prefix))
    if chksum is None:
        total = 256 + sum(struct.unpack("148b8x356b" if signed else "148B8x356B", block))
        chksum = b"%06o\0 " % (total & 0o777777) if total >= 0 else b"\xff" + (total % 256 ** 7).to_bytes(7, "big")
    block[148:156] = chksum
    return bytes(block)


def _data(content: bytes) -> bytes:
    return content + bytes(-len(content) % 512)


END = bytes(1024)


def _pax(records: bytes, type_=b"x") -> bytes:
    return _header(name=b"PaxHeader", type_=type_, size=b"%011o\0" % len(records)) + _data(records)


def _record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


CORNERS = {
    "blank-padded numbers": _header(mode=b"   644 \0", uid=b" 1750  \0", size=b"          3\0") + _data(b"abc") + END,
    "numbers up to the first NUL": _header(mode=b"644\0" + b"9999") + END,
    "empty number fields": _header(mode=b"\0" * 8, uid=b"        ") + END,
    "base-256 ids": _header(uid=b"\x80" + (2 ** 40).to_bytes(7, "big"), gid=b"\x80" + bytes(6) + b"\x07") + END,
    "base-256 negative mtime": _header(mtime=b"\xff" + (256 ** 11 - 10 ** 11).to_bytes(11, "big")) + END,
    "base-256 size": _header(size=b"\x80" + (600).to_bytes(11, "big")) + _data(b"s" * 600) + END,
    "signed checksum": _header(name="caf\u00e9\u00e9\u00e9".encode(), signed=True) + END,
    "v7 directory": _header(name=b"olddir/", type_=b"\0", magic=b"\0" * 8) + END,
    "v7 file": _header(name=b"old", type_=b"\0", magic=b"\0" * 8, size=b"00000000002\0") + _data(b"v7") + END,
    "ustar prefix": _header(name=b"base", prefix=b"a/b/c") + END,
    "contiguous file": _header(type_=b"7", size=b"00000000001\0") + _data(b"7") + END,
    "directory with slashes": _header(name=b"dir///", type_=b"5") + END,
    "end at a block boundary": _header() + _header(name=b"g"),
    "end after one zero block": _header() + bytes(512),
    "garbage after the end": _header() + END + b"garbage" * 100,
    "only zero blocks": END,
    "pax then GNU long name": (_pax(_record("path", "from-pax")) + _header(name=b"././@LongLink", type_=b"L",
                               size=b"00000000010\0") + _data(b"from-gnu\0") + _header(name=b"short") + END),
    "GNU long name then pax": (_header(name=b"././@LongLink", type_=b"L", size=b"00000000010\0")
                               + _data(b"from-gnu\0") + _pax(_record("path", "from-pax")) + _header(name=b"short")
                               + END),
    "pax size over the header's": (_pax(_record("size", "700")) + _header(size=b"00000000001\0")
                                   + _data(b"p" * 700) + END),
    "pax numbers that are not": (_pax(_record("uid", "abc") + _record("mtime", "soon") + _record("size", "0"))
                                 + _header() + END),
    "pax path with trailing slash": _pax(_record("path", "dir//")) + _header(type_=b"5") + END,
    "pax hdrcharset binary": (_pax(b"21 hdrcharset=BINARY\n" + b"13 path=caf\xe9\n" + _record("linkpath", "t"))
                              + _header(type_=b"2") + END),
    "pax linkpath": _pax(_record("linkpath", "x" * 300)) + _header(type_=b"1") + END,
    "pax trailing NULs inside its size": _pax(_record("uid", "5") + b"\0" * 10) + _header() + END,
    "global then local": (_pax(_record("uid", "1") + _record("gid", "2"), b"g") + _pax(_record("uid", "3"))
                          + _header() + _header(name=b"g") + END),
    "unknown type": _header(type_=b"V", size=b"00000000003\0") + _data(b"vol") + _header(name=b"after") + END,
}


@pytest.mark.parametrize("name", list(CORNERS))
def test_corners(name):
    same(CORNERS[name])


def test_corner_values():
    assert by_tarread(CORNERS["base-256 ids"])[0][3:5] == (2 ** 40, 7)
    assert by_tarread(CORNERS["base-256 negative mtime"])[0][5] == -(10 ** 11)
    assert by_tarread(CORNERS["pax then GNU long name"])[0][0] == "from-pax"
    assert by_tarread(CORNERS["GNU long name then pax"])[0][0] == "from-gnu"
    assert by_tarread(CORNERS["pax hdrcharset binary"])[0][0] == "caf\udce9"
    assert by_tarread(CORNERS["v7 directory"])[0][:2] == ("olddir", b"5")
    assert [m[3:5] for m in by_tarread(CORNERS["global then local"])] == [(3, 2), (1, 2)]


# ================================================================ damage

GOOD = _write([(_info("a"), b"a" * 700), (_info("b", pax_headers={"SCHILY.xattr.user.x": "1"}), b"b\n"),
               (_info("c"), b"c\n")], tarfile.PAX_FORMAT)


def _offsets(data: bytes) -> list[int]:
    """Where each header block of ``data`` starts (PAX headers included)."""
    out, pos = [], 0
    while data[pos:pos + 512].strip(b"\0"):
        out.append(pos)
        size = int(data[pos + 124:pos + 136].rstrip(b"\0 ") or b"0", 8)
        pos += 512 + -(-size // 512) * 512
    return out


def _flip_checksum(data: bytes, at: int) -> bytes:
    block = bytearray(data)
    block[at + 148:at + 154] = b"%06o" % ((int(bytes(block[at + 148:at + 154]), 8) + 1) % 0o777777)
    return bytes(block)


def _bad_pax(records: bytes) -> bytes:
    return _pax(records) + _header() + END


DAMAGED = {
    "bad checksum in a later header": _flip_checksum(GOOD, _offsets(GOOD)[-1]),
    "bad checksum in a PAX header": _flip_checksum(GOOD, _offsets(GOOD)[1]),
    "bad checksum in the first header": _flip_checksum(GOOD, 0),
    "truncated header": GOOD[:_offsets(GOOD)[-1] + 100],
    "truncated data": GOOD[:512 + 300],
    "truncated padding": GOOD[:512 + 700 + 10],
    "truncated PAX header data": GOOD[:_offsets(GOOD)[1] + 512 + 10],
    "stream ends after a PAX header": GOOD[:_offsets(GOOD)[1] + 1024],
    "zero block after a PAX header": GOOD[:_offsets(GOOD)[1] + 1024] + END,
    "garbage after a valid member": GOOD[:_offsets(GOOD)[1]] + b"garbage!" * 64 + END,
    "empty stream": b"",
    "half a zero block": _header() + bytes(100),
    "bad octal": _header(mode=b"0000968\0") + END,
    "PAX record too long": _bad_pax(b"99 path=x\n"),
    "PAX record too short": _bad_pax(b"3 path=x\n"),
    "PAX record length zero": _bad_pax(b"0 path=x\n"),
    "PAX record without newline": _bad_pax(b"11 path=xyz"),
    "PAX record without =": _bad_pax(b"10 pathxy\n"),
    "PAX record with an empty key": _bad_pax(b"6 =xyz\n"),
    "PAX record without length": _bad_pax(b"path=x\n"),
    "PAX records then junk": _bad_pax(_record("uid", "1") + b"junk"),
    "GNU long name cut short": _header(name=b"././@LongLink", type_=b"L", size=b"00000001000\0") + b"n" * 600,
    "data overlapping the next header": (_pax(_record("size", "2000")) + _header(size=b"00000000001\0")
                                         + _data(b"x") + END),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_archives_are_archive_errors(name):
    with pytest.raises(ArchiveError):
        by_tarread(DAMAGED[name])


def test_pax_length_errors_name_the_header():
    with pytest.raises(ArchiveError, match=r"PAX header at byte 0: record at 0 has a bad length 99"):
        by_tarread(DAMAGED["PAX record too long"])


# A PAX header at 0 (its records from 512), the member it names at 1024
# (700 bytes of contents from 1536, padded to 2560), a member at 2560.
RECORDS = _record("path", "long/name")
LAID_OUT = (_pax(RECORDS) + _header(name=b"f", size=b"%011o\0" % 700) + _data(b"x" * 700) + _header(name=b"g")
            + END)
TRUNCATED = {
    100: "inside the header at byte 0 (100 of 512 bytes)",
    512 + 5: f"inside the records of the PAX header at byte 0 (5 of {len(RECORDS)} bytes)",
    700: "inside the padding after the records of the PAX header at byte 0",  # the cut of issue #14
    1024: "inside the header that must follow the PAX header at byte 0 (0 of 512 bytes)",
    1024 + 300: "inside the header that must follow the PAX header at byte 0 (300 of 512 bytes)",
    1536: "inside the contents of 'long/name' (0 of 700 bytes)",
    1536 + 250: "inside the contents of 'long/name' (250 of 700 bytes)",
    2236 + 10: "inside the padding after the contents of 'long/name'",
    2560 + 1: "inside the header at byte 2560 (1 of 512 bytes)",
}


@pytest.mark.parametrize("cut", list(TRUNCATED))
def test_a_truncated_tarball_says_where(cut):
    """The byte the stream ends at and what it ends inside, whether the
    contents are read or skipped."""
    expected = f"the layer tarball is truncated at byte {cut}, {TRUNCATED[cut]}"
    for read_contents in (True, False):
        with pytest.raises(ArchiveError) as e:
            if read_contents:
                by_tarread(LAID_OUT[:cut])
            else:
                list(TarReader(io.BytesIO(LAID_OUT[:cut])))
        assert str(e.value) == expected, read_contents
    assert tarfile_fails(LAID_OUT[:cut])


def test_truncated_extension_headers_say_where():
    long_name = b"n" * 300 + b"\0"
    gnu = _header(name=b"././@LongLink", type_=b"L", size=b"%011o\0" % len(long_name)) + _data(long_name)
    with pytest.raises(ArchiveError) as e:
        by_tarread(gnu[:512 + 100])
    assert str(e.value) == "the layer tarball is truncated at byte 612, inside the GNU long name at byte 0 (100 of " \
                           "301 bytes)"
    with pytest.raises(ArchiveError) as e:
        by_tarread(gnu + _header()[:10])
    assert str(e.value) == "the layer tarball is truncated at byte 1034, inside the header that must follow the GNU " \
                           "long name at byte 0 (10 of 512 bytes)"
    with pytest.raises(ArchiveError) as e:
        by_tarread(_header() + _pax(RECORDS, type_=b"g")[:512 + 5])
    assert str(e.value) == ("the layer tarball is truncated at byte 1029, inside the records of the PAX global "
                            f"header at byte 512 (5 of {len(RECORDS)} bytes)")


def test_an_empty_stream_and_the_end_of_an_archive():
    with pytest.raises(ArchiveError, match=r"^the layer tarball is empty$"):
        by_tarread(b"")
    # where a header would start: the end, as tarfile has it
    assert [m[0] for m in by_tarread(LAID_OUT[:2560])] == ["long/name"]


# ================================================================ at random

names = st.text(st.characters(codec="utf-8", exclude_characters="\0", exclude_categories=("Cs",)), min_size=1,
                max_size=120) | st.sampled_from(["a", "d/e", "caf\udce9", "x" * 101, "y/" * 80 + "z"])
member_specs = st.tuples(
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
                     tarfile.CHRTYPE]),
    names, st.integers(0, 0o7777), st.integers(0, 2 ** 40), st.integers(0, 2 ** 40),
    st.one_of(st.integers(-(2 ** 40), 2 ** 40), st.floats(0, 2e9)),
    st.binary(max_size=1100) | st.sampled_from([b"", b"\0" * 512, b"q" * 1536]),
    names,
    st.dictionaries(st.sampled_from(["SCHILY.xattr.user.a", "SCHILY.xattr.security.b", "LIBARCHIVE.xattr.user.c",
                                     "comment", "mtime"]),
                    st.sampled_from(["", "v", "1.5", "1700000000.123456789", "\udcff\udc00", "=\n"]), max_size=3))


def _random_archive(specs, fmt) -> bytes | None:
    entries = []
    for kind, name, mode, uid, gid, mtime, data, link, pax in specs:
        info = _info(name, kind, mode=mode, uid=uid, gid=gid, mtime=mtime)
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = link
        if kind == tarfile.CHRTYPE:
            info.devmajor, info.devminor = mode % 300, uid % 1000
        if fmt == tarfile.PAX_FORMAT:
            info.pax_headers = dict(pax)
        entries.append((info, data if kind == tarfile.REGTYPE else None))
    try:
        return _write(entries, fmt)
    except (ValueError, tarfile.TarError, UnicodeError):
        return None  # not writable in this format


@FUZZ
@given(st.lists(member_specs, max_size=5), st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                                           tarfile.PAX_FORMAT]))
def test_random_archives(specs, fmt):
    data = _random_archive(specs, fmt)
    if data is not None:
        same(data)


@FUZZ
@given(st.lists(member_specs, min_size=1, max_size=4), st.integers(0, 2 ** 20),
       st.one_of(st.none(), st.tuples(st.integers(0, 2 ** 20), st.integers(1, 255))))
def test_random_damage(specs, cut, flip):
    """Cut short, or a byte changed: where the reader takes the archive,
    tarfile takes it too and reads the same; where tarfile fails, the
    reader raises ArchiveError (it also refuses PAX records tarfile 3.11
    skips over)."""
    data = _random_archive(specs, tarfile.PAX_FORMAT)
    if data is None:
        return
    if flip is None:
        data = data[:cut % (len(data) + 1)]
    else:
        at = flip[0] % len(data)
        data = data[:at] + bytes([data[at] ^ flip[1]]) + data[at + 1:]
    try:
        ours = by_tarread(data)
    except ArchiveError:
        if flip is None:  # a cut is refused by both
            assert tarfile_fails(data)
        return
    assert by_tarfile(data) == ours


# ================================================================ through apply_layer

@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_stream_cut_after_its_tar_is_an_error(tmp_path, compression):
    """The reader stops at the tar's end; apply_layer reads the stream to
    its end all the same, so that a compressed stream cut in its last bytes
    is refused as tarfile's 10 KiB reads refused it (mostly)."""
    import gzip

    import zstandard

    from btrfsx.archive.apply import apply_layer
    tar = _write([(_info("a"), b"abc")], tarfile.PAX_FORMAT)
    packed = gzip.compress(tar, mtime=0) if compression == "gzip" else zstandard.ZstdCompressor().compress(tar)
    (tmp_path / "whole").mkdir()
    assert apply_layer(str(tmp_path / "whole"), io.BytesIO(packed)) == 3
    for cut in (3, 6, 12):
        (tmp_path / str(cut)).mkdir()
        with pytest.raises(ArchiveError):
            apply_layer(str(tmp_path / str(cut)), io.BytesIO(packed[:-cut]))


def test_extension_headers_are_bounded():
    """A hostile layer cannot make the reader hold unbounded metadata: an
    extension header over 1 MiB, or an endless run of them, is refused."""
    big = tarfile.TarInfo("f")
    big.pax_headers = {"comment": "x" * (MAX_EXTENSION + 10)}
    data = big.tobuf(tarfile.PAX_FORMAT) + bytes(1024)
    with pytest.raises(ArchiveError, match="more than"):
        list(TarReader(io.BytesIO(data)))
    one = tarfile.TarInfo("g")
    one.pax_headers = {"comment": "y"}
    pax_only = one.tobuf(tarfile.PAX_FORMAT)[:-512]  # the extension header without its member
    data = pax_only * (MAX_EXTENSIONS + 1) + one.tobuf(tarfile.USTAR_FORMAT) + bytes(1024)
    with pytest.raises(ArchiveError, match="in a row"):
        list(TarReader(io.BytesIO(data)))
    ok = pax_only * MAX_EXTENSIONS + one.tobuf(tarfile.USTAR_FORMAT) + bytes(1024)
    assert [m.name for m in TarReader(io.BytesIO(ok))] == ["g"]
