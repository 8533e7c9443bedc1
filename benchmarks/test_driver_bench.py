"""The driver against the C floor (``floor.c``: the same ioctls from C with
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

import contextlib
import os
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from btrfsx import CreateOpts, Driver, _ioctl
from btrfsx.loopback import Loopback
from btrfsx.subvolume import nested_subvolumes

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

CREATE_N = 200          # empty creates / removes per contender
CLI_N = 30              # the same through the btrfs command (each is a process)
SNAPSHOT_N = 60         # snapshots per contender (they accumulate; the C floor's alternate)
CHAIN_N = 300           # the depth of the snapshot chain
BIG_ROUNDS = 10         # 50,000-file layers removed per contender
BIG_LAYER_FILES = 50_000
#: where the nested subvolumes go in a 50,000-file layer (the 4th inside the 3rd)
BIG_NESTED = ("t000/d03/n1", "t005/d10/n2", "t010/n3", "t010/n3/x/n4", "t019/d24/n5")
BASE_FILES = 1_000
WALK_ROUNDS = 7
FIND_N = 2_000
QUOTA_LAYERS = (50, 200, 500)
QUOTA_ROUNDS = {"off": 30, "simple": 40, "qgroup": 5}
THREADS = (1, 2, 4)
THREAD_N = 50           # snapshots per thread per round
THREAD_ROUNDS = 11

G_CREATE = "create empty layer"
G_SNAPSHOT = "snapshot 1,000-file layer"
G_CHAIN = f"snapshot chain, {CHAIN_N} deep, of a 1,000-file layer"
G_REMOVE = "remove empty layer"
G_EXISTS = "exists / get of a layer"
G_REMOVE_BIG = "remove a 50,000-file layer"
G_REMOVE_NESTED = "remove a 50,000-file layer holding 5 nested subvolumes"
G_NESTED = "find nested subvolumes in a 50,000-file layer"
G_THREADS = f"threads: {THREAD_N} snapshots of a 1,000-file layer from each thread"

#: Medians shared between the tests of a group (seconds).
SHARED: dict = {}


def _open(path) -> int:
    return os.open(path, _DIR_FLAGS)


# ================================================================ single operations

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


# ================================================================ 50,000-file layers

@dataclass
class Big:
    fs: Loopback
    driver: Driver
    fd: int

    def make(self, tools, layer_id: str, nested: bool, warm: bool = True) -> str:
        """A snapshot of the 50,000-file layer ``big`` (with ``BIG_NESTED``
        subvolumes added when ``nested``), every entry read once when ``warm``
        (dentries and inodes cached, as in a layer just built or used)."""
        self.driver.create(layer_id, "big")
        path = self.driver.get(layer_id)
        if nested:
            tools.add_nested(path, BIG_NESTED)
        if warm:
            tools.warm(path)
        return path


@pytest.fixture(scope="class")
def big(btrfs_available, tools):
    """A fresh filesystem with a driver store holding ``big``, a layer of
    50,000 small files.  The layers the benchmarks remove are snapshots of
    it (a fresh one per round), with nested subvolumes added as needed."""
    with tools.fresh_fs(size=2 << 30) as fs:
        driver = Driver(fs.mountpoint / "store")
        fd = _open(fs.mountpoint)
        try:
            driver.create("big")
            tools.build_layer(driver.get("big"), BIG_LAYER_FILES)
            tools.settle(fd)
            yield Big(fs, driver, fd)
        finally:
            os.close(fd)
            driver.cleanup()


@pytest.fixture(scope="class")
def nest(big, tools):
    """A warm 50,000-file layer holding the 5 nested subvolumes, kept."""
    path = big.make(tools, "nest", nested=True)
    tools.settle(big.fd)
    return path


class TestBigLayers:
    """Removing a layer of 50,000 files, and finding what is nested in it.
    Every layer removed is a fresh snapshot of the same 50,000-file layer,
    read through once (``warm``) so every contender meets it in the same
    cache state, then the filesystem is committed and the cleaner waited
    for before the timed remove."""

    def _remove_big(self, benchmark, big, floor, tools, warm: bool, prefix: str) -> None:
        """Driver.remove of a 50,000-file layer, no nested subvolumes; in
        each round's setup, the C floor removes an identical layer, then an
        empty layer is removed through the driver (timed by hand), each
        after a commit with the cleaner done."""
        d = big.driver
        ids = tools.Ids(prefix)
        empty: list[float] = []
        c: dict[str, list[int]] = {"remove": [], "find": [], "nested": []}

        def setup():
            ours, theirs, e = ids(), ids(), ids()
            big.make(tools, ours, nested=False, warm=warm)
            theirs_path = big.make(tools, theirs, nested=False, warm=warm)
            d.create(e)
            tools.settle(big.fd)
            for key, values in floor.remove([theirs_path]).items():
                c[key] += values
            tools.settle(big.fd)
            empty.append(tools.timed(d.remove, e))
            tools.settle(big.fd)
            return (ours,), {}

        benchmark.pedantic(d.remove, setup=setup, rounds=BIG_ROUNDS, warmup_rounds=1)
        tools.settle(big.fd)
        state = "warm" if warm else "never read since its snapshot"
        e_med = tools.median(empty[1:])
        c_med = tools.median(c["remove"][1:]) / 1e9
        tools.also(benchmark, f"Driver.remove of an empty layer (alternating with the {state} one)", e_med,
                   samples=len(empty) - 1)
        tools.also(benchmark, f"C floor: find + SNAP_DESTROY of an identical layer ({state})", c_med,
                   samples=len(c["remove"]) - 1)
        med = tools.bench_median(benchmark)
        tools.record(benchmark, f"Driver.remove (50,000 files, {state})", reference="Driver.remove of an empty layer",
                     reference_s=e_med, target="remove_big_plain", btrfsx=warm)
        if med and c_med:
            benchmark.extra_info.setdefault("notes", []).append(
                f"{state}: Driver.remove {tools.fmt_time(med)}, the C floor on an identical layer "
                f"{tools.fmt_time(c_med)} ({med / c_med:.2f}x), an empty layer {tools.fmt_time(e_med)}")
        if warm:
            SHARED["remove_big"] = med

    @pytest.mark.benchmark(group=G_REMOVE_BIG)
    def test_remove_big_driver(self, benchmark, big, floor, tools):
        """On layers read through once (dentries and inodes cached)."""
        self._remove_big(benchmark, big, floor, tools, warm=True, prefix="bp")

    @pytest.mark.benchmark(group=G_REMOVE_BIG)
    def test_remove_big_driver_cold(self, benchmark, big, floor, tools):
        """On fresh snapshots nothing has read (nothing of them cached)."""
        self._remove_big(benchmark, big, floor, tools, warm=False, prefix="bc")

    @pytest.mark.benchmark(group=G_REMOVE_BIG)
    def test_remove_big_walk(self, benchmark, big, tools):
        """The original driver's remove: walk for nested subvolumes, then destroy."""
        ids = tools.Ids("bw")

        def setup():
            path = big.make(tools, ids(), nested=False)
            tools.settle(big.fd)
            return (path,), {}
        benchmark.pedantic(tools.walk_remove, setup=setup, rounds=BIG_ROUNDS, warmup_rounds=1)
        tools.settle(big.fd)
        tools.record(benchmark, "walk-based remove (as the original driver)", reference="Driver.remove",
                     reference_s=SHARED.get("remove_big"))

    @pytest.mark.benchmark(group=G_REMOVE_NESTED)
    def test_remove_nested_driver(self, benchmark, big, floor, tools):
        """Driver.remove of a warm 50,000-file layer holding 5 nested
        subvolumes (one inside another) vs the C floor's metadata-based
        remove of an identical layer, alternating round by round: each round
        makes one such layer for each, commits, lets the C floor remove its
        own (then commits and waits for the cleaner again), and times
        Driver.remove of the other."""
        d = big.driver
        ids = tools.Ids("bn")
        c: dict[str, list[int]] = {"remove": [], "find": [], "nested": []}

        def setup():
            theirs = big.make(tools, ids(), nested=True)
            ours = ids()
            big.make(tools, ours, nested=True)
            tools.settle(big.fd)
            for key, values in floor.remove([theirs]).items():
                c[key] += values
            tools.settle(big.fd)
            return (ours,), {}

        benchmark.pedantic(d.remove, setup=setup, rounds=BIG_ROUNDS, warmup_rounds=1)
        tools.settle(big.fd)
        assert set(c["nested"]) == {5}
        c_remove = tools.median(c["remove"][1:]) / 1e9
        c_find = tools.median(c["find"][1:]) / 1e9
        SHARED["remove_nested"] = tools.bench_median(benchmark)
        benchmark.extra_info["c_find_median_ns"] = round(c_find * 1e9)
        tools.also(benchmark, "C floor: tree search + destroy (alternating)", c_remove, samples=len(c["remove"]) - 1,
                   note=f"of which finding the 5 nested subvolumes: {tools.fmt_time(c_find)}")
        tools.record(benchmark, "Driver.remove (50,000 files, 5 nested, warm)", reference="C remove (find + destroy)",
                     reference_s=c_remove, target="remove_big_nested", btrfsx=True)

    @pytest.mark.benchmark(group=G_REMOVE_NESTED)
    def test_remove_nested_walk(self, benchmark, big, tools):
        ids = tools.Ids("bnw")

        def setup():
            path = big.make(tools, ids(), nested=True)
            tools.settle(big.fd)
            return (path,), {}
        benchmark.pedantic(tools.walk_remove, setup=setup, rounds=BIG_ROUNDS, warmup_rounds=1)
        tools.settle(big.fd)
        tools.record(benchmark, "walk-based remove (as the original driver)", reference="Driver.remove",
                     reference_s=SHARED.get("remove_nested"))

    # ------------------------------------------------------------ discovery only

    @pytest.mark.benchmark(group=G_NESTED)
    def test_walk(self, benchmark, nest, tools):
        """The original driver's way: walk the layer, lstat each directory (warm)."""
        found = benchmark.pedantic(tools.walk_nested, args=(nest,), rounds=WALK_ROUNDS, warmup_rounds=1)
        assert len(found) == 5
        SHARED["walk"] = tools.bench_median(benchmark)
        tools.record(benchmark, "os.walk + lstat each directory (original driver)")

    @pytest.mark.benchmark(group=G_NESTED)
    def test_nested_subvolumes(self, benchmark, nest, floor, tools):
        fd = _open(nest)
        try:
            found = benchmark(lambda: nested_subvolumes(fd, _ioctl.subvolume_id(fd)))
        finally:
            os.close(fd)
        assert len(found) == 5
        walk = SHARED.get("walk")
        if walk is None:  # test_walk deselected: time a few walks here
            tools.walk_nested(nest)
            walk = tools.median([tools.timed(tools.walk_nested, nest) for _ in range(WALK_ROUNDS)])
        c = floor.find(nest, FIND_N)
        assert c["nested"] == [5]
        c_find = tools.median(c["find"]) / 1e9
        med = tools.bench_median(benchmark)
        tools.also(benchmark, "C floor: INO_LOOKUP + TREE_SEARCH_V2 (cached fd)", c_find, samples=FIND_N)
        benchmark.extra_info["walk_speedup"] = round(walk / med, 1) if med else None
        tools.record(benchmark, "subvolume_id + nested_subvolumes (ROOT_REF search)",
                     reference="C INO_LOOKUP + TREE_SEARCH_V2", reference_s=c_find, target="ioctl_search",
                     btrfsx=True)
        tools.target(benchmark, "nested_vs_walk", walk / med if med else None,
                     f"walk {tools.fmt_time(walk)} / search {tools.fmt_time(med)}")


