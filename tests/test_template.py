"""Templates (issue #18): a tree built once, handed out as pristine writable
copies; rebuilt when its key changes, never used half-built, built once by
racing processes, shared by pytest-xdist workers through the fixture."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from btrfsx import Driver, template
from btrfsx.template import Template, file_key, gc
from btrfsx.testing import add_nested
from tests_support import assert_same_tree

pytestmark = pytest.mark.btrfs

REPO = Path(__file__).resolve().parent.parent


def build_tree(path: Path) -> None:
    """A small tree of several kinds of entries."""
    (path / "etc").mkdir()
    (path / "etc" / "config").write_text("pristine\n")
    (path / "data").mkdir()
    for i in range(20):
        (path / "data" / f"f{i:02d}").write_bytes(bytes([i]) * (i * 100))
    (path / "bin").mkdir(mode=0o750)
    (path / "bin" / "tool").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(path / "bin" / "tool", 0o755)
    os.symlink("../etc/config", path / "bin" / "config-link")
    os.link(path / "etc" / "config", path / "etc" / "config.hardlink")


class Counter:
    """A build function that counts its calls in a file (as other processes' builds do)."""

    def __init__(self, path: Path, content: str = "v1", fail: BaseException | None = None):
        self.file = path
        self.content = content
        self.fail = fail

    def __call__(self, path: Path) -> None:
        with open(self.file, "a") as f:
            f.write(f"{os.getpid()}\n")
        build_tree(path)
        (path / "version").write_text(self.content)
        if self.fail is not None:
            raise self.fail

    @property
    def calls(self) -> int:
        return len(self.file.read_text().splitlines()) if self.file.exists() else 0


@pytest.fixture
def home(btrfs_dir) -> Path:
    return btrfs_dir / "home"


@pytest.fixture
def tpl(home, tmp_path):
    t = Template(home, "tree", Counter(tmp_path / "builds"), key="v1")
    try:
        yield t
    finally:
        t.close()


def layers(home: Path) -> list[str]:
    return sorted(os.listdir(home / "subvolumes"))


# ------------------------------------------------------------------ copies

def test_copy_has_the_templates_contents(tpl):
    path = tpl.ensure()
    assert path == tpl.path and tpl.is_current()
    with tpl.copy() as copy:
        assert copy.parent == path.parent and copy.name.startswith("tree@copy-")
        assert_same_tree(path, copy)
        assert (copy / "version").read_text() == "v1"


def test_template_is_read_only_and_its_copies_writable(tpl):
    tpl.ensure()
    with pytest.raises(OSError) as e:
        (tpl.path / "new").write_text("x")
    assert e.value.errno == 30  # EROFS
    with tpl.copy() as copy:
        (copy / "new").write_text("x")
        os.chmod(copy, 0o700)
        assert os.stat(copy).st_mode & 0o777 == 0o700
    assert os.stat(tpl.path).st_mode & 0o777 == 0o755


def test_writes_to_a_copy_reach_neither_the_template_nor_another_copy(tpl):
    with tpl.copy() as a, tpl.copy() as b:
        (a / "etc" / "config").write_text("changed in a\n")
        (a / "only-in-a").write_text("a")
        os.unlink(a / "data" / "f03")
        assert (b / "etc" / "config").read_text() == "pristine\n"
        assert not (b / "only-in-a").exists() and (b / "data" / "f03").exists()
        assert_same_tree(tpl.path, b)
        assert (tpl.path / "etc" / "config").read_text() == "pristine\n"


def test_copy_is_removed_on_exit_and_on_exception(tpl, home):
    with tpl.copy() as copy:
        (copy / "x").write_text("x")
        add_nested(copy, ("sub/nested", "sub/nested/deeper"))   # remove's nested-subvolume handling
    assert not copy.exists()
    with pytest.raises(RuntimeError, match="the test failed"):
        with tpl.copy() as copy2:
            raise RuntimeError("the test failed")
    assert not copy2.exists()
    assert layers(home) == ["tree"]


def test_copy_keep_is_kept_and_never_collected(tpl, home):
    with tpl.copy(keep=True) as kept:
        (kept / "result").write_text("for inspection")
    assert kept.name.startswith("tree@keep-") and (kept / "result").read_text() == "for inspection"
    assert tpl.gc() == []
    assert kept.exists()
    tpl.remove_copy(kept)
    assert not kept.exists()


def test_reset_restores_pristine_contents_at_the_same_path(tpl):
    with tpl.copy() as copy:
        (copy / "etc" / "config").write_text("changed\n")        # changed
        (copy / "data" / "new").write_text("added")               # added
        (copy / "newdir" / "deep").mkdir(parents=True)
        os.unlink(copy / "data" / "f07")                          # removed
        os.unlink(copy / "bin" / "config-link")
        os.chmod(copy / "bin", 0o700)
        assert tpl.reset(copy) == copy
        assert copy.exists()
        assert_same_tree(tpl.path, copy)
        # and again, from a copy opened as a str
        (copy / "x").write_text("x")
        tpl.reset(str(copy))
        assert_same_tree(tpl.path, copy)
    assert not copy.exists()


def test_reset_refuses_what_is_not_a_copy_of_this_template(tpl, home, tmp_path):
    tpl.ensure()
    with Template(home, "other", build_tree) as other, other.copy() as foreign:
        for path in (tpl.path, foreign, tmp_path, home / "subvolumes" / "tree@build-1-1"):
            with pytest.raises(ValueError, match=r"template 'tree': .* is not one of its copies"):
                tpl.reset(path)


# ------------------------------------------------------------------ building

def test_built_once_and_reused_by_another_template_object(tpl, home):
    tpl.ensure()
    with tpl.copy():
        pass
    tpl.ensure()
    assert tpl.build.calls == 1
    with Template(home, "tree", tpl.build, key="v1") as again:
        with again.copy() as copy:
            assert (copy / "version").read_text() == "v1"
    assert tpl.build.calls == 1
    record = tpl.record()
    assert record is not None and record["key"] == "v1"
    assert (home / ".btrfsx" / "templates" / "tree" / "record").is_file()


def test_stale_key_rebuilds(tpl, home, tmp_path):
    tpl.ensure()
    old_uuid = tpl.record()["uuid"]
    v2 = Counter(tmp_path / "builds-v2", content="v2")
    with Template(home, "tree", v2, key="v2") as new:
        assert not new.is_current()
        with new.copy() as copy:
            assert (copy / "version").read_text() == "v2"
        assert v2.calls == 1
        assert (new.path / "version").read_text() == "v2"      # the old contents are gone
        assert new.record()["uuid"] != old_uuid and new.record()["key"] == "v2"
        # the first object's next copy finds the template replaced under it,
        # and rebuilds its own rather than hand out a copy of v2
        assert not tpl.is_current()
        with tpl.copy() as copy:
            assert (copy / "version").read_text() == "v1"
        assert tpl.build.calls == 2
    assert layers(home) == ["tree"]


def test_failing_build_leaves_no_template_and_raises(home, tmp_path):
    bad = Counter(tmp_path / "builds", fail=ValueError("schema is broken"))
    with Template(home, "db", bad, key="k") as t:
        with pytest.raises(ValueError, match="schema is broken") as e:
            t.ensure()
        assert any("template 'db': its build failed" in note for note in e.value.__notes__)
        assert not t.is_current() and not t.path.exists()
        assert layers(home) == []
        with pytest.raises(ValueError, match="schema is broken"):
            with t.copy():
                pass
        assert layers(home) == []
        assert bad.calls == 2       # tried again: a failed build is not remembered as built
        t.build = Counter(tmp_path / "good")
        with t.copy() as copy:
            assert (copy / "version").read_text() == "v1"


def test_failing_rebuild_keeps_the_stale_template_unused(tpl, home, tmp_path):
    tpl.ensure()
    broken = Counter(tmp_path / "broken", fail=OSError(28, "No space left on device"))
    with Template(home, "tree", broken, key="v2") as new:
        with pytest.raises(OSError, match="No space left"):
            new.ensure()
        assert not new.is_current()
        with pytest.raises(OSError, match="No space left"):
            with new.copy():
                pass
    assert tpl.is_current()     # v1's template is still there, for v1
    assert layers(home) == ["tree"]


def test_keyboard_interrupt_during_build_leaves_nothing(home):
    def interrupted(path):
        (path / "half").write_text("x")
        raise KeyboardInterrupt
    with Template(home, "t", interrupted) as t:
        with pytest.raises(KeyboardInterrupt):
            t.ensure()
    assert layers(home) == []


def test_nested_subvolumes_of_a_build_are_warned_about(home, caplog):
    def with_nested(path):
        (path / "file").write_text("x")
        add_nested(path, ("var/lib/machines",))
    with Template(home, "n", with_nested) as t, caplog.at_level(logging.WARNING, "btrfsx.template"):
        with t.copy() as copy:
            assert (copy / "file").exists()
            assert (copy / "var/lib/machines").is_dir() and not os.listdir(copy / "var/lib/machines")
    assert "made 1 nested subvolume(s) (machines)" in caplog.text
    assert layers(home) == ["n"]


def test_layer_of_the_name_that_is_no_template_is_never_replaced(home):
    with Driver(home) as d:
        d.create("mine")
    with Template(home, "mine", build_tree) as t:
        with pytest.raises(FileExistsError, match="layer 'mine' exists and is not a template"):
            t.ensure()
    # but it can serve as one as it is (build=None: `btrfsx run --from mine`)
    with Template(home, "mine", None) as t:
        with t.copy() as copy:
            assert copy.name.startswith("mine@copy-")
    with Template(home, "absent", None) as t:
        with pytest.raises(FileNotFoundError, match="template 'absent': layer 'absent' does not exist"):
            t.ensure()


def test_remove(tpl, home):
    tpl.ensure()
    with tpl.copy(keep=True) as kept:
        pass
    tpl.remove()
    assert not tpl.path.exists() and tpl.record() is None
    assert layers(home) == [kept.name]      # kept copies are the user's
    with pytest.raises(FileNotFoundError, match="template 'tree' does not exist"):
        tpl.remove()
    tpl.ensure()                            # and built again on demand
    assert tpl.build.calls == 2


def test_invalid_names(home):
    for name in ("a@b", "", "a/b", "..", "x" * 201):
        with pytest.raises(ValueError, match="invalid"):
            Template(home, name, build_tree)
    with pytest.raises(TypeError, match="key must be a str"):
        Template(home, "t", build_tree, key=3)  # type: ignore[arg-type]


def test_file_key(tmp_path):
    (tmp_path / "schema.sql").write_text("create table t (a int);")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001.sql").write_text("alter table t add b int;")
    k1 = file_key(tmp_path / "schema.sql", tmp_path / "migrations")
    assert k1 == file_key(tmp_path / "schema.sql", tmp_path / "migrations")
    (tmp_path / "migrations" / "002.sql").write_text("")
    assert file_key(tmp_path / "schema.sql", tmp_path / "migrations") != k1
    assert len(k1) == 64


# ------------------------------------------------------------------ running a command in a copy

def test_run(tpl, home):
    ok = tpl.run(["sh", "-c", 'test "$PWD" = "$BTRFSX_COPY" && test -f etc/config && echo x > new'])
    assert ok.returncode == 0 and ok.kept is None
    assert layers(home) == ["tree"]
    failed = tpl.run(["sh", "-c", "echo inspect > result; exit 3"], keep=True)
    assert failed.returncode == 3 and failed.exit_status == 3
    assert failed.kept is not None and (failed.kept / "result").read_text() == "inspect\n"
    tpl.remove_copy(failed.kept)
    killed = tpl.run(["sh", "-c", "kill -TERM $$"])
    assert killed.returncode == -signal.SIGTERM and killed.exit_status == 128 + signal.SIGTERM
    with pytest.raises(FileNotFoundError, match="command not found"):
        tpl.run(["no-such-command-btrfsx"], keep=True)
    assert layers(home) == ["tree"]


# ------------------------------------------------------------------ processes

def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"child exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{path} not made within {timeout} s"
        time.sleep(0.01)


KILLED_BUILD = """
import os, sys, time
from pathlib import Path
from btrfsx.template import Template
home, started = sys.argv[1:3]
def build(path):
    (path / "half-built").write_text("x")
    Path(started).touch()
    time.sleep(60)
Template(home, "t", build, key="k").ensure()
"""


def test_killed_build_is_never_used_and_is_collected(btrfs_fs, tmp_path):
    home = btrfs_fs.mountpoint      # a mount point: no bind mount for the killed process to leave
    started = tmp_path / "started"
    proc = _python(KILLED_BUILD, str(home), str(started))
    try:
        _wait_for(started, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftover = f"t@build-{proc.pid}-0"
    assert layers(home) == [leftover]
    builds = Counter(tmp_path / "builds")
    with Template(home, "t", builds, key="k") as t:
        assert not t.is_current()
        with t.copy() as copy:
            assert not (copy / "half-built").exists()
            assert (copy / "version").read_text() == "v1"
        assert builds.calls == 1
    assert layers(home) == ["t"]          # the leftover collected by the build


DEAD_COPIES = """
import os, signal, sys
from pathlib import Path
from btrfsx.template import Template
home = sys.argv[1]
t = Template(home, "t", lambda p: (p / "f").write_text("x"), key="k")
t.new_copy()
t.new_copy(keep=True)
def build(path):
    os.kill(os.getpid(), signal.SIGKILL)
Template(home, "u", build).ensure()
"""


def test_gc_collects_what_dead_processes_left(btrfs_fs):
    home = btrfs_fs.mountpoint
    proc = _python(DEAD_COPIES, str(home))
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    pid = proc.pid
    left = layers(home)
    copy, keep, build = (next(n for n in left if n.startswith(f"{p}-{pid}-"))
                         for p in ("t@copy", "t@keep", "u@build"))
    assert left == ["t", copy, keep, build]
    with Template(home, "t", None) as t:
        assert t.gc() == [copy]
    assert gc(home) == [build]
    assert layers(home) == ["t", keep]
    # and gc leaves a live process's copies and builds alone
    with Template(home, "t", None) as t, t.copy() as mine:
        assert gc(home) == [] and mine.exists()


RACER = """
import os, sys, time
from pathlib import Path
from btrfsx.template import Template
home, counter, go = sys.argv[1:4]
def build(path):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.0)       # long enough for the others to arrive meanwhile
    (path / "data").write_text("built")
while not os.path.exists(go):
    time.sleep(0.002)
with Template(home, "t", build, key="k") as t, t.copy() as copy:
    print((copy / "data").read_text())
"""


def test_racing_processes_build_once(btrfs_fs, tmp_path):
    home = btrfs_fs.mountpoint
    counter, go = tmp_path / "builds", tmp_path / "go"
    procs = [_python(RACER, str(home), str(counter), str(go)) for _ in range(3)]
    time.sleep(0.5)  # every racer imported and waiting
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out == "built\n"
    assert len(counter.read_text().splitlines()) == 1
    assert layers(home) == ["t"]


# ------------------------------------------------------------------ the fixtures

def _build_fixture_tree(path: Path) -> None:
    (path / "state").write_text("pristine")


_FIXTURE_COPIES: list[Path] = []


@pytest.fixture
def fixture_copy(btrfs_template):
    return btrfs_template("fixture-tree", _build_fixture_tree, key="1")


def test_fixture_gives_a_fresh_copy(fixture_copy, btrfs_templates):
    assert (fixture_copy / "state").read_text() == "pristine"
    (fixture_copy / "state").write_text("dirty")
    assert fixture_copy.parent == btrfs_templates.get("fixture-tree", _build_fixture_tree, "1").path.parent
    _FIXTURE_COPIES.append(fixture_copy)


def test_fixture_copy_is_per_test(fixture_copy):
    if not _FIXTURE_COPIES:
        pytest.skip("test_fixture_gives_a_fresh_copy did not run before in this process")
    assert not _FIXTURE_COPIES[0].exists()        # removed when that test ended
    assert (fixture_copy / "state").read_text() == "pristine"


def test_fixture_refuses_two_keys_for_one_name(btrfs_template):
    btrfs_template("two-keys", _build_fixture_tree, key="a")
    with pytest.raises(ValueError, match="template 'two-keys' asked for with key 'b'"):
        btrfs_template("two-keys", _build_fixture_tree, key="b")


XDIST_TESTS = '''
import os, time
import pytest
from btrfsx import _ioctl

def build(path):
    with open(os.environ["TPL_BUILDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.0)
    (path / "data.txt").write_text("pristine")

@pytest.fixture
def data(btrfs_template):
    return btrfs_template("shared", build, key="v1")

@pytest.mark.parametrize("i", range(8))
def test_copy(data, i):
    assert (data / "data.txt").read_text() == "pristine"
    (data / "data.txt").write_text(f"written by test {i}")
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsid = _ioctl.fs_info(fd).fsid
    finally:
        os.close(fd)
    with open(os.environ["TPL_LOG"], "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {i} {fsid} {data}\\n")
    time.sleep(0.3)
'''


def test_xdist_workers_share_one_template(tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "test_shared.py").write_text(XDIST_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    builds, log = tmp_path / "builds", tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if k != "BTRFSX_TEMPLATE_HOME"}
    env.update(TPL_BUILDS=str(builds), TPL_LOG=str(log))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "btrfsx.testing", "-p", "xdist", "-n", "2",
                             "-p", "no:cacheprovider", "-q", "test_shared.py"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "8 passed" in out, out
    assert len(builds.read_text().splitlines()) == 1, out       # built once, for both workers
    rows = [line.split() for line in log.read_text().splitlines()]
    assert len(rows) == 8
    assert {r[0] for r in rows} == {"gw0", "gw1"}, rows          # both workers ran tests
    assert len({r[2] for r in rows}) == 1, rows                  # on one filesystem
    assert len({r[3] for r in rows}) == 8                        # a copy of its own each
    # the controller unmounted and detached the shared filesystem
    attached = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                              capture_output=True, text=True).stdout
    assert f"btrfsx-loop-{proc.pid}-" not in attached
    shared_home = Path(rows[0][3]).parent.parent
    assert not shared_home.exists()
    assert not shared_home.parent.exists()


def test_given_template_home_keeps_templates_between_runs(btrfs_fs, tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "test_shared.py").write_text(XDIST_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    builds, log = tmp_path / "builds", tmp_path / "log"
    home = btrfs_fs.mountpoint
    env = dict(os.environ, TPL_BUILDS=str(builds), TPL_LOG=str(log), BTRFSX_TEMPLATE_HOME=str(home))
    for workers in ("2", "0"):      # with xdist and without: the same store
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "btrfsx.testing", "-p", "xdist", "-n", workers,
                               "-p", "no:cacheprovider", "-q", "test_shared.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(builds.read_text().splitlines()) == 1        # built by the first run only
    rows = [line.split() for line in log.read_text().splitlines()]
    assert len(rows) == 16 and all(Path(r[3]).parent == home / "subvolumes" for r in rows)
    assert layers(home) == ["shared"]                        # every copy removed, the template kept


def test_removing_copies_wakes_the_cleaner_now_and_then(tpl, monkeypatch):
    """Deleted copies left to the cleaner's 30 s timer make every later
    commit slower; a BTRFS_IOC_SYNC every WAKE_CLEANER_EVERY removals wakes it."""
    tpl.ensure()
    synced = []
    real_commit = template.subvolume.commit
    monkeypatch.setattr(template.subvolume, "commit", lambda fd: (synced.append(fd), real_commit(fd)))
    for _ in range(2 * template.WAKE_CLEANER_EVERY):
        with tpl.copy():
            pass
    assert len(synced) == 2


def test_benchmark_rounds_each_start_from_pristine_state(benchmark, btrfs_templates):
    """The pattern of docs/testing.md: one copy for the benchmark, reset
    before every round by pytest-benchmark's ``setup``."""
    tpl = btrfs_templates.get("fixture-tree", _build_fixture_tree, key="1")
    seen = []

    def one_round(path):
        seen.append((path / "state").read_text())
        (path / "state").write_text("dirty")

    with tpl.copy() as path:
        benchmark.pedantic(one_round, setup=lambda: ((tpl.reset(path),), {}), rounds=5)
    assert seen == ["pristine"] * 5
