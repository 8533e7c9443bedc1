"""The compiled ioctl layer, against a real btrfs filesystem on a loop device."""

import errno
import os
import stat
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from btrfsx import _ioctl as io


@pytest.fixture
def dirfd(btrfs_dir):
    fd = os.open(btrfs_dir, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture
def fsfd(btrfs_fs):
    """An fd on the root of a fresh filesystem (for quota and id tests)."""
    fd = os.open(btrfs_fs.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def opendir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def populate(root: Path, n: int) -> None:
    for i in range(n):
        (root / f"f{i:05d}").write_bytes(b"%d" % i)


# ---------------------------------------------------------------- the build

def test_compiled_module_is_imported():
    assert io.__file__.endswith(".so"), io.__file__
    assert not Path(io.__file__).with_suffix(".py").exists()


def test_every_ioctl_releases_the_gil():
    """Each kernel call in _ioctl.pyx sits in a ``with nogil:`` block."""
    source = (Path(__file__).parent.parent / "btrfsx" / "_ioctl.pyx").read_text()
    lines = source.splitlines()
    calls = [i for i, line in enumerate(lines)
             if ("_ioctl(" in line or "c_statfs(" in line or "c_fstatfs(" in line
                 or "c_openat(" in line)
             and "def " not in line and "cdef " not in line]
    assert len(calls) >= 20
    for i in calls:
        indent = len(lines[i]) - len(lines[i].lstrip())
        enclosing = next(lines[j] for j in range(i - 1, -1, -1)
                         if lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) < indent)
        # a ``with nogil:`` block, or a function declared ``nogil``
        assert enclosing.strip() == "with nogil:" or enclosing.rstrip().endswith(" nogil:"), \
            f"line {i + 1}: {lines[i].strip()}"


# ---------------------------------------------------------------- names

BAD_NAMES = ["", ".", "..", "a/b", "/abs", "a\0b", b"x" * 256, "é" * 128]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
@pytest.mark.parametrize("call", ["create", "snapshot", "destroy"])
def test_invalid_names_are_refused_before_any_ioctl(name, call):
    # fd -1 would fail with EBADF if the kernel were reached.
    with pytest.raises(ValueError, match="not a valid subvolume name"):
        if call == "create":
            io.create_subvolume(-1, name)
        elif call == "snapshot":
            io.snapshot(-1, -1, name)
        else:
            io.destroy_subvolume(-1, name)


def test_longest_name_and_bytes_names(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "n" * 255)
    assert (btrfs_dir / ("n" * 255)).is_dir()
    raw = b"caf\xe9-not-utf8"
    io.create_subvolume(dirfd, raw)
    assert raw in os.listdir(os.fsencode(btrfs_dir))
    io.destroy_subvolume(dirfd, raw)
    assert raw not in os.listdir(os.fsencode(btrfs_dir))


# ---------------------------------------------------------------- create, snapshot, destroy

def test_create_subvolume(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "layer")
    path = btrfs_dir / "layer"
    st = path.stat()
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_ino == io.FIRST_FREE_OBJECTID
    assert io.is_subvolume(path)
    assert os.listdir(path) == []
    assert st.st_dev != btrfs_dir.stat().st_dev  # every subvolume has its own st_dev


def test_create_existing_name_raises_file_exists_with_path(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "layer")
    with pytest.raises(FileExistsError) as exc:
        io.create_subvolume(dirfd, "layer")
    assert exc.value.errno == errno.EEXIST
    assert exc.value.filename == str(btrfs_dir / "layer")
    (btrfs_dir / "plain").mkdir()
    with pytest.raises(FileExistsError):
        io.create_subvolume(dirfd, "plain")


def test_create_on_non_btrfs_raises_enotty(non_btrfs_dir):
    fd = opendir(non_btrfs_dir)
    try:
        with pytest.raises(OSError) as exc:
            io.create_subvolume(fd, "layer")
        assert exc.value.errno == errno.ENOTTY
        assert exc.value.filename == str(non_btrfs_dir / "layer")
    finally:
        os.close(fd)
    assert not (non_btrfs_dir / "layer").exists()


def test_bad_fd_raises_ebadf():
    with pytest.raises(OSError) as exc:
        io.create_subvolume(987654, "x")
    assert exc.value.errno == errno.EBADF
    assert "987654" in str(exc.value)


def test_snapshot_copies_contents_and_records_parent(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "base")
    base = btrfs_dir / "base"
    populate(base, 50)
    (base / "sub").mkdir(mode=0o750)
    os.symlink("f00001", base / "link")
    src = opendir(base)
    try:
        io.snapshot(src, dirfd, "child")
        base_info = io.get_subvolume_info(src)
    finally:
        os.close(src)
    child = btrfs_dir / "child"
    assert sorted(os.listdir(child)) == sorted(os.listdir(base))
    assert (child / "f00042").read_bytes() == b"42"
    assert os.readlink(child / "link") == "f00001"
    assert stat.S_IMODE((child / "sub").stat().st_mode) == 0o750
    cfd = opendir(child)
    try:
        info = io.get_subvolume_info(cfd)
        assert info.parent_uuid == base_info.uuid
        assert info.uuid != base_info.uuid
        assert io.get_subvolume_flags(cfd) == 0
    finally:
        os.close(cfd)
    (child / "new").write_text("x")  # writable
    assert not (base / "new").exists()


def test_readonly_snapshot(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "base")
    src = opendir(btrfs_dir / "base")
    try:
        io.snapshot(src, dirfd, "ro", readonly=True)
    finally:
        os.close(src)
    fd = opendir(btrfs_dir / "ro")
    try:
        assert io.get_subvolume_flags(fd) == io.SUBVOL_RDONLY
        assert io.get_subvolume_info(fd).flags & io.ROOT_SUBVOL_RDONLY
    finally:
        os.close(fd)
    with pytest.raises(OSError) as exc:
        (btrfs_dir / "ro" / "x").write_text("x")
    assert exc.value.errno == errno.EROFS


def test_snapshot_leaves_nested_subvolumes_out(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "base")
    inner_parent = opendir(btrfs_dir / "base")
    try:
        io.create_subvolume(inner_parent, "nested")
        (btrfs_dir / "base" / "nested" / "data").write_text("x")
        io.snapshot(inner_parent, dirfd, "snap")
    finally:
        os.close(inner_parent)
    nested_copy = btrfs_dir / "snap" / "nested"
    assert nested_copy.is_dir() and os.listdir(nested_copy) == []
    assert not io.is_subvolume(nested_copy)


def test_snapshot_errors(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "base")
    (btrfs_dir / "plain").mkdir()
    src = opendir(btrfs_dir / "base")
    plain = opendir(btrfs_dir / "plain")
    try:
        io.snapshot(src, dirfd, "snap")
        with pytest.raises(FileExistsError) as exc:
            io.snapshot(src, dirfd, "snap")
        assert exc.value.filename == str(btrfs_dir / "snap")
        with pytest.raises(OSError) as exc:
            io.snapshot(plain, dirfd, "of-plain")  # not a subvolume root
        assert exc.value.errno == errno.EINVAL
    finally:
        os.close(src)
        os.close(plain)


def test_destroy_subvolume(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "layer")
    populate(btrfs_dir / "layer", 20)
    io.destroy_subvolume(dirfd, "layer")
    assert not (btrfs_dir / "layer").exists()


def test_destroy_errors(btrfs_dir, dirfd):
    with pytest.raises(FileNotFoundError) as exc:
        io.destroy_subvolume(dirfd, "missing")
    assert exc.value.filename == str(btrfs_dir / "missing")
    (btrfs_dir / "plain").mkdir()
    with pytest.raises(OSError) as exc:
        io.destroy_subvolume(dirfd, "plain")
    assert exc.value.errno == errno.EINVAL
    io.create_subvolume(dirfd, "outer")
    outer = opendir(btrfs_dir / "outer")
    try:
        io.create_subvolume(outer, "inner")
    finally:
        os.close(outer)
    with pytest.raises(OSError) as exc:
        io.destroy_subvolume(dirfd, "outer")
    assert exc.value.errno == errno.ENOTEMPTY
    assert (btrfs_dir / "outer" / "inner").is_dir()


def test_destroy_subvolume_by_id(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "layer")
    fd = opendir(btrfs_dir / "layer")
    try:
        subvolid = io.subvolume_id(fd)
    finally:
        os.close(fd)
    io.destroy_subvolume_by_id(dirfd, subvolid)
    assert not (btrfs_dir / "layer").exists()
    with pytest.raises(FileNotFoundError) as exc:
        io.destroy_subvolume_by_id(dirfd, subvolid)
    assert f"<subvolume {subvolid}>" in exc.value.filename


def test_destroy_by_id_refuses_the_top_level(fsfd):
    with pytest.raises(OSError) as exc:
        io.destroy_subvolume_by_id(fsfd, io.FS_TREE_OBJECTID)
    assert exc.value.errno in (errno.EINVAL, errno.EPERM)


# ---------------------------------------------------------------- lookups

def test_subvolume_id_and_ino_lookup(btrfs_fs, fsfd):
    assert io.subvolume_id(fsfd) == io.FS_TREE_OBJECTID
    io.create_subvolume(fsfd, "a")
    a = btrfs_fs.mountpoint / "a"
    (a / "d").mkdir()
    (a / "d" / "f").write_text("x")
    fd = opendir(a)
    try:
        assert io.subvolume_id(fd) == io.FIRST_FREE_OBJECTID
        ino = (a / "d" / "f").stat().st_ino
        assert io.ino_lookup(fd, ino) == (io.FIRST_FREE_OBJECTID, b"d/f/")
        assert io.ino_lookup(fsfd, ino, io.FIRST_FREE_OBJECTID) == (io.FIRST_FREE_OBJECTID, b"d/f/")
        with pytest.raises(FileNotFoundError):
            io.ino_lookup(fd, 999999)
    finally:
        os.close(fd)


def test_get_subvolume_info(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "a")
    fd = opendir(btrfs_fs.mountpoint / "a")
    try:
        info = io.get_subvolume_info(fd)
    finally:
        os.close(fd)
    assert info.id == io.FIRST_FREE_OBJECTID
    assert info.name == "a"
    assert info.parent_id == io.FS_TREE_OBJECTID
    assert info.dir_id == io.FIRST_FREE_OBJECTID  # the top-level root directory
    assert info.parent_uuid is None and info.received_uuid is None
    assert info.generation >= info.otransid > 0
    assert abs(info.otime - os.stat(btrfs_fs.mountpoint / "a").st_ctime) < 5


def test_lookups_on_non_btrfs_raise_enotty(non_btrfs_dir):
    fd = opendir(non_btrfs_dir)
    try:
        for call in (io.get_subvolume_info, io.subvolume_id, io.get_subvolume_rootrefs,
                     io.get_subvolume_flags, io.sync, io.fs_info):
            with pytest.raises(OSError) as exc:
                call(fd)
            assert exc.value.errno == errno.ENOTTY, call
            assert exc.value.filename == str(non_btrfs_dir)
    finally:
        os.close(fd)


def test_rootrefs_list_every_child_past_the_255_per_call_limit(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "parent")
    parent = btrfs_fs.mountpoint / "parent"
    (parent / "d").mkdir()
    pfd = opendir(parent)
    dfd = opendir(parent / "d")
    try:
        for i in range(270):
            io.create_subvolume(pfd if i % 2 else dfd, f"c{i}")
        refs = io.get_subvolume_rootrefs(pfd)
        ids = set()
        for name in os.listdir(parent):
            if name.startswith("c"):
                fd = opendir(parent / name)
                ids.add(io.subvolume_id(fd))
                os.close(fd)
        for name in os.listdir(parent / "d"):
            fd = opendir(parent / "d" / name)
            ids.add(io.subvolume_id(fd))
            os.close(fd)
        assert len(refs) == 270
        assert {treeid for treeid, _ in refs} == ids
        assert {dirid for _, dirid in refs} == {io.FIRST_FREE_OBJECTID, (parent / "d").stat().st_ino}
        assert io.get_subvolume_rootrefs(dfd) == refs  # any fd inside the subvolume
    finally:
        os.close(pfd)
        os.close(dfd)


def test_subvolume_flags_roundtrip(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "layer")
    (btrfs_dir / "plain").mkdir()
    fd = opendir(btrfs_dir / "layer")
    plain = opendir(btrfs_dir / "plain")
    try:
        io.set_subvolume_flags(fd, io.SUBVOL_RDONLY)
        assert io.get_subvolume_flags(fd) == io.SUBVOL_RDONLY
        with pytest.raises(OSError):
            (btrfs_dir / "layer" / "x").write_text("x")
        io.set_subvolume_flags(fd, 0)
        assert io.get_subvolume_flags(fd) == 0
        (btrfs_dir / "layer" / "x").write_text("x")
        with pytest.raises(OSError) as exc:
            io.set_subvolume_flags(plain, io.SUBVOL_RDONLY)
        assert exc.value.errno == errno.EINVAL
    finally:
        os.close(fd)
        os.close(plain)


# ---------------------------------------------------------------- tree search

def test_tree_search_finds_root_refs(btrfs_fs, fsfd):
    for name in ("a", "b", "c"):
        io.create_subvolume(fsfd, name)
    items = [it for it in io.tree_search(fsfd, io.ROOT_TREE_OBJECTID,
                                         min_objectid=io.FS_TREE_OBJECTID, max_objectid=io.FS_TREE_OBJECTID,
                                         min_type=io.ROOT_REF_KEY, max_type=io.ROOT_REF_KEY)]
    assert [(it.objectid, it.type, it.offset) for it in items] == [(5, io.ROOT_REF_KEY, 256 + i) for i in range(3)]
    refs = [io.decode_root_ref(it.data) for it in items]
    assert [r.name for r in refs] == [b"a", b"b", b"c"]
    assert {r.dirid for r in refs} == {io.FIRST_FREE_OBJECTID}
    backrefs = [it for it in io.tree_search(fsfd, io.ROOT_TREE_OBJECTID,
                                            min_objectid=257, max_objectid=257,
                                            min_type=io.ROOT_BACKREF_KEY, max_type=io.ROOT_BACKREF_KEY)]
    assert len(backrefs) == 1 and backrefs[0].offset == io.FS_TREE_OBJECTID
    assert io.decode_root_ref(backrefs[0].data).name == b"b"


def test_subvolume_descendants_lists_root_refs_across_calls(btrfs_fs, fsfd):
    """More children than one 16 KiB search holds (long names), and a
    grandchild: the ROOT_REF items a TreeSearch finds, parents first."""
    io.create_subvolume(fsfd, "parent")
    pfd = opendir(btrfs_fs.mountpoint / "parent")
    names = [f"{i:03d}-" + "n" * 200 for i in range(150)]
    try:
        for name in names:
            io.create_subvolume(pfd, name)
        cfd = opendir(btrfs_fs.mountpoint / "parent" / names[-1])
        try:
            io.create_subvolume(cfd, "grandchild")
            last_id = io.subvolume_id(cfd)
        finally:
            os.close(cfd)
        parent_id = io.subvolume_id(pfd)

        def refs(subvolid):
            return [(it.offset, subvolid, io.decode_root_ref(it.data).dirid, io.decode_root_ref(it.data).name)
                    for it in io.TreeSearch(fsfd, io.ROOT_TREE_OBJECTID, min_objectid=subvolid,
                                            max_objectid=subvolid, min_type=io.ROOT_REF_KEY,
                                            max_type=io.ROOT_REF_KEY)]

        found = io.subvolume_descendants(fsfd, parent_id)
        assert found == refs(parent_id) + refs(last_id)
        assert [name.decode() for _, _, _, name in found] == names + ["grandchild"]
        assert io.subvolume_descendants(fsfd, last_id) == refs(last_id)
    finally:
        fd = opendir(btrfs_fs.mountpoint / "parent" / names[-1])
        io.destroy_subvolume(fd, "grandchild")
        os.close(fd)
        for name in names:
            io.destroy_subvolume(pfd, name)
        os.close(pfd)


def test_tree_search_streams_a_large_tree_in_small_buffers(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "big")
    big = btrfs_fs.mountpoint / "big"
    populate(big, 3000)
    fd = opendir(big)
    try:
        # New inode and directory-index items reach the tree from btrfs's
        # delayed-item queues at the latest at commit; search after one.
        io.sync(fd)
        small = list(io.TreeSearch(fd, 0, buf_size=4096))
        large = list(io.TreeSearch(fd, 0, buf_size=16 << 20))
    finally:
        os.close(fd)
    keys = [it.key for it in small]
    assert keys == [it.key for it in large]
    assert [it.data for it in small] == [it.data for it in large]
    assert keys == sorted(set(keys)), "keys must be strictly increasing, no repeats across calls"
    inodes = [it for it in small if it.type == io.INODE_ITEM_KEY]
    assert len(inodes) == 3001  # the root directory and 3000 files
    index = [d.name for it in small if it.type == io.DIR_INDEX_KEY for d in io.decode_dir_items(it.data)]
    assert sorted(index) == sorted(os.listdir(os.fsencode(big)))


def test_tree_search_key_range_and_transid_filter(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "t")
    t = btrfs_fs.mountpoint / "t"
    populate(t, 10)
    fd = opendir(t)
    try:
        ino = (t / "f00003").stat().st_ino
        only = list(io.TreeSearch(fd, 0, min_objectid=ino, max_objectid=ino,
                                  min_type=io.INODE_ITEM_KEY, max_type=io.INODE_ITEM_KEY))
        assert [it.key for it in only] == [(ino, io.INODE_ITEM_KEY, 0)]
        io.sync(fd)
        gen = io.get_subvolume_info(fd).generation
        assert list(io.TreeSearch(fd, 0, min_transid=gen + 1)) == []
        (t / "late").write_text("x")
        io.sync(fd)
        late = [it for it in io.TreeSearch(fd, 0, min_transid=gen + 1)]
        assert (t / "late").stat().st_ino in {it.objectid for it in late}
    finally:
        os.close(fd)


def test_tree_search_item_transid_filter_returns_only_items_written_since(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "w")
    t = btrfs_fs.mountpoint / "w"
    populate(t, 200)
    (t / "big").write_bytes(b"b" * 20000)
    os.setxattr(t / "f00001", "user.kept", b"1")
    fd = opendir(t)
    try:
        io.sync(fd)
        gen = io.get_subvolume_info(fd).generation
        with open(t / "f00100", "ab") as f:
            f.write(b"appended")
        os.setxattr(t / "f00002", "user.new", b"2")
        (t / "added").write_text("new")
        io.sync(fd)
        coarse = list(io.TreeSearch(fd, 0, min_transid=gen + 1))
        fine = list(io.TreeSearch(fd, 0, min_transid=gen + 1, min_item_transid=gen + 1))
    finally:
        os.close(fd)
    ino = {name: (t / name).stat().st_ino for name in ("f00100", "f00002", "added", "f00001", "big")}
    root = t.stat().st_ino
    kinds = {(it.objectid, it.type) for it in fine}
    assert (ino["f00100"], io.INODE_ITEM_KEY) in kinds and (ino["f00100"], io.EXTENT_DATA_KEY) in kinds
    assert (ino["f00002"], io.XATTR_ITEM_KEY) in kinds
    assert (ino["added"], io.INODE_ITEM_KEY) in kinds
    assert (root, io.DIR_INDEX_KEY) in kinds and (root, io.INODE_ITEM_KEY) in kinds
    # what was not written since stays out, though its metadata block was
    assert not any(it.objectid in (ino["f00001"], ino["big"]) for it in fine)
    assert len(coarse) > len(fine)  # the blocks written since also hold items that were not
    assert {it.type for it in fine} <= {io.INODE_ITEM_KEY, io.DIR_ITEM_KEY, io.DIR_INDEX_KEY,
                                        io.XATTR_ITEM_KEY, io.EXTENT_DATA_KEY}
    for it in fine:
        if it.type == io.INODE_ITEM_KEY:
            assert io.decode_inode_item(it.data).transid > gen
        elif it.type == io.EXTENT_DATA_KEY:
            assert io.decode_file_extent(it.data).generation > gen
        else:
            assert any(d.transid > gen for d in io.decode_dir_items(it.data))


def test_tree_search_item_types_keeps_only_those_types(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "x")
    t = btrfs_fs.mountpoint / "x"
    populate(t, 50)
    os.setxattr(t / "f00007", "user.a", b"1")
    os.setxattr(t / "f00009", "user.b", b"2")
    fd = opendir(t)
    try:
        everything = list(io.TreeSearch(fd, 0))
        xattrs = list(io.TreeSearch(fd, 0, item_types=[io.XATTR_ITEM_KEY]))
        with pytest.raises(ValueError):
            io.TreeSearch(fd, 0, item_types=[256])
    finally:
        os.close(fd)
    assert [it.key for it in xattrs] == [it.key for it in everything if it.type == io.XATTR_ITEM_KEY]
    assert {it.objectid for it in xattrs} == {(t / "f00007").stat().st_ino, (t / "f00009").stat().st_ino}


def test_decode_inode_refs_names_every_hard_link(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "l")
    t = btrfs_fs.mountpoint / "l"
    (t / "d").mkdir()
    (t / "a").write_text("x")
    os.link(t / "a", t / "b")
    os.link(t / "a", t / "d" / "c")
    ino = (t / "a").stat().st_ino
    fd = opendir(t)
    try:
        io.sync(fd)
        names = []
        for it in io.TreeSearch(fd, 0, min_objectid=ino, max_objectid=ino,
                                min_type=io.INODE_REF_KEY, max_type=io.INODE_EXTREF_KEY):
            refs = (io.decode_inode_refs(it.data, it.offset) if it.type == io.INODE_REF_KEY
                    else io.decode_inode_extrefs(it.data))
            names += [(r.parent, r.name) for r in refs]
        assert io.search_item(fd, 0, ino, io.INODE_ITEM_KEY, 0) is not None
        assert io.search_item(fd, 0, ino + 1000, io.INODE_ITEM_KEY, 0) is None
    finally:
        os.close(fd)
    root, sub = t.stat().st_ino, (t / "d").stat().st_ino
    assert sorted(names) == sorted([(root, b"a"), (root, b"b"), (sub, b"c")])


def test_tree_search_on_missing_tree_and_bad_buffer(fsfd):
    with pytest.raises(FileNotFoundError):
        list(io.TreeSearch(fsfd, io.QUOTA_TREE_OBJECTID))  # quotas are off: no quota tree
    with pytest.raises(ValueError):
        io.TreeSearch(fsfd, 0, buf_size=100)


def test_decode_inode_item_matches_stat(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "s")
    f = btrfs_fs.mountpoint / "s" / "file"
    f.write_bytes(b"z" * 12345)
    os.chmod(f, 0o640)
    os.chown(f, 1234, 5678)
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    os.link(f, f.with_name("hard"))
    st = f.stat()
    fd = opendir(f.parent)
    try:
        io.sync(fd)  # inode updates are delayed items until commit
        (item,) = io.TreeSearch(fd, 0, min_objectid=st.st_ino, max_objectid=st.st_ino,
                                min_type=io.INODE_ITEM_KEY, max_type=io.INODE_ITEM_KEY)
    finally:
        os.close(fd)
    inode = io.decode_inode_item(item.data)
    assert (inode.size, inode.mode, inode.uid, inode.gid, inode.nlink) == (12345, st.st_mode, 1234, 5678, 2)
    assert inode.mtime_ns == st.st_mtime_ns == 1_700_000_000_987_654_321
    assert inode.atime_ns == 1_600_000_000_123_456_789


def test_inode_items_compared_but_for_atime(btrfs_fs, fsfd):
    """An atime update rewrites an inode item's transid and atime only; any
    other change shows in the fields compared."""
    io.create_subvolume(fsfd, "i")
    f = btrfs_fs.mountpoint / "i" / "file"
    f.write_bytes(b"data")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))  # atime <= mtime: the next read moves it (relatime)
    fd = opendir(f.parent)
    ino = f.stat().st_ino

    def item() -> bytes:
        io.sync(fd)
        return io.search_item(fd, 0, ino, io.INODE_ITEM_KEY, 0)

    try:
        first = item()
        f.read_bytes()
        read = item()
        assert io.decode_inode_item(read).atime_ns != io.decode_inode_item(first).atime_ns
        assert io.same_inode_item_but_atime(first, read)
        os.chmod(f, 0o600)
        os.chmod(f, stat.S_IMODE(io.inode_item_mode(first)))
        back = item()
        assert io.inode_item_mode(back) == io.inode_item_mode(first)
        assert not io.same_inode_item_but_atime(first, back)  # ctime and sequence moved
        with pytest.raises(ValueError, match="too short"):
            io.same_inode_item_but_atime(first, first[:100])
    finally:
        os.close(fd)


