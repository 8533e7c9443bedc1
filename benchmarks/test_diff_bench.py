"""Layer diffs against GNU tar on the same trees, in the same run: exporting a
layer (``Driver.diff`` against ``tar -c``), applying one
(``Driver.apply_diff`` against ``tar -x``) and listing a layer's changes
(``Driver.changes`` against a bare walk of both trees), on 20,000 small files
and on large files: 256 MiB by default, 1 GiB with
``BTRFSX_BENCH_LARGE_MIB=1024`` (what ``scripts/perf-report`` runs).
Throughput in MiB/s goes into each benchmark's extra_info, and the peak
memory of ``Driver.diff`` and ``Driver.apply_diff``, each measured in a
process of its own (``benchmarks/peakmem.py``: peak resident set, VmHWM,
the interpreter included; not tracemalloc, which misses what C code
allocates).

Every round starts committed with the cleaner done; ``apply_diff`` and
``tar -x`` each write into a fresh target per round, the previous one
deleted (untimed) first.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile

import pytest

import peakmem
from btrfsx import Driver

LARGE_MIB = int(os.environ.get("BTRFSX_BENCH_LARGE_MIB", "256"))
ROUNDS = int(os.environ.get("BTRFSX_BENCH_DIFF_ROUNDS", "5"))
pytestmark = [pytest.mark.btrfs,
              pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")]


def _small_tree(root: str, tools) -> None:
    tools.build_layer(root, 20_000)


def _large_tree(root: str, tools) -> None:
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(os.path.join(root, f"blob{i}"), "wb") as f:
            for _ in range(LARGE_MIB // 4):
                f.write(block)


def _change_small(root: str) -> None:
    """200 files rewritten, 100 deleted, 100 added in a new directory."""
    for t in range(4):
        for j in range(50):
            with open(os.path.join(root, f"t{t:03d}/d00/f{j:04d}"), "ab") as f:
                f.write(b"# changed\n")
    for j in range(50):
        os.unlink(os.path.join(root, f"t010/d01/f{j:04d}"))
        os.unlink(os.path.join(root, f"t011/d02/f{j:04d}"))
    os.makedirs(os.path.join(root, "new/dir"))
    for j in range(100):
        with open(os.path.join(root, f"new/dir/f{j:04d}"), "wb") as f:
            f.write(b"new\n")


def _change_large(root: str) -> None:
    """One large file grown by 1 MiB, one deleted, one added."""
    with open(os.path.join(root, "blob0"), "ab") as f:
        f.write(os.urandom(1 << 20))
    os.unlink(os.path.join(root, "blob3"))
    with open(os.path.join(root, "added"), "wb") as f:
        f.write(os.urandom(1 << 20))


SMALL = "20,000 small files"
LARGE = f"{LARGE_MIB} MiB in 4 large files"
TREES = {SMALL: (_small_tree, _change_small, "small"), LARGE: (_large_tree, _change_large, "large")}


@pytest.fixture(scope="module", params=list(TREES))
def tree(request, btrfs_available, tools):
    """A driver on a fresh filesystem with layer "src" holding the tree,
    "child" (a snapshot of it, changed), and the tree's tar (written by
    btrfsx) in a file beside it."""
    build, change, kind = TREES[request.param]
    with tools.fresh_fs(size=max(8 << 30, (LARGE_MIB << 20) * 6)) as fs:
        d = Driver(fs.mountpoint / "home")
        try:
            d.create("src")
            os.chmod(d.get("src"), 0o755)
            build(d.get("src"), tools)
            d.create("child", "src")
            change(d.get("child"))
            tar_path = str(fs.mountpoint / "src.tar")
            with d.diff("src") as stream, open(tar_path, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            size = sum(os.lstat(os.path.join(dp, f)).st_size
                       for dp, _, files in os.walk(d.get("src")) for f in files)
            tools.settle(fs.mountpoint)
            yield request.param, kind, d, fs, tar_path, size
        finally:
            d.cleanup()


def _mib_s(nbytes: int, seconds: float | None) -> float | None:
    return round(nbytes / (1 << 20) / seconds, 1) if seconds else None


def _memory(benchmark, tools, kind: str, op: str, d, *args) -> None:
    """Peak memory of ``op`` in a fresh process, beside that of a process
    which only imports btrfsx and opens the driver; the 100 MiB target on
    the large tree (when it is the 1 GiB one)."""
    base = peakmem.run(d.home, "none")
    run = peakmem.run(d.home, op, *args)
    peak_mib = run["maxrss_kib"] / 1024
    base_mib = base["maxrss_kib"] / 1024
    benchmark.extra_info["peak_rss_mib"] = round(peak_mib, 1)
    benchmark.extra_info["baseline_rss_mib"] = round(base_mib, 1)
    benchmark.extra_info.setdefault("notes", []).append(
        f"peak memory of Driver.{'diff' if op == 'diff' else 'apply_diff'} in a process of its own: "
        f"{peak_mib:.1f} MiB resident (a process that only imports btrfsx and opens the driver: {base_mib:.1f} MiB; "
        f"the operation took {run['seconds']:.2f} s there)")
    if kind == "large":
        detail = f"peak RSS {peak_mib:.1f} MiB, of which {base_mib:.1f} MiB interpreter and imports"
        if LARGE_MIB < 1024:
            detail += f" (a {LARGE_MIB} MiB tree here; the target is about 1 GiB: BTRFSX_BENCH_LARGE_MIB=1024)"
        tools.target(benchmark, f"mem:{op}:large", peak_mib, detail)


def _settled(tools, fs, fn):
    def setup():
        result = fn()
        tools.settle(fs.mountpoint, timeout=120)
        return result
    return setup


# ---------------------------------------------------------------- export

def test_export_tar(benchmark, tree, tools):
    name, kind, d, fs, _, size = tree
    benchmark.group = f"diff (export): {name}"
    cmd = f"tar -C {d.get('src')} -cf - . | cat > /dev/null"  # through cat: tar skips reading when writing to /dev/null
    benchmark.pedantic(subprocess.run, args=(cmd,), kwargs={"shell": True, "check": True}, rounds=ROUNDS,
                       warmup_rounds=1)
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "GNU tar -c | cat > /dev/null", note="the reference")


def test_export_btrfsx(benchmark, tree, tools):
    name, kind, d, fs, _, size = tree

    def export():
        with d.diff("src") as stream:
            while stream.read(1 << 20):
                pass
    benchmark.group = f"diff (export): {name}"
    benchmark.pedantic(export, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    ref = MEDIANS.get(benchmark.group)
    tools.record(benchmark, "Driver.diff, read to the end", reference="GNU tar -c", reference_s=ref,
                 target=f"diff:{kind}", btrfsx=True)
    _memory(benchmark, tools, kind, "diff", d, "src")


# ---------------------------------------------------------------- apply

def test_apply_tar(benchmark, tree, tools):
    name, kind, d, fs, tar_path, size = tree
    counter = itertools.count()
    benchmark.group = f"apply_diff: {name}"
    last: list[str] = []

    def fresh_target():
        while last:
            shutil.rmtree(last.pop())
        target = tempfile.mkdtemp(prefix=f"tar-x-{next(counter)}-", dir=fs.mountpoint)
        last.append(target)
        return (["tar", "-xf", tar_path, "-C", target],), {"check": True}
    benchmark.pedantic(subprocess.run, setup=_settled(tools, fs, fresh_target), rounds=ROUNDS)
    while last:
        shutil.rmtree(last.pop())
    tools.settle(fs.mountpoint, timeout=120)
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "GNU tar -x", note="the reference")


def test_apply_btrfsx(benchmark, tree, tools):
    name, kind, d, fs, tar_path, size = tree
    ids = tools.Ids("dst")
    benchmark.group = f"apply_diff: {name}"
    last: list[str] = []

    def fresh_layer():
        while last:
            d.remove(last.pop())
        layer = ids()
        d.create(layer)
        last.append(layer)
        return (layer,), {}

    def apply(layer):
        with open(tar_path, "rb") as f:
            d.apply_diff(layer, None, f)
    benchmark.pedantic(apply, setup=_settled(tools, fs, fresh_layer), rounds=ROUNDS)
    while last:
        d.remove(last.pop())
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    ref = MEDIANS.get(benchmark.group)
    tools.record(benchmark, "Driver.apply_diff", reference="GNU tar -x", reference_s=ref, target=f"apply:{kind}",
                 btrfsx=True)
    d.create("mem")
    tools.settle(fs.mountpoint, timeout=120)
    try:
        _memory(benchmark, tools, kind, "apply", d, "mem", tar_path)
    finally:
        d.remove("mem")
        tools.settle(fs.mountpoint, timeout=120)


# ---------------------------------------------------------------- changes

def _walk_both(new: str, old: str) -> int:
    """The floor of any walking comparison: os.walk + lstat of every entry of
    both trees, nothing compared."""
    n = 0
    for root in (new, old):
        for dirpath, dirnames, filenames in os.walk(root):
            for entry in dirnames + filenames:
                os.lstat(os.path.join(dirpath, entry))
                n += 1
    return n


def test_changes_btrfsx(benchmark, tree, tools):
    name, kind, d, fs, _, _ = tree
    benchmark.group = f"changes of a layer against its parent: {name}"
    changes = benchmark.pedantic(d.changes, args=("child", "src"), rounds=ROUNDS, warmup_rounds=1)
    assert changes
    benchmark.extra_info["changes"] = len(changes)
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "Driver.changes(child, parent)", btrfsx=True)


def test_changes_walk(benchmark, tree, tools):
    name, kind, d, fs, _, _ = tree
    benchmark.group = f"changes of a layer against its parent: {name}"
    benchmark.pedantic(_walk_both, args=(d.get("child"), d.get("src")), rounds=ROUNDS, warmup_rounds=1)
    tools.record(benchmark, "os.walk + lstat of both trees (no comparison)", reference="Driver.changes",
                 reference_s=MEDIANS.get(benchmark.group))


MEDIANS: dict[str, float | None] = {}  # group -> GNU tar's median, for the btrfsx contender after it
