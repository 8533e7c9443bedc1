"""Driver operations in windows marked for strace, for the "syscalls the
driver adds to the bare ioctl" section of docs/performance.md.

    python benchmarks/syscall_probe.py HOME N

Opens a Driver on HOME, makes a small layer ``base``, warms up, then runs N
of each operation in its own window; a window starts with a failing
``newfstatat("/.btrfsx-probe-<op>")`` (the marker strace sees) and ends at the
next marker.  Prints JSON: the median seconds per operation of each window
(meaningful only when not traced) and of the bare ``_ioctl`` call behind it.
``test_syscalls_bench.py`` runs it once untraced (the times) and once under
``strace -f -T`` (which syscalls, how many, how long each).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def marker(name: str) -> None:
    os.path.exists(f"/.btrfsx-probe-{name}")


def main(argv: list[str]) -> int:
    home, n = argv[0], int(argv[1])
    from btrfsx import Driver, _ioctl
    from btrfsx.testing import build_layer

    d = Driver(home)
    times: dict[str, float] = {}
    try:
        d.create("base")
        build_layer(d.get("base"), 100)
        bare_dir = os.path.join(os.path.dirname(home.rstrip("/")), "probe-bare")
        os.makedirs(bare_dir, exist_ok=True)
        bfd = os.open(bare_dir, _DIR_FLAGS)
        sfd = os.open(d.get("base"), _DIR_FLAGS)

        def settle():
            """Commit, let the cleaner drop what was deleted, commit again
            (as the benchmarks' settle), so no window pays for the last."""
            marker("settle")
            _ioctl.sync(bfd)
            for _ in range(1500):
                try:
                    if _ioctl.subvolume_sync_wait(bfd, 0, _ioctl.SUBVOL_SYNC_COUNT) == 0:
                        break
                except OSError:
                    time.sleep(0.2)
                    break
                time.sleep(0.02)
            _ioctl.sync(bfd)

        def window(name, op, ids):
            settle()
            marker(name)
            samples = []
            for i in ids:
                t0 = time.perf_counter_ns()
                op(i)
                samples.append(time.perf_counter_ns() - t0)
            times[name] = statistics.median(samples) / 1e9

        store = d._store

        def quotas_probe():
            try:
                os.close(os.open("quotas", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY,
                                 dir_fd=store.home_fd))
            except FileNotFoundError:
                pass

        def parts(tag, ids):
            """Each syscall of create, snapshot and remove on its own, untraced,
            in the order the driver makes them (what each costs in place)."""
            sfd_ = store.take_staging()
            samples: dict[str, list[int]] = {}

            def t(key, fn, *args, **kwargs):
                t0 = time.perf_counter_ns()
                fn(*args, **kwargs)
                samples.setdefault(key, []).append(time.perf_counter_ns() - t0)
            try:
                for i in ids:
                    name = f"p{tag}-{i}"
                    t("create: openat(home, 'quotas') -> ENOENT", quotas_probe)
                    t("create: ioctl(BTRFS_IOC_SUBVOL_CREATE) in staging", _ioctl.create_subvolume, sfd_, name)
                    t("create: geteuid() x 2", lambda: (os.geteuid(), os.geteuid()))
                    t("create: fchmodat(staging, id, 0555)", os.chmod, name, 0o555, dir_fd=sfd_)
                    t("create: renameat2(staging, id, subvolumes, id, RENAME_NOREPLACE)",
                      _ioctl.rename_noreplace, sfd_, name, store.subvolumes_fd, name)
                settle()
                for i in ids:
                    name = f"p{tag}-{i}"
                    t("remove: openat(home, 'quotas') -> ENOENT", quotas_probe)
                    t("remove: ioctl(BTRFS_IOC_SNAP_DESTROY)", _ioctl.destroy_subvolume, store.subvolumes_fd, name)
                settle()
                for i in ids:
                    name = f"q{tag}-{i}"
                    t("snapshot: openat(home, 'quotas') -> ENOENT", quotas_probe)
                    t0 = time.perf_counter_ns()
                    pfd = os.open("base", _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=store.subvolumes_fd)
                    samples.setdefault("snapshot: openat(subvolumes, parent)", []).append(time.perf_counter_ns() - t0)
                    t("snapshot: newfstatat(parent fd, \"\", AT_EMPTY_PATH) (os.fstat)", os.fstat, pfd)
                    t("snapshot: ioctl(BTRFS_IOC_SNAP_CREATE_V2)", _ioctl.snapshot, pfd, store.subvolumes_fd, name)
                    t("snapshot: close(parent fd)", os.close, pfd)
                for i in ids:
                    _ioctl.destroy_subvolume(store.subvolumes_fd, f"q{tag}-{i}")
            finally:
                store.give_staging(sfd_)
            for key, values in samples.items():
                times[f"{tag}-part:{key}"] = statistics.median(values) / 1e9

        for rnd in range(2):   # the first round is a warm-up
            tag = f"w{rnd}"
            ids = [f"{tag}-{i}" for i in range(n)]
            window(f"{tag}-create", d.create, ids)
            window(f"{tag}-remove", d.remove, ids)
            window(f"{tag}-snapshot", lambda i: d.create(i, "base"), ids)
            window(f"{tag}-remove_snapshot", d.remove, ids)
            window(f"{tag}-exists", lambda i: d.exists("base"), ids)
            window(f"{tag}-get", lambda i: d.get("base"), ids)
            window(f"{tag}-bare_create", lambda i: _ioctl.create_subvolume(bfd, i), ids)
            window(f"{tag}-bare_destroy", lambda i: _ioctl.destroy_subvolume(bfd, i), ids)
            window(f"{tag}-bare_snapshot", lambda i: _ioctl.snapshot(sfd, bfd, i), ids)
            window(f"{tag}-bare_destroy_snapshot", lambda i: _ioctl.destroy_subvolume(bfd, i), ids)
            window(f"{tag}-calibrate", lambda i: os.getppid(), ids)
            settle()
            parts(tag, ids)
            _ioctl.sync(bfd)
        os.close(bfd)
        os.close(sfd)
        d.remove("base")
    finally:
        d.close()
    json.dump({k.split("-", 1)[1]: v for k, v in times.items() if k.startswith("w1-")}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
