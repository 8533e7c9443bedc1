"""Layers to and from OCI image layouts (image-spec v1.0: ``oci-layout``,
``index.json``, ``blobs/<alg>/<hex>``), over the public :class:`Driver` API.

:func:`export_oci` writes a layer and its ancestors as an image: one gzip
blob per layer (its diff against its parent), a config and a manifest, all
reproducible (gzip without a timestamp or name, canonical JSON), so two
exports of the same layers give the same digests.  :func:`import_oci` applies
an image's layers, verifying every blob's digest and every layer's diff id
as it streams; layers are named by their chain id, so a chain already
imported is reused rather than applied again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import BinaryIO, NamedTuple, cast

from btrfsx._fd import open_dir
from btrfsx.archive.apply import decompressor, stream_error, stream_errors
from btrfsx.driver import Driver
from btrfsx.errors import ArchiveError
from btrfsx.store import OCI_MARKERS, read_marker

__all__ = ["export_oci", "import_oci", "check_tag", "Descriptor", "Exported", "chain_ids",
           "MEDIA_TYPE_INDEX", "MEDIA_TYPE_MANIFEST", "MEDIA_TYPE_CONFIG", "MEDIA_TYPE_LAYER",
           "MEDIA_TYPE_LAYER_GZIP", "MEDIA_TYPE_LAYER_ZSTD", "REF_NAME"]

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"

# Docker's schema 2 types, as a registry or an older tool may hand them on.
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_LAYER_COMPRESSION = {
    MEDIA_TYPE_LAYER: None,
    MEDIA_TYPE_LAYER_GZIP: "gzip",
    MEDIA_TYPE_LAYER_ZSTD: "zstd",
    _DOCKER_LAYER_GZIP: "gzip",
}

#: Fixed, so that the compressed bytes (and digests) of an export repeat.
GZIP_LEVEL = 6
_CHUNK = 1 << 20
_DIGEST = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")
_HEX_LEN = {"sha256": 64, "sha512": 128}
#: The most a manifest or config may weigh (containers/image's limit).
_MAX_JSON = 4 << 20
#: org.opencontainers.image.ref.name (image-spec annotations.md):
#: ref ::= component ("/" component)*; component ::= alphanum (separator alphanum)*;
#: alphanum ::= [A-Za-z0-9]+; separator ::= [-._:@+] | "--"
REF_GRAMMAR = 'ref ::= component ("/" component)*, component ::= alphanum (separator alphanum)*, ' \
    'alphanum ::= [A-Za-z0-9]+, separator ::= [-._:@+] | "--"'
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
#: Marks an imported layer as complete: ``home/.btrfsx/oci/<layer id>``.
_MARKERS = OCI_MARKERS

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
           "i686": "386", "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64", "mips64": "mips64", "loongarch64": "loong64"}


class Descriptor(NamedTuple):
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class Exported(NamedTuple):
    """What :func:`export_oci` wrote."""

    manifest: Descriptor
    config: Descriptor
    layers: list[Descriptor]
    diff_ids: list[str]
    layer_ids: list[str]      #: the exported chain, base first
    tag: str | None


def _canonical(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The image-spec chain ids of a stack of diff ids: ChainID(L0) = DiffID(L0),
    ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def _platform() -> tuple[str, str, str | None]:
    machine = platform.machine().lower()
    arch = _GOARCH.get(machine, machine)
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
    return platform.system().lower(), arch, variant


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# ---------------------------------------------------------------- export

class _BlobWriter:
    """A new blob, written to a temporary file in ``blobs/sha256`` while its
    digest and size are computed, then renamed to its digest (or dropped,
    when a blob of that digest is already there)."""

    def __init__(self, blob_dir: str):
        self.blob_dir = blob_dir
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", dir=blob_dir)
        os.fchmod(fd, 0o644)  # as other OCI tools write blobs, not mkstemp's 0600
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> None:
        self.hash.update(data)
        self.size += len(data)
        self.file.write(data)

    def commit(self, media_type: str) -> Descriptor:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        digest = "sha256:" + self.hash.hexdigest()
        final = os.path.join(self.blob_dir, self.hash.hexdigest())
        if _intact(final, digest, self.size):
            os.unlink(self.tmp)  # content-addressed: that blob is this one
        else:
            os.rename(self.tmp, final)
        return Descriptor(media_type, digest, self.size)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _intact(path: str, digest: str, size: int) -> bool:
    """Whether ``path`` holds a blob of ``digest`` (hashing costs far less than
    compressing, and a damaged blob must not be kept)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return False
    with f:
        if os.fstat(f.fileno()).st_size != size:
            return False
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest() == digest


