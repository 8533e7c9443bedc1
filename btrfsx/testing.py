"""pytest fixtures for code that needs a real btrfs filesystem.

Load it with ``-p btrfsx.testing`` (or ``pytest_plugins = ["btrfsx.testing"]``
in a top-level conftest).  Fixtures:

``btrfs_fs``
    a fresh btrfs filesystem for one test (a :class:`btrfsx.loopback.Loopback`;
    its ``mountpoint`` is a :class:`pathlib.Path`), for tests that change
    filesystem-wide state such as quotas.
``btrfs_dir``
    an empty directory of its own on a btrfs filesystem shared by the session;
    cheaper, for tests that stay inside it.
``non_btrfs_dir``
    a directory on a filesystem that is not btrfs.
``btrfs_template``
    a factory of pristine copies of prepared trees (issue #18): the tree is
    built once per session (or once for as long as its key holds, with
    ``--btrfs-template-home``), every test gets a writable snapshot of it of
    its own, removed when the test ends::

        @pytest.fixture
        def db(btrfs_template):
            return btrfs_template("pg-data", build=init_db, key=file_key("schema.sql"))

        def test_migration(db):        # db: a pathlib.Path, a fresh copy for this test
            migrate(db)

    ``build(path)`` fills an empty directory (a :class:`pathlib.Path`);
    ``key`` (optional) is a string derived from its inputs
    (:func:`btrfsx.template.file_key`), and a template built with another
    key is rebuilt.  ``btrfs_template.template(name, build, key)`` gives the
    :class:`btrfsx.template.Template` itself.
``btrfs_templates``
    the same templates for fixtures of any scope and for benchmarks:
    ``btrfs_templates.get(name, build, key=None)`` is the session's
    :class:`~btrfsx.template.Template`; each round of a pytest-benchmark
    can start from pristine state with ``tpl.reset``::

        def test_query(benchmark, btrfs_templates):
            tpl = btrfs_templates.get("pg-data", build=init_db)
            with tpl.copy() as path:
                benchmark.pedantic(run_query, setup=lambda: ((tpl.reset(path),), {}), rounds=20)

Where templates live: with ``--btrfs-template-home DIR`` (or
``$BTRFSX_TEMPLATE_HOME``), in the btrfsx store at DIR, kept between runs
(a directory on btrfs, made if missing).  Otherwise on the session's btrfs
filesystem (``btrfs_session_fs``), gone with it.  Under pytest-xdist every
worker is a session of its own, so there they live on one loopback
filesystem all workers of the run share instead: the controller chooses
it, the first worker to need it makes it (under a lock), every worker
builds, waits for or uses each template there (one build per template and
run), and the controller unmounts and detaches it at the end of the run.

Where btrfs cannot be had (not Linux, not root, no loop devices, no
btrfs-progs) the tests that use these skip with the reason, except when the
environment variable ``CI`` is set: then they fail, so that a CI run can never
pass without touching btrfs.  Everything attached or mounted is torn down when
the test (or session) ends, pass or fail; loop devices left by an earlier run
that was killed are swept at the start of the session.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from btrfsx import subvolume
from btrfsx._fd import locked, open_dir
from btrfsx.driver import Driver
from btrfsx.errors import PrerequisitesError
from btrfsx.loopback import IMAGE_PREFIX, Loopback, sweep_stale, unavailable_reason
from btrfsx.mounts import is_mountpoint, mount_source
from btrfsx.template import Template


def pytest_addoption(parser):
    group = parser.getgroup("btrfsx")
    group.addoption("--btrfs-image-dir", default=os.environ.get("BTRFSX_TEST_IMAGE_DIR", "/var/tmp"),
                    help="where loopback images are made (a disk-backed directory; default /var/tmp "
                         "or $BTRFSX_TEST_IMAGE_DIR)")
    group.addoption("--btrfs-image-size", type=int, default=1 << 30,
                    help="size in bytes of each loopback image (sparse; default 1 GiB)")
    group.addoption("--btrfs-template-home", default=os.environ.get("BTRFSX_TEMPLATE_HOME") or None,
                    help="a btrfsx store (a directory on btrfs) where the btrfs_template fixtures keep their "
                         "templates between runs (default: the session's loopback filesystem, shared by the "
                         "workers of a pytest-xdist run; or $BTRFSX_TEMPLATE_HOME)")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"btrfs is required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(f"needs a loopback btrfs filesystem: {reason}")


@pytest.fixture(scope="session")
def btrfs_available() -> None:
    """Skip (fail under CI) unless a loopback btrfs filesystem can be made."""
    reason = unavailable_reason()
    if reason:
        _unavailable(reason)
    sweep_stale()


def _make(request, size: int | None = None, **kwargs) -> Loopback:
    config = request.config
    mountpoint = tempfile.mkdtemp(prefix="btrfsx-mnt-")
    try:
        fs = Loopback.create(config.getoption("--btrfs-image-dir"), mountpoint,
                             size=size or config.getoption("--btrfs-image-size"), **kwargs)
        fs._owns_mountpoint = True  # made above by mkdtemp
        return fs
    except Exception as e:
        os.rmdir(mountpoint)
        _unavailable(f"could not make a loopback btrfs filesystem: {e}")
        raise


@pytest.fixture
def btrfs_fs(request, btrfs_available) -> Iterator[Loopback]:
    """A fresh, empty btrfs filesystem for this test alone."""
    fs = _make(request)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture(scope="session")
def btrfs_session_fs(request, btrfs_available) -> Iterator[Loopback]:
    """One btrfs filesystem shared by the session (use ``btrfs_dir`` in tests)."""
    fs = _make(request)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture
def btrfs_dir(request, btrfs_session_fs) -> Iterator[Path]:
    """An empty directory of this test's own on the session's btrfs filesystem."""
    path = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:60]}-", dir=btrfs_session_fs.mountpoint))
    try:
        yield path
    finally:
        if path.exists():
            subvolume.remove_tree(path, destroy_subvolumes=True)


# ---------------------------------------------------------------- trees for tests and benchmarks


PAYLOAD = b"#!/bin/sh\n# a small file, as most files in an image layer are\nexit 0\n"


def build_layer(root: str | os.PathLike, nfiles: int, *, per_dir: int = 50, dirs_per_top: int = 25,
                payload: bytes = PAYLOAD) -> int:
    """Fill ``root`` with ``nfiles`` small files, ``per_dir`` to a directory,
    directories two levels deep (``tNNN/dNN/fNNNN``).  About 20 us a file on
    btrfs: 50,000 files in a second or two.  Returns how many directories."""
    ndirs = 0
    with open_dir(root, follow=True) as root_fd:  # the caller's path: a symlink to it is followed
        made = 0
        i = 0
        while made < nfiles:
            top = f"t{i // dirs_per_top:03d}"
            if i % dirs_per_top == 0:
                os.mkdir(top, 0o755, dir_fd=root_fd)
                ndirs += 1
            sub = f"{top}/d{i % dirs_per_top:02d}"
            os.mkdir(sub, 0o755, dir_fd=root_fd)
            ndirs += 1
            with open_dir(sub, root_fd) as dfd:  # made just now
                for j in range(min(per_dir, nfiles - made)):
                    # once per file: a plain try/finally, not _fd.open_file (a
                    # few microseconds more a file, of the 20 us above)
                    fd = os.open(f"f{j:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                                 dir_fd=dfd)
                    try:
                        os.write(fd, payload)
                    finally:
                        os.close(fd)
                made += min(per_dir, nfiles - made)
            i += 1
    return ndirs


#: Where :func:`add_nested` puts its subvolumes (the 4th inside the 3rd).
NESTED_LAYOUT = ("usr/lib/n1", "usr/lib/n2", "var/n3", "var/n3/cache/n4", "opt/a/b/c/n5")


def add_nested(root: str | os.PathLike, layout: Sequence[str] = NESTED_LAYOUT) -> list[str]:
    """Make the subvolumes of ``layout`` inside ``root`` (directories as
    needed, existing ones kept); returns their paths."""
    made = []
    for rel in layout:
        parent, name = os.path.split(os.path.join(os.fspath(root), rel))
        os.makedirs(parent, exist_ok=True)
        with open_dir(parent) as fd:
            subvolume.create(fd, name)
        made.append(os.path.join(parent, name))
    return made


def walk_nested(root: str | os.PathLike[str]) -> list[str]:
    """Nested subvolumes found as the original Go driver finds them: walk the
    layer, lstat every directory below the root, inode 256 is a subvolume."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if subvolume.is_root(os.lstat(p)):
                found.append(p)
    return found



