"""The ``btrfsx`` command: the driver from a shell.

Every command takes ``--home DIR`` (or ``$BTRFSX_HOME``); with neither it
works on the embedded store, a btrfs image btrfsx makes and mounts for
itself on first use (``btrfsx loopback status``).  Built on the public API
only: the names ``btrfsx`` exports and the public modules
:mod:`btrfsx.loopback`, :mod:`btrfsx.oci`, :mod:`btrfsx.units`,
:mod:`btrfsx.template` and :mod:`btrfsx.demo` (the demo's workload; tests/test_layering.py holds the
command to that).  Driver options come from ``$BTRFSX_OPTIONS`` and
``-o/--option KEY=VALUE``.  Tables and progress bars come from ``rich`` (a
dependency of the package).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext

from btrfsx import ArchiveError, CreateOpts, Driver, OptionError, PrerequisitesError, Template, __version__, demo
from btrfsx import template as templates
from btrfsx.loopback import Embedded, LoopbackError, unavailable_reason
from btrfsx.units import bytes_size

#: Driver options from the environment, separated by commas and/or whitespace.
OPTIONS_ENV = "BTRFSX_OPTIONS"

EXAMPLES = {
    "create": "btrfsx create base && btrfsx create app --parent base --size 10G",
    "rm": "btrfsx rm app base          # children first, all or none",
    "path": "cd \"$(btrfsx path app)\"",
    "exists": "btrfsx exists app && echo present",
    "status": "btrfsx status --json",
    "ls": "btrfsx ls --tree",
    "changes": "btrfsx changes app            # against its recorded parent",
    "diff": "btrfsx diff app --zstd -o app.tar.zst",
    "apply": "btrfsx create app2 --parent base && btrfsx apply app2 app.tar.zst",
    "diff-size": "btrfsx diff-size app --parent ''",
    "send": "btrfsx send app --parent base | ssh builder2 btrfsx receive app --parent base -",
    "receive": "btrfsx receive app --parent base app.stream     # or - for stdin",
    "gc": "btrfsx gc",
    "demo": "btrfsx demo --builds 5 --layers 3",
    "loopback": "btrfsx loopback status; btrfsx loopback destroy",
    "export-oci": "btrfsx export-oci app ./image --tag v1 && skopeo copy oci:./image:v1 docker://registry/app:v1",
    "import-oci": "skopeo copy docker://registry/app:v1 oci:./image:v1 && btrfsx import-oci ./image --tag v1",
    "quota": "btrfsx quota disable --force",
    "run": "btrfsx run --from fixture --keep -- make test     # in a fresh copy of layer 'fixture'",
}


class UserError(Exception):
    """A mistake to report in one line, without a traceback."""


# ---------------------------------------------------------------- output

def _console(stderr: bool = False):
    from rich.console import Console  # an ImportError is reported by main() in one line
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _table(columns: list[str], rows: list[list], right: set[int] | frozenset[int] = frozenset()) -> None:
    from rich import box
    from rich.table import Table
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, show_header=any(columns))
    for i, name in enumerate(columns):
        table.add_column(name, justify="right" if i in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*["-" if v is None else str(v) for v in row])
    _console().print(table)


def _interactive() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _progress(description: str, total: float | None = None, unit_bytes: bool = False):
    """A progress bar on stderr when it is a terminal; else nothing shows."""
    if not _interactive():
        yield lambda advance=1: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    columns += ([DownloadColumn(), TransferSpeedColumn()] if unit_bytes else [MofNCompleteColumn()])
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda advance=1: progress.advance(task, advance)


def _size(n: int | None) -> str | None:
    return None if n is None else bytes_size(n)


def _when(ts: float | None) -> str | None:
    return None if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# ---------------------------------------------------------------- the store

def _home(args) -> str:
    home = args.home or os.environ.get("BTRFSX_HOME")
    if home:
        return home
    reason = unavailable_reason()
    embedded = Embedded()
    if reason and not embedded.mounted:
        raise UserError(f"no --home given, and the embedded store at {embedded.image} cannot be made: {reason}")
    return str(embedded.ensure())


def _env_options() -> list[str]:
    """``$BTRFSX_OPTIONS``: driver options separated by commas and/or whitespace."""
    return [o for o in re.split(r"[,\s]+", os.environ.get(OPTIONS_ENV, "")) if o]


@contextmanager
def _driver(args, options: list[str] | None = None):
    """A Driver with the options of the environment, then of the command
    line (later ones win), then ``options`` (what the command itself needs)."""
    d = Driver(_home(args), options=[*_env_options(), *args.driver_options, *(options or [])])
    try:
        yield d
    finally:
        d.close()


def _parent_for(d: Driver, layer: str, parent: str | None) -> str | None:
    """``--parent``: None means the recorded parent, '' means none."""
    if parent is None:
        return d.parent(layer)
    return parent or None


# ---------------------------------------------------------------- commands

def cmd_create(args) -> int:
    # "" too: the library refuses an empty size, it is not the same as none
    opts = CreateOpts(storage_opt={"size": args.size}) if args.size is not None else None
    with _driver(args) as d:
        try:
            (d.create_read_write if args.rw else d.create)(args.id, args.parent or None, opts)
        except ValueError as e:  # OptionError too: say which layer it was about
            if repr(args.id) in str(e):
                raise
            raise UserError(f"layer {args.id!r}: {e}") from e
        path = d.get(args.id)
    if args.json:
        _emit_json({"id": args.id, "parent": args.parent or None, "path": path, "size": args.size})
    return 0


def _quoted(names) -> str:
    return ", ".join(repr(n) for n in names)


def _removal_order(d: Driver, ids: list[str], force: bool) -> list[str]:
    """``ids`` checked and ordered for removal, children before their
    parents; a UserError, before anything is removed, if one is not a layer
    or has children not among ``ids`` (unless ``force``)."""
    missing = [i for i in ids if not d.exists(i)]
    if missing:
        subvolumes = os.path.join(d.home, "subvolumes")
        what = [f"{i!r} is not a btrfs subvolume" if os.path.lexists(os.path.join(subvolumes, i))
                else f"{i!r} does not exist" for i in missing]
        raise UserError(f"layer {'; layer '.join(what)}; nothing removed")
    children: dict[str, list[str]] = {}
    for info in d.layer_infos():
        if info.parent is not None:
            children.setdefault(info.parent, []).append(info.id)
    removing = set(ids)
    if not force:
        kept = [(i, [c for c in children.get(i, []) if c not in removing]) for i in ids]
        refused = [f"layer {i!r} has children {_quoted(c)}" for i, c in kept if c]
        if refused:
            raise UserError(f"{'; '.join(refused)}; remove them too or use --force")
    order: list[str] = []
    done: set[str] = set()

    def visit(layer: str, path: frozenset[str]) -> None:
        if layer in done or layer in path:
            return
        for child in children.get(layer, []):
            if child in removing:
                visit(child, path | {layer})
        done.add(layer)
        order.append(layer)
    for layer in ids:
        visit(layer, frozenset())
    return order


def cmd_rm(args) -> int:
    removed = []
    ids = list(dict.fromkeys(args.ids))
    with _driver(args) as d:
        order = _removal_order(d, ids, args.force)
        with _progress("removing layers", total=len(order)) as tick:
            for layer in order:
                d.remove(layer)
                removed.append(layer)
                tick()
    if args.json:
        _emit_json({"removed": removed})
    return 0


def cmd_path(args) -> int:
    with _driver(args) as d:
        path = d.get(args.id)
    _emit_json({"id": args.id, "path": path}) if args.json else print(path)
    return 0


def cmd_exists(args) -> int:
    with _driver(args) as d:
        present = d.exists(args.id)
    if args.json:
        _emit_json({"id": args.id, "exists": present})
    return 0 if present else 1


def cmd_status(args) -> int:
    with _driver(args) as d:
        if args.json:
            _emit_json(d.status_info())  # numbers as numbers, null for unset
            return 0
        status = d.status()
    _table(["", ""], [[k, v] for k, v in status])
    return 0


def cmd_ls(args) -> int:
    with _driver(args) as d:
        infos = d.layer_infos()
    if args.json:
        _emit_json([info._asdict() for info in infos])
        return 0
    if args.tree:
        from rich.tree import Tree
        children: dict[str | None, list] = {}
        for info in infos:
            children.setdefault(info.parent, []).append(info)
        root = Tree(f"[bold]{len(infos)} layers[/bold]")

        def grow(node, parent):
            for info in children.get(parent, []):
                grow(node.add(info.id + (f"  ({_size(info.limit)} limit)" if info.limit else "")), info.id)
        grow(root, None)
        _console().print(root)
        return 0
    _table(["ID", "PARENT", "REFERENCED", "EXCLUSIVE", "LIMIT", "CREATED"],
           [[i.id, i.parent, _size(i.referenced), _size(i.exclusive), _size(i.limit), _when(i.created)]
            for i in infos], right={2, 3, 4})
    return 0


WALK_HELP = ("find the changes by walking both trees, as containers/storage does, instead of from btrfs's "
             "metadata (used anyway when the parent is not the layer's snapshot source)")


def _changes_options(args) -> list[str]:
    """``--walk``: find a layer's changes by walking both trees, as containers/storage does."""
    return ["btrfsx.changes=naive"] if args.walk else []


