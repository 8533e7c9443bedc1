"""Which syscalls the driver makes besides the bare ioctl, and what each
costs: ``benchmarks/syscall_probe.py`` runs N of each operation once under
``strace -f -T`` (which syscalls, how many per operation, how long each as
strace sees it) and once untraced (the operation's median, the bare
ioctl's, and each syscall of the operation timed on its own, in place, from
Python).  The findings go into ``extra_info["syscalls"]`` of the benchmark
here, which times ``Driver.create(id)`` + ``Driver.remove(id)`` in this
process for comparison.

strace's ``-T`` figures include the tracing itself (a trivial ``getppid``
shows how much: ``calibration_us``); the untraced per-syscall figures are
the ones to trust for costs.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from btrfsx import Driver

pytestmark = [pytest.mark.btrfs,
              pytest.mark.skipif(shutil.which("strace") is None,
                                 reason="strace is not installed (apt-get install strace)")]

PROBE = Path(__file__).resolve().parent / "syscall_probe.py"
N = 200
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)\)\s+=\s+(.*?)\s+<([\d.]+)>$")
_MARK = re.compile(r'"/\.btrfsx-probe-([\w-]+)"')
#: the bare ioctl behind each driver operation
BARE = {"create": "ioctl BTRFS_IOC_SUBVOL_CREATE", "remove": "ioctl BTRFS_IOC_SNAP_DESTROY",
        "snapshot": "ioctl BTRFS_IOC_SNAP_CREATE_V2", "remove_snapshot": "ioctl BTRFS_IOC_SNAP_DESTROY",
        "exists": "newfstatat", "get": "newfstatat"}
BARE_TIMES = {"create": "bare_create", "remove": "bare_destroy", "snapshot": "bare_snapshot",
              "remove_snapshot": "bare_destroy_snapshot"}


def parse_strace(path: str, n: int) -> dict[str, dict]:
    """Per window of the second (measured) round: each syscall's calls per
    operation and its median -T in microseconds."""
    windows: dict[str, dict[str, list[float]]] = {}
    current = None
    with open(path) as f:
        for line in f:
            m = _LINE.match(line.strip())
            if not m:
                continue
            _, name, args, _, secs = m.groups()
            mark = _MARK.search(args) if name in ("newfstatat", "stat", "lstat", "statx") else None
            if mark:
                tag = mark.group(1)
                current = tag.split("-", 1)[1] if tag.startswith("w1-") else None
                if current == "end":
                    current = None
                continue
            if current is None:
                continue
            key = name
            if name == "ioctl":
                req = args.split(",")[1].strip() if "," in args else "?"
                key = f"ioctl {req}"
            windows.setdefault(current, defaultdict(list))[key].append(float(secs) * 1e6)
    out = {}
    for window, calls in windows.items():
        out[window] = {key: {"per_op": round(len(v) / n, 2), "strace_T_median_us": round(statistics.median(v), 1)}
                       for key, v in calls.items()}
    return out


def test_syscalls(benchmark, btrfs_available, tools):
    benchmark.group = "syscalls the driver adds to the bare ioctl"
    with tools.fresh_fs() as fs:
        home = fs.mountpoint / "probe-home"
        plain = subprocess.run([sys.executable, str(PROBE), str(home), str(N)], capture_output=True, text=True)
        assert plain.returncode == 0, plain.stderr
        times = json.loads(plain.stdout)
        trace = fs.mountpoint.parent / f"{fs.mountpoint.name}.strace"
        try:
            traced = subprocess.run(["strace", "-f", "-qq", "-T", "-o", str(trace), sys.executable, str(PROBE),
                                     str(home), str(N)], capture_output=True, text=True)
            assert traced.returncode == 0, traced.stderr
            windows = parse_strace(str(trace), N)
        finally:
            trace.unlink(missing_ok=True)
        # this process, untraced: create + remove of an empty layer
        d = Driver(fs.mountpoint / "home")
        try:
            ids = tools.Ids("x")

            def cycle():
                layer = ids()
                d.create(layer)
                d.remove(layer)
            benchmark.pedantic(cycle, rounds=N, warmup_rounds=10)
        finally:
            d.cleanup()
    calibration = windows.get("calibrate", {}).get("getppid", {}).get("strace_T_median_us")
    ops = {}
    for op, bare in BARE.items():
        calls = windows.get(op, {})
        ops[op] = {
            "driver_median_us": round(times[op] * 1e6, 2),
            "bare_median_us": round(times[BARE_TIMES[op]] * 1e6, 2) if op in BARE_TIMES else None,
            "bare": bare,
            "calls": [{"syscall": k, **v, "added": k != bare or v["per_op"] > 1}
                      for k, v in sorted(calls.items(), key=lambda kv: -kv[1]["per_op"])],
        }
    parts = {k.split(":", 1)[1]: round(v * 1e6, 2) for k, v in times.items() if k.startswith("part:")}
    benchmark.extra_info["syscalls"] = {"n": N, "calibration_us": calibration, "ops": ops,
                                        "parts_untraced_us": parts}
    tools.record(benchmark, "Driver.create(id) + Driver.remove(id), this process", btrfsx=True)
    for op, info in ops.items():
        added = [c for c in info["calls"] if c["syscall"] != info["bare"]]
        print(f"\n{op}: driver {info['driver_median_us']} us, bare {info['bare_median_us']} us; added: "
              + ", ".join(f"{c['syscall']} x{c['per_op']}" for c in added))
