"""The export's own tar header encoder writes what tarfile's PAX writer would (byte for
byte, but for raw binary xattr values), and tarfile reads it back."""

import io
import tarfile

import pytest

from btrfsx.archive.export import _header

CASES = [
    ("etc/passwd", tarfile.REGTYPE, {}, "", 12345),
    ("dir/", tarfile.DIRTYPE, {"mtime": "1700000000.123456789"}, "", 0),
    ("link", tarfile.SYMTYPE, {}, "../target", 0),
    ("cap", tarfile.REGTYPE, {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff"}, "", 3),
    ("dev/null", tarfile.CHRTYPE, {"mtime": "1.5"}, "", 0),
    ("dev/sda", tarfile.BLKTYPE, {}, "", 0),
    ("fifo", tarfile.FIFOTYPE, {}, "", 0),
    ("hard", tarfile.LNKTYPE, {}, "etc/passwd", 0),
    ("x" * 150, tarfile.REGTYPE, {}, "", 1),
    ("caf\u00e9", tarfile.REGTYPE, {}, "", 1),
    ("a" * 99, tarfile.SYMTYPE, {"SCHILY.xattr.user.k": "v" * 300}, "b" * 100, 0),
    (".wh.gone", tarfile.REGTYPE, {}, "", 0),
]


@pytest.mark.parametrize("name, kind, pax, linkname, size", CASES, ids=[c[0][:20] for c in CASES])
@pytest.mark.parametrize("mode, uid, gid, mtime", [(0o644, 0, 0, 0), (0o7777, 5, 65534, 1700000000),
                                                   (0o755, 2097151, 1, 8589934591)])
def test_header_matches_tarfile(name, kind, pax, linkname, size, mode, uid, gid, mtime):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, mtime
    info.linkname = linkname
    info.size = size
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 8, 1
    info.pax_headers = dict(pax)
    if "mtime" in pax:
        # the ustar field holds the whole seconds of the PAX time, as in an export
        info.mtime = int(pax["mtime"].partition(".")[0])
    ours = _header(info)
    binary = any(not v.isascii() and v != v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                 for v in pax.values())
    if not binary:
        assert ours == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    # either way tarfile reads back what was meant
    with tarfile.open(fileobj=io.BytesIO(ours + b"\0" * (size + -size % 512) + b"\0" * 1024),
                      encoding="utf-8", errors="surrogateescape") as tar:
        (member,) = tar.getmembers()
    assert member.name == name.rstrip("/")
    expected_mtime = float(pax["mtime"]) if "mtime" in pax else mtime
    assert (member.mode, member.uid, member.gid, member.mtime, member.size) == (mode, uid, gid, expected_mtime, size)
    assert member.linkname == linkname
    for key, value in pax.items():
        assert member.pax_headers[key] == value
    assert "hdrcharset" not in member.pax_headers