def cmd_changes(args) -> int:
    with _driver(args, _changes_options(args)) as d:
        parent = _parent_for(d, args.id, args.parent)
        found = d.changes(args.id, parent)
    if args.json:
        _emit_json({"id": args.id, "parent": parent,
                    "changes": [{"path": c.path, "kind": c.kind.name} for c in found]})
    else:
        sys.stdout.write("".join(f"{c}\n" for c in found))
    return 0


def cmd_diff(args) -> int:
    if not args.output and sys.stdout.isatty():
        raise UserError("refusing to write a tar stream to a terminal: give -o FILE or redirect stdout")
    with _driver(args, _changes_options(args)) as d:
        parent = _parent_for(d, args.id, args.parent)
        with d.diff(args.id, parent) as stream:
            out = open(args.output, "wb") if args.output else sys.stdout.buffer
            try:
                if args.zstd:
                    import zstandard
                    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as z:
                        shutil.copyfileobj(stream, z, 1 << 20)
                elif args.gzip:
                    with gzip.GzipFile(fileobj=out, mode="wb") as g:
                        shutil.copyfileobj(stream, g, 1 << 20)
                else:
                    shutil.copyfileobj(stream, out, 1 << 20)
                out.flush()
            finally:
                if args.output:
                    out.close()
    return 0


