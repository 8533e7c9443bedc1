"""Layers as btrfs send streams (issue #17): Driver.send / Driver.receive,
between two stores on two btrfs filesystems, and every refusal leaving
nothing behind."""

from __future__ import annotations

import gc
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from btrfsx import ArchiveError, CreateOpts, Driver, _ioctl, transport
from btrfsx.loopback import Loopback
from tests_support import assert_same_tree, drop_deleted_subvolumes, limit_of, make_chain

pytestmark = pytest.mark.btrfs

MiB = 1 << 20


@pytest.fixture
def pair(btrfs_fs, btrfs_dir):
    """Two stores on two filesystems: (sender, receiver)."""
    a = Driver(btrfs_fs.mountpoint / "home")
    b = Driver(btrfs_dir / "home")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def transfer(a: Driver, b: Driver, layer: str, parent: str | None = None, **kw) -> int:
    with a.send(layer, parent, **kw) as stream:
        return b.receive(layer, stream, parent)


def stream_of(d: Driver, layer: str, parent: str | None = None, **kw) -> bytes:
    with d.send(layer, parent, **kw) as stream:
        return stream.read()


# ---------------------------------------------------------------- crafting streams

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """btrfs's send-stream CRC: CRC-32C from 0, no final inversion."""
    c = 0
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c


def commands(data: bytes) -> tuple[bytes, list[tuple[int, bytes, int]]]:
    """The stream header and [(command, attributes, crc)]."""
    pos, out = 17, []
    while pos < len(data):
        length, cmd, crc = struct.unpack_from("<IHI", data, pos)
        out.append((cmd, data[pos + 10:pos + 10 + length], crc))
        pos += 10 + length
    return data[:17], out


def build(header: bytes, cmds) -> bytes:
    out = [header]
    for cmd, body, *_ in cmds:
        raw = struct.pack("<IHI", len(body), cmd, 0) + body
        out.append(struct.pack("<IHI", len(body), cmd, crc32c(raw)) + body)
    return b"".join(out)


