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
            "send", "receive",
            "export-oci", "import-oci",
            "demo", "loopback", "quota", "run"]


@pytest.fixture
def state(tmp_path, btrfs_available):
    """A state directory of the test's own for the embedded store, destroyed afterwards."""
    path = tmp_path / "state"
    yield path
    subprocess.run([sys.executable, "-m", "btrfsx", "loopback", "destroy"],
                   env={**os.environ, "BTRFSX_STATE_DIR": str(path)}, capture_output=True)


def run(*args, home=None, state=None, input=None, check=True, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("BTRFSX_HOME", "BTRFSX_STATE_DIR", "BTRFSX_OPTIONS")}
    env["BTRFSX_LOOPBACK_SIZE"] = str(1 << 30)
    env.update(env_extra or {})
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
    def ours() -> set[str]:  # other processes' loop devices come and go meanwhile
        return {image for image in attached_images() if image.startswith(str(state))}
    assert ours() == set()
    status = run_json("status", state=state)
    assert status["Layers"] == 0
    info = run_json("loopback", "status", state=state)
    assert info["exists"] and info["mounted"]
    assert info["image"] == str(state / "btrfs.img")
    inode = os.stat(info["image"]).st_ino
    assert ours() == {info["image"]}
    run("create", "base", state=state)
    again = run_json("loopback", "status", state=state)
    assert again["device"] == info["device"] and os.stat(again["image"]).st_ino == inode
    assert [layer["id"] for layer in run_json("ls", state=state)] == ["base"]  # reused, not remade
    out = run("loopback", "destroy", state=state).stdout.decode()
    assert f"destroyed {state / 'btrfs.img'}" in out
    after = run_json("loopback", "status", state=state)
    assert not after["exists"] and not after["mounted"]
    assert ours() == set()
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
    assert status["Layers"] == 1 and status["Quota Mode"] in ("simple", "qgroup")


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
    # a template copy whose process is gone (pid 4194304 is above the kernel's pid_max)
    run("create", "tpl@copy-4194304-0", home=home)
    run("create", "tpl@keep-4194304-1", home=home)
    assert run_json("gc", home=home)["template_copies"] == ["tpl@copy-4194304-0"]
    assert sorted(layer["id"] for layer in run_json("ls", home=home)) == ["base", "tpl@keep-4194304-1"]


def test_run_in_a_fresh_copy_of_a_layer(home):
    run("create", "fixture", home=home)
    (home / "subvolumes" / "fixture" / "data").write_text("pristine")
    script = 'test "$PWD" = "$BTRFSX_COPY" && cat data && echo dirty > data'
    proc = run("--home", str(home), "run", "--from", "fixture", "--", "sh", "-c", script)
    assert proc.stdout == b"pristine"
    assert (home / "subvolumes" / "fixture" / "data").read_text() == "pristine"
    assert [layer["id"] for layer in run_json("ls", home=home)] == ["fixture"]  # the copy is gone
    # the command's exit status; a failed command's copy kept with --keep, named on stderr
    failed = run("--home", str(home), "run", "--from", "fixture", "--keep", "--", "sh", "-c", "echo x >out; exit 3",
                 check=False)
    assert failed.returncode == 3
    (kept,) = [layer["id"] for layer in run_json("ls", home=home) if layer["id"] != "fixture"]
    assert kept.startswith("fixture@keep-") and kept in failed.stderr.decode()
    assert (home / "subvolumes" / kept / "out").read_text() == "x\n"
    assert run("--home", str(home), "run", "--from", "fixture", "--", "sh", "-c", "exit 4", check=False).returncode == 4
    assert run("--home", str(home), "run", "--from", "fixture", "--", "sh", "-c", "kill -9 $$",
               check=False).returncode == 128 + 9
    assert sorted(layer["id"] for layer in run_json("ls", home=home)) == ["fixture", kept]
    # options after the command are the command's
    echoed = run("--home", str(home), "run", "--from", "fixture", "--", "echo", "--json", "-o", "x").stdout
    assert echoed == b"--json -o x\n"
    assert run("--home", str(home), "run", "--from", "fixture", "echo", "--keep").stdout == b"--keep\n"


def test_run_builds_a_template_from_a_shell_command_once_per_key(home):
    def stamp(key):
        return run("--home", str(home), "run", "--from", "db", "--build", "echo $$ > stamp", "--key", key, "--",
                   "cat", "stamp").stdout
    first = stamp("v1")
    assert stamp("v1") == first
    assert stamp("v2") != first
    failed = run("--home", str(home), "run", "--from", "db2", "--build", "exit 5", "--key", "v1", "--", "true",
                 check=False)
    assert failed.returncode == 1
    assert failed.stderr.decode() == ("btrfsx: template build command 'exit 5' failed (exit status 5); nothing of "
                                      "it was kept\n")
    assert sorted(layer["id"] for layer in run_json("ls", home=home)) == ["db"]


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


