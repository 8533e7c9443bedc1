"""pytest fixtures for code that needs a real btrfs filesystem.

Load it with ``-p btrfsx.testing`` (or ``pytest_plugins = ["btrfsx.testing"]``
in a top-level conftest).  Fixtures:

``btrfs_fs``
    a fresh btrfs filesystem for one test (a :class:`btrfsx.loopback.Loopback`;
    its ``mountpoint`` is a :class:`pathlib.Path`), for tests that change
    filesystem-wide state such as quotas.
``btrfs_dir``
    an empty directory of its own on a btrfs filesystem shared by the session;
    cheaper, for tests that stay inside it.
``non_btrfs_dir``
    a directory on a filesystem that is not btrfs.

Where btrfs cannot be had (not Linux, not root, no loop devices, no
btrfs-progs) the tests that use these skip with the reason, except when the
environment variable ``CI`` is set: then they fail, so that a CI run can never
pass without touching btrfs.  Everything attached or mounted is torn down when
the test (or session) ends, pass or fail; loop devices left by an earlier run
that was killed are swept at the start of the session.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from btrfsx import _ioctl, subvolume
from btrfsx.loopback import Loopback, sweep_stale, unavailable_reason


def pytest_addoption(parser):
    group = parser.getgroup("btrfsx")
    group.addoption("--btrfs-image-dir", default=os.environ.get("BTRFSX_TEST_IMAGE_DIR", "/var/tmp"),
                    help="where loopback images are made (a disk-backed directory; default /var/tmp "
                         "or $BTRFSX_TEST_IMAGE_DIR)")
    group.addoption("--btrfs-image-size", type=int, default=1 << 30,
                    help="size in bytes of each loopback image (sparse; default 1 GiB)")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"btrfs is required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(f"needs a loopback btrfs filesystem: {reason}")


@pytest.fixture(scope="session")
def btrfs_available() -> None:
    """Skip (fail under CI) unless a loopback btrfs filesystem can be made."""
    reason = unavailable_reason()
    if reason:
        _unavailable(reason)
    sweep_stale()


def _make(request, size: int | None = None, **kwargs) -> Loopback:
    config = request.config
    mountpoint = tempfile.mkdtemp(prefix="btrfsx-mnt-")
    try:
        fs = Loopback.create(config.getoption("--btrfs-image-dir"), mountpoint,
                             size=size or config.getoption("--btrfs-image-size"), **kwargs)
        fs._owns_mountpoint = True  # made above by mkdtemp
        return fs
    except Exception as e:
        os.rmdir(mountpoint)
        _unavailable(f"could not make a loopback btrfs filesystem: {e}")
        raise


@pytest.fixture
def btrfs_fs(request, btrfs_available) -> Loopback:
    """A fresh, empty btrfs filesystem for this test alone."""
    fs = _make(request)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture(scope="session")
def btrfs_session_fs(request, btrfs_available) -> Loopback:
    """One btrfs filesystem shared by the session (use ``btrfs_dir`` in tests)."""
    fs = _make(request)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture
def btrfs_dir(request, btrfs_session_fs) -> Path:
    """An empty directory of this test's own on the session's btrfs filesystem."""
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:60]}-", dir=btrfs_session_fs.mountpoint))
    try:
        yield path
    finally:
        if path.exists():
            subvolume.remove_tree(path, destroy_subvolumes=True)


@pytest.fixture
def non_btrfs_dir(tmp_path) -> Path:
    """A directory on a filesystem other than btrfs (tmpfs if need be)."""
    if _ioctl.fs_magic(tmp_path) != _ioctl.SUPER_MAGIC:
        yield tmp_path
        return
    if os.geteuid() != 0:
        pytest.skip("the temporary directory is on btrfs and mounting a tmpfs needs root")
    target = tmp_path / "tmpfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "btrfsx-test", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
