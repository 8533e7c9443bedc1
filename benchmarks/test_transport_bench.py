"""btrfs send/receive as a layer transport (issue #17) beside the tar
transport, in the same run: ``Driver.send | Driver.receive`` into a second
filesystem against ``Driver.diff | Driver.apply_diff`` of the same layer,
on a 1 GiB file of which the child changes 4 KiB (``BTRFSX_BENCH_SEND_MIB``
for another size) and on 20,000 small files of which the child changes 10;
the incremental stream's size; incremental ``send`` against native
``diff(child, base)``; and the peak memory of send and receive on the large
layer, each in a process of its own (``benchmarks/peakmem.py``).

Each round receives (or applies) into a layer made for it, the previous
round's removed untimed first, with the filesystems committed and the
cleaner done.
"""

from __future__ import annotations

import itertools
import os
import resource
import shutil
import subprocess
import time

import pytest

import peakmem
from btrfsx import Driver, _ioctl, subvolume, transport

LARGE_MIB = int(os.environ.get("BTRFSX_BENCH_SEND_MIB") or os.environ.get("BTRFSX_BENCH_LARGE_MIB") or "1024")
ROUNDS = int(os.environ.get("BTRFSX_BENCH_SEND_ROUNDS", "5"))
pytestmark = pytest.mark.btrfs
MEDIANS: dict[str, float | None] = {}


def _large(root: str, tools) -> None:
    block = os.urandom(1 << 20)
    with open(os.path.join(root, "big"), "wb") as f:
        for _ in range(LARGE_MIB):
            f.write(block)


def _change_large(root: str) -> None:
    fd = os.open(os.path.join(root, "big"), os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(4096), (LARGE_MIB << 20) // 2)  # 4 KiB in the middle
    finally:
        os.close(fd)


def _small(root: str, tools) -> None:
    tools.build_layer(root, 20_000)


def _change_small(root: str) -> None:
    for j in range(10):
        with open(os.path.join(root, f"t000/d00/f{j:04d}"), "ab") as f:
            f.write(b"# changed\n")


LARGE = f"a {LARGE_MIB} MiB file, 4 KiB changed"
SMALL = "20,000 small files, 10 changed"
TREES = {LARGE: (_large, _change_large, "large"), SMALL: (_small, _change_small, "small")}


@pytest.fixture(scope="module", params=list(TREES))
def stores(request, btrfs_available, tools):
    """Sender (layers "base" and "child") and receiver (which has "base",
    received, and "base-tar", applied from a tar) on two filesystems."""
    build, change, kind = TREES[request.param]
    size = max(4 << 30, (LARGE_MIB << 20) * 5)
    with tools.fresh_fs(size=size) as fa, tools.fresh_fs(size=size) as fb:
        a = Driver(fa.mountpoint / "home")
        b = Driver(fb.mountpoint / "home")
        try:
            a.create("base")
            os.chmod(a.get("base"), 0o755)
            build(a.get("base"), tools)
            a.create("child", "base")
            change(a.get("child"))
            with a.send("base") as stream:
                b.receive("base", stream)
            b.create("base-tar")
            with a.diff("base") as tar:
                b.apply_diff("base-tar", None, tar)
            tools.settle(fa.mountpoint)
            tools.settle(fb.mountpoint)
            yield request.param, kind, a, b, fa, fb
        finally:
            a.cleanup()
            b.cleanup()


def _into_fresh_layers(benchmark, tools, stores, prefix: str, make) -> None:
    """``make(target)`` for ROUNDS rounds, each into a layer of the receiver
    of its own ("<prefix>-<n>"): the previous round's removed and both
    filesystems settled in the round's setup (untimed), the last removed
    after."""
    _, _, _, b, fa, fb = stores
    counter = itertools.count()
    last: list[str] = []

    def remove_last():
        while last:
            b.remove(last.pop())

    def setup():
        remove_last()
        for fs in (fa, fb):
            tools.settle(fs.mountpoint, timeout=120)
        name = f"{prefix}-{next(counter)}"
        last.append(name)
        return (name,), {}
    benchmark.pedantic(make, setup=setup, rounds=ROUNDS)
    remove_last()


def _by_tar(a: Driver, b: Driver, layer: str, parent: str | None = None):
    """A round's work: ``layer`` (against ``parent``) through ``diff |
    apply_diff`` into the target, made empty or from the tar-applied base."""
    onto = "base-tar" if parent else None

    def by_tar(target):
        b.create(target, onto)
        with a.diff(layer, parent) as tar:
            b.apply_diff(target, onto, tar)
    return by_tar


def _by_send(a: Driver, b: Driver, layer: str, parent: str | None = None, sizes: list[int] | None = None):
    """A round's work: ``layer`` (against ``parent``) through ``send |
    receive`` into the target; the bytes each receive read into ``sizes``."""
    def by_send(target):
        with a.send(layer, parent) as stream:
            n = b.receive(target, stream, parent)
        if sizes is not None:
            sizes.append(n)
    return by_send


def _only_small(kind: str, what: str) -> None:
    if kind != "small":
        pytest.skip(f"the {what} target is the small-file tree's")


def _size_note() -> str:
    return f" (a {LARGE_MIB} MiB file here; the target names 1 GiB)" if LARGE_MIB < 1024 else ""


def _send_to_file(a: Driver, fs, layer: str = "base"):
    """The whole of ``layer``'s send stream, in a file on ``fs``; its path."""
    path = fs.mountpoint / f"{layer}.stream"
    with a.send(layer) as stream, open(path, "wb") as out:
        while chunk := stream.read(1 << 20):
            out.write(chunk)
    return path


# ---------------------------------------------------------------- the child, incremental

def test_child_by_tar(benchmark, stores, tools):
    name, kind, a, b, fa, fb = stores
    benchmark.group = f"transport, the child against base: {name}"
    _into_fresh_layers(benchmark, tools, stores, "tar", _by_tar(a, b, "child", "base"))
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "Driver.diff(child, base) | Driver.apply_diff", note="the reference")


