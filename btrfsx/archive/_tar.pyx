# cython: language_level=3
"""The export's tar header encoder, compiled: one entry's PAX and ustar
blocks, byte for byte what tarfile's PAX writer makes (except for raw
binary extended attribute values, see ``export._header``).

Encoding the header was most of an export's Python time (two 512-byte
checksums and a dozen octal fields per entry); here it is a few hundred
nanoseconds.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memset

import os

cdef enum:
    BLOCK = 512

cdef const char *PAX_NAME = b"././@PaxHeader"

# tarfile's limits for the ustar numeric fields it writes in octal
cdef long long MAX_ID = 0o7777777            # 8 ** 7 - 1
cdef long long MAX_NUMBER = 0o77777777777    # 8 ** 11 - 1


cdef inline void _octal(char *dst, int width, unsigned long long value) noexcept nogil:
    """``"%0*o\\0" % (width - 1, value)``; values are range-checked before."""
    cdef int i = width - 2
    dst[width - 1] = 0
    while i >= 0:
        dst[i] = <char>(48 + (value & 7))
        value >>= 3
        i -= 1


cdef void _block(char *b, const char *name, Py_ssize_t name_len, unsigned long long mode,
                 unsigned long long uid, unsigned long long gid, unsigned long long size,
                 unsigned long long mtime, char kind, const char *link, Py_ssize_t link_len,
                 bint device, unsigned long long devmajor, unsigned long long devminor) noexcept nogil:
    cdef unsigned int checksum = 0
    cdef int i
    memset(b, 0, BLOCK)
    memcpy(b, name, name_len if name_len < 100 else 100)
    _octal(b + 100, 8, mode)
    _octal(b + 108, 8, uid)
    _octal(b + 116, 8, gid)
    _octal(b + 124, 12, size)
    _octal(b + 136, 12, mtime)
    memset(b + 148, 32, 8)
    b[156] = kind
    memcpy(b + 157, link, link_len if link_len < 100 else 100)
    memcpy(b + 257, b"ustar\0", 6)
    memcpy(b + 263, b"00", 2)
    if device:
        _octal(b + 329, 8, devmajor)
        _octal(b + 337, 8, devminor)
    for i in range(BLOCK):
        checksum += <unsigned char>b[i]
    snprintf(b + 148, 8, b"%06o", checksum)   # six digits, NUL, and the space left from above
    b[155] = 32


cdef bint _ascii(bytes s) noexcept:
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(s)):
        if p[i] >= 128:
            return False
    return True


cdef bytes _record(bytes key, bytes value):
    """One PAX record, ``"%d %s=%s\\n"``, its length counting its own digits."""
    cdef Py_ssize_t body = len(key) + len(value) + 3   # " ", "=", "\n"
    cdef Py_ssize_t n = body + 1
    while len(str(n)) + body != n:
        n = len(str(n)) + body
    return str(n).encode() + b" " + key + b"=" + value + b"\n"


cdef bytes _pax_time(long long sec, long long frac):
    cdef char buf[48]
    cdef int n = snprintf(buf, sizeof(buf), b"%lld.%09lld", sec, frac)
    while buf[n - 1] == 48:     # frac is not 0: a digit other than 0 stays
        n -= 1
    return PyBytes_FromStringAndSize(buf, n)


cdef bytes _field(bytes name):
    """The ustar name field: tarfile encodes the name as ASCII with "?" for
    every other character (a decoded character, not a byte)."""
    if _ascii(name):
        return name[:100]
    return os.fsdecode(name).encode("ascii", "replace")[:100]


def encode_header(bytes name not None, bytes kind not None, long long mode, long long uid, long long gid,
                  long long size, long long mtime_ns, bytes linkname=b"", long long devmajor=0,
                  long long devminor=0, list xattrs=None):
    """The header blocks of one tar entry: PAX records first when it needs
    any (a nanosecond mtime, extended attributes as ``(name, value)`` bytes
    pairs, a long or non-ASCII name or link name, numbers too large for
    ustar), then the ustar block.  ``name`` of a directory ends with "/"."""
    cdef list records = []
    cdef long long sec = mtime_ns // 1_000_000_000
    cdef long long frac = mtime_ns - sec * 1_000_000_000
    cdef bint has_mtime = frac != 0
    cdef bytes pax_block = b""
    cdef bytes out
    cdef char *p
    cdef Py_ssize_t records_len, padded
    if len(kind) != 1:
        raise ValueError(f"a tar entry type is one byte, not {kind!r}")
    if has_mtime:
        records.append(_record(b"mtime", _pax_time(sec, frac)))
    if xattrs:
        for key, value in xattrs:
            records.append(_record(b"SCHILY.xattr." + key, value))
    if not _ascii(name) or len(name) > 100:
        records.append(_record(b"path", name))
    if not _ascii(linkname) or len(linkname) > 100:
        records.append(_record(b"linkpath", linkname))
    if not 0 <= uid <= MAX_ID:
        records.append(_record(b"uid", str(uid).encode()))
        uid = 0
    if not 0 <= gid <= MAX_ID:
        records.append(_record(b"gid", str(gid).encode()))
        gid = 0
    if not 0 <= size <= MAX_NUMBER:
        records.append(_record(b"size", str(size).encode()))
        size = 0
    if not 0 <= sec <= MAX_NUMBER:
        if not has_mtime:
            records.append(_record(b"mtime", str(sec).encode()))
        sec = 0
    cdef bint device = kind == b"3" or kind == b"4"
    cdef bytes name_field = _field(name)
    cdef bytes link_field = _field(linkname)
    if records:
        pax = b"".join(records)
        records_len = len(pax)
        padded = (records_len + BLOCK - 1) // BLOCK * BLOCK
        out = PyBytes_FromStringAndSize(NULL, 2 * BLOCK + padded)
        p = PyBytes_AS_STRING(out)
        _block(p, PAX_NAME, 14, 0, 0, 0, records_len, 0, b"x"[0], b"", 0, False, 0, 0)
        memcpy(p + BLOCK, PyBytes_AS_STRING(pax), records_len)
        memset(p + BLOCK + records_len, 0, padded - records_len)
        p += BLOCK + padded
    else:
        out = PyBytes_FromStringAndSize(NULL, BLOCK)
        p = PyBytes_AS_STRING(out)
    _block(p, PyBytes_AS_STRING(name_field), len(name_field), mode, uid, gid, size, sec, kind[0],
           PyBytes_AS_STRING(link_field), len(link_field), device, devmajor, devminor)
    return out
