"""Every error a user can meet names the layer (or the path) and says what
was expected, in one form, and leaves the store as it was (issue #14.2):
each error path of Driver, then of the command line, where it is one line on
stderr and exit status 1."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from btrfsx import ArchiveError, CreateOpts, Driver, MountOpts, OptionError, _ioctl
from btrfsx.cli import build_parser
from tests_support import drop_deleted_subvolumes

pytestmark = pytest.mark.btrfs


# ---------------------------------------------------------------- tarballs

def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, None


GOOD = _tar(_file("etc/hostname", b"box\n"), _file("data", os.urandom(64 << 10)))
TARBALLS = {
    "hard link to a missing target": _tar(_file("a", b"a"), _hardlink("link", "nosuchtarget")),
    "truncated tar": GOOD[:700],
    "truncated gzip": gzip.compress(GOOD)[:2000],
    "corrupt gzip": gzip.compress(GOOD)[:20] + b"\xff" * 200 + gzip.compress(GOOD)[220:],
    "truncated zstd": zstandard.ZstdCompressor().compress(GOOD)[:3000],
    "not a tarball": b"x" * 100,
}


# ---------------------------------------------------------------- send streams

def _crc32c(data: bytes) -> int:
    """The send stream's CRC: CRC-32C from 0, no final inversion."""
    c = 0
    for byte in data:
        c ^= byte
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c


def _command(cmd: int, *attrs: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in attrs)
    crc = _crc32c(struct.pack("<IHI", len(body), cmd, 0) + body)
    return struct.pack("<IHI", len(body), cmd, crc) + body


_STREAM = b"btrfs-stream\0" + struct.pack("<I", 1)
_SUBVOL = _command(1, (15, b"bad"), (1, uuid.uuid4().bytes), (2, struct.pack("<Q", 7)))      # SUBVOL path uuid ctransid
_SNAPSHOT = _command(2, (15, b"bad"), (1, uuid.uuid4().bytes), (2, struct.pack("<Q", 9)),
                     (20, uuid.uuid4().bytes), (21, struct.pack("<Q", 8)))   # against a subvolume no one here has
_MKDIR = _command(4, (15, b"d"), (3, struct.pack("<Q", 257)))                                  # MKDIR path ino
_END = _command(21)
STREAMS = {
    "whole": _STREAM + _SUBVOL + _MKDIR + _END,
    "truncated": _STREAM + _SUBVOL + _MKDIR[:7],
    "unknown command": _STREAM + _SUBVOL + _command(99) + _END,
    "incremental": _STREAM + _SNAPSHOT + _END,
    "not a stream": b"x" * 100,
}


# ---------------------------------------------------------------- the store before and after

def fingerprint(home) -> list[tuple]:
    """What a failed operation must not change: every entry under home (the
    contents of staging directories included, but not the directories a live
    process keeps there, nor the lock stripes and template locks, nor the lineage records a
    failed apply_diff writes for the backup it swapped in, which keep the
    layer's parent readable), with mode, size and, for small files,
    contents."""
    found = []
    for root, dirs, files in os.walk(home):
        rel = os.path.relpath(root, home)
        if rel in (os.path.join(".btrfsx", "locks"), os.path.join(".btrfsx", "lineage"),
                   os.path.join(".btrfsx", "templates")):   # a template's lock file, like the stripes
            dirs[:] = []
            continue
        if rel == os.path.join(".btrfsx", "staging"):
            dirs.sort()
            continue
        dirs.sort()
        for name in sorted(dirs + files):
            if rel == ".btrfsx" and name == "templates":
                continue  # made by the first template build, with its lock, like the stripes
            path = os.path.join(root, name)
            st = os.lstat(path)
            data = None
            if os.path.isfile(path) and not os.path.islink(path) and st.st_size <= 4096:
                with open(path, "rb") as f:
                    data = f.read()
            found.append((os.path.join(rel, name), st.st_mode, st.st_size if not os.path.isdir(path) else 0, data))
    return found


