"""Templates (issue #18): a fresh copy through ``Template.copy()`` against
the ways suites copy a prepared tree today, in the same run.

Two templates on one fresh filesystem: 10,000 files of 20 KiB (200 MiB, in
``tNNN/dNN/fNNNN``, 50 to a directory) and 100,000 small files (inline in
the metadata, as most files of an image or a source checkout are).  For
each, one round of every contender makes one fresh writable copy:

- **btrfsx**: ``with tpl.copy(): pass`` (snapshot, check, remove: enter + exit);
- ``shutil.copytree(template, dst, symlinks=True)``;
- ``cp -a --reflink=always template dst`` (shares the data extents, copies
  every inode and directory entry);
- ``cp -a template dst``.

The contenders are timed for making the copy only (removing it is left out
of their time, which favours them); ``dst`` is inside a subvolume made for
the round, destroyed afterwards.  Every round of every contender starts
settled (``settle``: committed, the cleaner done with what the last round
removed, committed again), the template's tree warm in the page cache as
a build leaves it; nothing is flushed to disk inside a contender's round
(their data is written back after the round, untimed: favours them again).

``reset()`` is timed on a copy in which 100 files (spread over the tree)
were just rewritten, as a test leaves one, against a fresh copy: the
commit of the reset's snapshot writes what the test dirtied.  The last
group takes 1,000 copies in a loop, as a session of 1,000 tests each
using the fixture does, nothing settled between them.

Not part of the default test run (``testpaths`` is ``tests/``): run with
``.venv/bin/python -m pytest benchmarks/test_template_bench.py`` as root
(about 2 minutes, most of it in copytree and cp; building the trees takes
5 to 10 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from btrfsx import _ioctl
from btrfsx.template import Template

pytestmark = pytest.mark.btrfs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

TREES = {"10k": (10_000, 20 * 1024 + 12), "100k": (100_000, None)}   # files, bytes per file (None: small)
LABEL = {"10k": "10,000 files, 200 MiB", "100k": "100,000 small files"}
COPY_ROUNDS = 30
RESET_ROUNDS = 20
CHANGED = 100
LOOP_COPIES = 1000
#: rounds of each contender per tree (copytree of 100,000 files takes seconds)
CONTENDER_ROUNDS = {"10k": 5, "100k": 3}
CONTENDERS = ("copytree", "cp --reflink=always", "cp -a")

#: medians shared between the tests (seconds)
SHARED: dict[str, float] = {}


def group(tree: str) -> str:
    return f"template: a fresh copy of {LABEL[tree]}"


class Bench:
    def __init__(self, fs, templates: dict[str, Template], build_s: dict[str, float]):
        self.fs = fs
        self.root = Path(fs.mountpoint)
        self.templates = templates
        self.build_s = build_s
        self.scratch = self.root / "scratch"
        self.scratch.mkdir()
        self.fd = os.open(self.root, _DIR_FLAGS)
        self.n = 0

    def round_dir(self) -> Path:
        """A fresh subvolume for one contender round (cheap to destroy whatever is copied into it)."""
        self.n += 1
        name = f"r{self.n}"
        sfd = os.open(self.scratch, _DIR_FLAGS)
        try:
            _ioctl.create_subvolume(sfd, name)
        finally:
            os.close(sfd)
        return self.scratch / name

    def clear_scratch(self) -> None:
        sfd = os.open(self.scratch, _DIR_FLAGS)
        try:
            for name in os.listdir(sfd):
                _ioctl.destroy_subvolume(sfd, name)
        finally:
            os.close(sfd)


@pytest.fixture(scope="module")
def bench(btrfs_available, tools):
    with tools.fresh_fs(size=16 << 30) as fs:
        templates: dict[str, Template] = {}
        build_s: dict[str, float] = {}
        try:
            for tree, (nfiles, size) in TREES.items():
                payload = os.urandom(size) if size else tools.PAYLOAD

                def build(path: Path, nfiles: int = nfiles, payload: bytes = payload) -> None:
                    tools.build_layer(path, nfiles, payload=payload)

                tpl = Template(fs.mountpoint / "home", f"tree-{tree}", build, key=f"{nfiles}:{len(payload)}")
                build_s[tree] = tools.timed(tpl.ensure)
                templates[tree] = tpl
                tools.warm(tpl.path)
            b = Bench(fs, templates, build_s)
            tools.settle(b.fd)
            yield b
            b.clear_scratch()
            os.close(b.fd)
        finally:
            for tpl in templates.values():
                tpl.close()


def _copy_enter_exit(tpl: Template) -> None:
    with tpl.copy():
        pass


@pytest.mark.parametrize("tree", TREES)
def test_copy_btrfsx(benchmark, bench, tools, tree):
    benchmark.group = group(tree)
    tpl = bench.templates[tree]
    benchmark.pedantic(_copy_enter_exit, args=(tpl,), setup=lambda: tools.settle(bench.fd),
                       rounds=COPY_ROUNDS, warmup_rounds=2)
    med = tools.bench_median(benchmark)
    SHARED[f"copy:{tree}"] = med
    benchmark.extra_info.update(files=TREES[tree][0], template_build_s=round(bench.build_s[tree], 3))
    tools.record(benchmark, "Template.copy() enter + exit", btrfsx=True,
                 note=f"template built in {bench.build_s[tree]:.2f} s")
    if tree == "100k" and "copy:10k" in SHARED:
        tools.target(benchmark, "template_flat", med / SHARED["copy:10k"],
                     f"100,000 files {tools.fmt_time(med)}, 10,000 files {tools.fmt_time(SHARED['copy:10k'])}")


def _contender(name: str, src: Path, dst: Path) -> None:
    if name == "copytree":
        shutil.copytree(src, dst, symlinks=True)
    elif name == "cp --reflink=always":
        subprocess.run(["cp", "-a", "--reflink=always", str(src), str(dst)], check=True)
    else:
        subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("tree", TREES)
def test_copy_contender(benchmark, bench, tools, tree, contender):
    benchmark.group = group(tree)
    src = bench.templates[tree].path

    def setup():
        bench.clear_scratch()
        tools.settle(bench.fd)
        return (contender, src, bench.round_dir() / "tree"), {}

    benchmark.pedantic(_contender, setup=setup, rounds=CONTENDER_ROUNDS[tree], warmup_rounds=0)
    bench.clear_scratch()
    tools.settle(bench.fd)
    med = tools.bench_median(benchmark)
    ours = SHARED.get(f"copy:{tree}")
    speedup = med / ours if med and ours else None
    tools.record(benchmark, contender, reference="Template.copy()", reference_s=ours, value=speedup,
                 note="ratio: how many times slower than Template.copy() (the copy only; its removal not timed)")
    if tree == "100k" and contender == "copytree":
        tools.target(benchmark, "template_vs_copytree", speedup,
                     f"copytree {tools.fmt_time(med)}, copy() {tools.fmt_time(ours)}")
    if tree == "100k" and contender == "cp --reflink=always":
        tools.target(benchmark, "template_vs_reflink", speedup,
                     f"cp --reflink {tools.fmt_time(med)}, copy() {tools.fmt_time(ours)}")


@pytest.mark.parametrize("tree", TREES)
def test_reset(benchmark, bench, tools, tree):
    """The pytest-benchmark pattern of docs/testing.md: every round starts
    from a pristine copy, made by ``reset`` in ``setup`` (here, the reset
    itself is what is timed, of a copy a round dirtied)."""
    benchmark.group = f"template: reset() of a copy of {LABEL[tree]} with {CHANGED} files changed"
    tpl = bench.templates[tree]
    base = tpl.path
    files = sorted(os.path.relpath(os.path.join(dp, f), base) for dp, _, fs in os.walk(base) for f in fs)
    changed = files[:: len(files) // CHANGED][:CHANGED]
    with tpl.copy() as path:
        def setup():
            tools.settle(bench.fd)
            for rel in changed:
                with open(path / rel, "r+b") as f:
                    f.write(b"changed by the test\n")
            return (path,), {}

        benchmark.pedantic(tpl.reset, setup=setup, rounds=RESET_ROUNDS, warmup_rounds=1)
        assert (path / changed[0]).read_bytes()[:7] != b"changed"
    med = tools.bench_median(benchmark)
    fresh = SHARED.get(f"copy:{tree}")
    tools.record(benchmark, f"Template.reset() after {CHANGED} changed files", reference="a fresh copy()",
                 reference_s=fresh, btrfsx=True)
    tools.target(benchmark, f"template_reset:{tree}", med / fresh if med and fresh else None,
                 f"reset {tools.fmt_time(med)}, fresh copy {tools.fmt_time(fresh)}")


def _loop(tpl: Template, n: int, write: bool) -> None:
    for _ in range(n):
        with tpl.copy() as path:
            if write:
                (path / "written-by-the-test").write_bytes(b"x" * 100)


@pytest.mark.parametrize("write", [False, True], ids=["untouched", "one file written"])
def test_1000_copies(benchmark, bench, tools, write):
    benchmark.group = f"template: {LOOP_COPIES:,} copies in a loop ({LABEL['100k']})"
    tpl = bench.templates["100k"]
    tools.settle(bench.fd)
    benchmark.pedantic(_loop, args=(tpl, LOOP_COPIES, write), rounds=1, iterations=1)
    total = tools.bench_median(benchmark)
    tools.settle(bench.fd)
    what = "each writing one file" if write else "untouched"
    tools.record(benchmark, f"{LOOP_COPIES:,} x Template.copy() enter + exit, {what}", btrfsx=not write,
                 note=f"{total / LOOP_COPIES * 1e3:.2f} ms a copy" if total else "")
    if not write:
        tools.target(benchmark, "template_1000_copies", total, f"{total / LOOP_COPIES * 1e3:.2f} ms a copy")
