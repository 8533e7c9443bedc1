"""Native changes (issue #8) against the walk, in the same run.

A layer of 10,000 or 100,000 small files (``tNNN/dNN/fNNNN``, 50 to a
directory) is snapshotted and 10, 100 or 1,000 of the snapshot's files are
rewritten, spread over the whole layer (the worst case for the native path:
every change in a metadata leaf of its own).  ``changes`` is then timed by
both paths: ``native_changes`` (the tree search, what ``Driver.changes``
does for a snapshot) and ``changes`` (the walk of both trees, what
containers/storage does).  The native path must be at least 100x faster at
10 changes in 100,000 files, and grow with the changes, not the layer.

Both run warm (the walk's stat calls hit the inode cache; a cold walk is
several times slower still).  One more layer has every file read after the
snapshot, as a build does: relatime rewrites each file's inode item on its
first read after a change, and the native path must tell those from real
changes (by the other tree's item).  Each native round includes its sync, which
costs a commit only when something is dirty.  The walk of the 100,000-file
layer is timed at 10 changes only (a few seconds a round).
"""

from __future__ import annotations

import os
import time

import pytest

from btrfsx import Driver
from btrfsx.archive import changes as walk_changes
from btrfsx.archive.native import native_changes

pytestmark = pytest.mark.btrfs

SIZES = (10_000, 100_000)
CHANGES = (10, 100, 1000)
GROUP = "changes of a snapshot: native vs walk"


@pytest.fixture(scope="module")
def store(btrfs_available, tools):
    """A driver on a fresh filesystem with a base layer of each size."""
    with tools.fresh_fs(size=8 << 30) as fs:
        d = Driver(fs.mountpoint / "home")
        try:
            for n in SIZES:
                d.create(f"base{n}")
                tools.build_layer(d.get(f"base{n}"), n)
            tools.settle(fs.mountpoint)
            yield d
        finally:
            d.cleanup()