def _write_blob(blob_dir: str, media_type: str, data: bytes) -> Descriptor:
    w = _BlobWriter(blob_dir)
    try:
        w.write(data)
        return w.commit(media_type)
    except BaseException:
        w.abort()
        raise


def _write_layer(blob_dir: str, stream: BinaryIO) -> tuple[Descriptor, str]:
    """Gzip ``stream`` into a blob; its descriptor and the diff id (the
    digest of the uncompressed bytes), both from one pass."""
    w = _BlobWriter(blob_dir)
    try:
        diff_hash = hashlib.sha256()
        # wbits 31: a gzip member with mtime 0, no file name, and the OS byte
        # zlib was built with, so the output depends only on the input.
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        while chunk := stream.read(_CHUNK):
            diff_hash.update(chunk)
            w.write(z.compress(chunk))
        w.write(z.flush())
        return w.commit(MEDIA_TYPE_LAYER_GZIP), "sha256:" + diff_hash.hexdigest()
    except BaseException:
        w.abort()
        raise


def _write_json_atomic(path: str, data) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(_canonical(data))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _chain(driver: Driver, layer_id: str) -> list[str]:
    chain = [layer_id]
    while (parent := driver.parent(chain[-1])) is not None:
        if parent in chain:
            raise ValueError(f"layer {layer_id!r}: its lineage loops at {parent!r}")
        chain.append(parent)
    return chain[::-1]


def check_tag(tag: str) -> str:
    """``tag`` if it is a valid ``org.opencontainers.image.ref.name``; a
    ValueError naming it and the grammar otherwise."""
    if not isinstance(tag, str) or not _REF_NAME.fullmatch(tag):
        raise ValueError(f"invalid tag {tag!r}: an OCI image ref name must match {REF_GRAMMAR}")
    return tag


def export_oci(driver: Driver, layer_id: str, directory: str | os.PathLike, tag: str | None = None) -> Exported:
    """Write layer ``layer_id`` and its ancestors (by :meth:`Driver.parent`)
    as an image to the OCI layout ``directory`` (made if missing; an existing
    layout keeps its other images and blobs).  With ``tag``, the image is
    named by an ``org.opencontainers.image.ref.name`` annotation, replacing
    any image of that name."""
    directory = os.fspath(directory)
    if tag is not None:
        check_tag(tag)
    chain = _chain(driver, layer_id)
    blob_dir = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blob_dir, exist_ok=True)
    # Exports into one layout at once would otherwise each rewrite
    # index.json from what they read, and one image would go missing.
    with open_dir(directory, follow=True) as dir_fd:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        exported = _export(driver, chain, directory, blob_dir, tag)
        for path in (blob_dir, directory):
            with open_dir(path, follow=True) as fd:
                os.fsync(fd)  # the renames
        return exported


