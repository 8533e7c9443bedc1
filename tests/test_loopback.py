"""The loopback filesystem helper and the fixtures built on it leave nothing behind."""

import os
import subprocess
import sys

import pytest

from btrfsx import _ioctl
from btrfsx.loopback import IMAGE_PREFIX, Loopback, LoopbackError, sweep_stale
from tests_support import attached_images, mounted_targets


def test_create_and_close_leave_nothing(btrfs_available, tmp_path):
    fs = Loopback.create("/var/tmp", tmp_path / "mnt", size=256 << 20)
    try:
        assert fs.mounted
        assert _ioctl.fs_magic(fs.mountpoint) == _ioctl.SUPER_MAGIC
        assert str(fs.image) in attached_images()
        assert os.stat(fs.image).st_size == 256 << 20
        assert os.stat(fs.image).st_blocks * 512 < 64 << 20  # sparse
    finally:
        fs.close()
    assert str(fs.image) not in attached_images()
    assert str(tmp_path / "mnt") not in mounted_targets()
    assert not fs.image.exists()
    assert not (tmp_path / "mnt").exists()
    fs.close()  # twice is harmless


def test_close_with_a_file_still_open(btrfs_available, tmp_path):
    fs = Loopback.create("/var/tmp", tmp_path / "mnt", size=256 << 20)
    f = open(fs.mountpoint / "held", "w")
    try:
        fs.close()  # falls back to a lazy unmount; the device goes when the file closes
        assert str(tmp_path / "mnt") not in mounted_targets()
    finally:
        f.close()
    assert str(fs.image) not in attached_images()


def test_failed_create_undoes_its_steps(btrfs_available, tmp_path):
    def ours() -> set[str]:  # this process's: other processes' loop devices come and go meanwhile
        mine = f"{IMAGE_PREFIX}{os.getpid()}-"
        return {image for image in attached_images() if os.path.basename(image).startswith(mine)}
    before = ours()
    with pytest.raises(LoopbackError, match="mkfs.btrfs"):
        Loopback.create("/var/tmp", tmp_path / "mnt", size=256 << 20, mkfs_args=("--no-such-option",))
    with pytest.raises(LoopbackError, match="mount"):
        Loopback.create("/var/tmp", tmp_path / "mnt2", size=256 << 20, mount_options="no_such_option")
    assert ours() == before
    assert not list(tmp_path.glob("mnt*"))
    assert not [p for p in os.listdir("/var/tmp") if p.startswith(f"{IMAGE_PREFIX}{os.getpid()}-9")]


def test_attach_keeps_the_image(btrfs_available, tmp_path):
    fs = Loopback.create("/var/tmp", tmp_path / "mnt", size=256 << 20)
    (fs.mountpoint / "kept").write_text("data")
    image = fs.image
    fs._owns_image = False
    fs.close()
    assert image.exists()
    again = Loopback.attach(image, tmp_path / "mnt")
    try:
        assert (again.mountpoint / "kept").read_text() == "data"
    finally:
        again.destroy()
    assert not image.exists()
    assert str(image) not in attached_images()


def test_sweep_stale_frees_a_dead_runs_devices(btrfs_available, tmp_path):
    """A run killed before teardown leaves a device; the next session frees it."""
    code = (
        "import os, sys; from btrfsx.loopback import Loopback;"
        f"fs = Loopback.create('/var/tmp', {str(tmp_path / 'dead')!r}, size=256 << 20);"
        "print(fs.image, flush=True); os._exit(0)"
    )
    image = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ}).stdout.strip()
    assert image in attached_images()
    freed = sweep_stale()
    assert freed
    assert image not in attached_images()
    assert str(tmp_path / "dead") not in mounted_targets()
    assert not os.path.exists(image)


def test_btrfs_dir_fixture_is_empty_and_on_btrfs(btrfs_dir):
    assert os.listdir(btrfs_dir) == []
    assert _ioctl.fs_magic(btrfs_dir) == _ioctl.SUPER_MAGIC
    # leave subvolumes (one read-only, one nested) for the fixture to remove
    fd = os.open(btrfs_dir, os.O_RDONLY)
    try:
        _ioctl.create_subvolume(fd, "outer")
        inner = os.open(btrfs_dir / "outer", os.O_RDONLY)
        _ioctl.create_subvolume(inner, "nested")
        _ioctl.snapshot(inner, fd, "ro", readonly=True)
        os.close(inner)
    finally:
        os.close(fd)


def test_unavailable_outside_root_is_a_skip_not_an_error(monkeypatch):
    from btrfsx import loopback
    monkeypatch.setattr(loopback.os, "geteuid", lambda: 1000)
    assert "root" in loopback.unavailable_reason()