def test_child_by_send(benchmark, stores, tools):
    name, kind, a, b, fa, fb = stores
    benchmark.group = f"transport, the child against base: {name}"
    sizes: list[int] = []
    _into_fresh_layers(benchmark, tools, stores, "recv", _by_send(a, b, "child", "base", sizes))
    ref = MEDIANS.get(benchmark.group)
    med = tools.bench_median(benchmark)
    benchmark.extra_info["stream_bytes"] = sizes[-1]
    if kind == "large":
        tools.record(benchmark, "Driver.send(child, base) | Driver.receive", reference="diff | apply_diff",
                     reference_s=ref, value=(ref / med) if ref and med else None, target="transport_incr:large",
                     btrfsx=True)
        tools.target(benchmark, "transport_incr_stream:large", sizes[-1] / (1 << 20),
                     f"{sizes[-1]} bytes{_size_note()}")
    else:
        tools.record(benchmark, "Driver.send(child, base) | Driver.receive", reference="diff | apply_diff",
                     reference_s=ref, btrfsx=True, note=f"stream of {sizes[-1]} bytes")


# ---------------------------------------------------------------- the whole layer

def test_full_by_tar(benchmark, stores, tools):
    name, kind, a, b, fa, fb = stores
    _only_small(kind, "whole-layer")
    benchmark.group = f"transport, the whole layer: {name}"
    _into_fresh_layers(benchmark, tools, stores, "tarfull", _by_tar(a, b, "base"))
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "Driver.diff(base) | Driver.apply_diff", note="the reference")


def test_full_by_send(benchmark, stores, tools):
    name, kind, a, b, fa, fb = stores
    _only_small(kind, "whole-layer")
    benchmark.group = f"transport, the whole layer: {name}"
    _into_fresh_layers(benchmark, tools, stores, "recvfull", _by_send(a, b, "base"))
    tools.record(benchmark, "Driver.send(base) | Driver.receive", reference="diff | apply_diff",
                 reference_s=MEDIANS.get(benchmark.group), target="transport_full:small", btrfsx=True)


# ---------------------------------------------------------------- the sending side alone

def _read_child(benchmark, stores, how: str, setup=None) -> None:
    """``Driver.<how>("child", "base")`` read to the end, ROUNDS * 4 rounds
    (after ``setup`` each, or else after a warm-up round), in the group of
    the sending side."""
    name, kind, a, b, fa, fb = stores
    _only_small(kind, "incremental-send")
    benchmark.group = f"transport, sending the child alone: {name}"
    open_stream = a.diff if how == "diff" else a.send
    benchmark.pedantic(lambda: peakmem.drain(open_stream("child", "base")), setup=setup, rounds=ROUNDS * 4,
                       warmup_rounds=0 if setup else 1)


def test_incremental_diff(benchmark, stores, tools):
    _read_child(benchmark, stores, "diff")
    MEDIANS[benchmark.group] = tools.bench_median(benchmark)
    tools.record(benchmark, "Driver.diff(child, base), read to the end", note="the reference (native changes)")


def test_incremental_send(benchmark, stores, tools):
    """Sent again: the twins of child and base made by an earlier send are reused."""
    _read_child(benchmark, stores, "send")
    tools.record(benchmark, "Driver.send(child, base), twins there, read to the end",
                 reference="Driver.diff(child, base)", reference_s=MEDIANS.get(benchmark.group), btrfsx=True,
                 note="a layer sent again: its twin reused")


def test_incremental_send_first(benchmark, stores, tools):
    """The child's first send: its twin (a read-only snapshot, after a sync)
    is made in the timed call; base's, made when base was sent, is reused."""
    name, kind, a, b, fa, fb = stores
    store = a._store

    def setup():
        with store.lock("child"):
            transport._drop(store, "child")
        tools.settle(fa.mountpoint, timeout=120)
        return (), {}
    _read_child(benchmark, stores, "send", setup)
    tools.record(benchmark, "Driver.send(child, base), first send (twin made), read to the end",
                 reference="Driver.diff(child, base)", reference_s=MEDIANS.get(benchmark.group),
                 target="transport_incr_send:small", btrfsx=True)


