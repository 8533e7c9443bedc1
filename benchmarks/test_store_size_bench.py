"""Stores of 100 to 10,000 layers (issue #15, parts 1, 2 and 5): what each
per-layer operation costs as the store grows, and the whole-store ones.

The store is CI-shaped: 20 bases of 100 files, then children snapshotted
from random earlier layers, chains at most 40 deep; with quotas on, every
layer is sized (1G).  One store per quota mode (off, simple, full qgroups),
each on a filesystem of its own, grown in place through ``Driver.create``
(100, then 1,000, then 10,000 layers; 100,000 too with ``--run-slow`` or
``BTRFSX_BENCH_STORE_SIZES=100,1000,10000,100000``).

Beside each growing store lives a reference store of the same shape at 100
layers, on another filesystem, in the same mode: every per-layer operation
runs on both, alternating round by round (the reference's before the timed
one in even rounds, after it in odd ones), so the growth factor
``cost at N / cost at 100`` is of rounds under the same conditions on a
noisy machine.  The C floor (``floor.c``) runs on both filesystems too, half
before and half after: SUBVOL_CREATE for an empty create, SUBVOL_CREATE +
QGROUP_LIMIT for a sized one, SNAP_CREATE_V2 of the same kind of random
layers for a child, SNAP_DESTROY of subvolumes made before the last commit
for a remove; in the store's ``subvolumes/`` directory, among the layers.  Its growth is the kernel's
own, divided out of the driver's for creates and snapshots (the target).

Whole-store operations (``layer_infos()`` of every layer, ``btrfsx ls
--json`` and ``btrfsx status`` as fresh processes, ``gc()`` with nothing to
collect) are timed at each size, beside the C floor of a listing: one
TREE_SEARCH_V2 pass over the root tree's ROOT_ITEM/ROOT_BACKREF items and
one over the quota tree (``floor list``).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time

import pytest

from btrfsx import CreateOpts, Driver

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

REF_LAYERS = 100
DEFAULT_SIZES = (100, 1_000, 10_000)
SLOW_SIZE = 100_000
#: the size the targets are checked at
TARGET_SIZE = 10_000
BASES = 20
BASE_FILES = 100
MAX_DEPTH = 40
SIZE = 1 << 30
SIZED = CreateOpts(storage_opt={"size": "1G"})
MODES = ("off", "simple", "qgroup")
OPTIONS = {"off": [], "simple": ["btrfsx.quota=simple"], "qgroup": ["btrfsx.quota=qgroup"]}

PER_LAYER = ("create empty", "create child", "create empty sized", "create child sized", "remove", "exists",
             "parent", "get+put", "layer_infos([id])", "open Driver")
WHOLE = ("layer_infos()", "ls --json", "status", "gc()")
#: ops whose growth is compared with the C floor's (kernel growth divided out)
FLOORED = {"create empty": "create", "create empty sized": "create-sized", "create child": "snapshot",
           "create child sized": "snapshot", "remove": "destroy"}
KERNEL_DIVIDED = {"create empty", "create child", "create empty sized", "create child sized"}
FLOOR_N = 40        # C floor samples per filesystem and measurement (half before, half after)


def _sizes(config) -> tuple[int, ...]:
    env = os.environ.get("BTRFSX_BENCH_STORE_SIZES")
    if env:
        return tuple(sorted({int(x) for x in env.replace(",", " ").split()}))
    slow = False
    with contextlib.suppress(ValueError):
        slow = bool(config.getoption("--run-slow"))
    return DEFAULT_SIZES + ((SLOW_SIZE,) if slow else ())


def _rounds(op: str, mode: str, size: int) -> int:
    if op.startswith("create") or op == "remove":
        n = 15 if mode == "qgroup" else 30
    elif op == "open Driver":
        n = 40
    else:
        n = 200
    return max(5, n // 4) if size > TARGET_SIZE else n


def _whole_rounds(op: str, size: int) -> int:
    n = 3 if op in ("ls --json", "status") else 5
    return 2 if size > TARGET_SIZE else n


class SizedStore:
    """One driver store of the CI shape on a filesystem of its own, grown
    in place."""

    def __init__(self, mode: str, fs, tools, seed: int):
        self.mode, self.fs, self.tools = mode, fs, tools
        self.home = str(fs.mountpoint / "store")
        self.options = OPTIONS[mode]
        self.driver = Driver(self.home, self.options)
        self.fd = os.open(fs.mountpoint, _DIR_FLAGS)
        # the C floor works in the store's own directory, among its layers
        # (as floor-*): a directory entry's place in a tree is its parent
        # directory's, so a directory of its own would be a smaller tree
        self.floor_dir = fs.mountpoint / "store" / "subvolumes"
        self.rng = random.Random(seed)
        self.layers: list[str] = []
        self.depth: dict[str, int] = {}
        self.sized = SIZED if mode != "off" else None
        self.build_s = 0.0
        self._tmp = 0

    def grow_to(self, n: int) -> None:
        t0 = time.monotonic()
        d = self.driver
        while len(self.layers) < n:
            i = len(self.layers)
            layer = f"L{i:06d}"
            if i < BASES:
                d.create(layer, None, self.sized)
                self.tools.build_layer(d.get(layer), BASE_FILES)
                self.depth[layer] = 1
            else:
                while True:
                    parent = self.layers[self.rng.randrange(len(self.layers))]
                    if self.depth[parent] < MAX_DEPTH:
                        break
                d.create(layer, parent, self.sized)
                self.depth[layer] = self.depth[parent] + 1
            self.layers.append(layer)
        self.build_s += time.monotonic() - t0

    def warm(self) -> None:
        """Stat every layer's entry and read every quota file, as a store in
        use has them cached: otherwise the first touch of a layer's dentry
        (cold after the build, for most of 10,000) is what a lookup costs,
        and the comparison with the 100-layer store, all hot, is one of
        cache states rather than of sizes."""
        subvolumes = os.path.join(self.home, "subvolumes")
        quotas = os.path.join(self.home, "quotas")
        for name in os.listdir(subvolumes):
            os.stat(os.path.join(subvolumes, name), follow_symlinks=False)
        if os.path.isdir(quotas):
            for name in os.listdir(quotas):
                with contextlib.suppress(OSError), open(os.path.join(quotas, name), "rb") as f:
                    f.read()

    def child(self) -> str:
        """A random layer made by a snapshot."""
        return self.layers[self.rng.randrange(BASES, len(self.layers))]

    def fresh_id(self) -> str:
        self._tmp += 1
        return f"t{self._tmp:07d}"

    def settle(self) -> None:
        self.tools.settle(self.fd, timeout=60)

    def close(self) -> None:
        self.driver.close()
        os.close(self.fd)


class Stores:
    """The growing store and its 100-layer reference, of one quota mode at a
    time (the next mode's pair replaces them: two loop devices at once)."""

    def __init__(self, tools, max_size: int):
        self.tools = tools
        self.max_size = max_size
        self.mode: str | None = None
        self.stack = contextlib.ExitStack()
        self.big: SizedStore | None = None
        self.ref: SizedStore | None = None

    def pair(self, mode: str, size: int) -> tuple[SizedStore, SizedStore]:
        if mode != self.mode:
            self.stack.close()
            self.stack = contextlib.ExitStack()
            self.mode = mode
            fs_size = max(4 << 30, self.max_size * (160 << 10))
            self.big = self._store(mode, fs_size, seed=1)
            self.ref = self._store(mode, 1 << 30, seed=2)
            self.ref.grow_to(REF_LAYERS)
            self.ref.warm()
        assert self.big is not None and self.ref is not None
        if len(self.big.layers) > size:
            pytest.skip(f"the {mode} store already holds {len(self.big.layers)} layers (> {size}): out of order")
        if len(self.big.layers) < size:
            self.big.grow_to(size)
            self.big.warm()
        return self.big, self.ref

    def _store(self, mode: str, fs_size: int, seed: int) -> SizedStore:
        fs = self.stack.enter_context(self.tools.fresh_fs(size=fs_size))
        store = SizedStore(mode, fs, self.tools, seed)
        self.stack.callback(store.close)
        return store

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def stores(request, btrfs_available, tools):
    s = Stores(tools, max(_sizes(request.config)))
    try:
        yield s
    finally:
        s.close()


def pytest_generate_tests(metafunc):
    if "store_case" not in metafunc.fixturenames:
        return
    cases = []
    for mode in MODES:
        for size in _sizes(metafunc.config):
            for op in PER_LAYER + WHOLE:
                if "sized" in op and mode == "off":
                    continue
                cases.append(pytest.param((mode, size, op), id=f"{mode}-{size}-{op.replace(' ', '_')}"))
    metafunc.parametrize("store_case", cases)


# ---------------------------------------------------------------- per-layer operations

class _Op:
    """One round's operation on one store; ``args()`` picks its argument
    (untimed), ``undo()`` removes what the rounds made."""

    def __init__(self, store: SizedStore, op: str, rounds: int):
        self.store, self.op = store, op
        self.made: list[str] = []
        self.pending: list[str] = []
        self.call = self._bind()
        if op == "remove":
            for _ in range(rounds + 3):
                layer = store.fresh_id()
                store.driver.create(layer)
                self.pending.append(layer)

    def _bind(self):
        """What a round calls, with ``args()``'s arguments."""
        s, d, op = self.store, self.store.driver, self.op
        if op.startswith("create"):
            opts = SIZED if op.endswith("sized") else None

            def create(layer: str, parent: str | None) -> None:
                d.create(layer, parent, opts)
                self.made.append(layer)
            return create
        if op == "open Driver":
            return lambda: Driver(s.home, s.options).close()
        # on one existing layer (a random child; for "remove", one made for it)
        return {"remove": d.remove, "exists": d.exists, "parent": d.parent,
                "get+put": lambda layer: (d.get(layer), d.put(layer)),
                "layer_infos([id])": lambda layer: d.layer_infos([layer])}[op]

    def args(self) -> tuple:
        s = self.store
        if self.op == "remove":
            return (self.pending.pop(),)
        if self.op.startswith("create"):
            return (s.fresh_id(), s.child() if "child" in self.op else None)
        if self.op == "open Driver":
            return ()
        return (s.child(),)

    def __call__(self, *args) -> None:
        self.call(*args)

    def undo(self) -> None:
        while self.made:
            self.store.driver.remove(self.made.pop())
        while self.pending:
            self.store.driver.remove(self.pending.pop())


#: the ioctls that do the kernel's work of the floored operations: timed inside
#: the Driver's calls (module attributes, wrapped for the time of the
#: operation's rounds), so a round splits into the time in the kernel's calls
#: and the rest, the driver's own
KERNEL_CALLS = ("create_subvolume", "snapshot", "destroy_subvolume", "qgroup_limit")


class _KernelClock:
    """Nanoseconds spent in :data:`KERNEL_CALLS` while installed."""

    def __init__(self):
        self.ns = 0
        self._saved: dict = {}

    def __enter__(self):
        from btrfsx import _ioctl

        def timed(fn):
            def call(*args, **kwargs):
                t0 = time.perf_counter_ns()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.ns += time.perf_counter_ns() - t0
            return call
        for name in KERNEL_CALLS:
            self._saved[name] = getattr(_ioctl, name)
            setattr(_ioctl, name, timed(self._saved[name]))
        return self

    def __exit__(self, *exc):
        from btrfsx import _ioctl
        for name, fn in self._saved.items():
            setattr(_ioctl, name, fn)
        self._saved.clear()

    def split(self, fn):
        """``fn`` recording, per call, the time spent in the kernel's calls into ``self.calls``."""
        self.calls: list[int] = []

        def call(*args):
            before = self.ns
            try:
                return fn(*args)
            finally:
                self.calls.append(self.ns - before)
        return call


def _floor(floor, store: SizedStore, kind: str, n: int) -> list[int]:
    """n C floor samples (ns) of ``kind`` on ``store``'s filesystem."""
    if kind == "create":
        return floor.create(store.floor_dir, n)[kind]
    if kind == "destroy":
        # the driver removes layers made before the last commit
        return floor.run("destroy-committed", store.floor_dir, str(n))["destroy"]
    if kind == "create-sized":
        return floor.run("create-sized", store.floor_dir, str(n), str(SIZE))["create"]
    sources = [store.driver.get(store.child()) for _ in range(n)]
    return floor.run("snapshots", store.floor_dir, *sources)["snapshot"]


SHARED: dict = {}   # (mode, size, op) -> figures, for the summary


def _settle(*stores: SizedStore) -> None:
    for s in stores:
        s.settle()


def _floor_half(floor, kind: str, samples: dict[SizedStore, list[int]], order: tuple[SizedStore, ...]) -> None:
    """Half of the C floor's samples of ``kind`` on each store, in ``order``,
    the stores settled first; appended to ``samples[store]``."""
    _settle(*samples)
    for store in order:
        samples[store] += _floor(floor, store, kind, FLOOR_N // 2)


def _check_target(benchmark, tools, tid: str, size: int, value: float | None, detail) -> None:
    """The target ``tid``, where there is one, checked at TARGET_SIZE
    (``detail()`` says what was measured)."""
    if size == TARGET_SIZE and tid in tools.bench_targets.TARGETS:
        tools.target(benchmark, tid, value, detail())


def _per_layer(benchmark, tools, floor, big: SizedStore, ref: SizedStore, mode: str, size: int, op: str):
    rounds = _rounds(op, mode, size)
    ours, theirs = _Op(big, op, rounds), _Op(ref, op, rounds)
    kind = FLOORED.get(op)
    floors: dict[SizedStore, list[int]] = {big: [], ref: []}
    if kind is not None:
        _floor_half(floor, kind, floors, (big, ref))
    _settle(big, ref)
    ref_times: list[float] = []
    turn = [0]
    clock_ours, clock_theirs = _KernelClock(), _KernelClock()
    run_ours, run_theirs = clock_ours.split(ours), clock_theirs.split(theirs)
    ours_times: list[float] = []

    def timed_ours(*args):
        ours_times.append(tools.timed(run_ours, *args))

    def ref_round():
        with clock_theirs:
            ref_times.append(tools.timed(run_theirs, *theirs.args()))

    def setup():
        if turn[0] % 2 == 0:
            ref_round()
        return ours.args(), {}

    def teardown(*_):
        if turn[0] % 2 == 1:
            ref_round()
        turn[0] += 1

    try:
        if kind is not None:
            with clock_ours:
                benchmark.pedantic(timed_ours, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=2)
        else:
            benchmark.pedantic(ours, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=2)
    finally:
        ours.undo()
        theirs.undo()
    if kind is not None:
        _floor_half(floor, kind, floors, (ref, big))
    floor_big, floor_ref = floors[big], floors[ref]
    med = tools.bench_median(benchmark)
    ref_med = tools.median(ref_times[2:]) if len(ref_times) > 2 else None
    tools.also(benchmark, f"{REF_LAYERS} layers (reference store, alternating): Driver {op}", ref_med,
               samples=len(ref_times) - 2)
    kernel = None
    if kind is not None:
        fb, fr = tools.median(floor_big) / 1e9, tools.median(floor_ref) / 1e9
        kernel = fb / fr
        what = {"create": "SUBVOL_CREATE", "create-sized": "SUBVOL_CREATE + QGROUP_LIMIT",
                "snapshot": "SNAP_CREATE_V2 of random layers",
                "destroy": "SNAP_DESTROY of subvolumes made before a commit"}[kind]
        tools.also(benchmark, f"C floor at {size} layers: {what}", fb, samples=len(floor_big))
        tools.also(benchmark, f"C floor at {REF_LAYERS} layers: {what}", fr, samples=len(floor_ref),
                   note=f"kernel growth x{kernel:.2f}")
        benchmark.extra_info["kernel_growth"] = round(kernel, 4)
        benchmark.extra_info["floor_median_ns"] = round(fb * 1e9)
        # each round split: the time inside the kernel's calls, and the rest (the driver's own)
        k_big, k_ref = clock_ours.calls[2:], clock_theirs.calls[2:]
        out_big = [t * 1e9 - k for t, k in zip(ours_times[2:], k_big)]
        out_ref = [t * 1e9 - k for t, k in zip(ref_times[2:], k_ref)]
        if k_big and k_ref:
            split = {"in_ioctls_ns": round(tools.median(k_big)), "in_ioctls_ref_ns": round(tools.median(k_ref)),
                     "outside_ns": round(tools.median(out_big)), "outside_ref_ns": round(tools.median(out_ref))}
            benchmark.extra_info.update(split)
            tools.also(benchmark, f"{size} layers: the Driver's {op}, time inside "
                       f"{'/'.join(KERNEL_CALLS)}", split["in_ioctls_ns"] / 1e9, samples=len(k_big),
                       note=f"x{split['in_ioctls_ns'] / max(split['in_ioctls_ref_ns'], 1):.2f} of "
                       f"{REF_LAYERS} layers'")
            tools.also(benchmark, f"{size} layers: the Driver's {op}, time outside them", split["outside_ns"] / 1e9,
                       samples=len(out_big), note=f"x{split['outside_ns'] / max(split['outside_ref_ns'], 1):.2f} "
                       f"of {REF_LAYERS} layers' ({split['outside_ref_ns'] / 1e3:.1f} us)")
    growth = med / ref_med if med and ref_med else None
    tools.record(benchmark, f"{size} layers: Driver {op}", reference=f"the same at {REF_LAYERS} layers",
                 reference_s=ref_med, btrfsx=True)
    value = growth
    if growth is not None and kernel:
        benchmark.extra_info["growth_kernel_divided"] = round(growth / kernel, 4)
        if op in KERNEL_DIVIDED:
            value = growth / kernel
    SHARED[(mode, size, op)] = {"median": med, "ref": ref_med, "growth": growth, "kernel": kernel, "value": value}
    _check_target(benchmark, tools, f"store_size:{op}:{mode}", size, value,
                  lambda: f"{tools.fmt_time(med)} at {size} vs {tools.fmt_time(ref_med)} at {REF_LAYERS}"
                  + (f", kernel growth x{kernel:.2f} divided out" if kernel and op in KERNEL_DIVIDED else ""))


# ---------------------------------------------------------------- whole-store operations

def _cli(store: SizedStore, *args: str) -> None:
    env = dict(os.environ, BTRFSX_HOME=store.home, BTRFSX_OPTIONS=",".join(store.options))
    subprocess.run([sys.executable, "-m", "btrfsx", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def _whole(benchmark, tools, floor, big: SizedStore, mode: str, size: int, op: str):
    d = big.driver
    fn = {"layer_infos()": d.layer_infos, "gc()": d.gc,
          "ls --json": lambda: _cli(big, "ls", "--json"), "status": lambda: _cli(big, "status")}[op]
    big.settle()
    if op == "gc()":
        assert not d.gc(), "gc found something to collect: not the case measured"
    benchmark.pedantic(fn, rounds=_whole_rounds(op, size), warmup_rounds=1)
    med = tools.bench_median(benchmark)
    listed = len(d.layer_infos()) if op == "layer_infos()" else None
    floor_s = None
    if op in ("layer_infos()", "ls --json"):
        samples = floor.run("list", big.fs.mountpoint, "20")
        floor_s = tools.median(samples["list"]) / 1e9
        tools.also(benchmark, f"C floor at {size} layers: TREE_SEARCH_V2 of the root tree + the quota tree",
                   floor_s, samples=20, note=f"{samples['subvols'][0]} subvolumes; the root tree pass alone "
                   f"{tools.fmt_time(tools.median(samples['list_root']) / 1e9)}")
    tools.record(benchmark, f"{size} layers: {op}", reference="C floor (listing)" if floor_s else "",
                 reference_s=floor_s, btrfsx=True)
    if listed is not None:
        benchmark.extra_info["layers"] = listed
    SHARED[(mode, size, op)] = {"median": med, "floor": floor_s}
    _check_target(benchmark, tools, f"store_size_whole:{op}:{mode}", size, med,
                  lambda: f"{tools.fmt_time(med)} at {size} layers"
                  + (f" (C floor {tools.fmt_time(floor_s)})" if floor_s else ""))


def test_store_size(benchmark, stores, tools, floor, store_case):
    mode, size, op = store_case
    big, ref = stores.pair(mode, size)
    benchmark.group = f"store size, quotas {mode}: {op}"
    benchmark.extra_info.update({"layers": size, "mode": mode, "op": op, "build_s": round(big.build_s, 1)})
    if op in WHOLE:
        _whole(benchmark, tools, floor, big, mode, size, op)
    else:
        _per_layer(benchmark, tools, floor, big, ref, mode, size, op)
