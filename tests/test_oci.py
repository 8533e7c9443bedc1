"""OCI image layouts: ``export_oci`` and ``import_oci`` (and the commands).

The layout is checked independently of the code that wrote it (every blob
re-hashed, every layer decompressed and its diff id recomputed), exports
are reproducible, and layer chains survive a round trip into a second store
file by file, whatever the compression of the blobs.  A damaged blob fails
the import and leaves no layer behind; a chain already imported is reused,
and one left half-made is redone.
"""

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from btrfsx import ArchiveError, Driver
from btrfsx.oci import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST,
    REF_NAME,
    chain_ids,
    check_tag,
    export_oci,
    gc_markers,
    import_oci,
)
from tests_support import assert_same_tree, driver_at, make_chain, members

# ---------------------------------------------------------------- fixtures

@pytest.fixture
def src(btrfs_dir):
    yield from driver_at(btrfs_dir / "a")


@pytest.fixture
def dst(btrfs_dir):
    yield from driver_at(btrfs_dir / "b")


@pytest.fixture
def chain(src):
    return make_chain(src)


@pytest.fixture
def image(src, chain, tmp_path):
    out = tmp_path / "image"
    return out, export_oci(src, chain[-1], out, tag="v1")


# ---------------------------------------------------------------- layout helpers

def blob(layout: Path, digest: str) -> Path:
    alg, hexdigest = digest.split(":")
    return layout / "blobs" / alg / hexdigest


def read_json(layout: Path, digest: str) -> dict:
    return json.loads(blob(layout, digest).read_bytes())


def write_blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob(layout, digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def rewrite_image(layout: Path, layers: list[tuple[str, bytes]], diff_ids: list[str] | None = None,
                  tag: str = "v1") -> None:
    """Replace the tagged image of ``layout`` by one of ``layers`` ((media
    type, blob bytes)), with the config's other fields kept."""
    index = json.loads((layout / "index.json").read_bytes())
    entry = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == tag)
    manifest = read_json(layout, entry["digest"])
    config = read_json(layout, manifest["config"]["digest"])
    if diff_ids is not None:
        config["rootfs"]["diff_ids"] = diff_ids
    manifest["config"] = {"mediaType": MEDIA_TYPE_CONFIG, **write_blob(layout, json.dumps(config).encode())}
    manifest["layers"] = [{"mediaType": mt, **write_blob(layout, data)} for mt, data in layers]
    entry.update(write_blob(layout, json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))


def uncompressed_layers(layout: Path, tag: str | None = "v1") -> list[bytes]:
    index = json.loads((layout / "index.json").read_bytes())
    entry = next(m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) == tag)
    return [gzip.decompress(blob(layout, layer["digest"]).read_bytes())
            for layer in read_json(layout, entry["digest"])["layers"]]


# ---------------------------------------------------------------- export

def test_export_writes_an_oci_layout_whose_digests_check_out(src, chain, image):
    layout, exported = image
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_bytes())
    assert index["schemaVersion"] == 2 and index["mediaType"] == MEDIA_TYPE_INDEX
    [entry] = index["manifests"]
    assert entry["mediaType"] == MEDIA_TYPE_MANIFEST
    assert entry["annotations"] == {REF_NAME: "v1"}
    assert entry["digest"] == exported.manifest.digest

    # every blob is named by the sha256 of its bytes, and nothing else is there
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    for path in blobs:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    assert len(blobs) == 2 + len(chain)  # no temporary files left

    def check(desc, media_type):
        assert desc["mediaType"] == media_type
        assert blob(layout, desc["digest"]).stat().st_size == desc["size"]
    check(entry, MEDIA_TYPE_MANIFEST)
    manifest = read_json(layout, entry["digest"])
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    check(manifest["config"], MEDIA_TYPE_CONFIG)
    config = read_json(layout, manifest["config"]["digest"])
    assert config["os"] == "linux"
    assert config["architecture"] == {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                                 config["architecture"])
    assert config["rootfs"]["type"] == "layers"
    assert len(config["history"]) == len(chain) == len(manifest["layers"])

    # each layer: gzip without a timestamp or file name, whose contents are
    # the layer's diff against its parent, hashed to the config's diff id
    diff_ids = []
    for layer_id, parent, desc in zip(chain, [None] + chain[:-1], manifest["layers"]):
        check(desc, MEDIA_TYPE_LAYER_GZIP)
        data = blob(layout, desc["digest"]).read_bytes()
        assert data[:3] == b"\x1f\x8b\x08" and data[3] & 0x08 == 0 and data[4:8] == b"\0\0\0\0"
        plain = gzip.decompress(data)
        with src.diff(layer_id, parent) as stream:
            assert plain == stream.read()
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    assert config["rootfs"]["diff_ids"] == diff_ids == exported.diff_ids
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(uncompressed_layers(layout)[2]))]
    assert "usr/bin/.wh.big" in names and "var/lib/.wh.app" not in names  # replaced, not deleted
    assert exported.layer_ids == chain


