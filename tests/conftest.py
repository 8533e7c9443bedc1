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


#: Every btrfs fixture of btrfsx.testing depends on btrfs_available, or on
#: btrfs_templates (which asks for the filesystem at run time, out of pytest's
#: sight), so a test whose fixtures reach one needs a loop device, whichever
#: module it is in: marking from the fixtures keeps ``-m "not btrfs"`` off loop
#: devices even in modules that mix pure-logic and btrfs tests.
BTRFS_FIXTURES = {"btrfs_available", "btrfs_templates"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if BTRFS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.btrfs)
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
    """A Driver on ``home``; cleaned up (its fds closed) afterwards."""
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
