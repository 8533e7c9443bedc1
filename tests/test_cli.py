"""The ``btrfsx`` command: the demo main job, on its own loopback filesystem or a given home."""

import subprocess
import sys

from tests_support import attached_images


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "btrfsx", *args], capture_output=True, text=True, **kwargs)


def test_demo_on_its_own_loopback_filesystem(btrfs_available):
    before = attached_images()
    proc = run("demo", "--layers", "7", "--files", "40")
    assert proc.returncode == 0, proc.stderr
    assert "demo on a loopback btrfs filesystem" in proc.stdout
    assert "holds 40 base files and 7 added ones" in proc.stdout
    assert "create (snapshot)" in proc.stdout and "remove" in proc.stdout
    assert attached_images() == before  # its loop device is gone again


def test_demo_on_a_given_home(btrfs_dir):
    proc = run("demo", "--home", str(btrfs_dir), "--layers", "3", "--files", "10")
    assert proc.returncode == 0, proc.stderr
    assert f"demo on {btrfs_dir}" in proc.stdout
    assert "holds 10 base files and 3 added ones" in proc.stdout
    assert list(btrfs_dir.iterdir()) == []  # it cleans up after itself


def test_demo_refuses_a_home_that_is_not_btrfs(non_btrfs_dir):
    proc = run("demo", "--home", str(non_btrfs_dir))
    assert proc.returncode == 2
    assert "is not on a btrfs filesystem" in proc.stderr and str(non_btrfs_dir) in proc.stderr


def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("btrfsx ")
