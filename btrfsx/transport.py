"""Layers as btrfs send streams: the policy of :meth:`Driver.send` and
:meth:`Driver.receive` (the design, the records and the measurements:
``docs/transport.md``).

The kernel sends only read-only subvolumes, and a receiver finds the parent
of an incremental stream by the UUID the sender's parent had (the received
UUID of its copy).  A layer is writable, so each layer sent or received has
a *read-only twin*, kept beside the store::

    home/.btrfsx/twins/ID          the twin: a read-only subvolume; on the
                                   sending side a snapshot of layer ID, on
                                   the receiving side the subvolume `btrfs
                                   receive` made (the layer is a writable
                                   snapshot of it)
    home/.btrfsx/twin-records/ID   JSON: {"layer": the layer's UUID,
                                   "twin": the twin's UUID, "ctransid": the
                                   layer's ctransid when the twin was known
                                   to hold the same tree, or null}

A twin is reused for as long as its record names the layer's current UUID
and ctransid (a change to the layer makes a new one, with a new UUID), so
every child sent against one parent is sent against the same twin, and the
receiver's copy of that twin keeps matching.  ``remove`` drops a layer's
twin, ``gc`` every twin or record whose layer is gone or whose record does
not match.

Receiving drives btrfs-progs' ``btrfs receive`` confined (``--chroot``) to a
directory of the operation's staging directory, after this module has read
the stream's header and first command (which subvolume, and against which
parent), while it relays the stream command by command (so that a truncated
stream or bytes after its end are refused), and checks the result before
anything is published.
"""

from __future__ import annotations

import errno
import fcntl
import io
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid as _uuid
from contextlib import ExitStack
from typing import BinaryIO, cast

from btrfsx import _ioctl, subvolume
from btrfsx._fd import DIR_FLAGS, DIR_NOFOLLOW, open_dir, read_file, try_lock, write_file_atomic
from btrfsx._proc import pid_alive
from btrfsx.errors import ArchiveError, PrerequisitesError
from btrfsx.store import STATE, Store

TWINS = os.path.join(STATE, "twins")
RECEIVING_DIR = os.path.join(STATE, "receiving")
TWIN = "twin"             # the read-only subvolume in twins/ID
RECORD = "record"         # its JSON record, beside it
LAYER = "layer"           # the writable snapshot of a received twin, in a staging directory
_receive_counter = itertools.count()

_CHUNK = 1 << 20

MAGIC = b"btrfs-stream\0"
_STREAM_HEADER = struct.Struct("<13sI")
_CMD_HEADER = struct.Struct("<IHI")    # length of the attributes, command, crc32c
_TLV_HEADER = struct.Struct("<HH")
C_SUBVOL, C_SNAPSHOT, C_END = 1, 2, 21
#: the highest command of each protocol version btrfs-progs receives
_MAX_COMMAND = {1: 22, 2: 25}
A_UUID, A_CTRANSID, A_PATH, A_CLONE_UUID, A_CLONE_CTRANSID = 1, 2, 15, 20, 21


class StreamError(ArchiveError):
    """A send stream that is truncated, corrupt, against a parent this store
    does not have, or that ``btrfs receive`` refused."""


# ---------------------------------------------------------------- twins

def _dir(store: Store, relative: str) -> int:
    path = os.path.join(store.home, relative)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return os.open(path, DIR_NOFOLLOW)


def _read_record(dirfd: int) -> dict:
    """The record in a twin's directory; empty when missing or torn."""
    data = read_file(RECORD, dirfd, limit=4096)
    if data is None:
        return {}
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(dirfd: int, record: dict) -> None:
    write_file_atomic(RECORD, json.dumps(record).encode(), dirfd)  # RECORD.tmp renamed over it: whole, or not there


def _open_subvolume(dirfd: int, name: str) -> int | None:
    """``name`` in ``dirfd`` opened, if it is a subvolume; None otherwise."""
    try:
        fd = os.open(name, DIR_NOFOLLOW, dir_fd=dirfd)
    except OSError:
        return None
    if os.fstat(fd).st_ino != _ioctl.FIRST_FREE_OBJECTID:
        os.close(fd)
        return None
    return fd