def tlvs(body: bytes) -> list[tuple[int, bytes]]:
    pos, out = 0, []
    while pos < len(body):
        kind, size = struct.unpack_from("<HH", body, pos)
        out.append((kind, body[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return out


def untlv(attrs) -> bytes:
    return b"".join(struct.pack("<HH", k, len(v)) + v for k, v in attrs)


# ---------------------------------------------------------------- nothing left behind

def qgroups_of_gone_subvolumes(home) -> list[int]:
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        drop_deleted_subvolumes(fd)
        live = {item.objectid for item in _ioctl.TreeSearch(
            fd, _ioctl.ROOT_TREE_OBJECTID, min_objectid=_ioctl.FIRST_FREE_OBJECTID,
            max_objectid=_ioctl.LAST_FREE_OBJECTID, min_type=_ioctl.ROOT_ITEM_KEY, max_type=_ioctl.ROOT_ITEM_KEY)
            if item.type == _ioctl.ROOT_ITEM_KEY and _ioctl.decode_root_item(item.data).refs}
        try:
            groups = [item.offset for item in _ioctl.TreeSearch(
                fd, _ioctl.QUOTA_TREE_OBJECTID, min_type=_ioctl.QGROUP_INFO_KEY, max_type=_ioctl.QGROUP_INFO_KEY)
                if item.type == _ioctl.QGROUP_INFO_KEY]
        except FileNotFoundError:
            return []
        return [q for q in groups if q >> 48 == 0 and q >= _ioctl.FIRST_FREE_OBJECTID and q not in live]
    finally:
        os.close(fd)


def assert_nothing_left(d: Driver, layer: str, layers_before: list[str], stale_before: set[int]) -> None:
    home = Path(d.home)
    assert d.layers() == layers_before
    assert not d.exists(layer)
    assert not (home / ".btrfsx" / "twins" / layer).exists()
    receiving = home / ".btrfsx" / "receiving"
    assert not receiving.exists() or os.listdir(receiving) == []
    staging = home / ".btrfsx" / "staging"
    assert all(os.listdir(staging / name) == [] for name in os.listdir(staging))
    assert not (home / "quotas" / layer).exists()
    d.gc()
    # other tests share the filesystem: only qgroups gone stale since count
    assert set(qgroups_of_gone_subvolumes(home)) - stale_before == set()


# ---------------------------------------------------------------- round trips

def test_a_chain_of_five_layers_round_trips_to_another_filesystem(pair):
    a, b = pair
    base, mid, top = make_chain(a)
    a.create("l4", top)
    root = Path(a.get("l4"))
    (root / "usr/bin/tool").write_bytes(b"rewritten in place\n")      # a hard-linked file's content
    os.chmod(root / "etc/shadow", 0o600)
    os.chown(root / "usr/share/doc/README", 7, 8)
    os.setxattr(root / "etc/shadow", "user.added", b"l4")
    os.removexattr(root / "etc/passwd", "user.origin")
    os.mknod(root / "etc/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mkfifo(root / "etc/fifo2")
    os.symlink("../etc/passwd", root / "usr/passwd-link")
    os.link(root / "etc/shadow", root / "etc/shadow-link")
    os.utime(root / "etc/shadow", ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))
    a.create("l5", "l4")
    root = Path(a.get("l5"))
    (root / "big").write_bytes(os.urandom(2 * MiB))
    os.rename(root / "etc/null", root / "etc/null-renamed")
    os.unlink(root / "usr/passwd-link")
    chain = [base, mid, top, "l4", "l5"]
    parent = None
    for layer in chain:
        n = transfer(a, b, layer, parent)
        assert n > 0
        assert_same_tree(a.get(layer), b.get(layer))
        assert b.parent(layer) == parent
        if parent:
            assert sorted(map(str, b.changes(layer, parent))) == sorted(map(str, a.changes(layer, parent)))
        parent = layer
    assert b.layers() == sorted(chain)
    assert {info.id: info.parent for info in b.layer_infos()} == dict(zip(chain, [None] + chain[:-1]))


def test_children_of_one_parent_stay_incremental(pair):
    a, b = pair
    a.create("base")
    (Path(a.get("base")) / "data").write_bytes(os.urandom(4 * MiB))
    full = transfer(a, b, "base")
    assert full > 4 * MiB
    twin = Path(a.home) / ".btrfsx" / "twins" / "base" / "twin"
    fd = os.open(twin, os.O_RDONLY)
    try:
        first = str(_ioctl.get_subvolume_info(fd).uuid)
    finally:
        os.close(fd)
    sizes = []
    for child in ("c1", "c2", "c3"):
        a.create(child, "base")
        (Path(a.get(child)) / f"{child}.txt").write_bytes(b"x" * 4096)
        for _ in Path(a.get("base")).rglob("*"):  # reading the parent (atimes) keeps its twin
            pass
        (Path(a.get("base")) / "data").read_bytes()
        sizes.append(transfer(a, b, child, "base"))
        assert_same_tree(a.get(child), b.get(child))
        assert b.parent(child) == "base"
    assert max(sizes) < 64 * 1024, sizes
    fd = os.open(twin, os.O_RDONLY)
    try:
        assert str(_ioctl.get_subvolume_info(fd).uuid) == first
    finally:
        os.close(fd)


def test_a_layer_changed_after_it_was_sent_is_sent_anew(pair):
    a, b = pair
    a.create("l")
    (Path(a.get("l")) / "f").write_bytes(b"one")
    first = stream_of(a, "l")
    (Path(a.get("l")) / "f").write_bytes(b"two")
    transfer(a, b, "l")
    assert (Path(b.get("l")) / "f").read_bytes() == b"two"
    assert first != stream_of(a, "l")


def test_a_received_layer_sends_on_incrementally(pair, btrfs_dir):
    """A third store takes from the second what the second took from the first."""
    a, b = pair
    a.create("base")
    (Path(a.get("base")) / "f").write_bytes(os.urandom(MiB))
    a.create("app", "base")
    (Path(a.get("app")) / "g").write_bytes(b"g")
    transfer(a, b, "base")
    transfer(a, b, "app", "base")
    with Driver(btrfs_dir / "third") as c:
        transfer(b, c, "base")
        n = transfer(b, c, "app", "base")
        assert n < 64 * 1024
        assert_same_tree(a.get("app"), c.get("app"))
        assert c.parent("app") == "base"


@pytest.mark.parametrize("protocol", [1, 2])
def test_both_protocol_versions_on_a_compressed_filesystem(protocol, btrfs_available, btrfs_dir):
    if protocol > transport.kernel_protocol():
        pytest.skip("the kernel sends protocol 1 only")
    mnt = tempfile.mkdtemp(prefix="btrfsx-mnt-")
    with Loopback.create("/var/tmp", mnt, size=512 * MiB, mount_options="compress-force=zstd") as fs:
        fs._owns_mountpoint = True
        with Driver(fs.mountpoint / "home") as a, Driver(btrfs_dir / "home") as b:
            a.create("z")
            (Path(a.get("z")) / "text").write_bytes(b"compressible line of text\n" * 200_000)  # 5.2 MB
            (Path(a.get("z")) / "small").write_bytes(b"s")
            data = stream_of(a, "z", protocol=protocol)
            assert struct.unpack_from("<I", data, 13)[0] == protocol
            if protocol == 2:
                assert len(data) < 1 * MiB  # compressed extents sent as they are
            else:
                assert len(data) > 5_000_000
            assert b.receive("z", io.BytesIO(data)) == len(data)
            assert_same_tree(a.get("z"), b.get("z"))


def test_a_received_layer_is_an_ordinary_writable_layer(pair):
    a, b = pair
    a.create("base")
    (Path(a.get("base")) / "f").write_bytes(b"f")
    with a.send("base") as stream:
        b.receive("sized", stream, None, CreateOpts(storage_opt={"size": "64M"}))
    assert limit_of(b.home, b.get("sized")) == 64 * MiB
    assert (Path(b.home) / "quotas" / "sized").read_text() == str(64 * MiB)
    (Path(b.get("sized")) / "new").write_bytes(b"written")       # writable
    assert [str(c) for c in b.changes("sized")] == ["A /f", "A /new"]
    with b.diff("sized") as tar:
        assert len(tar.read()) > 0
    b.create("child", "sized")
    assert b.parent("child") == "sized"
    b.remove("child")
    b.remove("sized")
    assert not (Path(b.home) / ".btrfsx" / "twins" / "sized").exists()
    assert not (Path(b.home) / "quotas" / "sized").exists()


def test_btrfs_size_applies_to_a_received_layer(btrfs_fs, btrfs_dir):
    with Driver(btrfs_fs.mountpoint / "home") as a, Driver(btrfs_dir / "home", options=["btrfs.size=96M"]) as b:
        a.create("l")
        transfer(a, b, "l")
        assert limit_of(b.home, b.get("l")) == 96 * MiB


def test_remove_and_gc_reclaim_twins(pair):
    a, b = pair
    a.create("l")
    a.create("m")
    stream_of(a, "l")
    stream_of(a, "m")
    twins = Path(a.home) / ".btrfsx" / "twins"
    assert sorted(os.listdir(twins)) == ["l", "m"]
    a.remove("l")
    assert os.listdir(twins) == ["m"]
    # removed by another program: gc takes the twin
    fd = os.open(Path(a.home) / "subvolumes", os.O_RDONLY)
    try:
        _ioctl.destroy_subvolume(fd, "m")
    finally:
        os.close(fd)
    report = a.gc()
    assert str(twins / "m") in report.subvolumes
    assert os.listdir(twins) == []
    # and a twin whose layer was made anew under its id
    a.create("n")
    stream_of(a, "n")
    a.remove("n")
    a.create("n")
    report = a.gc()
    assert os.listdir(twins) == []


# ---------------------------------------------------------------- refusals

def _refused(b: Driver, data: bytes, layer="x", parent=None, exc=ArchiveError, match=None):
    before, stale = b.layers(), set(qgroups_of_gone_subvolumes(b.home))
    with pytest.raises(exc) as info:
        b.receive(layer, io.BytesIO(data), parent)
    assert f"layer {layer!r}" in str(info.value)
    if match:
        assert match in str(info.value), str(info.value)
    assert_nothing_left(b, layer, before, stale)
    return info.value


@pytest.fixture
def streams(pair):
    """A full stream of layer 'base' and an incremental one of 'app' against it (protocol 1)."""
    a, b = pair
    a.create("base")
    root = Path(a.get("base"))
    (root / "f").write_bytes(os.urandom(3 * MiB))
    (root / "dir").mkdir()
    (root / "dir/g").write_bytes(b"g" * 100)
    a.create("app", "base")
    (Path(a.get("app")) / "h").write_bytes(b"h")
    return a, b, stream_of(a, "base", protocol=1), stream_of(a, "app", "base", protocol=1)


def test_crc_helper_matches_the_kernel(streams):
    _, _, full, _ = streams
    header, cmds = commands(full)
    assert build(header, cmds) == full


@pytest.mark.parametrize("cut", ["empty", "header", "first command", "midway", "before end"])
def test_a_truncated_stream_is_refused(streams, cut):
    _, b, full, _ = streams
    header, cmds = commands(full)
    data = {"empty": b"", "header": full[:10], "first command": full[:17 + 12],
            "midway": full[:len(full) // 2], "before end": full[:-10]}[cut]
    assert cmds[-1][0] == 21 and len(full) - 10 == len(build(header, cmds[:-1]))
    _refused(b, data, match="empty" if cut == "empty" else "truncated")


def test_a_bad_crc_is_refused(streams):
    _, b, full, _ = streams
    data = bytearray(full)
    data[len(data) // 2] ^= 0xFF  # inside a write's data
    _refused(b, bytes(data), match="btrfs receive failed")


def test_an_unknown_command_is_refused(streams):
    _, b, full, _ = streams
    header, cmds = commands(full)
    cmds.insert(3, (99, b"", 0))
    _refused(b, build(header, cmds), match="unknown command 99")


def test_a_bad_length_is_refused(streams):
    _, b, full, _ = streams
    header, cmds = commands(full)
    cmd, body, _ = cmds[2]
    kind, size = struct.unpack_from("<HH", body, 0)
    bad = struct.pack("<HH", kind, 60000) + body[4:]  # an attribute longer than its command
    cmds[2] = (cmd, bad, 0)
    _refused(b, build(header, cmds), match="btrfs receive failed")


def test_bytes_after_the_end_are_refused(streams):
    _, b, full, _ = streams
    _refused(b, full + b"more", match="after its end")


def test_not_a_stream_is_refused(pair):
    _, b = pair
    _refused(b, b"\x00" * 4096, match="not a btrfs send stream")


def test_an_incremental_stream_needs_its_parent(streams):
    a, b, full, incremental = streams
    _refused(b, incremental, match="incremental")                      # no parent given
    b.create("base")                                                  # a layer of that name, not the one sent
    _refused(b, incremental, parent="base", match="was not received or sent as here")
    b.remove("base")
    _refused(b, incremental, parent="base", exc=FileNotFoundError, match="does not exist")
    b.receive("base", io.BytesIO(full))
    _refused(b, full, layer="y", parent="base", match="full one")
    assert b.receive("app", io.BytesIO(incremental), "base") == len(incremental)
    assert_same_tree(a.get("app"), b.get("app"))


def test_a_stream_that_writes_outside_its_subvolume_is_refused(streams):
    """A file made at ../../escaped (and never renamed into the subvolume:
    btrfs refuses a rename across subvolumes) lands, confined by the chroot,
    beside the received subvolume: refused, and removed."""
    _, b, full, _ = streams
    header, cmds = commands(full)
    temp = next(dict(tlvs(body))[15] for cmd, body, _ in cmds if cmd == 3)  # the first MKFILE's temporary name
    final = next(dict(tlvs(body))[16] for cmd, body, _ in cmds if cmd == 9 and dict(tlvs(body))[15] == temp)
    names = (temp, final)
    out = []
    for cmd, body, crc in cmds:
        if cmd == 15:  # WRITE: its path first, then offset and data (which may hold anything)
            kind, size = struct.unpack_from("<HH", body, 0)
            if body[4:4 + size] in names:
                body = untlv([(15, b"../../escaped")]) + body[4 + size:]
        else:
            attrs = tlvs(body)
            if cmd == 9 and dict(attrs).get(15) == temp:
                continue
            body = untlv([(k, b"../../escaped" if k == 15 and v in names else v) for k, v in attrs])
        out.append((cmd, body, crc))
    _refused(b, build(header, out), match="outside its subvolume")
    assert not (Path(b.home) / "escaped").exists() and not (Path(b.home).parent / "escaped").exists()


def test_a_stream_naming_its_subvolume_with_a_path_is_refused(streams):
    _, b, full, _ = streams
    header, cmds = commands(full)
    attrs = [(k, b"../evil" if k == 15 else v) for k, v in tlvs(cmds[0][1])]
    cmds[0] = (cmds[0][0], untlv(attrs), 0)
    _refused(b, build(header, cmds), match="single directory entry")


def test_an_existing_or_invalid_id_is_refused_before_reading(streams):
    _, b, full, _ = streams
    b.create("taken")
    src = io.BytesIO(full)
    with pytest.raises(FileExistsError, match="layer 'taken' already exists"):
        b.receive("taken", src)
    assert src.tell() == 0
    with pytest.raises(ValueError, match="invalid layer id"):
        b.receive("a/b", src)


def test_a_refused_sized_receive_leaves_no_qgroup(streams):
    _, b, full, _ = streams
    before, stale = b.layers(), set(qgroups_of_gone_subvolumes(b.home))
    with pytest.raises(ArchiveError):
        b.receive("q", io.BytesIO(full[:-10]), None, CreateOpts(storage_opt={"size": "64M"}))
    assert_nothing_left(b, "q", before, stale)


def test_send_errors_name_the_layer(pair):
    a, _ = pair
    with pytest.raises(FileNotFoundError, match="layer 'nope' does not exist"):
        a.send("nope")
    a.create("l")
    with pytest.raises(FileNotFoundError, match="parent layer 'nope' does not exist"):
        a.send("l", "nope")
    with pytest.raises(ValueError, match="protocol 3"):
        a.send("l", protocol=3)


def test_closing_a_send_stream_early_stops_the_send(pair):
    a, _ = pair
    a.create("l")
    (Path(a.get("l")) / "f").write_bytes(os.urandom(8 * MiB))
    stream = a.send("l")
    got = b""
    while len(got) < 4096:
        got += stream.read(4096)
    stream.close()  # the kernel's write gets EPIPE; nothing raised here
    assert len(stream_of(a, "l")) > 8 * MiB


def _send_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("btrfsx-send-")]


def test_a_send_stream_dropped_unread_ends_its_send(pair):
    # a reader that stops reading and lets go of the stream without closing
    # it: the send, blocked on the full pipe, must end, not wait forever
    a, _ = pair
    a.create("l")
    (Path(a.get("l")) / "f").write_bytes(os.urandom(8 * MiB))
    assert _send_threads() == []
    stream = a.send("l")
    stream.read(4096)
    assert len(_send_threads()) == 1
    del stream
    gc.collect()
    deadline = time.monotonic() + 10
    while _send_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _send_threads() == []
    a.remove("l")  # its twin's fd was closed too: nothing holds the layer
    assert not a.exists("l")


# ---------------------------------------------------------------- the command

def btrfsx(*args, stdin=None, check=True):
    return subprocess.run([sys.executable, "-m", "btrfsx", *args], input=stdin, capture_output=True, check=check)


def test_cli_send_and_receive_over_a_pipe(pair, tmp_path):
    a, b = pair
    a.create("base")
    (Path(a.get("base")) / "f").write_bytes(b"f" * 10000)
    a.create("app", "base")
    (Path(a.get("app")) / "g").write_bytes(b"g")
    out = btrfsx("send", "base", "-o", str(tmp_path / "base.stream"), "--home", a.home, "--json")
    sent = json.loads(out.stdout)
    assert sent["bytes"] == (tmp_path / "base.stream").stat().st_size and sent["seconds"] >= 0
    got = json.loads(btrfsx("receive", "base", str(tmp_path / "base.stream"), "--home", b.home, "--json").stdout)
    assert got["bytes"] == sent["bytes"]
    stream = btrfsx("send", "app", "--parent", "base", "--home", a.home).stdout
    proc = btrfsx("receive", "app", "--parent", "base", "-", "--home", b.home, stdin=stream)
    assert b"received app" in proc.stdout
    assert_same_tree(a.get("app"), b.get("app"))
    proc = btrfsx("receive", "app2", "-", "--home", b.home, stdin=stream, check=False)
    assert proc.returncode == 1 and b"layer 'app2' not received" in proc.stderr
