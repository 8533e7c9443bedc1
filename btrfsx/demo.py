"""The demo: a CI builder's day in small, timed (``btrfsx demo``).

A base layer applied from a generated root filesystem, then builds of a few
layers each, every layer a snapshot of the one below with a generated diff
applied, each build's top layer exported, then the build removed; and the
same snapshot and remove of the base layer through the ``btrfs`` command, for
comparison.  :func:`run` does the work on a :class:`btrfsx.Driver` and
returns what it measured; :mod:`btrfsx.cli` prints it.  Built on the public
API only, like the command.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from btrfsx import Driver

__all__ = ["DemoRun", "run"]

#: ``progress(description, total)``: a context manager yielding a function
#: to call once per layer built (the command's progress bar).
Progress = Callable[[str, int], AbstractContextManager[Callable[[], None]]]


@contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[[], None]]:
    yield lambda: None


@dataclass
class DemoRun:
    """What one run measured."""

    builds: int
    layers_per_build: int
    created: int                          #: layers created, the base included
    elapsed: float                        #: seconds, from the base layer to the last remove
    applied: int                          #: bytes of layer tars applied
    exported: int                         #: bytes of the top layers' diffs
    samples: dict[str, list[float]]       #: seconds of each call, by operation
    #: median seconds of a snapshot and a remove, btrfsx's and the btrfs
    #: command's; None when not compared
    compared: dict[str, dict[str, float]] | None

    def mib_per_second(self, nbytes: int, op: str) -> float | None:
        seconds = sum(self.samples.get(op, []))
        return round(nbytes / (1 << 20) / seconds, 1) if seconds else None

    def summary(self) -> dict:
        """The run as ``btrfsx demo --json`` prints it."""
        return {
            "builds": self.builds, "layers_per_build": self.layers_per_build, "layers_created": self.created,
            "seconds": round(self.elapsed, 3), "layers_per_second": round(self.created / self.elapsed, 1),
            "applied_bytes": self.applied,
            "applied_mib_per_second": self.mib_per_second(self.applied, "apply_diff"),
            "exported_bytes": self.exported,
            "exported_mib_per_second": self.mib_per_second(self.exported, "diff (export)"),
            "median_seconds": {op: statistics.median(t) for op, t in self.samples.items()},
            "compared_with_btrfs_command": self.compared,
        }


def run(d: Driver, builds: int = 20, layers: int = 5, files: int = 2000, compare: bool = True,
        progress: Progress = _no_progress) -> DemoRun:
    """``builds`` builds of ``layers`` layers over a base of ``files`` files
    on ``d``, each timed; with ``compare``, also the ``btrfs`` command's
    snapshot and remove (skipped when it is not installed).  Every layer it
    made is removed again, whatever happens."""
    prefix = f"demo-{os.getpid()}"
    samples: dict[str, list[float]] = {}
    applied = exported = created = 0
    t_start = time.perf_counter()
    base = f"{prefix}-base"
    rootfs = _rootfs(files)
    try:
        _timed(samples, "create (base)", d.create, base)
        applied += _timed(samples, "apply_diff", d.apply_diff, base, None, io.BytesIO(rootfs))
        created += 1
        with progress("building", builds * layers) as tick:
            for b in range(builds):
                parent, stack = base, []
                for k in range(layers):
                    layer = f"{prefix}-b{b}-l{k}"
                    _timed(samples, "create (snapshot)", d.create, layer, parent)
                    stack.append(layer)
                    applied += _timed(samples, "apply_diff", d.apply_diff, layer, parent,
                                      io.BytesIO(_build_layer(b, k)))
                    created += 1
                    parent = layer
                    tick()
                t0 = time.perf_counter()
                with d.diff(parent, stack[-2] if len(stack) > 1 else base) as stream:
                    while chunk := stream.read(1 << 20):
                        exported += len(chunk)
                samples.setdefault("diff (export)", []).append(time.perf_counter() - t0)
                for layer in reversed(stack):
                    _timed(samples, "remove", d.remove, layer)
        elapsed = time.perf_counter() - t_start
        compared = _compare_with_cli(d, base, prefix, 10) if compare and shutil.which("btrfs") else None
    finally:
        for info in [f for f in d.layer_infos() if f.id.startswith(prefix + "-")][::-1]:
            d.remove(info.id)
    return DemoRun(builds, layers, created, elapsed, applied, exported, samples, compared)


def _tarball(entries: list[tuple[str, bytes | None]], whiteouts: list[str] | tuple[str, ...] = ()) -> bytes:
    """An uncompressed layer tar of ``(path, content or None for a directory)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        now = time.time()
        for path, content in entries:
            info = tarfile.TarInfo(path)
            info.mtime = now
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
        for path in whiteouts:
            head, base = os.path.split(path)
            tar.addfile(tarfile.TarInfo(os.path.join(head, ".wh." + base)))
    return buf.getvalue()


def _rootfs(files: int) -> bytes:
    dirs = ["bin", "etc", "usr", "usr/bin", "usr/lib", "usr/share", "usr/share/doc", "var", "var/lib"]
    entries: list[tuple[str, bytes | None]] = [(d, None) for d in dirs]
    for i in range(files):
        d = dirs[1 + i % (len(dirs) - 1)]
        entries.append((f"{d}/file{i:05d}", (b"%d\n" % i) * (1 + i % 300)))
    return _tarball(entries)


def _build_layer(build: int, layer: int) -> bytes:
    entries: list[tuple[str, bytes | None]] = [(f"app/b{build}", None), (f"app/b{build}/l{layer}", None)]
    entries += [(f"app/b{build}/l{layer}/obj{j:03d}.o", os.urandom(512) * (1 + j % 16)) for j in range(40)]
    entries.append((f"etc/file{layer:05d}", b"rebuilt by build %d layer %d\n" % (build, layer)))
    return _tarball(entries, whiteouts=[f"usr/share/doc/file{6 + 8 * layer:05d}"])  # one base file each


def _timed(samples: dict[str, list[float]], op: str, fn, *args):
    t0 = time.perf_counter()
    result = fn(*args)
    samples.setdefault(op, []).append(time.perf_counter() - t0)
    return result


def _compare_with_cli(d: Driver, base: str, prefix: str, rounds: int) -> dict[str, dict[str, float]]:
    """The same snapshot and remove of the base layer through btrfsx and
    through the ``btrfs`` command, alternately, so both meet the same state."""
    ours: dict[str, list[float]] = {}
    theirs: dict[str, list[float]] = {}
    work = tempfile.mkdtemp(prefix=".btrfsx-demo-cli-", dir=d.home)
    base_path = d.get(base)
    try:
        for i in range(rounds):
            _timed(ours, "create (snapshot)", d.create, f"{prefix}-cmp{i}", base)
            _timed(theirs, "create (snapshot)", subprocess.run,
                   ["btrfs", "-q", "subvolume", "snapshot", base_path, f"{work}/s{i}"])
        for i in range(rounds):
            _timed(ours, "remove", d.remove, f"{prefix}-cmp{i}")
            _timed(theirs, "remove", subprocess.run, ["btrfs", "-q", "subvolume", "delete", f"{work}/s{i}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {op: {"btrfsx": statistics.median(ours[op]), "btrfs": statistics.median(theirs[op])} for op in ours}