def test_subvolumes_by_uuid_reads_the_uuid_tree(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "u")
    fd = opendir(btrfs_fs.mountpoint / "u")
    try:
        io.snapshot(fd, fsfd, "u-snap")
        info = io.get_subvolume_info(fd)
    finally:
        os.close(fd)
    assert io.subvolumes_by_uuid(fsfd, info.uuid) == [info.id]
    assert io.subvolumes_by_uuid(fsfd, info.uuid, received=True) == []
    assert io.subvolumes_by_uuid(fsfd, uuid.uuid4()) == []
    io.destroy_subvolume(fsfd, "u")
    io.sync(fsfd)
    assert io.subvolumes_by_uuid(fsfd, info.uuid) == []  # gone with the subvolume


def test_decode_root_item_matches_subvolume_info(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "r")
    fd = opendir(btrfs_fs.mountpoint / "r")
    try:
        io.snapshot(fd, fsfd, "r-snap", readonly=True)
        info = io.get_subvolume_info(fd)
    finally:
        os.close(fd)
    items = {it.objectid: io.decode_root_item(it.data)
             for it in io.TreeSearch(fsfd, io.ROOT_TREE_OBJECTID, min_objectid=256, max_objectid=257,
                                     min_type=io.ROOT_ITEM_KEY, max_type=io.ROOT_ITEM_KEY)
             if it.type == io.ROOT_ITEM_KEY}
    assert items[256].uuid == info.uuid
    assert items[256].parent_uuid is None
    assert items[257].parent_uuid == info.uuid
    assert items[257].flags & io.ROOT_SUBVOL_RDONLY
    assert items[256].otransid == info.otransid


