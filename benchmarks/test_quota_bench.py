"""Quota modes side by side: each operation with quotas off, simple quotas
and full qgroups, on stores of a growing number of layers.

(How every group here is measured, settled and compared: the docstring of
``test_single_ops_bench.py``.)
"""

from __future__ import annotations

import contextlib
import os

import pytest

from btrfsx import CreateOpts, Driver
from btrfsx.loopback import Loopback

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

BASE_FILES = 1_000
QUOTA_LAYERS = (50, 200, 500)
QUOTA_ROUNDS = {"off": 30, "simple": 40, "qgroup": 5}

#: Medians shared between the tests of a group (seconds).
SHARED: dict = {}


def _open(path) -> int:
    return os.open(path, _DIR_FLAGS)


QUOTA_OPTIONS = {"off": [], "simple": ["btrfsx.quota=simple"], "qgroup": ["btrfsx.quota=qgroup"]}
SIZED = CreateOpts(storage_opt={"size": "1G"})


class QuotaStore:
    """A driver on a fresh filesystem in one quota mode, with a 1,000-file
    base and a growing number of snapshot layers of it."""

    def __init__(self, mode: str, fs: Loopback, driver: Driver, fd: int, tools):
        self.mode, self.fs, self.driver, self.fd, self.tools = mode, fs, driver, fd, tools
        self.ids = tools.Ids("fill")
        self.count = 0   # snapshot layers of base that exist
        self.level = 0   # the largest fill_to() so far

    def fill_to(self, n: int) -> None:
        """At least ``n`` snapshot layers (the measurements add a few more);
        the store only grows, so levels must come in increasing order."""
        if n < self.level:
            pytest.skip(f"the store was already filled to {self.level} layers (> {n}): tests ran out of order")
        self.level = n
        while self.count < n:
            self.driver.create(self.ids(), "base")
            self.count += 1

    def create(self, layer_id: str, sized: bool) -> None:
        self.driver.create(layer_id, "base", SIZED if sized and self.mode != "off" else None)
        self.count += 1

    def remove(self, layer_id: str) -> None:
        self.driver.remove(layer_id)
        self.count -= 1


@pytest.fixture(scope="class")
def qstores(btrfs_available, tools):
    """A QuotaStore per quota mode, each on a filesystem of its own (quotas
    are filesystem-wide), all three at once so that the modes are measured
    side by side."""
    with contextlib.ExitStack() as stack:
        stores = {}
        for mode in QUOTA_OPTIONS:
            fs = stack.enter_context(tools.fresh_fs(size=2 << 30))
            driver = Driver(fs.mountpoint / "store", QUOTA_OPTIONS[mode])
            stack.callback(driver.cleanup)
            fd = _open(fs.mountpoint)
            stack.callback(os.close, fd)
            if mode != "off":
                # quotas on before anything exists (no rescan of old data)
                driver.create("quota-on", None, SIZED)
                driver.remove("quota-on")
            driver.create("base")
            tools.build_layer(driver.get("base"), BASE_FILES)
            tools.settle(fd)
            stores[mode] = QuotaStore(mode, fs, driver, fd, tools)
        yield stores


QUOTA_OPS = ("sized create", "snapshot", "remove sized", "remove unsized")
#: layers vary slowest (the stores only grow), then the operation, then the mode
QUOTA_CASES = [(layers, op, mode) for layers in QUOTA_LAYERS for op in QUOTA_OPS for mode in QUOTA_OPTIONS]


class _QuotaOp:
    """One round's operation on one store: a sized or plain snapshot of
    base, or the remove of a layer made beforehand."""

    def __init__(self, store: QuotaStore, op: str, ids, n: int):
        self.store, self.op, self.ids = store, op, ids
        self.sized = op in ("sized create", "remove sized")
        self.made: list[str] = []
        if op.startswith("remove"):
            self.pending = [ids() for _ in range(n)]
            for layer in self.pending:
                store.create(layer, sized=self.sized)
            self.pending.reverse()

    def args(self) -> tuple:
        return (self.pending.pop(),) if self.op.startswith("remove") else (self.ids(),)

    def __call__(self, layer: str) -> None:
        if self.op.startswith("remove"):
            self.store.remove(layer)
        else:
            self.store.create(layer, self.sized)
            self.made.append(layer)

    def undo(self) -> None:
        """Back to the level (untimed; the next test settles)."""
        while self.made:
            self.store.remove(self.made.pop())
        while getattr(self, "pending", None):
            self.store.remove(self.pending.pop())


