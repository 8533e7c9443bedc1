"""Faults other than crashes (tests/test_crash.py) and fuzzed input
(tests/test_fuzz.py): processes racing on one home, full disks, a tampered
store, a read-only filesystem, and what other users may touch."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from btrfsx import CreateOpts, Driver, _ioctl
from btrfsx.loopback import Loopback

pytestmark = pytest.mark.btrfs


def fingerprint(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                                            open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


# ---------------------------------------------------------------- processes racing

RACER = r"""
import json, os, sys, time
from btrfsx import Driver, CreateOpts
home, ident, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = Driver(home)
out = []
if mode == "same-id":
    go = float(sys.argv[4])
    while time.time() < go:
        pass
    try:
        d.create("contested", opts=CreateOpts(storage_opt={"size": f"{ident + 1}M"}) if ident % 2 else None)
        out.append("created")
    except FileExistsError:
        out.append("exists")
else:
    import random, io, tarfile
    rng = random.Random(ident)
    deadline = time.time() + float(sys.argv[4])
    while time.time() < deadline:
        layer = f"l{rng.randrange(6)}"
        op = rng.choice(["create", "child", "remove", "read", "apply"])
        try:
            if op == "create":
                d.create(layer, opts=CreateOpts(storage_opt={"size": "8M"}) if rng.random() < 0.3 else None)
            elif op == "child":
                d.create(layer, f"l{rng.randrange(6)}")
            elif op == "remove":
                d.remove(layer)
            elif op == "read":
                for root, dirs, files in os.walk(d.get(layer)):
                    for f in files:
                        open(os.path.join(root, f), "rb").read()
            else:
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w") as tar:
                    info = tarfile.TarInfo(f"from-{ident}")
                    info.size = 4
                    tar.addfile(info, io.BytesIO(b"data"))
                buf.seek(0)
                d.apply_diff(layer, None, buf)
            out.append([op, "ok"])
        except (FileExistsError, FileNotFoundError) as e:
            out.append([op, type(e).__name__])
        except OSError as e:
            # a layer removed under a reader or a snapshot: a clean error
            out.append([op, f"OSError {e.errno}"])
