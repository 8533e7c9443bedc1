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
from collections.abc import Iterator, Sequence
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
def btrfs_fs(request, btrfs_available) -> Iterator[Loopback]:
    """A fresh, empty btrfs filesystem for this test alone."""
    fs = _make(request)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture(scope="session")
def btrfs_session_fs(request, btrfs_available) -> Iterator[Loopback]:
    """One btrfs filesystem shared by the session (use ``btrfs_dir`` in tests)."""
    fs = _make(request)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture
def btrfs_dir(request, btrfs_session_fs) -> Iterator[Path]:
    """An empty directory of this test's own on the session's btrfs filesystem."""
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:60]}-", dir=btrfs_session_fs.mountpoint))
    try:
        yield path
    finally:
        if path.exists():
            subvolume.remove_tree(path, destroy_subvolumes=True)


# ---------------------------------------------------------------- trees for tests and benchmarks

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

PAYLOAD = b"#!/bin/sh\n# a small file, as most files in an image layer are\nexit 0\n"


def build_layer(root: str | os.PathLike, nfiles: int, *, per_dir: int = 50, dirs_per_top: int = 25,
                payload: bytes = PAYLOAD) -> int:
    """Fill ``root`` with ``nfiles`` small files, ``per_dir`` to a directory,
    directories two levels deep (``tNNN/dNN/fNNNN``).  About 20 us a file on
    btrfs: 50,000 files in a second or two.  Returns how many directories."""
    root_fd = os.open(root, _DIR_FLAGS)
    ndirs = 0
    try:
        made = 0
        i = 0
        while made < nfiles:
            top = f"t{i // dirs_per_top:03d}"
            if i % dirs_per_top == 0:
                os.mkdir(top, 0o755, dir_fd=root_fd)
                ndirs += 1
            sub = f"{top}/d{i % dirs_per_top:02d}"
            os.mkdir(sub, 0o755, dir_fd=root_fd)
            ndirs += 1
            dfd = os.open(sub, _DIR_FLAGS, dir_fd=root_fd)
            try:
                for j in range(min(per_dir, nfiles - made)):
                    fd = os.open(f"f{j:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                                 dir_fd=dfd)
                    try:
                        os.write(fd, payload)
                    finally:
                        os.close(fd)
                made += min(per_dir, nfiles - made)
            finally:
                os.close(dfd)
            i += 1
    finally:
        os.close(root_fd)
    return ndirs


#: Where :func:`add_nested` puts its subvolumes (the 4th inside the 3rd).
NESTED_LAYOUT = ("usr/lib/n1", "usr/lib/n2", "var/n3", "var/n3/cache/n4", "opt/a/b/c/n5")


def add_nested(root: str | os.PathLike, layout: Sequence[str] = NESTED_LAYOUT) -> list[str]:
    """Make the subvolumes of ``layout`` inside ``root`` (directories as
    needed, existing ones kept); returns their paths."""
    made = []
    for rel in layout:
        parent, name = os.path.split(os.path.join(os.fspath(root), rel))
        os.makedirs(parent, exist_ok=True)
        fd = os.open(parent, _DIR_FLAGS)
        try:
            _ioctl.create_subvolume(fd, name)
        finally:
            os.close(fd)
        made.append(os.path.join(parent, name))
    return made


def walk_nested(root: str | os.PathLike[str]) -> list[str]:
    """Nested subvolumes found as the original Go driver finds them: walk the
    layer, lstat every directory below the root, inode 256 is a subvolume."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if os.lstat(p).st_ino == _ioctl.FIRST_FREE_OBJECTID:
                found.append(p)
    return found



@pytest.fixture
def non_btrfs_dir(tmp_path) -> Iterator[Path]:
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