def _drop(store: Store, layer_id: str) -> bool:
    """Destroy ``twins/ID`` (the twin and its record); True when it was there."""
    path = os.path.join(store.home, TWINS, layer_id)
    if not os.path.lexists(path):
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        subvolume.remove_tree(path, destroy_subvolumes=True)
    else:
        os.unlink(path)
    return True


def _twin_for_send(store: Store, layer_id: str) -> int:
    """An fd of layer ``layer_id``'s twin, made now unless the one there
    still holds the layer's tree.  Takes the id's lock."""
    with store.lock(layer_id), ExitStack() as fds:
        lfd = _open_subvolume(store.subvolumes_fd, layer_id)
        if lfd is None:
            raise FileNotFoundError(errno.ENOENT, f"layer {layer_id!r} does not exist", store.layer_path(layer_id))
        fds.callback(os.close, lfd)
        tdir = _dir(store, TWINS)
        fds.callback(os.close, tdir)
        # delalloc flushed and the transaction committed: ctransid is current
        _ioctl.sync(lfd)
        layer = _ioctl.get_subvolume_info(lfd)
        with ExitStack() as there:
            try:
                dfd: int | None = there.enter_context(open_dir(layer_id, tdir))
            except OSError:
                dfd = None
            if dfd is not None:
                record = _read_record(dfd)
                tfd = _open_subvolume(dfd, TWIN)
                if tfd is not None:
                    with ExitStack() as unless_returned:
                        unless_returned.callback(os.close, tfd)
                        twin = _ioctl.get_subvolume_info(tfd)
                        if record.get("layer") == str(layer.uuid) and record.get("twin") == str(twin.uuid):
                            if record.get("ctransid") == layer.ctransid:
                                unless_returned.pop_all()
                                return tfd
                            if record.get("since") and _same_but_atimes(store, layer, twin, record["since"]):
                                # reads since (atime updates) change ctransid, not the tree
                                record["ctransid"] = layer.ctransid
                                _write_record(dfd, record)
                                unless_returned.pop_all()
                                return tfd
        if dfd is not None:
            _drop(store, layer_id)
        # Made in place: a read-only subvolume cannot be moved to another
        # directory (its ".." would change).  Until its record is
        # written it is a twin gc drops.
        os.mkdir(layer_id, 0o700, dir_fd=tdir)
        with open_dir(layer_id, tdir) as dfd:
            try:
                _ioctl.snapshot(lfd, dfd, TWIN, readonly=True)
                tfd = os.open(TWIN, DIR_FLAGS, dir_fd=dfd)
                with ExitStack() as unless_returned:
                    unless_returned.callback(os.close, tfd)
                    twin = _ioctl.get_subvolume_info(tfd)
                    _write_record(dfd, {"layer": str(layer.uuid), "twin": str(twin.uuid),
                                        "ctransid": layer.ctransid, "since": twin.otransid + 1})
                    unless_returned.pop_all()
                return tfd
            except BaseException:
                _drop(store, layer_id)
                raise


def _same_but_atimes(store: Store, layer, twin, since: int) -> bool:
    """Whether layer and twin hold the same tree, when the layer's inodes
    written from transaction ``since`` on differ from the twin's at most in
    their atime.  Every change to a tree rewrites the inode item of what it
    changes (its ctime, at least, or its parent directory's), so inode items
    are all there is to compare; a search from ``since`` on reads only the
    tree blocks written since."""
    for item in _ioctl.TreeSearch(store.home_fd, layer.id, min_transid=since, min_item_transid=since,
                                  item_types=(_ioctl.INODE_ITEM_KEY,)):
        if item.type != _ioctl.INODE_ITEM_KEY:
            continue
        other = _ioctl.search_item(store.home_fd, twin.id, item.objectid, _ioctl.INODE_ITEM_KEY, 0)
        if other is None:
            return False
        if item.objectid == _ioctl.FIRST_FREE_OBJECTID:
            # A layer's root: publishing it (a rename) gives it a new ctime
            # and sequence without any change to its tree; the rest, and its
            # extended attributes, are compared.
            a, b = _ioctl.decode_inode_item(item.data), _ioctl.decode_inode_item(other)
            if (a._replace(transid=0, sequence=0, atime_ns=0, ctime_ns=0)
                    != b._replace(transid=0, sequence=0, atime_ns=0, ctime_ns=0)
                    or _root_xattrs(store, layer.id) != _root_xattrs(store, twin.id)):
                return False
        elif not _ioctl.same_inode_item_but_atime(item.data, other):
            return False
    return True