def test_decoders_refuse_short_items():
    for decode in (io.decode_inode_item, io.decode_root_item, io.decode_root_ref, io.decode_file_extent,
                   io.decode_qgroup_status, io.decode_qgroup_info, io.decode_qgroup_limit):
        with pytest.raises(ValueError, match="too short"):
            decode(b"\0" * 8)
    with pytest.raises(ValueError):
        io.decode_dir_items(b"\0" * 10)
    with pytest.raises(ValueError):
        io.decode_inode_refs(b"\0" * 8 + b"\x05\x00ab", 256)  # a name of 5 bytes holding 2
    with pytest.raises(ValueError):
        io.decode_inode_extrefs(b"\0" * 10)
    # a ROOT_REF whose name length runs past the item
    with pytest.raises(ValueError):
        io.decode_root_ref(b"\0" * 16 + b"\xff\x00" + b"ab")


# ---------------------------------------------------------------- quotas

def test_quota_enable_disable_and_status(fsfd):
    assert io.quota_status(fsfd) is None
    io.quota_enable(fsfd)
    status = io.quota_status(fsfd)
    assert status.flags & io.QGROUP_STATUS_FLAG_ON
    assert not status.flags & io.QGROUP_STATUS_FLAG_SIMPLE_MODE
    io.quota_rescan_wait(fsfd)
    assert io.quota_rescan_status(fsfd) == (False, 0)
    io.quota_disable(fsfd)
    assert io.quota_status(fsfd) is None


