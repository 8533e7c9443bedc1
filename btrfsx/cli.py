"""The ``btrfsx`` command.

``btrfsx demo`` runs the main job on the btrfs directory given with
``--home`` (or ``$BTRFSX_HOME``), or, with neither, on a loopback btrfs
filesystem it makes for the run and removes afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from btrfsx import CreateOpts, Driver, PrerequisitesError, __version__
from btrfsx.loopback import Loopback, LoopbackError, unavailable_reason


def _timed(samples: dict[str, list[float]], op: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    samples.setdefault(op, []).append(time.perf_counter() - t0)
    return result


def _walk(home: Path, layers: int, files: int, out) -> dict[str, list[float]]:
    """A base layer of ``files`` files, a chain of ``layers`` layers each a
    snapshot of the one below adding a file, a sized read-write layer on
    top, then removal of all, through the Driver."""
    samples: dict[str, list[float]] = {}
    store = home / "btrfsx-demo"
    with Driver(store) as d:
        _timed(samples, "create (base)", d.create, "base")
        base = Path(d.get("base"))
        os.chmod(base, 0o755)
        for i in range(files):
            (base / f"file{i:05d}").write_bytes(b"%d\n" % i)
        parent = "base"
        for n in range(layers):
            name = f"layer{n:03d}"
            _timed(samples, "create (snapshot)", d.create, name, parent)
            (Path(d.get(name)) / f"added-by-{name}").write_text(name)
            parent = name
        _timed(samples, "create (sized rw)", d.create_read_write, "container", parent,
               CreateOpts(storage_opt={"size": "64M"}))
        top = Path(d.get("container"))
        added = sorted(p.name for p in top.iterdir() if p.name.startswith("added-by-"))
        status = dict(d.status())
        print(f"  layer 'container' holds {files} base files and {len(added)} added ones; "
              f"{status['Layers']} layers, quota mode {status['Quota Mode']}", file=out)
        if len(added) != layers:
            raise RuntimeError(f"expected {layers} added files in the top layer, found {len(added)}")
        for name in ["container"] + [f"layer{n:03d}" for n in reversed(range(layers))] + ["base"]:
            _timed(samples, "remove", d.remove, name)
    shutil.rmtree(store)  # the layout left empty
    return samples


def _cli_baseline(home: Path, rounds: int) -> dict[str, list[float]]:
    """The same create and destroy through the ``btrfs`` command, for comparison."""
    samples: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="btrfsx-demo-cli-", dir=home))
    try:
        for i in range(rounds):
            _timed(samples, "create", subprocess.run, ["btrfs", "-q", "subvolume", "create", str(work / f"s{i}")],
                   check=True, capture_output=True)
        for i in range(rounds):
            _timed(samples, "destroy", subprocess.run, ["btrfs", "-q", "subvolume", "delete", str(work / f"s{i}")],
                   check=True, capture_output=True)
    finally:
        os.rmdir(work)
    return samples


def cmd_demo(args) -> int:
    out = sys.stdout
    with ExitStack() as stack:
        home = args.home or os.environ.get("BTRFSX_HOME")
        if home:
            home = Path(home)
            print(f"btrfsx {__version__}: demo on {home}", file=out)
        else:
            reason = unavailable_reason()
            if reason:
                print(f"btrfsx: no --home given and no loopback filesystem can be made: {reason}",
                      file=sys.stderr)
                return 2
            mnt = stack.enter_context(tempfile.TemporaryDirectory(prefix="btrfsx-demo-mnt-"))
            try:
                fs = stack.enter_context(Loopback.create(args.image_dir, Path(mnt) / "fs"))
            except LoopbackError as e:
                print(f"btrfsx: {e}", file=sys.stderr)
                return 2
            home = fs.mountpoint
            print(f"btrfsx {__version__}: demo on a loopback btrfs filesystem at {home} "
                  f"({fs.device}, image {fs.image}, removed afterwards)", file=out)
        t0 = time.perf_counter()
        try:
            samples = _walk(home, args.layers, args.files, out)
        except PrerequisitesError as e:
            print(f"btrfsx: {e}", file=sys.stderr)
            return 2
        elapsed = time.perf_counter() - t0
        cli = None
        if shutil.which("btrfs"):
            cli = _cli_baseline(home, min(args.layers, 20))
        print(f"  {args.layers} snapshot layers over {args.files} files, created and removed "
              f"in {elapsed:.3f} s", file=out)
        print(f"\n  {'operation':<22}{'count':>7}{'btrfsx median':>16}{'btrfs CLI median':>19}{'ratio':>9}",
              file=out)
        for op, times in samples.items():
            med = statistics.median(times)
            line = f"  {op:<22}{len(times):>7}{med * 1e6:>13.0f} us"
            cli_op = {"create (base)": "create", "remove": "destroy"}.get(op)
            if cli and cli_op in cli:
                cmed = statistics.median(cli[cli_op])
                line += f"{cmed * 1e6:>16.0f} us{cmed / med:>8.0f}x"
            out.write(line + "\n")
        if not cli:
            print("  (install btrfs-progs to compare with the btrfs command)", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="btrfsx", description="A fast btrfs layer store.")
    parser.add_argument("--version", action="version", version=f"btrfsx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="create, snapshot, size and remove layers, and time it")
    demo.add_argument("--home", help="a directory on btrfs to work in (default: $BTRFSX_HOME, "
                                     "else a loopback filesystem made for the run)")
    demo.add_argument("--layers", type=int, default=50, help="snapshot layers to stack (default 50)")
    demo.add_argument("--files", type=int, default=1000, help="files in the base layer (default 1000)")
    demo.add_argument("--image-dir", default="/var/tmp",
                      help="where the loopback image is made (default /var/tmp)")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
