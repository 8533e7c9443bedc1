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

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from btrfsx import CreateOpts, Driver, _ioctl
from btrfsx.loopback import Loopback
from btrfsx.subvolume import nested_subvolumes

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

CREATE_N = 200          # empty creates / removes per contender
SNAPSHOT_N = 60         # snapshots per contender (they accumulate; the C floor's alternate)
NESTED_REMOVE_N = 40    # layers with 5 nested subvolumes removed per contender
BIG_LAYER_FILES = 50_000
BASE_FILES = 1_000
WALK_ROUNDS = 7
QUOTA_LAYERS = (50, 500)
QUOTA_ROUNDS = {"off": 20, "simple": 20, "qgroup": 5}
THREAD_N = 50           # snapshots per thread per round
THREAD_ROUNDS = 7

G_CREATE = "create empty layer"
G_SNAPSHOT = "snapshot 1,000-file layer"
G_REMOVE = "remove"
G_NESTED = "find nested subvolumes in a 50,000-file layer"
G_THREADS = "threads: snapshots of a 1,000-file layer"

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
            floor_dir = fs.mountpoint / "floor"
            floor_dir.mkdir()
            plain_dir = fs.mountpoint / "plain"
            plain_dir.mkdir()
            tools.settle(fd)
            yield Bench(fs, driver, fd, floor_dir, plain_dir, "base")
        finally:
            os.close(fd)
            driver.cleanup()


