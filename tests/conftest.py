"""Suite-wide options: the btrfs fixtures come from the btrfsx.testing plugin
(loaded by ``-p btrfsx.testing`` in pyproject.toml)."""

import os
import subprocess

import pytest

from btrfsx import Driver
from btrfsx.loopback import IMAGE_PREFIX


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the long fault, fuzz and scale tests (marked slow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def home(btrfs_fs):
    """A store's home on a fresh btrfs filesystem (made by the first Driver)."""
    return btrfs_fs.mountpoint / "home"


@pytest.fixture
def driver(home):
    """A Driver on ``home``; cleaned up (quotas off, fds closed) afterwards."""
    d = Driver(home)
    try:
        yield d
    finally:
        d.cleanup()


def _our_loop_devices():
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True).stdout
    mine = f"{IMAGE_PREFIX}{os.getpid()}-"
    return [line.strip() for line in out.splitlines() if mine in line]


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if it leaves a loop device of its own attached: the
    machines have 8, and CI's next run needs them."""
    if os.geteuid() != 0:
        return
    try:
        leaked = _our_loop_devices()
    except FileNotFoundError:
        return
    if leaked:
        session.config.get_terminal_writer().line(
            "loop devices left attached by this run: " + ", ".join(leaked), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