def test_export_is_reproducible_and_reuses_blobs(src, chain, image, tmp_path):
    layout, first = image
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (layout / "blobs/sha256").iterdir()}
    index = (layout / "index.json").read_bytes()
    again = export_oci(src, chain[-1], layout, tag="v1")
    assert again == first
    assert (layout / "index.json").read_bytes() == index  # the tag moved to the same image: one entry
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (layout / "blobs/sha256").iterdir()}
    assert after == before  # existing blobs were not rewritten
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (layout / "blobs/sha256").iterdir())

    # but a damaged one (same size, one byte off) is
    damaged = blob(layout, first.layers[0].digest)
    good = damaged.read_bytes()
    damaged.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    export_oci(src, chain[-1], layout, tag="v1")
    assert damaged.read_bytes() == good

    fresh = tmp_path / "fresh"
    third = export_oci(src, chain[-1], fresh, tag="v1")
    assert third == first
    assert (fresh / "index.json").read_bytes() == index
    for name in before:
        assert (fresh / "blobs/sha256" / name).read_bytes() == (layout / "blobs/sha256" / name).read_bytes()

    # a second image in the same layout shares the lower layers' blobs
    mid = export_oci(src, chain[1], layout, tag="mid")
    assert mid.layers == first.layers[:2]
    tags = [m["annotations"][REF_NAME] for m in json.loads((layout / "index.json").read_bytes())["manifests"]]
    assert tags == ["v1", "mid"]


# ---------------------------------------------------------------- import

def test_round_trip_into_a_second_store(src, dst, chain, image):
    layout, exported = image
    top = import_oci(dst, layout, tag="v1")
    ids = [c.split(":")[1] for c in chain_ids(exported.diff_ids)]
    assert top == ids[-1]
    assert dst.layers() == sorted(ids)
    assert [dst.parent(i) for i in ids] == [None] + ids[:-1]
    for original, imported in zip(chain, ids):
        assert_same_tree(src.get(original), dst.get(imported))
    root = Path(dst.get(top))
    assert not (root / "usr/bin/big").exists() and not (root / "gone").exists()
    assert (root / "var/lib/app").read_bytes() == b"now a file\n"
    assert os.stat(root / "opt/app/run").st_ino == os.stat(root / "opt/app/run2").st_ino
    assert os.getxattr(root / "etc/passwd", "user.origin") == b"mid layer"
    assert os.lstat(root / "etc/shadow").st_gid == 42
    # imported layers are read-only as the driver makes them: root mode kept
    assert stat.S_IMODE(os.stat(dst.get(ids[0])).st_mode) == stat.S_IMODE(os.stat(src.get(chain[0])).st_mode)

    # and out again: the same layers, entry for entry
    again = export_oci(dst, top, layout.parent / "again")
    for ours, theirs in zip(uncompressed_layers(layout), uncompressed_layers(layout.parent / "again", None)):
        assert members(ours) == members(theirs)
    assert again.diff_ids == exported.diff_ids  # byte for byte


def test_a_reexported_chain_has_the_same_digests(src, dst, chain, tmp_path):
    os.utime(src.get(chain[1]), (1_000_000_000, 1_000_000_000))  # as if "gone" was deleted long ago
    exported = export_oci(src, chain[-1], tmp_path / "image", tag="v1")
    top = import_oci(dst, tmp_path / "image", tag="v1")
    assert export_oci(dst, top, tmp_path / "again").layers == exported.layers


def test_zstd_and_uncompressed_blobs_import(src, dst, chain, image):
    layout, exported = image
    plain = uncompressed_layers(layout)
    rewrite_image(layout, [(MEDIA_TYPE_LAYER_ZSTD, zstandard.ZstdCompressor(level=3).compress(plain[0])),
                           (MEDIA_TYPE_LAYER, plain[1]),
                           (MEDIA_TYPE_LAYER_ZSTD, zstandard.ZstdCompressor(level=19).compress(plain[2]))])
    top = import_oci(dst, layout, tag="v1")
    ids = [c.split(":")[1] for c in chain_ids(exported.diff_ids)]
    assert top == ids[-1]
    for original, imported in zip(chain, ids):
        assert_same_tree(src.get(original), dst.get(imported))


