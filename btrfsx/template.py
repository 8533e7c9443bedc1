"""Templates: a prepared tree built once, then handed out as pristine
writable copies in constant time (issue #18).

A template is a layer of the store at ``home``, filled once by a build
function and kept read-only; a copy is a writable btrfs snapshot of it (a
layer of its own), which costs about a millisecond whatever the size of the
tree, and is removed again as cheaply::

    from btrfsx.template import Template, file_key

    tpl = Template("/var/lib/btrfsx/home", "pg-data", build=init_db, key=file_key("schema.sql"))
    with tpl.copy() as path:      # a fresh writable snapshot; removed on exit, even on error
        run_test(path)
    with tpl.copy(keep=True) as path:
        ...
    tpl.reset(path)               # back to pristine, at the same path

What lives where (ids in ``home/subvolumes/``, state in ``home/.btrfsx/``)::

    subvolumes/NAME                the template, read-only
    subvolumes/NAME@build-PID-N    a build in progress (or interrupted)
    subvolumes/NAME@copy-PID-N     a copy, removed when its ``with`` block ends
    subvolumes/NAME@keep-PID-N     a copy made with ``keep=True``: yours to remove
    .btrfsx/templates/NAME/lock    flock'ed by whoever builds or removes NAME
    .btrfsx/templates/NAME/record  JSON: the key NAME was built with and its
                                   subvolume's UUID, written (atomically) after
                                   the template is in place: the commit point

So a template is used only when its record names the key asked for and the
UUID of the subvolume that is there: a build that raised, was interrupted
or killed never wrote it, and a template built from other inputs (another
key) is rebuilt, never reused.  Builds happen under the lock, into the
``@build`` id; the first process to find the template missing or stale
builds it, the others wait for the lock and then use what it built.  A
killed builder's ``@build`` layer is removed by the next build (whoever
holds the lock knows no build is running) or :meth:`Template.gc`, and so
are ``@copy`` layers whose process is gone.  Template names are layer ids
without ``@`` of at most 200 bytes.

A copy is a snapshot, so it holds what the template's subvolume holds and
nothing else: subvolumes nested in the template are empty directories in
the copy (btrfs snapshots are not recursive; a build that makes one gets a
warning).  Copies live at other paths than the build did: a tree that
records its own absolute path is not relocatable.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import uuid as _uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from btrfsx import subvolume
from btrfsx._fd import locked, open_dir
from btrfsx.driver import Driver
from btrfsx.store import STATE, check_layer_id, pid_alive

__all__ = ["Template", "RunResult", "file_key", "gc", "TEMPLATES"]

log = logging.getLogger("btrfsx.template")

#: Where template state lives, under ``home/.btrfsx/``.
TEMPLATES = "templates"
MAX_NAME_BYTES = 200
_SUFFIX = re.compile(r"@(build|copy|keep)-(\d+)-(\d+)\Z")
#: copy and build ids are unique in the process: one counter for every Template
_counter = itertools.count()
#: how often a copy is retried when the template is replaced under it
_ATTEMPTS = 5
#: every this many copies removed, a BTRFS_IOC_SYNC: it wakes the cleaner,
#: which nothing else wakes for up to the 30 s commit interval (a snapshot's
#: commit does not).  Left pending, deleted copies that were written to make
#: every later commit slower: on Linux 6.18, 1,000 copies of a 100,000-file
#: template with one file written in each took 34 to 37 s without this (7 ms
#: a copy at first, 68 ms after 600), 8 to 11 s with it; untouched copies
#: 3 to 4 s without, 2.2 to 2.6 s with.
WAKE_CLEANER_EVERY = 8

Build = Callable[[Path], object]


def check_template_name(name: str) -> str:
    """A template name is a layer id without ``@`` (which separates a copy's
    suffix), of at most 200 bytes; ValueError otherwise."""
    check_layer_id(name)
    if "@" in name or len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise ValueError(f"invalid template name {name!r}: a layer id without '@', of at most "
                         f"{MAX_NAME_BYTES} bytes")
    return name


def file_key(*paths: str | os.PathLike[str]) -> str:
    """A key for :class:`Template` from the contents of files and directories
    (walked in sorted order, relative paths and modes included): the SHA-256,
    in hex.  Symlinks are hashed as their targets' text, not followed."""
    h = hashlib.sha256()

    def add(path: str, rel: str) -> None:
        st = os.lstat(path)
        h.update(f"{rel}\0{st.st_mode:o}\0".encode("utf-8", "surrogateescape"))
        if os.path.islink(path):
            h.update(os.fsencode(os.readlink(path)))
        elif os.path.isdir(path):
            for entry in sorted(os.listdir(path)):
                add(os.path.join(path, entry), f"{rel}/{entry}")
        else:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")

    for p in paths:
        p = os.fspath(p)
        add(p, os.path.basename(p.rstrip("/")) or p)
    return h.hexdigest()