# ================================================================ quotas

QUOTA_OPTIONS = {"off": [], "simple": ["btrfsx.quota=simple"], "qgroup": ["btrfsx.quota=qgroup"]}
SIZED = CreateOpts(storage_opt={"size": "1G"})


class QuotaStore:
    """A driver on a fresh filesystem in one quota mode, with a 1,000-file
    base and a growing number of snapshot layers of it."""

    def __init__(self, mode: str, fs: Loopback, driver: Driver, fd: int, tools):
        self.mode, self.fs, self.driver, self.fd, self.tools = mode, fs, driver, fd, tools
        self.ids = tools.Ids("fill")
        self.count = 0   # snapshot layers of base that exist
        self.level = 0   # the largest fill_to() so far

    def fill_to(self, n: int) -> None:
        """At least ``n`` snapshot layers (the measurements add a few more);
        the store only grows, so levels must come in increasing order."""
        if n < self.level:
            pytest.skip(f"the store was already filled to {self.level} layers (> {n}): tests ran out of order")
        self.level = n
        while self.count < n:
            self.driver.create(self.ids(), "base")
            self.count += 1

    def create(self, layer_id: str, sized: bool) -> None:
        self.driver.create(layer_id, "base", SIZED if sized and self.mode != "off" else None)
        self.count += 1

    def remove(self, layer_id: str) -> None:
        self.driver.remove(layer_id)
        self.count -= 1


