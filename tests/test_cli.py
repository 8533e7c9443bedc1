"""The ``btrfsx`` command, driven as a user drives it: subprocesses on real
loopback btrfs filesystems, JSON output parsed, errors and exit statuses."""

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests_support import attached_images

COMMANDS = ["create", "rm", "path", "exists", "status", "ls", "changes", "diff", "apply", "diff-size", "gc",
            "export-oci", "import-oci",
            "demo", "loopback"]


@pytest.fixture
def state(tmp_path, btrfs_available):
    """A state directory of the test's own for the embedded store, destroyed afterwards."""
    path = tmp_path / "state"
    yield path
    subprocess.run([sys.executable, "-m", "btrfsx", "loopback", "destroy"],
                   env={**os.environ, "BTRFSX_STATE_DIR": str(path)}, capture_output=True)


def run(*args, home=None, state=None, input=None, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("BTRFSX_HOME", "BTRFSX_STATE_DIR")}
    env["BTRFSX_LOOPBACK_SIZE"] = str(1 << 30)
    if state is not None:
        env["BTRFSX_STATE_DIR"] = str(state)
    argv = [sys.executable, "-m", "btrfsx", *args]
    if home is not None:
        argv += ["--home", str(home)]
    proc = subprocess.run(argv, capture_output=True, env=env, input=input)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def run_json(*args, **kwargs):
    return json.loads(run(*args, "--json", **kwargs).stdout)


# ---------------------------------------------------------------- the embedded store

def test_embedded_store_is_made_reused_and_destroyed(state):
    before = attached_images()
    status = run_json("status", state=state)
    assert status["Layers"] == "0"
    info = run_json("loopback", "status", state=state)
    assert info["exists"] and info["mounted"]
    assert info["image"] == str(state / "btrfs.img")
    inode = os.stat(info["image"]).st_ino
    run("create", "base", state=state)
    again = run_json("loopback", "status", state=state)
    assert again["device"] == info["device"] and os.stat(again["image"]).st_ino == inode
    assert [layer["id"] for layer in run_json("ls", state=state)] == ["base"]  # reused, not remade
    out = run("loopback", "destroy", state=state).stdout.decode()
    assert f"destroyed {state / 'btrfs.img'}" in out
    after = run_json("loopback", "status", state=state)
    assert not after["exists"] and not after["mounted"]
    assert attached_images() == before
    assert "nothing to destroy" in run("loopback", "destroy", state=state).stdout.decode()


def test_demo_runs_on_the_embedded_store(state):
    summary = run_json("demo", "--builds", "2", "--layers", "2", "--files", "100", state=state)
    assert summary["layers_created"] == 1 + 2 * 2
    assert summary["applied_bytes"] > 0 and summary["exported_bytes"] > 0
    assert set(summary["median_seconds"]) >= {"create (snapshot)", "apply_diff", "remove", "diff (export)"}
    if summary["compared_with_btrfs_command"] is not None:
        assert set(summary["compared_with_btrfs_command"]) == {"create (snapshot)", "remove"}
    assert run_json("ls", state=state) == []  # it cleans up after itself
    table = run("demo", "--builds", "1", "--layers", "1", "--files", "20", state=state).stdout.decode()
    assert "layers created" in table and "apply_diff" in table


# ---------------------------------------------------------------- layers

def test_create_ls_path_exists_rm(home):
    made = run_json("create", "base", home=home)
    assert made["path"] == str(home / "subvolumes" / "base")
    run("create", "app", "--parent", "base", "--size", "10M", home=home)
    run("create", "rw", "--parent", "app", "--rw", home=home)
    layers = {layer["id"]: layer for layer in run_json("ls", home=home)}
    assert set(layers) == {"base", "app", "rw"}
    assert layers["app"]["parent"] == "base" and layers["rw"]["parent"] == "app"
    assert layers["base"]["parent"] is None
    assert layers["app"]["limit"] == 10 << 20
    assert layers["app"]["referenced"] is not None  # quotas are on
    assert layers["base"]["created"] > 0
    tree = run("ls", "--tree", home=home).stdout.decode()
    assert tree.index("base") < tree.index("app") < tree.index("rw")
    assert run("path", "app", home=home).stdout.decode().strip() == str(home / "subvolumes" / "app")
    assert run("exists", "app", home=home).returncode == 0
    assert run("exists", "nope", home=home, check=False).returncode == 1
    assert run_json("exists", "nope", home=home, check=False) == {"id": "nope", "exists": False}
    assert run_json("rm", "rw", "app", home=home) == {"removed": ["rw", "app"]}
    assert [layer["id"] for layer in run_json("ls", home=home)] == ["base"]
    status = run_json("status", home=home)
    assert status["Layers"] == "1" and status["Quota Mode"] in ("simple", "qgroups")