def _layers_and_markers(d: Driver) -> tuple[list[str], list[str]]:
    markers = Path(d.home, ".btrfsx/oci")
    return d.layers(), sorted(p.name for p in markers.iterdir() if p.stat().st_size)


def test_a_blob_that_does_not_match_its_digest_fails_and_leaves_no_layer(dst, image):
    layout, exported = image
    ids = [c.split(":")[1] for c in chain_ids(exported.diff_ids)]
    base = blob(layout, exported.layers[0].digest)
    good = base.read_bytes()
    base.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # the gzip trailer's size field
    with pytest.raises(ArchiveError, match=exported.layers[0].digest):
        import_oci(dst, layout, tag="v1")
    assert _layers_and_markers(dst) == ([], [])
    base.write_bytes(good)

    damaged = blob(layout, exported.layers[1].digest)
    original = damaged.read_bytes()
    # the gzip header's timestamp: the layer still decompresses and applies
    # cleanly, so only the digest check can catch it
    damaged.write_bytes(original[:4] + b"\x01" + original[5:])
    with pytest.raises(ArchiveError) as e:
        import_oci(dst, layout, tag="v1")
    message = str(e.value)
    assert exported.layers[1].digest in message and "digest mismatch" in message and str(layout) in message
    assert _layers_and_markers(dst) == ([ids[0]], [ids[0]])  # the verified base stays, nothing half-made

    # bytes flipped inside the compressed data, and a blob cut short
    damaged.write_bytes(original[:len(original) // 2] + bytes([original[len(original) // 2] ^ 0xFF])
                        + original[len(original) // 2 + 1:])
    with pytest.raises(ArchiveError, match=exported.layers[1].digest):
        import_oci(dst, layout, tag="v1")
    assert _layers_and_markers(dst) == ([ids[0]], [ids[0]])
    damaged.write_bytes(original[:-100])
    with pytest.raises(ArchiveError, match=f"{exported.layers[1].digest}.*expected {len(original)} bytes"):
        import_oci(dst, layout, tag="v1")
    assert _layers_and_markers(dst) == ([ids[0]], [ids[0]])

    damaged.write_bytes(original)
    assert import_oci(dst, layout, tag="v1") == ids[-1]
    assert _layers_and_markers(dst) == (sorted(ids), sorted(ids))


def test_a_layer_that_does_not_match_its_diff_id_fails(dst, image):
    layout, exported = image
    plain = uncompressed_layers(layout)
    wrong = list(exported.diff_ids)
    wrong[2] = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    rewrite_image(layout, [(MEDIA_TYPE_LAYER, p) for p in plain], diff_ids=wrong)
    with pytest.raises(ArchiveError, match="diff id.*expected " + wrong[2]):
        import_oci(dst, layout, tag="v1")
    ids = [c.split(":")[1] for c in chain_ids(wrong)]
    assert dst.layers() == sorted(ids[:2])


@pytest.mark.parametrize("media_type", ["gzip", "zstd"])
def test_a_blob_whose_digest_holds_but_whose_stream_is_cut_fails_naming_it(dst, image, media_type):
    """The digest is of the damaged blob itself (the damage was there when it
    was pushed): the decompressor has to notice, after the tar's end too."""
    layout, exported = image
    plain = uncompressed_layers(layout)
    if media_type == "gzip":
        compressed, mt = gzip.compress(plain[0], mtime=0), MEDIA_TYPE_LAYER_GZIP
        cut = compressed[:-6]  # the trailer: the tar inside is whole
    else:
        compressed, mt = zstandard.ZstdCompressor(level=3).compress(plain[0]), MEDIA_TYPE_LAYER_ZSTD
        cut = compressed[:-3]
    rewrite_image(layout, [(mt, cut)], diff_ids=exported.diff_ids[:1])
    with pytest.raises(ArchiveError) as e:
        import_oci(dst, layout, tag="v1")
    message = str(e.value)
    assert str(layout) in message and f"the {media_type} stream is truncated" in message, message
    assert f"after {len(cut)} compressed bytes" in message, message
    assert _layers_and_markers(dst) == ([], [])


def test_reimport_reuses_the_chain_without_reading_blobs(dst, image):
    layout, exported = image
    top = import_oci(dst, layout, tag="v1")
    before = {i.id: (i.uuid, i.created, os.stat(dst.get(i.id)).st_ino) for i in dst.layer_infos()}
    for desc in exported.layers:
        blob(layout, desc.digest).unlink()  # any attempt to apply a layer would now fail
    assert import_oci(dst, layout, tag="v1") == top
    after = {i.id: (i.uuid, i.created, os.stat(dst.get(i.id)).st_ino) for i in dst.layer_infos()}
    assert after == before


def test_a_chain_shared_in_part_applies_only_the_new_layers(src, dst, chain, image):
    layout, exported = image
    export_oci(src, chain[1], layout, tag="mid")
    mid = import_oci(dst, layout, tag="mid")
    before = {i.id: i.uuid for i in dst.layer_infos()}
    assert len(before) == 2
    blob(layout, exported.layers[0].digest).unlink()
    top = import_oci(dst, layout, tag="v1")
    assert dst.parent(top) == mid
    assert {i: dst.layer_infos([i])[0].uuid for i in before} == before


def test_a_half_made_layer_is_redone(src, dst, chain, image):
    layout, exported = image
    ids = [c.split(":")[1] for c in chain_ids(exported.diff_ids)]
    import_oci(dst, layout, tag="v1")
    # a crash between create and apply: the layer exists, empty (a snapshot
    # of its parent), and its marker names the subvolume that was there before
    dst.remove(ids[2])
    dst.create(ids[2], ids[1])
    assert not (Path(dst.get(ids[2])) / "opt/app/config.json").exists()
    base_uuid = dst.layer_infos([ids[0]])[0].uuid
    assert import_oci(dst, layout, tag="v1") == ids[2]
    assert_same_tree(src.get(chain[2]), dst.get(ids[2]))
    assert dst.layer_infos([ids[0]])[0].uuid == base_uuid

    # and with no marker at all (a crash before the first marker was written)
    dst.remove(ids[2])
    dst.create(ids[2], ids[1])
    (Path(dst.home) / ".btrfsx/oci" / ids[2]).unlink()
    assert import_oci(dst, layout, tag="v1") == ids[2]
    assert_same_tree(src.get(chain[2]), dst.get(ids[2]))


def test_gc_removes_the_markers_of_layers_that_are_gone(dst, image):
    """A removed imported layer leaves its import marker; gc_markers removes
    it (and the marker of a layer made anew under that id), and leaves the
    markers of live layers and of an import at work."""
    import fcntl
    layout, exported = image
    top = import_oci(dst, layout, tag="v1")
    ids = [c.split(":")[1] for c in chain_ids(exported.diff_ids)]
    markers = Path(dst.home) / ".btrfsx" / "oci"
    assert sorted(p.name for p in markers.iterdir()) == sorted(ids)
    assert gc_markers(dst) == []
    dst.remove(top)
    dst.create(ids[1] + "x")  # not an import: no marker
    dst.remove(ids[1])
    dst.create(ids[1], ids[0])  # the same id made anew: not what was imported
    held = os.open(markers / top, os.O_RDWR)  # as an import of that layer would
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert gc_markers(dst) == [ids[1]]
    finally:
        os.close(held)
    assert gc_markers(dst) == [top]
    assert sorted(p.name for p in markers.iterdir()) == [ids[0]]
    assert import_oci(dst, layout, tag="v1") == top  # and the chain imports again
    assert sorted(p.name for p in markers.iterdir()) == sorted(ids)


def test_errors_name_the_layout_tag_and_blob(dst, src, chain, image, tmp_path):
    layout, exported = image
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing} is not an OCI image layout"):
        import_oci(dst, missing)
    with pytest.raises(FileNotFoundError, match="no image tagged 'v2'.*tags: v1"):
        import_oci(dst, layout, tag="v2")
    export_oci(src, chain[0], layout, tag="base")
    with pytest.raises(ValueError, match=f"{layout} holds 2 images: give a tag .tags: base, v1"):
        import_oci(dst, layout)
    blob(layout, exported.layers[0].digest).unlink()
    with pytest.raises(FileNotFoundError, match=f"layer blob {exported.layers[0].digest} is missing"):
        import_oci(dst, layout, tag="v1")
    blob(layout, exported.config.digest).write_bytes(b"{}")
    with pytest.raises(ArchiveError, match=f"config blob {exported.config.digest}"):
        import_oci(dst, layout, tag="v1")
    assert dst.layers() == []
    with pytest.raises(FileNotFoundError, match="nope"):
        export_oci(src, "nope", tmp_path / "x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/index.json").write_text('{"manifests": 3}')
    with pytest.raises(ValueError, match="index.json: not an OCI image index"):
        export_oci(src, chain[0], tmp_path / "other")
    (tmp_path / "other/oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(ValueError, match="version '2.0.0', expected '1.0.0'"):
        export_oci(src, chain[0], tmp_path / "other")


def test_untagged_export_is_the_only_image_to_import(src, dst, chain, tmp_path):
    exported = export_oci(src, chain[1], tmp_path / "image")
    index = json.loads((tmp_path / "image/index.json").read_bytes())
    assert "annotations" not in index["manifests"][0]
    top = import_oci(dst, tmp_path / "image")
    assert top == chain_ids(exported.diff_ids)[-1].split(":")[1]
    assert_same_tree(src.get(chain[1]), dst.get(top))


def test_an_empty_layer_and_repeated_diffs_keep_their_place_in_the_chain(src, dst, tmp_path):
    # two layers with the same (empty) diff: one diff id, two chain ids
    src.create("base")
    Path(src.get("base"), "file").write_bytes(b"x")
    src.create("empty1", "base")
    src.create("empty2", "empty1")
    src.create("top", "empty2")
    Path(src.get("top"), "file").unlink()
    exported = export_oci(src, "top", tmp_path / "image")
    assert exported.diff_ids[1] == exported.diff_ids[2]
    assert len(set(chain_ids(exported.diff_ids))) == 4
    top = import_oci(dst, tmp_path / "image")
    assert len(dst.layers()) == 4
    assert os.listdir(dst.get(top)) == [] and os.listdir(dst.get(dst.parent(top))) == ["file"]


def test_concurrent_imports_of_one_image_apply_each_layer_once(src, dst, chain, image):
    layout, exported = image
    procs = [subprocess.Popen([sys.executable, "-m", "btrfsx", "import-oci", str(layout), "--tag", "v1",
                               "--home", dst.home], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [err.decode() for _, err, _ in results]
    tops = {out.decode().strip() for out, _, _ in results}
    assert tops == {chain_ids(exported.diff_ids)[-1].split(":")[1]}
    assert len(dst.layers()) == 3
    assert_same_tree(src.get(chain[-1]), dst.get(tops.pop()))


# ---------------------------------------------------------------- the commands

def btrfsx(*args, home):
    proc = subprocess.run([sys.executable, "-m", "btrfsx", *args, "--home", str(home)], capture_output=True)
    return proc


def test_export_and_import_commands(src, dst, chain, tmp_path):
    src_home, dst_home = src.home, dst.home
    out = btrfsx("export-oci", chain[-1], str(tmp_path / "img"), "--tag", "v1", "--json", home=src_home)
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert [layer["id"] for layer in report["layers"]] == chain
    index = json.loads((tmp_path / "img/index.json").read_bytes())
    assert index["manifests"][0]["digest"] == report["manifest"]

    out = btrfsx("import-oci", str(tmp_path / "img"), "--tag", "v1", home=dst_home)
    assert out.returncode == 0, out.stderr.decode()
    top = out.stdout.decode().strip()
    assert top == chain_ids([layer["diff_id"] for layer in report["layers"]])[-1].split(":")[1]
    assert_same_tree(src.get(chain[-1]), dst.get(top))
    out = btrfsx("import-oci", str(tmp_path / "img"), "--tag", "v1", "--json", home=dst_home)
    assert json.loads(out.stdout) == {"id": top, "directory": str(tmp_path / "img"), "tag": "v1",
                                      "path": dst.get(top)}

    out = btrfsx("import-oci", str(tmp_path / "img"), "--tag", "v9", home=dst_home)
    assert out.returncode == 1
    assert out.stderr.decode().startswith("btrfsx: no image tagged 'v9' in ")
    out = btrfsx("export-oci", "missing", str(tmp_path / "img2"), home=src_home)
    assert out.returncode == 1 and "layer 'missing' does not exist" in out.stderr.decode()
    for command in ("export-oci", "import-oci"):
        out = btrfsx(command, "--help", home=src_home).stdout.decode()
        assert "example:" in out and "--tag" in out


# ---------------------------------------------------------------- tags (issue #14)

@pytest.mark.parametrize("tag", ["v1", "1.0", "latest", "a--b", "registry.example/app:v1", "a@b+c_d",
                                 "library/ubuntu/22.04", "A-Z.0"])
def test_tags_of_the_ref_name_grammar_are_accepted(tag):
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "bad tag!", "-v1", "v1-", "a---b", "a//b", "/a", "a/", "a..b", "v1\n",
                                 "caf\u00e9", "a b", "a!"])
def test_tags_outside_the_ref_name_grammar_are_refused(tag):
    with pytest.raises(ValueError) as e:
        check_tag(tag)
    assert repr(tag) in str(e.value) and "separator ::= [-._:@+]" in str(e.value)


def test_export_with_a_bad_tag_writes_nothing(driver, tmp_path):
    driver.create("base")
    with pytest.raises(ValueError, match="invalid tag 'bad tag!'"):
        export_oci(driver, "base", tmp_path / "image", tag="bad tag!")
    assert not (tmp_path / "image").exists()
