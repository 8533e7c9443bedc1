"""Layer diffs: ``changes``, the OCI layer tar of ``diff``, ``apply_diff`` and
``diff_size``.

Round trips between layers with every kind of change, GNU tar
interoperability, a corpus of hostile tarballs, all-or-nothing application
(an injected read failure, a full disk, a process killed mid-apply and
cleaned up by ``gc``), user-namespace id translation and streaming.
"""

import errno
import gzip
import hashlib
import io
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard

from btrfsx import ArchiveError, Change, ChangeKind, Driver, IDMap, UnsafeArchiveError, _ioctl
from btrfsx.loopback import Loopback

#: every test here applies or exports on loopback filesystems (some through Loopback itself)
pytestmark = pytest.mark.btrfs

ADD, MODIFY, DELETE = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
MiB = 1 << 20


# ---------------------------------------------------------------- helpers

def _xattrs(path) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in sorted(names)}


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def tree(root, root_mtime: bool = True) -> dict:
    """Every entry of the tree at ``root`` ("/" being ``root`` itself) with
    what a layer diff must carry: type, mode, owner, size, mtime to the
    nanosecond, device number, symlink target, xattrs, content hash and
    hard-link group (the other names of its inode within the tree)."""
    root = os.fspath(root)
    out: dict[str, dict] = {}
    inodes: dict[int, list[str]] = {}

    def visit(rel: str) -> None:
        full = root + rel
        st = os.lstat(full)
        key = rel or "/"
        is_dir = stat.S_ISDIR(st.st_mode)
        out[key] = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": oct(stat.S_IMODE(st.st_mode)),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "size": None if is_dir else st.st_size,
            "mtime_ns": None if (key == "/" and not root_mtime) else st.st_mtime_ns,
            "rdev": st.st_rdev,
            "target": os.readlink(full) if stat.S_ISLNK(st.st_mode) else None,
            "xattrs": _xattrs(full),
            "sha256": _sha256(full) if stat.S_ISREG(st.st_mode) else None,
            "links": (),
        }
        if is_dir:
            for name in sorted(os.listdir(full)):
                visit(f"{rel}/{name}")
        elif st.st_nlink > 1:
            inodes.setdefault(st.st_ino, []).append(key)

    visit("")
    for group in inodes.values():
        for key in group:
            out[key]["links"] = tuple(sorted(group))
    return out


def tree_differences(first: dict, second: dict) -> list[str]:
    """What differs between two :func:`tree` results, readably."""
    out = []
    for key in sorted(first.keys() | second.keys()):
        if key not in second:
            out.append(f"only in the first: {key}")
        elif key not in first:
            out.append(f"only in the second: {key}")
        elif first[key] != second[key]:
            fields = {f: (first[key][f], second[key][f]) for f in first[key] if first[key][f] != second[key][f]}
            out.append(f"{key}: {fields}")
    return out


def write(path, data: bytes = b"", mode: int = 0o644) -> None:
    path = Path(path)
    path.write_bytes(data)
    os.chmod(path, mode)


def mkdir(path, mode: int = 0o755) -> None:
    os.mkdir(path)
    os.chmod(path, mode)


CAP_SETUID, CAP_NET_BIND_SERVICE = 7, 10


def capability(*caps: int) -> bytes:
    """A VFS_CAP_REVISION_2 ``security.capability`` value, effective bit set."""
    bits = sum(1 << c for c in caps)
    return struct.pack("<5I", 0x02000001, bits & 0xFFFFFFFF, 0, bits >> 32, 0)


def read_all(stream) -> bytes:
    with stream:
        return stream.read()


