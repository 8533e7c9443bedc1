"""Interoperability with containers/storage: Debian's podman, with its btrfs
graph driver and its store on a loopback btrfs filesystem, and a
:class:`Driver` opened on that store (``<root>/btrfs``).

Both ways: an image podman imports is read by btrfsx (layers, lineage,
contents, changes and diffs matching what podman saves), and an image btrfsx
exports is pulled by podman into layers btrfsx reads back file for file.
No network: images come from tarballs and OCI layouts made here.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard

from btrfsx import ChangeKind, Driver
from btrfsx.oci import MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_ZSTD, export_oci, import_oci
from tests_support import assert_same_tree, driver_at, make_chain, members, need

pytestmark = pytest.mark.btrfs


class Podman:
    """podman on a store of its own: ``--root`` on btrfs, configuration in tmp."""

    def __init__(self, root: Path, tmp: Path, runroot: Path):
        self.root = root
        self.home = root / "btrfs"   # the btrfs driver's home, as containers/storage lays it out
        tmpdir = tmp / "tmpdir"
        tmpdir.mkdir()
        conf, storage = tmp / "containers.conf", tmp / "storage.conf"
        # cgroupfs and a file events log: no systemd needed; nothing here runs a container
        conf.write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                        f'events_logfile_path = "{tmp / "events.log"}"\n')
        storage.write_text(f'[storage]\ndriver = "btrfs"\nrunroot = "{runroot}"\ngraphroot = "{root}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage),
                    "CONTAINERS_REGISTRIES_CONF": str(tmp / "registries.conf")}
        (tmp / "registries.conf").write_text("")
        self.argv = ["podman", "--storage-driver", "btrfs", "--root", str(root), "--runroot", str(runroot),
                     "--tmpdir", str(tmpdir)]

    def run(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.argv, *map(str, args)], capture_output=True, text=True, env=self.env,
                              timeout=120)
        if check:
            assert proc.returncode == 0, f"podman {' '.join(map(str, args))}: exit {proc.returncode}: {proc.stderr}"
        return proc

    def layers(self) -> dict[str, dict]:
        """containers/storage's layer records, by id."""
        return {layer["id"]: layer for layer in json.loads((self.root / "btrfs-layers/layers.json").read_bytes())}

    def image(self, image_id: str) -> dict:
        images = json.loads((self.root / "btrfs-images/images.json").read_bytes())
        return next(i for i in images if i["id"] == image_id)

    def chain(self, image_id: str) -> list[str]:
        """The image's layers, base first."""
        layers = self.layers()
        out = [self.image(image_id)["layer"]]
        while layers[out[-1]].get("parent"):
            out.append(layers[out[-1]]["parent"])
        return out[::-1]


def _mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [t for t in targets if t.startswith(str(path) + "/")]