def test_simple_quota(btrfs_fs, fsfd):
    try:
        io.quota_enable(fsfd, simple=True)
    except OSError as e:
        pytest.skip(f"kernel {os.uname().release} has no simple quotas: {e}")
    status = io.quota_status(fsfd)
    assert status.flags & io.QGROUP_STATUS_FLAG_SIMPLE_MODE
    assert status.enable_gen is not None and status.enable_gen > 0
    io.create_subvolume(fsfd, "limited", max_referenced=256 << 10)
    with pytest.raises(OSError) as exc:
        with open(btrfs_fs.mountpoint / "limited" / "big", "wb") as f:
            f.write(b"x" * (2 << 20))
            os.fsync(f.fileno())
    assert exc.value.errno == errno.EDQUOT
    # Simple quotas apply a limit given with the snapshot, and a snapshot
    # made without one is unlimited (full qgroups copy the source's instead).
    src = opendir(btrfs_fs.mountpoint / "limited")
    try:
        io.snapshot(src, fsfd, "snap-limited", max_referenced=3 << 20)
        io.snapshot(src, fsfd, "snap-free")
    finally:
        os.close(src)
    io.sync(fsfd)
    ids = {}
    for name in ("snap-limited", "snap-free"):
        fd = opendir(btrfs_fs.mountpoint / name)
        ids[name] = io.subvolume_id(fd)
        os.close(fd)
    assert io.qgroup_limits(fsfd, ids["snap-limited"]).max_referenced == 3 << 20
    assert io.qgroup_limits(fsfd, ids["snap-free"]).flags == 0


