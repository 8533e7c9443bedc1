"""Layer diffs against GNU tar on the same trees, in the same run: exporting a
layer (``Driver.diff`` against ``tar -c``) and applying one
(``Driver.apply_diff`` against ``tar -x``), on 20,000 small files and on
large files (256 MiB here; 1 GiB with ``BTRFSX_BENCH_LARGE_MIB=1024``).
Throughput in MiB/s goes into each benchmark's extra_info."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile

import pytest

from btrfsx import Driver

LARGE_MIB = int(os.environ.get("BTRFSX_BENCH_LARGE_MIB", "256"))
pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")


def _small_tree(root: str, tools) -> None:
    tools.build_layer(root, 20_000)


def _large_tree(root: str, tools) -> None:
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(os.path.join(root, f"blob{i}"), "wb") as f:
            for _ in range(LARGE_MIB // 4):
                f.write(block)


TREES = {"20,000 small files": _small_tree, f"{LARGE_MIB} MiB in 4 large files": _large_tree}


@pytest.fixture(scope="module", params=list(TREES))
def tree(request, btrfs_available, tools):
    """A driver on a fresh filesystem with layer "src" holding the tree, and
    the tree's tar (written by btrfsx) in a file beside it."""
    with tools.fresh_fs(size=8 << 30) as fs:
        d = Driver(fs.mountpoint / "home")
        try:
            d.create("src")
            os.chmod(d.get("src"), 0o755)
            TREES[request.param](d.get("src"), tools)
            tar_path = str(fs.mountpoint / "src.tar")
            with d.diff("src") as stream, open(tar_path, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            size = sum(os.lstat(os.path.join(dp, f)).st_size
                       for dp, _, files in os.walk(d.get("src")) for f in files)
            tools.settle(fs.mountpoint)
            yield request.param, d, fs, tar_path, size
        finally:
            d.cleanup()


def _mib_s(nbytes: int, seconds: float | None) -> float | None:
    return nbytes / (1 << 20) / seconds if seconds else None


def test_export_tar(benchmark, tree, tools):
    name, d, fs, _, size = tree
    benchmark.group = f"diff (export): {name}"
    cmd = f"tar -C {d.get('src')} -cf - . | cat > /dev/null"  # through cat: tar skips reading when writing to /dev/null
    benchmark.pedantic(subprocess.run, args=(cmd,), kwargs={"shell": True, "check": True}, rounds=5, warmup_rounds=1)
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "GNU tar -c", note="the reference")


def test_export_btrfsx(benchmark, tree, tools):
    name, d, fs, _, size = tree

    def export():
        with d.diff("src") as stream:
            while stream.read(1 << 20):
                pass
    benchmark.group = f"diff (export): {name}"
    benchmark.pedantic(export, rounds=5, warmup_rounds=1)
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    ref = _reference(benchmark)
    tools.record(benchmark, "Driver.diff, read to the end", reference="GNU tar -c", reference_s=ref, limit=2.0)


def test_apply_tar(benchmark, tree, tools):
    name, d, fs, tar_path, size = tree
    counter = itertools.count()
    benchmark.group = f"apply_diff: {name}"

    def setup():
        target = tempfile.mkdtemp(prefix=f"tar-x-{next(counter)}-", dir=fs.mountpoint)
        return (["tar", "-xf", tar_path, "-C", target],), {"check": True}
    benchmark.pedantic(subprocess.run, setup=setup, rounds=5)
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "GNU tar -x", note="the reference")


def test_apply_btrfsx(benchmark, tree, tools):
    name, d, fs, tar_path, size = tree
    ids = tools.Ids("dst")
    benchmark.group = f"apply_diff: {name}"

    def setup():
        layer = ids()
        d.create(layer)
        return (layer,), {}

    def apply(layer):
        with open(tar_path, "rb") as f:
            d.apply_diff(layer, None, f)
    benchmark.pedantic(apply, setup=setup, rounds=5)
    benchmark.extra_info["MiB/s"] = _mib_s(size, tools.bench_median(benchmark))
    ref = _reference(benchmark)
    tools.record(benchmark, "Driver.apply_diff", reference="GNU tar -x", reference_s=ref, limit=2.0)


MEDIANS: dict[str, float | None] = {}  # group -> GNU tar's median, for the btrfsx contender after it


def _reference(benchmark) -> float | None:
    return MEDIANS.get(benchmark.group)