def _export(driver: Driver, chain: list[str], directory: str, blob_dir: str, tag: str | None) -> Exported:
    layout_path = os.path.join(directory, "oci-layout")
    if os.path.exists(layout_path):
        layout = _read_json_file(layout_path, directory)
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if version != LAYOUT_VERSION:
            raise ValueError(f"{directory}: an OCI layout of version {version!r}, expected {LAYOUT_VERSION!r}")
    else:
        _write_json_atomic(layout_path, {"imageLayoutVersion": LAYOUT_VERSION})

    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    history = []
    parent = None
    for lid in chain:
        with driver.diff(lid, parent) as stream:
            desc, diff_id = _write_layer(blob_dir, stream)
        layers.append(desc)
        diff_ids.append(diff_id)
        created = driver.layer_infos([lid])[0].created
        history.append({"created": _rfc3339(created), "created_by": "btrfsx export-oci",
                        "comment": f"btrfsx layer {lid}"})
        parent = lid

    os_name, arch, variant = _platform()
    config = {
        "architecture": arch,
        "os": os_name,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    if history:
        config["created"] = history[-1]["created"]
    if variant:
        config["variant"] = variant
    config_desc = _write_blob(blob_dir, MEDIA_TYPE_CONFIG, _canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    manifest_desc = _write_blob(blob_dir, MEDIA_TYPE_MANIFEST, _canonical(manifest))

    entry = manifest_desc.to_json()
    entry["platform"] = {"architecture": arch, "os": os_name, **({"variant": variant} if variant else {})}
    if tag is not None:
        entry["annotations"] = {REF_NAME: tag}
    index_path = os.path.join(directory, "index.json")
    manifests = []
    if os.path.exists(index_path):
        index = _read_json_file(index_path, directory)
        olds = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(olds, list) or not all(isinstance(old, dict) for old in olds):
            raise ValueError(f"{index_path}: not an OCI image index (no list of manifest descriptors)")
        for old in olds:
            name = (old.get("annotations") or {}).get(REF_NAME)
            if tag is not None and name == tag:
                continue  # the tag moves to this image
            if tag is None and name is None and old.get("digest") == manifest_desc.digest:
                continue
            manifests.append(old)
    manifests.append(entry)
    _write_json_atomic(index_path, {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": manifests})
    return Exported(manifest_desc, config_desc, layers, diff_ids, chain, tag)


# ---------------------------------------------------------------- import

def _read_json_file(path: str, directory: str):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{directory} is not an OCI image layout: "
                                f"no {os.path.basename(path)}", path) from None
    except (ValueError, UnicodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def _parse_digest(digest, directory: str) -> tuple[str, str]:
    m = _DIGEST.match(digest) if isinstance(digest, str) else None
    if not m or len(m.group(2)) != _HEX_LEN[m.group(1)]:
        raise ValueError(f"{directory}: a malformed or unsupported digest {digest!r} "
                         "(expected sha256:<64 hex digits> or sha512:<128 hex digits>)")
    return m.group(1), m.group(2)


def _blob_path(directory: str, digest: str) -> str:
    alg, hexdigest = _parse_digest(digest, directory)
    return os.path.join(directory, "blobs", alg, hexdigest)


def _descriptor(obj, what: str, directory: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ValueError(f"{directory}: the {what} descriptor is not an object")
    digest, size = obj.get("digest"), obj.get("size")
    _parse_digest(digest, directory)
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"{directory}: the {what} descriptor ({digest}) has no valid size")
    return Descriptor(obj.get("mediaType", ""), cast(str, digest), size)  # a str: _parse_digest checked


class _Verifying(io.RawIOBase):
    """Reads through ``inner``, hashing; :meth:`verify` (called by itself at
    end of stream) raises ArchiveError unless the bytes were ``expected``
    (and ``size`` of them, when given)."""

    def __init__(self, inner: BinaryIO, expected: str, size: int | None, what: Callable[[], str]):
        self.inner = inner
        self.alg, _ = expected.split(":", 1)
        self.expected = expected
        self.size = size
        self.what = what
        self.hash = hashlib.new(self.alg)
        self.count = 0
        self.verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.size is not None and self.count > self.size:
            self._fail()
        data = self.inner.read(len(b))
        if not data:
            self.verify()
            return 0
        n = len(data)
        b[:n] = data
        self.hash.update(data)
        self.count += n
        return n

    def _fail(self):
        got = f"{self.alg}:{self.hash.hexdigest()}"
        if self.size is not None and self.count != self.size:
            raise ArchiveError(f"{self.what()}: expected {self.size} bytes, found "
                               f"{'more' if self.count > self.size else self.count}")
        raise ArchiveError(f"{self.what()}: digest mismatch: expected {self.expected}, got {got}")

    def verify(self) -> None:
        if self.verified:
            return
        if (self.size is not None and self.count != self.size) or \
                f"{self.alg}:{self.hash.hexdigest()}" != self.expected:
            self._fail()
        self.verified = True

    def drain(self) -> None:
        """Read what is left (the part of a stream its reader did not need), then verify."""
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass
        self.verify()


def _read_blob(directory: str, desc: Descriptor, what: str) -> bytes:
    if desc.size > _MAX_JSON:
        raise ValueError(f"{directory}: the {what} blob {desc.digest} claims {desc.size} bytes; "
                         f"more than the {_MAX_JSON} a {what} may have")
    path = _blob_path(directory, desc.digest)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{directory}: the {what} blob {desc.digest} is missing",
                                path) from None
    with f:
        v = _Verifying(f, desc.digest, desc.size, lambda: f"{directory}: the {what} blob {desc.digest}")
        data = v.read(desc.size + 1)
        v.drain()
    return data


def _read_json_blob(directory: str, desc: Descriptor, what: str) -> dict:
    data = _read_blob(directory, desc, what)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeError) as e:
        raise ValueError(f"{directory}: the {what} blob {desc.digest} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{directory}: the {what} blob {desc.digest} is not a JSON object")
    return obj


def _pick_manifest(directory: str, tag: str | None) -> Descriptor:
    layout = _read_json_file(os.path.join(directory, "oci-layout"), directory)
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ValueError(f"{directory}/oci-layout: no imageLayoutVersion")
    index = _read_json_file(os.path.join(directory, "index.json"), directory)
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{directory}/index.json: no manifests list")
    entries = [e for e in entries if isinstance(e, dict)]
    names = sorted({n for e in entries if (n := (e.get("annotations") or {}).get(REF_NAME))})
    if tag is not None:
        found = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == tag]
        if not found:
            raise FileNotFoundError(errno.ENOENT, f"no image tagged {tag!r} in {directory} (tags: "
                                    f"{', '.join(names) or 'none'})", os.path.join(directory, "index.json"))
        if len(found) > 1:
            raise ValueError(f"{directory}: {len(found)} images are tagged {tag!r}")
    else:
        found = entries
        if len(found) != 1:
            raise ValueError(f"{directory} holds {len(found)} images: give a tag "
                             f"(tags: {', '.join(names) or 'none'})")
    desc = _descriptor(found[0], "manifest", directory)
    if desc.media_type not in (MEDIA_TYPE_MANIFEST, _DOCKER_MANIFEST):
        raise ValueError(f"{directory}: the image{f' tagged {tag!r}' if tag else ''} is a {desc.media_type!r}, "
                         f"expected an image manifest ({MEDIA_TYPE_MANIFEST})")
    return desc


class _Decompressing(io.RawIOBase):
    """The tar bytes of ``blob``, compressed with ``compression``: a stream
    that is corrupt or cut short raises ArchiveError naming the blob
    (``what()``) and saying what is wrong, where."""

    def __init__(self, blob: _Verifying, compression: str, what: Callable[[], str]):
        self.blob = blob
        self.compression = compression
        self.what = what
        self.inner = decompressor(cast(BinaryIO, io.BufferedReader(blob, _CHUNK)), compression)
        self.errors = stream_errors()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.inner.read(len(b))
        except ArchiveError as e:
            if str(e).startswith(self.what()):
                raise  # the blob's own digest or size check
            raise ArchiveError(f"{self.what()}: {e}") from None
        except self.errors as e:
            raise ArchiveError(f"{self.what()}: {stream_error(e, self.compression, self.blob.count)}") from None
        n = len(data)
        b[:n] = data
        return n


class _Markers:
    """``home/.btrfsx/oci/<layer id>``: written (with the subvolume's UUID)
    once the layer is complete; a layer without its marker, or whose
    subvolume is not the one the marker names, was left half-made and is
    not reused.  The marker file is also the layer's import lock."""

    def __init__(self, driver: Driver):
        self.dir = os.path.join(driver.home, _MARKERS)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def lock(self, layer_id: str) -> int:
        path = os.path.join(self.dir, layer_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Driver.gc may have unlinked the file while this waited for it:
            # a lock on an unlinked marker guards nothing
            try:
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    read = staticmethod(read_marker)

    @staticmethod
    def write(fd: int, record: dict) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _canonical(record), 0)
        os.fsync(fd)

    @staticmethod
    def clear(fd: int) -> None:
        os.ftruncate(fd, 0)


def _uuid(driver: Driver, layer_id: str) -> str | None:
    infos = driver.layer_infos([layer_id])
    return infos[0].uuid if infos else None


def _apply_layer(driver: Driver, directory: str, layer_id: str, parent: str | None, desc: Descriptor,
                 diff_id: str) -> None:
    compression = _LAYER_COMPRESSION.get(desc.media_type)
    if desc.media_type not in _LAYER_COMPRESSION:
        raise ValueError(f"{directory}: layer blob {desc.digest} has media type {desc.media_type!r}; "
                         f"expected one of {', '.join(sorted(_LAYER_COMPRESSION))}")
    path = _blob_path(directory, desc.digest)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{directory}: layer blob {desc.digest} is missing", path) from None
    with f:
        blob = _Verifying(f, desc.digest, desc.size, lambda: f"{directory}: layer blob {desc.digest}")
        tar = _Decompressing(blob, compression or "tar", lambda: f"{directory}: layer blob {desc.digest}")
        plain = _Verifying(cast(BinaryIO, tar), diff_id, None,
                           lambda: f"{directory}: layer blob {desc.digest} uncompressed (its diff id)")
        driver.create(layer_id, parent)
        try:
            driver.apply_diff(layer_id, parent, io.BufferedReader(plain, _CHUNK))
            # tar readers stop at the end-of-archive blocks: what follows
            # still counts towards both digests.
            plain.drain()
            blob.drain()
        except BaseException as e:
            try:
                driver.remove(layer_id)
            except OSError as cleanup:
                e.add_note(f"and the half-made layer {layer_id!r} could not be removed: {cleanup}")
            raise


def import_oci(driver: Driver, directory: str | os.PathLike, tag: str | None = None) -> str:
    """Apply the image of OCI layout ``directory`` (the one tagged ``tag``, or
    its only image) as a chain of layers, each named by the hex of its chain
    id; returns the top layer's id.  Layers of a chain already imported are
    reused.  Every blob is checked against its digest and size, every layer
    against its diff id, while it is applied: on a mismatch the layer being
    made is removed and ArchiveError raised (layers below it, complete and
    verified, stay for the next try to reuse)."""
    directory = os.fspath(directory)
    manifest_desc = _pick_manifest(directory, tag)
    manifest = _read_json_blob(directory, manifest_desc, "manifest")
    config_desc = _descriptor(manifest.get("config"), "config", directory)
    config = _read_json_blob(directory, config_desc, "config")
    layer_descs = [_descriptor(d, f"layer {i}", directory) for i, d in enumerate(manifest.get("layers") or [])]
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ValueError(f"{directory}: config {config_desc.digest} has no rootfs.diff_ids")
    for d in diff_ids:
        _parse_digest(d, directory)
    if len(diff_ids) != len(layer_descs):
        raise ValueError(f"{directory}: manifest {manifest_desc.digest} lists {len(layer_descs)} layers, "
                         f"its config {len(diff_ids)} diff ids")
    if not layer_descs:
        raise ValueError(f"{directory}: manifest {manifest_desc.digest} has no layers")
    markers = _Markers(driver)
    parent = None
    for desc, diff_id, chain_id in zip(layer_descs, diff_ids, chain_ids(diff_ids)):
        layer_id = chain_id.split(":", 1)[1]
        fd = markers.lock(layer_id)
        try:
            record = markers.read(fd)
            if driver.exists(layer_id):
                if record.get("uuid") and record.get("uuid") == _uuid(driver, layer_id) \
                        and record.get("chain_id") == chain_id:
                    parent = layer_id
                    continue
                # made by an import that did not finish (or by something else)
                driver.remove(layer_id)
            markers.clear(fd)
            _apply_layer(driver, directory, layer_id, parent, desc, diff_id)
            markers.write(fd, {"chain_id": chain_id, "diff_id": diff_id, "uuid": _uuid(driver, layer_id),
                               "blob": desc.digest})
        finally:
            os.close(fd)
        parent = layer_id
    assert parent is not None  # there is at least one layer
    return parent


def gc_markers(driver: Driver) -> list[str]:
    """The import markers :meth:`Driver.gc` removed (it collects them with
    the rest); kept for callers of the earlier API."""
    return list(driver.gc().oci_markers)