def test_qgroup_limit_usage_and_inherited_limits(btrfs_fs, fsfd):
    io.quota_enable(fsfd)
    io.quota_rescan_wait(fsfd)
    io.create_subvolume(fsfd, "a")
    a = btrfs_fs.mountpoint / "a"
    fd = opendir(a)
    try:
        aid = io.subvolume_id(fd)
        assert io.qgroup_limits(fsfd, aid).flags == 0
        io.qgroup_limit(fd, 0, max_referenced=64 << 20)  # 0: the subvolume fd is in
        assert io.qgroup_limits(fsfd, aid).max_referenced == 64 << 20
        (a / "data").write_bytes(os.urandom(1 << 20))
        io.sync(fd)
        usage = io.qgroup_usage(fsfd, aid)
        assert usage.referenced >= 1 << 20 and usage.exclusive >= 1 << 20
        io.qgroup_limit(fsfd, aid, max_referenced=io.QGROUP_LIMIT_NONE)
        assert io.qgroup_limits(fsfd, aid).flags & io.QGROUP_LIMIT_MAX_RFER == 0
        # With full qgroups a snapshot's qgroup copies the source's limits,
        # overriding a limit passed in the same ioctl (Linux 6.18,
        # btrfs_qgroup_inherit); simple quotas keep it (test_simple_quota).
        io.qgroup_limit(fd, 0, max_referenced=2 << 20)
        io.snapshot(fd, fsfd, "b", max_referenced=32 << 20)
    finally:
        os.close(fd)
    bfd = opendir(btrfs_fs.mountpoint / "b")
    try:
        bid = io.subvolume_id(bfd)
        assert io.qgroup_limits(fsfd, bid).max_referenced == 2 << 20
    finally:
        os.close(bfd)
    with pytest.raises(OSError) as exc:
        with open(btrfs_fs.mountpoint / "b" / "more", "wb") as f:
            f.write(b"y" * (4 << 20))
            os.fsync(f.fileno())
    assert exc.value.errno == errno.EDQUOT
    assert io.qgroup_usage(fsfd, 999999) is None
    assert io.qgroup_limits(fsfd, 999999) is None