d.close()
print(json.dumps(out))
"""


def test_creating_one_id_from_six_processes_succeeds_once(home):
    Driver(home).close()
    import time
    go = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(home), str(i), "same-id", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(6)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        results += json.loads(out)
    assert sorted(results) == ["created"] + ["exists"] * 5
    with Driver(home) as d:
        assert d.layers() == ["contested"]
        quota = home / "quotas" / "contested"
        if quota.exists():  # the winner was a sized create: its own size, whole
            assert quota.read_text().isdigit()
        assert not d.gc()


def test_processes_racing_on_overlapping_ids_leave_a_consistent_store(home):
    Driver(home, options=["btrfs.min_space=1M"]).close()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(home), str(i), "mixed", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()  # no unexpected exception in any process
        outcomes += json.loads(out)
    assert sum(1 for _, result in outcomes if result == "ok") > 20
    with Driver(home) as d:
        assert not d.gc()  # every process finished cleanly: nothing to collect
        for layer in d.layers():
            path = d.get(layer)  # each one a subvolume
            assert _ioctl.is_subvolume(path)
        quotas = set(os.listdir(home / "quotas")) if (home / "quotas").exists() else set()
        assert quotas <= set(d.layers())  # no quota file without its layer


# ---------------------------------------------------------------- full disks

def test_a_full_disk_fails_create_cleanly_and_recovers(tmp_path, btrfs_available):
    with Loopback.create("/var/tmp", tmp_path / "mnt", size=256 << 20) as fs:
        home = fs.mountpoint / "home"
        with Driver(home) as d:
            d.create("base")
            d.create("sized", opts=CreateOpts(storage_opt={"size": "1M"}))  # quotas on while there is room
            filler = fs.mountpoint / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC
            # metadata too: small files (inline data) until that space runs out as well
            crumbs = fs.mountpoint / "crumbs"
            crumbs.mkdir()
            try:
                for i in range(200_000):
                    (crumbs / str(i)).write_bytes(b"x" * 1000)
            except OSError as e:
                assert e.errno == errno.ENOSPC
            failures = 0
            # A snapshot draws on reserves the kernel keeps for it and may still
            # succeed; a sized layer also needs its quota file written.
            for i in range(200):
                try:
                    d.create(f"l{i}", "base", CreateOpts(storage_opt={"size": "1M"}))
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    assert not d.exists(f"l{i}")
                    assert not (home / "quotas" / f"l{i}").exists()
                    failures += 1
                    break
            assert failures == 1, "the full filesystem never refused a create"
            staging = home / ".btrfsx" / "staging"
            assert [p for s in staging.iterdir() for p in s.iterdir()] == []
            os.unlink(filler)
            shutil.rmtree(crumbs)
            fd = os.open(fs.mountpoint, os.O_RDONLY)
            try:
                _ioctl.sync(fd)
            finally:
                os.close(fd)
            d.create("after", "base")
            assert d.exists("after")


# ---------------------------------------------------------------- a tampered store

def test_a_layer_replaced_by_a_symlink_is_never_followed(home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host data")
    before = fingerprint(outside)
    with Driver(home) as d:
        d.create("base")
        os.symlink(outside, home / "subvolumes" / "evil")
        for call in (lambda: d.get("evil"), lambda: d.changes("evil"), lambda: d.diff("evil"),
                     lambda: d.diff_size("evil"), lambda: d.create("child", "evil"),
                     lambda: d.apply_diff("evil", None, open(os.devnull, "rb"))):
            with pytest.raises(OSError, match="'evil' is a symlink, not a btrfs subvolume"):
                call()
        with pytest.raises(OSError):
            d.remove("evil")
        assert fingerprint(outside) == before
        assert not d.exists("child")


def test_a_layer_replaced_by_a_plain_directory_is_refused(home):
    with Driver(home) as d:
        (home / "subvolumes" / "plain").mkdir()
        with pytest.raises(OSError, match="'plain' is a plain directory, not a btrfs subvolume"):
            d.get("plain")
        with pytest.raises(OSError, match="not a btrfs subvolume"):
            d.remove("plain")
        with pytest.raises(OSError, match="parent layer 'plain' is a plain directory"):
            d.create("child", "plain")
        assert (home / "subvolumes" / "plain").is_dir()


def test_store_directories_replaced_by_symlinks_are_refused(home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Driver(home).close()
    os.symlink(outside, home / "quotas")
    with Driver(home) as d:
        with pytest.raises(OSError):
            d.create("sized", opts=CreateOpts(storage_opt={"size": "4M"}))
        assert not d.exists("sized")
    assert list(outside.iterdir()) == []


def test_a_read_only_filesystem_is_a_clear_error(btrfs_fs):
    home = btrfs_fs.mountpoint / "home"
    Driver(home).close()
    subprocess.run(["mount", "-o", "remount,ro", str(btrfs_fs.mountpoint)], check=True)
    try:
        with pytest.raises(OSError) as exc:
            with Driver(home) as d:
                d.create("x")
        assert exc.value.errno == errno.EROFS
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(btrfs_fs.mountpoint)], check=True)


# ---------------------------------------------------------------- other users

def test_the_store_is_closed_to_other_users(home):
    with Driver(home) as d:
        d.create("base")
        d.create("sized", "base", CreateOpts(storage_opt={"size": "4M"}))
    for path in [home, home / "subvolumes", home / "quotas", home / ".btrfsx", home / ".btrfsx" / "staging",
                 home / ".btrfsx" / "locks"]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {mode:o}"
    for lock in (home / ".btrfsx" / "locks").iterdir():
        assert stat.S_IMODE(lock.stat().st_mode) & 0o022 == 0
    # the quota file is world-readable as in the original, writable by root alone
    assert stat.S_IMODE((home / "quotas" / "sized").stat().st_mode) == 0o644
    code = f"""
import os
os.setgid(65534); os.setuid(65534)
for p in [{str(home / 'subvolumes' / 'base')!r}, {str(home / 'quotas')!r}, {str(home / '.btrfsx')!r}]:
    try:
        open(os.path.join(p, "intruder"), "w")
        print("wrote", p)
    except PermissionError:
        pass
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