def _root_xattrs(store: Store, tree: int) -> list[bytes]:
    return [item.data for item in _ioctl.TreeSearch(
        store.home_fd, tree, min_objectid=_ioctl.FIRST_FREE_OBJECTID, max_objectid=_ioctl.FIRST_FREE_OBJECTID,
        min_type=_ioctl.XATTR_ITEM_KEY, max_type=_ioctl.XATTR_ITEM_KEY)]


def forget(store: Store, layer_id: str) -> None:
    """After ``remove``: drop the twin of a layer that is gone (a new layer
    made under the id meanwhile keeps a twin that matches it)."""
    try:
        # one stat on remove's path
        os.stat(os.path.join(store.home, TWINS, layer_id), follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return
    _collect(store, [layer_id])


def _belongs(store: Store, name: str) -> bool:
    """Whether ``twins/NAME`` is a whole twin of the layer now called NAME."""
    with ExitStack() as fds:
        lfd = _open_subvolume(store.subvolumes_fd, name)
        if lfd is None:
            return False
        fds.callback(os.close, lfd)
        try:
            dfd = fds.enter_context(open_dir(os.path.join(store.home, TWINS, name)))
        except OSError:
            return False
        tfd = _open_subvolume(dfd, TWIN)
        if tfd is not None:
            fds.callback(os.close, tfd)
        record = _read_record(dfd)
        return (tfd is not None and record.get("layer") == str(_ioctl.get_subvolume_info(lfd).uuid)
                and record.get("twin") == str(_ioctl.get_subvolume_info(tfd).uuid))


def _collect(store: Store, names) -> list[str]:
    """Drop the twins of ``names`` whose layer is gone or does not match the
    record; returns their paths."""
    removed = []
    for name in names:
        with store.lock(name):
            if _belongs(store, name):
                continue
            try:
                if _drop(store, name):
                    removed.append(os.path.join(store.home, TWINS, name))
            except OSError:
                pass  # being sent (the kernel refuses with EPERM): the next gc takes it
    return removed


def _lock_orphan(fd: int, name: str) -> bool:
    """Lock ``receiving/NAME`` unless its receive lives.  When the driver
    that made it (its pid is NAME's first part) is gone, `btrfs receive` is
    dying with it (PDEATHSIG): wait a little for its lock."""
    pid = name.split("-", 1)[0]
    dead = pid.isdigit() and not pid_alive(int(pid))
    deadline = time.monotonic() + (5.0 if dead else 0.0)
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def gc(store: Store) -> list[str]:
    """Twins whose layer is gone or was made anew, and receives whose process
    died (``receiving/P-N``, no longer locked); returns their paths."""
    removed = []
    path = os.path.join(store.home, RECEIVING_DIR)
    try:
        partial = sorted(os.listdir(path))
    except FileNotFoundError:
        partial = []
    for name in partial:
        with ExitStack() as held:
            try:
                fd = held.enter_context(open_dir(os.path.join(path, name)))
            except OSError:
                continue
            if not _lock_orphan(fd, name):
                continue  # its receive is alive
            subvolume.remove_tree(os.path.join(path, name), destroy_subvolumes=True)
            removed.append(os.path.join(path, name))
    if partial:
        _tidy_receiving(store)
    try:
        names = sorted(os.listdir(os.path.join(store.home, TWINS)))
    except FileNotFoundError:
        names = []
    return removed + _collect(store, names)


# ---------------------------------------------------------------- sending

def kernel_protocol() -> int:
    """The highest send protocol version the running kernel offers (1 before 5.19)."""
    try:
        with open("/sys/fs/btrfs/features/send_stream_version") as f:
            return int(f.read().strip() or 1)
    except (OSError, ValueError):
        return 1


def _run_send(w: int, fds: list[int], send_args: tuple, failed: list[OSError]) -> None:
    """The send thread: SEND from ``fds[0]`` into pipe end ``w``, its error
    put in ``failed``; every fd closed at the end.  It holds no reference
    to its SendStream, so a stream its reader drops is collected and closed,
    which ends the send (EPIPE) instead of leaving it blocked on a full pipe."""
    # A signal for the main thread must not land here: SEND cannot be
    # resumed after EINTR.
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        _ioctl.send(fds[0], w, *send_args)
    except OSError as e:
        failed.append(e)
    finally:
        os.close(w)
        for fd in fds:
            os.close(fd)


class SendStream(io.RawIOBase):
    """The read end of the pipe a thread running SEND writes into.  Reading
    to the end raises the error of a send that failed, so a failed send is
    never mistaken for a short stream; closing early (or dropping the
    stream) stops the send."""

    def __init__(self, layer_id: str, fds: list[int], send_args: tuple):
        super().__init__()
        self.layer_id = layer_id
        self._failed: list[OSError] = []
        r, w = os.pipe2(os.O_CLOEXEC)
        self._fd = r
        try:
            # Pipes hold 64 KiB by default; 1 MiB lets the kernel write whole
            # extents between the reader's turns (fails harmlessly above
            # /proc/sys/fs/pipe-max-size for an unprivileged caller).
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _CHUNK)
        except OSError:
            pass
        self._thread = threading.Thread(target=_run_send, args=(w, fds, send_args, self._failed), daemon=True,
                                        name=f"btrfsx-send-{layer_id}")
        self._thread.start()

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, b) -> int:
        n = os.readv(self._fd, [b])
        if n == 0:
            self._thread.join()
            if self._failed:
                e = self._failed[0]
                raise OSError(e.errno, f"layer {self.layer_id!r}: cannot send it: {e.strerror}", e.filename)
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)  # a send still writing ends with EPIPE
            self._thread.join()
        super().close()


