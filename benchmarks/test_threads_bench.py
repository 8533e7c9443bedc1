"""Snapshots from 1, 2 and 4 threads at once: the driver against the C
floor, fcntl.ioctl and libbtrfsutil doing the same from as many threads.

(How every group here is measured, settled and compared: the docstring of
``test_single_ops_bench.py``.)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from btrfsx import Driver, _ioctl

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

BASE_FILES = 1_000
THREADS = (1, 2, 4)
THREAD_N = 50           # snapshots per thread per round
THREAD_ROUNDS = 11
G_THREADS = f"threads: {THREAD_N} snapshots of a 1,000-file layer from each thread"

#: Medians shared between the tests of a group (seconds).
SHARED: dict = {}


def _open(path) -> int:
    return os.open(path, _DIR_FLAGS)


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