@pytest.fixture
def non_btrfs_dir(tmp_path) -> Iterator[Path]:
    """A directory on a filesystem other than btrfs (tmpfs if need be)."""
    if not subvolume.on_btrfs(tmp_path):
        yield tmp_path
        return
    if os.geteuid() != 0:
        pytest.skip("the temporary directory is on btrfs and mounting a tmpfs needs root")
    target = tmp_path / "tmpfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "btrfsx-test", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


# ---------------------------------------------------------------- templates (issue #18)

class TemplateSet:
    """The session's templates, one :class:`~btrfsx.template.Template` per
    name, all in one store (``home``), through one Driver."""

    def __init__(self, home: Path):
        self.home = home
        self.driver = Driver(home)
        self._templates: dict[str, Template] = {}

    def get(self, name: str, build: Callable[[Path], object] | None, key: str | None = None) -> Template:
        """Template ``name``, built with ``build`` if it is missing or was
        built with another key.  Asking for one name with two keys in one
        session is a ValueError: the two would rebuild it in turn."""
        tpl = self._templates.get(name)
        if tpl is None:
            tpl = self._templates[name] = Template(self.driver, name, build, key)
        elif tpl.key != key:
            raise ValueError(f"template {name!r} asked for with key {key!r}, and with key {tpl.key!r} before "
                             "in this session: give each set of inputs a name of its own")
        tpl.ensure()
        return tpl

    def close(self) -> None:
        for tpl in self._templates.values():
            tpl.close()
        self._templates.clear()
        self.driver.close()