class TestQuotas:
    """Sized create, snapshot and remove with simple quotas vs quotas off
    vs full qgroups, at 50, 200 and 500 snapshot layers sharing one base (a
    measurement adds up to ``rounds + 1`` layers to the level, and removes
    them afterwards).  With quotas off, "sized create" is the plain snapshot
    and "remove sized" the plain remove, since a size needs quotas.

    The modes run side by side, each on its own filesystem: the quotas-off
    benchmark first, then each quota mode with the same operation on the
    quotas-off store in every round (timed by hand; before the timed
    operation in even rounds, after it in odd ones), so the ratio of
    a mode to quotas off is of rounds alternating under the same
    conditions.  Each measurement starts committed, with the cleaner done
    (up to a minute: full qgroups make dropping a shared snapshot slow); its
    rounds then run back to back."""

    @pytest.mark.parametrize("layers,op,mode", QUOTA_CASES)
    def test_quota(self, benchmark, qstores, tools, layers, op, mode):
        qstore, off = qstores[mode], qstores["off"]
        rounds = QUOTA_ROUNDS[mode]
        qstore.fill_to(layers)
        tools.settle(qstore.fd, timeout=60)
        benchmark.group = f"quotas: {op} of a snapshot at {layers} layers"
        prefix = f"{op.replace(' ', '-')}-{layers}"
        ours = _QuotaOp(qstore, op, tools.Ids(prefix), rounds + 1)
        theirs = None
        off_times: list[float] = []
        if mode != "off":
            off.fill_to(layers)
            theirs = _QuotaOp(off, op, tools.Ids(prefix + "-alt"), rounds + 1)
            tools.settle(off.fd, timeout=60)
        tools.settle(qstore.fd, timeout=60)

        def setup():
            # no commit between rounds: these run back to back, as a builder's
            # burst of creates or removes does (a remove timed right after a
            # commit pays for starting the next transaction, tens of
            # microseconds, more with quotas on: not what is compared here)
            # the quotas-off operation before the timed one in even rounds,
            # after it in odd ones (neither always pays for the other's wake)
            if theirs is not None and turn[0] % 2 == 0:
                off_times.append(tools.timed(theirs, *theirs.args()))
            return ours.args(), {}

        def teardown(*_):
            if theirs is not None and turn[0] % 2 == 1:
                off_times.append(tools.timed(theirs, *theirs.args()))
            turn[0] += 1

        turn = [0]
        try:
            benchmark.pedantic(ours, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=1)
        finally:
            ours.undo()
            if theirs is not None:
                theirs.undo()
        sized = ours.sized and mode != "off"
        if op.startswith("remove"):
            label = f"Driver.remove ({'sized' if sized else 'unsized'} layer)"
        else:
            label = "Driver.create(id, base, size=1G)" if sized else "Driver.create(id, base)"
        note = ""
        if mode == "off" and ours.sized:
            note = ("quotas off cannot size a layer: this is the plain "
                    + ("remove" if op.startswith("remove") else "snapshot") + ", the baseline")
        med = tools.bench_median(benchmark)
        if mode == "off":
            SHARED[("quota-off", op, layers)] = med
            tools.record(benchmark, f"quotas off: {label}", note=note, btrfsx=True)
            return
        alt = tools.median(off_times[1:]) if len(off_times) > 1 else None
        tools.also(benchmark, f"quotas off, alternating with {mode}: "
                   + ("Driver.remove (unsized layer)" if op.startswith("remove") else "Driver.create(id, base)"),
                   alt, samples=len(off_times) - 1)
        tid = f"quota_simple:{op}:{layers}"
        tools.record(benchmark, f"{mode}: {label}", reference="quotas off (alternating round by round)",
                     reference_s=alt,
                     target=tid if mode == "simple" and tid in tools.bench_targets.TARGETS else None)
