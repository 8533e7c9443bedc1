"""The Driver: semantics of the containers/storage btrfs driver, its errors,
and where btrfsx departs from it (atomic publish, metadata-based remove,
quota handling, gc, threads)."""

import errno
import fcntl
import os
import stat
import subprocess
import sys
import threading

import pytest

from btrfsx import CreateOpts, Driver, IDMap, MountOpts, OptionError, PrerequisitesError, QuotaMode, _ioctl, quota
from btrfsx.mounts import is_mountpoint
from tests_support import limit_of, subvolume_id, write_past

pytestmark = pytest.mark.btrfs

BAD_IDS = ["", ".", "..", "a/b", "a\0b", "x" * 256]


def staging_entries(home):
    root = home / ".btrfsx" / "staging"
    return [p for d in root.iterdir() for p in d.iterdir()] if root.exists() else []


# ---------------------------------------------------------------- construction

def test_home_must_be_on_btrfs(non_btrfs_dir):
    with pytest.raises(PrerequisitesError, match=f"'{non_btrfs_dir}/home' is not on a btrfs filesystem"):
        Driver(non_btrfs_dir / "home")
    assert not (non_btrfs_dir / "home").exists()


def test_construction_creates_home_private_mount_and_layout(btrfs_fs):
    home = btrfs_fs.mountpoint / "a" / "b" / "home"
    with Driver(home) as d:
        assert str(d) == "btrfs"
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE(home.parent.stat().st_mode) == 0o700  # made missing parents too
        assert stat.S_IMODE((home / "subvolumes").stat().st_mode) == 0o700
        assert is_mountpoint(home)
        propagation = subprocess.run(["findmnt", "-no", "PROPAGATION", str(home)],
                                     capture_output=True, text=True).stdout.strip()
        assert propagation == "private"
        assert d.metadata("anything") is None
        assert d.additional_image_stores() == []
        d.put("anything")
    assert not is_mountpoint(home)  # cleanup unmounts what construction mounted


def test_home_owned_by_the_mapped_root(btrfs_fs):
    home = btrfs_fs.mountpoint / "mapped"
    uid_maps = [IDMap(0, 100000, 65536)]
    gid_maps = [IDMap(0, 200000, 65536)]
    with Driver(home, uid_maps=uid_maps, gid_maps=gid_maps) as d:
        st = home.stat()
        assert (st.st_uid, st.st_gid) == (100000, 200000)
        assert (home / "subvolumes").stat().st_uid == 100000
        d.create("base")
        d.create("child", "base")
        for layer in ("base", "child"):
            st = os.stat(d.get(layer))
            assert (st.st_uid, st.st_gid) == (100000, 200000)


@pytest.mark.parametrize("option, message", [
    ("btrfs.mountopt=nodev", "does not support mount options"),
    ("btrfs.nope=1", "Unknown option btrfs.nope"),
    ("garbage", "unable to parse key/value option"),
])
def test_bad_options_raise_option_error(home, option, message):
    with pytest.raises(OptionError, match=message):
        Driver(home, options=[option])


def test_min_space_turns_quotas_on_simple_by_default(home):
    with Driver(home, options=["btrfs.min_space=1M"]) as d:
        assert dict(d.status())["Quota Mode"] == "simple"
    with Driver(home) as d:
        # left on: turning them off would drop every limit on the filesystem (tests/test_quota_sharing.py)
        assert dict(d.status())["Quota Mode"] == "simple"


def test_quota_mode_option_and_an_existing_mode_is_kept(home):
    with Driver(home, options=["btrfs.min_space=1M", "btrfsx.quota=qgroup"]) as d:
        assert dict(d.status())["Quota Mode"] == "qgroup"
        fd = os.open(home, os.O_RDONLY)
        try:
            # another driver asking for simple quotas keeps the mode in force
            assert quota.enable(fd, "simple") is QuotaMode.QGROUP
        finally:
            os.close(fd)