@pytest.fixture(scope="class")
def qstores(btrfs_available, tools):
    """A QuotaStore per quota mode, each on a filesystem of its own (quotas
    are filesystem-wide), all three at once so that the modes are measured
    side by side."""
    with contextlib.ExitStack() as stack:
        stores = {}
        for mode in QUOTA_OPTIONS:
            fs = stack.enter_context(tools.fresh_fs(size=2 << 30))
            driver = Driver(fs.mountpoint / "store", QUOTA_OPTIONS[mode])
            stack.callback(driver.cleanup)
            fd = _open(fs.mountpoint)
            stack.callback(os.close, fd)
            if mode != "off":
                # quotas on before anything exists (no rescan of old data)
                driver.create("quota-on", None, SIZED)
                driver.remove("quota-on")
            driver.create("base")
            tools.build_layer(driver.get("base"), BASE_FILES)
            tools.settle(fd)
            stores[mode] = QuotaStore(mode, fs, driver, fd, tools)
        yield stores


QUOTA_OPS = ("sized create", "snapshot", "remove sized", "remove unsized")
#: layers vary slowest (the stores only grow), then the operation, then the mode
QUOTA_CASES = [(layers, op, mode) for layers in QUOTA_LAYERS for op in QUOTA_OPS for mode in QUOTA_OPTIONS]