def send(store: Store, layer_id: str, parent: str | None = None, protocol: int | None = None) -> BinaryIO:
    """A send stream of layer ``layer_id`` (incremental against layer
    ``parent``), from their twins (made now if missing or stale)."""
    offered = kernel_protocol()
    if protocol is None:
        protocol = min(offered, 2)
    if protocol not in (1, 2):
        raise ValueError(f"layer {layer_id!r}: send protocol {protocol} is not one btrfsx sends (1 or 2)")
    if protocol > offered:
        raise OSError(errno.EOPNOTSUPP, f"layer {layer_id!r}: this kernel sends protocol {offered} at most, "
                      f"not {protocol}", store.layer_path(layer_id))
    # Both layers checked before any twin is made: a refused send leaves nothing.
    if parent:
        pfd0 = _open_subvolume(store.subvolumes_fd, parent)
        if pfd0 is None:
            raise FileNotFoundError(errno.ENOENT, f"layer {layer_id!r}: parent layer {parent!r} does not exist",
                                    store.layer_path(parent))
        os.close(pfd0)
    fds = [_twin_for_send(store, layer_id)]
    try:
        parent_root = 0
        clones: tuple[int, ...] = ()
        if parent:
            try:
                pfd = _twin_for_send(store, parent)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, f"layer {layer_id!r}: parent layer {parent!r} does not exist",
                                        store.layer_path(parent)) from None
            fds.append(pfd)
            parent_root = _ioctl.subvolume_id(pfd)
            clones = (parent_root,)
        flags = _ioctl.SEND_FLAG_VERSION | _ioctl.SEND_FLAG_COMPRESSED if protocol == 2 else 0
        return cast(BinaryIO, SendStream(layer_id, fds, (parent_root, clones, flags, protocol if protocol == 2 else 0)))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# ---------------------------------------------------------------- receiving