class _Counting(io.RawIOBase):
    """Reads through to ``inner``, telling ``tick`` how many bytes went by."""

    def __init__(self, inner, tick):
        self.inner, self.tick = inner, tick

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.inner.read(len(b))
        b[:len(data)] = data
        self.tick(len(data))
        return len(data)


def cmd_apply(args) -> int:
    if args.file == "-":
        source, total = sys.stdin.buffer, None
    else:
        try:
            source = open(args.file, "rb")
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror}") from None
        total = os.fstat(source.fileno()).st_size
    with source, _driver(args) as d, _progress(f"applying to {args.id}", total=total, unit_bytes=True) as tick:
        applied = d.apply_diff(args.id, args.parent or None, io.BufferedReader(_Counting(source, tick), 1 << 20))
    if args.json:
        _emit_json({"id": args.id, "applied": applied})
    else:
        print(f"applied {applied} bytes ({_size(applied)}) to {args.id}")
    return 0


def cmd_send(args) -> int:
    if not args.output and sys.stdout.isatty():
        raise UserError("refusing to write a send stream to a terminal: give -o FILE or redirect stdout")
    start = time.monotonic()
    total = 0
    with _driver(args) as d, d.send(args.id, args.parent or None, protocol=args.proto) as stream:
        out = open(args.output, "wb") if args.output else sys.stdout.buffer
        done = False
        try:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
                total += len(chunk)
            out.flush()
            done = True
        finally:
            if args.output:
                out.close()
                if not done:
                    # no partial stream left to be taken for a whole one (a
                    # regular file only: never /dev/null or a FIFO)
                    try:
                        if os.path.isfile(args.output) and not os.path.islink(args.output):
                            os.unlink(args.output)
                    except OSError:
                        pass
    seconds = time.monotonic() - start
    if args.json:
        # with the stream on stdout, the figures go to stderr
        text = json.dumps({"id": args.id, "parent": args.parent or None, "bytes": total,
                           "seconds": round(seconds, 6)}) + "\n"
        (sys.stdout if args.output else sys.stderr).write(text)
    elif args.output:
        print(f"sent {args.id} ({total} bytes, {_size(total)}) in {seconds:.2f}s to {args.output}")
    return 0