def qgroups(home) -> set[int]:
    """The level-0 qgroups of home's filesystem once deleted subvolumes are
    dropped (the kernel removes a dropped subvolume's qgroup itself)."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        drop_deleted_subvolumes(fd)
        try:
            return {item.offset for item in _ioctl.TreeSearch(
                fd, _ioctl.QUOTA_TREE_OBJECTID, min_type=_ioctl.QGROUP_INFO_KEY, max_type=_ioctl.QGROUP_INFO_KEY)
                if item.type == _ioctl.QGROUP_INFO_KEY and item.offset >> 48 == 0}
        except FileNotFoundError:
            return set()
    finally:
        os.close(fd)


@pytest.fixture
def store(btrfs_fs):
    """A home with layers 'base' (with files) and 'child' (a snapshot of it),
    'sized' (a 100M limit), and a plain directory 'plain' put in subvolumes/."""
    home = btrfs_fs.mountpoint / "home"
    with Driver(home) as d:
        d.create("base")
        d.apply_diff("base", None, io.BytesIO(GOOD))
        d.create("child", "base")
        d.create("sized", opts=CreateOpts(storage_opt={"size": "100M"}))
    os.mkdir(home / "subvolumes" / "plain")
    yield home
    if _read_only(btrfs_fs.mountpoint):
        subprocess.run(["mount", "-o", "remount,rw", str(btrfs_fs.mountpoint)], check=True)


def _read_only(mountpoint) -> bool:
    return bool(os.statvfs(mountpoint).f_flag & os.ST_RDONLY)


def make_read_only(home) -> None:
    """Remount the whole filesystem read-only: a read-only home, as a user
    meets it (a read-only bind mount is refused while files are open for
    writing, and a driver keeps its lock files open)."""
    subprocess.run(["mount", "-o", "remount,ro", str(home.parent)], check=True)


# ---------------------------------------------------------------- Driver

@dataclass
class Case:
    call: Callable[[Driver], object]
    error: type[BaseException]
    needles: tuple[str, ...]
    options: tuple[str, ...] = ()
    read_only: bool = False
    marks: tuple = field(default_factory=tuple)
    qgroups: bool = False   # makes subvolumes before it fails: no qgroup may be left either


def sized(value: str, parent: str | None = None) -> Callable[[Driver], object]:
    return lambda d: d.create("bad", parent, CreateOpts(storage_opt={"size": value}))


def apply(name: str, layer: str = "child") -> Callable[[Driver], object]:
    return lambda d: d.apply_diff(layer, None, io.BytesIO(TARBALLS[name]))


DRIVER_CASES: dict[str, Case] = {}
for _parent in (None, "base"):
    _with = "with a parent" if _parent else "without a parent"
    for _value, _needle in [("0", "btrfs: invalid storage size: 0B"), ("-1", "invalid size: '-1'"),
                            ("-10m", "invalid size: '-10m'"), ("abc", "invalid size: 'abc'"),
                            ("1.5.5g", "invalid size: '1.5.5g'"), ("", "invalid size: ''")]:
        DRIVER_CASES[f"size {_value!r} {_with}"] = Case(sized(_value, _parent), OptionError, ("layer 'bad': ", _needle))
    DRIVER_CASES[f"size below btrfs.min_space {_with}"] = Case(
        sized("10m", _parent), OptionError,
        ("layer 'bad': ", "btrfs: storage size cannot be less than 104.9MB"), options=("btrfs.min_space=100m",))
    DRIVER_CASES[f"unknown storage option {_with}"] = Case(
        lambda d, p=_parent: d.create("bad", p, CreateOpts(storage_opt={"foo": "1"})), OptionError,
        ("layer 'bad': ", "Unknown option foo"))
    DRIVER_CASES[f"inodes storage option {_with}"] = Case(
        lambda d, p=_parent: d.create("bad", p, CreateOpts(storage_opt={"size": "10m", "inodes": "5"})),
        OptionError, ("layer 'bad': ", "Unknown option inodes"))
    DRIVER_CASES[f"read-only home {_with}"] = Case(
        lambda d, p=_parent: d.create("new", p), OSError, ("layer 'new': cannot create it: Read-only file system",),
        read_only=True)
DRIVER_CASES.update({
    "default size below btrfs.min_space": Case(
        lambda d: d.create_read_write("bad"), OptionError,
        ("layer 'bad': ", "btrfs: storage size cannot be less than 104.9MB"),
        options=("btrfs.min_space=100m", "btrfs.size=10m")),
    "sized create on a read-only home": Case(sized("200m", "base"), OSError, ("layer 'bad': cannot create it",),
                                             read_only=True),
    "an invalid id": Case(lambda d: d.create("a/b"), ValueError, ("invalid layer id 'a/b'",)),
    "a missing parent": Case(lambda d: d.create("bad", "nosuch"), FileNotFoundError,
                             ("parent layer 'nosuch' does not exist",)),
    "a parent that is a plain directory": Case(lambda d: d.create("bad", "plain"), OSError,
                                               ("parent layer 'plain' is a plain directory",)),
    "an existing layer": Case(lambda d: d.create("base"), FileExistsError, ("layer 'base' already exists",)),
    "remove a missing layer": Case(lambda d: d.remove("nosuch"), FileNotFoundError,
                                   ("layer 'nosuch' does not exist",)),
    "remove a plain directory": Case(lambda d: d.remove("plain"), OSError,
                                     ("layer 'plain' is not a btrfs subvolume",)),
    "remove on a read-only home": Case(lambda d: d.remove("child"), OSError,
                                       ("layer 'child': cannot remove it: Read-only file system",), read_only=True),
    "get a missing layer": Case(lambda d: d.get("nosuch"), FileNotFoundError, ("layer 'nosuch' does not exist",)),
    "get with mount options": Case(lambda d: d.get("base", MountOpts(options=["noatime"])), OptionError,
                                   ("layer 'base': btrfs driver does not support mount options", "'noatime'")),
    "changes of a missing layer": Case(lambda d: d.changes("nosuch"), FileNotFoundError,
                                       ("layer 'nosuch' does not exist",)),
    "changes against a missing parent": Case(lambda d: d.changes("child", "nosuch"), FileNotFoundError,
                                             ("layer 'nosuch' does not exist",)),
    "diff of a missing layer": Case(lambda d: d.diff("nosuch"), FileNotFoundError,
                                    ("layer 'nosuch' does not exist",)),
    "diff_size of a missing layer": Case(lambda d: d.diff_size("nosuch"), FileNotFoundError,
                                         ("layer 'nosuch' does not exist",)),
    "parent of a missing layer": Case(lambda d: d.parent("nosuch"), FileNotFoundError,
                                      ("layer 'nosuch' does not exist",)),
    "apply to a missing layer": Case(lambda d: d.apply_diff("nosuch", None, io.BytesIO(GOOD)), FileNotFoundError,
                                     ("layer 'nosuch' does not exist",)),
    "apply on a read-only home": Case(lambda d: d.apply_diff("child", None, io.BytesIO(GOOD)), OSError,
                                      ("layer 'child': cannot apply a tarball to it: Read-only file system",),
                                      read_only=True),
    "apply a hard link to a missing target": Case(
        apply("hard link to a missing target"), ArchiveError,
        ("layer 'child' left as it was: ", "hard link 'link' points at 'nosuchtarget', which is neither in the layer "
                                          "nor earlier in the tarball")),
    "apply a truncated tar": Case(apply("truncated tar"), ArchiveError,
                                  ("layer 'child' left as it was: ", "truncated at byte 700")),
    "apply a truncated gzip stream": Case(apply("truncated gzip"), ArchiveError,
                                          ("layer 'child' left as it was: ", "the gzip stream is truncated")),
    "apply a corrupt gzip stream": Case(apply("corrupt gzip"), ArchiveError,
                                        ("layer 'child' left as it was: ", "the gzip stream is corrupt")),
    "apply a truncated zstd stream": Case(apply("truncated zstd"), ArchiveError,
                                          ("layer 'child' left as it was: ", "the zstd stream is truncated")),
    "apply something that is not a tarball": Case(apply("not a tarball"), ArchiveError,
                                                  ("layer 'child' left as it was: ", "truncated at byte 100")),
})


def receive(stream: str, layer: str = "bad", parent: str | None = None,
            opts: CreateOpts | None = None) -> Callable[[Driver], object]:
    return lambda d: d.receive(layer, io.BytesIO(STREAMS[stream]), parent, opts)


DRIVER_CASES.update({
    "send a missing layer": Case(lambda d: d.send("nosuch"), FileNotFoundError, ("layer 'nosuch' does not exist",)),
    "send a plain directory": Case(lambda d: d.send("plain"), OSError,
                                   ("layer 'plain' is a plain directory, not a btrfs subvolume",)),
    "send against a missing parent": Case(lambda d: d.send("child", "nosuch"), FileNotFoundError,
                                          ("layer 'child': parent layer 'nosuch' does not exist",)),
    "send with an unknown protocol": Case(lambda d: d.send("child", protocol=3), ValueError,
                                          ("layer 'child': send protocol 3",)),
    "send on a read-only home": Case(lambda d: d.send("child"), OSError,
                                     ("layer 'child': cannot send it: Read-only file system",), read_only=True),
    "receive into an existing layer": Case(receive("whole", "base"), FileExistsError,
                                           ("layer 'base' already exists",)),
    "receive an invalid id": Case(receive("whole", "a/b"), ValueError, ("invalid layer id 'a/b'",)),
    "receive with an invalid size": Case(receive("whole", opts=CreateOpts(storage_opt={"size": "abc"})),
                                         OptionError, ("layer 'bad': ", "invalid size: 'abc'")),
    "receive against a missing parent": Case(receive("incremental", parent="nosuch"), FileNotFoundError,
                                             ("layer 'bad' not received: parent layer 'nosuch' does not exist",)),
    "receive an incremental stream without its parent": Case(
        receive("incremental"), ArchiveError, ("layer 'bad' not received: the stream is incremental",)),
    "receive an incremental stream against a parent not sent here": Case(
        receive("incremental", parent="base"), ArchiveError,
        ("layer 'bad' not received: ", "which parent layer 'base' was not received or sent as here")),
    "receive a full stream against a parent": Case(receive("whole", parent="base"), ArchiveError,
                                                   ("layer 'bad' not received: the stream is a full one",)),
    "receive a truncated stream": Case(receive("truncated"), ArchiveError,
                                       ("layer 'bad' not received: the send stream is truncated",), qgroups=True),
    "receive a stream with an unknown command": Case(receive("unknown command"), ArchiveError,
                                                     ("layer 'bad' not received: ", "unknown command 99"),
                                                     qgroups=True),
    "receive something that is not a stream": Case(receive("not a stream"), ArchiveError,
                                                   ("layer 'bad' not received: not a btrfs send stream",)),
    "receive a sized stream that is truncated": Case(
        receive("truncated", opts=CreateOpts(storage_opt={"size": "200m"})), ArchiveError,
        ("layer 'bad' not received: the send stream is truncated",), qgroups=True),
    "receive on a read-only home": Case(receive("whole"), OSError,
                                        ("layer 'bad': cannot receive it: Read-only file system",), read_only=True),
})


@pytest.mark.parametrize("name", sorted(DRIVER_CASES))
def test_driver_errors_name_the_layer_and_leave_the_store_as_it_was(store, name):
    case = DRIVER_CASES[name]
    if case.read_only:
        make_read_only(store)
    before = fingerprint(store)
    groups = qgroups(store) if case.qgroups else set()
    with Driver(store, options=list(case.options)) as d:
        with pytest.raises(case.error) as exc:
            case.call(d)
    message = str(exc.value)
    for needle in case.needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "staging" not in message and ".btrfsx" not in message, message
    if isinstance(exc.value, OSError):
        assert exc.value.errno and exc.value.filename, repr(exc.value)
        assert ".btrfsx" not in str(exc.value.filename), exc.value.filename
    assert fingerprint(store) == before
    if case.qgroups:
        assert qgroups(store) == groups
    with Driver(store) as d:
        assert d.parent("child") == "base"  # a failed apply_diff keeps the layer's place in the lineage


# ---------------------------------------------------------------- the command line

def btrfsx(*args: str, home, stdin: bytes | None = None, env_extra: dict | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("BTRFSX_HOME", "BTRFSX_OPTIONS")}
    env.update(env_extra or {})
    # --home first: after `run`, everything is the command's
    return subprocess.run([sys.executable, "-m", "btrfsx", "--home", str(home), *args], input=stdin,
                          capture_output=True, env=env)


@dataclass
class CliCase:
    argv: tuple[str, ...]
    needles: tuple[str, ...]
    stdin: bytes | None = None
    options: str = ""   # BTRFSX_OPTIONS, space-separated
    read_only: bool = False
    qgroups: bool = False


CLI_CASES: dict[str, CliCase] = {
    "create --size 0": CliCase(("create", "bad", "--size", "0"), ("layer 'bad': btrfs: invalid storage size: 0B",)),
    "create --size abc": CliCase(("create", "bad", "--parent", "base", "--size", "abc"),
                                 ("layer 'bad': ", "invalid size: 'abc'")),
    "create --size ''": CliCase(("create", "bad", "--size", ""), ("layer 'bad': ", "invalid size: ''")),
    "create below btrfs.min_space": CliCase(("create", "bad", "--size", "10m"),
                                            ("layer 'bad': btrfs: storage size cannot be less than 104.9MB",),
                                            options="btrfs.min_space=100m btrfsx.quota=simple"),
    "create --rw below btrfs.min_space": CliCase(("create", "bad", "--rw", "-o", "btrfs.size=10m"),
                                                 ("layer 'bad': ", "cannot be less than 104.9MB"),
                                                 options="btrfs.min_space=100m"),
    "create with a missing parent": CliCase(("create", "bad", "--parent", "nosuch"),
                                            ("parent layer 'nosuch' does not exist",)),
    "create an existing layer": CliCase(("create", "base"), ("layer 'base' already exists",)),
    "create an invalid id": CliCase(("create", "a/b"), ("invalid layer id 'a/b'",)),
    "create on a read-only home": CliCase(("create", "new"), ("layer 'new': cannot create it: Read-only file system",),
                                          read_only=True),
    "an unknown driver option": CliCase(("ls", "-o", "btrfs.bogus=1"), ("Unknown option btrfs.bogus",)),
    "rm a missing layer": CliCase(("rm", "nosuch"), ("'nosuch'",)),
    "rm a plain directory": CliCase(("rm", "plain"), ("'plain'",)),
    "rm on a read-only home": CliCase(("rm", "child"), ("layer 'child': cannot remove it: Read-only file system",),
                                      read_only=True),
    "path of a missing layer": CliCase(("path", "nosuch"), ("layer 'nosuch' does not exist",)),
    "changes of a missing layer": CliCase(("changes", "nosuch"), ("layer 'nosuch' does not exist",)),
    "changes against a missing parent": CliCase(("changes", "child", "--parent", "nosuch"),
                                                ("layer 'nosuch' does not exist",)),
    "diff-size of a missing layer": CliCase(("diff-size", "nosuch"), ("layer 'nosuch' does not exist",)),
    "diff of a missing layer": CliCase(("diff", "nosuch", "-o", "/dev/null"), ("layer 'nosuch' does not exist",)),
    "apply to a missing layer": CliCase(("apply", "nosuch", "-"), ("layer 'nosuch' does not exist",), stdin=GOOD),
    "apply a missing file": CliCase(("apply", "child", "/nonexistent/layer.tar"), ("/nonexistent/layer.tar",)),
    "apply a truncated zstd stream": CliCase(("apply", "child", "-"),
                                             ("layer 'child' left as it was: ", "the zstd stream is truncated"),
                                             stdin=TARBALLS["truncated zstd"]),
    "apply a hard link to a missing target": CliCase(
        ("apply", "child", "-"), ("layer 'child' left as it was: ", "hard link 'link' points at 'nosuchtarget'"),
        stdin=TARBALLS["hard link to a missing target"]),
    "apply on a read-only home": CliCase(("apply", "child", "-"), ("layer 'child': cannot apply a tarball to it",),
                                         stdin=GOOD, read_only=True),
    "export-oci of a missing layer": CliCase(("export-oci", "nosuch", "/tmp/btrfsx-test-errors-oci"),
                                             ("layer 'nosuch' does not exist",)),
    "run from a missing layer": CliCase(("run", "--from", "nosuch", "--", "true"),
                                        ("template 'nosuch': layer 'nosuch' does not exist",)),
    "run without a command": CliCase(("run", "--from", "base"), ("no command to run",)),
    "run with a failing build": CliCase(("run", "--from", "fresh", "--build", "exit 3", "--key", "k", "--", "true"),
                                        ("template build command 'exit 3' failed (exit status 3)",)),
    "run a command that is not found": CliCase(("run", "--from", "base", "--", "no-such-command-btrfsx"),
                                               ("template 'base': command not found: no-such-command-btrfsx",)),
    "export-oci with a bad tag": CliCase(("export-oci", "child", "/tmp/btrfsx-test-errors-oci", "--tag", "bad tag!"),
                                         ("'bad tag!'",)),
    "send a missing layer": CliCase(("send", "nosuch", "-o", "/dev/null"), ("layer 'nosuch' does not exist",)),
    "send against a missing parent": CliCase(("send", "child", "--parent", "nosuch", "-o", "/dev/null"),
                                             ("layer 'child': parent layer 'nosuch' does not exist",)),
    "send on a read-only home": CliCase(("send", "child", "-o", "/dev/null"),
                                        ("layer 'child': cannot send it: Read-only file system",), read_only=True),
    "receive into an existing layer": CliCase(("receive", "base", "-"), ("layer 'base' already exists",),
                                              stdin=STREAMS["whole"]),
    "receive a missing file": CliCase(("receive", "bad", "/nonexistent/layer.stream"), ("/nonexistent/layer.stream",)),
    "receive against a missing parent": CliCase(("receive", "bad", "--parent", "nosuch", "-"),
                                                ("layer 'bad' not received: parent layer 'nosuch' does not exist",),
                                                stdin=STREAMS["incremental"]),
    "receive an incremental stream against a parent not sent here": CliCase(
        ("receive", "bad", "--parent", "base", "-"), ("layer 'bad' not received: ", "was not received or sent as here"),
        stdin=STREAMS["incremental"]),
    "receive a truncated stream": CliCase(("receive", "bad", "-"),
                                          ("layer 'bad' not received: the send stream is truncated",),
                                          stdin=STREAMS["truncated"], qgroups=True),
    "receive with a bad size": CliCase(("receive", "bad", "--size", "abc", "-"),
                                       ("layer 'bad': ", "invalid size: 'abc'"), stdin=STREAMS["whole"]),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_errors_are_one_line_naming_the_layer_with_exit_status_1(store, name):
    case = CLI_CASES[name]
    if case.read_only:
        make_read_only(store)
    before = fingerprint(store)
    groups = qgroups(store) if case.qgroups else set()
    proc = btrfsx(*case.argv, home=store, stdin=case.stdin,
                  env_extra={"BTRFSX_OPTIONS": case.options} if case.options else None)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("btrfsx: "), err
    for needle in case.needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "staging" not in err and ".btrfsx" not in err, err
    assert fingerprint(store) == before
    if case.qgroups:
        assert qgroups(store) == groups
    assert not list(Path(store, ".btrfsx", "templates").glob("*/record"))
    assert not os.path.exists("/tmp/btrfsx-test-errors-oci/index.json")


def test_every_command_that_takes_a_layer_id_has_an_error_case():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    taking_ids = sorted(name for name, sub in commands.items()
                        if any(a.dest in ("id", "ids") for a in sub._actions))
    assert taking_ids, "no command takes a layer id: the parser changed shape"
    covered = {case.argv[0] for case in CLI_CASES.values()}
    exempt = {"exists"}  # its answer is its exit status: 1 without a message is not an error
    assert [name for name in taking_ids if name not in covered | exempt] == []