class TemplateCopies:
    """What the ``btrfs_template`` fixture gives a test: call it for a fresh
    copy of a template, removed when the test ends."""

    def __init__(self, templates: TemplateSet, stack: contextlib.ExitStack):
        self.templates = templates
        self._stack = stack

    def __call__(self, name: str, build: Callable[[Path], object] | None, key: str | None = None) -> Path:
        """The path of a fresh writable copy of template ``name`` (built first if need be)."""
        return self._stack.enter_context(self.templates.get(name, build, key).copy())

    def template(self, name: str, build: Callable[[Path], object] | None, key: str | None = None) -> Template:
        """The session's :class:`~btrfsx.template.Template` itself."""
        return self.templates.get(name, build, key)


_XDIST = pytest.StashKey[dict]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist's controller, before starting each worker: tell it where
    the run's shared template filesystem goes (made by the first worker to
    need it, removed by the controller at the end)."""
    config = node.config
    info = config.stash.get(_XDIST, None)
    if info is None:
        shared = tempfile.mkdtemp(prefix="btrfsx-xdist-")
        # named as Loopback names its images, after this (the controller's)
        # pid: sweep_stale frees it if the run is killed
        image = os.path.join(os.path.abspath(config.getoption("--btrfs-image-dir")),
                             f"{IMAGE_PREFIX}{os.getpid()}-xdist.img")
        info = {"dir": shared, "image": image, "size": config.getoption("--btrfs-image-size")}
        config.stash[_XDIST] = info
    node.workerinput["btrfsx_templates"] = info


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """In pytest-xdist's controller, once every worker has finished: unmount
    and detach the shared template filesystem (before the run checks for
    leaked loop devices)."""
    info = session.config.stash.get(_XDIST, None)
    if info is not None:
        _destroy_shared(info)


def _destroy_shared(info: dict) -> None:
    shared = Path(info["dir"])
    mnt = shared / "mnt"
    image = Path(info["image"])
    if is_mountpoint(str(mnt)):
        Loopback(image, mount_source(mnt), mnt, owns_image=True, owns_mountpoint=True).close()
    elif image.exists():
        # a worker died between attaching and mounting it
        out = subprocess.run(["losetup", "--associated", str(image), "--noheadings", "--output", "NAME"],
                             capture_output=True, text=True).stdout
        for dev in out.split():
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        image.unlink()
    with contextlib.suppress(OSError):
        os.unlink(shared / "lock")
    for directory in (mnt, shared):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _shared_home(request: pytest.FixtureRequest, info: dict) -> Path:
    """The xdist run's shared filesystem, made by the first worker to get here."""
    request.getfixturevalue("btrfs_available")
    shared = Path(info["dir"])
    mnt = shared / "mnt"
    with locked(shared / "lock"):
        if not is_mountpoint(str(mnt)):
            image = Path(info["image"])
            try:
                fs = Loopback.create(image.parent, mnt, size=info["size"], image=image)
            except Exception as e:
                _unavailable(f"could not make the loopback btrfs filesystem the xdist workers share: {e}")
                raise
            fs._owns_image = fs._owns_mountpoint = False  # the controller removes it
    return mnt  # the mount's root: drivers on it bind-mount nothing


@pytest.fixture(scope="session")
def btrfs_templates(request: pytest.FixtureRequest) -> Iterator[TemplateSet]:
    """The session's templates (see the module's docstring): a
    :class:`TemplateSet`, ``.get(name, build, key=None)`` gives one."""
    given = request.config.getoption("--btrfs-template-home")
    xdist = getattr(request.config, "workerinput", {}).get("btrfsx_templates")
    if given:
        home = Path(given).absolute()
    elif xdist:
        home = _shared_home(request, xdist)
    else:
        home = request.getfixturevalue("btrfs_session_fs").mountpoint / "btrfsx-templates"
    try:
        templates = TemplateSet(home)
    except PrerequisitesError as e:
        _unavailable(f"--btrfs-template-home / BTRFSX_TEMPLATE_HOME: {e}")
        raise
    try:
        yield templates
    finally:
        templates.close()


@pytest.fixture
def btrfs_template(btrfs_templates: TemplateSet) -> Iterator[TemplateCopies]:
    """``btrfs_template(name, build, key=None)``: the path of a fresh copy of
    a template for this test, removed when it ends (see the module's docstring)."""
    with contextlib.ExitStack() as stack:
        yield TemplateCopies(btrfs_templates, stack)