def test_status(driver, home, btrfs_fs):
    driver.create("a")
    driver.create("b", "a")
    status = dict(driver.status())
    assert status["Driver"].startswith("btrfsx ")
    assert status["Kernel Version"] == os.uname().release
    assert status["Layers"] == "2"
    assert status["Quota Mode"] == "off"
    fd = os.open(home, os.O_RDONLY)
    try:
        assert status["Filesystem UUID"] == str(_ioctl.fs_info(fd).fsid)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- create

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_base_layer_root_is_0555_whatever_the_umask(driver, umask):
    old = os.umask(umask)
    try:
        driver.create(f"base{umask:o}")
    finally:
        os.umask(old)
    path = driver.get(f"base{umask:o}")
    st = os.stat(path)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert os.listdir(path) == []
    assert _ioctl.is_subvolume(path)


def test_child_is_a_snapshot_keeping_the_parent_root_mode(driver, home):
    driver.create("base")
    base = driver.get("base")
    os.chmod(base, 0o751)
    with open(os.path.join(base, "etc-passwd"), "w") as f:
        f.write("root:x:0:0\n")
    driver.create("child", "base")
    child = driver.get("child")
    assert stat.S_IMODE(os.stat(child).st_mode) == 0o751
    assert open(os.path.join(child, "etc-passwd")).read() == "root:x:0:0\n"
    fd = os.open(child, os.O_RDONLY)
    pfd = os.open(base, os.O_RDONLY)
    try:
        assert _ioctl.get_subvolume_info(fd).parent_uuid == _ioctl.get_subvolume_info(pfd).uuid
    finally:
        os.close(fd)
        os.close(pfd)
    assert child == str(home / "subvolumes" / "child")


def test_create_from_template_copies_the_template(driver):
    driver.create("tmpl")
    open(os.path.join(driver.get("tmpl"), "f"), "w").write("template")
    driver.create_from_template("copy", "tmpl", None, None, None, None, False)
    assert open(os.path.join(driver.get("copy"), "f")).read() == "template"


def test_create_existing_id(driver, home):
    driver.create("a")
    with pytest.raises(FileExistsError) as exc:
        driver.create("a")
    assert exc.value.errno == errno.EEXIST
    assert "'a'" in str(exc.value) and str(home / "subvolumes" / "a") in str(exc.value)
    assert staging_entries(home) == []


def test_create_with_a_missing_parent(driver, home):
    with pytest.raises(FileNotFoundError) as exc:
        driver.create("child", "ghost")
    assert exc.value.filename == str(home / "subvolumes" / "ghost")
    assert "parent layer 'ghost'" in str(exc.value)
    assert not driver.exists("child")
    assert staging_entries(home) == []


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_invalid_ids_are_value_errors(driver, bad):
    for call in (driver.create, driver.remove, driver.get, driver.exists):
        with pytest.raises(ValueError, match="invalid layer id"):
            call(bad)
    if bad:  # an empty parent means none, as in the original
        with pytest.raises(ValueError, match="invalid layer id"):
            driver.create("child", bad)


@pytest.mark.parametrize("storage_opt, message", [
    ({"inodes": "5"}, "Unknown option inodes"),
    ({"size": "huge"}, "invalid size: 'huge'"),
    ({"size": "0"}, "btrfs: invalid storage size: 0B"),
])
def test_bad_storage_options_leave_nothing(driver, home, storage_opt, message):
    with pytest.raises(OptionError, match=message):
        driver.create("x", opts=CreateOpts(storage_opt=storage_opt))
    assert not driver.exists("x")
    assert not (home / "quotas").exists()
    assert dict(driver.status())["Quota Mode"] == "off"


def test_size_below_min_space(home):
    with Driver(home, options=["btrfs.min_space=100M"]) as d:
        with pytest.raises(OptionError, match=r"storage size cannot be less than 104.9MB"):
            d.create("small", opts=CreateOpts(storage_opt={"size": "1M"}))
        assert not d.exists("small")


def test_mount_label_relabels_the_root(driver):
    driver.create("labelled", opts=CreateOpts(mount_label="system_u:object_r:container_file_t:s0"))
    value = os.getxattr(driver.get("labelled"), "security.selinux")
    assert value.rstrip(b"\0") == b"system_u:object_r:container_file_t:s0"