@pytest.fixture
def podman(btrfs_fs, tmp_path):
    need("podman")
    # podman refuses a runroot path longer than 50 characters
    runroot = Path(tempfile.mkdtemp(prefix="btrfsx-podman-"))
    p = Podman(btrfs_fs.mountpoint / "storage", tmp_path, runroot)
    try:
        probe = p.run("info", "--format", "{{.Store.GraphDriverName}}", check=False)
        if probe.returncode != 0 and "driver" in probe.stderr and "not supported" in probe.stderr:
            reason = f"podman lacks the btrfs graph driver: {probe.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        assert probe.returncode == 0 and probe.stdout.strip() == "btrfs", f"podman info: {probe.stderr}"
        yield p
    finally:
        p.run("image", "unmount", "--all", "--force", check=False)
        p.run("system", "reset", "--force", check=False)
        # whatever podman left mounted under the filesystem would keep it
        # from being unmounted (and its loop device from being detached)
        for target in sorted(_mounts_below(btrfs_fs.mountpoint), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.fixture
def pdriver(podman):
    """A Driver on podman's btrfs home; closed before podman's store is reset."""
    yield from driver_at(podman.home)


@pytest.fixture
def src(btrfs_fs):
    yield from driver_at(btrfs_fs.mountpoint / "btrfsx-a")


@pytest.fixture
def dst(btrfs_fs):
    yield from driver_at(btrfs_fs.mountpoint / "btrfsx-b")


def _saved_layers(podman: Podman, image_id: str, out: Path) -> list[bytes]:
    """The layer tars of ``podman image save --format oci-dir``, uncompressed."""
    podman.run("image", "save", "--format", "oci-dir", "-o", out, image_id)
    index = json.loads((out / "index.json").read_bytes())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    layers = []
    for layer in manifest["layers"]:
        data = (out / "blobs/sha256" / layer["digest"].split(":")[1]).read_bytes()
        layers.append({MEDIA_TYPE_LAYER: lambda b: b, MEDIA_TYPE_LAYER_GZIP: gzip.decompress,
                       MEDIA_TYPE_LAYER_ZSTD: zstandard.decompress}[layer["mediaType"]](data))
    return layers


def _rootfs_tar() -> bytes:
    """A small root filesystem: directories, modes, owners, a setuid file, a
    hard link, symlinks, an xattr and sub-second times."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, type_=tarfile.REGTYPE, data=None, mode=0o644, uid=0, gid=0, linkname="", pax=None):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.linkname = type_, mode, uid, gid, linkname
            info.mtime = 1_700_000_000
            info.pax_headers = dict(pax or {})
            if data is not None:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data is not None else None)
        for d in ("bin", "etc", "usr", "usr/lib", "home"):
            add(d, tarfile.DIRTYPE, mode=0o755)
        add("home/user", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000)
        add("bin/sh", data=b"\x7fELF not really\n" * 100, mode=0o755)
        add("bin/su", data=b"setuid\n", mode=0o4755)
        add("bin/ash", tarfile.LNKTYPE, linkname="bin/sh", mode=0o755)
        add("bin/bash", tarfile.SYMTYPE, linkname="sh", mode=0o777)
        add("etc/os-release", data=b"ID=btrfsx-test\n", pax={"mtime": "1700000000.123456789"})
        add("etc/secret", data=b"s3cret\n", mode=0o600, uid=0, gid=42,
            pax={"SCHILY.xattr.user.note": "kept"})
        add("usr/lib/libx.so.1", data=os.urandom(200_000), mode=0o755)
        add("usr/lib/libx.so", tarfile.SYMTYPE, linkname="libx.so.1", mode=0o777)
        add("home/user/.profile", data=b"export PS1='$ '\n", uid=1000, gid=1000)
    return buf.getvalue()


def test_btrfsx_reads_the_layer_of_an_image_podman_imported(podman, pdriver, dst, tmp_path):
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(_rootfs_tar())
    image_id = podman.run("import", tarball, "localhost/btrfsx-gen:1").stdout.strip().split(":")[-1]
    [layer] = podman.chain(image_id)
    assert podman.layers()[layer]["diff-digest"] == "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest()

    assert pdriver.layers() == [layer] and pdriver.exists(layer)
    assert pdriver.parent(layer) is None
    mounted = podman.run("image", "mount", image_id).stdout.strip()
    try:
        assert os.path.samefile(mounted, pdriver.get(layer))  # podman and btrfsx agree where the layer is
    finally:
        podman.run("image", "unmount", image_id)
    root = Path(pdriver.get(layer))
    assert os.lstat(root / "bin/su").st_mode & 0o7777 == 0o4755
    assert os.lstat(root / "bin/ash").st_ino == os.lstat(root / "bin/sh").st_ino
    assert os.getxattr(root / "etc/secret", "user.note") == b"kept"
    assert os.lstat(root / "etc/os-release").st_mtime_ns == 1_700_000_000_123_456_789
    assert os.lstat(root / "home/user").st_uid == 1000

    # the layer's changes and diff, against podman's own copy of the layer
    [saved] = _saved_layers(podman, image_id, tmp_path / "saved")
    expected = members(saved)
    changes = pdriver.changes(layer)
    assert {c.kind for c in changes} == {ChangeKind.ADD}
    assert sorted(c.path.lstrip("/") for c in changes) == sorted(expected)
    with pdriver.diff(layer) as stream:
        assert members(stream.read()) == expected

    # and podman's saved image imports into a store of btrfsx's own
    top = import_oci(dst, tmp_path / "saved")
    assert_same_tree(root, dst.get(top))


def test_podman_pulls_an_image_btrfsx_exported(podman, src, tmp_path):
    chain = make_chain(src)
    layout = tmp_path / "image"
    exported = export_oci(src, chain[-1], layout, tag="v1")
    image_id = podman.run("pull", "-q", f"oci:{layout}:v1").stdout.strip().split(":")[-1]
    assert image_id == exported.config.digest.split(":")[1]
    ids = podman.chain(image_id)
    records = podman.layers()
    assert [records[i]["diff-digest"] for i in ids] == exported.diff_ids

    with Driver(podman.home) as pdriver:   # podman's layers, as btrfsx sees them; closed before the reset
        assert pdriver.layers() == sorted(ids)
        assert [pdriver.parent(i) for i in ids] == [None] + ids[:-1]
        for original, pulled, original_parent, pulled_parent in zip(chain, ids, [None] + chain[:-1],
                                                                    [None] + ids[:-1]):
            assert_same_tree(src.get(original), pdriver.get(pulled))
            assert pdriver.changes(pulled, pulled_parent) == src.changes(original, original_parent)
            with pdriver.diff(pulled, pulled_parent) as theirs, src.diff(original, original_parent) as ours:
                assert members(theirs.read()) == members(ours.read())
        # podman saves the layers btrfsx wrote, byte for byte
        saved = _saved_layers(podman, image_id, tmp_path / "saved")
        assert ["sha256:" + hashlib.sha256(s).hexdigest() for s in saved] == exported.diff_ids
