"""btrfsx._fd: directories and record files opened, read, written and locked
in one way (no btrfs needed: any filesystem does)."""

import errno
import os
import stat
import subprocess
import sys

import pytest

from btrfsx import _fd


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_bytes(b"contents")
    (tmp_path / "link").symlink_to("dir")
    (tmp_path / "filelink").symlink_to("dir/file")
    return tmp_path


def test_open_dir_yields_a_cloexec_directory_fd_and_closes_it(tree):
    before = _open_fds()
    with _fd.open_dir(tree / "dir") as fd:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        assert os.listdir(fd) == ["file"]
        assert not os.get_inheritable(fd)
    assert _open_fds() == before


def test_open_dir_relative_to_a_dir_fd(tree):
    with _fd.open_dir(tree) as top, _fd.open_dir("dir", top) as fd:
        assert os.listdir(fd) == ["file"]


def test_open_dir_refuses_a_symlink_unless_told_to_follow(tree):
    # O_NOFOLLOW with O_DIRECTORY: Linux says a symlink is not a directory
    with pytest.raises(NotADirectoryError):
        with _fd.open_dir(tree / "link"):
            pass
    with _fd.open_dir(tree / "link", follow=True) as fd:
        assert os.listdir(fd) == ["file"]


def test_open_dir_refuses_a_file(tree):
    with pytest.raises(NotADirectoryError):
        with _fd.open_dir(tree / "dir" / "file"):
            pass


def test_open_dir_closes_its_fd_when_the_block_raises(tree):
    before = _open_fds()
    with pytest.raises(RuntimeError):
        with _fd.open_dir(tree / "dir"):
            raise RuntimeError("in the block")
    assert _open_fds() == before


def test_open_file_adds_cloexec_and_nofollow(tree):
    with _fd.open_file(tree / "dir" / "file") as fd:
        assert os.read(fd, 100) == b"contents"
        assert not os.get_inheritable(fd)
    with pytest.raises(OSError) as e:
        with _fd.open_file(tree / "filelink"):
            pass
    assert e.value.errno == errno.ELOOP
    with _fd.open_file(tree / "filelink", follow=True) as fd:
        assert os.read(fd, 100) == b"contents"


def test_open_file_creates_with_the_mode_given(tree):
    old = os.umask(0)
    try:
        with _fd.open_dir(tree) as d, _fd.open_file("new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, d):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tree / "new").st_mode) == 0o640


def test_read_file_is_none_when_missing_and_stops_at_the_limit(tree):
    assert _fd.read_file(tree / "missing") is None
    assert _fd.read_file(tree / "dir" / "file" / "below") is None  # ENOTDIR
    assert _fd.read_file(tree / "dir" / "file") == b"contents"
    assert _fd.read_file(tree / "dir" / "file", limit=3) == b"con"
    with _fd.open_dir(tree / "dir") as d:
        assert _fd.read_file("file", d) == b"contents"


def test_read_file_never_reads_through_a_symlink(tree):
    with pytest.raises(OSError) as e:
        _fd.read_file(tree / "filelink")
    assert e.value.errno == errno.ELOOP


def test_write_file_atomic_replaces_the_whole_record(tree):
    with _fd.open_dir(tree / "dir") as d:
        _fd.write_file_atomic("file", b"new record", d)
        assert (tree / "dir" / "file").read_bytes() == b"new record"
        assert sorted(os.listdir(d)) == ["file"]  # no temporary left
        big = os.urandom(3 << 20)
        _fd.write_file_atomic("big", big, d, mode=0o644, tmp=".big-writer.tmp")
        assert (tree / "dir" / "big").read_bytes() == big
        assert stat.S_IMODE(os.stat(tree / "dir" / "big").st_mode) == 0o644 & ~_umask()
        assert sorted(os.listdir(d)) == ["big", "file"]


def test_write_file_atomic_does_not_write_through_a_symlinked_temporary(tree):
    with _fd.open_dir(tree) as d:
        os.symlink("dir/file", tree / "rec.tmp")
        with pytest.raises(OSError) as e:
            _fd.write_file_atomic("rec", b"x", d)
    assert e.value.errno == errno.ELOOP
    assert (tree / "dir" / "file").read_bytes() == b"contents"


def test_locked_excludes_another_process(tree):
    lock = tree / "lock"
    holder = (f"import fcntl, os, sys; fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        with _fd.locked(lock, blocking=False) as fd:
            assert fd is None
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    with _fd.locked(lock, blocking=False) as fd:  # its holder is gone: free again
        assert fd is not None


def test_try_lock_is_false_while_another_fd_holds_it(tree):
    path = tree / "lock"
    with _fd.locked(path) as held:
        assert held is not None
        with _fd.open_file(path, os.O_RDWR) as other:
            assert _fd.try_lock(other) is False
    with _fd.open_file(path, os.O_RDWR) as other:
        assert _fd.try_lock(other) is True
