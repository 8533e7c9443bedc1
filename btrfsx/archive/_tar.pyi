"""Type stub for the compiled tar header encoder (btrfsx/archive/_tar.pyx).

The .pyx holds the full docstring; this stub only gives editors and type
checkers the signature.  The module's one export is :func:`encode_header`
(its helpers are ``cdef`` and invisible from Python).
"""

def encode_header(
    name: bytes,
    kind: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime_ns: int,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The header blocks of one tar entry (PAX records first when it needs
    any, then the ustar block); ``kind`` is one byte, ``xattrs`` are
    ``(name, value)`` pairs without the ``SCHILY.xattr.`` prefix."""