# ---------------------------------------------------------------- sizes and quotas

@pytest.mark.parametrize("mode", ["simple", "qgroup"])
def test_sized_layers(home, mode):
    with Driver(home, options=[f"btrfsx.quota={mode}"]) as d:
        d.create("base")
        d.create("sized", opts=CreateOpts(storage_opt={"size": "2M"}))
        d.create("snap", "base", CreateOpts(storage_opt={"Size": "3M"}))
        assert (home / "quotas" / "sized").read_text() == str(2 << 20)
        assert (home / "quotas" / "snap").read_text() == str(3 << 20)
        assert oct((home / "quotas" / "sized").stat().st_mode & 0o777) == oct(0o644)
        assert limit_of(home, d.get("sized")) == 2 << 20
        assert limit_of(home, d.get("snap")) == 3 << 20
        assert dict(d.status())["Quota Mode"] == mode
        for layer in ("sized", "snap"):
            with pytest.raises(OSError) as exc:
                write_past(os.path.join(d.get(layer), "big"), 8 << 20)
            assert exc.value.errno == errno.EDQUOT
        d.remove("sized")
        assert not (home / "quotas" / "sized").exists()


def test_read_write_layers_take_the_default_size(home):
    with Driver(home, options=["btrfs.size=4M"]) as d:
        d.create("ro-base")
        d.create_read_write("rw")
        d.create_read_write("rw-own", opts=CreateOpts(storage_opt={"size": "6M"}))
        assert not (home / "quotas" / "ro-base").exists()
        assert (home / "quotas" / "rw").read_text() == str(4 << 20)
        assert (home / "quotas" / "rw-own").read_text() == str(6 << 20)
        assert limit_of(home, d.get("rw")) == 4 << 20


def test_get_reapplies_the_recorded_limit(home):
    with Driver(home) as d:
        d.create("sized", opts=CreateOpts(storage_opt={"size": "5M"}))
        fd = os.open(d.get("sized"), os.O_RDONLY)
        try:
            _ioctl.qgroup_limit(fd, 0, max_referenced=_ioctl.QGROUP_LIMIT_NONE)
        finally:
            os.close(fd)
        assert limit_of(home, d.get("sized")) == 5 << 20


def test_remove_never_rescans_and_leaves_no_qgroup(home, monkeypatch):
    with Driver(home, options=["btrfsx.quota=qgroup"]) as d:
        d.create("q", opts=CreateOpts(storage_opt={"size": "8M"}))
        subvolid = subvolume_id(d.get("q"))

        def no_rescan(*args):
            raise AssertionError("remove started a quota rescan")
        monkeypatch.setattr(_ioctl, "quota_rescan", no_rescan)
        monkeypatch.setattr(_ioctl, "quota_rescan_wait", no_rescan)
        d.remove("q")
        monkeypatch.undo()
        fd = os.open(home, os.O_RDONLY)
        try:
            _ioctl.sync(fd)
            try:
                _ioctl.subvolume_sync_wait(fd, subvolid)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTTY):
                    raise
            report = d.gc()  # kernels before 6.11 keep the qgroup; gc removes it
            assert _ioctl.qgroup_usage(fd, subvolid) is None, report
        finally:
            os.close(fd)


# ---------------------------------------------------------------- get, exists

