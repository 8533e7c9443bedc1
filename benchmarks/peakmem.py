"""Peak memory of one driver operation, in a process of its own.

    python benchmarks/peakmem.py HOME none
    python benchmarks/peakmem.py HOME diff LAYER [PARENT]
    python benchmarks/peakmem.py HOME apply LAYER TARFILE
    python benchmarks/peakmem.py HOME send LAYER [PARENT]
    python benchmarks/peakmem.py HOME receive LAYER STREAMFILE

Prints one JSON object: ``maxrss_kib`` (``VmHWM`` of /proc/self/status at
the end: the process's peak resident set, interpreter included),
``before_kib`` (the same just before the operation, after importing btrfsx
and opening the driver) and ``seconds`` (the operation alone).

Not ``getrusage().ru_maxrss``: Linux carries a process's peak over fork
and execve (the child of a 60 MiB pytest starts with a 60 MiB ru_maxrss),
while VmHWM belongs to the address space the execve made.

Resident memory rather than ``tracemalloc``: the tar encoder, zstandard and
the ioctl layer allocate outside Python's allocator, which tracemalloc does
not see; the resident set counts everything the process holds.  File data
read or written through the page cache is not part of it (not mapped).

The benchmarks run it through :func:`run` (this interpreter, a process of
its own, the JSON object parsed).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

HERE = os.path.realpath(__file__)


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(home, *args: str) -> dict:
    """Run this script with this interpreter on ``home`` (``args``: the
    operation and its arguments, as on the command line); its JSON result."""
    import subprocess  # here: not in the measured process's imports

    proc = subprocess.run([sys.executable, HERE, os.fspath(home), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peakmem {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def drain(stream) -> None:
    """Read a driver's stream (``diff``, ``send``) to the end, then close it."""
    with stream as s:
        while s.read(1 << 20):
            pass


def operate(d, op: str, args: list[str]) -> None:
    """``op`` on driver ``d``: ``diff``/``send`` LAYER [PARENT] (the stream
    read to the end), ``apply``/``receive`` LAYER FILE (fed from the file),
    ``none`` (nothing)."""
    if op in ("diff", "send"):
        layer, parent = args[0], (args[1] if len(args) > 1 else None)
        drain((d.diff if op == "diff" else d.send)(layer, parent))
    elif op in ("apply", "receive"):
        layer, path = args
        with open(path, "rb") as f:
            if op == "apply":
                d.apply_diff(layer, None, f)
            else:
                d.receive(layer, f)
    elif op != "none":
        raise SystemExit(f"unknown operation {op!r}")


def main(argv: list[str]) -> int:
    home, op, *args = argv
    from btrfsx import Driver

    d = Driver(home)
    try:
        before = vm_hwm_kib()
        t0 = time.perf_counter()
        operate(d, op, args)
        seconds = time.perf_counter() - t0
    finally:
        d.close()
    peak = vm_hwm_kib()
    # `btrfs receive`, for receive: its ru_maxrss (an upper bound: Linux
    # starts a child's at its parent's resident size)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    json.dump({"op": op, "maxrss_kib": peak, "before_kib": before, "seconds": seconds, "children_maxrss_kib": children,
               "python": sys.version.split()[0], "pid": os.getpid()}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
