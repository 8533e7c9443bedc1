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
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> int:
    home, op, *args = argv
    from btrfsx import Driver

    d = Driver(home)
    try:
        before = vm_hwm_kib()
        t0 = time.perf_counter()
        if op == "diff":
            layer, parent = args[0], (args[1] if len(args) > 1 else None)
            with d.diff(layer, parent) as stream:
                while stream.read(1 << 20):
                    pass
        elif op == "apply":
            layer, tar = args
            with open(tar, "rb") as f:
                d.apply_diff(layer, None, f)
        elif op == "send":
            layer, parent = args[0], (args[1] if len(args) > 1 else None)
            with d.send(layer, parent) as stream:
                while stream.read(1 << 20):
                    pass
        elif op == "receive":
            layer, stream_file = args
            with open(stream_file, "rb") as f:
                d.receive(layer, f)
        elif op != "none":
            raise SystemExit(f"unknown operation {op!r}")
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