def cmd_receive(args) -> int:
    if args.file == "-":
        source = sys.stdin.buffer
    else:
        try:
            source = open(args.file, "rb")
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror}") from None
    opts = CreateOpts(storage_opt={"size": args.size}) if args.size is not None else None
    start = time.monotonic()
    with source, _driver(args) as d:
        total = d.receive(args.id, source, args.parent or None, opts)
    seconds = time.monotonic() - start
    if args.json:
        _emit_json({"id": args.id, "parent": args.parent or None, "bytes": total, "seconds": round(seconds, 6)})
    else:
        print(f"received {args.id} ({total} bytes, {_size(total)}) in {seconds:.2f}s")
    return 0


def cmd_diff_size(args) -> int:
    with _driver(args, _changes_options(args)) as d:
        parent = _parent_for(d, args.id, args.parent)
        size = d.diff_size(args.id, parent)
    _emit_json({"id": args.id, "parent": parent, "size": size}) if args.json else print(size)
    return 0


def cmd_export_oci(args) -> int:
    from btrfsx.oci import check_tag, export_oci
    if args.tag is not None:
        check_tag(args.tag)  # before the store is opened or anything written
    with _driver(args) as d:
        status = _console(stderr=True).status(f"exporting {args.id}") if _interactive() else nullcontext()
        with status:
            exported = export_oci(d, args.id, args.directory, tag=args.tag)
    if args.json:
        _emit_json({"id": args.id, "directory": args.directory, "tag": args.tag,
                    "manifest": exported.manifest.digest, "config": exported.config.digest,
                    "layers": [{"id": lid, "digest": desc.digest, "size": desc.size, "diff_id": diff_id}
                               for lid, desc, diff_id in zip(exported.layer_ids, exported.layers,
                                                             exported.diff_ids)]})
    else:
        print(exported.manifest.digest)
    return 0


def cmd_import_oci(args) -> int:
    from btrfsx.oci import import_oci
    with _driver(args) as d:
        status = _console(stderr=True).status(f"importing {args.directory}") if _interactive() else nullcontext()
        with status:
            top = import_oci(d, args.directory, tag=args.tag)
        path = d.get(top)
    if args.json:
        _emit_json({"id": top, "directory": args.directory, "tag": args.tag, "path": path})
    else:
        print(top)
    return 0


def cmd_gc(args) -> int:
    status = _console(stderr=True).status("collecting garbage") if _interactive() else nullcontext()
    with _driver(args) as d, status:
        report = d.gc()._asdict()
        report["template_copies"] = templates.gc(d)
    report["foreign"] = list(report.get("foreign", ()))
    if args.json:
        _emit_json(report)
    elif not any(report.values()):
        print("nothing to collect")
    else:
        for kind, items in report.items():
            if kind == "foreign":
                continue
            what = "template copy or build" if kind == "template_copies" else \
                kind.rstrip("s").replace("_", " ").replace("oci", "OCI import")
            for item in items:
                print(f"removed {what}: {item}")
        for item in report["foreign"]:
            print(f"foreign entry, not a layer (left alone): {item}")
    return 0


def cmd_quota(args) -> int:
    with _driver(args) as d:
        disable = getattr(d, "disable_quotas", None)
        if disable is None:
            raise UserError("this btrfsx has no Driver.disable_quotas: upgrade btrfsx")
        disabled = disable(force=args.force)
    if args.json:
        _emit_json({"action": "disable", "disabled": bool(disabled)})
    else:
        print("quotas disabled" if disabled else "quotas were already off")
    return 0


def cmd_loopback(args) -> int:
    embedded = Embedded()
    if args.action == "destroy":
        destroyed = embedded.destroy()
        if args.json:
            _emit_json({"destroyed": destroyed, "image": str(embedded.image)})
        else:
            print(f"destroyed {embedded.image}" if destroyed else f"nothing to destroy at {embedded.state}")
        return 0
    status = embedded.status()
    if args.json:
        _emit_json(status)
    else:
        _table(["", ""], [[k, v] for k, v in status.items()])
    return 0


def _shell_build(command: str):
    """A template's build function running ``sh -c command`` in the empty tree."""
    def build(path) -> None:
        try:
            subprocess.run(["sh", "-c", command], cwd=path, check=True)
        except subprocess.CalledProcessError as e:
            status = 128 - e.returncode if e.returncode < 0 else e.returncode
            raise UserError(f"template build command {command!r} failed (exit status {status}); "
                            "nothing of it was kept") from None
    return build