class RunResult(NamedTuple):
    """What :meth:`Template.run` did."""

    returncode: int          #: the command's, as subprocess gives it (-N: killed by signal N)
    kept: Path | None        #: the copy, when it was kept (``keep=True`` and the command failed)

    @property
    def exit_status(self) -> int:
        """The status a shell would report: the return code, or 128+N for signal N."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode


def _subvolume_info(path: str | os.PathLike[str]) -> subvolume.SubvolumeInfo:
    with open_dir(path) as fd:
        return subvolume.info(fd)


class Template:
    """A tree built once into layer ``name`` of the store at ``home`` (a path,
    or an open :class:`~btrfsx.driver.Driver`), handed out as copies.

    ``build(path)`` fills the empty directory ``path`` (a :class:`pathlib.Path`,
    mode 0755, owned by the caller); it runs once, in whichever process first
    finds the template missing or stale.  ``key`` is a string derived from
    the build's inputs (:func:`file_key` of a schema, a version...): a
    template built with another key is rebuilt.  With ``key=None`` whatever
    was built under ``None`` is reused.  ``build=None`` uses an existing
    layer ``name`` as it is (what ``btrfsx run --from NAME`` does):
    FileNotFoundError if there is none.  ``driver_options`` go to the
    Driver this opens.

    >>> tpl = Template(home, "fixture", build=lambda p: (p / "data.txt").write_text("x"), key="v1")
    >>> with tpl.copy() as path:
    ...     (path / "data.txt").write_text("changed")   # the template is untouched
    >>> tpl.close()
    """

    def __init__(self, home: str | os.PathLike[str] | Driver, name: str, build: Build | None,
                 key: str | None = None, driver_options: Iterable[str] = ()):
        check_template_name(name)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"template {name!r}: key must be a str or None, not {type(key).__name__}")
        if build is not None and not callable(build):
            raise TypeError(f"template {name!r}: build must be callable or None, not {type(build).__name__}")
        self.name = name
        self.build = build
        self.key = key
        if isinstance(home, Driver):
            self._driver = home
            self._owns_driver = False
        else:
            self._driver = Driver(home, options=driver_options)
            self._owns_driver = True
        d = self._driver
        self.home = Path(d.home)
        self._subvolumes = self.home / "subvolumes"
        self._state = self.home / STATE / TEMPLATES / name
        self._uuid: _uuid.UUID | None = None  # of the template this process last saw current
        self._lock = threading.RLock()
        self._removals = 0
        self._collected = False
        self._closed = False

    # ------------------------------------------------------------ what and where

    @property
    def driver(self) -> Driver:
        return self._driver

    @property
    def path(self) -> Path:
        """Where the template is (``home/subvolumes/NAME``); :meth:`ensure`
        builds it if it is missing or stale."""
        return self._subvolumes / self.name

    def __repr__(self) -> str:
        return f"Template(home={str(self.home)!r}, name={self.name!r}, key={self.key!r})"

    def record(self) -> dict | None:
        """The template's record (key, UUID, when and how long it was built),
        or None when there is none or it is unreadable."""
        try:
            with open(self._state / "record", "rb") as f:
                data = json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_current(self) -> bool:
        """Whether the template is built and built with this key (builds nothing)."""
        return self._current_uuid() is not None

    # ------------------------------------------------------------ building

    def _current_uuid(self) -> _uuid.UUID | None:
        """The template's UUID when it may be used as it is, else None."""
        record = self.record()
        try:
            info = _subvolume_info(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTTY, errno.EINVAL):
                return None  # a symlink or a plain directory: not a template
            raise
        if not subvolume.is_root(os.lstat(self.path)):
            return None
        if record is None:
            if self.build is None and not self._state.joinpath("record").exists():
                return info.uuid  # a plain layer, never a template: used as it is
            return None
        if record.get("uuid") != str(info.uuid):
            return None
        if self.build is not None and record.get("key") != self.key:
            return None
        return info.uuid

    def ensure(self) -> Path:
        """Build the template unless it is there and current; returns its path.

        The build runs under the template's lock: other processes asking
        meanwhile wait for it and then use it.  A build that raises leaves
        nothing (the exception propagates with a note naming the template);
        the previous template, if any, stays unused until a build succeeds.
        """
        with self._lock:
            self._check_open()
            uuid = self._current_uuid()
            if uuid is None:
                uuid = self._build()
            self._uuid = uuid
            if not self._collected:
                self._collected = True
                self._collect_copies()
            return self.path

    @contextlib.contextmanager
    def _locked(self, waiting_for: str) -> Iterator[None]:
        os.makedirs(self._state, mode=0o700, exist_ok=True)
        with locked(self._state / "lock", blocking=False) as fd:
            if fd is not None:
                yield
                return
        log.info("template %r: waiting for another process's %s (lock %s)", self.name, waiting_for,
                 self._state / "lock")
        with locked(self._state / "lock"):
            yield

    def _build(self) -> _uuid.UUID:
        if self.build is None:
            with self._locked("build"):  # a build in flight: wait for it, then look again
                uuid = self._current_uuid()
            if uuid is not None:
                return uuid
            raise FileNotFoundError(errno.ENOENT, f"template {self.name!r}: layer {self.name!r} does not exist "
                                    "(or its last build did not finish), and no build function was given",
                                    str(self.path))
        with self._locked("build"):
            uuid = self._current_uuid()
            if uuid is not None:
                return uuid  # built by another process while this one waited
            # A layer this module publishes always has a record (written
            # before the layer is made): one without is somebody else's.
            if os.path.lexists(self.path) and not self._state.joinpath("record").exists():
                raise FileExistsError(errno.EEXIST, f"template {self.name!r}: layer {self.name!r} exists and is "
                                      "not a template (it has no record): remove it or choose another name",
                                      str(self.path))
            self._collect_builds()
            self._collect_copies()
            return self._build_locked()

    def _build_locked(self) -> _uuid.UUID:
        d = self._driver
        build_id = f"{self.name}@build-{os.getpid()}-{next(_counter)}"
        d.create(build_id)
        path = Path(d.get(build_id))
        os.chmod(path, 0o755)  # a layer's root is made 0555; the build and the copies want a writable root
        t0 = time.monotonic()
        assert self.build is not None
        try:
            self.build(path)
        except BaseException as e:
            self._discard(build_id)
            if isinstance(e, Exception):
                e.add_note(f"template {self.name!r}: its build failed (in {path}); nothing of it was kept")
            raise
        seconds = time.monotonic() - t0
        try:
            self._warn_nested(path)
            # From here on the old template (if any) is gone: mark the record
            # unpublished first, so a crash in between leaves no record that
            # names a layer of other contents.
            self._write_record({"name": self.name, "state": "publishing", "pid": os.getpid()})
            if self.path.exists() or self.path.is_symlink():
                d.remove(self.name)
            d.create(self.name, build_id)
            with open_dir(self.path) as fd:
                subvolume.set_readonly(fd)
                info = subvolume.info(fd)
            self._write_record({"name": self.name, "key": self.key, "uuid": str(info.uuid),
                                "built_at": time.time(), "build_seconds": round(seconds, 3),
                                "pid": os.getpid()})
        except OSError as e:
            self._discard(build_id)
            raise type(e)(e.errno, f"template {self.name!r}: cannot publish its build: {e.strerror or e}",
                          e.filename or str(self.path)) from None
        except BaseException:
            self._discard(build_id)
            raise
        self._discard(build_id)
        log.info("template %r built in %.3f s (key %r)", self.name, seconds, self.key)
        return info.uuid

    def _warn_nested(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        try:
            with open_dir(path) as fd:
                nested = subvolume.nested_subvolumes(fd, subvolume.subvolume_id(fd))
        except OSError:
            return
        if nested:
            names = ", ".join(os.fsdecode(n.name) for n in nested[:5])
            log.warning("template %r: its build made %d nested subvolume(s) (%s); copies hold empty "
                        "directories in their place (btrfs snapshots are not recursive)", self.name, len(nested),
                        names)

    def _discard(self, layer_id: str) -> None:
        try:
            self._driver.remove(layer_id)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("template %r: cannot remove %s: %s (gc() retries)", self.name, layer_id, e)

    def _write_record(self, data: dict) -> None:
        os.makedirs(self._state, mode=0o700, exist_ok=True)
        tmp = self._state / f".record-{os.getpid()}-{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self._state / "record")

    # ------------------------------------------------------------ copies

    def _copy_id(self, keep: bool) -> str:
        return f"{self.name}@{'keep' if keep else 'copy'}-{os.getpid()}-{next(_counter)}"

    def _snapshot(self, layer_id: str) -> Path:
        """Layer ``layer_id``, a snapshot of the current template; rebuilds
        (or waits for another process's build) when the template changed."""
        d = self._driver
        for _ in range(_ATTEMPTS):
            with self._lock:
                expected = self._uuid
                if expected is None:
                    self.ensure()
                    expected = self._uuid
            try:
                d.create(layer_id, self.name)
            except FileNotFoundError:
                # replaced or removed meanwhile
                with self._lock:
                    self._uuid = None
                continue
            path = self._subvolumes / layer_id
            if _subvolume_info(path).parent_uuid == expected:
                return path
            # the template was rebuilt (by another process, maybe with another key) since
            # this process last checked it: this copy may not be of what it asked for
            d.remove(layer_id)
            with self._lock:
                if self._uuid == expected:
                    self._uuid = None
        raise OSError(errno.EAGAIN, f"template {self.name!r}: replaced {_ATTEMPTS} times while a copy was being "
                      "made (processes building it with different keys?)", str(self.path))

    def new_copy(self, keep: bool = False) -> Path:
        """A fresh writable copy, yours to remove (:meth:`remove_copy`); the
        :meth:`copy` context manager does both.  ``keep`` names it
        ``NAME@keep-PID-N``, which :meth:`gc` never removes."""
        self._check_open()
        layer_id = self._copy_id(keep)
        try:
            return self._snapshot(layer_id)
        except OSError as e:
            if e.strerror and "template '" in e.strerror:
                raise
            raise type(e)(e.errno, f"template {self.name!r}: cannot make copy {layer_id!r}: {e.strerror or e}",
                          str(self._subvolumes / layer_id)) from None

    @contextlib.contextmanager
    def copy(self, keep: bool = False) -> Iterator[Path]:
        """A context manager: the path (:class:`pathlib.Path`) of a fresh
        writable copy of the template, built first if need be, removed when
        the block ends, on an exception too (with any subvolume made inside
        it).  ``keep=True`` keeps it (as ``NAME@keep-PID-N``).

        >>> with tpl.copy() as path:
        ...     subprocess.run(["make", "test"], cwd=path, check=True)
        """
        path = self.new_copy(keep)
        try:
            yield path
        except BaseException as e:
            if not keep:
                try:
                    self.remove_copy(path)
                except OSError as cleanup:
                    e.add_note(f"template {self.name!r}: and its copy {path} could not be removed: {cleanup}")
            raise
        if not keep:
            self.remove_copy(path)

    def _copy_layer(self, path: str | os.PathLike[str]) -> str:
        """The layer id of copy ``path`` of this template; ValueError when it is not one."""
        p = Path(os.path.abspath(path))
        m = _SUFFIX.search(p.name)
        if p.parent != self._subvolumes or not m or m.group(1) == "build" or p.name[:m.start()] != self.name:
            raise ValueError(f"template {self.name!r}: {str(path)!r} is not one of its copies (expected "
                             f"{self._subvolumes}/{self.name}@copy-PID-N or @keep-PID-N)")
        return p.name

    def remove_copy(self, path: str | os.PathLike[str]) -> None:
        """Remove a copy (and any subvolume made inside it); nothing when it is gone already."""
        layer_id = self._copy_layer(path)
        try:
            self._driver.remove(layer_id)
        except FileNotFoundError:
            return
        self._removed()

    def _removed(self) -> None:
        """Count a copy removed; now and then wake btrfs's cleaner (see WAKE_CLEANER_EVERY)."""
        with self._lock:
            self._removals += 1
            if self._removals % WAKE_CLEANER_EVERY:
                return
        try:
            with open_dir(self._subvolumes) as fd:
                subvolume.commit(fd)
        except OSError as e:
            log.debug("template %r: BTRFS_IOC_SYNC failed: %s", self.name, e)

    def reset(self, path: str | os.PathLike[str]) -> Path:
        """Bring copy ``path`` back to the template's contents, in place: the
        same path afterwards (removed and snapshotted again under the same
        id, which costs what a fresh copy costs).  Files and directories
        opened in the old copy (a working directory too) still refer to it:
        open them again.  Returns the path."""
        self._check_open()
        layer_id = self._copy_layer(path)
        try:
            self._driver.remove(layer_id)
        except FileNotFoundError:
            pass  # made again below
        except OSError as e:
            raise type(e)(e.errno, f"template {self.name!r}: cannot reset copy {str(path)!r}: {e.strerror or e}",
                          e.filename or str(path)) from None
        else:
            self._removed()
        return self._snapshot(layer_id)

    # ------------------------------------------------------------ running a command in a copy

    def run(self, argv: Sequence[str], *, keep: bool = False, env: Mapping[str, str] | None = None) -> RunResult:
        """Run ``argv`` in a fresh copy: the copy is its working directory and
        ``BTRFSX_COPY`` (in ``env``, else this process's environment) its
        path.  The copy is removed afterwards, unless ``keep`` and the command
        failed (non-zero status, killed by a signal, or this process was
        interrupted while waiting): then it is kept as ``NAME@keep-PID-N``
        and returned in :attr:`RunResult.kept`.  FileNotFoundError names a
        command that is not found (the copy is removed)."""
        if not argv:
            raise ValueError(f"template {self.name!r}: no command to run")
        path = self.new_copy(keep)
        child_env = dict(os.environ if env is None else env)
        child_env["BTRFSX_COPY"] = str(path)
        child_env["BTRFSX_TEMPLATE"] = self.name
        failed = True
        try:
            try:
                proc = subprocess.Popen(list(argv), cwd=path, env=child_env)
            except FileNotFoundError:
                failed = False  # nothing ran in the copy: nothing to inspect
                raise FileNotFoundError(errno.ENOENT, f"template {self.name!r}: command not found",
                                        argv[0]) from None
            try:
                returncode = proc.wait()
            except BaseException:
                # Ctrl-C: the command got the SIGINT too; give it a moment, then end it
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                raise
            failed = returncode != 0
            return RunResult(returncode, path if keep and failed else None)
        finally:
            if not (keep and failed):
                self.remove_copy(path)

    # ------------------------------------------------------------ garbage

    def _parse(self, layer_id: str) -> tuple[str, int] | None:
        """(kind, pid) of one of this template's build or copy ids, else None."""
        m = _SUFFIX.search(layer_id)
        if not m or layer_id[:m.start()] != self.name:
            return None
        return m.group(1), int(m.group(2))

    def _collect_copies(self) -> list[str]:
        removed = []
        me = os.getpid()
        for layer in self._driver.layers():
            parsed = self._parse(layer)
            if parsed and parsed[0] == "copy" and parsed[1] != me and not pid_alive(parsed[1]):
                self._discard(layer)
                removed.append(layer)
        if removed:
            log.info("template %r: removed %d copies of processes that are gone", self.name, len(removed))
        return removed

    def _collect_builds(self) -> list[str]:
        """Remove ``@build`` layers: call with the lock held (so none is live)."""
        removed = []
        for layer in self._driver.layers():
            parsed = self._parse(layer)
            if parsed and parsed[0] == "build":
                self._discard(layer)
                removed.append(layer)
        if removed:
            log.info("template %r: removed the leftovers of interrupted builds: %s", self.name, ", ".join(removed))
        return removed

    def gc(self) -> list[str]:
        """Remove what dead processes left of this template: copies
        (``@copy``) of processes that are gone, and interrupted builds
        (``@build``; skipped while a build holds the lock).  Kept copies
        (``@keep``) stay.  Returns the layer ids removed."""
        self._check_open()
        removed = self._collect_copies()
        if not self._state.exists():
            return removed + self._collect_builds()
        with locked(self._state / "lock", blocking=False) as fd:
            if fd is None:
                return removed  # a build in progress: its layer is live
            removed += self._collect_builds()
        return removed

    def remove(self) -> None:
        """Remove the template (its layer and record) and what dead processes
        left of it; copies of live processes and kept copies stay.
        FileNotFoundError when there is no template."""
        self._check_open()
        with self._lock, self._locked("build"):
            had_record = self._state.joinpath("record").exists()
            try:
                self._driver.remove(self.name)
                had_layer = True
            except FileNotFoundError:
                had_layer = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._state / "record")
            self._uuid = None
            self._collect_builds()
            self._collect_copies()
        if not (had_layer or had_record):
            raise FileNotFoundError(errno.ENOENT, f"template {self.name!r} does not exist", str(self.path))

    # ------------------------------------------------------------ closing

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"template {self.name!r} is closed")

    def close(self) -> None:
        """Close the Driver this opened (one passed in is left open)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_driver:
            self._driver.close()

    def __enter__(self) -> Template:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gc(home: str | os.PathLike[str] | Driver) -> list[str]:
    """:meth:`Template.gc` for every template of the store at ``home`` (what
    ``btrfsx gc`` can call): copies of processes that are gone, and
    interrupted builds whose template is not being built.  Returns the
    layer ids removed."""
    owns = not isinstance(home, Driver)
    d = Driver(home) if not isinstance(home, Driver) else home
    try:
        names = set()
        for layer in d.layers():
            m = _SUFFIX.search(layer)
            if m and m.group(1) != "keep" and "@" not in layer[:m.start()] and layer[:m.start()]:
                names.add(layer[:m.start()])
        removed: list[str] = []
        for name in sorted(names):
            tpl = Template(d, name, None)
            removed += tpl.gc()
        return removed
    finally:
        if owns:
            d.close()
