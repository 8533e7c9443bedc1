"""Layers of 50,000 files: removing one (with and without nested
subvolumes, warm and cold) and finding what is nested in it, against the C
floor and the original's walk, in the same run.

(How every group here is measured, settled and compared: the docstring of
``test_single_ops_bench.py``.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from btrfsx import Driver, _ioctl
from btrfsx.loopback import Loopback
from btrfsx.subvolume import nested_subvolumes

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

BIG_ROUNDS = 10         # 50,000-file layers removed per contender
BIG_LAYER_FILES = 50_000
BIG_NESTED = ("t000/d03/n1", "t005/d10/n2", "t010/n3", "t010/n3/x/n4", "t019/d24/n5")
WALK_ROUNDS = 7
FIND_N = 2_000
G_REMOVE_BIG = "remove a 50,000-file layer"
G_REMOVE_NESTED = "remove a 50,000-file layer holding 5 nested subvolumes"
G_NESTED = "find nested subvolumes in a 50,000-file layer"

#: Medians shared between the tests of a group (seconds).
SHARED: dict = {}


def _open(path) -> int:
    return os.open(path, _DIR_FLAGS)


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
