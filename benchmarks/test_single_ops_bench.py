"""Single operations of the driver (create, snapshot, remove, exists, get)
against the C floor (``floor.c``: the same ioctls from C with
cached directory fds), in the same run.

Every group's btrfsx benchmark carries the C floor's median (or the other
contender's) and the ratio in ``benchmark.extra_info``; the run ends with a
table of them (see ``pytest_terminal_summary`` in conftest.py).  Nothing
here asserts a timing: ``tests/test_performance_claims.py`` does, with
margins.  Run with ``.venv/bin/python -m pytest benchmarks/ -q`` as root.

Medians only, and ratios within one run: the machine is a noisy 2-core VM.
Before each measurement the filesystem is committed, the cleaner given time
to drop what the last one deleted, and committed again (``settle``; without
the second commit the next snapshot pays for writing out the cleaner's
work).  For the fast operations (empty create and remove) the C floor runs
half before and half after the Python contender, in the same pattern (make
N, then destroy N); for snapshots and nested removes it alternates with the
Python contender round by round, each round starting settled.

Known bias: an operation timed right after ``settle`` from this process can
pay tens of microseconds more than the same one from the freshly started
C floor process (seen on the failing SNAP_DESTROY that Driver.remove makes
first on a layer with nested subvolumes); it matters only for the nested
remove, where it counts against the driver.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from btrfsx import Driver, _ioctl
from btrfsx.loopback import Loopback

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

CREATE_N = 200          # empty creates / removes per contender
CLI_N = 30              # the same through the btrfs command (each is a process)
SNAPSHOT_N = 60         # snapshots per contender (they accumulate; the C floor's alternate)
CHAIN_N = 300           # the depth of the snapshot chain
BASE_FILES = 1_000
G_CREATE = "create empty layer"
G_SNAPSHOT = "snapshot 1,000-file layer"
G_CHAIN = f"snapshot chain, {CHAIN_N} deep, of a 1,000-file layer"
G_REMOVE = "remove empty layer"
G_EXISTS = "exists / get of a layer"

#: Medians shared between the tests of a group (seconds).
SHARED: dict = {}


def _open(path) -> int:
    return os.open(path, _DIR_FLAGS)


@dataclass
class Bench:
    fs: Loopback
    driver: Driver
    fd: int             # the filesystem's root, for settle()
    floor_dir: Path     # a plain directory for the C floor's subvolumes
    plain_dir: Path     # a plain directory for the bare _ioctl contenders
    other_dir: Path     # a plain directory for the other contenders (fcntl, libbtrfsutil, CLI)
    base: str           # id of the 1,000-file layer

    def layer(self, layer_id: str) -> str:
        return self.driver.get(layer_id)


@pytest.fixture(scope="class")
def bench(btrfs_available, tools):
    """A fresh filesystem with a driver store and a 1,000-file layer ``base``."""
    with tools.fresh_fs() as fs:
        driver = Driver(fs.mountpoint / "store")
        fd = _open(fs.mountpoint)
        try:
            driver.create("base")
            tools.build_layer(driver.get("base"), BASE_FILES)
            dirs = []
            for name in ("floor", "plain", "other"):
                (fs.mountpoint / name).mkdir()
                dirs.append(fs.mountpoint / name)
            tools.settle(fd)
            yield Bench(fs, driver, fd, *dirs, "base")
        finally:
            os.close(fd)
            driver.cleanup()


def _cli(*args: str) -> None:
    subprocess.run(["btrfs", "-q", *args], check=True, stdout=subprocess.DEVNULL)


needs_cli = pytest.mark.skipif(shutil.which("btrfs") is None, reason="btrfs-progs (the btrfs command) is not installed")


class TestSingleOperations:
    # ------------------------------------------------------------ create

    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_driver(self, benchmark, bench, floor, tools):
        """Driver.create(id) of an empty layer, fresh ids, removed afterwards;
        the C floor runs half before and half after, in the same pattern."""
        d = bench.driver
        ids = tools.Ids("create")
        c = floor.create(bench.floor_dir, CREATE_N // 2)
        tools.settle(bench.fd)
        benchmark.pedantic(lambda: d.create(ids()), rounds=CREATE_N, warmup_rounds=5)
        for i in range(ids.n):
            d.remove(f"create-{i}")
        tools.settle(bench.fd)
        c2 = floor.create(bench.floor_dir, CREATE_N // 2)
        tools.settle(bench.fd)
        c_create = tools.median(c["create"] + c2["create"]) / 1e9
        c_destroy = tools.median(c["destroy"] + c2["destroy"]) / 1e9
        SHARED["c_create"], SHARED["c_destroy"] = c_create, c_destroy
        SHARED["driver_create"] = tools.bench_median(benchmark)
        tools.also(benchmark, "C floor: SUBVOL_CREATE (cached dir fd)", c_create, samples=CREATE_N)
        tools.record(benchmark, "Driver.create(id)", reference="C SUBVOL_CREATE", reference_s=c_create,
                     target="driver_create", btrfsx=True)

    def _beside_c(self, bench, floor, tools, fn) -> tuple[float, float]:
        """Run ``fn()`` between two halves of the C floor's create/destroy
        loop (same filesystem, same pattern); the C medians (create, destroy)."""
        c = floor.create(bench.floor_dir, CREATE_N // 2)
        tools.settle(bench.fd)
        fn()
        tools.settle(bench.fd)
        c2 = floor.create(bench.floor_dir, CREATE_N // 2)
        tools.settle(bench.fd)
        return tools.median(c["create"] + c2["create"]) / 1e9, tools.median(c["destroy"] + c2["destroy"]) / 1e9

    def _accumulating_create(self, benchmark, bench, tools, create, destroy, rounds=CREATE_N, warmup=5):
        names = tools.Ids("s")
        benchmark.pedantic(lambda: create(names()), rounds=rounds, warmup_rounds=warmup)
        for i in range(names.n):
            destroy(f"s-{i}")
        tools.settle(bench.fd)

    def _tight_loop(self, fd: int, prefix: str) -> tuple[float, float]:
        """The C floor's own pattern from Python: CREATE_N subvolumes made,
        then destroyed, each call between two clock reads and nothing else
        in the loop; the medians (create, destroy) in seconds."""
        names = [f"{prefix}-{i}" for i in range(CREATE_N)]
        tc, td = [], []
        clock = time.perf_counter_ns
        create, destroy = _ioctl.create_subvolume, _ioctl.destroy_subvolume
        for name in names:
            t0 = clock()
            create(fd, name)
            tc.append(clock() - t0)
        for name in names:
            t0 = clock()
            destroy(fd, name)
            td.append(clock() - t0)
        return statistics.median(tc) / 1e9, statistics.median(td) / 1e9

    def _ioctl_contender(self, benchmark, bench, floor, tools, op: str) -> None:
        """The bare compiled ioctl through pytest-benchmark (accumulating
        creates, or removes of subvolumes made beforehand), then in the C
        floor's own tight loop, between two halves of the C floor's loop.
        The target is checked on the tight loop, timed as the C floor times
        itself; the pytest-benchmark figure, whose loop runs the runner's
        bookkeeping between two calls, is shown beside it."""
        fd = _open(bench.plain_dir)
        tight = {}
        try:
            def both():
                if op == "create":
                    self._accumulating_create(benchmark, bench, tools, lambda n: _ioctl.create_subvolume(fd, n),
                                              lambda n: _ioctl.destroy_subvolume(fd, n))
                else:
                    self._premade_remove(benchmark, bench, tools, lambda n: _ioctl.create_subvolume(fd, n),
                                         lambda n: _ioctl.destroy_subvolume(fd, n), "d")
                tools.settle(bench.fd)
                tight["create"], tight["destroy"] = self._tight_loop(fd, "t")
            c_create, c_destroy = self._beside_c(bench, floor, tools, both)
        finally:
            os.close(fd)
        c = c_create if op == "create" else c_destroy
        name = "_ioctl.create_subvolume" if op == "create" else "_ioctl.destroy_subvolume"
        ioctl = "SUBVOL_CREATE" if op == "create" else "SNAP_DESTROY"
        tools.also(benchmark, f"{name}, in the C floor's tight loop (timed as C times itself)", tight[op],
                   samples=CREATE_N)
        med = tools.bench_median(benchmark)
        if med:
            benchmark.extra_info.setdefault("notes", []).append(
                f"{name}: {tools.fmt_time(med)} through pytest-benchmark ({med / c:.2f}x the C floor), "
                f"{tools.fmt_time(tight[op])} in the C floor's own tight loop ({tight[op] / c:.2f}x); "
                f"C {ioctl} run beside it: {tools.fmt_time(c)}")
        tools.record(benchmark, name, reference=f"C {ioctl} (run beside it)", reference_s=c)
        tools.target(benchmark, f"ioctl_{'create' if op == 'create' else 'destroy'}", tight[op] / c,
                     f"tight loop {tools.fmt_time(tight[op])} vs C {tools.fmt_time(c)}; through pytest-benchmark "
                     f"{med / c:.2f}x" if med else "")

    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_ioctl(self, benchmark, bench, floor, tools):
        self._ioctl_contender(benchmark, bench, floor, tools, "create")

    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_fcntl(self, benchmark, bench, floor, tools):
        """Pure Python: fcntl.ioctl with a struct-packed 4 KiB bytearray."""
        fd = _open(bench.other_dir)
        try:
            self._accumulating_create(benchmark, bench, tools, lambda n: tools.PyIoctl.create_subvolume(fd, n),
                                      lambda n: tools.PyIoctl.destroy_subvolume(fd, n))
        finally:
            os.close(fd)
        tools.record(benchmark, "fcntl.ioctl SUBVOL_CREATE (pure Python)", reference="C SUBVOL_CREATE",
                     reference_s=SHARED.get("c_create"))

    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_btrfsutil(self, benchmark, bench, floor, tools, btrfsutil):
        """libbtrfsutil's bindings: create_subvolume(path) (it opens the parent each call)."""
        base = os.fspath(bench.other_dir)
        self._accumulating_create(benchmark, bench, tools,
                                  lambda n: btrfsutil.create_subvolume(os.path.join(base, n)),
                                  lambda n: btrfsutil.delete_subvolume(os.path.join(base, n)))
        tools.record(benchmark, "btrfsutil.create_subvolume(path)", reference="C SUBVOL_CREATE",
                     reference_s=SHARED.get("c_create"))

    @needs_cli
    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_cli(self, benchmark, bench, tools):
        """`btrfs subvolume create PATH` through subprocess, as most Python tools do."""
        base = os.fspath(bench.other_dir)
        fd = _open(bench.other_dir)
        try:
            self._accumulating_create(benchmark, bench, tools,
                                      lambda n: _cli("subvolume", "create", os.path.join(base, n)),
                                      lambda n: _ioctl.destroy_subvolume(fd, n), rounds=CLI_N, warmup=2)
        finally:
            os.close(fd)
        cli = tools.bench_median(benchmark)
        drv = SHARED.get("driver_create")
        tools.record(benchmark, "btrfs subvolume create (subprocess)", reference="Driver.create(id), times faster",
                     reference_s=drv, value=cli / drv if cli and drv else None, target="cli_create")

    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_remove_cycle_driver(self, benchmark, bench, floor, tools):
        """Driver.create(id) then Driver.remove(id), both timed."""
        d = bench.driver
        ids = tools.Ids("cycle")

        def cycle():
            layer = ids()
            d.create(layer)
            d.remove(layer)
        benchmark.pedantic(cycle, rounds=CREATE_N, warmup_rounds=5)
        tools.settle(bench.fd)
        if "c_create" not in SHARED:
            c = floor.create(bench.floor_dir, CREATE_N)
            SHARED["c_create"], SHARED["c_destroy"] = (tools.median(c["create"]) / 1e9,
                                                       tools.median(c["destroy"]) / 1e9)
        tools.record(benchmark, "Driver.create + Driver.remove (one after the other)",
                     reference="C create + destroy medians", reference_s=SHARED["c_create"] + SHARED["c_destroy"])

    # ------------------------------------------------------------ remove

    def _premade_remove(self, benchmark, bench, tools, create, destroy, prefix, rounds=CREATE_N, warmup=5):
        names = [f"{prefix}-{i}" for i in range(rounds + warmup)]
        for name in names:  # then removed at once, as the C floor destroys what it just made
            create(name)
        pending = iter(names)
        benchmark.pedantic(destroy, setup=lambda: ((next(pending),), {}), rounds=rounds, warmup_rounds=warmup)
        tools.settle(bench.fd)

    def _c_destroy(self, bench, floor, tools) -> float:
        if "c_destroy" not in SHARED:
            SHARED["c_destroy"] = tools.median(floor.create(bench.floor_dir, CREATE_N)["destroy"]) / 1e9
        return SHARED["c_destroy"]

    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_driver(self, benchmark, bench, floor, tools):
        """Driver.remove of empty layers made beforehand (untimed), between
        two halves of the C floor's loop."""
        d = bench.driver
        _, c_destroy = self._beside_c(bench, floor, tools, lambda: self._premade_remove(
            benchmark, bench, tools, d.create, d.remove, "rm"))
        SHARED["c_destroy"] = c_destroy
        SHARED["driver_remove"] = tools.bench_median(benchmark)
        tools.also(benchmark, "C floor: SNAP_DESTROY (cached dir fd)", c_destroy, samples=CREATE_N)
        tools.record(benchmark, "Driver.remove (empty layer)", reference="C SNAP_DESTROY (run beside it)",
                     reference_s=c_destroy, target="driver_remove", btrfsx=True)

    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_ioctl(self, benchmark, bench, floor, tools):
        self._ioctl_contender(benchmark, bench, floor, tools, "destroy")

    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_fcntl(self, benchmark, bench, floor, tools):
        fd = _open(bench.other_dir)
        try:
            self._premade_remove(benchmark, bench, tools, lambda n: _ioctl.create_subvolume(fd, n),
                                 lambda n: tools.PyIoctl.destroy_subvolume(fd, n), "f")
        finally:
            os.close(fd)
        tools.record(benchmark, "fcntl.ioctl SNAP_DESTROY (pure Python)", reference="C SNAP_DESTROY",
                     reference_s=self._c_destroy(bench, floor, tools))

    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_btrfsutil(self, benchmark, bench, floor, tools, btrfsutil):
        base = os.fspath(bench.other_dir)
        fd = _open(bench.other_dir)
        try:
            self._premade_remove(benchmark, bench, tools, lambda n: _ioctl.create_subvolume(fd, n),
                                 lambda n: btrfsutil.delete_subvolume(os.path.join(base, n)), "u")
        finally:
            os.close(fd)
        tools.record(benchmark, "btrfsutil.delete_subvolume(path)", reference="C SNAP_DESTROY",
                     reference_s=self._c_destroy(bench, floor, tools))

    @needs_cli
    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_cli(self, benchmark, bench, floor, tools):
        """`btrfs subvolume delete PATH` through subprocess."""
        base = os.fspath(bench.other_dir)
        fd = _open(bench.other_dir)
        try:
            self._premade_remove(benchmark, bench, tools, lambda n: _ioctl.create_subvolume(fd, n),
                                 lambda n: _cli("subvolume", "delete", os.path.join(base, n)), "c",
                                 rounds=CLI_N, warmup=2)
        finally:
            os.close(fd)
        cli = tools.bench_median(benchmark)
        drv = SHARED.get("driver_remove")
        tools.record(benchmark, "btrfs subvolume delete (subprocess)", reference="Driver.remove, times faster",
                     reference_s=drv, value=cli / drv if cli and drv else None, target="cli_remove")

    # ------------------------------------------------------------ snapshot

    def _interleaved_snapshots(self, benchmark, bench, floor, tools, target, rounds=SNAPSHOT_N) -> float:
        """Time ``target()`` (one snapshot of base, kept) for ``rounds``
        rounds; before each, the C floor makes (and destroys) one snapshot of
        the same source, then the filesystem is committed and the cleaner
        waited for.  Returns the C floor's median in seconds."""
        src = bench.layer(bench.base)
        c: list[int] = []

        def setup():
            c.extend(floor.snapshot(src, bench.floor_dir, 1))
            tools.settle(bench.fd)
        tools.settle(bench.fd)
        benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1)
        return tools.median(c[1:]) / 1e9

    def _snapshot_contender(self, benchmark, bench, floor, tools, snap, destroy, rounds=SNAPSHOT_N) -> float:
        names = tools.Ids("snap")
        c_snap = self._interleaved_snapshots(benchmark, bench, floor, tools, lambda: snap(names()), rounds)
        for i in range(names.n):
            destroy(f"snap-{i}")
        tools.settle(bench.fd)
        return c_snap

    @pytest.mark.benchmark(group=G_SNAPSHOT)
    def test_snapshot_driver(self, benchmark, bench, floor, tools):
        """Driver.create(id, parent) of the 1,000-file layer (the layers
        accumulate, removed at the end)."""
        d = bench.driver
        c_snap = self._snapshot_contender(benchmark, bench, floor, tools, lambda n: d.create(n, bench.base),
                                          d.remove)
        SHARED["driver_snapshot"] = tools.bench_median(benchmark)
        tools.also(benchmark, "C floor: SNAP_CREATE_V2 (alternating with Driver)", c_snap, samples=SNAPSHOT_N)
        tools.record(benchmark, "Driver.create(id, parent)", reference="C SNAP_CREATE_V2 (alternating)",
                     reference_s=c_snap, target="driver_snapshot", btrfsx=True)

    @pytest.mark.benchmark(group=G_SNAPSHOT)
    def test_snapshot_ioctl(self, benchmark, bench, floor, tools):
        src_fd = _open(bench.layer(bench.base))
        dst = _open(bench.plain_dir)
        try:
            c_snap = self._snapshot_contender(benchmark, bench, floor, tools,
                                              lambda n: _ioctl.snapshot(src_fd, dst, n),
                                              lambda n: _ioctl.destroy_subvolume(dst, n))
        finally:
            os.close(src_fd)
            os.close(dst)
        tools.record(benchmark, "_ioctl.snapshot", reference="C SNAP_CREATE_V2 (alternating)", reference_s=c_snap,
                     target="ioctl_snapshot")

    @pytest.mark.benchmark(group=G_SNAPSHOT)
    def test_snapshot_fcntl(self, benchmark, bench, floor, tools):
        src_fd = _open(bench.layer(bench.base))
        dst = _open(bench.other_dir)
        try:
            c_snap = self._snapshot_contender(benchmark, bench, floor, tools,
                                              lambda n: tools.PyIoctl.snapshot(src_fd, dst, n),
                                              lambda n: _ioctl.destroy_subvolume(dst, n), rounds=SNAPSHOT_N // 2)
        finally:
            os.close(src_fd)
            os.close(dst)
        tools.record(benchmark, "fcntl.ioctl SNAP_CREATE_V2 (pure Python)", reference="C SNAP_CREATE_V2 (alternating)",
                     reference_s=c_snap)

    @pytest.mark.benchmark(group=G_SNAPSHOT)
    def test_snapshot_btrfsutil(self, benchmark, bench, floor, tools, btrfsutil):
        src = bench.layer(bench.base)
        base = os.fspath(bench.other_dir)
        dst = _open(bench.other_dir)
        try:
            c_snap = self._snapshot_contender(benchmark, bench, floor, tools,
                                              lambda n: btrfsutil.create_snapshot(src, os.path.join(base, n)),
                                              lambda n: _ioctl.destroy_subvolume(dst, n), rounds=SNAPSHOT_N // 2)
        finally:
            os.close(dst)
        tools.record(benchmark, "btrfsutil.create_snapshot(src, path)", reference="C SNAP_CREATE_V2 (alternating)",
                     reference_s=c_snap)

    @needs_cli
    @pytest.mark.benchmark(group=G_SNAPSHOT)
    def test_snapshot_cli(self, benchmark, bench, floor, tools):
        src = bench.layer(bench.base)
        base = os.fspath(bench.other_dir)
        dst = _open(bench.other_dir)
        try:
            c_snap = self._snapshot_contender(benchmark, bench, floor, tools,
                                              lambda n: _cli("subvolume", "snapshot", src, os.path.join(base, n)),
                                              lambda n: _ioctl.destroy_subvolume(dst, n), rounds=CLI_N // 2)
        finally:
            os.close(dst)
        cli = tools.bench_median(benchmark)
        drv = SHARED.get("driver_snapshot")
        tools.record(benchmark, "btrfs subvolume snapshot (subprocess)", reference="C SNAP_CREATE_V2 (alternating)",
                     reference_s=c_snap,
                     note=f"Driver.create(id, parent) {cli / drv:.1f}x faster" if cli and drv else "")

    @pytest.mark.benchmark(group=G_CHAIN)
    def test_snapshot_chain_driver(self, benchmark, bench, floor, tools):
        """A chain of CHAIN_N snapshots, each of the one before, through
        Driver.create(id, parent), beside the C floor's chain on the same
        filesystem (one C chain before, one after, with the driver's layers
        removed in between)."""
        d = bench.driver
        src = bench.layer(bench.base)
        tools.settle(bench.fd)
        c = floor.chain(src, bench.floor_dir, CHAIN_N)
        tools.settle(bench.fd)
        ids = tools.Ids("chain")
        prev = [bench.base]

        def step():
            layer = ids()
            d.create(layer, prev[0])
            prev[0] = layer
        benchmark.pedantic(step, rounds=CHAIN_N, warmup_rounds=0)
        for i in reversed(range(ids.n)):
            d.remove(f"chain-{i}")
        tools.settle(bench.fd)
        c2 = floor.chain(src, bench.floor_dir, CHAIN_N)
        tools.settle(bench.fd)
        c_chain = tools.median(c["chain"] + c2["chain"]) / 1e9
        c_open = tools.median(c["chain_open"] + c2["chain_open"]) / 1e9
        SHARED["c_chain"] = c_chain
        tools.also(benchmark, f"C floor: SNAP_CREATE_V2 chain (2 x {CHAIN_N})", c_chain, samples=2 * CHAIN_N)
        tools.also(benchmark, "C floor: openat of each new link (not part of its chain figure: a cached fd)",
                   c_open, samples=2 * CHAIN_N)
        med = tools.bench_median(benchmark)
        if med:
            benchmark.extra_info.setdefault("notes", []).append(
                f"the driver opens each parent by id (openat + fstat + close); the first open of a subvolume "
                f"made a moment ago costs {tools.fmt_time(c_open)} in C, which the floor does outside its "
                f"timing; the C chain plus that open would be {tools.fmt_time(c_chain + c_open)} "
                f"(Driver at {med / (c_chain + c_open):.2f}x of it)")
        tools.record(benchmark, f"Driver.create(id, previous) x {CHAIN_N}", reference="C floor chain",
                     reference_s=c_chain, target="driver_snapshot_chain", btrfsx=True)

    @pytest.mark.benchmark(group=G_CHAIN)
    def test_snapshot_chain_ioctl(self, benchmark, bench, floor, tools):
        """The bare compiled ioctl along a chain (each link opened in the
        round's setup, untimed, as the C floor's opens are)."""
        dst = _open(bench.plain_dir)
        fds = [_open(bench.layer(bench.base))]
        names = tools.Ids("k")
        last = [None]

        def setup():
            if last[0] is not None:
                os.close(fds[0])
                fds[0] = os.open(last[0], _DIR_FLAGS, dir_fd=dst)
            last[0] = names()
            return (fds[0], dst, last[0]), {}
        try:
            tools.settle(bench.fd)
            benchmark.pedantic(_ioctl.snapshot, setup=setup, rounds=CHAIN_N, warmup_rounds=0)
        finally:
            os.close(fds[0])
            for i in reversed(range(names.n)):
                _ioctl.destroy_subvolume(dst, f"k-{i}")
            os.close(dst)
        tools.settle(bench.fd)
        tools.record(benchmark, f"_ioctl.snapshot x {CHAIN_N}", reference="C floor chain",
                     reference_s=SHARED.get("c_chain"))

    # ------------------------------------------------------------ exists / get

    @pytest.mark.benchmark(group=G_EXISTS)
    def test_exists_driver(self, benchmark, bench, floor, tools):
        d = bench.driver
        assert benchmark(d.exists, bench.base)
        c = tools.median(floor.stat(d.get(bench.base).rsplit("/", 1)[0], bench.base, 20_000)) / 1e9
        SHARED["c_stat"] = c
        tools.also(benchmark, "C floor: fstatat(subvolumes fd, id)", c, samples=20_000)
        tools.record(benchmark, "Driver.exists(id)", reference="C fstatat", reference_s=c, btrfsx=True)

    @pytest.mark.benchmark(group=G_EXISTS)
    def test_get_driver(self, benchmark, bench, tools):
        d = bench.driver
        benchmark(d.get, bench.base)
        tools.record(benchmark, "Driver.get(id) (no size limit)", reference="C fstatat",
                     reference_s=SHARED.get("c_stat"))

    @pytest.mark.benchmark(group=G_EXISTS)
    def test_exists_lstat(self, benchmark, bench, tools):
        path = bench.layer(bench.base)
        benchmark(os.lstat, path)
        tools.record(benchmark, "os.lstat(path) (pure Python)", reference="C fstatat", reference_s=SHARED.get("c_stat"))

    @pytest.mark.benchmark(group=G_EXISTS)
    def test_exists_btrfsutil(self, benchmark, bench, tools, btrfsutil):
        path = bench.layer(bench.base)
        assert benchmark(btrfsutil.is_subvolume, path)
        tools.record(benchmark, "btrfsutil.is_subvolume(path)", reference="C fstatat", reference_s=SHARED.get("c_stat"))

    @needs_cli
    @pytest.mark.benchmark(group=G_EXISTS)
    def test_exists_cli(self, benchmark, bench, tools):
        path = bench.layer(bench.base)
        benchmark.pedantic(_cli, args=("subvolume", "show", path), rounds=CLI_N // 2, warmup_rounds=1)
        tools.record(benchmark, "btrfs subvolume show (subprocess)", reference="C fstatat",
                     reference_s=SHARED.get("c_stat"))