def test_qgroup_create_destroy(btrfs_fs, fsfd):
    io.quota_enable(fsfd)
    higher = (1 << io.QGROUP_LEVEL_SHIFT) | 7
    io.qgroup_create(fsfd, higher)
    assert io.qgroup_usage(fsfd, higher) is not None
    with pytest.raises(FileExistsError):
        io.qgroup_create(fsfd, higher)
    io.create_subvolume(fsfd, "member", qgroups=[higher])
    fd = opendir(btrfs_fs.mountpoint / "member")
    try:
        member = io.subvolume_id(fd)
    finally:
        os.close(fd)
    relations = {(it.objectid, it.offset) for it in io.TreeSearch(fsfd, io.QUOTA_TREE_OBJECTID)
                 if it.type == io.QGROUP_RELATION_KEY}
    assert (member, higher) in relations
    io.create_subvolume(fsfd, "live")
    fd = opendir(btrfs_fs.mountpoint / "live")
    try:
        live = io.subvolume_id(fd)
    finally:
        os.close(fd)
    # The kernel keeps a subvolume's own qgroup while the subvolume exists
    # (the original driver's remove order trips on this).
    with pytest.raises(OSError) as exc:
        io.qgroup_destroy(fsfd, live)
    assert exc.value.errno == errno.EBUSY
    assert "<qgroup 0/%d>" % live in exc.value.filename
    with pytest.raises(FileNotFoundError):
        io.qgroup_destroy(fsfd, (1 << io.QGROUP_LEVEL_SHIFT) | 99)


