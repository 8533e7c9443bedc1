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