def test_get_and_exists(driver, home):
    assert not driver.exists("a")
    with pytest.raises(FileNotFoundError) as exc:
        driver.get("a")
    assert exc.value.filename == str(home / "subvolumes" / "a")
    driver.create("a")
    assert driver.exists("a")
    assert driver.get("a") == str(home / "subvolumes" / "a")
    assert driver.get("a", MountOpts(options=["ro"])) == str(home / "subvolumes" / "a")
    with pytest.raises(OptionError, match="btrfs driver does not support mount options"):
        driver.get("a", MountOpts(options=["nodev"]))
    (home / "subvolumes" / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        driver.get("file")


# ---------------------------------------------------------------- remove

def test_remove(driver, home):
    driver.create("a")
    open(os.path.join(driver.get("a"), "f"), "w").write("x")
    driver.remove("a")
    assert not driver.exists("a")
    assert os.listdir(home / "subvolumes") == []
    with pytest.raises(FileNotFoundError) as exc:
        driver.remove("a")
    assert exc.value.filename == str(home / "subvolumes" / "a")


def test_remove_takes_nested_subvolumes_at_any_depth_without_walking(driver, home, monkeypatch):
    driver.create("layer")
    root = driver.get("layer")
    for i in range(300):
        open(os.path.join(root, f"file{i}"), "w").write("x")
    os.makedirs(os.path.join(root, "deep", "er"))
    fd = os.open(root, os.O_RDONLY)
    deep = os.open(os.path.join(root, "deep", "er"), os.O_RDONLY)
    try:
        _ioctl.create_subvolume(fd, "n1")
        _ioctl.create_subvolume(deep, "n2")
        n1 = os.open(os.path.join(root, "n1"), os.O_RDONLY)
        _ioctl.create_subvolume(n1, "n1a")
        _ioctl.snapshot(n1, fd, "n1-ro", readonly=True)
        n1ro = os.open(os.path.join(root, "n1-ro"), os.O_RDONLY)
        _ioctl.set_subvolume_flags(n1ro, 0)
        _ioctl.create_subvolume(n1ro, "inside-ro")
        _ioctl.set_subvolume_flags(n1ro, _ioctl.SUBVOL_RDONLY)  # nested in a read-only one
        os.close(n1ro)
        os.close(n1)
    finally:
        os.close(fd)
        os.close(deep)

    def no_walk(*args, **kwargs):
        raise AssertionError("remove walked the layer's files")
    for name in ("walk", "scandir", "listdir"):
        monkeypatch.setattr(os, name, no_walk)
    driver.remove("layer")
    monkeypatch.undo()
    assert os.listdir(home / "subvolumes") == []
    fd = os.open(home, os.O_RDONLY)
    try:
        refs = [it for it in _ioctl.TreeSearch(fd, _ioctl.ROOT_TREE_OBJECTID, min_type=_ioctl.ROOT_REF_KEY,
                                               max_type=_ioctl.ROOT_REF_KEY) if it.type == _ioctl.ROOT_REF_KEY]
    finally:
        os.close(fd)
    assert refs == []  # no subvolume is left linked anywhere


def test_remove_without_privilege_falls_back_to_rmdir(btrfs_fs):
    """As an unprivileged user SNAP_DESTROY is refused; the layer is removed file by file."""
    home = btrfs_fs.mountpoint / "rootless"
    home.mkdir()
    os.chown(home, 65534, 65534)
    code = f"""
import os, sys
from btrfsx import Driver, _ioctl
os.setgid(65534); os.setuid(65534)
d = Driver({str(home)!r})
d.create("base")
os.chmod(d.get("base"), 0o755)
os.makedirs(os.path.join(d.get("base"), "dir", "sub"))
open(os.path.join(d.get("base"), "dir", "f"), "w").write("x")
fd = os.open(os.path.join(d.get("base"), "dir"), os.O_RDONLY)
_ioctl.create_subvolume(fd, "nested")
os.close(fd)
try:
    _ioctl.destroy_subvolume(os.open(os.path.join(d.get("base"), "dir"), os.O_RDONLY), "nested")
except OSError as e:
    print("destroy:", e.errno)
d.remove("base")
print("exists:", d.exists("base"))
d.cleanup()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"destroy: {errno.EPERM}" in proc.stdout  # the kernel refuses this user
    assert "exists: False" in proc.stdout
    assert os.listdir(home / "subvolumes") == []


# ---------------------------------------------------------------- atomic publish and gc

def test_leftovers_of_a_dead_process_are_invisible_and_collected(driver, home):
    driver.create("real", opts=None)
    driver.create("sized", opts=CreateOpts(storage_opt={"size": "3M"}))
    # what a process killed mid-create leaves: a staging directory (nobody
    # holds its lock) with a half-made layer, and a quota file with no layer
    dead = home / ".btrfsx" / "staging" / "999999-0"
    dead.mkdir()
    fd = os.open(dead, os.O_RDONLY)
    try:
        _ioctl.create_subvolume(fd, "half")
        _ioctl.create_subvolume(fd, "half-ro")
        ro = os.open(dead / "half-ro", os.O_RDONLY)
        _ioctl.set_subvolume_flags(ro, _ioctl.SUBVOL_RDONLY)
        os.close(ro)
    finally:
        os.close(fd)
    (home / "quotas" / "half").write_text("12345")
    (home / "quotas" / ".half.999999.1.tmp").write_text("1")
    assert not driver.exists("half")
    assert driver.layers() == ["real", "sized"]
    report = driver.gc()
    assert sorted(os.path.basename(p) for p in report.subvolumes) == ["half", "half-ro"]
    assert sorted(os.path.basename(p) for p in report.quota_files) == [".half.999999.1.tmp", "half"]
    assert not dead.exists()
    assert sorted(os.listdir(home / "quotas")) == ["sized"]
    assert driver.layers() == ["real", "sized"]
    again = driver.gc()  # nothing left the second time (but qgroups the cleaner has freed since)
    assert again.subvolumes == [] and again.quota_files == []


def test_gc_leaves_a_live_processes_staging_alone(driver, home):
    live = home / ".btrfsx" / "staging" / "1-99"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a live owner holds
        _ioctl.create_subvolume(fd, "in-flight")
        assert driver.gc().subvolumes == []
        assert (live / "in-flight").is_dir()
    finally:
        os.close(fd)
    assert [os.path.basename(p) for p in driver.gc().subvolumes] == ["in-flight"]


@pytest.mark.parametrize("where", ["publish", "snapshot", "create_subvolume"])
def test_a_failed_create_leaves_nothing(driver, home, monkeypatch, where):
    """Staged creates fail at publish, in-place snapshots in the kernel call; neither leaves a trace."""
    driver.create("base")

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    if where == "publish":
        monkeypatch.setattr("btrfsx.store.Store.publish", fail)
    else:
        monkeypatch.setattr(_ioctl, where, fail)
    parent = "base" if where == "snapshot" else None  # an empty layer is always staged
    with pytest.raises(OSError, match="No space"):
        driver.create("child", parent, CreateOpts(storage_opt={"size": "4M"}))
    monkeypatch.undo()
    assert not driver.exists("child")
    assert not (home / "quotas" / "child").exists()
    assert staging_entries(home) == []


# ---------------------------------------------------------------- layouts written by others

def test_opens_a_store_written_by_the_original(btrfs_fs):
    """podman/buildah lay layers out as subvolumes/ID and quotas/ID."""
    home = btrfs_fs.mountpoint / "podman"
    (home / "subvolumes").mkdir(parents=True)
    (home / "quotas").mkdir()
    fd = os.open(home / "subvolumes", os.O_RDONLY)
    try:
        _ioctl.create_subvolume(fd, "f3a1")
        src = os.open(home / "subvolumes" / "f3a1", os.O_RDONLY)
        _ioctl.snapshot(src, fd, "9bc2")
        os.close(src)
    finally:
        os.close(fd)
    (home / "subvolumes" / "9bc2" / "hello").write_text("hi")
    (home / "quotas" / "9bc2").write_text(str(7 << 20))
    with Driver(home) as d:
        assert d.layers() == ["9bc2", "f3a1"]
        assert d.exists("f3a1") and d.exists("9bc2")
        assert open(os.path.join(d.get("9bc2"), "hello")).read() == "hi"
        assert limit_of(home, d.get("9bc2")) == 7 << 20  # get enabled quotas and applied it
        d.create("new", "9bc2")
        d.remove("9bc2")
        assert d.layers() == ["f3a1", "new"]
        assert not (home / "quotas" / "9bc2").exists()


# ---------------------------------------------------------------- concurrency

def test_threads_create_and_remove_distinct_layers(driver):
    driver.create("base")
    for i in range(50):
        open(os.path.join(driver.get("base"), f"f{i}"), "w").write(str(i))
    errors = []

    def work(t):
        try:
            for i in range(20):
                driver.create(f"t{t}-{i}", "base")
                driver.create(f"e{t}-{i}")
            for i in range(0, 20, 2):
                driver.remove(f"t{t}-{i}")
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    layers = driver.layers()
    assert len(layers) == 1 + 4 * (10 + 20)
    assert open(os.path.join(driver.get("t3-19"), "f49")).read() == "49"


def test_same_id_from_many_threads_is_created_exactly_once(driver):
    results = []
    barrier = threading.Barrier(6)

    def work(sized):
        barrier.wait()
        try:
            opts = CreateOpts(storage_opt={"size": "4M"}) if sized else None
            driver.create("contested", opts=opts)
            results.append("ok")
        except FileExistsError:
            results.append("exists")
    threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == ["exists"] * 5 + ["ok"]


# ---------------------------------------------------------------- listing a large store (#15)

@pytest.mark.parametrize("options", [[], ["btrfsx.quota=simple"]], ids=["quotas-off", "simple-quotas"])
def test_listing_every_layer_from_the_root_tree_answers_as_layer_by_layer(home, options):
    """layer_infos() of every layer (as root: one pass over the root tree's
    items, one over the quota tree) gives what asking layer by layer does,
    and what opening every layer did: subvolumes of subvolumes/ only (not a
    plain directory, a symlink, a subvolume nested in a layer or one
    elsewhere on the filesystem), parents, usage, limits from qgroups or
    quota files."""
    with Driver(home, options) as d:
        d.create("base")
        with open(os.path.join(d.get("base"), "f"), "wb") as f:
            f.write(b"x" * 10000)
        d.create("child", "base")
        d.create("grandchild", "child", CreateOpts(storage_opt={"size": "5M"}) if options else None)
        d.create("other")
        for where, name in ((d.get("child"), "nested"), (str(home.parent), "elsewhere")):
            fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _ioctl.create_subvolume(fd, name)
            finally:
                os.close(fd)
        (home / "subvolumes" / "plain").mkdir()
        (home / "subvolumes" / "link").symlink_to(d.get("base"))
        (home / "quotas").mkdir(exist_ok=True)
        (home / "quotas" / "other").write_text("4096")  # a quota file without a qgroup limit
        d.remove("other")
        d.create("other")
        (home / "quotas" / "other").write_text("4096")
        listed = d.layer_infos()
        assert [i.id for i in listed] == ["base", "child", "grandchild", "other"]
        assert listed == d.layer_infos(d.layers())  # the per-layer path (UUID tree)
        assert {i.id: i.parent for i in listed} == {"base": None, "child": "base", "grandchild": "child",
                                                      "other": None}
        assert listed[3].limit == 4096
        if options:
            assert listed[2].limit == 5 << 20 and listed[0].referenced is not None
        d._all_layer_infos = lambda: None  # the path of a kernel without UUIDs in root items: open every layer
        assert d.layer_infos() == listed


def _three_listings(d):
    """layer_infos() three ways: the fast listing (root tree + quota tree),
    the per-layer path (UUID tree, one layer at a time) and the listing that
    opens every layer (as on a kernel whose root items carry no UUIDs)."""
    fast = d.layer_infos()
    per_layer = d.layer_infos(d.layers())
    d._all_layer_infos = lambda: None
    try:
        opened = d.layer_infos()
    finally:
        del d._all_layer_infos
    return fast, per_layer, opened


@pytest.mark.parametrize("options", [[], ["btrfsx.quota=simple"], ["btrfsx.quota=qgroup"]],
                         ids=["quotas-off", "simple-quotas", "qgroups"])
def test_fast_listing_equals_the_slow_ones_with_lineage_and_foreign_layers(home, options):
    """Sized and unsized layers, children and grandchildren, a layer another
    program snapshotted into subvolumes/, and a layer swapped for its backup
    by a failed apply_diff (its parent then comes from a lineage record, and
    its children's through the UUID it replaced): the fast listing gives
    exactly what the two slow paths give."""
    import io

    from btrfsx.errors import ArchiveError
    sized = CreateOpts(storage_opt={"size": "7M"}) if options else None
    with Driver(home, options) as d:
        d.create("base", None, sized)
        with open(os.path.join(d.get("base"), "f"), "wb") as f:
            f.write(b"x" * 20000)
        d.create("child", "base")
        with open(os.path.join(d.get("child"), "g"), "wb") as f:
            f.write(b"y" * 5000)
        d.create("grandchild", "child", sized)
        d.create("unsized")
        fd = os.open(d.get("base"), os.O_RDONLY | os.O_DIRECTORY)
        sfd = os.open(home / "subvolumes", os.O_RDONLY | os.O_DIRECTORY)
        try:
            _ioctl.snapshot(fd, sfd, "by-another-program")  # as `btrfs subvolume snapshot` would
        finally:
            os.close(fd)
            os.close(sfd)
        with pytest.raises(ArchiveError):
            d.apply_diff("child", None, io.BytesIO(b"not a tarball" * 100))
        assert os.listdir(home / ".btrfsx" / "lineage"), "the failed apply left no lineage record"
        fast, per_layer, opened = _three_listings(d)
        assert fast == per_layer == opened
        assert {i.id: i.parent for i in fast} == {"base": None, "by-another-program": "base", "child": "base",
                                                  "grandchild": "child", "unsized": None}
        limits = {i.id: i.limit for i in fast}
        # full qgroups copy a snapshot's parent's limit to it (Linux 6.18); simple quotas do not
        inherited = 7 << 20 if options == ["btrfsx.quota=qgroup"] else None
        assert limits == ({"base": 7 << 20, "by-another-program": inherited, "child": inherited,
                           "grandchild": 7 << 20, "unsized": None} if options else dict.fromkeys(limits))
        if options:
            assert all(i.referenced is not None and i.exclusive is not None for i in fast)
        else:
            assert all(i.referenced is None and i.exclusive is None for i in fast)
        # and layer by layer, parent() agrees with the listing
        assert {i.id: d.parent(i.id) for i in fast} == {i.id: i.parent for i in fast}


def test_fast_listing_reads_a_quota_file_where_quotas_are_off(home):
    """A store whose quotas were turned off (by another program) keeps its
    quota files: both listings give their sizes as the limits, and no usage."""
    with Driver(home, ["btrfsx.quota=simple"]) as d:
        d.create("a", None, CreateOpts(storage_opt={"size": "3M"}))
        d.create("b", "a")
        quota.disable(d._store.home_fd)
    with Driver(home) as d:
        fast, per_layer, opened = _three_listings(d)
        assert fast == per_layer == opened
        assert [(i.id, i.limit, i.referenced) for i in fast] == [("a", 3 << 20, None), ("b", None, None)]


def test_gc_keeps_a_quota_file_whose_layer_appears_under_its_lock(driver, home):
    """gc lists subvolumes/ once and checks again, under the id's lock, only
    the quota files whose layer was not listed: a create holding the lock
    (quota file written, layer not yet published) keeps its file; a file of
    a layer that is gone (a remove that died after the destroy) goes, and
    one whose layer is listed stays."""
    driver.create("kept", None, CreateOpts(storage_opt={"size": "3M"}))
    (home / "quotas" / "orphan").write_text("4096")
    (home / "quotas" / "arriving").write_text("4096")
    store = driver._store
    result: list = []
    with store.lock("arriving"):
        worker = threading.Thread(target=lambda: result.append(driver.gc()))
        worker.start()
        worker.join(timeout=2)
        assert worker.is_alive(), "gc did not wait for the id's lock"
        (home / "subvolumes" / "arriving").mkdir()  # what the create publishes (any entry keeps the file)
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert [os.path.basename(p) for p in result[0].quota_files] == ["orphan"]
    assert sorted(os.listdir(home / "quotas")) == ["arriving", "kept"]
    (home / "subvolumes" / "arriving").rmdir()
    assert [os.path.basename(p) for p in driver.gc().quota_files] == ["arriving"]
    assert sorted(os.listdir(home / "quotas")) == ["kept"]
