"""Quota state shared by several drivers, processes and programs on one
filesystem (issue #15.3): nobody's cleanup turns quotas off under another,
quotas turned off from outside are turned on again with every limit the
store records, and turning them off on purpose is refused while layers are
sized unless forced."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from btrfsx import CreateOpts, Driver, QuotaMode, quota
from tests_support import limit_of, write_past

pytestmark = pytest.mark.btrfs

MiB = 1 << 20


def sized(n: int) -> CreateOpts:
    return CreateOpts(storage_opt={"size": f"{n}M"})


def mode_of(path) -> QuotaMode:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return quota.mode(fd)
    finally:
        os.close(fd)


def assert_enforced(d: Driver, layer: str, size_mib: int) -> None:
    with pytest.raises(OSError) as exc:
        write_past(os.path.join(d.get(layer), "past-the-limit"), (size_mib + 4) * MiB)
    assert exc.value.errno == errno.EDQUOT
    os.unlink(os.path.join(d.get(layer), "past-the-limit"))


@pytest.fixture
def fs(btrfs_fs):
    return btrfs_fs.mountpoint


def test_cleanup_of_one_driver_leaves_quotas_on_for_another(fs):
    one, other = Driver(fs / "one"), Driver(fs / "other")
    try:
        one.create("base")
        one.create("a", "base", sized(8))
        other.create("b", opts=sized(8))
        other.cleanup()
        assert mode_of(fs) is QuotaMode.SIMPLE
        assert limit_of(fs, one.get("a")) == 8 * MiB
        assert_enforced(one, "a", 8)
        one.create("c", "base", sized(6))  # the original failed here with ENOTCONN
        assert limit_of(fs, one.get("c")) == 6 * MiB
    finally:
        one.cleanup()
        other.cleanup()
    assert mode_of(fs) is QuotaMode.SIMPLE


@pytest.mark.parametrize("mode", ["simple", "qgroup"])
@pytest.mark.parametrize("then", ["create", "get"])
def test_quotas_turned_off_by_another_program_are_turned_on_again_with_every_limit(fs, mode, then, caplog):
    with Driver(fs / "home", options=[f"btrfsx.quota={mode}"]) as d:
        d.create("base")
        d.create("a", "base", sized(8))
        d.create("b", opts=sized(12))
        d.create("plain", "base")
        subprocess.run(["btrfs", "quota", "disable", str(fs)], check=True)
        assert limit_of(fs, d.get("plain")) is None and mode_of(fs) is QuotaMode.OFF  # nothing sized: left off
        with caplog.at_level(logging.WARNING, logger="btrfsx"):
            if then == "create":
                d.create("c", "base", sized(6))
            else:
                d.get("b")
        assert mode_of(fs) is {"simple": QuotaMode.SIMPLE, "qgroup": QuotaMode.QGROUP}[mode]
        assert "turned on again" in caplog.text and "size limits of 2 layers re-applied" in caplog.text
        assert limit_of(fs, str(fs / "home/subvolumes/a")) == 8 * MiB
        assert limit_of(fs, str(fs / "home/subvolumes/b")) == 12 * MiB
        if then == "create":
            assert limit_of(fs, str(fs / "home/subvolumes/c")) == 6 * MiB
        assert limit_of(fs, str(fs / "home/subvolumes/plain")) is None
        assert_enforced(d, "a", 8)


def test_a_new_driver_on_a_store_whose_quotas_were_turned_off_restores_the_limits(fs):
    with Driver(fs / "home") as d:
        d.create("a", opts=sized(8))
    subprocess.run(["btrfs", "quota", "disable", str(fs)], check=True)
    with Driver(fs / "home", options=["btrfs.min_space=1M"]) as d:  # min_space turns quotas on at once
        assert limit_of(fs, str(fs / "home/subvolumes/a")) == 8 * MiB
        assert_enforced(d, "a", 8)


def test_disable_quotas_is_refused_while_layers_are_sized_unless_forced(fs):
    with Driver(fs / "home") as d:
        d.create("s1", opts=sized(8))
        d.create("s2", opts=sized(8))
        d.create("plain")
        with pytest.raises(OSError) as exc:
            d.disable_quotas()
        assert exc.value.errno == errno.EBUSY
        assert "'s1', 's2'" in str(exc.value) and "have size limits" in str(exc.value)
        assert exc.value.filename == str(fs / "home")
        assert mode_of(fs) is QuotaMode.SIMPLE and limit_of(fs, d.get("s1")) == 8 * MiB

        assert d.disable_quotas(force=True) is True
        assert mode_of(fs) is QuotaMode.OFF
        assert dict(d.status())["Quota Mode"] == "off"
        assert d.disable_quotas() is False  # already off: nothing refused
        d.get("s1")  # the next sized operation turns them on again
        assert mode_of(fs) is QuotaMode.SIMPLE and limit_of(fs, str(fs / "home/subvolumes/s1")) == 8 * MiB


def test_disable_quotas_without_sized_layers(fs):
    with Driver(fs / "home", options=["btrfs.min_space=1M"]) as d:
        d.create("plain")
        assert mode_of(fs) is QuotaMode.SIMPLE
        assert d.disable_quotas() is True
        assert mode_of(fs) is QuotaMode.OFF
        d.create("still-plain")
        assert mode_of(fs) is QuotaMode.OFF  # unsized layers need none


def test_sized_layers_lists_published_layers_with_quota_files(fs):
    with Driver(fs / "home") as d:
        d.create("a", opts=sized(8))
        d.create("b")
        (fs / "home/quotas/gone").write_text(str(MiB))  # a stale file: its layer was removed
        assert d._store.sized_layers() == {"a": 8 * MiB}


def _churn_quota_off(fs, stop: threading.Event, turned_off: list[int]) -> None:
    fd = os.open(fs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while not stop.is_set():
            if quota.mode(fd) is not QuotaMode.OFF:
                quota.disable(fd)
                turned_off.append(1)
            time.sleep(0.02)
    finally:
        os.close(fd)


def _check_every_limit(fs, home, count: int) -> None:
    with Driver(home) as d:
        for i in range(count):
            d.get(f"l{i}")  # turns quotas on again if the churn left them off
        for i in range(count):
            assert limit_of(fs, str(home / "subvolumes" / f"l{i}")) == (4 + i % 3) * MiB, f"l{i}"
        assert_enforced(d, "l0", 4)


def test_sized_creates_in_threads_while_another_driver_turns_quotas_off(fs):
    """One driver creates and gets sized layers in two threads; another,
    forced, turns quotas off again and again.  No operation fails, and once
    it stops every layer has its limit."""
    stop, errors, turned_off = threading.Event(), [], []
    count = 40

    def builder(d: Driver, start: int) -> None:
        try:
            for i in range(start, count, 2):
                d.create(f"l{i}", "base" if i % 4 < 2 else None, sized(4 + i % 3))
                d.get(f"l{i}")
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    def disabler(d: Driver) -> None:
        while not stop.is_set():
            if d.disable_quotas(force=True):
                turned_off.append(1)
            time.sleep(0.02)

    with Driver(fs / "home") as d, Driver(fs / "elsewhere") as other:
        d.create("base")
        threads = [threading.Thread(target=builder, args=(d, s)) for s in (0, 1)]
        off = threading.Thread(target=disabler, args=(other,))
        off.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        off.join()
    assert not errors, errors
    assert turned_off, "the disabler never found quotas on: the test raced nothing"
    _check_every_limit(fs, fs / "home", count)


BUILDER = """
import sys
from btrfsx import CreateOpts, Driver
home, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Driver(home) as d:
    for i in range(start, count, 2):
        d.create(f"l{i}", "base" if i % 4 < 2 else None, CreateOpts(storage_opt={"size": f"{4 + i % 3}M"}))
        d.get(f"l{i}")
"""


def test_sized_creates_in_processes_while_another_program_turns_quotas_off(fs):
    count = 40
    with Driver(fs / "home") as d:
        d.create("base")
    stop, turned_off = threading.Event(), []
    off = threading.Thread(target=_churn_quota_off, args=(fs, stop, turned_off))
    off.start()
    try:
        builders = [subprocess.Popen([sys.executable, "-c", BUILDER, str(fs / "home"), str(s), str(count)],
                                     stderr=subprocess.PIPE) for s in (0, 1)]
        failures = [p.stderr.read().decode() for p in builders if p.wait() != 0]  # type: ignore[union-attr]
    finally:
        stop.set()
        off.join()
    assert not failures, failures
    assert turned_off, "quotas were never found on: the test raced nothing"
    _check_every_limit(fs, fs / "home", count)