class _Head:
    """The stream header and its first command, parsed."""

    def __init__(self, version: int, command: int, name: bytes, uuid: _uuid.UUID, ctransid: int,
                 clone_uuid: _uuid.UUID | None, clone_ctransid: int | None, raw: bytes):
        self.version, self.command, self.name = version, command, name
        self.uuid, self.ctransid = uuid, ctransid
        self.clone_uuid, self.clone_ctransid = clone_uuid, clone_ctransid
        self.raw = raw


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_head(stream: BinaryIO) -> _Head:
    header = _read_exactly(stream, _STREAM_HEADER.size)
    if len(header) < _STREAM_HEADER.size:
        raise StreamError(f"the send stream is truncated: it ends after {len(header)} bytes, inside its header"
                          if header else "the send stream is empty")
    magic, version = _STREAM_HEADER.unpack(header)
    if magic != MAGIC:
        raise StreamError("not a btrfs send stream (no 'btrfs-stream' magic at its start)")
    if version not in _MAX_COMMAND:
        raise StreamError(f"send stream protocol version {version} is not one btrfsx receives (1 or 2)")
    cmd_header = _read_exactly(stream, _CMD_HEADER.size)
    if len(cmd_header) < _CMD_HEADER.size:
        raise StreamError(f"the send stream is truncated: it ends after {len(header) + len(cmd_header)} bytes, "
                          "before its first command")
    length, command, _ = _CMD_HEADER.unpack(cmd_header)
    if command not in (C_SUBVOL, C_SNAPSHOT):
        raise StreamError(f"the send stream's first command is {command}, not a subvolume or snapshot")
    if length > 65536:
        raise StreamError(f"the send stream's first command claims {length} bytes of attributes")
    body = _read_exactly(stream, length)
    if len(body) < length:
        raise StreamError("the send stream is truncated: it ends inside its first command")
    attrs: dict[int, bytes] = {}
    pos = 0
    while pos < length:
        if pos + _TLV_HEADER.size > length:
            raise StreamError("the send stream's first command is corrupt (an attribute overruns it)")
        kind, size = _TLV_HEADER.unpack_from(body, pos)
        pos += _TLV_HEADER.size
        if pos + size > length:
            raise StreamError("the send stream's first command is corrupt (an attribute overruns it)")
        attrs[kind] = body[pos:pos + size]
        pos += size
    name = attrs.get(A_PATH, b"")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name or len(name) > 255:
        raise StreamError(f"the send stream names its subvolume {name!r}, not a single directory entry")
    for kind, size in ((A_UUID, 16), (A_CTRANSID, 8)) + (((A_CLONE_UUID, 16), (A_CLONE_CTRANSID, 8))
                                                         if command == C_SNAPSHOT else ()):
        if len(attrs.get(kind, b"")) != size:
            raise StreamError("the send stream's first command is corrupt (a missing or malformed UUID or "
                              "transid)")
    clone_uuid = _uuid.UUID(bytes=attrs[A_CLONE_UUID]) if command == C_SNAPSHOT else None
    clone_ctransid = struct.unpack("<Q", attrs[A_CLONE_CTRANSID])[0] if command == C_SNAPSHOT else None
    return _Head(version, command, name, _uuid.UUID(bytes=attrs[A_UUID]),
                 struct.unpack("<Q", attrs[A_CTRANSID])[0], clone_uuid, clone_ctransid,
                 header + cmd_header + body)


def _btrfs() -> str:
    path = shutil.which("btrfs") or next((p for p in ("/usr/sbin/btrfs", "/sbin/btrfs", "/usr/bin/btrfs")
                                          if os.access(p, os.X_OK)), None)
    if path is None:
        raise PrerequisitesError("receiving a send stream needs the 'btrfs' command of btrfs-progs "
                                 "(apt-get install btrfs-progs)")
    return path


def _mount_root(home: str) -> str:
    """A mount point of home's filesystem above home whose root is a
    subvolume's root, for ``btrfs receive -m``: it finds a parent subvolume
    by UUID as a path from there (home itself may be a bind mount of a plain
    directory, as the driver makes it)."""
    fsid = _fsid(home)
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] != "btrfs":
                continue
            point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
                .replace("\\134", "\\")
            if not (home == point or home.startswith(point.rstrip("/") + "/")):
                continue
            try:
                st = os.stat(point)
                if st.st_ino != _ioctl.FIRST_FREE_OBJECTID or _fsid(point) != fsid:
                    continue
            except OSError:
                continue
            if best is None or len(point) > len(best):
                best = point
    if best is None:
        raise OSError(errno.ENOENT, "no mount of a subvolume of its filesystem is above it, from where "
                      "'btrfs receive' could find a parent subvolume", home)
    return best