# ---------------------------------------------------------------- where receiving's time goes

def test_receive_by_btrfs_progs(benchmark, stores, tools):
    """The whole layer's stream, from a file, into the receiver: ``btrfs
    receive -f`` run bare (no confinement, no relay, no checks, no layer),
    the same followed by a sync (``Driver.receive`` snapshots the received
    subvolume into the layer, and a snapshot writes back the data first),
    and ``Driver.receive``, rounds alternating; the CPU time of ``btrfs
    receive`` split into user (parsing the stream and deciding: what an
    in-process parser would replace) and system (the kernel's work for the
    writes, which any receiver pays), and the driver process's own CPU
    (relaying the stream, checking, publishing)."""
    name, kind, a, b, fa, fb = stores
    benchmark.group = f"transport, receiving the whole layer from a file: {name}"
    stream_file = _send_to_file(a, fa)
    btrfs = shutil.which("btrfs") or "/usr/bin/btrfs"
    raw = fb.mountpoint / "raw"
    raw.mkdir(exist_ok=True)
    rows: dict[str, list[tuple[float, float, float, float]]] = {}   # (wall, child user, child sys, own cpu)
    counter = itertools.count()

    def clear():
        for entry in os.listdir(raw):
            subvolume.remove_tree(os.fspath(raw / entry), destroy_subvolumes=True)
        for layer in [x for x in b.layers() if x.startswith("rawrecv-")]:
            b.remove(layer)
    try:
        for _ in range(ROUNDS):
            for which in ("btrfs receive -f FILE (bare)", "btrfs receive -f FILE, then sync",
                          "Driver.receive(FILE)"):
                clear()
                tools.settle(fb.mountpoint, timeout=120)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                own = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                if which.startswith("btrfs"):
                    subprocess.run([btrfs, "receive", "-q", "-e", "-f", os.fspath(stream_file), os.fspath(raw)],
                                   check=True, stdout=subprocess.DEVNULL)
                    if "sync" in which:
                        _sync(raw)
                else:
                    with open(stream_file, "rb") as f:
                        b.receive(f"rawrecv-{next(counter)}", f)
                wall = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                own2 = resource.getrusage(resource.RUSAGE_SELF)
                rows.setdefault(which, []).append(
                    (wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                     own2.ru_utime + own2.ru_stime - own.ru_utime - own.ru_stime))
    finally:
        clear()
        stream_file.unlink()

    def med(samples, i):
        return sorted(r[i] for r in samples)[len(samples) // 2]
    benchmark.pedantic(lambda: None, rounds=1)
    for label, samples in rows.items():
        note = (f"btrfs receive's CPU: user {med(samples, 1):.3f} s, system {med(samples, 2):.3f} s; "
                f"this process's CPU {med(samples, 3):.3f} s")
        tools.also(benchmark, label, med(samples, 0), note=note)
        benchmark.extra_info[label] = {"wall_s": round(med(samples, 0), 4), "child_user_s": round(med(samples, 1), 4),
                                       "child_sys_s": round(med(samples, 2), 4), "own_cpu_s": round(med(samples, 3), 4)}
        print(f"\n[{benchmark.group}] {label}: {med(samples, 0):.3f} s; {note}")
    ours, synced = rows["Driver.receive(FILE)"], rows["btrfs receive -f FILE, then sync"]
    benchmark.extra_info["driver_over_synced"] = round(med(ours, 0) / med(synced, 0), 4)
    print(f"\n[{benchmark.group}] Driver.receive / (btrfs receive + sync): {med(ours, 0) / med(synced, 0):.2f}x")


def _sync(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _ioctl.sync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- peak memory

def test_peak_memory(benchmark, stores, tools):
    name, kind, a, b, fa, fb = stores
    if kind != "large":
        pytest.skip("the memory targets are the large layer's")
    benchmark.group = f"transport, peak memory: {name}"
    stream_file = _send_to_file(a, fa)
    base = peakmem.run(a.home, "none")
    sent = peakmem.run(a.home, "send", "base")
    got = peakmem.run(b.home, "receive", "peak", str(stream_file))
    stream_file.unlink()
    benchmark.pedantic(lambda: None, rounds=1)
    for op, run in (("send", sent), ("receive", got)):
        mib = run["maxrss_kib"] / 1024
        detail = (f"peak RSS {mib:.1f} MiB, of which {base['maxrss_kib'] / 1024:.1f} MiB interpreter and imports; "
                  f"{run['seconds']:.2f} s")
        if op == "receive":
            detail += f"; btrfs receive's ru_maxrss {run['children_maxrss_kib'] / 1024:.1f} MiB (an upper bound)"
        detail += _size_note()
        benchmark.extra_info[f"{op}_peak_rss_mib"] = round(mib, 1)
        tools.target(benchmark, f"mem:{op}:large", mib, detail)