class TestSingleOperations:
    # ------------------------------------------------------------ create

    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_driver(self, benchmark, bench, floor, tools):
        """Driver.create(id) of an empty layer, fresh ids, removed afterwards."""
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
        tools.record(benchmark, "Driver.create(id)", reference="C SUBVOL_CREATE", reference_s=c_create, limit=2.0)

    @pytest.mark.benchmark(group=G_CREATE)
    def test_create_ioctl(self, benchmark, bench, floor, tools):
        """The bare compiled ioctl, the same way (accumulating, destroyed afterwards)."""
        fd = _open(bench.plain_dir)
        names = tools.Ids("s")
        try:
            benchmark.pedantic(lambda: _ioctl.create_subvolume(fd, names()), rounds=CREATE_N, warmup_rounds=5)
            for i in range(names.n):
                _ioctl.destroy_subvolume(fd, f"s-{i}")
        finally:
            os.close(fd)
        tools.settle(bench.fd)
        c_create = SHARED.get("c_create") or tools.median(floor.create(bench.floor_dir, CREATE_N)["create"]) / 1e9
        tools.record(benchmark, "_ioctl.create_subvolume", reference="C SUBVOL_CREATE", reference_s=c_create)

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
        tools.record(benchmark, "Driver.create + Driver.remove", reference="C create + destroy medians",
                     reference_s=SHARED["c_create"] + SHARED["c_destroy"], limit=2.0)

    # ------------------------------------------------------------ remove

    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_driver(self, benchmark, bench, floor, tools):
        """Driver.remove of empty layers made beforehand (untimed)."""
        d = bench.driver
        ids = [f"rm-{i}" for i in range(CREATE_N + 5)]
        for layer in ids:  # then removed at once, as the C floor destroys what it just made
            d.create(layer)
        pending = iter(ids)
        benchmark.pedantic(d.remove, setup=lambda: ((next(pending),), {}), rounds=CREATE_N, warmup_rounds=5)
        tools.settle(bench.fd)
        c_destroy = SHARED.get("c_destroy") or tools.median(floor.create(bench.floor_dir, CREATE_N)["destroy"]) / 1e9
        SHARED["c_destroy"] = c_destroy
        tools.record(benchmark, "Driver.remove (empty layer)", reference="C SNAP_DESTROY",
                     reference_s=c_destroy, limit=2.0)

    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_ioctl(self, benchmark, bench, floor, tools):
        fd = _open(bench.plain_dir)
        names = [f"d-{i}" for i in range(CREATE_N + 5)]
        try:
            for name in names:
                _ioctl.create_subvolume(fd, name)
            pending = iter(names)
            benchmark.pedantic(lambda name: _ioctl.destroy_subvolume(fd, name),
                               setup=lambda: ((next(pending),), {}), rounds=CREATE_N, warmup_rounds=5)
        finally:
            os.close(fd)
        tools.settle(bench.fd)
        c_destroy = SHARED.get("c_destroy") or tools.median(floor.create(bench.floor_dir, CREATE_N)["destroy"]) / 1e9
        tools.record(benchmark, "_ioctl.destroy_subvolume", reference="C SNAP_DESTROY", reference_s=c_destroy)

    @pytest.mark.benchmark(group=G_REMOVE)
    def test_remove_nested_driver(self, benchmark, bench, floor, tools):
        """Driver.remove of a layer holding 5 nested subvolumes (one inside
        another) vs the C floor's metadata-based remove of the same shape,
        alternating round by round: each round makes one such layer for each,
        commits, lets the C floor remove its own (then commits and waits for
        the cleaner again), and times Driver.remove of the other."""
        d = bench.driver
        ids = tools.Ids("nest")
        c: dict[str, list[int]] = {"remove": [], "find": [], "nested": []}

        def make():
            layer = ids()
            d.create(layer)
            tools.add_nested(d.get(layer))
            return layer

        def setup():
            theirs, ours = make(), make()
            tools.settle(bench.fd)
            for key, values in floor.remove([d.get(theirs)]).items():
                c[key] += values
            tools.settle(bench.fd)
            return (ours,), {}

        benchmark.pedantic(d.remove, setup=setup, rounds=NESTED_REMOVE_N, warmup_rounds=2)
        tools.settle(bench.fd)
        assert set(c["nested"]) == {5}
        c_remove = tools.median(c["remove"][2:]) / 1e9
        c_find = tools.median(c["find"][2:]) / 1e9
        benchmark.extra_info["c_find_median_ns"] = round(c_find * 1e9)
        tools.record(benchmark, "Driver.remove (5 nested subvolumes)", reference="C remove (find + destroy)",
                     reference_s=c_remove, limit=1.25,
                     note=f"C floor: finding the 5 nested subvolumes took {tools.fmt_time(c_find)} of "
                          f"{tools.fmt_time(c_remove)}")

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

    @pytest.mark.benchmark(group=G_SNAPSHOT)
    def test_snapshot_driver(self, benchmark, bench, floor, tools):
        """Driver.create(id, parent) of the 1,000-file layer (the layers
        accumulate, removed at the end)."""
        d = bench.driver
        ids = tools.Ids("snap")
        c_snap = self._interleaved_snapshots(benchmark, bench, floor, tools, lambda: d.create(ids(), bench.base))
        for i in range(ids.n):
            d.remove(f"snap-{i}")
        tools.settle(bench.fd)
        tools.record(benchmark, "Driver.create(id, parent)", reference="C SNAP_CREATE_V2 (alternating)",
                     reference_s=c_snap, limit=1.10)

    @pytest.mark.benchmark(group=G_SNAPSHOT)
    def test_snapshot_ioctl(self, benchmark, bench, floor, tools):
        src_fd = _open(bench.layer(bench.base))
        dst = _open(bench.plain_dir)
        names = tools.Ids("snap")
        try:
            c_snap = self._interleaved_snapshots(benchmark, bench, floor, tools,
                                                 lambda: _ioctl.snapshot(src_fd, dst, names()))
            for i in range(names.n):
                _ioctl.destroy_subvolume(dst, f"snap-{i}")
        finally:
            os.close(src_fd)
            os.close(dst)
        tools.settle(bench.fd)
        tools.record(benchmark, "_ioctl.snapshot", reference="C SNAP_CREATE_V2 (alternating)", reference_s=c_snap)


# ================================================================ nested discovery

@pytest.fixture(scope="class")
def big_layer(btrfs_available, tools):
    """A fresh filesystem holding a 50,000-file layer with 5 nested subvolumes."""
    with tools.fresh_fs() as fs:
        driver = Driver(fs.mountpoint / "store")
        try:
            driver.create("big")
            path = driver.get("big")
            tools.build_layer(path, BIG_LAYER_FILES)
            # among the files, one of them inside another
            tools.add_nested(path, ("t000/d03/n1", "t005/d10/n2", "t010/n3", "t010/n3/x/n4", "t019/d24/n5"))
            tools.settle(fs.mountpoint)
            yield path
        finally:
            driver.cleanup()