def _changed(d: Driver, n: int, k: int) -> str:
    """Layer ``c{n}-{k}``: a snapshot of base{n} with k files rewritten, spread evenly."""
    layer = f"c{n}-{k}"
    if not d.exists(layer):
        base = d.get(f"base{n}")
        # listed in the base, before the snapshot: reading the snapshot's
        # directories would rewrite their inode items (atime), which the
        # native path sees and then has to rule out one by one
        paths = sorted(os.path.relpath(os.path.join(dp, f), base) for dp, _, files in os.walk(base) for f in files)
        d.create(layer, f"base{n}")
        root = d.get(layer)
        for path in paths[:: len(paths) // k][:k]:
            with open(os.path.join(root, path), "ab") as f:
                f.write(b"# changed\n")
    return layer


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("k", CHANGES)
@pytest.mark.parametrize("n", SIZES)
def test_native(benchmark, store, tools, n, k):
    d = store
    layer = _changed(d, n, k)
    found = benchmark.pedantic(native_changes, args=(d.get(layer), d.get(f"base{n}")), rounds=7, iterations=1,
                               warmup_rounds=1)
    # k files and the directories holding them
    assert sum(1 for c in found if c.path.rsplit("/", 1)[-1].startswith("f")) == k
    benchmark.extra_info.update(layer_files=n, changed_files=k, found=len(found))
    tools.record(benchmark, f"native, {k} changes in {n:,} files", btrfsx=True)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("k", CHANGES)
@pytest.mark.parametrize("n", SIZES)
def test_walk(benchmark, store, tools, n, k):
    if n == 100_000 and k != 10:
        pytest.skip("the walk of 100,000 files is timed at 10 changes only (its cost does not depend on them)")
    d = store
    layer = _changed(d, n, k)
    rounds = 3 if n == 100_000 else 5
    found = benchmark.pedantic(walk_changes, args=(d.get(layer), d.get(f"base{n}")), rounds=rounds, iterations=1,
                               warmup_rounds=1)
    assert found == native_changes(d.get(layer), d.get(f"base{n}"))
    benchmark.extra_info.update(layer_files=n, changed_files=k, found=len(found))
    walk = tools.bench_median(benchmark)
    native = tools.median([tools.timed(native_changes, d.get(layer), d.get(f"base{n}")) for _ in range(7)])
    speedup = walk / native if walk and native else None
    tools.also(benchmark, f"native, {k} changes in {n:,} files (timed beside)", native)
    tools.record(benchmark, f"walk, {k} changes in {n:,} files", reference="native", reference_s=native,
                 value=speedup, note="how many times slower than native")
    if n == 100_000 and k == 10:
        tools.target(benchmark, "changes_native_100k", speedup,
                     f"walk {tools.fmt_time(walk)}, native {tools.fmt_time(native)}")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("contender", ["native", "walk"])
def test_after_every_file_was_read(benchmark, store, tools, contender):
    """10 changes in 10,000 files, every file of the snapshot read first."""
    d = store
    layer = "read-10000-10"
    if not d.exists(layer):
        base = d.get("base10000")
        paths = sorted(os.path.relpath(os.path.join(dp, f), base) for dp, _, files in os.walk(base) for f in files)
        d.create(layer, "base10000")
        root = d.get(layer)
        for path in paths:
            with open(os.path.join(root, path), "rb") as f:
                f.read()
        for path in paths[:: len(paths) // 10][:10]:
            with open(os.path.join(root, path), "ab") as f:
                f.write(b"# changed\n")
    fn = native_changes if contender == "native" else walk_changes
    found = benchmark.pedantic(fn, args=(d.get(layer), d.get("base10000")), rounds=5, iterations=1,
                               warmup_rounds=1)
    assert sum(1 for c in found if c.path.rsplit("/", 1)[-1].startswith("f")) == 10
    benchmark.extra_info.update(layer_files=10_000, changed_files=10, every_file_read=True)
    tools.record(benchmark, f"{contender}, 10 changes in 10,000 files, every file read since the snapshot")


# ---- issue #15 (4): native changes in every setup
#
# The shape of the independent check: 100 directories of 1,000 files of 32
# bytes, the base made by Driver.create and written through get(), the child
# snapshotted by Driver.create(child, base), 4 files modified, 3 added and 3
# deleted (each in a directory of its own), os.sync(); then Driver.changes
# with btrfsx.changes=native and with btrfsx.changes=naive, rounds
# alternating (the walk runs just before each native round, so the native
# path finds whatever the walk left behind).  The setups:
#
# - "one transaction": the snapshot taken before any commit of the base's files;
# - "chain": the base is itself a child (base -> mid -> child, changes against mid);
# - "cold": every cache dropped before each round of either path;
# - "many directories": every directory of both trees read since the
#   snapshot (as `ls -R` or a build would: relatime rewrites their inode
#   items on each side), changes spread over the whole layer.

SETUPS = ("one transaction", "chain", "cold", "many directories")
SETUP_GROUP = "changes in every setup: native vs walk, alternating (100 x 1,000 files, 10 changes)"
SETUP_ROUNDS = 3
GRID_DIRS, GRID_FILES = 100, 1000


def _grid(root: str) -> None:
    for i in range(GRID_DIRS):
        os.mkdir(f"{root}/d{i:03d}")
        for j in range(GRID_FILES):
            with open(f"{root}/d{i:03d}/f{j:04d}", "wb") as f:
                f.write(b"x" * 32)


def _ten_changes(root: str, dirs: list[int]) -> None:
    for k in range(4):
        with open(f"{root}/d{dirs[k]:03d}/f{k:04d}", "ab") as f:
            f.write(b"changed\n")
    for k in range(3):
        with open(f"{root}/d{dirs[4 + k]:03d}/new{k}", "wb") as f:
            f.write(b"y" * 32)
    for k in range(3):
        os.unlink(f"{root}/d{dirs[7 + k]:03d}/f{k + 500:04d}")


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.fixture(scope="module")
def setups(btrfs_available, tools):
    """(native driver, naive driver, {setup: (child, base)}) on a fresh filesystem."""
    with tools.fresh_fs(size=8 << 30) as fs:
        home = fs.mountpoint / "home"
        native = Driver(home, options=["btrfsx.changes=native"])
        naive = Driver(home, options=["btrfsx.changes=naive"])
        try:
            pairs = {}
            # one transaction (and cold): written through get(), snapshotted before any commit
            native.create("g1")
            _grid(native.get("g1"))
            native.put("g1")
            native.create("c1", "g1")
            _ten_changes(native.get("c1"), list(range(10)))
            pairs["one transaction"] = pairs["cold"] = ("c1", "g1")
            # chain: g2 -> mid -> c2
            native.create("g2")
            _grid(native.get("g2"))
            native.create("mid", "g2")
            with open(native.get("mid") + "/d050/in-mid", "wb") as f:
                f.write(b"m")
            native.create("c2", "mid")
            _ten_changes(native.get("c2"), list(range(10)))
            pairs["chain"] = ("c2", "mid")
            # many directories: changes spread, every directory of both trees read
            native.create("g3")
            _grid(native.get("g3"))
            native.create("c3", "g3")
            _ten_changes(native.get("c3"), list(range(5, 100, 10)))
            for layer in ("g3", "c3"):
                root = native.get(layer)
                for i in range(GRID_DIRS):
                    os.listdir(f"{root}/d{i:03d}")
            pairs["many directories"] = ("c3", "g3")
            os.sync()
            tools.settle(fs.mountpoint)
            yield native, naive, pairs
        finally:
            naive.cleanup()
            native.cleanup()


@pytest.mark.benchmark(group=SETUP_GROUP)
@pytest.mark.parametrize("setup", SETUPS)
def test_setup(benchmark, setups, tools, setup):
    native, naive, pairs = setups
    child, base = pairs[setup]
    cold = setup == "cold"
    walks: list[float] = []
    found: dict = {}

    def walk_first():
        # the walk's round, just before the native one (the independent check's alternation)
        if cold:
            _drop_caches()
        t0 = time.perf_counter()
        found["walk"] = naive.changes(child, base)
        walks.append(time.perf_counter() - t0)
        if cold:
            _drop_caches()

    found["native"] = benchmark.pedantic(native.changes, args=(child, base), setup=walk_first,
                                         rounds=SETUP_ROUNDS, iterations=1)
    assert found["native"] == found["walk"]
    assert len(found["native"]) == 20
    walk = tools.median(walks)
    nat = tools.bench_median(benchmark)
    speedup = walk / nat if walk and nat else None
    benchmark.extra_info.update(setup=setup, layer_files=GRID_DIRS * GRID_FILES, changed_files=10,
                                walk_rounds_s=[round(w, 4) for w in walks])
    tools.record(benchmark, f"native, {setup}", btrfsx=True)
    tools.also(benchmark, f"walk, {setup} (alternating)", walk, samples=len(walks))
    tools.target(benchmark, f"changes_native_setup:{setup}", speedup,
                 f"walk {tools.fmt_time(walk)}, native {tools.fmt_time(nat)}, medians of {SETUP_ROUNDS}")
