"""Crash consistency: a worker process loops over create (with and without
parent and size), apply_diff, receive (of a full send of a layer) and remove, and is killed with SIGKILL at random
moments.  After each kill a fresh Driver on the same home must see every layer
id either absent or complete (its subvolume, its quota file and qgroup limit
when it has a size, each diff applied whole or not at all, its parent); gc()
must then remove every leftover and nothing that belongs to a complete layer.
The store accumulates state across kills.

The worker journals an intent record (fsync'd) before each operation and a
done record after it, so the checker knows what was complete before the kill
and which operation was in flight.  Each diff adds files under ``x/TAG/`` and
a manifest ``manifests/TAG`` listing them, all derived from TAG, so presence
is checkable file by file.

Kills come at random moments after the worker is ready, now and then during
its start-up, and in about half the rounds a few milliseconds after the intent
record of an operation of a chosen kind (so short operations get their share).
``test_crash_consistency_at_named_points`` kills the worker deterministically
(it SIGKILLs itself from a hook) at the narrow windows a random kill rarely
hits, with the same checks.

Stale qgroups: with simple quotas the kernel keeps the qgroup of a deleted
subvolume while extents it allocated are still shared by another subvolume
(destroying it fails with EBUSY), so only stale qgroups that carry no usage
(any, with full qgroups) must be gone after gc; the others are counted.

Violations are collected over the whole run (so one run gives every kind of
failure and the full figures) and fail the test at the end, each category with
examples: the round, how the kill came, the operation in flight and the ops
before it; every one is written to ``violations.tsv`` in the test's tmp_path.
When gc itself raises, that is a violation, and the store is repaired by hand
(see :meth:`Harness.gc`) so that the run goes on.  ``BTRFSX_CRASH_SEED``
changes the seed (kill timing is never reproducible anyway).
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from btrfsx import Driver, _ioctl, quota
from btrfsx.mounts import is_mountpoint
from btrfsx.options import parse_storage_opt

pytestmark = pytest.mark.btrfs

NIDS = 12
IDS = [f"L{i:02d}" for i in range(NIDS)]
SIZES = ("64M", "128M", "256M")
MAX_DIFFS = 10          # the worker applies to, and snapshots, layers with fewer diffs than this
BASE_SEED = int(os.environ.get("BTRFSX_CRASH_SEED", "20241127"))

# ---------------------------------------------------------------- shared by the worker and the checker

DIFFGEN = r'''
import random as _random

def diff_files(tag):
    """The files diff TAG adds, in tar order: [(path, bytes)], the manifest among them."""
    rng = _random.Random("diff:" + tag)
    kind = rng.random()
    if kind < 0.45:
        n, lo, hi = rng.randint(1, 8), 0, 4096
    elif kind < 0.9:
        n, lo, hi = rng.randint(20, 150), 0, 2048
    else:
        n, lo, hi = rng.randint(2, 5), 64 << 10, 512 << 10
    files = [(f"x/{tag}/s{i % 4}/f{i:03d}", rng.randbytes(rng.randint(lo, hi))) for i in range(n)]
    manifest = "".join(p + "\n" for p, _ in files).encode()
    files.insert(rng.randint(0, len(files)), (f"manifests/{tag}", manifest))
    return files

def diff_dirs(tag):
    """The directories that belong to diff TAG alone."""
    n = sum(1 for p, _ in diff_files(tag) if p.startswith("x/"))
    return [f"x/{tag}"] + [f"x/{tag}/s{k}" for k in range(min(n, 4))]
'''

WORKER = DIFFGEN + r'''
import io, json, os, sys, tarfile
from btrfsx import CreateOpts, Driver

home, seed, journal_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
options = json.loads(sys.argv[4])
IDS, SIZES, MAX_DIFFS = json.loads(sys.argv[5])

jfd = os.open(journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

def record(**r):
    os.write(jfd, (json.dumps(r, sort_keys=True) + "\n").encode())
    os.fsync(jfd)

def tar_of(tag):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(name):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1
            tar.addfile(info)
        add_dir("x")
        add_dir("manifests")
        for d in diff_dirs(tag):
            add_dir(d)
        for path, data in diff_files(tag):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()

def ndiffs(layer):
    try:
        return len(os.listdir(os.path.join(home, "subvolumes", layer, "manifests")))
    except FileNotFoundError:
        return 0

# A named kill point (the deterministic runs): the worker SIGKILLs itself there,
# in the first operation of the right kind that gets there.
point = sys.argv[6] if len(sys.argv) > 6 else ""
current = {}
if point:
    import signal
    from btrfsx import _ioctl as _io, store as _store
    from btrfsx.archive import apply as _apply
    from btrfsx import transport as _transport

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(owner, name, kinds, after=False, when=lambda *a: True):
        orig = getattr(owner, name)
        def hooked(*a, **k):
            if current.get("kind") in kinds and when(*a):
                if after:
                    orig(*a, **k)
                die()
            return orig(*a, **k)
        setattr(owner, name, hooked)

    def sized(*a):
        return bool(current.get("size"))

    def nth_entry(*a):
        current["entries"] = current.get("entries", 0) + 1
        return current["entries"] == 9  # past the directories: some files written, not all

    def nth_write(*a):
        current["writes"] = current.get("writes", 0) + 1
        return current["writes"] == 2  # `btrfs receive` at work on the stream's first megabyte

    def the_mark(fd, data):  # the write of the marker file (or of the temporary file it is made from)
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("applying")

    {
        "create+size: quota file written, not published":
            lambda: hook(_store.Store, "publish", ("create",), when=sized),
        "snapshot+size: before the snapshot ioctl": lambda: hook(_io, "snapshot", ("snapshot",), when=sized),
        "remove: subvolume destroyed, quota file not removed": lambda: hook(_store.Store, "remove_quota", ("remove",)),
        "apply_diff: backup's lineage recorded, no applying mark":
            lambda: hook(_store.Store, "record_lineage", ("apply",), after=True),
        "apply_diff: applying mark created, not written": lambda: hook(os, "write", ("apply",), when=the_mark),
        "apply_diff: midway through the tar": lambda: hook(_apply._Applier, "apply", ("apply",), when=nth_entry),
        "apply_diff: whole diff applied, not committed": lambda: hook(_store.Store, "commit_apply", ("apply",)),
        "apply_diff: committed, backup's lineage not dropped": lambda: hook(_store.Store, "forget_lineage", ("apply",)),
        "receive: midway through the stream": lambda: hook(_transport._Relay, "write", ("receive",), when=nth_write),
        "receive: twin in place, layer not published": lambda: hook(_store.Store, "publish", ("receive",)),
    }[point]()

rng = _random.Random(seed)
d = Driver(home, options=options)
present = set(i for i in d.layers() if i in IDS)
record(ev="ready", pid=os.getpid(), layers=sorted(present))
for n in range(100000):
    free = [i for i in IDS if i not in present]
    have = sorted(present)
    roomy = [i for i in have if ndiffs(i) < MAX_DIFFS]
    choices = []
    if free:
        choices += [("create", 2), ("snapshot", 3 if roomy else 0), ("receive", 2 if have else 0)]
    if roomy:
        choices.append(("apply", 5))
    if have:
        choices.append(("remove", 1 + 4 * (len(have) > len(IDS) // 2)))
    kinds, weights = zip(*[c for c in choices if c[1]])
    kind = rng.choices(kinds, weights)[0]
    size = rng.choice(SIZES) if kind in ("create", "snapshot", "receive") and rng.random() < 0.5 else None
    opts = CreateOpts(storage_opt={"size": size}) if size else None
    rec = dict(ev="begin", n=n, kind=kind, size=size)
    if kind == "create":
        rec.update(id=rng.choice(free), parent=None)
    elif kind == "snapshot":
        rec.update(id=rng.choice(free), parent=rng.choice(roomy))
    elif kind == "receive":  # a full send of a layer, received under a free id
        rec.update(id=rng.choice(free), parent=None, source=rng.choice(have))
    elif kind == "apply":
        rec.update(id=rng.choice(roomy), tag=f"{seed}.{n}")
        data = tar_of(rec["tag"])  # made before the intent: only the apply is in flight
    else:
        rec.update(id=rng.choice(have))
    record(**rec)
    current.clear()
    current.update(rec)
    try:
        if kind in ("create", "snapshot"):
            d.create(rec["id"], rec["parent"], opts)
            present.add(rec["id"])
        elif kind == "receive":
            with d.send(rec["source"]) as stream:
                d.receive(rec["id"], stream, None, opts)
            present.add(rec["id"])
        elif kind == "apply":
            d.apply_diff(rec["id"], None, io.BytesIO(data))
        else:
            d.remove(rec["id"])
            present.discard(rec["id"])
    except Exception as e:
        current.clear()
        record(ev="done", n=n, ok=False, err=f"{type(e).__name__}: {e}", errno=getattr(e, "errno", None))
    else:
        current.clear()
        record(ev="done", n=n, ok=True)
d.close()
'''

_gen: dict = {}
exec(DIFFGEN, _gen)
diff_files = _gen["diff_files"]
diff_dirs = _gen["diff_dirs"]

# ---------------------------------------------------------------- the model


@dataclass
class Layer:
    uid: str                      # this incarnation of the id (the op that made it)
    parent: str | None
    parent_uid: str | None
    size: int | None              # bytes, when made with a size
    diffs: tuple[str, ...] = ()   # tags applied (inherited from the parent included)


@dataclass
class Violation:
    category: str
    layer: str | None
    detail: str
    context: str


@dataclass
class Stats:
    kills: int = 0
    aimed: int = 0                # kills shortly after an intent record, rather than at a random time
    rounds: int = 0
    exited: int = 0
    ops_done: int = 0
    ops_failed: collections.Counter = field(default_factory=collections.Counter)
    inflight: collections.Counter = field(default_factory=collections.Counter)          # kind -> n
    inflight_took: collections.Counter = field(default_factory=collections.Counter)     # kind -> took effect
    marked: int = 0               # staging directories holding an applying marker after the kill
    gc_subvolumes: int = 0
    gc_undone: int = 0
    gc_quota_files: int = 0
    gc_qgroups: int = 0
    pinned_qgroups: int = 0       # stale, still charged with shared extents: the kernel refuses (simple quotas)
    lineage_leftovers: int = 0
    repairs: int = 0              # stores the harness had to repair by hand after gc raised
    seconds: float = 0.0

    def merge(self, other: Stats) -> None:
        for name, value in vars(other).items():
            if isinstance(value, collections.Counter):
                getattr(self, name).update(value)
            else:
                setattr(self, name, getattr(self, name) + value)

    def line(self, label: str) -> str:
        kinds = ", ".join(f"{k} {n} ({self.inflight_took[k]} took effect)" if k not in ("idle", "startup")
                          else f"{k} {n}" for k, n in sorted(self.inflight.items()))
        failed = sum(self.ops_failed.values())
        return (f"crash consistency [{label}]: {self.kills} kills ({self.aimed} aimed at an op) in {self.rounds} rounds"
                f" ({self.exited} workers exited before the kill), {self.ops_done} ops completed"
                f" ({failed} failed: {dict(self.ops_failed) or 'none'}); in flight at the kill: {kinds};"
                f" applies killed after their marker: {self.marked} (undone by gc: {self.gc_undone});"
                f" gc removed {self.gc_subvolumes} subvolumes,"
                f" {self.gc_quota_files} quota files, {self.gc_qgroups} qgroups;"
                f" stale qgroups the kernel keeps (simple quotas, shared extents): {self.pinned_qgroups} seen;"
                f" lineage files of dead subvolumes left: {self.lineage_leftovers};"
                f" gc raised, store repaired by the harness: {self.repairs}; {self.seconds:.1f} s")


def _sync_and_wait(fd: int) -> None:
    """Commit, and wait for the cleaner to drop every deleted subvolume."""
    _ioctl.sync(fd)
    try:
        _ioctl.subvolume_sync_wait(fd, 0, _ioctl.SUBVOL_SYNC_WAIT_FOR_QUEUED)
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.ENOENT):  # ENOENT: nothing queued
            raise
    _ioctl.sync(fd)


def _read_journal(path: Path) -> list[dict]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for line in text.split(b"\n")[:-1]:  # an unterminated last line was cut by the kill
        records.append(json.loads(line))
    return records


def _describe(rec: dict | None) -> str:
    if rec is None:
        return "none"
    if rec["kind"] == "create":
        return f"create({rec['id']}{', size=' + rec['size'] if rec['size'] else ''})"
    if rec["kind"] == "snapshot":
        return f"create({rec['id']}, parent={rec['parent']}{', size=' + rec['size'] if rec['size'] else ''})"
    if rec["kind"] == "receive":
        return f"receive({rec['id']}, send of {rec['source']}{', size=' + rec['size'] if rec['size'] else ''})"
    if rec["kind"] == "apply":
        return f"apply_diff({rec['id']}, tag {rec['tag']}: {len(diff_files(rec['tag']))} files)"
    return f"remove({rec['id']})"


def _kind(rec: dict) -> str:
    return rec["kind"] + ("+size" if rec.get("size") else "")


class Harness:
    def __init__(self, fs, tmp_path: Path, mode: str, seed: int):
        self.home = fs.mountpoint / "home"
        self.tmp = tmp_path
        self.mode = mode
        self.options = ["btrfsx.quota=qgroup"] if mode == "qgroup" else []
        self.rng = random.Random(seed)
        self.seed = seed
        self.model: dict[str, Layer] = {}
        self.stats = Stats()
        self.violations: list[Violation] = []
        self._seen: set = set()
        self._expected: dict[str, list[tuple[str, bytes]]] = {}
        self.context = ""
        self.round = 0
        self.pending_failed: list[dict] = []   # applies that failed this round: must have left nothing
        self.broken: set[str] = set()          # layers to drop after a violation left them unknown

    # ------------------------------------------------------------ reporting

    def violate(self, category: str, layer: str | None, detail: str, key=None) -> None:
        if key is not None:  # reported once (a standing condition, seen again every round)
            if (category, layer, key) in self._seen:
                return
            self._seen.add((category, layer, key))
        self.violations.append(Violation(category, layer, detail, self.context))

    # ------------------------------------------------------------ one diff in one layer

    def expected(self, tag: str) -> list[tuple[str, bytes]]:
        if tag not in self._expected:
            self._expected[tag] = diff_files(tag)
        return self._expected[tag]

    def presence(self, root: Path, tag: str, shared_dirs: bool) -> tuple[str, str]:
        """("all" | "none" | "partial", detail) of diff ``tag`` in layer ``root``."""
        ok, bad, missing = [], [], []
        for rel, data in self.expected(tag):
            try:
                got = (root / rel).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                missing.append(rel)
                continue
            (ok if got == data else bad).append(rel)
        dirs = diff_dirs(tag) + (["x", "manifests"] if shared_dirs else [])
        dirs_present = [d for d in dirs if (root / d).is_dir()]
        extra = []
        top = root / "x" / tag
        if top.is_dir():
            want = {rel for rel, _ in self.expected(tag)} | set(dirs)
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    if rel not in want:
                        extra.append(rel)
        total = len(self.expected(tag))
        if not missing and not bad and not extra and len(dirs_present) == len(dirs):
            return "all", f"all {total} files"
        if not ok and not bad and not extra and not dirs_present:
            return "none", "nothing"
        return "partial", (f"{len(ok)} of {total} files present and right, {len(bad)} with wrong content"
                           f"{' (' + ', '.join(bad[:3]) + ')' if bad else ''}, {len(missing)} missing"
                           f"{' (' + ', '.join(missing[:3]) + ')' if missing else ''}, {len(extra)} unexpected,"
                           f" {len(dirs_present)} of {len(dirs)} of its directories")

    # ------------------------------------------------------------ the invariants

    def check_layers(self, d: Driver, fd: int, inflight: dict | None, phase: str) -> dict:
        """Check every id against the model (the in-flight op may have happened
        or not); returns what was observed of the in-flight op."""
        subvolumes = self.home / "subvolumes"
        quotas = self.home / "quotas"
        on_disk = set(os.listdir(subvolumes))
        for name in sorted(on_disk - set(IDS)):
            self.violate("stray entry in subvolumes/", name, f"{phase}: {name!r} is no layer the worker made", key=name)
        _ioctl.sync(fd)
        qmode = quota.mode(fd)
        infos = {info.id: info for info in d.layer_infos()}
        seen: dict = {}
        # a parent whose in-flight remove happened is gone for its children too
        removing = (inflight["id"] if inflight and inflight["kind"] == "remove" and not d.exists(inflight["id"])
                    else None)
        for lid in IDS:
            model = self.model.get(lid)
            exists = d.exists(lid)
            target = inflight if inflight and inflight["id"] == lid else None
            expect = model
            if target and target["kind"] in ("create", "snapshot", "receive"):
                seen["exists"] = exists
                if exists:
                    parent = self.model.get(target["parent"]) if target["parent"] else None
                    source = self.model.get(target["source"]) if target.get("source") else parent
                    expect = Layer(f"{self.round}.{target['n']}", target["parent"], parent and parent.uid,
                                   parse_storage_opt({"size": target["size"]}) if target["size"] else None,
                                   source.diffs if source else ())
            elif target and target["kind"] == "remove":
                seen["exists"] = exists
                if not exists:
                    expect = None
            if expect is None:
                if exists:
                    self.violate("layer present that should not be", lid,
                                 f"{phase}: the journal has no layer {lid} (in flight: {_describe(inflight)})")
                continue
            if not exists:
                self.violate("complete layer lost", lid, f"{phase}: layer {lid} (made by op {expect.uid}) is gone")
                continue
            path = subvolumes / lid
            if not _ioctl.is_subvolume(str(path)):
                self.violate("layer is not a subvolume", lid, f"{phase}: {path} is not a subvolume root")
                continue
            # its quota file and qgroup limit
            qfile = quotas / lid
            try:
                qtext = qfile.read_text()
            except FileNotFoundError:
                qtext = None
            lfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                subvolid = _ioctl.subvolume_id(lfd)
            finally:
                os.close(lfd)
            limits = _ioctl.qgroup_limits(fd, subvolid) if qmode is not quota.QuotaMode.OFF else None
            limit = limits.max_referenced if limits and limits.flags & _ioctl.QGROUP_LIMIT_MAX_RFER else None
            what = f"{lid} ({'size ' + str(expect.size) if expect.size else 'no size'}, made by op {expect.uid})"
            if expect.size is not None:
                if qtext != str(expect.size):
                    self.violate("quota file of a sized layer", lid,
                                 f"{phase}: {qfile} holds {qtext!r}, expected {str(expect.size)!r} for layer {what}")
                if qmode is quota.QuotaMode.OFF:
                    self.violate("qgroup limit of a sized layer", lid, f"{phase}: quotas are off, layer {what}")
                elif limit != expect.size:
                    self.violate("qgroup limit of a sized layer", lid,
                                 f"{phase}: qgroup 0/{subvolid} limit {limit}, expected {expect.size}, layer {what}")
            else:
                if qtext is not None:
                    self.violate("quota file of a layer without size", lid,
                                 f"{phase}: {qfile} holds {qtext!r}, layer {what}", key=expect.uid)
                if qmode is quota.QuotaMode.SIMPLE and limit is not None:
                    self.violate("qgroup limit of a layer without size", lid,
                                 f"{phase}: qgroup 0/{subvolid} limit {limit}, layer {what}", key=expect.uid)
            # its parent, by btrfs's parent UUID (and btrfsx's lineage records)
            want_parent = None
            if (expect.parent and expect.parent in self.model and self.model[expect.parent].uid == expect.parent_uid
                    and not (removing and expect.parent == removing)):
                want_parent = expect.parent
            info = infos.get(lid)
            got_parent = info.parent if info else "(not listed by layer_infos)"
            if got_parent != want_parent:
                self.violate(f"wrong parent {phase}", lid,
                             f"{phase}: parent({lid}) is {got_parent!r}, expected {want_parent!r}; layer {what}",
                             key=(expect.uid, got_parent))
            # its diffs: each applied one whole, the in-flight one whole or absent, nothing else
            for tag in expect.diffs:
                state, detail = self.presence(path, tag, shared_dirs=False)
                if state != "all":
                    self.violate("applied diff not whole", lid, f"{phase}: diff {tag} in {what}: {detail}",
                                 key=(expect.uid, tag))
            found = set()
            for sub in ("x", "manifests"):
                try:
                    found.update(os.listdir(path / sub))
                except FileNotFoundError:
                    pass
            live_tag = target["tag"] if target and target["kind"] == "apply" else None
            for tag in sorted(found - set(expect.diffs) - {live_tag}):
                self.violate("diff present that was not applied", lid, f"{phase}: {tag} in layer {what}",
                             key=(expect.uid, tag))
            if live_tag:
                state, detail = self.presence(path, live_tag, shared_dirs=not expect.diffs)
                seen["diff"] = state
                if state == "partial":
                    self.violate(f"part of a diff visible {phase}", lid,
                                 f"{phase}: {_describe(target)} killed midway: {detail}")
        return seen

    def check_store_after_gc(self, fd: int, stale_before: dict[int, int]) -> None:
        staging = self.home / ".btrfsx" / "staging"
        for name in sorted(os.listdir(staging)):
            content = sorted(os.listdir(staging / name)) if (staging / name).is_dir() else ["(not a directory)"]
            pid = name.split("-")[0]
            if content or pid != str(os.getpid()):
                self.violate("staging leftover after gc", None, f"{staging / name}: {content}", key=name)
        receiving = self.home / ".btrfsx" / "receiving"
        for name in sorted(os.listdir(receiving)) if receiving.is_dir() else ():
            self.violate("receive leftover after gc", None, f"{receiving / name} remains", key=name)
        twins = self.home / ".btrfsx" / "twins"
        for name in sorted(os.listdir(twins)) if twins.is_dir() else ():
            if not (self.home / "subvolumes" / name).is_dir():
                self.violate("twin of a gone layer after gc", name, f"{twins / name} remains", key=name)
        quotas = self.home / "quotas"
        if quotas.is_dir():
            layers = set(os.listdir(self.home / "subvolumes"))
            for name in sorted(os.listdir(quotas)):
                if name not in layers:
                    self.violate("quota file without its layer after gc", name, f"{quotas / name} remains", key=name)
        _sync_and_wait(fd)
        stale = quota.stale_qgroups(fd)
        for q in stale:
            usage = _ioctl.qgroup_usage(fd, q)
            if q in stale_before and (self.mode == "qgroup" or not stale_before[q]):
                self.violate("qgroup of a gone subvolume after gc", None,
                             f"qgroup 0/{q} (usage {usage}) was stale and removable before gc, and remains", key=q)
            elif q in stale_before:
                self.stats.pinned_qgroups += (q, "pinned") not in self._seen
                self._seen.add((q, "pinned"))
            # else it went stale during gc (a subvolume gc itself destroyed): the next gc must take it
        # lineage records of subvolumes that no longer exist (harmless unless they mislead parent())
        lineage = self.home / ".btrfsx" / "lineage"
        if lineage.is_dir():
            live = set()
            for lid in os.listdir(self.home / "subvolumes"):
                lfd = os.open(self.home / "subvolumes" / lid, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    live.add(str(_ioctl.get_subvolume_info(lfd).uuid))
                finally:
                    os.close(lfd)
            dead = [n for n in os.listdir(lineage) if not n.startswith(".") and n not in live]
            self.stats.lineage_leftovers = len(dead)
            # a record "dead subvolume D replaced U" with U a live layer's uuid is the leftover of an
            # interrupted apply_diff (not a swap that happened): layer_infos, mapping U to D, can
            # give the children of that layer no parent (now, or once the layer is swapped later)
            by_uuid = {}
            for lid in os.listdir(self.home / "subvolumes"):
                lfd = os.open(self.home / "subvolumes" / lid, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    by_uuid[str(_ioctl.get_subvolume_info(lfd).uuid)] = lid
                finally:
                    os.close(lfd)
            for name in dead:
                try:
                    replaces = (lineage / name).read_text().split("\n")[1]
                except (FileNotFoundError, IndexError):
                    continue
                if replaces in by_uuid:
                    self.violate("lineage record of an interrupted apply left after gc", by_uuid[replaces],
                                 f"{lineage / name} (a subvolume that no longer exists) records that it replaced"
                                 f" {replaces}, the uuid of live layer {by_uuid[replaces]}", key=name)

    # ------------------------------------------------------------ one round

    def run_worker(self, seed: int, journal: Path, point: str | None) -> tuple[bool, float, str]:
        """Start a worker, kill it; (killed, delay, how)."""
        args = [sys.executable, "-c", WORKER, str(self.home), str(seed), str(journal),
                json.dumps(self.options), json.dumps([IDS, SIZES, MAX_DIFFS])] + ([point] if point else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if point:  # it kills itself there
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.violate("kill point never reached", None, f"{point}: no operation got there in 30 s")
            _, err = proc.communicate()
            if proc.returncode != -signal.SIGKILL:
                self.violate("worker exited on its own", None,
                             f"exit status {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
            return proc.returncode == -signal.SIGKILL, 0.0, "point"
        how = self.rng.random()
        early = how < 0.1            # during start-up (imports, Driver())
        aimed = how >= 0.55          # shortly after the intent record of an op of a chosen kind
        target = (self.rng.randrange(2, 30), self.rng.choice(["create", "snapshot", "apply", "remove", "receive"]))
        delay = (self.rng.uniform(0.002, 0.2) if not aimed
                 else self.rng.uniform(0, 0.03 if target[1] == "apply" else 0.004))
        killed = False
        try:
            deadline = time.monotonic() + 60
            if not early:
                while not journal.exists() or b"\n" not in journal.read_bytes()[:4096]:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        break
                    time.sleep(0.001)
            if aimed:
                seen = 0
                give_up = time.monotonic() + 1.5  # that kind may not come: then kill whatever runs
                while proc.poll() is None and time.monotonic() < give_up:
                    data = journal.read_bytes()
                    lines = data.split(b"\n")[:-1]
                    hit = False
                    for line in lines[seen:]:
                        rec = json.loads(line)
                        if rec["ev"] == "begin" and rec["n"] >= target[0] and rec["kind"] == target[1]:
                            hit = True
                    seen = len(lines)
                    if hit:
                        break
                    time.sleep(0.0002)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
        finally:
            if proc.poll() is None and not killed:
                proc.kill()
            _, err = proc.communicate()
        if not killed:
            self.violate("worker exited on its own", None,
                         f"exit status {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
        return killed, delay, ("start" if early else "aimed" if aimed else "ready")

    def one_round(self, r: int, point: str | None = None) -> None:
        self.round = r
        seed = self.seed * 1000 + r
        journal = self.tmp / f"journal-{self.mode}-{r:04d}.jsonl"
        killed, delay, how = self.run_worker(seed, journal, point)
        self.stats.aimed += how == "aimed"
        self.stats.rounds += 1
        if killed:
            self.stats.kills += 1
        else:
            self.stats.exited += 1
        records = _read_journal(journal)
        # replay what completed; keep what was in flight
        ready = next((rec for rec in records if rec["ev"] == "ready"), None)
        if ready and sorted(ready["layers"]) != sorted(self.model):
            self.violate("the store at start differs from the journal", None,
                         f"round {r}: worker saw {ready['layers']}, the journal has {sorted(self.model)}")
        begun: dict[int, dict] = {}
        history = []
        inflight = None
        for rec in records:
            if rec["ev"] == "begin":
                begun[rec["n"]] = rec
                inflight = rec
            elif rec["ev"] == "done":
                op = begun[rec["n"]]
                inflight = None
                self.stats.ops_done += 1
                history.append(_describe(op) + ("" if rec["ok"] else f" -> {rec['err']}"))
                if rec["ok"]:
                    self.apply_op(op)
                else:
                    self.stats.ops_failed[_kind(op)] += 1
                    if not (op["kind"] == "apply" and rec.get("errno") in (errno.EDQUOT, errno.ENOSPC)):
                        self.violate("operation failed in the worker", op["id"],
                                     f"round {r}: {_describe(op)}: {rec['err']}")
                    if op["kind"] == "apply":
                        # a failed apply must leave nothing: checked as an in-flight one that did not happen
                        self.pending_failed.append(op)
        kind = ("startup" if ready is None else "idle") if inflight is None else _kind(inflight)
        self.stats.inflight[kind] += 1
        self.context = (f"{self.mode} quotas, round {r}, seed {seed}, killed "
                        + {"start": f"{delay * 1000:.0f} ms after start", "ready": f"{delay * 1000:.0f} ms after ready",
                           "aimed": f"{delay * 1000:.1f} ms after an intent record",
                           "point": f"at the point {point!r}"}[how]
                        + f", in flight: {_describe(inflight)}; last ops: {'; '.join(history[-4:]) or 'none'}")

        staging = self.home / ".btrfsx" / "staging"
        if staging.is_dir():  # applies killed after their marker: to be undone (by Driver() or gc)
            self.stats.marked += sum((staging / name / "applying").exists() for name in os.listdir(staging))
        d = Driver(self.home, options=self.options)
        fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY)
        try:
            before = self.check_layers(d, fd, inflight, "before gc")
            for op in self.pending_failed:
                self.check_failed_apply(op, "before gc")
            _sync_and_wait(fd)
            stale_before = {}
            for q in quota.stale_qgroups(fd):
                usage = _ioctl.qgroup_usage(fd, q)
                stale_before[q] = bool(usage and (usage.referenced or usage.exclusive))
            report = self.gc(d)
            self.stats.gc_subvolumes += len(report.subvolumes)
            self.stats.gc_undone += sum("undone" in s for s in report.subvolumes)
            self.stats.gc_quota_files += len(report.quota_files)
            self.stats.gc_qgroups += len(report.qgroups)
            self.check_store_after_gc(fd, stale_before)
            after = self.check_layers(d, fd, inflight, "after gc")
            for op in self.pending_failed:
                self.check_failed_apply(op, "after gc")
            self.pending_failed = []
            if inflight:
                self.resolve(d, inflight, before, after)
            self.quarantine(d)
        finally:
            os.close(fd)
            d.close()

    def gc(self, d: Driver):
        """``d.gc()``; when it raises, the violation is recorded and the store
        is repaired by hand so that the run can go on (btrfsx is not changed).
        The only repair: a marker file that never became a whole ``applying``
        marker (an empty ``applying``, cut between its creation and its one
        write, or a temporary ``applying.*`` never renamed) is deleted.  The
        marker is made before the apply touches the layer, so the layer is as
        it was; gc then takes the rest.  Any other error is raised."""
        staging = self.home / ".btrfsx" / "staging"
        for _attempt in range(3):
            try:
                return d.gc()
            except Exception as e:
                frames = traceback.extract_tb(e.__traceback__)
                where = ([f for f in frames if f"{os.sep}btrfsx{os.sep}" in f.filename] or frames)[-1]
                state, cut = {}, []
                for name in sorted(os.listdir(staging)):
                    if (staging / name).is_dir():
                        state[name] = sorted(os.listdir(staging / name))
                        for entry in state[name]:
                            path = staging / name / entry
                            if (entry.startswith("applying") and path.is_file()
                                    and (entry != "applying" or not path.read_bytes().strip())):
                                cut.append(path)
                self.violate("gc raised", None,
                             f"{type(e).__name__}: {e} (at {os.path.relpath(where.filename)}:{where.lineno},"
                             f" {where.line!r}); staging directories {state}; cut marker files"
                             f" {[f'{p.parent.name}/{p.name}: {p.read_bytes()!r}' for p in cut]}")
                if not cut:
                    raise
                for path in cut:
                    path.unlink()
                    self.stats.repairs += 1
        return d.gc()

    def check_failed_apply(self, op: dict, phase: str) -> None:
        layer = self.model.get(op["id"])
        if layer is None:
            return
        state, detail = self.presence(self.home / "subvolumes" / op["id"], op["tag"], shared_dirs=not layer.diffs)
        if state != "none":
            self.violate("failed apply_diff left part of its diff", op["id"], f"{phase}: {_describe(op)}: {detail}")

    def apply_op(self, op: dict) -> None:
        lid = op["id"]
        uid = f"{self.round}.{op['n']}"
        if op["kind"] in ("create", "snapshot", "receive"):
            parent = self.model.get(op["parent"]) if op["parent"] else None
            source = self.model.get(op["source"]) if op.get("source") else parent
            size = parse_storage_opt({"size": op["size"]}) if op["size"] else None
            self.model[lid] = Layer(uid, op["parent"], parent and parent.uid, size, source.diffs if source else ())
        elif op["kind"] == "apply":
            layer = self.model[lid]
            layer.diffs = layer.diffs + (op["tag"],)
        else:
            self.model.pop(lid, None)

    def resolve(self, d: Driver, op: dict, before: dict, after: dict) -> None:
        """Fold the in-flight op into the model as the store shows it after gc."""
        kind = _kind(op)
        if op["kind"] in ("create", "snapshot", "receive", "remove"):
            if before.get("exists") != after.get("exists"):
                self.violate("gc changed whether the in-flight op happened", op["id"],
                             f"{_describe(op)}: exists before gc {before.get('exists')}, after {after.get('exists')}")
            took = after.get("exists") == (op["kind"] != "remove")
            if took:
                self.apply_op(op)
        else:
            b, a = before.get("diff"), after.get("diff")
            if b in ("all", "none") and a != b:
                self.violate(f"{b} of an in-flight diff before gc, {a} after", op["id"],
                             f"{_describe(op)}: {b} of the diff before gc, {a} after")
            took = a == "all"
            if took:
                self.apply_op(op)
            elif a == "partial":
                self.broken.add(op["id"])
        self.stats.inflight_took[kind] += took

    def quarantine(self, d: Driver) -> None:
        """Layers whose state no longer follows the model (after a violation)
        are removed, so that the run goes on from a known state."""
        for lid in sorted(self.broken):
            if d.exists(lid):
                d.remove(lid)
            self.model.pop(lid, None)
        self.broken = set()
        for lid in IDS:
            if d.exists(lid) and lid not in self.model:
                d.remove(lid)
            elif not d.exists(lid):
                self.model.pop(lid, None)

    # ------------------------------------------------------------ the run

    def run(self, kills: int, points: list[str] = ()) -> None:
        """``kills`` rounds killed at random moments, then one round per named point."""
        start = time.monotonic()
        r = 0
        try:
            while self.stats.kills < kills and r < kills * 2:
                self.one_round(r)
                r += 1
            for point in points:
                self.one_round(r, point)
                r += 1
            # a last gc, with every deleted subvolume dropped: no removable stale qgroup left
            d = Driver(self.home, options=self.options)
            fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _sync_and_wait(fd)
                self.context = f"{self.mode} quotas, the final gc"
                stale_before = {}
                for q in quota.stale_qgroups(fd):
                    usage = _ioctl.qgroup_usage(fd, q)
                    stale_before[q] = bool(usage and (usage.referenced or usage.exclusive))
                report = self.gc(d)
                self.stats.gc_qgroups += len(report.qgroups)
                self.check_store_after_gc(fd, stale_before)
                if quota.mode(fd) is quota.QuotaMode.OFF:
                    self.violate("quotas never turned on", None, "no sized create completed")
            finally:
                os.close(fd)
                d.close()
        finally:
            self.stats.seconds = time.monotonic() - start
            # a killed worker's Driver leaves its bind mount of home behind
            while is_mountpoint(str(self.home)):
                _ioctl.umount(str(self.home), _ioctl.MNT_DETACH)

    def dump(self, path: Path) -> None:
        with open(path, "w") as f:
            for v in self.violations:
                f.write(f"{v.category}\t{v.layer or ''}\t{v.detail}\t[{v.context}]\n")

    def failure_report(self) -> str:
        by_cat: dict[str, list[Violation]] = collections.defaultdict(list)
        for v in self.violations:
            by_cat[v.category].append(v)
        out = [f"{len(self.violations)} violations ({self.mode} quotas; every one in {self.tmp / 'violations.tsv'}):"]
        for cat, vs in sorted(by_cat.items(), key=lambda kv: -len(kv[1])):
            out.append(f"- {cat}: {len(vs)}")
            for v in vs[:3]:
                out.append(f"    {v.layer or ''}: {v.detail}\n      [{v.context}]")
        return "\n".join(out)


# ---------------------------------------------------------------- the tests

_TOTAL = Stats()


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if _TOTAL.rounds:
        print("\n" + _TOTAL.line("all"))


def _run(btrfs_fs, tmp_path, mode: str, kills: int, points: list[str] = ()) -> None:
    harness = Harness(btrfs_fs, tmp_path, mode, BASE_SEED + (1 if mode == "qgroup" else 0) + 2 * len(points))
    try:
        harness.run(kills, points)
    finally:
        _TOTAL.merge(harness.stats)
        harness.dump(tmp_path / "violations.tsv")
        print("\n" + harness.stats.line(mode + (", named kill points" if points else "")))
    assert harness.stats.kills >= kills + len(points)
    if harness.violations:
        pytest.fail(harness.failure_report(), pytrace=False)


@pytest.mark.parametrize("mode,kills", [("simple", 8), ("qgroup", 4)])
def test_crash_consistency_short(btrfs_fs, tmp_path, mode, kills):
    _run(btrfs_fs, tmp_path, mode, kills)


@pytest.mark.slow
@pytest.mark.parametrize("mode,kills", [("simple", 160), ("qgroup", 60)])
def test_crash_consistency_full(btrfs_fs, tmp_path, mode, kills):
    _run(btrfs_fs, tmp_path, mode, kills)


#: Where the deterministic runs kill the worker (the worker's hooks implement each).
POINTS = [
    "create+size: quota file written, not published",
    "snapshot+size: before the snapshot ioctl",
    "remove: subvolume destroyed, quota file not removed",
    "apply_diff: backup's lineage recorded, no applying mark",
    "apply_diff: applying mark created, not written",
    "apply_diff: midway through the tar",
    "apply_diff: whole diff applied, not committed",
    "apply_diff: committed, backup's lineage not dropped",
    "receive: midway through the stream",
    "receive: twin in place, layer not published",
]


@pytest.mark.parametrize("mode,repeat", [
    ("simple", 1),
    pytest.param("simple", 3, marks=pytest.mark.slow),
    pytest.param("qgroup", 3, marks=pytest.mark.slow),
])
def test_crash_consistency_at_named_points(btrfs_fs, tmp_path, mode, repeat):
    """The same invariants, the worker killing itself at the narrow windows a
    random kill rarely hits: each point once (or ``repeat`` times), in turn,
    on one store."""
    _run(btrfs_fs, tmp_path, mode, 0, POINTS * repeat)