def cmd_run(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UserError("no command to run: btrfsx run --from TEMPLATE -- COMMAND [ARG...]")
    if args.key is not None and args.build is None:
        raise UserError("--key is the key of a --build command: give --build too")
    build = _shell_build(args.build) if args.build is not None else None
    with _driver(args) as d, Template(d, args.template, build, key=args.key) as tpl:
        result = tpl.run(argv, keep=args.keep)
    status = result.exit_status
    if result.kept is not None:
        print(f"btrfsx: {argv[0]} failed (exit status {status}); its copy is kept at {result.kept} "
              f"(remove it with: btrfsx rm {result.kept.name})", file=sys.stderr)
    if args.json:
        _emit_json({"template": args.template, "exit_status": status,
                    "kept": str(result.kept) if result.kept else None})
    return status


# ---------------------------------------------------------------- demo

def cmd_demo(args) -> int:
    if args.builds < 1 or args.layers < 1:
        raise UserError("--builds and --layers must be at least 1")
    console = _console()
    with _driver(args) as d:
        if not args.json:
            console.print(f"btrfsx {__version__}: a CI builder's day in small on {d.home}: "
                          f"{args.builds} builds of {args.layers} layers over a {args.files}-file base")
        result = demo.run(d, args.builds, args.layers, args.files, compare=not args.no_compare, progress=_progress)
    summary = result.summary()
    if args.json:
        _emit_json(summary)
        return 0
    created, elapsed, cli = result.created, result.elapsed, result.compared
    _table(["", ""], [
        ["layers created", f"{created} ({created / elapsed:.1f} per second)"],
        ["applied", f"{_size(result.applied)} at {summary['applied_mib_per_second']} MiB/s"],
        ["exported", f"{_size(result.exported)} at {summary['exported_mib_per_second']} MiB/s"],
        ["wall time", f"{elapsed:.2f} s"],
    ])
    _table(["OPERATION", "COUNT", "MEDIAN"],
           [[op, len(t), f"{statistics.median(t) * 1e3:.3f} ms"] for op, t in result.samples.items()],
           right={1, 2})
    if cli:
        console.print("the same snapshot and remove of the base layer, alternately:")
        _table(["OPERATION", "BTRFSX", "BTRFS COMMAND", "BTRFSX FASTER"],
               [[op, f"{m['btrfsx'] * 1e3:.3f} ms", f"{m['btrfs'] * 1e3:.3f} ms",
                 f"{m['btrfs'] / m['btrfsx']:.1f}x"] for op, m in cli.items()], right={1, 2, 3})
    if cli is None and not args.no_compare:
        console.print("(install btrfs-progs to compare with the btrfs command)")
    return 0


# ---------------------------------------------------------------- parsing

HOME_HELP = "the layer store (default: $BTRFSX_HOME, else the embedded store)"
OPTION_HELP = (f"a driver option, as Driver(options=[...]) takes it (btrfs.min_space=100m, btrfs.size=1g, "
               f"btrfsx.quota=simple|qgroup, btrfsx.changes=auto|native|naive); repeatable, after those of "
               f"${OPTIONS_ENV} (separated by commas or spaces), later ones win")


def _add_common(p: argparse.ArgumentParser, short_option: bool = True) -> None:
    g = p.add_argument_group("common options (also accepted before the command)")
    g.add_argument("--home", default=None, help=HOME_HELP)
    g.add_argument("--json", action="store_true", default=None, help="machine-readable output")
    g.add_argument("--debug", action="store_true", default=None, help="show tracebacks")
    flags = ["-o", "--option"] if short_option else ["--option"]
    g.add_argument(*flags, dest="options", action="append", default=None, metavar="KEY=VALUE",
                   help=OPTION_HELP + ("" if short_option else " (here only --option: -o is --output)"))


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: an argument it does not know is an error with its
    own usage, not the top-level parser's."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btrfsx", description="A fast btrfs layer store, compatible with podman's and buildah's.",
        epilog="example: btrfsx demo   (runs on an embedded loopback filesystem when no --home is given)\n"
               f"driver options: -o KEY=VALUE (repeatable) after those of ${OPTIONS_ENV}, "
               f"e.g. {OPTIONS_ENV}='btrfs.min_space=100m btrfs.size=1g'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"btrfsx {__version__}")
    g = parser.add_argument_group("global options (also accepted after the command)")
    g.add_argument("--home", dest="top_home", default=None, metavar="HOME", help=HOME_HELP)
    g.add_argument("--json", dest="top_json", action="store_true", help="machine-readable output")
    g.add_argument("--debug", dest="top_debug", action="store_true", help="show tracebacks")
    g.add_argument("-o", "--option", dest="top_options", action="append", default=None, metavar="KEY=VALUE",
                   help=OPTION_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser)

    def command(name, func, help, description=None):
        p = sub.add_parser(name, help=help, description=description or help, epilog=f"example: {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command("create", cmd_create, "create a layer, empty or a snapshot of a parent")
    p.add_argument("id")
    p.add_argument("--parent", help="the layer to snapshot")
    p.add_argument("--size", help="a size limit (10G, 512m, ...): turns quotas on")
    p.add_argument("--rw", action="store_true", help="a read-write layer (gets btrfs.size by default)")
    p = command("rm", cmd_rm, "remove layers, with any subvolume nested in them",
                "remove layers, with any subvolume nested in them; all or none: every ID is checked first, and\n"
                "if one is not a layer nothing is removed (each missing one is named, exit status 1).  A layer\n"
                "other layers were snapshotted from is refused unless its children are removed with it (they\n"
                "go first) or --force is given (the children stay, without a parent).")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--force", action="store_true", help="remove layers that have children, leaving the children")
    p = command("path", cmd_path, "print a layer's directory")
    p.add_argument("id")
    p = command("exists", cmd_exists, "exit 0 if a layer exists, 1 if not")
    p.add_argument("id")
    command("status", cmd_status, "show the store: version, kernel, quota mode, filesystem, layers")
    p = command("ls", cmd_ls, "list layers with parent, usage, limit and creation time")
    p.add_argument("--tree", action="store_true", help="draw the lineage as a tree")
    for name, func, help in (("changes", cmd_changes, "list what a layer changed"),
                             ("diff-size", cmd_diff_size, "the size of what a layer changed")):
        p = command(name, func, help)
        p.add_argument("id")
        p.add_argument("--parent", help="compare against this layer ('' for none; default: its recorded parent)")
        p.add_argument("--walk", action="store_true", help=WALK_HELP)
    p = command("diff", cmd_diff, "write a layer's changes as an OCI layer tar")
    p.add_argument("id")
    p.add_argument("--parent", help="compare against this layer ('' for none; default: its recorded parent)")
    p.add_argument("--walk", action="store_true", help=WALK_HELP)
    p.add_argument("-o", "--output", help="the file to write (default: stdout)")
    comp = p.add_mutually_exclusive_group()
    comp.add_argument("--gzip", action="store_true", help="gzip-compress")
    comp.add_argument("--zstd", action="store_true", help="zstd-compress")
    p = command("apply", cmd_apply, "apply a layer tar (plain, gzip or zstd) to a layer, all or nothing")
    p.add_argument("id")
    p.add_argument("file", help="the tar file, or - for stdin")
    p.add_argument("--parent", help="the layer's parent (informational, as in containers/storage)")
    p = command("send", cmd_send, "write a layer as a btrfs send stream (incremental against --parent)",
                "write layer ID as a btrfs send stream, incremental against layer --parent (only what changed,\n"
                "extents shared with the parent sent as clones); another btrfs store takes it with 'btrfsx\n"
                "receive'.  --json puts the bytes and seconds on stderr when the stream goes to stdout.")
    p.add_argument("id")
    p.add_argument("--parent", help="send only what changed against this layer (the receiver must have received it)")
    p.add_argument("-o", "--output", help="the file to write (default: stdout, never a terminal)")
    p.add_argument("--proto", type=int, choices=(1, 2), default=None,
                   help="send stream protocol version (default: the highest the kernel offers; 1 for older receivers)")
    p = command("receive", cmd_receive, "make a layer from a btrfs send stream, all or nothing")
    p.add_argument("id")
    p.add_argument("file", help="the send stream, or - for stdin")
    p.add_argument("--parent", help="the layer the stream is incremental against")
    p.add_argument("--size", help="a size limit (10G, 512m, ...): turns quotas on")
    p = command("export-oci", cmd_export_oci, "write a layer and its ancestors as an image in an OCI layout")
    p.add_argument("id")
    p.add_argument("directory", help="the OCI image layout (made if missing; other images in it are kept)")
    p.add_argument("--tag", help="name the image in the layout (org.opencontainers.image.ref.name)")
    p = command("import-oci", cmd_import_oci,
                "apply an image of an OCI layout as layers named by chain id; prints the top layer")
    p.add_argument("directory", help="the OCI image layout")
    p.add_argument("--tag", help="the image to import (default: the layout's only image)")
    command("gc", cmd_gc, "remove what interrupted operations left behind")
    p = command("run", cmd_run, "run a command in a fresh copy of a layer, removed afterwards",
                "run a command in a fresh writable copy (a snapshot) of layer TEMPLATE, with the copy as its\n"
                "working directory and $BTRFSX_COPY; the copy is removed afterwards (kept for inspection with\n"
                "--keep when the command fails).  The exit status is the command's.  With --build, TEMPLATE\n"
                "is a template: built by running the shell command BUILD in an empty directory the first\n"
                "time, and again whenever --key changes (e.g. --key \"$(sha256sum schema.sql)\").  A copy is\n"
                "not a container: the command runs as you, with your network, mounts and processes.")
    p.add_argument("--from", dest="template", required=True, metavar="TEMPLATE",
                   help="the layer (or template) to copy")
    p.add_argument("--keep", action="store_true", help="keep the copy when the command fails (exit status "
                                                       "not 0, or killed); its path is printed")
    p.add_argument("--build", metavar="COMMAND", help="build TEMPLATE with this shell command (sh -c) when it is "
                                                      "missing or its key changed")
    p.add_argument("--key", help="the inputs of --build, as a string: a different key rebuilds the template")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    p = command("demo", cmd_demo, "the main job: a CI builder's day in small, timed")
    p.add_argument("--builds", type=int, default=20, help="builds to run (default 20)")
    p.add_argument("--layers", type=int, default=5, help="layers per build (default 5)")
    p.add_argument("--files", type=int, default=2000, help="files in the base layer (default 2000)")
    p.add_argument("--no-compare", action="store_true", help="skip the comparison with the btrfs command")
    p = command("loopback", cmd_loopback, "the embedded store: show it, or unmount and delete it")
    p.add_argument("action", choices=["status", "destroy"])
    for p in sub.choices.values():
        _add_common(p, short_option=p.prog not in ("btrfsx diff", "btrfsx send"))
    p = command("quota", cmd_quota, "manage the store's quotas",
                "manage the store's quotas (the common options --home, --json, --debug, -o go after the action)")
    actions = p.add_subparsers(dest="quota_action", metavar="ACTION", required=True, parser_class=_CommandParser)
    p = actions.add_parser("disable", help="turn quotas off on the store's filesystem",
                           description="turn quotas off on the store's filesystem; refused (EBUSY, naming them) "
                                       "while layers have size limits, unless --force",
                           epilog=f"example: {EXAMPLES['quota']}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="store_true", help="turn quotas off even though layers have size limits "
                                                        "(their limits are dropped)")
    _add_common(p)
    return parser


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        if isinstance(e, PermissionError) and os.geteuid() != 0:
            text += " (try as root)"
        return text
    return str(e)


#: pip's names of the modules the command imports from other distributions.
_DISTRIBUTIONS = {"rich": "rich>=13", "zstandard": "zstandard>=0.19"}


def _describe_import_error(e: ImportError) -> str:
    name = e.name or (e.msg.split("'")[1] if e.msg.count("'") >= 2 else "")
    top = name.split(".")[0]
    if top == "btrfsx":
        fix = "pip install --force-reinstall btrfsx (from a checkout: bash scripts/bootstrap.sh)"
    else:
        fix = f"pip install '{_DISTRIBUTIONS.get(top, top or 'btrfsx')}' (or reinstall: pip install btrfsx)"
    return f"the Python module {name or '?'!r} is missing or broken ({e}); install it: {fix}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.home = args.home or args.top_home
    args.json = bool(args.json or args.top_json)
    args.debug = bool(args.debug or args.top_debug)
    args.driver_options = [*(args.top_options or []), *(getattr(args, "options", None) or [])]
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("btrfsx: interrupted; run 'btrfsx gc' to collect what was left", file=sys.stderr)
        return 130
    except ImportError as e:
        if args.debug:
            traceback.print_exc()
        print(f"btrfsx: {_describe_import_error(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (btrfsx diff | head): not an error of ours
        sys.stderr.close()
        return 0
    except (UserError, OSError, ValueError, PrerequisitesError, OptionError, ArchiveError, LoopbackError,
            RuntimeError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"btrfsx: {_describe(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