def test_quota_rescan(fsfd):
    with pytest.raises(OSError):
        io.quota_rescan(fsfd)  # quotas off
    io.quota_enable(fsfd)
    io.quota_rescan_wait(fsfd)
    io.quota_rescan(fsfd)
    io.quota_rescan_wait(fsfd)
    assert io.quota_rescan_status(fsfd)[0] is False


# ---------------------------------------------------------------- sync and filesystem

def test_sync_start_sync_wait_sync(fsfd):
    io.sync(fsfd)
    transid = io.start_sync(fsfd)
    assert transid > 0
    io.wait_sync(fsfd, transid)
    io.wait_sync(fsfd)


def test_subvolume_sync_wait_drops_deleted_subvolumes(btrfs_fs, fsfd):
    io.create_subvolume(fsfd, "gone")
    fd = opendir(btrfs_fs.mountpoint / "gone")
    subvolid = io.subvolume_id(fd)
    os.close(fd)
    io.destroy_subvolume(fsfd, "gone")
    try:
        io.subvolume_sync_wait(fsfd, subvolid)
    except FileNotFoundError:
        pass  # the cleaner dropped it before the call
    except OSError as e:
        if e.errno == errno.ENOTTY:
            pytest.skip(f"kernel {os.uname().release} predates SUBVOL_SYNC_WAIT (6.13)")
        raise
    assert io.subvolume_sync_wait(fsfd, 0, io.SUBVOL_SYNC_COUNT) == 0
    root_items = [it for it in io.TreeSearch(fsfd, io.ROOT_TREE_OBJECTID, min_objectid=subvolid,
                                             max_objectid=subvolid, min_type=io.ROOT_ITEM_KEY,
                                             max_type=io.ROOT_ITEM_KEY)]
    assert root_items == []


def test_fs_info(btrfs_fs, fsfd):
    info = io.fs_info(fsfd)
    blkid = subprocess.run(["blkid", "-s", "UUID", "-o", "value", btrfs_fs.device],
                           capture_output=True, text=True).stdout.strip()
    if blkid:
        assert str(info.fsid) == blkid
    assert info.num_devices == 1
    assert info.nodesize == 16384 and info.sectorsize == 4096
    assert info.generation > 0