class _QuotaOp:
    """One round's operation on one store: a sized or plain snapshot of
    base, or the remove of a layer made beforehand."""

    def __init__(self, store: QuotaStore, op: str, ids, n: int):
        self.store, self.op, self.ids = store, op, ids
        self.sized = op in ("sized create", "remove sized")
        self.made: list[str] = []
        if op.startswith("remove"):
            self.pending = [ids() for _ in range(n)]
            for layer in self.pending:
                store.create(layer, sized=self.sized)
            self.pending.reverse()

    def args(self) -> tuple:
        return (self.pending.pop(),) if self.op.startswith("remove") else (self.ids(),)

    def __call__(self, layer: str) -> None:
        if self.op.startswith("remove"):
            self.store.remove(layer)
        else:
            self.store.create(layer, self.sized)
            self.made.append(layer)

    def undo(self) -> None:
        """Back to the level (untimed; the next test settles)."""
        while self.made:
            self.store.remove(self.made.pop())
        while getattr(self, "pending", None):
            self.store.remove(self.pending.pop())


class TestQuotas:
    """Sized create, snapshot and remove with simple quotas vs quotas off
    vs full qgroups, at 50, 200 and 500 snapshot layers sharing one base (a
    measurement adds up to ``rounds + 1`` layers to the level, and removes
    them afterwards).  With quotas off, "sized create" is the plain snapshot
    and "remove sized" the plain remove, since a size needs quotas.

    The modes run side by side, each on its own filesystem: the quotas-off
    benchmark first, then each quota mode with the same operation on the
    quotas-off store in every round (timed by hand; before the timed
    operation in even rounds, after it in odd ones), so the ratio of
    a mode to quotas off is of rounds alternating under the same
    conditions.  Each measurement starts committed, with the cleaner done
    (up to a minute: full qgroups make dropping a shared snapshot slow); its
    rounds then run back to back."""

    @pytest.mark.parametrize("layers,op,mode", QUOTA_CASES)
    def test_quota(self, benchmark, qstores, tools, layers, op, mode):
        qstore, off = qstores[mode], qstores["off"]
        rounds = QUOTA_ROUNDS[mode]
        qstore.fill_to(layers)
        tools.settle(qstore.fd, timeout=60)
        benchmark.group = f"quotas: {op} of a snapshot at {layers} layers"
        prefix = f"{op.replace(' ', '-')}-{layers}"
        ours = _QuotaOp(qstore, op, tools.Ids(prefix), rounds + 1)
        theirs = None
        off_times: list[float] = []
        if mode != "off":
            off.fill_to(layers)
            theirs = _QuotaOp(off, op, tools.Ids(prefix + "-alt"), rounds + 1)
            tools.settle(off.fd, timeout=60)
        tools.settle(qstore.fd, timeout=60)

        def setup():
            # no commit between rounds: these run back to back, as a builder's
            # burst of creates or removes does (a remove timed right after a
            # commit pays for starting the next transaction, tens of
            # microseconds, more with quotas on: not what is compared here)
            # the quotas-off operation before the timed one in even rounds,
            # after it in odd ones (neither always pays for the other's wake)
            if theirs is not None and turn[0] % 2 == 0:
                off_times.append(tools.timed(theirs, *theirs.args()))
            return ours.args(), {}

        def teardown(*_):
            if theirs is not None and turn[0] % 2 == 1:
                off_times.append(tools.timed(theirs, *theirs.args()))
            turn[0] += 1

        turn = [0]
        try:
            benchmark.pedantic(ours, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=1)
        finally:
            ours.undo()
            if theirs is not None:
                theirs.undo()
        sized = ours.sized and mode != "off"
        if op.startswith("remove"):
            label = f"Driver.remove ({'sized' if sized else 'unsized'} layer)"
        else:
            label = "Driver.create(id, base, size=1G)" if sized else "Driver.create(id, base)"
        note = ""
        if mode == "off" and ours.sized:
            note = ("quotas off cannot size a layer: this is the plain "
                    + ("remove" if op.startswith("remove") else "snapshot") + ", the baseline")
        med = tools.bench_median(benchmark)
        if mode == "off":
            SHARED[("quota-off", op, layers)] = med
            tools.record(benchmark, f"quotas off: {label}", note=note, btrfsx=True)
            return
        alt = tools.median(off_times[1:]) if len(off_times) > 1 else None
        tools.also(benchmark, f"quotas off, alternating with {mode}: "
                   + ("Driver.remove (unsized layer)" if op.startswith("remove") else "Driver.create(id, base)"),
                   alt, samples=len(off_times) - 1)
        tid = f"quota_simple:{op}:{layers}"
        tools.record(benchmark, f"{mode}: {label}", reference="quotas off (alternating round by round)",
                     reference_s=alt,
                     target=tid if mode == "simple" and tid in tools.bench_targets.TARGETS else None)