def members_of(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as t:
        return t.getmembers()


# tar entries, built with tarfile (PAX format)

def _info(name, type_, mode, uid=0, gid=0, mtime=1_600_000_000):
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.uid, info.gid, info.mtime = uid, gid, mtime
    return info


def reg(name, data=b"data\n", mode=0o644, **kw):
    info = _info(name, tarfile.REGTYPE, mode, **kw)
    info.size = len(data)
    return info, data


def dir_(name, mode=0o755, **kw):
    return _info(name, tarfile.DIRTYPE, mode, **kw), None


def sym(name, target, **kw):
    info = _info(name, tarfile.SYMTYPE, 0o777, **kw)
    info.linkname = target
    return info, None


def hard(name, target, **kw):
    info = _info(name, tarfile.LNKTYPE, 0o644, **kw)
    info.linkname = target
    return info, None


def whiteout(name):
    return reg(name, b"", mode=0)


def tar_bytes(*entries, end: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    data = buf.getvalue()
    if not end:
        # drop the end-of-archive blocks (and the record padding after them)
        last = members_of(data)[-1]
        data = data[:last.offset_data + -(-last.size // 512) * 512]
    return data


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class ChunkStream(io.RawIOBase):
    """A readable stream of the byte strings an iterator yields (held one at a time)."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buf = memoryview(b"")

    def readable(self):
        return True

    def readinto(self, b):
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def big_file_tar(name: str, size: int):
    """A tar of one regular file of ``size`` bytes, generated as it is read."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 1_600_000_000
    yield info.tobuf(tarfile.PAX_FORMAT)
    chunk = os.urandom(MiB)
    remaining = size
    while remaining:
        n = min(MiB, remaining)
        yield chunk[:n]
        remaining -= n
    yield b"\0" * (-size % 512) + b"\0" * 1024


class FailingStream(io.RawIOBase):
    """``data``, then ``exc`` raised once ``fail_at`` bytes were delivered."""

    def __init__(self, data: bytes, fail_at: int, exc: BaseException):
        self._data, self._fail_at, self._exc, self._pos = data, fail_at, exc, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self._pos >= self._fail_at:
            raise self._exc
        n = min(len(b), self._fail_at - self._pos, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def staging_entries(home):
    root = Path(home) / ".btrfsx" / "staging"
    return [p for d in root.iterdir() for p in d.iterdir()] if root.exists() else []


def gnu_tar(*args):
    return subprocess.run(["tar", *args], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})


# ---------------------------------------------------------------- the layers of the round trip

def build_base(root) -> None:
    r = Path(root)
    for d in ("bin", "data", "dir2file", "hl", "links", "sticky", "tree", "tree/sub", "udir", "untouched"):
        mkdir(r / d)
    write(r / "bin/suid", b"#!/bin/sh\necho suid\n", 0o755)
    write(r / "bin/sgid", b"#!/bin/sh\necho sgid\n", 0o755)
    write(r / "bin/same", b"unchanged\n", 0o755)
    write(r / "data/cap", b"gets a capability\n", 0o755)
    write(r / "data/content", b"old content\n")
    write(r / "data/owned", b"changes owner\n")
    write(r / "data/touched", b"changes mtime only\n")
    write(r / "data/uxattr", b"gets a user xattr\n")
    write(r / "data/xattr-gone", b"loses its xattrs\n", 0o755)
    os.setxattr(r / "data/xattr-gone", "user.old", b"1")
    os.setxattr(r / "data/xattr-gone", "security.capability", capability(CAP_NET_BIND_SERVICE))
    write(r / "data/unchanged", b"keeps its xattr\n")
    os.setxattr(r / "data/unchanged", "user.keep", b"kept")
    write(r / "dir2file/f", b"in a directory that becomes a file\n")
    write(r / "file2dir", b"a file that becomes a directory\n")
    write(r / "gone", b"deleted\n")
    write(r / "hl/x", b"two names\n")
    os.link(r / "hl/x", r / "hl/y")
    write(r / "links/t1", b"first target\n")
    write(r / "links/t2", b"second target\n")
    os.symlink("t1", r / "links/sym")
    write(r / "tree/g", b"g\n")
    write(r / "tree/sub/f", b"f\n")
    write(r / "untouched/f", b"untouched\n")


def mutate(root) -> None:
    r = Path(root)
    os.chmod(r / "bin/suid", 0o4755)
    os.chmod(r / "bin/sgid", 0o2755)
    os.setxattr(r / "data/cap", "security.capability", capability(CAP_SETUID, CAP_NET_BIND_SERVICE))
    (r / "data/content").write_bytes(b"new content, and longer\n")
    os.chown(r / "data/owned", 1000, 1001)
    os.utime(r / "data/touched", ns=(1_234_567_890_123_456_789, 1_234_567_890_123_456_789))
    os.setxattr(r / "data/uxattr", "user.new", b"value")
    os.removexattr(r / "data/xattr-gone", "user.old")
    os.removexattr(r / "data/xattr-gone", "security.capability")
    shutil.rmtree(r / "dir2file")
    write(r / "dir2file", b"now a file\n")
    os.unlink(r / "file2dir")
    mkdir(r / "file2dir", 0o750)
    write(r / "file2dir/inner", b"inside\n")
    os.unlink(r / "gone")
    with open(r / "hl/x", "ab") as f:
        f.write(b"appended through one name\n")
    st = os.lstat(r / "links/sym")
    os.unlink(r / "links/sym")
    os.symlink("t2", r / "links/sym")  # same length, mtime put back: only the target differs
    os.utime(r / "links/sym", ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    os.chmod(r / "sticky", 0o1777)
    shutil.rmtree(r / "tree")
    os.setxattr(r / "udir", "user.dirattr", b"on a directory")
    write(r / "new", b"brand new\n", 0o600)
    mkdir(r / "newdir")
    mkdir(r / "newdir/sub", 0o700)
    write(r / "newdir/a", b"three names\n")
    os.link(r / "newdir/a", r / "newdir/b")
    os.link(r / "newdir/a", r / "newdir/sub/c")
    os.symlink("a", r / "newdir/sym")
    os.chown(r / "newdir/sym", 5, 6, follow_symlinks=False)
    mkdir(r / "nodes")
    os.mknod(r / "nodes/chr", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(r / "nodes/chr", 0o666)
    os.mknod(r / "nodes/blk", stat.S_IFBLK | 0o660, os.makedev(7, 123))
    os.chmod(r / "nodes/blk", 0o660)
    os.mkfifo(r / "nodes/fifo")
    os.chmod(r / "nodes/fifo", 0o640)


EXPECTED_CHANGES = [
    ("/bin", MODIFY), ("/bin/sgid", MODIFY), ("/bin/suid", MODIFY),
    ("/data", MODIFY), ("/data/cap", MODIFY), ("/data/content", MODIFY), ("/data/owned", MODIFY),
    ("/data/touched", MODIFY), ("/data/uxattr", MODIFY), ("/data/xattr-gone", MODIFY),
    ("/dir2file", MODIFY),
    ("/file2dir", MODIFY), ("/file2dir/inner", ADD),
    ("/gone", DELETE),
    ("/hl", MODIFY), ("/hl/x", MODIFY), ("/hl/y", MODIFY),
    ("/links", MODIFY), ("/links/sym", MODIFY),
    ("/new", ADD),
    ("/newdir", ADD), ("/newdir/a", ADD), ("/newdir/b", ADD), ("/newdir/sub", ADD), ("/newdir/sub/c", ADD),
    ("/newdir/sym", ADD),
    ("/nodes", ADD), ("/nodes/blk", ADD), ("/nodes/chr", ADD), ("/nodes/fifo", ADD),
    ("/sticky", MODIFY),
    ("/tree", DELETE),
    ("/udir", MODIFY),
]


@pytest.fixture
def layers(driver):
    """Layer A (a base) and layer B (a snapshot of A with every kind of change)."""
    driver.create("A")
    build_base(driver.get("A"))
    driver.create("B", "A")
    mutate(driver.get("B"))
    return driver


def regular_size(data: bytes) -> int:
    return sum(m.size for m in members_of(data) if m.isreg())


def expected_names(found, layer) -> list[str]:
    """The tar member names of a diff of ``found`` (from layer ``layer``)."""
    names = []
    for c in found:
        if c.kind == DELETE:
            parent, base = os.path.split(c.path)
            names.append(os.path.join(parent, ".wh." + base).lstrip("/"))
        else:
            rel = c.path.lstrip("/")
            is_dir = stat.S_ISDIR(os.lstat(os.path.join(layer, rel)).st_mode)
            names.append(rel + "/" if is_dir else rel)
    return names


# ---------------------------------------------------------------- 1. round trips

def test_change_kinds_and_their_strings():
    assert (ChangeKind.MODIFY, ChangeKind.ADD, ChangeKind.DELETE) == (0, 1, 2)
    assert str(Change("/etc/passwd", ChangeKind.MODIFY)) == "C /etc/passwd"
    assert str(Change("/new", ChangeKind.ADD)) == "A /new"
    assert str(Change("/gone", ChangeKind.DELETE)) == "D /gone"


def test_changes_lists_every_kind_of_change_exactly(layers):
    d = layers
    found = d.changes("B", "A")
    assert all(isinstance(c, Change) and isinstance(c.kind, ChangeKind) for c in found)
    assert [(c.path, c.kind) for c in found] == EXPECTED_CHANGES
    assert found == sorted(found, key=lambda c: os.fsencode(c.path))
    assert d.changes("A", "A") == []
    assert d.changes("B", "B") == []


def test_changes_without_a_parent_lists_everything_as_added(layers):
    d = layers
    found = d.changes("A")
    assert [(c.path, c.kind) for c in found] == [(p, ADD) for p in sorted(tree(d.get("A"))) if p != "/"]


def test_round_trip_to_a_snapshot_of_the_parent(layers):
    d = layers
    with d.diff("B", "A") as stream:
        data = stream.read()
    d.create("C", "A")
    applied = d.apply_diff("C", "A", io.BytesIO(data))
    assert applied == regular_size(data)
    assert tree_differences(tree(d.get("B"), root_mtime=False), tree(d.get("C"), root_mtime=False)) == []
    assert d.changes("C", "B") == []
    assert d.changes("B", "C") == []
    assert d.parent("C") == "A"
    assert d.parent("B") == "A"
    # and the content travelled as a real tar of the expected entries
    members = {m.name: m for m in members_of(data)}
    assert members["hl/y"].islnk() and members["hl/y"].linkname == "hl/x"
    assert members["newdir/b"].islnk() and members["newdir/b"].linkname == "newdir/a"
    assert members["newdir/sub/c"].islnk() and members["newdir/sub/c"].linkname == "newdir/a"
    assert members["bin/suid"].mode == 0o4755 and members["bin/sgid"].mode == 0o2755
    assert members["sticky"].isdir() and members["sticky"].mode == 0o1777
    assert (members["data/owned"].uid, members["data/owned"].gid) == (1000, 1001)
    assert members["data/touched"].pax_headers["mtime"] == "1234567890.123456789"
    assert members["data/cap"].pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape") == capability(CAP_SETUID, CAP_NET_BIND_SERVICE)
    assert members["nodes/chr"].ischr() and (members["nodes/chr"].devmajor, members["nodes/chr"].devminor) == (1, 3)
    assert members["nodes/blk"].isblk() and (members["nodes/blk"].devmajor, members["nodes/blk"].devminor) == (7, 123)
    assert members["nodes/fifo"].isfifo()
    assert ".wh.gone" in members and ".wh.tree" in members
    assert not any(name.startswith("tree/") for name in members)


def test_a_diff_is_the_same_bytes_every_time(layers):
    """Two exports of one layer, seconds apart, are identical (whiteouts are
    dated 0, not by the clock), so a layer's digest is stable."""
    d = layers
    with d.diff("B", "A") as stream:
        first = stream.read()
    time.sleep(1.1)
    with d.diff("B", "A") as stream:
        second = stream.read()
    assert ".wh.gone" in {m.name for m in members_of(first)}
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    whiteout = next(m for m in members_of(first) if m.name == ".wh.gone")
    assert whiteout.mtime == 0


def test_a_whole_layer_diff_carries_every_xattr_also_in_nested_subvolumes(driver, btrfs_fs):
    """A diff without a parent finds the entries with extended attributes by
    one search of the layer's tree; a nested subvolume's entries (another
    tree) are asked one by one."""
    driver.create("X")
    root = driver.get("X")
    for name in ("plain", "tagged"):
        with open(os.path.join(root, name), "w") as f:
            f.write(name)
    os.setxattr(os.path.join(root, "tagged"), "user.k", b"v")
    os.mkdir(os.path.join(root, "dir"))
    os.setxattr(os.path.join(root, "dir"), "user.d", b"\xff\x00binary")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _ioctl.create_subvolume(fd, "nested")
    finally:
        os.close(fd)
    with open(os.path.join(root, "nested", "inner"), "w") as f:
        f.write("in")
    os.setxattr(os.path.join(root, "nested", "inner"), "user.n", b"1")
    with driver.diff("X") as stream:
        members = {m.name.rstrip("/"): m for m in members_of(stream.read())}
    xattrs = {name: {k: v for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
              for name, m in members.items()}
    assert xattrs["tagged"] == {"SCHILY.xattr.user.k": "v"}
    assert xattrs["dir"]["SCHILY.xattr.user.d"].encode("utf-8", "surrogateescape") == b"\xff\x00binary"
    assert xattrs["nested/inner"] == {"SCHILY.xattr.user.n": "1"}
    assert xattrs["plain"] == {}
    with driver.diff("X") as stream:
        data = stream.read()
    driver.create("Y")
    driver.apply_diff("Y", None, io.BytesIO(data))
    assert os.getxattr(os.path.join(driver.get("Y"), "nested", "inner"), "user.n") == b"1"


def test_round_trip_without_a_parent_reproduces_the_whole_layer(layers):
    d = layers
    for source in ("A", "B"):
        target = f"E{source}"
        d.create(target)
        with d.diff(source) as stream:
            applied = d.apply_diff(target, None, stream)
        assert tree_differences(tree(d.get(source), root_mtime=False), tree(d.get(target), root_mtime=False)) == []
        assert d.changes(target, source) == []
        assert d.parent(target) is None
        with d.diff(source) as stream:
            assert applied == regular_size(stream.read())


def test_directory_xattr_removed_travels(driver):
    """A directory that loses an xattr (its other attributes unchanged) is
    modified; applying the diff must remove the xattr from the directory
    the target already has."""
    d = driver
    d.create("A")
    mkdir(Path(d.get("A")) / "dir")
    os.setxattr(Path(d.get("A")) / "dir", "user.old", b"1")
    os.setxattr(Path(d.get("A")) / "dir", "user.kept", b"2")
    d.create("B", "A")
    os.removexattr(Path(d.get("B")) / "dir", "user.old")
    assert [(c.path, c.kind) for c in d.changes("B", "A")] == [("/dir", MODIFY)]
    d.create("C", "A")
    with d.diff("B", "A") as stream:
        d.apply_diff("C", "A", stream)
    assert _xattrs(Path(d.get("C")) / "dir") == {"user.kept": b"2"}
    assert d.changes("C", "B") == []


def test_diff_size_is_changes_size(driver):
    d = driver
    d.create("S")
    s = Path(d.get("S"))
    mkdir(s / "d")
    write(s / "d/old", b"o" * 100)
    write(s / "keep", b"k" * 7)
    d.create("T", "S")
    t = Path(d.get("T"))
    write(t / "d/old", b"n" * 3000)          # modified: 3000
    write(t / "added", b"a" * 5000)          # added: 5000
    os.link(t / "added", t / "d/alias")      # same inode: counted once
    mkdir(t / "newdir")
    write(t / "newdir/empty", b"")           # 0
    write(t / "newdir/big", random_bytes(70_000))  # 70000
    os.unlink(t / "keep")                    # deleted: nothing
    assert d.diff_size("T", "S") == 3000 + 5000 + 70_000
    d.create("U", "S")
    with d.diff("T", "S") as stream:
        assert d.apply_diff("U", "S", stream) == d.diff_size("T", "S")
    assert d.diff_size("S") == 100 + 7
    d.create("V")
    with d.diff("T") as stream:
        assert d.apply_diff("V", None, stream) == d.diff_size("T") == 3000 + 5000 + 70_000 + 0
    os.symlink("added", t / "link")          # a symlink counts its lstat size
    assert d.diff_size("T", "S") == 3000 + 5000 + 70_000 + len("added")


# ---------------------------------------------------------------- 2. GNU tar

def _write_diff(d, name, parent, path) -> Path:
    with d.diff(name, parent) as stream, open(path, "wb") as out:
        shutil.copyfileobj(stream, out)
    return path


def test_gnu_tar_lists_btrfsx_diffs(layers, tmp_path):
    d = layers
    for name, parent in (("B", "A"), ("B", None), ("A", None)):
        path = _write_diff(d, name, parent, tmp_path / f"{name}-{parent}.tar")
        expected = expected_names(d.changes(name, parent), d.get(name))
        listed = gnu_tar("-tf", str(path))
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == expected
        for args in (("-tvf",), ("--xattrs", "-tvf")):
            verbose = gnu_tar(*args, str(path))
            assert verbose.returncode == 0, (args, verbose.stderr)
            assert len(verbose.stdout.splitlines()) == len(expected)
        if (name, parent) == ("B", "A"):
            # "mode owner/group size date time name[ -> target| link to target]"
            lines = {line.split(maxsplit=5)[5].split(" -> ")[0].split(" link to ")[0]: line
                     for line in verbose.stdout.splitlines()}
            assert ".wh.gone" in lines and ".wh.tree" in lines
            assert lines["hl/y"].startswith("h") and lines["hl/y"].endswith("link to hl/x")
            assert lines["newdir/sub/c"].endswith("link to newdir/a")
            assert lines["links/sym"].startswith("l") and lines["links/sym"].endswith("-> t2")
            assert lines["bin/suid"].startswith("-rwsr-xr-x")
            assert lines["bin/sgid"].startswith("-rwxr-sr-x")
            assert lines["sticky/"].startswith("drwxrwxrwt")
            assert lines["nodes/chr"].startswith("crw-rw-rw-")
            assert lines["nodes/blk"].startswith("brw-rw----")
            assert lines["nodes/fifo"].startswith("prw-r-----")
            assert " 1000/1001 " in lines["data/owned"]


def test_gnu_tar_reads_btrfsx_diffs_without_warnings(layers, tmp_path):
    """GNU tar has nothing to complain about in a btrfsx diff (binary xattr
    values such as security.capability included)."""
    d = layers
    for name, parent in (("B", "A"), ("B", None), ("A", None)):
        path = _write_diff(d, name, parent, tmp_path / f"{name}-{parent}.tar")
        for args in (("-tf",), ("-tvf",), ("--xattrs", "-tvf")):
            listed = gnu_tar(*args, str(path))
            assert (listed.returncode, listed.stderr) == (0, ""), (name, parent, args)


def test_gnu_tar_extracts_a_btrfsx_diff(layers, btrfs_fs, tmp_path):
    d = layers
    path = _write_diff(d, "B", None, tmp_path / "B.tar")
    out = btrfs_fs.mountpoint / "gnu-extract"
    mkdir(out, 0o555)
    done = gnu_tar("--xattrs", "--xattrs-include=*", "--numeric-owner", "-p", "-xf", str(path), "-C", str(out))
    assert done.returncode == 0, done.stderr
    assert tree_differences(tree(d.get("B"), root_mtime=False), tree(out, root_mtime=False)) == []


def build_gnu_source(src: Path) -> None:
    mkdir(src, 0o751)
    write(src / "plain", b"plain file\n")
    os.setxattr(src / "plain", "user.colour", b"blue")
    os.utime(src / "plain", ns=(1_500_000_000_987_654_321, 1_500_000_000_987_654_321))
    write(src / "empty", b"")
    write(src / "random", random_bytes(3 * MiB // 2, seed=7))
    write(src / "suid", b"#!/bin/sh\n", 0o4755)
    write(src / "owned", b"owned\n", 0o640)
    os.chown(src / "owned", 1234, 5678)
    mkdir(src / "sub", 0o750)
    write(src / "sub/inner", b"inner\n")
    os.link(src / "sub/inner", src / "inner-link")
    mkdir(src / "sticky", 0o1777)
    os.setxattr(src / "sticky", "user.dir", b"xattr of a directory")
    os.symlink("sub/inner", src / "symlink")
    os.mkfifo(src / "fifo")
    os.chmod(src / "fifo", 0o600)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(src / "null", 0o666)
    os.utime(src / "sub", ns=(1_400_000_000_000_000_001, 1_400_000_000_000_000_001))
    os.utime(src, ns=(1_450_000_000_555_555_555, 1_450_000_000_555_555_555))


def test_a_gnu_tar_archive_applies_plain_gzip_and_zstd(driver, btrfs_fs, tmp_path):
    d = driver
    src = btrfs_fs.mountpoint / "gnu-src"
    build_gnu_source(src)
    expected = tree(src)
    archive = tmp_path / "gnu.tar"
    made = gnu_tar("--xattrs", "--format=posix", "-cf", str(archive), "-C", str(src), ".")
    assert made.returncode == 0, made.stderr
    data = archive.read_bytes()
    content = sum(st.st_size for st in {os.lstat(p).st_ino: os.lstat(p) for p in src.rglob("*")
                                         if p.is_file() and not p.is_symlink()}.values())
    for kind, stream in (("plain", data), ("gzip", gzip.compress(data)),
                         ("zstd", zstandard.ZstdCompressor().compress(data))):
        d.create(kind)
        assert d.apply_diff(kind, None, io.BytesIO(stream)) == content
        assert tree_differences(expected, tree(d.get(kind))) == [], kind


def test_compressed_btrfsx_diffs_apply(layers):
    d = layers
    with d.diff("B", "A") as stream:
        data = stream.read()
    for kind, stream in (("gz", gzip.compress(data)), ("zst", zstandard.ZstdCompressor().compress(data))):
        d.create(kind, "A")
        d.apply_diff(kind, "A", io.BytesIO(stream))
        assert d.changes(kind, "B") == []


# ---------------------------------------------------------------- 3. hostile tarballs

@pytest.fixture
def hostile(driver, btrfs_fs):
    """Layer L (a snapshot of P) beside a canary directory outside the store."""
    d = driver
    outside = btrfs_fs.mountpoint / "outside"
    mkdir(outside)
    write(outside / "canary", b"canary: must not change\n")
    d.create("P")
    p = Path(d.get("P"))
    write(p / "victim", b"whited out by the prelude\n")
    write(p / "keep", b"overwritten by the prelude\n")
    mkdir(p / "real")
    mkdir(p / "sub")
    write(p / "sub/file", b"sub\n")
    os.symlink(str(outside), p / "lnk")       # a legitimate symlink that points out
    os.symlink(str(outside / "canary"), p / "lnkfile")
    d.create("L", "P")
    layer = Path(d.get("L"))
    return SimpleNamespace(d=d, layer=layer, outside=outside, home=Path(d.home), mnt=btrfs_fs.mountpoint,
                           rel_outside=os.path.relpath(outside, layer))


def prelude():
    """Entries that change the layer before the hostile one, so that a failure has something to undo."""
    return [whiteout(".wh.victim"), reg("keep", b"overwritten\n"), dir_("made"), reg("made/partial", b"p\n")]


def _cut_in_data(env):
    full = tar_bytes(*prelude(), reg("big", random_bytes(200_000)))
    return full[:members_of(full)[-1].offset_data + 100_000]


def _cut_in_header(env):
    full = tar_bytes(*prelude(), reg("last", b"last\n"))
    return full[:members_of(full)[-1].offset + 200]


def _garbage_after_an_entry(env):
    return tar_bytes(*prelude(), reg("last", b"last\n"), end=False) + (b"not a tar header " * 64)[:1024]


def _gzip_cut(env):
    data = gzip.compress(tar_bytes(*prelude(), reg("big", random_bytes(256 * 1024))))
    return data[:len(data) // 2]


def _zstd_cut(env):
    data = zstandard.ZstdCompressor().compress(tar_bytes(*prelude(), reg("big", random_bytes(256 * 1024))))
    return data[:len(data) // 2]


def _nul_in_pax_path(env):
    info, data = reg("placeholder", b"nul\n")
    info.pax_headers = {"path": "a\0/../../escape"}
    return tar_bytes(*prelude(), (info, data))


def _nul_in_symlink_target(env):
    info, _ = sym("nulsym", "placeholder")
    info.pax_headers = {"linkpath": f"{env.outside}/canary\0junk"}
    return tar_bytes(*prelude(), (info, None))


HOSTILE = {
    # name: (builder, expected exception types)
    "dotdot": (lambda env: tar_bytes(*prelude(), reg("../escape")), UnsafeArchiveError),
    "dotdot-to-canary": (lambda env: tar_bytes(*prelude(), reg(f"{env.rel_outside}/canary", b"pwned\n")),
                         UnsafeArchiveError),
    "inner-dotdot": (lambda env: tar_bytes(*prelude(), reg("a/../../escape")), UnsafeArchiveError),
    "dir-dotdot": (lambda env: tar_bytes(*prelude(), dir_("..")), UnsafeArchiveError),
    "symlink-to-root-then-through-it": (
        lambda env: tar_bytes(*prelude(), sym("evil", "/"), reg("evil/canary-target", b"pwned\n")),
        UnsafeArchiveError),
    "symlink-to-canary-then-through-it": (
        lambda env: tar_bytes(*prelude(), sym("evil", str(env.outside)), reg("evil/canary", b"pwned\n")),
        UnsafeArchiveError),
    "relative-symlink-out-then-through-it": (
        lambda env: tar_bytes(*prelude(), sym("evil", env.rel_outside), reg("evil/canary", b"pwned\n")),
        UnsafeArchiveError),
    "symlink-inside-then-through-it": (
        lambda env: tar_bytes(*prelude(), sym("via", "real"), reg("via/file", b"through a symlink\n")),
        UnsafeArchiveError),
    "existing-symlinked-parent": (lambda env: tar_bytes(*prelude(), reg("lnk/canary", b"pwned\n")),
                                  UnsafeArchiveError),
    "existing-symlinked-parent-dir": (lambda env: tar_bytes(*prelude(), dir_("lnk/newdir")), UnsafeArchiveError),
    "whiteout-through-symlink": (lambda env: tar_bytes(*prelude(), whiteout("lnk/.wh.canary")),
                                 UnsafeArchiveError),
    "opaque-through-symlink": (lambda env: tar_bytes(*prelude(), whiteout("lnk/.wh..wh..opq")),
                               UnsafeArchiveError),
    "hardlink-dotdot": (lambda env: tar_bytes(*prelude(), hard("h", f"{env.rel_outside}/canary")),
                        UnsafeArchiveError),
    "hardlink-through-symlinked-dir": (lambda env: tar_bytes(*prelude(), hard("h", "lnk/canary")),
                                       UnsafeArchiveError),
    # absolute: cleaned to a path inside the layer, which does not exist there
    "hardlink-absolute-to-canary": (lambda env: tar_bytes(*prelude(), hard("h", str(env.outside / "canary"))),
                                    (ArchiveError, FileNotFoundError)),
    "hardlink-to-etc-passwd-absent": (lambda env: tar_bytes(*prelude(), hard("h", "/etc/passwd")),
                                      (ArchiveError, FileNotFoundError)),
    "whiteout-dotdot": (lambda env: tar_bytes(*prelude(), whiteout(".wh...")), UnsafeArchiveError),
    "whiteout-dotdot-in-subdir": (lambda env: tar_bytes(*prelude(), whiteout("sub/.wh...")), UnsafeArchiveError),
    "whiteout-dot": (lambda env: tar_bytes(*prelude(), whiteout("sub/.wh..")), UnsafeArchiveError),
    "root-as-a-file": (lambda env: tar_bytes(*prelude(), reg("./", b"x")), ArchiveError),
    "nul-in-pax-path": (_nul_in_pax_path, ArchiveError),
    "nul-in-symlink-target": (_nul_in_symlink_target, ArchiveError),
    "truncated-in-file-data": (_cut_in_data, ArchiveError),
    "truncated-in-a-header": (_cut_in_header, ArchiveError),
    "garbage-after-an-entry": (_garbage_after_an_entry, ArchiveError),
    "gzip-cut-short": (_gzip_cut, ArchiveError),
    "zstd-cut-short": (_zstd_cut, ArchiveError),
    "garbage": (lambda env: b"this is not a tarball, nor gzip, nor zstd\n" * 50, ArchiveError),
}

HOST_PATHS = ["/escape", "/canary-target", "/etc/canary"]


def _host_state():
    st = os.stat("/etc/passwd")
    with open("/etc/passwd", "rb") as f:
        passwd = hashlib.sha256(f.read()).hexdigest()
    return ((st.st_ino, st.st_nlink, st.st_mtime_ns, passwd),
            {p: os.path.lexists(p) for p in HOST_PATHS})


def _store_state(env):
    return {
        "layer": tree(env.layer),
        "parent layer": tree(env.d.get("P")),
        "subvolumes": tree(env.home / "subvolumes", root_mtime=False),
        "outside": tree(env.outside),
        "mountpoint": sorted(os.listdir(env.mnt)),
        "home": sorted(os.listdir(env.home)),
        "host": _host_state(),
        "layers": env.d.layers(),
    }


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_tarball_is_refused_and_changes_nothing(hostile, case):
    env = hostile
    build, expected = HOSTILE[case]
    data = build(env)
    before = _store_state(env)
    assert env.d.parent("L") == "P"
    with pytest.raises(expected):
        env.d.apply_diff("L", "P", io.BytesIO(data))
    after = _store_state(env)
    for key in before:
        if key in ("layer", "parent layer", "subvolumes", "outside"):
            assert tree_differences(before[key], after[key]) == [], key
        else:
            assert before[key] == after[key], key
    assert env.d.parent("L") == "P"
    assert env.d.parent("P") is None
    assert staging_entries(env.home) == []
    # the layer still takes a good diff afterwards
    env.d.apply_diff("L", "P", io.BytesIO(tar_bytes(reg("fine", b"fine\n"))))
    assert (env.layer / "fine").read_bytes() == b"fine\n"
    assert env.d.parent("L") == "P"


def test_archive_errors_are_value_errors():
    assert issubclass(UnsafeArchiveError, ArchiveError)
    assert issubclass(ArchiveError, ValueError)


def test_absolute_names_land_inside_the_layer(hostile):
    env = hostile
    host = _host_state()
    assert not os.path.lexists("/etc/btrfsx-abs-x")
    env.d.apply_diff("L", "P", io.BytesIO(tar_bytes(
        dir_("/etc"), reg("/etc/btrfsx-abs-x", b"inside\n"), reg("//etc/./btrfsx-abs-y", b"also inside\n"),
        sym("/etc/abs-link", "/etc/btrfsx-abs-x"))))
    assert (env.layer / "etc/btrfsx-abs-x").read_bytes() == b"inside\n"
    assert (env.layer / "etc/btrfsx-abs-y").read_bytes() == b"also inside\n"
    assert os.readlink(env.layer / "etc/abs-link") == "/etc/btrfsx-abs-x"  # a symlink's target is data
    assert not os.path.lexists("/etc/btrfsx-abs-x") and not os.path.lexists("/etc/btrfsx-abs-y")
    assert _host_state() == host


def test_hardlink_to_absolute_etc_passwd_links_the_layers_own(hostile):
    env = hostile
    host = _host_state()
    mkdir(env.layer / "etc")
    write(env.layer / "etc/passwd", b"root:x:0:0:layer's own:/root:/bin/sh\n")
    env.d.apply_diff("L", "P", io.BytesIO(tar_bytes(hard("h", "/etc/passwd"))))
    assert os.lstat(env.layer / "h").st_ino == os.lstat(env.layer / "etc/passwd").st_ino
    assert (env.layer / "h").read_bytes() == b"root:x:0:0:layer's own:/root:/bin/sh\n"
    assert os.lstat(env.layer / "etc/passwd").st_nlink == 2
    assert _host_state() == host
    assert env.d.parent("L") == "P"


def test_entries_never_follow_a_final_symlink(hostile):
    """A hard link to a symlink links the symlink; a file or directory entry
    over an existing symlink replaces the symlink, never its target."""
    env = hostile
    host = _host_state()
    outside = tree(env.outside)
    env.d.apply_diff("L", "P", io.BytesIO(tar_bytes(
        sym("s", "/etc/passwd"), hard("h", "s"),
        reg("lnkfile", b"replaces the symlink\n"),
        dir_("lnk", mode=0o700))))
    assert os.readlink(env.layer / "h") == "/etc/passwd"
    assert os.lstat(env.layer / "h").st_ino == os.lstat(env.layer / "s").st_ino
    assert stat.S_ISREG(os.lstat(env.layer / "lnkfile").st_mode)
    assert (env.layer / "lnkfile").read_bytes() == b"replaces the symlink\n"
    st = os.lstat(env.layer / "lnk")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert tree_differences(outside, tree(env.outside)) == []
    assert _host_state() == host


def test_whiteouts_and_opaque_directories(driver):
    d = driver
    d.create("P")
    p = Path(d.get("P"))
    for sub in ("opq", "opq2", "gone", "keep"):
        mkdir(p / sub)
        write(p / sub / "old1", b"1")
        write(p / sub / "old2", b"2")
    mkdir(p / "opq/nested")
    write(p / "opq/nested/deep", b"3")
    d.create("L", "P")
    d.apply_diff("L", "P", io.BytesIO(tar_bytes(
        dir_("opq"), reg("opq/before", b"written before the marker\n"), whiteout("opq/.wh..wh..opq"),
        reg("opq/after", b"written after the marker\n"),
        whiteout("opq2/.wh..wh..opq"),
        whiteout(".wh.gone"),
        whiteout("keep/.wh.old1"),
        whiteout(".wh.never-existed"))))
    layer = Path(d.get("L"))
    assert sorted(os.listdir(layer)) == ["keep", "opq", "opq2"]
    assert sorted(os.listdir(layer / "opq")) == ["after", "before"]
    assert os.listdir(layer / "opq2") == []
    assert os.listdir(layer / "keep") == ["old2"]
    assert not any(name.startswith(".wh.") for _, dirs, files in os.walk(layer) for name in dirs + files)


# ---------------------------------------------------------------- 4. all or nothing

def _failing_tar():
    data = tar_bytes(*prelude(), dir_("newdir"), reg("newdir/a", b"a\n"), reg("big", random_bytes(4 * MiB)),
                     reg("after", b"never reached\n"))
    big = [m for m in members_of(data) if m.name == "big"][0]
    return data, big.offset_data + 2 * MiB


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device (injected)"),
                                 KeyboardInterrupt()], ids=["ENOSPC", "KeyboardInterrupt"])
def test_a_failure_while_reading_leaves_the_layer_as_it_was(hostile, exc):
    env = hostile
    d = env.d
    d.create("K", "L")  # a child of L: its parent must stay L across the swaps
    data, fail_at = _failing_tar()
    before = tree(env.layer)
    for attempt in range(2):
        with pytest.raises(type(exc)) as caught:
            d.apply_diff("L", "P", FailingStream(data, fail_at, exc))
        if isinstance(exc, OSError):
            assert caught.value.errno == errno.ENOSPC
        assert tree_differences(before, tree(env.layer)) == [], attempt
        assert d.parent("L") == "P"
        assert d.parent("K") == "L"
        assert d.layers() == ["K", "L", "P"]
        assert staging_entries(env.home) == []
    assert d.apply_diff("L", "P", io.BytesIO(data)) == 4 * MiB + len(b"overwritten\np\na\nnever reached\n")
    assert (env.layer / "after").read_bytes() == b"never reached\n"
    assert not (env.layer / "victim").exists()
    assert d.parent("L") == "P"
    assert d.parent("K") == "L"
    # parent() (from the UUID tree) and layer_infos (from every layer's UUID) agree
    assert [d.parent(layer) for layer in d.layers()] == [info.parent for info in d.layer_infos()]
    assert d.layer_infos(d.layers()) == d.layer_infos()  # a few layers, or all of them: the same answers


def _statvfs_free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_full_disk_leaves_the_layer_as_it_was(tmp_path):
    fs = Loopback.create("/var/tmp", tmp_path / "small", size=256 << 20)
    try:
        d = Driver(fs.mountpoint / "home")
        try:
            d.create("P")
            write(Path(d.get("P")) / "base", b"base\n")
            d.create("L", "P")
            layer = Path(d.get("L"))
            write(layer / "own", b"own\n")
            before = tree(layer)
            # the big file: leaves some 40 MiB free
            filler = fs.mountpoint / "filler"
            chunk = os.urandom(MiB)
            with open(filler, "wb") as f:
                try:
                    for _ in range(max(0, (_statvfs_free(fs.mountpoint) - 40 * MiB) // MiB)):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            free = _statvfs_free(fs.mountpoint)
            with pytest.raises(OSError) as caught:
                d.apply_diff("L", "P", ChunkStream(big_file_tar("huge", free + 96 * MiB)))
            assert caught.value.errno == errno.ENOSPC
            assert tree_differences(before, tree(layer)) == []
            assert d.parent("L") == "P"
            assert staging_entries(d.home) == []
            # delete the big file; once btrfs has reclaimed the space a smaller apply works
            os.unlink(filler)
            subprocess.run(["btrfs", "subvolume", "sync", str(fs.mountpoint)], check=True, capture_output=True)
            subprocess.run(["btrfs", "filesystem", "sync", str(fs.mountpoint)], check=True, capture_output=True)
            assert d.apply_diff("L", "P", ChunkStream(big_file_tar("smaller", 32 * MiB))) == 32 * MiB
            assert os.path.getsize(layer / "smaller") == 32 * MiB
            assert (layer / "own").read_bytes() == b"own\n"
            assert d.parent("L") == "P"
        finally:
            d.cleanup()
    finally:
        fs.close()


# ---------------------------------------------------------------- 5. a crash mid-apply, then gc

CHILD = r"""
import io, sys, tarfile, time
from btrfsx import Driver

home, layer = sys.argv[1:3]

def entry(name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1
    return info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)

# tarfile reads a stream in 10 KiB records: "pad" makes sure "first" is
# complete before the stream stalls
head = (entry(".wh.victim", b"") + entry("keep", b"overwritten\n") + entry("first", b"first file\n" * 100)
        + entry("pad", b"\0" * (256 << 10))[:128 << 10])

class Slow(io.RawIOBase):
    # delivers the first entries, then hangs as a stalled network stream would
    def readable(self):
        return True
    def readinto(self, b):
        global head
        if not head:
            time.sleep(3600)
            return 0
        n = min(len(b), len(head))
        b[:n] = head[:n]
        head = head[n:]
        return n

Driver(home).apply_diff(layer, "P", Slow())
"""


def test_gc_undoes_an_apply_killed_midway(hostile):
    env = hostile
    d = env.d
    d.create("K", "L")
    before = tree(env.layer)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(env.home), "L"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = env.layer / "first"
        deadline = time.monotonic() + 30
        while True:
            try:
                if os.lstat(first).st_mtime_ns == 1_000_000_000:  # written, metadata set
                    break
            except FileNotFoundError:
                pass
            assert child.poll() is None, child.communicate()[1].decode()
            assert time.monotonic() < deadline, "the child never started applying"
            time.sleep(0.01)
        assert not (env.layer / "victim").exists()  # the apply really was under way
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    with Driver(env.home) as other:
        # a new driver undoes the interrupted apply before anything else
        assert tree_differences(before, tree(env.layer)) == []
        report = other.gc()
    assert report.quota_files == []  # the leftovers of the undone apply went with it
    assert tree_differences(before, tree(env.layer)) == []
    assert d.parent("L") == "P"
    assert d.parent("K") == "L"
    assert d.layers() == ["K", "L", "P"]
    assert staging_entries(env.home) == []
    with Driver(env.home) as other:
        again = other.gc()  # nothing left to collect (but qgroups the cleaner freed since)
        assert again.subvolumes == [] and again.quota_files == []
    d.apply_diff("L", "P", io.BytesIO(tar_bytes(reg("fine", b"fine\n"))))  # the layer's lock is free
    assert d.parent("L") == "P"


# ---------------------------------------------------------------- 6. id maps

def test_ownership_is_translated_by_the_id_maps(home):
    maps = [IDMap(0, 100000, 65536)]
    with Driver(home, uid_maps=maps, gid_maps=maps) as d:
        d.create("L")
        layer = Path(d.get("L"))
        write(layer / "owned", b"owned\n")
        os.chown(layer / "owned", 100005, 100006)
        mkdir(layer / "dir")
        os.chown(layer / "dir", 100000, 100000)
        os.symlink("owned", layer / "link")
        os.chown(layer / "link", 100009, 100010, follow_symlinks=False)
        with d.diff("L") as stream:
            data = stream.read()
        members = {m.name: m for m in members_of(data)}
        assert (members["owned"].uid, members["owned"].gid) == (5, 6)
        assert (members["dir"].uid, members["dir"].gid) == (0, 0)
        assert (members["link"].uid, members["link"].gid) == (9, 10)
        d.create("M")
        d.apply_diff("M", None, io.BytesIO(tar_bytes(
            reg("seven", b"7\n", uid=7, gid=8), dir_("d", uid=7, gid=7), sym("s", "seven", uid=11, gid=12))))
        m = Path(d.get("M"))
        assert (os.lstat(m / "seven").st_uid, os.lstat(m / "seven").st_gid) == (100007, 100008)
        assert (os.lstat(m / "d").st_uid, os.lstat(m / "d").st_gid) == (100007, 100007)
        assert (os.lstat(m / "s").st_uid, os.lstat(m / "s").st_gid) == (100011, 100012)
        d.create("N")
        d.apply_diff("N", None, io.BytesIO(data))  # and back: the host ids of the source
        assert tree_differences(tree(layer, root_mtime=False), tree(d.get("N"), root_mtime=False)) == []


# ---------------------------------------------------------------- 7. streaming

def _memory(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux 4.0+); returns that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _memory("VmRSS")


@pytest.mark.parametrize("size", [100, 5000, 3 * MiB])
def test_a_file_that_shrinks_while_exported_is_padded_to_its_header(driver, size):
    """The header promised the size the walk saw; a file truncated since is
    padded with zeros to it (as GNU tar does), so the stream stays a valid
    tar and the entries after it are intact."""
    from btrfsx.archive import changes as walk
    from btrfsx.archive import export_changes
    d = driver
    d.create("S")
    root = d.get("S")
    with open(os.path.join(root, "a-shrinks"), "wb") as f:
        f.write(b"x" * size)
    with open(os.path.join(root, "b-after"), "wb") as f:
        f.write(b"intact")
    stats: dict = {}
    found = walk(root, None, stats=stats)
    os.truncate(os.path.join(root, "a-shrinks"), size // 3)
    with export_changes(root, found, stats=stats) as stream:
        data = stream.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        shrunk = t.getmember("a-shrinks")
        assert shrunk.size == size
        assert t.extractfile(shrunk).read() == b"x" * (size // 3) + bytes(size - size // 3)
        assert t.extractfile("b-after").read() == b"intact"


def test_diff_and_apply_diff_stream(driver):
    d = driver
    d.create("X")
    size = 300 * MiB
    chunk = os.urandom(MiB)
    with open(Path(d.get("X")) / "big", "wb") as f:
        for _ in range(size // MiB):
            f.write(chunk)
    base = _reset_peak()
    total = 0
    with d.diff("X") as stream:
        while data := stream.read(MiB):
            total += len(data)
    grown = _memory("VmHWM") - base
    assert total > size
    assert grown < 64 * MiB, f"diff grew the peak RSS by {grown / MiB:.0f} MiB"
    d.create("Y")
    base = _reset_peak()
    with d.diff("X") as stream:
        assert d.apply_diff("Y", None, stream) == size
    grown = _memory("VmHWM") - base
    assert grown < 64 * MiB, f"apply_diff grew the peak RSS by {grown / MiB:.0f} MiB"
    big = Path(d.get("Y")) / "big"
    assert big.stat().st_size == size
    with open(big, "rb") as f:
        assert f.read(MiB) == chunk
        f.seek(size - MiB)
        assert f.read(MiB) == chunk


def test_a_failed_apply_keeps_the_layers_nested_subvolumes(btrfs_fs):
    """The backup snapshot does not hold nested subvolumes: they are moved back."""
    home = btrfs_fs.mountpoint / "home-nested"
    with Driver(home) as d:
        d.create("L")
        root = d.get("L")
        os.chmod(root, 0o755)
        os.makedirs(os.path.join(root, "var", "lib"))
        fd = os.open(os.path.join(root, "var", "lib"), os.O_RDONLY)
        try:
            _ioctl.create_subvolume(fd, "vol")
        finally:
            os.close(fd)
        with open(os.path.join(root, "var", "lib", "vol", "data"), "w") as f:
            f.write("kept")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("new-file")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        corrupt = buf.getvalue()[:512 + 512] + b"garbage!" * 64  # a bad header after the first entry
        with pytest.raises(ArchiveError):
            d.apply_diff("L", None, io.BytesIO(corrupt))
        assert not os.path.exists(os.path.join(root, "new-file"))
        assert _ioctl.is_subvolume(os.path.join(root, "var", "lib", "vol"))
        with open(os.path.join(root, "var", "lib", "vol", "data")) as f:
            assert f.read() == "kept"
        d.remove("L")


# ---------------------------------------------------------------- what a failed apply says (issue #14)

@pytest.fixture
def tgt(driver):
    """Layer 'tgt' with a file and a directory, and its tree as it is."""
    driver.create("tgt")
    root = Path(driver.get("tgt"))
    write(root / "kept", b"kept\n")
    mkdir(root / "dir")
    return SimpleNamespace(d=driver, root=root, before=tree(root))


def test_a_hard_link_to_a_missing_target_names_both(tgt):
    data = tar_bytes(reg("first", b"applied, then undone\n"), hard("link", "nosuchtarget"))
    with pytest.raises(ArchiveError) as caught:
        tgt.d.apply_diff("tgt", None, io.BytesIO(data))
    assert str(caught.value) == ("layer 'tgt' left as it was: hard link 'link' points at 'nosuchtarget', which is "
                                 "neither in the layer nor earlier in the tarball")
    assert tree_differences(tgt.before, tree(tgt.root)) == []
    # nor is a missing target's directory made on the way
    with pytest.raises(ArchiveError, match=r"^layer 'tgt' left as it was: hard link 'link' points at "
                                           r"'no/such/target', which is neither"):
        tgt.d.apply_diff("tgt", None, io.BytesIO(tar_bytes(hard("link", "no/such/target"))))
    with pytest.raises(ArchiveError, match=r"^layer 'tgt' left as it was: hard link 'link' points at 'dir', "
                                           r"which is a directory$"):
        tgt.d.apply_diff("tgt", None, io.BytesIO(tar_bytes(hard("link", "dir"))))
    assert tree_differences(tgt.before, tree(tgt.root)) == []
    # a target earlier in the tarball, or in the layer, is linked
    tgt.d.apply_diff("tgt", None, io.BytesIO(tar_bytes(reg("new", b"new\n"), hard("to-new", "new"),
                                                       hard("to-kept", "kept"))))
    assert os.stat(tgt.root / "to-new").st_ino == os.stat(tgt.root / "new").st_ino
    assert os.stat(tgt.root / "to-kept").st_ino == os.stat(tgt.root / "kept").st_ino


def _cut_tar():
    data = tar_bytes(reg("first"), reg("big", random_bytes(300_000)))
    cut = members_of(data)[-1].offset_data + 1000
    return data[:cut], (f"the layer tarball is truncated at byte {cut}, inside the contents of 'big' "
                        "(1000 of 300000 bytes)")


def _cut_gzip():
    data = gzip.compress(tar_bytes(reg("first"), reg("big", random_bytes(300_000))), mtime=0)
    return data[:100_000], "the gzip stream is truncated: it ends after 100000 compressed bytes"


def _cut_zstd():
    data = zstandard.ZstdCompressor().compress(tar_bytes(reg("first"), reg("big", random_bytes(300_000))))
    return data[:100_000], "the zstd stream is truncated: it ends inside a frame, after 100000 compressed bytes"


@pytest.mark.parametrize("build", [_cut_tar, _cut_gzip, _cut_zstd], ids=["tar", "gzip", "zstd"])
def test_a_truncated_stream_is_said_once_with_the_layer(tgt, build):
    data, message = build()
    with pytest.raises(ArchiveError) as caught:
        tgt.d.apply_diff("tgt", None, io.BytesIO(data))
    assert str(caught.value) == f"layer 'tgt' left as it was: {message}"
    assert tree_differences(tgt.before, tree(tgt.root)) == []


def test_a_system_call_error_names_the_entry(tgt):
    """ENOSPC, EROFS, EACCES and the like keep their errno and gain the entry's
    name (a write or an fchown names no file at all)."""
    name = "dir/" + "y" * 256
    with pytest.raises(OSError) as caught:
        tgt.d.apply_diff("tgt", None, io.BytesIO(tar_bytes(reg("first"), reg(name))))
    assert caught.value.errno == errno.ENAMETOOLONG
    assert f"entry {name!r} cannot be applied: File name too long" in str(caught.value)
    assert tree_differences(tgt.before, tree(tgt.root)) == []


def test_a_read_error_of_the_input_is_left_as_it_is(tgt):
    data = tar_bytes(reg("first"), reg("big", random_bytes(2 * MiB)))
    with pytest.raises(OSError) as caught:
        tgt.d.apply_diff("tgt", None, FailingStream(data, MiB, OSError(errno.EIO, "injected read error")))
    assert caught.value.errno == errno.EIO and "entry" not in str(caught.value)
    assert tree_differences(tgt.before, tree(tgt.root)) == []