class TestNestedDiscovery:
    @pytest.mark.benchmark(group=G_NESTED)
    def test_walk(self, benchmark, big_layer, tools):
        """The original driver's way: walk the layer, lstat each directory
        (cache warm: one warm-up round)."""
        found = benchmark.pedantic(tools.walk_nested, args=(big_layer,), rounds=WALK_ROUNDS, warmup_rounds=1)
        assert len(found) == 5
        SHARED["walk"] = tools.bench_median(benchmark)
        tools.record(benchmark, "os.walk + lstat each directory")

    @pytest.mark.benchmark(group=G_NESTED)
    def test_nested_subvolumes(self, benchmark, big_layer, tools):
        fd = _open(big_layer)
        try:
            subvolid = _ioctl.subvolume_id(fd)
            found = benchmark(nested_subvolumes, fd, subvolid)
        finally:
            os.close(fd)
        assert len(found) == 5
        walk = SHARED.get("walk")
        if walk is None:  # test_walk deselected: time a few walks here
            import time
            tools.walk_nested(big_layer)
            runs = []
            for _ in range(WALK_ROUNDS):
                t0 = time.perf_counter()
                tools.walk_nested(big_layer)
                runs.append(time.perf_counter() - t0)
            walk = tools.median(runs)
        med = tools.bench_median(benchmark)
        tools.record(benchmark, "nested_subvolumes (ROOT_REF search)", reference="os.walk (speed-up)",
                     reference_s=walk, value=walk / med if med else None, limit=20.0, higher_is_better=True)


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


@pytest.fixture(scope="class", params=list(QUOTA_OPTIONS))
def qstore(request, btrfs_available, tools):
    """A QuotaStore per quota mode, on a filesystem of its own (quotas are
    filesystem-wide); one at a time."""
    mode = request.param
    with tools.fresh_fs(size=2 << 30) as fs:
        driver = Driver(fs.mountpoint / "store", QUOTA_OPTIONS[mode])
        fd = _open(fs.mountpoint)
        try:
            if mode != "off":
                # quotas on before anything exists (no rescan of old data)
                driver.create("quota-on", None, SIZED)
                driver.remove("quota-on")
            driver.create("base")
            tools.build_layer(driver.get("base"), BASE_FILES)
            tools.settle(fd)
            yield QuotaStore(mode, fs, driver, fd, tools)
        finally:
            os.close(fd)
            driver.cleanup()


