"""Create and destroy an empty subvolume: btrfsx's compiled layer beside plain
``fcntl.ioctl`` from Python and the ``btrfs`` command, in the same run.

Run with ``.venv/bin/python -m pytest benchmarks/``; compare the groups'
medians (the figures are ratios within one run, not absolute times).
"""

import fcntl
import itertools
import os
import shutil
import struct
import subprocess

import pytest

from btrfsx import _ioctl

# _IOW(0x94, 14, struct btrfs_ioctl_vol_args) and _IOW(0x94, 15, ...): 4096-byte args
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E
BTRFS_IOC_SNAP_DESTROY = 0x5000940F


def vol_args(name: bytes) -> bytearray:
    # mutable: fcntl.ioctl copies at most 1 KiB of an immutable argument
    return bytearray(struct.pack("q4088s", 0, name))


@pytest.fixture
def dirfd(btrfs_fs):
    # A fresh filesystem per contender: the cleaner dropping the previous
    # contender's thousands of subvolumes would otherwise slow the next one.
    fd = os.open(btrfs_fs.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _cycle(create, destroy):
    names = (b"s%d" % i for i in itertools.count())

    def one():
        name = next(names)
        create(name)
        destroy(name)
    return one


@pytest.mark.benchmark(group="create+destroy empty subvolume")
def test_btrfsx_ioctl(benchmark, dirfd, tools):
    benchmark(_cycle(lambda n: _ioctl.create_subvolume(dirfd, n),
                     lambda n: _ioctl.destroy_subvolume(dirfd, n)))
    tools.record(benchmark, "_ioctl.create_subvolume + destroy_subvolume", btrfsx=True)


@pytest.mark.benchmark(group="create+destroy empty subvolume")
def test_python_fcntl_ioctl(benchmark, dirfd, tools):
    benchmark(_cycle(lambda n: fcntl.ioctl(dirfd, BTRFS_IOC_SUBVOL_CREATE, vol_args(n)),
                     lambda n: fcntl.ioctl(dirfd, BTRFS_IOC_SNAP_DESTROY, vol_args(n))))
    tools.record(benchmark, "fcntl.ioctl SUBVOL_CREATE + SNAP_DESTROY (pure Python)")


@pytest.mark.skipif(shutil.which("btrfs") is None, reason="btrfs-progs is not installed")
@pytest.mark.benchmark(group="create+destroy empty subvolume")
def test_btrfs_cli(benchmark, btrfs_fs, tools):
    btrfs_dir = btrfs_fs.mountpoint
    def create(n):
        subprocess.run(["btrfs", "-q", "subvolume", "create", os.fsdecode(btrfs_dir / os.fsdecode(n))], check=True)

    def destroy(n):
        subprocess.run(["btrfs", "-q", "subvolume", "delete", os.fsdecode(btrfs_dir / os.fsdecode(n))], check=True)
    benchmark.pedantic(_cycle(create, destroy), rounds=30)
    tools.record(benchmark, "btrfs subvolume create + delete (subprocess)")