def test_changes_diff_apply_diff_size(home, tmp_path):
    run("create", "base", home=home)
    base = home / "subvolumes" / "base"
    (base / "etc").mkdir()
    (base / "etc" / "os-release").write_text("ID=btrfsx\n")
    run("create", "app", "--parent", "base", home=home)
    app = home / "subvolumes" / "app"
    (app / "etc" / "os-release").write_text("ID=app\n")
    (app / "new").write_text("hello")
    # without --parent: against the recorded parent
    changes = run_json("changes", "app", home=home)
    assert changes["parent"] == "base"
    assert changes["changes"] == [{"path": "/etc", "kind": "MODIFY"}, {"path": "/etc/os-release", "kind": "MODIFY"},
                                  {"path": "/new", "kind": "ADD"}]
    assert run("changes", "app", home=home).stdout.decode().splitlines() == ["C /etc", "C /etc/os-release", "A /new"]
    # --walk: the same answer by walking both trees
    walked = run("changes", "app", "--walk", home=home)
    assert walked.stdout.decode().splitlines() == ["C /etc", "C /etc/os-release", "A /new"]
    assert run("diff", "app", "--walk", home=home).stdout == run("diff", "app", home=home).stdout
    assert run_json("diff-size", "app", "--walk", home=home) == run_json("diff-size", "app", home=home)
    everything = run_json("changes", "app", "--parent", "", home=home)
    assert everything["parent"] is None and {"path": "/etc", "kind": "ADD"} in everything["changes"]
    assert run_json("diff-size", "app", home=home)["size"] == len("ID=app\n") + len("hello")
    # diff to a file, gzip, zstd and stdout
    plain = run("diff", "app", home=home).stdout
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        assert sorted(tar.getnames()) == ["etc", "etc/os-release", "new"]
    run("diff", "app", "--gzip", "-o", str(tmp_path / "app.tar.gz"), home=home)
    assert gzip.decompress((tmp_path / "app.tar.gz").read_bytes()) == plain
    run("diff", "app", "--zstd", "-o", str(tmp_path / "app.tar.zst"), home=home)
    for source in ("app.tar.gz", "app.tar.zst"):
        layer = source.replace(".", "-")
        run("create", layer, "--parent", "base", home=home)
        applied = run_json("apply", layer, str(tmp_path / source), home=home)
        assert applied == {"id": layer, "applied": len("ID=app\n") + len("hello")}
        assert (home / "subvolumes" / layer / "new").read_text() == "hello"
        assert run_json("changes", layer, "--parent", "app", home=home)["changes"] == []
    run("create", "from-stdin", "--parent", "base", home=home)
    assert "applied 12 bytes" in run("apply", "from-stdin", "-", home=home, input=plain).stdout.decode()


def test_gc_reports_what_it_removed(home):
    run("create", "base", home=home)
    assert run("gc", home=home).stdout.decode().strip() == "nothing to collect"
    (home / "quotas").mkdir()
    (home / "quotas" / "ghost").write_text("1000")
    report = run_json("gc", home=home)
    assert report["quota_files"] == [str(home / "quotas" / "ghost")]
    assert report["oci_markers"] == []
    assert not (home / "quotas" / "ghost").exists()
    (home / "quotas" / "ghost2").write_text("1000")
    assert run("gc", home=home).stdout.decode().strip() == f"removed quota file: {home / 'quotas' / 'ghost2'}"


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("args, message", [
    (("path", "ghost"), "layer 'ghost' does not exist"),
    (("rm", "ghost"), "layer 'ghost' does not exist"),
    (("create", "x", "--size", "lots"), "invalid size: 'lots'"),
    (("create", "x", "--parent", "ghost"), "parent layer 'ghost'"),
    (("create", "a/b"), "invalid layer id 'a/b'"),
    (("changes", "ghost"), "layer 'ghost' does not exist"),
    (("apply", "base", "/nonexistent.tar"), "cannot read /nonexistent.tar"),
])
def test_user_errors_are_one_line_without_traceback(home, args, message):
    run("create", "base", home=home)
    proc = run(*args, home=home, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert err.startswith("btrfsx: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    debug = run(*args, "--debug", home=home, check=False).stderr.decode()
    assert "Traceback" in debug


def test_a_home_not_on_btrfs(non_btrfs_dir):
    proc = run("ls", home=non_btrfs_dir / "home", check=False)
    assert proc.returncode == 1
    assert "is not on a btrfs filesystem" in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()


def test_a_corrupt_tarball_is_refused(home, tmp_path):
    run("create", "base", home=home)
    (tmp_path / "bad.tar").write_bytes(b"not a tarball at all" * 100)
    proc = run("apply", "base", str(tmp_path / "bad.tar"), home=home, check=False)
    assert proc.returncode == 1 and "cannot read the layer tarball" in proc.stderr.decode()


def test_bad_usage_exits_2():
    assert run("frobnicate", check=False).returncode == 2
    assert run("create", check=False).returncode == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    out = run(command, "--help").stdout.decode()
    assert "example:" in out and "--home" in out


def test_version():
    assert run("--version").stdout.decode().startswith("btrfsx ")