def _fsid(path: str) -> str:
    with open_dir(path, follow=True) as fd:  # home, or a mount point above it: either may be reached by a symlink
        return str(_ioctl.fs_info(fd).fsid)


def _parent_twin(store: Store, layer_id: str, parent: str, head: _Head) -> str:
    """Check the stream is incremental against ``parent``'s twin; returns
    the parent layer's UUID (for the lineage record)."""
    lfd = _open_subvolume(store.subvolumes_fd, parent)
    if lfd is None:
        raise FileNotFoundError(errno.ENOENT, f"layer {layer_id!r} not received: parent layer {parent!r} does not "
                                "exist", store.layer_path(parent))
    try:
        parent_uuid = str(_ioctl.get_subvolume_info(lfd).uuid)
    finally:
        os.close(lfd)
    tfd = _open_subvolume(store.home_fd, os.path.join(TWINS, parent, TWIN))
    matches = False
    if tfd is not None:
        try:
            twin = _ioctl.get_subvolume_info(tfd)
        finally:
            os.close(tfd)
        matches = ((twin.received_uuid == head.clone_uuid and twin.stransid == head.clone_ctransid)
                   or (twin.uuid == head.clone_uuid and twin.ctransid == head.clone_ctransid))
    if not matches:
        raise StreamError(f"layer {layer_id!r} not received: the stream is incremental against subvolume "
                          f"{head.clone_uuid} (transid {head.clone_ctransid}), which parent layer {parent!r} "
                          "was not received or sent as here")
    return parent_uuid


class _Relay:
    """Copies a stream to ``btrfs receive``, following its command headers."""

    def __init__(self, stream: BinaryIO, out: int, version: int):
        self.stream, self.out = stream, out
        self.max_command = _MAX_COMMAND[version]
        self.total = 0

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.out, view)
            view = view[n:]

    def run(self, first: bytes) -> None:
        self.total = len(first)
        self.write(first)
        skip = 0                      # bytes of the current command still to pass
        pending = bytearray()         # a command header split across reads
        unpack = _CMD_HEADER.unpack_from
        size = _CMD_HEADER.size
        max_command = self.max_command
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        readinto = getattr(self.stream, "readinto", None)
        while True:
            if readinto is not None:
                n = readinto(buf)
                chunk = view[:n] if n else b""
            else:
                chunk = self.stream.read(_CHUNK)
                n = len(chunk)
            if not n:
                break
            i = 0
            while i < n:
                if skip:
                    take = min(skip, n - i)
                    i += take
                    skip -= take
                    continue
                if pending or n - i < size:
                    want = size - len(pending)
                    pending += chunk[i:i + want]
                    i += min(want, n - i)
                    if len(pending) < size:
                        break
                    length, command, _ = unpack(pending)
                    pending.clear()
                else:
                    length, command, _ = unpack(chunk, i)
                    i += size
                if command == C_END:
                    if length or i < n or _read_exactly(self.stream, 1):
                        raise StreamError(f"the send stream goes on after its end command (at byte "
                                          f"{self.total + i})")
                    self.total += n
                    self.write(chunk)
                    return
                if command > max_command or command == 0:
                    raise StreamError(f"the send stream holds an unknown command {command} at byte "
                                      f"{self.total + i - size}")
                skip = length
            self.write(chunk)
            self.total += n
        raise StreamError(f"the send stream is truncated: it ends after {self.total} bytes, "
                          + ("inside a command" if skip or pending else "without its end command"))


