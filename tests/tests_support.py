"""Helpers shared by the test modules."""

import errno
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from btrfsx import Driver, _ioctl


def attached_images() -> set[str]:
    """The backing files of every attached loop device."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                         capture_output=True, text=True).stdout
    return {line.strip().removesuffix(" (deleted)") for line in out.splitlines() if line.strip()}


def mounted_targets() -> set[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    return set(out.split())


def limit_of(home, layer_path) -> int | None:
    """The max_referenced limit of the qgroup of the subvolume at ``layer_path``, after a commit."""
    fd = os.open(home, os.O_RDONLY)
    try:
        _ioctl.sync(fd)
        limits = _ioctl.qgroup_limits(fd, subvolume_id(layer_path))
    finally:
        os.close(fd)
    return limits.max_referenced if limits and limits.flags & _ioctl.QGROUP_LIMIT_MAX_RFER else None


def write_past(path, nbytes: int) -> None:
    """Write ``nbytes`` of incompressible data to ``path`` and fsync it (EDQUOT beyond a limit)."""
    with open(path, "wb") as f:
        f.write(os.urandom(nbytes))
        os.fsync(f.fileno())


def subvolume_id(path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _ioctl.subvolume_id(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- trees and layer chains (OCI, registry, podman)

MiB = 1 << 20


def _xattrs(path) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def tree(root, mtimes: bool = True) -> dict:
    """Every entry below ``root``: type, mode, owner, size, mtime, device,
    symlink target, xattrs, content hash and hard-link group."""
    root = os.fspath(root)
    out: dict[str, dict] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            out[rel] = {
                "type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
                "uid": st.st_uid, "gid": st.st_gid,
                "size": None if stat.S_ISDIR(st.st_mode) else st.st_size,
                "mtime_ns": st.st_mtime_ns if mtimes else None, "rdev": st.st_rdev,
                "target": os.readlink(full) if stat.S_ISLNK(st.st_mode) else None,
                "xattrs": _xattrs(full), "sha256": digest, "links": (),
            }
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
    for group in inodes.values():
        for rel in group:
            out[rel]["links"] = tuple(sorted(group))
    return out


def assert_same_tree(first, second, mtimes: bool = True) -> None:
    a, b = tree(first, mtimes), tree(second, mtimes)
    diffs = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            diffs.append(f"only in {first}: {key}")
        elif key not in a:
            diffs.append(f"only in {second}: {key}")
        elif a[key] != b[key]:
            diffs.append(f"{key}: " + str({f: (a[key][f], b[key][f]) for f in a[key] if a[key][f] != b[key][f]}))
    assert not diffs, "\n".join(diffs)


def _write(path, data: bytes = b"", mode: int = 0o644, owner=None, mtime_ns=None) -> None:
    path = Path(path)
    path.write_bytes(data)
    os.chmod(path, mode)
    if owner:
        os.chown(path, *owner)
    if mtime_ns:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def make_chain(d: Driver, prefix: str = "") -> list[str]:
    """base <- mid <- top, with every kind of entry and change a layer carries."""
    base, mid, top = f"{prefix}base", f"{prefix}mid", f"{prefix}top"
    d.create(base)
    root = Path(d.get(base))
    for sub in ("etc", "usr/bin", "usr/share/doc", "var/lib/app", "gone/deep"):
        (root / sub).mkdir(parents=True)
    _write(root / "etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    _write(root / "etc/shadow", b"root:*:1::::::\n", mode=0o640, owner=(0, 42))
    _write(root / "usr/bin/tool", b"#!/bin/sh\nexit 0\n" * 50, mode=0o4755, mtime_ns=1_600_000_000_123_456_789)
    _write(root / "usr/bin/big", os.urandom(3 * MiB + 17), mode=0o755)   # incompressible, several chunks
    _write(root / "usr/share/doc/README", b"read me\n" * 1000, owner=(1000, 1001))
    _write(root / "usr/share/doc/empty")
    _write(root / "gone/deep/file", b"to be deleted with its directory\n")
    _write(root / "etc/delete-me", b"x")
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-link")
    os.symlink("tool", root / "usr/bin/rel-link")
    os.symlink("/etc/passwd", root / "etc/abs-link")
    os.symlink("/nowhere/at/all", root / "etc/dangling")
    os.mkfifo(root / "var/lib/app/fifo", 0o600)
    os.setxattr(root / "etc/passwd", "user.origin", b"base layer")
    os.setxattr(root / "var/lib/app", "user.dir", b"\x00\x01binary")
    os.chown(root / "var/lib/app", 999, 998)
    os.chmod(root / "var/lib/app", 0o750)

    d.create(mid, base)
    root = Path(d.get(mid))
    _write(root / "etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:999:998::/var/lib/app:/bin/false\n")
    os.setxattr(root / "etc/passwd", "user.origin", b"mid layer")
    os.unlink(root / "etc/delete-me")
    subprocess.run(["rm", "-rf", str(root / "gone")], check=True)
    os.chmod(root / "usr/share/doc/README", 0o600)
    os.chown(root / "usr/share/doc/empty", 5, 6)
    (root / "opt/app").mkdir(parents=True)
    _write(root / "opt/app/run", b"run\n" * 10, mode=0o755)
    os.link(root / "opt/app/run", root / "opt/app/run2")

    d.create(top, mid)
    root = Path(d.get(top))
    os.unlink(root / "usr/bin/big")                          # a base file deleted two layers up
    subprocess.run(["rm", "-rf", str(root / "var/lib/app")], check=True)
    _write(root / "var/lib/app", b"now a file\n")            # a directory replaced by a file
    os.unlink(root / "usr/bin/rel-link")
    os.symlink("tool-link", root / "usr/bin/rel-link")       # a symlink retargeted
    _write(root / "opt/app/config.json", b'{"debug": true}\n', mode=0o600, owner=(999, 998))
    return [base, mid, top]


def driver_at(path) -> Iterator[Driver]:
    """A Driver on ``path`` for a fixture to ``yield from``; closed after the test."""
    d = Driver(path)
    try:
        yield d
    finally:
        d.close()


def members(data: bytes) -> dict[str, tuple]:
    """A layer tar's entries by normalised path: what must match between two
    encodings of one layer (tar format details may differ, and which name of
    a hard-linked file carries the data)."""
    out: dict[str, list] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        for m in t:
            name = m.name.removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            content = hashlib.sha256(t.extractfile(m).read()).hexdigest() if m.isreg() else None
            xattrs = {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            kind = tarfile.REGTYPE if m.type in (tarfile.AREGTYPE, tarfile.LNKTYPE) else m.type
            out[name] = [kind, oct(m.mode), m.uid, m.gid, m.size if m.isreg() else 0,
                         m.mtime,
                         "" if m.islnk() else m.linkname, content, xattrs, ()]
            if m.islnk():
                links[name] = m.linkname.removeprefix("./")
    groups: dict[str, set[str]] = {}
    for name, target in links.items():
        out[name][4], out[name][7] = out[target][4], out[target][7]
        groups.setdefault(target, {target}).add(name)
    for group in groups.values():
        for name in group:
            out[name][9] = tuple(sorted(group))
    return {name: tuple(fields) for name, fields in out.items()}


def need(*tools: str) -> None:
    """Skip unless every one of ``tools`` is on PATH; fail instead where ``CI`` is set."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (bash scripts/bootstrap.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"required in CI: {reason}", pytrace=False)
        pytest.skip(reason)


def drop_deleted_subvolumes(fd: int) -> None:
    """Commit, wait until the cleaner has dropped every deleted subvolume of
    ``fd``'s filesystem (the kernel removes their qgroups then), commit again."""
    _ioctl.sync(fd)
    try:
        _ioctl.subvolume_sync_wait(fd, 0, _ioctl.SUBVOL_SYNC_WAIT_FOR_QUEUED)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTTY):
            raise
    _ioctl.sync(fd)