class TestQuotas:
    """Sized create, snapshot and remove with simple quotas vs quotas off
    vs full qgroups, at 50 and 500 snapshot layers sharing one base (a
    measurement adds up to ``rounds + 1`` layers to the level, and removes
    them afterwards).  The ratio is to quotas off; there, "sized create" is
    the plain snapshot and "remove sized" the plain remove, since a size
    needs quotas.  Each measurement starts committed, with the cleaner done
    (up to a minute: full qgroups make dropping a shared snapshot slow)."""

    # layers vary slowest within a mode: the store only grows
    @pytest.mark.parametrize("op", ["sized create", "snapshot", "remove sized", "remove unsized"])
    @pytest.mark.parametrize("layers", QUOTA_LAYERS)
    def test_quota(self, benchmark, qstore, tools, op, layers):
        mode = qstore.mode
        rounds = QUOTA_ROUNDS[mode]
        qstore.fill_to(layers)
        tools.settle(qstore.fd, timeout=60)
        benchmark.group = f"quotas: {op} of a snapshot at {layers} layers"
        ids = tools.Ids(f"{op.replace(' ', '-')}-{layers}")
        note = ""
        if op.startswith("remove"):
            sized = op == "remove sized"
            made = [ids() for _ in range(rounds + 1)]
            for layer in made:
                qstore.create(layer, sized=sized)
            tools.settle(qstore.fd, timeout=60)
            pending = iter(made)
            benchmark.pedantic(qstore.remove, setup=lambda: ((next(pending),), {}), rounds=rounds, warmup_rounds=1)
            if sized and mode == "off":
                note = "quotas off cannot size a layer: this is the plain remove, the baseline"
            label = f"Driver.remove ({'sized' if sized and mode != 'off' else 'unsized'} layer)"
        else:
            sized = op == "sized create"
            benchmark.pedantic(lambda: qstore.create(ids(), sized), rounds=rounds, warmup_rounds=1)
            for i in range(ids.n):  # back to the level (untimed; the next test settles)
                qstore.remove(f"{ids.prefix}-{i}")
            if sized and mode == "off":
                note = "quotas off cannot size a layer: this is the plain snapshot, the baseline"
            label = ("Driver.create(id, base, size=1G)" if sized and mode != "off"
                     else "Driver.create(id, base)")
        key = (op, layers)
        med = tools.bench_median(benchmark)
        if mode == "off":
            SHARED[("quota-off",) + key] = med
            tools.record(benchmark, f"quotas off: {label}", note=note)
        else:
            off = SHARED.get(("quota-off",) + key)
            tools.record(benchmark, f"{mode}: {label}", reference="quotas off" if off else "",
                         reference_s=off, limit=1.25 if mode == "simple" else None)


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


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.benchmark(group=G_THREADS)
def test_threads(benchmark, btrfs_available, floor, tools, threads):
    """THREAD_N snapshots per thread through one shared Driver, vs the C floor's
    threads, each on a fresh filesystem; after T=4, the speed-ups side by side."""
    # ---- the driver
    with tools.fresh_fs() as fs:
        driver = Driver(fs.mountpoint / "store")
        fd = _open(fs.mountpoint)
        workers = None
        try:
            driver.create("base")
            tools.build_layer(driver.get("base"), BASE_FILES)
            made: list[str] = []
            lock = threading.Lock()

            def job(k, rnd):
                for i in range(THREAD_N):
                    layer = f"r{rnd}-t{k}-{i}"
                    driver.create(layer, "base")
                    with lock:
                        made.append(layer)

            workers = Workers(threads, job)

            def setup():
                while made:
                    driver.remove(made.pop())
                tools.settle(fd)
                workers.round += 1

            benchmark.pedantic(workers.run, setup=setup, rounds=THREAD_ROUNDS, warmup_rounds=1)
        finally:
            if workers is not None:
                workers.stop()
            os.close(fd)
            driver.cleanup()
    # ---- the C floor, on its own fresh filesystem
    with tools.fresh_fs() as fs:
        fd = _open(fs.mountpoint)
        try:
            _ioctl.create_subvolume(fd, "base")
            tools.build_layer(fs.mountpoint / "base", BASE_FILES)
            (fs.mountpoint / "tb").mkdir()
            walls = []
            for _ in range(THREAD_ROUNDS + 1):  # the first is a warm-up
                tools.settle(fd)
                walls.append(floor.threads(fs.mountpoint / "base", fs.mountpoint / "tb", threads, THREAD_N))
        finally:
            os.close(fd)
    c_wall = tools.median(walls[1:]) / 1e9
    med = tools.bench_median(benchmark)
    SHARED[("threads", threads)] = (med, c_wall)
    tools.record(benchmark, f"Driver, {threads} thread(s) x {THREAD_N} snapshots",
                 reference=f"C floor, {threads} thread(s)", reference_s=c_wall)
    if threads != 1 and ("threads", 1) in SHARED and med:
        d1, c1 = SHARED[("threads", 1)]
        # throughput ratio: (T*N / wall_T) / (N / wall_1)
        d_speedup = threads * d1 / med
        c_speedup = threads * c1 / c_wall
        benchmark.extra_info.update(driver_speedup=round(d_speedup, 3), c_speedup=round(c_speedup, 3))
        tools.record(None, f"speed-up {threads} threads over 1: Driver {d_speedup:.2f}x, C {c_speedup:.2f}x",
                     reference="C speed-up", value=d_speedup / c_speedup, limit=0.9, higher_is_better=True,
                     group=G_THREADS)