def receive(store: Store, layer_id: str, stream: BinaryIO, parent: str | None, size: int | None,
            limit) -> int:
    """Make layer ``layer_id`` from a send stream; returns the bytes read.

    ``limit(fd, layer_id, size)`` sets the layer's size limit (the driver's,
    which knows the quota mode).  All or nothing: on any failure nothing of
    it is left (a process killed midway leaves a locked directory in
    ``receiving/`` and a staging directory, which gc takes once unlocked).
    """
    with store.lock(layer_id):
        try:
            os.stat(layer_id, dir_fd=store.subvolumes_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise FileExistsError(errno.EEXIST, f"layer {layer_id!r} already exists", store.layer_path(layer_id))
        try:
            head = _read_head(stream)
        except StreamError as e:
            raise StreamError(f"layer {layer_id!r} not received: {e}") from None
        parent_uuid = None
        if head.command == C_SNAPSHOT and not parent:
            raise StreamError(f"layer {layer_id!r} not received: the stream is incremental (against subvolume "
                              f"{head.clone_uuid}); give the parent layer it was sent against")
        if head.command == C_SUBVOL and parent:
            raise StreamError(f"layer {layer_id!r} not received: the stream is a full one, not incremental "
                              f"against {parent!r}; receive it without a parent")
        if parent:
            parent_uuid = _parent_twin(store, layer_id, parent, head)
        btrfs = _btrfs()
        mount = _mount_root(store.home)
        rname = f"{os.getpid()}-{next(_receive_counter)}"
        with ExitStack() as fds:
            while True:
                rroot = _dir(store, RECEIVING_DIR)
                try:
                    os.mkdir(rname, 0o700, dir_fd=rroot)
                    rfd = os.open(rname, DIR_NOFOLLOW, dir_fd=rroot)
                    break
                except FileNotFoundError:
                    os.close(rroot)  # receiving/ removed meanwhile by a receive that ended: make it again
                except BaseException:
                    os.close(rroot)
                    raise
            fds.callback(os.close, rroot)
            fds.callback(os.close, rfd)
            fcntl.flock(rfd, fcntl.LOCK_EX)  # until this process and `btrfs receive` are gone
            sfd = store.take_staging()
            clean = False
            try:
                total = _receive_locked(store, sfd, rfd, (rroot, rname), layer_id, stream, head, parent_uuid, size,
                                        limit, btrfs, mount)
                clean = True
                return total
            except BaseException:
                clean = _discard(sfd, os.path.join(store.home, RECEIVING_DIR, rname))
                raise
            finally:
                fds.close()  # rfd (its lock) and rroot, before receiving/ is tidied away
                _tidy_receiving(store)
                if clean:
                    store.give_staging(sfd)
                else:
                    store.retire_staging(sfd)  # gc takes what is left in it


def _tidy_receiving(store: Store) -> None:
    """Remove ``receiving/`` once no receive uses it (a receive starting
    meanwhile makes it again), so that a refused receive leaves nothing."""
    try:
        os.rmdir(RECEIVING_DIR, dir_fd=store.home_fd)
    except OSError:
        pass  # another receive is in it, or it is gone already


def _discard(sfd: int, receiving: str) -> bool:
    """Destroy what a failed receive left; True when all of it is gone."""
    try:
        if os.path.lexists(receiving):
            subvolume.remove_tree(receiving, destroy_subvolumes=True)
        if os.path.lexists(f"/proc/self/fd/{sfd}/{LAYER}"):
            _ioctl.destroy_subvolume(sfd, LAYER)
        return True
    except OSError:
        return False


_PR_SET_PDEATHSIG = 1
_prctl = None


def _death_signal():
    """A function for the child, before exec: SIGKILL when the thread that
    started it ends (PR_SET_PDEATHSIG), so a driver killed midway takes
    `btrfs receive` with it.  Looked up here, in the parent: between fork
    and exec only the call itself is safe (no import, no lock)."""
    global _prctl
    if _prctl is None:
        import ctypes
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl = _prctl

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return die_with_parent


def _run_receive(rfd: int, target: str, layer_id: str, stream: BinaryIO, head: _Head, btrfs: str,
                 mount: str) -> int:
    """``btrfs receive`` of the stream into ``target``, confined there; returns the bytes relayed."""
    # rfd goes to the child: the directory's lock is held until `btrfs
    # receive` is gone too, so gc never races a receive whose driver died.
    proc = subprocess.Popen([btrfs, "receive", "-e", "-C", "-E", "1", "-m", mount, target],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            pass_fds=(rfd,), close_fds=True, preexec_fn=_death_signal())
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    reader.start()
    relay = _Relay(stream, proc.stdin.fileno() if proc.stdin else -1, head.version)
    failure: BaseException | None = None
    try:
        relay.run(head.raw)
    except BrokenPipeError:
        pass  # it stopped reading: its status says why
    except BaseException as e:
        failure = e
        proc.kill()
    finally:
        if proc.stdin:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        status = proc.wait()
        reader.join()
    if failure is not None:
        if isinstance(failure, StreamError):
            raise StreamError(f"layer {layer_id!r} not received: {failure}") from None
        if isinstance(failure, OSError):
            raise type(failure)(failure.errno, f"layer {layer_id!r} not received: {failure.strerror}",
                                failure.filename) from None
        raise failure
    if status != 0:
        message = b"".join(errors).decode(errors="replace").strip()
        lines = [line for line in message.splitlines() if not line.startswith(("At subvol", "At snapshot", "Chroot"))]
        raise StreamError(f"layer {layer_id!r} not received: btrfs receive failed (exit status {status}): "
                          + ("; ".join(lines[-3:]) or "no message"))
    return relay.total


def _receive_locked(store: Store, sfd: int, rfd: int, where: tuple[int, str], layer_id: str, stream: BinaryIO,
                    head: _Head, parent_uuid: str | None, size: int | None, limit, btrfs: str, mount: str) -> int:
    rroot, rname = where
    total = _run_receive(rfd, os.path.join(store.home, RECEIVING_DIR, rname), layer_id, stream, head, btrfs, mount)
    name = os.fsdecode(head.name)
    entries = os.listdir(f"/proc/self/fd/{rfd}")
    if entries != [name]:
        raise StreamError(f"layer {layer_id!r} not received: the stream wrote outside its subvolume "
                          f"({', '.join(sorted(map(repr, entries)))} in the receiving directory)")
    tfd = _open_subvolume(rfd, name)
    if tfd is None:
        raise StreamError(f"layer {layer_id!r} not received: btrfs receive made no subvolume {name!r}")
    try:
        twin = _ioctl.get_subvolume_info(tfd)
        if twin.received_uuid != head.uuid or not _ioctl.get_subvolume_flags(tfd) & _ioctl.SUBVOL_RDONLY:
            raise StreamError(f"layer {layer_id!r} not received: btrfs receive did not finish subvolume {name!r}")
        _ioctl.snapshot(tfd, sfd, LAYER)  # the layer: a writable snapshot of the twin
    finally:
        os.close(tfd)
    if name != TWIN:
        os.rename(name, TWIN, src_dir_fd=rfd, dst_dir_fd=rfd)  # in its directory: a read-only one cannot leave it
    with open_dir(LAYER, sfd) as lfd:  # the snapshot just made
        if size is not None:
            limit(lfd, layer_id, size)
        layer_uuid = str(_ioctl.get_subvolume_info(lfd).uuid)
    record: dict[str, str | int | None] = {"layer": layer_uuid, "twin": str(twin.uuid), "ctransid": None}
    _write_record(rfd, record)
    tdir = _dir(store, TWINS)
    try:
        _drop(store, layer_id)  # a stale twin of a layer gone (the id's lock is held)
        _ioctl.rename_noreplace(rroot, rname, tdir, layer_id)
        try:
            if size is not None:
                store.write_quota(layer_id, size)
            else:
                store.remove_quota(layer_id)  # a stale one from an interrupted remove
            if parent_uuid:
                store.record_lineage(layer_uuid, parent_uuid, "")
            store.publish(sfd, LAYER, layer_id)
        except BaseException:
            if size is not None:
                store.remove_quota(layer_id)
            store.forget_lineage(layer_uuid)
            _drop(store, layer_id)
            raise
    finally:
        os.close(tdir)
    # Published: from here on the layer stands, whatever fails.  Its
    # ctransid makes the twin reusable for sending the layer on from here;
    # without it (a failure now) the first send makes a new twin instead.
    try:
        with open_dir(layer_id, store.subvolumes_fd, follow=True) as pfd:
            _ioctl.sync(pfd)
            published = _ioctl.get_subvolume_info(pfd)
            record["ctransid"] = published.ctransid
            record["since"] = published.generation + 1
        _write_record(rfd, record)
    except OSError:
        pass
    return total