def test_the_command_list_is_complete():
    """COMMANDS (and scripts/check-install.sh) must know every command the parser has."""
    from btrfsx.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(sub.choices) == sorted(COMMANDS)


def test_top_level_help_lists_the_global_options():
    out = run("--help").stdout.decode()
    for option in ("--home", "--json", "--debug", "-o KEY=VALUE, --option KEY=VALUE"):
        assert option in out
    assert "BTRFSX_OPTIONS" in out


def test_an_unknown_option_shows_the_command_usage():
    proc = run("ls", "--bogus", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert err.startswith("usage: btrfsx ls ") and "btrfsx ls: error: unrecognized arguments: --bogus" in err
    nested = run("quota", "disable", "--bogus", check=False).stderr.decode()
    assert "usage: btrfsx quota disable " in nested and "unrecognized arguments: --bogus" in nested


def test_a_missing_module_is_one_line_naming_it_and_the_install_command(tmp_path):
    # rich made unimportable: a None entry in sys.modules raises ImportError(name="rich")
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['rich'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "btrfsx", "loopback", "status"], capture_output=True, env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("btrfsx: ") and "'rich'" in err and "pip install 'rich>=13'" in err


def test_rich_is_a_core_dependency():
    import tomllib
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert any(d.replace(" ", "").startswith("rich>=13") for d in project["dependencies"])
    assert "cli" in project["optional-dependencies"]  # btrfsx[cli] still installs


# ---------------------------------------------------------------- conventions (issue #14)

def test_rm_checks_every_id_first_and_removes_none_if_one_is_missing(home):
    for layer in ("x1", "x2"):
        run("create", layer, home=home)
    proc = run("rm", "x1", "nosuch", "x2", "ghost", home=home, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("btrfsx: ")
    assert "layer 'nosuch' does not exist" in err and "layer 'ghost' does not exist" in err
    assert "nothing removed" in err and "'x1'" not in err
    assert [layer["id"] for layer in run_json("ls", home=home)] == ["x1", "x2"]
    assert "all or none" in run("rm", "--help").stdout.decode()


def test_rm_refuses_a_parent_with_children_unless_forced_or_removed_with_it(home):
    run("create", "base", home=home)
    run("create", "c1", "--parent", "base", home=home)
    run("create", "c2", "--parent", "base", home=home)
    run("create", "g1", "--parent", "c1", home=home)
    proc = run("rm", "base", home=home, check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == \
        "btrfsx: layer 'base' has children 'c1', 'c2'; remove them too or use --force"
    proc = run("rm", "base", "c2", home=home, check=False)  # c1 is still a child
    assert proc.returncode == 1 and "layer 'base' has children 'c1';" in proc.stderr.decode()
    assert {layer["id"] for layer in run_json("ls", home=home)} == {"base", "c1", "c2", "g1"}
    # a parent with all its descendants: children go first, whatever the order given
    assert run_json("rm", "c1", "base", "g1", "c2", home=home) == {"removed": ["g1", "c1", "c2", "base"]}
    assert run_json("ls", home=home) == []
    run("create", "base", home=home)
    run("create", "child", "--parent", "base", home=home)
    assert run_json("rm", "base", "--force", home=home) == {"removed": ["base"]}
    assert [(layer["id"], layer["parent"]) for layer in run_json("ls", home=home)] == [("child", None)]


def test_driver_options_from_the_environment_and_the_command_line(home):
    env = {"BTRFSX_OPTIONS": "btrfs.min_space=100m"}
    proc = run("create", "bad", "--size=10m", home=home, check=False, env_extra=env)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "'bad'" in err and len(err.strip().splitlines()) == 1
    assert run("exists", "bad", home=home, check=False).returncode == 1
    # the command line comes after the environment: it overrides it, before and after the command
    run("-o", "btrfs.min_space=1m", "create", "ok1", "--size=10m", home=home, env_extra=env)
    run("create", "ok2", "--size=10m", "--option", "btrfs.min_space=1m", home=home, env_extra=env)
    status = run_json("status", "-o", "btrfs.min_space=2m", home=home,
                      env_extra={"BTRFSX_OPTIONS": " btrfs.min_space=100m,btrfs.size=1g ,"})
    assert status["Min Space"] == 2 << 20 and status["Default Size"] == 1 << 30
    # diff keeps -o for --output; --option works there
    out = run("diff", "ok1", "--option", "btrfsx.changes=naive", "--parent", "", home=home).stdout
    assert tarfile.open(fileobj=io.BytesIO(out)) is not None
    bad = run("ls", home=home, check=False, env_extra={"BTRFSX_OPTIONS": "btrfs.nonsense=1"})
    assert bad.returncode == 1 and bad.stderr.decode().strip() == "btrfsx: Unknown option btrfs.nonsense"


def test_an_empty_size_is_refused_not_ignored(home):
    proc = run("create", "x", "--size", "", home=home, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "invalid size: ''" in err and "Traceback" not in err
    assert run("exists", "x", home=home, check=False).returncode == 1


def test_status_json_has_numbers(home):
    run("create", "base", home=home)
    status = run_json("status", home=home)
    assert status["Layers"] == 1 and status["Min Space"] is None and status["Default Size"] is None
    sized = run_json("status", "-o", "btrfs.min_space=10m", "-o", "btrfs.size=1g", home=home)
    assert sized["Min Space"] == 10 << 20 and sized["Default Size"] == 1 << 30
    assert isinstance(sized["Filesystem UUID"], str) and sized["Driver"].startswith("btrfsx ")
    table = run("status", home=home).stdout.decode()
    assert "Layers" in table and "Min Space" in table


def test_export_oci_refuses_a_tag_outside_the_ref_grammar(home, tmp_path):
    run("create", "base", home=home)
    proc = run("export-oci", "base", str(tmp_path / "image"), "--tag", "bad tag!", home=home, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1
    assert "invalid tag 'bad tag!'" in err and "component" in err and "Traceback" not in err
    assert not (tmp_path / "image").exists()  # nothing written
    run("export-oci", "base", str(tmp_path / "image"), "--tag", "registry.example/app:v1.0--rc1", home=home)


def test_plain_directories_and_symlinks_in_subvolumes_are_not_layers(home):
    run("create", "base", home=home)
    (home / "subvolumes" / "plain").mkdir()
    (home / "subvolumes" / "link").symlink_to("base")
    assert [layer["id"] for layer in run_json("ls", home=home)] == ["base"]
    assert run_json("status", home=home)["Layers"] == 1
    assert run("exists", "plain", home=home, check=False).returncode == 1
    assert run("exists", "link", home=home, check=False).returncode == 1
    report = run_json("gc", home=home)
    assert report["foreign"] == [str(home / "subvolumes" / "link"), str(home / "subvolumes" / "plain")]
    out = run("gc", home=home).stdout.decode()
    assert f"foreign entry, not a layer (left alone): {home / 'subvolumes' / 'plain'}" in out
    assert "nothing to collect" not in out
    assert (home / "subvolumes" / "plain").is_dir() and (home / "subvolumes" / "link").is_symlink()
    proc = run("rm", "plain", home=home, check=False)
    assert proc.returncode == 1 and "'plain' is not a btrfs subvolume" in proc.stderr.decode()
    # the library agrees with the command
    from btrfsx import Driver
    d = Driver(home)
    try:
        assert d.layers() == ["base"] and not d.exists("plain") and not d.exists("link")
        assert [i.id for i in d.layer_infos()] == ["base"]
        assert d.layer_infos(["plain", "link", "base"])[0].id == "base" and len(d.layer_infos(["plain"])) == 0
        assert dict(d.status())["Layers"] == "1" and d.status_info()["Layers"] == 1
        report = d.gc()
        assert list(report.foreign) == [str(home / "subvolumes" / "link"), str(home / "subvolumes" / "plain")]
        assert not report  # foreign entries are reported, not collected
        assert report.subvolumes == [] and report[:3] == ([], [], report.qgroups)  # positions kept
    finally:
        d.close()
    assert (home / "subvolumes" / "plain").is_dir() and (home / "subvolumes" / "link").is_symlink()


def test_interrupted_message():
    from btrfsx import cli

    def interrupted(args):
        raise KeyboardInterrupt
    parser = cli.build_parser
    try:
        cli.build_parser = lambda: _with_func(parser(), interrupted)
        import contextlib
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert cli.main(["gc", "--home", "/nonexistent"]) == 130
    finally:
        cli.build_parser = parser
    assert err.getvalue() == "btrfsx: interrupted; run 'btrfsx gc' to collect what was left\n"


def _with_func(parser, func):
    parser.set_defaults(func=func)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for p in sub.choices.values():
        p.set_defaults(func=func)
    return parser


def _has_disable_quotas() -> bool:
    from btrfsx import Driver
    return hasattr(Driver, "disable_quotas")


@pytest.mark.skipif(not _has_disable_quotas(),
                    reason="Driver.disable_quotas is not in btrfsx/driver.py yet (another change adds it)")
def test_quota_disable(home):
    run("create", "base", home=home)
    run("create", "sized", "--parent", "base", "--size", "10M", home=home)
    proc = run("quota", "disable", home=home, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1 and "'sized'" in err
    assert "Traceback" not in err
    assert run_json("status", home=home)["Quota Mode"] != "off"
    assert run_json("quota", "disable", "--force", home=home) == {"action": "disable", "disabled": True}
    assert run_json("status", home=home)["Quota Mode"] == "off"
    assert "quotas were already off" in run("quota", "disable", home=home).stdout.decode()


def test_version():
    assert run("--version").stdout.decode().startswith("btrfsx ")