def test_fs_magic(btrfs_dir, non_btrfs_dir):
    assert io.fs_magic(btrfs_dir) == io.SUPER_MAGIC == 0x9123683E
    fd = opendir(btrfs_dir)
    try:
        assert io.fs_magic(fd) == io.SUPER_MAGIC
    finally:
        os.close(fd)
    assert io.fs_magic(non_btrfs_dir) != io.SUPER_MAGIC
    assert io.fs_magic("/proc") == 0x9FA0
    with pytest.raises(FileNotFoundError) as exc:
        io.fs_magic(btrfs_dir / "missing")
    assert exc.value.filename == str(btrfs_dir / "missing")


def test_is_subvolume(btrfs_dir, dirfd, non_btrfs_dir):
    io.create_subvolume(dirfd, "sv")
    (btrfs_dir / "plain").mkdir()
    (btrfs_dir / "file").write_text("x")
    os.symlink("sv", btrfs_dir / "link")
    assert io.is_subvolume(btrfs_dir / "sv")
    assert io.is_subvolume(os.fsencode(btrfs_dir / "sv"))
    assert not io.is_subvolume(btrfs_dir / "plain")
    assert not io.is_subvolume(btrfs_dir / "file")
    assert not io.is_subvolume(btrfs_dir / "link")  # a final symlink is not followed
    assert io.is_subvolume("sv", dir_fd=dirfd)
    assert not io.is_subvolume("plain", dir_fd=dirfd)
    fd = opendir(btrfs_dir / "sv")
    try:
        assert io.is_subvolume(fd)
    finally:
        os.close(fd)
    assert not io.is_subvolume(non_btrfs_dir)
    with pytest.raises(FileNotFoundError) as exc:
        io.is_subvolume("missing", dir_fd=dirfd)
    assert exc.value.filename == str(btrfs_dir / "missing")


# ---------------------------------------------------------------- threads

def test_concurrent_creates_from_threads(btrfs_fs, fsfd):
    """Threads creating and snapshotting into their own directories all succeed."""
    root = btrfs_fs.mountpoint
    io.create_subvolume(fsfd, "base")
    populate(root / "base", 100)
    errors = []

    def work(t):
        try:
            os.mkdir(root / f"t{t}")
            dfd = opendir(root / f"t{t}")
            src = opendir(root / "base")
            try:
                for i in range(25):
                    io.snapshot(src, dfd, f"s{i}")
                    io.create_subvolume(dfd, f"c{i}")
            finally:
                os.close(dfd)
                os.close(src)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    for t in range(4):
        assert len(os.listdir(root / f"t{t}")) == 50
        assert (root / f"t{t}" / "s24" / "f00099").read_bytes() == b"99"


# ---------------------------------------------------------------- plain syscalls

def test_rename_noreplace(btrfs_dir, dirfd):
    (btrfs_dir / "stage").mkdir()
    (btrfs_dir / "final").mkdir()
    (btrfs_dir / "final" / "empty-dir").mkdir()
    stage = opendir(btrfs_dir / "stage")
    final = opendir(btrfs_dir / "final")
    try:
        io.create_subvolume(stage, "layer")
        io.rename_noreplace(stage, "layer", final, "layer")
        assert io.is_subvolume(btrfs_dir / "final" / "layer")
        io.create_subvolume(stage, "layer")
        with pytest.raises(FileExistsError) as exc:
            io.rename_noreplace(stage, "layer", final, "layer")
        assert exc.value.filename == str(btrfs_dir / "final" / "layer")
        # rename(2) would replace an empty directory; this does not
        with pytest.raises(FileExistsError):
            io.rename_noreplace(stage, "layer", final, "empty-dir")
        with pytest.raises(FileNotFoundError) as exc:
            io.rename_noreplace(stage, "missing", final, "x")
        assert exc.value.filename == str(btrfs_dir / "stage" / "missing")
        with pytest.raises(ValueError):
            io.rename_noreplace(stage, "layer", final, "../escape")
    finally:
        os.close(stage)
        os.close(final)


def test_bind_mount_and_umount(btrfs_dir):
    target = btrfs_dir / "bound"
    target.mkdir()
    io.mount(str(target), str(target), None, io.MS_BIND)
    try:
        io.mount(None, str(target), None, io.MS_PRIVATE)
        out = subprocess.run(["findmnt", "-no", "PROPAGATION", str(target)], capture_output=True, text=True)
        assert out.stdout.strip() == "private"
    finally:
        io.umount(str(target))
    with pytest.raises(OSError) as exc:
        io.umount(str(target))  # no longer a mount point
    assert exc.value.errno == errno.EINVAL
    assert exc.value.filename == str(target)


def test_rename_exchange(btrfs_dir, dirfd):
    io.create_subvolume(dirfd, "a")
    (btrfs_dir / "b").mkdir()
    (btrfs_dir / "a" / "in-a").write_text("a")
    io.rename_exchange(dirfd, "a", dirfd, "b")
    assert (btrfs_dir / "b" / "in-a").read_text() == "a"
    assert io.is_subvolume(btrfs_dir / "b") and not io.is_subvolume(btrfs_dir / "a")
    with pytest.raises(FileNotFoundError):
        io.rename_exchange(dirfd, "a", dirfd, "missing")
