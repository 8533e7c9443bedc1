"""Benchmark helpers: the C floor (``floor.c``, compiled once per session),
fresh loopback filesystems, fast layer building, the walk the original
driver does, and a summary of every ratio to the C floor at the end of the
run.

The btrfs fixtures (``btrfs_fs``, ``btrfs_dir``, ``btrfs_available``) come
from the ``btrfsx.testing`` plugin, loaded by pyproject's ``addopts``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import bench_targets
from btrfsx import _ioctl
from btrfsx.loopback import Loopback
from btrfsx.testing import NESTED_LAYOUT, PAYLOAD, add_nested, build_layer, walk_nested  # noqa: F401 (tools.*)

HERE = Path(__file__).resolve().parent
FLOOR_SOURCE = HERE / "floor.c"
IMAGE_DIR = "/var/tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def pytest_addoption(parser):
    # tests/conftest.py defines it for the test suite; a run of benchmarks/ alone needs its own
    try:
        parser.addoption("--run-slow", action="store_true", default=False,
                         help="benchmarks: also the slow sizes (a 100,000-layer store)")
    except ValueError:
        pass  # already defined: tests/ and benchmarks/ in one run


# ---------------------------------------------------------------- the C floor

class Floor:
    """Runs the compiled ``floor`` program; every method returns per-op
    nanoseconds, as lists keyed by what was timed."""

    def __init__(self, path: Path):
        self.path = path

    def run(self, *args: str | os.PathLike) -> dict[str, list[int]]:
        argv = [os.fspath(self.path), *map(os.fspath, args)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])}... failed (exit {proc.returncode}): {proc.stderr.strip()}")
        samples: dict[str, list[int]] = defaultdict(list)
        for line in proc.stdout.splitlines():
            key, value = line.split()
            samples[key].append(int(value))
        return dict(samples)

    def create(self, directory, n: int) -> dict[str, list[int]]:
        """``{"create": [...], "destroy": [...]}``: n empty subvolumes made, then destroyed."""
        return self.run("create", directory, str(n))

    def snapshot(self, src, directory, n: int) -> list[int]:
        """n snapshots of ``src`` into ``directory`` (destroyed afterwards, untimed)."""
        return self.run("snapshot", src, directory, str(n))["snapshot"]

    def remove(self, layers: Sequence[str | os.PathLike]) -> dict[str, list[int]]:
        """``{"remove": [...], "find": [...], "nested": [...]}``, one per layer."""
        return self.run("remove", *layers)

    def chain(self, src, directory, n: int) -> dict[str, list[int]]:
        """A chain of n snapshots (the first of ``src``, each next of the one
        before), destroyed afterwards: ``{"chain": [...], "chain_open": [...]}``
        (the snapshots, and the open of each new link, timed apart)."""
        return self.run("chain", src, directory, str(n))

    def find(self, layer, n: int) -> dict[str, list[int]]:
        """``{"find": [...] x n, "nested": [count]}``: INO_LOOKUP + ROOT_REF searches on a cached fd."""
        return self.run("find", layer, str(n))

    def stat(self, directory, name: str, n: int) -> list[int]:
        """n ``fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`` with a cached directory fd."""
        return self.run("stat", directory, name, str(n))["stat"]

    def threads(self, src, basedir, threads: int, n: int) -> int:
        """Wall nanoseconds of ``threads`` threads making n snapshots each."""
        return self.run("threads", src, basedir, str(threads), str(n))["threads"][0]


@pytest.fixture(scope="session")
def floor(tmp_path_factory) -> Floor:
    """``floor.c`` built with the system ``cc -O2`` (skips when there is no compiler)."""
    cc = os.environ.get("CC") or shutil.which("cc")
    if cc is None or shutil.which(cc) is None:
        pytest.skip("no C compiler (cc) to build the C floor benchmarks/floor.c: apt-get install gcc libc6-dev")
    out = tmp_path_factory.mktemp("floor") / "floor"
    proc = subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(FLOOR_SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if "No such file" in proc.stderr and ".h" in proc.stderr:
            pytest.skip(f"cannot build the C floor, headers missing (apt-get install linux-libc-dev libc6-dev): "
                        f"{proc.stderr.strip()}")
        pytest.fail(f"{cc} -O2 {FLOOR_SOURCE} failed:\n{proc.stderr}", pytrace=False)
    return Floor(out)


# ---------------------------------------------------------------- libbtrfsutil

#: Where Debian's python3-btrfsutil puts the module (for the system python3;
#: the venv's Python is the same minor version on Debian 12).
BTRFSUTIL_PATH = "/usr/lib/python3/dist-packages"


@pytest.fixture(scope="session")
def btrfsutil():
    """libbtrfsutil's Python bindings, from the venv or else from the system's
    dist-packages (appended to ``sys.path`` for this run only, and only the
    one module taken from it); skips with the reason when they do not import.
    ``scripts/perf-report`` installs them (apt-get install python3-btrfsutil)."""
    try:
        import btrfsutil as mod
        return mod
    except ImportError:
        pass
    if not os.path.isdir(BTRFSUTIL_PATH):
        pytest.skip(f"libbtrfsutil bindings not importable: no module btrfsutil and no {BTRFSUTIL_PATH} "
                    f"(apt-get install python3-btrfsutil)")
    sys.path.append(BTRFSUTIL_PATH)
    try:
        import btrfsutil as mod
    except ImportError as e:
        pytest.skip(f"libbtrfsutil bindings do not import into {sys.executable} "
                    f"(Python {sys.version.split()[0]}) from {BTRFSUTIL_PATH}: {e} "
                    f"(apt-get install python3-btrfsutil; the module is built for the system python3)")
    finally:
        sys.path.remove(BTRFSUTIL_PATH)
    return mod


# ---------------------------------------------------------------- the pure-Python contender

class PyIoctl:
    """The same ioctls through ``fcntl.ioctl`` and ``struct``: the "why
    Cython" baseline.  Arguments are 4 KiB ``bytearray``s (mutable: for an
    immutable argument fcntl.ioctl copies at most 1 KiB), and
    ``fcntl.ioctl`` holds the GIL for such buffers."""

    # _IOW(0x94, nr, 4096-byte struct): btrfs_ioctl_vol_args and _v2 are both 4096 bytes
    SUBVOL_CREATE = 0x5000940E      # 14, struct btrfs_ioctl_vol_args
    SNAP_DESTROY = 0x5000940F       # 15, struct btrfs_ioctl_vol_args
    SNAP_CREATE_V2 = 0x50009417     # 23, struct btrfs_ioctl_vol_args_v2

    @staticmethod
    def vol_args(name: bytes) -> bytearray:
        return bytearray(struct.pack("q4088s", 0, name))

    @staticmethod
    def vol_args_v2(fd: int, name: bytes) -> bytearray:
        # fd, transid, flags, union{size, qgroup_inherit; unused[4]}, name[4040]
        return bytearray(struct.pack("qQQ32x4040s", fd, 0, 0, name))

    @classmethod
    def create_subvolume(cls, dirfd: int, name: str) -> None:
        fcntl.ioctl(dirfd, cls.SUBVOL_CREATE, cls.vol_args(os.fsencode(name)))

    @classmethod
    def destroy_subvolume(cls, dirfd: int, name: str) -> None:
        fcntl.ioctl(dirfd, cls.SNAP_DESTROY, cls.vol_args(os.fsencode(name)))

    @classmethod
    def snapshot(cls, srcfd: int, dirfd: int, name: str) -> None:
        fcntl.ioctl(dirfd, cls.SNAP_CREATE_V2, cls.vol_args_v2(srcfd, os.fsencode(name)))


# ---------------------------------------------------------------- statistics

def median(samples) -> float:
    return statistics.median(samples)


def speedup(slow: float, fast: float) -> float:
    return slow / fast if fast else math.inf


def bench_median(benchmark) -> float | None:
    """The median of a finished benchmark in seconds (None when benchmarks are disabled)."""
    stats = getattr(benchmark, "stats", None)
    if not stats:
        return None
    return stats["median"]


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


@dataclass
class Row:
    group: str
    contender: str
    median: float | None        # seconds
    reference: str = ""         # what the ratio is against
    reference_median: float | None = None
    ratio: float | None = None
    target: str = ""            # e.g. "<= 2.00x"
    met: bool | None = None
    note: str = ""


RESULTS: list[Row] = []


def _targets_info(benchmark) -> list:
    return benchmark.extra_info.setdefault("targets", [])


def target(benchmark, target_id: str, value: float | None, detail: str = "", *, group: str | None = None) -> Row:
    """Record the measured ``value`` of target ``target_id`` (defined in
    ``bench_targets.py``) in ``benchmark.extra_info["targets"]`` and in the
    end-of-run summary.  Asserts nothing."""
    t = bench_targets.get(target_id)
    met = t.met(value)
    if benchmark is not None:
        _targets_info(benchmark).append({"id": target_id, "value": None if value is None else round(value, 4),
                                         "met": met, "detail": detail})
    unit = "x" if t.unit == "x" else f" {t.unit}"
    row = Row(group or (benchmark.group if benchmark is not None else ""), f"target {target_id}", None,
              detail, None, value, t.describe(), met)
    RESULTS.append(row)
    print(f"\n[target {target_id}] {'-' if value is None else f'{value:.3f}{unit}'} ({t.describe()}: "
          f"{'met' if met else 'NOT met'}) {detail}")
    return row


def also(benchmark, contender: str, median_s: float | None, note: str = "", samples: int | None = None) -> None:
    """A contender measured outside pytest-benchmark (the C floor, the CLI
    timed by hand...), shown as a row of ``benchmark``'s group by the report:
    kept in ``benchmark.extra_info["also"]``."""
    rows = benchmark.extra_info.setdefault("also", [])
    rows.append({"contender": contender, "median_ns": None if median_s is None else round(median_s * 1e9),
                 "samples": samples, "note": note})
    RESULTS.append(Row(benchmark.group, contender, median_s, note=note))


def record(benchmark, contender: str, *, reference: str = "", reference_s: float | None = None,
           target: str | None = None, limit: float | None = None, higher_is_better: bool = False,
           value: float | None = None, note: str = "", group: str | None = None,
           btrfsx: bool = False) -> Row:
    """Name this benchmark's contender and put the ratio of its median to
    ``reference_s`` (a C floor median, or another contender's) into
    ``benchmark.extra_info``, print it and keep it for the summary at the
    end of the run.  ``value`` overrides the ratio (a speed-up computed
    elsewhere).  ``target`` names a target of ``bench_targets.py`` the ratio
    is checked against; ``limit`` is an ad-hoc one (not in the report's
    target list).  ``btrfsx=True`` marks the row the report's ratios are
    taken against (the driver's, usually).  Asserts nothing."""
    med = bench_median(benchmark) if benchmark is not None else None
    ratio = value
    if ratio is None and med is not None and reference_s:
        ratio = med / reference_s
    met = None
    target_s = ""
    if target is not None:
        t = bench_targets.get(target)
        limit, higher_is_better = t.limit, t.higher_is_better
    if limit is not None:
        target_s = f"{'>=' if higher_is_better else '<='} {limit:.2f}x"
        if ratio is not None:
            met = ratio >= limit if higher_is_better else ratio <= limit
    row = Row(group or (benchmark.group if benchmark is not None else ""), contender, med, reference,
              reference_s, ratio, target_s, met, note)
    if benchmark is not None:
        info = benchmark.extra_info
        info["contender"] = contender
        if btrfsx:
            info["btrfsx"] = True
        if reference_s is not None:
            info["reference"] = reference
            info["reference_median_ns"] = round(reference_s * 1e9)
        if ratio is not None:
            info["ratio"] = round(ratio, 4)
        if target_s:
            info["target"] = target_s
            info["target_met"] = met
        if note:
            info["note"] = note
        if target is not None:
            _targets_info(benchmark).append({"id": target, "value": None if ratio is None else round(ratio, 4),
                                             "met": met, "detail": f"{contender} vs {reference}"})
    RESULTS.append(row)
    print(f"\n[{row.group}] {contender}: median {fmt_time(med)}"
          + (f"; {reference} {fmt_time(reference_s)}" if reference_s is not None else "")
          + (f"; ratio {ratio:.2f}x" if ratio is not None else "")
          + (f" (target {target_s}: {'met' if met else 'NOT met'})" if target_s and met is not None else ""))
    return row


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("btrfsx: ratios (medians, same run)")
    header = ("group", "contender", "median", "reference", "ref median", "ratio", "target", "met")
    rows = [header] + [(r.group, r.contender, fmt_time(r.median), r.reference, fmt_time(r.reference_median),
                        "-" if r.ratio is None else f"{r.ratio:.2f}x", r.target or "-",
                        "-" if r.met is None else ("yes" if r.met else "NO")) for r in RESULTS]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        tr.write_line("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            tr.write_line("  ".join("-" * w for w in widths))
    notes = [r for r in RESULTS if r.note]
    for r in notes:
        tr.write_line(f"note [{r.group}] {r.contender}: {r.note}")


# ---------------------------------------------------------------- filesystems

@contextlib.contextmanager
def fresh_fs(size: int = 1 << 30) -> Iterator[Loopback]:
    """A fresh loopback btrfs filesystem, torn down (unmounted, detached,
    image deleted) however the block ends."""
    mountpoint = tempfile.mkdtemp(prefix="btrfsx-bench-")
    fs = None
    try:
        fs = Loopback.create(IMAGE_DIR, mountpoint, size=size)
        yield fs
    finally:
        try:
            if fs is not None:
                fs.close()
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)


def settle(path_or_fd, timeout: float = 30.0) -> None:
    """Commit, wait (up to ``timeout``) for the cleaner to drop deleted
    subvolumes, and commit again, so one measurement does not pay for the
    last one's deletes."""
    fd = path_or_fd if isinstance(path_or_fd, int) else os.open(path_or_fd, _DIR_FLAGS)
    try:
        _ioctl.sync(fd)
        deadline = time.monotonic() + timeout
        while True:
            try:
                pending = _ioctl.subvolume_sync_wait(fd, 0, _ioctl.SUBVOL_SYNC_COUNT)
            except OSError as e:
                if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    time.sleep(0.2)  # kernel < 6.13: nothing to wait on
                    return
                raise
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        # and commit what the cleaner dirtied: else the next operation that
        # commits (a snapshot does) pays for writing it out
        _ioctl.sync(fd)
    finally:
        if not isinstance(path_or_fd, int):
            os.close(fd)


# ---------------------------------------------------------------- layers

class Ids:
    """Fresh layer ids: ``prefix-0``, ``prefix-1``, ..."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n - 1}"


_SELF = sys.modules[__name__]


@pytest.fixture(scope="session")
def tools():
    """This module, for the benchmarks: ``conftest`` is no importable name
    when several conftest files are loaded in one run."""
    return _SELF


def timed(fn, *args, **kwargs) -> float:
    """Seconds ``fn(*args, **kwargs)`` took."""
    t0 = time.perf_counter_ns()
    fn(*args, **kwargs)
    return (time.perf_counter_ns() - t0) / 1e9


def warm(root: str | os.PathLike) -> int:
    """Bring a layer's dentries and inodes into the cache (walk and lstat
    everything), as a layer just built or used is; returns how many entries."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def walk_remove(layer: str | os.PathLike) -> int:
    """Remove a layer as the original driver does: walk every directory to
    find nested subvolumes (inode 256), destroy them deepest first by path,
    then the layer itself.  Returns how many nested ones it found."""
    layer = os.fspath(layer)
    nested = walk_nested(layer)
    for path in sorted(nested, key=lambda p: p.count("/"), reverse=True):
        parent, name = os.path.split(path)
        fd = os.open(parent, _DIR_FLAGS)
        try:
            _ioctl.destroy_subvolume(fd, name)
        finally:
            os.close(fd)
    parent, name = os.path.split(layer)
    fd = os.open(parent, _DIR_FLAGS)
    try:
        _ioctl.destroy_subvolume(fd, name)
    finally:
        os.close(fd)
    return len(nested)