# ================================================================ threads

class Workers:
    """``n`` long-lived threads running ``job(k, round)`` together, once per
    :meth:`run` (the staging directory of each is made in the warm-up)."""

    TIMEOUT = 300

    def __init__(self, n: int, job):
        self.n, self.job = n, job
        self.start = threading.Barrier(n + 1)
        self.done = threading.Barrier(n + 1)
        self.round = 0
        self.errors: list[BaseException] = []
        self.stopping = False
        self.threads = [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in range(n)]
        for t in self.threads:
            t.start()

    def _loop(self, k: int) -> None:
        while True:
            try:
                self.start.wait(self.TIMEOUT)
            except threading.BrokenBarrierError:
                return
            if self.stopping:
                return
            try:
                self.job(k, self.round)
            except BaseException as e:  # reported by run()
                self.errors.append(e)
            try:
                self.done.wait(self.TIMEOUT)
            except threading.BrokenBarrierError:
                return

    def run(self) -> None:
        self.start.wait(self.TIMEOUT)
        self.done.wait(self.TIMEOUT)
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        self.stopping = True
        try:
            self.start.wait(5)
        except threading.BrokenBarrierError:
            pass
        for t in self.threads:
            t.join(5)


def _fcntl_job(tools):
    def job(ctx, k, rnd):
        src = _open(ctx["base"])
        dst = _open(ctx["dirs"][k])
        try:
            for i in range(THREAD_N):
                tools.PyIoctl.snapshot(src, dst, f"r{rnd}-{i}")
                with ctx["lock"]:
                    ctx["made"].append((k, f"r{rnd}-{i}"))
        finally:
            os.close(src)
            os.close(dst)
    return job


