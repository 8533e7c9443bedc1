"""Exported images as other tools see them: pushed to a real registry
(Debian's ``docker-registry``) and pulled back with ``skopeo``, then imported
into a second store; unpacked by ``umoci``, an independent OCI reader; and
inspected by ``skopeo``.

The tools are installed by ``scripts/bootstrap.sh``; without them these
tests skip with the reason, or fail where ``CI`` is set.
"""

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from btrfsx.oci import chain_ids, export_oci, import_oci
from tests_support import assert_same_tree, driver_at, make_chain, need

pytestmark = pytest.mark.btrfs


def run(*argv, timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """A ``docker-registry`` on a free local port, storing under tmp_path;
    yields ``127.0.0.1:PORT``, stopped whatever happens."""
    need("docker-registry")
    for attempt in range(3):
        port = _free_port()
        config = tmp_path / f"registry-{attempt}.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {tmp_path / 'registry-data'}\n"
                          f"http:\n  addr: 127.0.0.1:{port}\n")
        log = open(tmp_path / f"registry-{attempt}.log", "wb")
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.05)
            else:
                continue  # exited (the port was taken meanwhile?) or never answered: another port
            yield f"127.0.0.1:{port}"
            return
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    pytest.fail("docker-registry did not come up: " + (tmp_path / "registry-2.log").read_text()[-2000:])


@pytest.fixture
def policy(tmp_path) -> str:
    """A signature policy of skopeo's own, so the machine's (if any) does not matter."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return str(path)


@pytest.fixture
def src(btrfs_dir):
    yield from driver_at(btrfs_dir / "a")


@pytest.fixture
def dst(btrfs_dir):
    yield from driver_at(btrfs_dir / "b")


@pytest.fixture
def exported(src, tmp_path):
    chain = make_chain(src)
    layout = tmp_path / "image"
    return chain, layout, export_oci(src, chain[-1], layout, tag="v1")


def test_round_trip_through_a_registry(registry, policy, src, dst, exported, tmp_path):
    need("skopeo")
    chain, layout, first = exported
    ref = f"docker://{registry}/btrfsx/test:v1"
    run("skopeo", "--policy", policy, "copy", "--dest-tls-verify=false", f"oci:{layout}:v1", ref)
    tags = json.loads(urllib.request.urlopen(f"http://{registry}/v2/btrfsx/test/tags/list", timeout=5).read())
    assert tags["tags"] == ["v1"]
    pulled = tmp_path / "pulled"
    run("skopeo", "--policy", policy, "copy", "--src-tls-verify=false", ref, f"oci:{pulled}:v1")
    index = json.loads((pulled / "index.json").read_bytes())
    assert [m["digest"] for m in index["manifests"]] == [first.manifest.digest]  # byte for byte

    top = import_oci(dst, pulled, tag="v1")
    ids = [c.split(":")[1] for c in chain_ids(first.diff_ids)]
    assert top == ids[-1]
    for original, imported in zip(chain, ids):
        assert_same_tree(src.get(original), dst.get(imported))


def test_skopeo_inspects_and_umoci_unpacks_the_export(src, exported, btrfs_dir):
    need("skopeo", "umoci")
    chain, layout, first = exported
    info = json.loads(run("skopeo", "inspect", f"oci:{layout}:v1"))
    assert info["Digest"] == first.manifest.digest
    assert info["Layers"] == [d.digest for d in first.layers]
    assert info["Os"] == "linux"
    raw = json.loads(run("skopeo", "inspect", "--config", "--raw", f"oci:{layout}:v1"))
    assert raw["rootfs"]["diff_ids"] == first.diff_ids

    # umoci applies the layers its own way (whiteouts, hard links, owners as
    # root); the root filesystem it makes must be the top layer's
    bundle = btrfs_dir / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:v1", str(bundle))
    assert_same_tree(src.get(chain[-1]), bundle / "rootfs")