def _btrfsutil_job(btrfsutil):
    def job(ctx, k, rnd):
        src = os.fspath(ctx["base"])
        for i in range(THREAD_N):
            btrfsutil.create_snapshot(src, os.path.join(ctx["dirs"][k], f"r{rnd}-{i}"))
            with ctx["lock"]:
                ctx["made"].append((k, f"r{rnd}-{i}"))
    return job


def _driver_job(ctx, k, rnd):
    d = ctx["driver"]
    for i in range(THREAD_N):
        layer = f"r{rnd}-t{k}-{i}"
        d.create(layer, "base")
        with ctx["lock"]:
            ctx["made"].append((k, layer))


def _cleanup(ctx):
    d = ctx.get("driver")
    while ctx["made"]:
        k, name = ctx["made"].pop()
        if d is not None:
            d.remove(name)
            continue
        fd = _open(ctx["dirs"][k])
        try:
            _ioctl.destroy_subvolume(fd, name)
        finally:
            os.close(fd)


THREAD_CONTENDERS = {   # the driver last: its test sets the speed-ups of the others beside its own
    "c": "C floor",
    "fcntl": "fcntl.ioctl (pure Python)",
    "btrfsutil": "btrfsutil.create_snapshot",
    "driver": "Driver",
}


@pytest.mark.parametrize("contender", list(THREAD_CONTENDERS))
@pytest.mark.benchmark(group=G_THREADS)
def test_threads(benchmark, btrfs_available, floor, tools, request, contender):
    """THREAD_N snapshots of a 1,000-file layer from each of T threads, T in
    THREADS, for each contender on a fresh filesystem of its own: the C
    floor's threads, threads sharing one Driver, threads calling
    fcntl.ioctl, threads calling libbtrfsutil.  The thread counts alternate
    round by round (a round of 1, of 2, then the timed round of 4 threads,
    each after a commit with the cleaner done), so the speed-up of each
    contender is measured under the same conditions; speed-up = throughput
    at T over throughput at 1 = T * wall(1) / wall(T)."""
    label = THREAD_CONTENDERS[contender]
    top = max(THREADS)
    with tools.fresh_fs() as fs:
        fd = _open(fs.mountpoint)
        pools: dict[int, Workers] = {}
        try:
            ctx = {"made": [], "lock": threading.Lock(), "dirs": []}
            if contender == "driver":
                ctx["driver"] = Driver(fs.mountpoint / "store")
                ctx["driver"].create("base")
                ctx["base"] = Path(ctx["driver"].get("base"))
            else:
                _ioctl.create_subvolume(fd, "base")
                ctx["base"] = fs.mountpoint / "base"
            tools.build_layer(ctx["base"], BASE_FILES)
            for k in range(top):
                (fs.mountpoint / f"t{k}").mkdir()
                ctx["dirs"].append(fs.mountpoint / f"t{k}")
            (fs.mountpoint / "tb").mkdir()
            walls: dict[int, list[float]] = {t: [] for t in THREADS}
            rnd = [0]

            if contender == "c":
                def run(t):
                    rnd[0] += 1
                    return floor.threads(ctx["base"], fs.mountpoint / "tb", t, THREAD_N) / 1e9
            else:
                if contender == "driver":
                    job = _driver_job
                elif contender == "fcntl":
                    job = _fcntl_job(tools)
                else:
                    job = _btrfsutil_job(request.getfixturevalue("btrfsutil"))
                for t in THREADS:
                    pools[t] = Workers(t, lambda k, r, job=job: job(ctx, k, r))

                def run(t):
                    rnd[0] += 1
                    pools[t].round = rnd[0]
                    wall = tools.timed(pools[t].run)
                    return wall

            def timed_top():
                wall = run(top)
                walls[top].append(wall)

            def setup():
                for t in THREADS:
                    if t == top:
                        continue
                    _cleanup(ctx)
                    tools.settle(fd)
                    walls[t].append(run(t))
                _cleanup(ctx)
                tools.settle(fd)

            if contender == "c":
                # the floor times itself (a process per round): the benchmark
                # times the process too, so the round's wall is taken from it
                benchmark.pedantic(timed_top, setup=setup, rounds=THREAD_ROUNDS, warmup_rounds=1)
            else:
                benchmark.pedantic(lambda: walls[top].append(run(top)), setup=setup, rounds=THREAD_ROUNDS,
                                   warmup_rounds=1)
            _cleanup(ctx)
        finally:
            for pool in pools.values():
                pool.stop()
            os.close(fd)
            if "driver" in ctx:
                ctx["driver"].cleanup()
    med = {t: tools.median(w[1:]) for t, w in walls.items()}   # the first of each is the warm-up's
    ups = {t: t * med[1] / med[t] for t in THREADS}
    SHARED[("threads", contender)] = ups
    for t in THREADS:
        if t == top and contender != "c":
            continue  # the benchmark's own row
        tools.also(benchmark, f"{label}, {t} thread(s) x {THREAD_N} snapshots"
                   + (" (the floor's own wall time)" if t == top else ""),
                   med[t], samples=len(walls[t]) - 1, note=f"speed-up over 1 thread {ups[t]:.2f}x" if t > 1 else "")
    benchmark.extra_info["speedups"] = {str(t): round(v, 3) for t, v in ups.items()}
    benchmark.extra_info.setdefault("notes", []).append(
        f"{label}: speed-up (throughput over 1 thread) "
        + ", ".join(f"{t} threads {ups[t]:.2f}x" for t in THREADS if t > 1))
    tools.record(benchmark, f"{label}, {top} threads x {THREAD_N} snapshots"
                 + (f" (speed-up over 1 thread {ups[top]:.2f}x)" if contender != "c"
                    else " (timer includes the process start)"),
                 btrfsx=contender == "driver",
                 note=("C: the benchmark's timer includes starting the floor process; the wall times listed are "
                       "the floor's own") if contender == "c" else "")
    c_ups = SHARED.get(("threads", "c"))
    if contender == "driver":
        # the driver runs last: every speed-up of the run side by side
        others = {THREAD_CONTENDERS[c]: SHARED[("threads", c)] for c in THREAD_CONTENDERS
                  if c != "driver" and ("threads", c) in SHARED}
        benchmark.extra_info.setdefault("notes", []).append(
            f"speed-ups of {top} threads over 1, side by side: Driver {ups[top]:.2f}x; "
            + "; ".join(f"{name} {v[top]:.2f}x" for name, v in others.items()))
        if c_ups:
            tools.target(benchmark, "threads_speedup", ups[top] / c_ups[top],
                         f"speed-up of {top} threads over 1: Driver {ups[top]:.2f}x, C {c_ups[top]:.2f}x"
                         + "".join(f", {name} {v[top]:.2f}x" for name, v in others.items() if name != "C floor"))
