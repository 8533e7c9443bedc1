"""Write docs/performance.md from one pytest-benchmark JSON file.

    python benchmarks/report.py --json run.json --out docs/performance.md \\
        [--log pytest.log] [--readme README.md] [--command "scripts/perf-report"]

Generic: every benchmark group in the JSON becomes a table (known groups in
a fixed order first, any other after them), with each contender's median,
its ratio to the group's btrfsx row (``extra_info["btrfsx"]``, else the
first ``Driver`` row) and to the reference it was measured against.  Rows
measured outside pytest-benchmark (the C floor...) come from
``extra_info["also"]``, notes from ``extra_info["notes"]``, targets from
``extra_info["targets"]`` checked against ``bench_targets.TARGETS`` (the one
place the targets are defined); ``extra_info["syscalls"]`` becomes the
syscall section.  With ``--log`` (the pytest output, run with ``-ra``) the
skipped tests and their reasons are listed; with ``--readme`` the block
between ``<!-- perf:begin -->`` and ``<!-- perf:end -->`` in the README is
replaced by the headline figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_targets  # noqa: E402

#: Why a target was missed, by target id: docs/performance-notes.md (facts
#: about the code found by measuring, kept as prose beside the docs, not in code).
NOTES = Path(__file__).resolve().parent.parent / "docs" / "performance-notes.md"
NO_NOTE = ("Met in every full run so far; a miss is new: compare this run's figures and noise with the previous "
           "report before reading anything into it.")


def load_notes(path: Path = NOTES) -> dict[str, str]:
    """The notes by target id pattern: each ``## `id` `` section's paragraphs, joined."""
    found: dict[str, str] = {}
    key = None
    for line in path.read_text().splitlines():
        m = re.match(r"^## `([^`]+)`\s*$", line)
        if m:
            key = m.group(1)
            found[key] = ""
        elif key is not None and line.strip():
            found[key] = f"{found[key]} {line.strip()}".strip()
    return found


def explanation(tid: str, found: dict[str, str]) -> str:
    """The note of target ``tid`` (a ``*`` in a note's id matches a layer count)."""
    if tid in found:
        return found[tid]
    for pattern, text in found.items():
        if "*" in pattern and re.fullmatch(re.escape(pattern).replace(r"\*", r"\d+"), tid):
            return text
    return NO_NOTE


# Groups in this order first (by prefix), any other group after them, alphabetically.
GROUP_ORDER = [
    "create empty layer", "remove empty layer", "snapshot 1,000-file layer", "snapshot chain",
    "exists / get", "remove a 50,000-file layer", "remove a 50,000-file layer holding",
    "find nested subvolumes", "quotas:", "threads:", "diff (export)", "apply_diff", "changes",
    "create+destroy", "syscalls",
]


# ---------------------------------------------------------------- helpers

def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_ratio(r: float | None, digits: int = 2) -> str:
    if r is None:
        return "-"
    if r < 0.1:
        return f"{r:.2g}x"
    return f"{r:.{digits}f}x" if r < 100 else f"{r:,.0f}x"


def run(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine(data: dict) -> list[tuple[str, str]]:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except OSError:
        pass
    mi = data.get("machine_info", {})
    ci = data.get("commit_info", {})
    libbtrfsutil = run("dpkg-query", "-W", "-f=${Version}", "python3-btrfsutil") or "not installed"
    rows = [
        ("date of the run", data.get("datetime", "")[:19].replace("T", " ") + " UTC"),
        ("CPU", f"{cpu or mi.get('cpu', {}).get('brand_raw', '?')}, {os.cpu_count()} cores (online: "
                f"{run('nproc') or '?'})"),
        ("memory", mem),
        ("kernel", f"Linux {platform.release()} ({platform.machine()})"),
        ("btrfs-progs", run("btrfs", "--version") or "not installed"),
        ("Python", f"{mi.get('python_implementation', '')} {mi.get('python_version', platform.python_version())}"),
        ("C compiler", (run("cc", "--version").splitlines() or ["?"])[0]),
        ("GNU tar", (run("tar", "--version").splitlines() or ["?"])[0]),
        ("strace", (run("strace", "-V").splitlines() or ["not installed"])[0]),
        ("libbtrfsutil bindings", f"python3-btrfsutil {libbtrfsutil}"),
        ("btrfsx commit", f"{ci.get('id', '?')[:12]}{' (with uncommitted changes)' if ci.get('dirty') else ''}"),
        ("pytest-benchmark", data.get("version", "?")),
        ("large tree", f"BTRFSX_BENCH_LARGE_MIB={_large_mib(data)}"),
    ]
    return rows


def _large_mib(data: dict) -> str:
    """The size of the large diff tree of the run, read from its group names
    (the report may be written again later, without the run's environment)."""
    for bench in data.get("benchmarks", []):
        m = re.search(r"(\d+) MiB in 4 large files", bench.get("group") or "")
        if m:
            return m.group(1)
    return os.environ.get("BTRFSX_BENCH_LARGE_MIB", "256")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return out


QUOTA_GROUP = re.compile(r"^quotas: (.*) of a snapshot at (\d+) layers$")
QUOTA_OPS = ["sized create", "snapshot", "remove sized", "remove unsized"]


def group_key(name: str) -> tuple:
    m = QUOTA_GROUP.match(name)
    for i, prefix in enumerate(GROUP_ORDER):
        if name.startswith(prefix):
            if m:  # by store size, then the operation
                op = QUOTA_OPS.index(m.group(1)) if m.group(1) in QUOTA_OPS else len(QUOTA_OPS)
                return (i, (int(m.group(2)), op, name))
            return (i, natural(name))
    return (len(GROUP_ORDER), natural(name))


def quota_summary(groups) -> list[str]:
    """The three quota modes side by side: one row per operation and store size."""
    rows = []
    for g in sorted((g for g in groups if QUOTA_GROUP.match(g)), key=group_key):
        op, layers = QUOTA_GROUP.match(g).groups()
        cells = {}
        for r in groups[g]:
            for mode in ("quotas off:", "simple:", "qgroup:"):
                if r.contender.startswith(mode):
                    cells[mode] = r
        if not cells:
            continue

        def cell(mode):
            r = cells.get(mode)  # noqa: B023 (called in this iteration)
            if r is None:
                return "-"
            if mode == "quotas off:":
                return fmt_time(r.median)
            return f"{fmt_time(r.median)} ({fmt_ratio(r.ratio)})" if r.ratio else fmt_time(r.median)
        rows.append([op, layers, cell("quotas off:"), cell("simple:"), cell("qgroup:")])
    if not rows:
        return []
    return table(["operation", "layers in the store", "quotas off", "simple quotas (x off, alternating)",
                  "full qgroups (x off, alternating)"], rows)


STORE_SIZE_GROUP = re.compile(r"^store size, quotas (\w+): (.+)$")
STORE_SIZE_MODES = ("off", "simple", "qgroup")
STORE_SIZE_WHOLE = ("layer_infos()", "ls --json", "status", "gc()")


def store_size_summary(groups) -> list[str]:
    """Stores of 100 to 10,000 layers (benchmarks/test_store_size_bench.py):
    per-layer operations with their growth from the 100-layer reference
    store, then the whole-store operations beside the C floor of a listing."""
    per_layer: dict[tuple[str, str], dict[int, Row]] = defaultdict(dict)
    whole: dict[tuple[str, str], dict[int, Row]] = defaultdict(dict)
    for g, rows in groups.items():
        m = STORE_SIZE_GROUP.match(g)
        if not m:
            continue
        mode, op = m.groups()
        for r in rows:
            if r.btrfsx and "layers" in r.extra:
                (whole if op in STORE_SIZE_WHOLE else per_layer)[(mode, op)][int(r.extra["layers"])] = r
    if not per_layer and not whole:
        return []
    sizes = sorted({n for d in (*per_layer.values(), *whole.values()) for n in d})

    def order(key):
        mode, op = key
        return (STORE_SIZE_MODES.index(mode) if mode in STORE_SIZE_MODES else 9, op)
    out: list[str] = []
    if per_layer:
        top = max(sizes)
        rows = []
        for key in sorted(per_layer, key=order):
            by_size = per_layer[key]
            big = by_size.get(top)
            growth = big.median / big.ref_median if big and big.median and big.ref_median else None
            kernel = big.extra.get("kernel_growth") if big else None
            divided = growth / kernel if growth and kernel else None
            rows.append([key[0], key[1], *[fmt_time(by_size[n].median) if n in by_size else "-" for n in sizes],
                         "-" if big is None or big.ref_median is None else fmt_time(big.ref_median),
                         fmt_ratio(growth), fmt_ratio(kernel) if kernel else "-",
                         fmt_ratio(divided) if divided else "-"])
        out += table(["quotas", "operation", *[f"{n:,} layers" for n in sizes],
                      f"100 layers, alternating with {top:,}", f"growth at {top:,}", "C floor's growth",
                      "growth, the kernel's divided out"], rows)
        out.append("")
    if whole:
        rows = []
        for key in sorted(whole, key=order):
            by_size = whole[key]
            top_row = by_size.get(max(by_size))
            floor = top_row.ref_median if top_row else None
            rows.append([key[0], key[1], *[fmt_time(by_size[n].median) if n in by_size else "-" for n in sizes],
                         fmt_time(floor) if floor else "-",
                         fmt_ratio(top_row.median / floor) if top_row and floor and top_row.median else "-"])
        out += table(["quotas", "operation", *[f"{n:,} layers" for n in sizes],
                      "C floor of a listing, largest store", "x the C floor"], rows)
    return out


def natural(name: str) -> tuple:
    # "quotas: ... at 50 layers" before "... at 200 layers"
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name.replace(",", "")))


# ---------------------------------------------------------------- model

class Row:
    def __init__(self, contender, median, *, rounds=None, reference="", ref_median=None, ratio=None, target="",
                 note="", btrfsx=False, extra=None):
        self.contender, self.median, self.rounds = contender, median, rounds
        self.reference, self.ref_median, self.ratio = reference, ref_median, ratio
        self.target, self.note, self.btrfsx, self.extra = target, note, btrfsx, extra or {}


def load(paths: list[str]) -> tuple[dict, dict[str, list[Row]], dict[str, list[str]], list[dict], list[dict]]:
    data: dict = {}
    groups: dict[str, list[Row]] = defaultdict(list)
    notes: dict[str, list[str]] = defaultdict(list)
    measured: list[dict] = []
    syscalls: list[dict] = []
    # a later file's benchmark replaces an earlier file's of the same name
    # (a module measured again): each group's rows still come from one run
    chosen: dict[str, dict] = {}
    for path in paths:
        d = json.load(open(path))
        if not data:
            data = d
        for b in d.get("benchmarks", []):
            chosen.pop(b.get("fullname") or b["name"], None)
            chosen[b.get("fullname") or b["name"]] = b
    for b in chosen.values():
        g = b.get("group") or b["name"]
        x = b.get("extra_info", {})
        stats = b.get("stats", {})
        ref_ns = x.get("reference_median_ns")
        groups[g].append(Row(x.get("contender") or b["name"], stats.get("median"), rounds=stats.get("rounds"),
                             reference=x.get("reference", ""), ref_median=ref_ns / 1e9 if ref_ns else None,
                             ratio=x.get("ratio"), target=x.get("target", ""), note=x.get("note", ""),
                             btrfsx=bool(x.get("btrfsx")), extra=x))
        seen = {r.contender for r in groups[g]}
        for a in x.get("also", []):
            if a["contender"] in seen:
                continue
            seen.add(a["contender"])
            groups[g].append(Row(a["contender"], a["median_ns"] / 1e9 if a.get("median_ns") is not None else None,
                                 rounds=a.get("samples"), note=a.get("note", "")))
        for n in x.get("notes", []):
            if n not in notes[g]:
                notes[g].append(n)
        for t in x.get("targets", []):
            measured.append({**t, "group": g, "contender": x.get("contender") or b["name"]})
        if "syscalls" in x:
            syscalls.append(x["syscalls"])
    return data, groups, notes, measured, syscalls


def skipped(log: str | None) -> list[str]:
    if not log or not os.path.exists(log):
        return []
    out = []
    for line in open(log, errors="replace"):
        if line.startswith("SKIPPED"):
            out.append(line.strip())
    return out


# ---------------------------------------------------------------- the report

def targets_section(measured: list[dict]) -> tuple[list[str], list[tuple]]:
    by_id: dict[str, list[dict]] = defaultdict(list)
    for m in measured:
        by_id[m["id"]].append(m)
    rows, missed, summary = [], [], []
    for tid, t in bench_targets.TARGETS.items():
        ms = by_id.get(tid, [])
        if not ms:
            rows.append([t.what, t.describe(), "not measured in this run", "**NOT MEASURED**", ""])
            summary.append((tid, t, None, None, []))
            continue
        oks = [t.met(m["value"]) for m in ms]
        met = all(o is True for o in oks)
        vals = "; ".join(("-" if m["value"] is None else
                          (f"{m['value']:.1f} {t.unit}" if t.unit != "x" else fmt_ratio(m["value"], 3)))
                         + (f" ({m['detail']})" if m.get("detail") else "") for m in ms)
        rows.append([t.what, t.describe(), vals, "MET" if met else "**NOT MET**", ms[0]["group"]])
        summary.append((tid, t, met, vals, ms))
        if not met:
            missed.append((tid, t, vals))
    lines = table(["target", "limit", "measured (median ratio, same run)", "", "group"], rows)
    return lines, summary


def write(args) -> str:
    data, groups, notes, measured, syscalls = load(args.json)
    lines: list[str] = []
    w = lines.append
    when = data.get("datetime", dt.datetime.now(dt.UTC).isoformat())[:10]
    w("# Performance")
    w("")
    if len(args.json) == 1:
        w(f"Generated by `{args.command}` on {when}: every figure below was measured in that one run "
          "(medians; ratios between contenders of the same run). Do not edit by hand: rerun the command.")
    else:
        w(f"Generated by `{args.command}` on {when} from {len(args.json)} runs, the benchmarks of a later run "
          "replacing those of the same name in an earlier one, so that every group's figures come from one "
          "run (medians; ratios between contenders of the same run). Do not edit by hand: rerun the command.")
    w("")
    w("The contenders: **btrfsx** (the `Driver` API, and the compiled `_ioctl` layer alone); the **btrfs "
      "command** (`btrfs subvolume create/snapshot/delete/show` through `subprocess`); **pure Python** "
      "(the same ioctls through `fcntl.ioctl` and `struct`); the **C floor** (`benchmarks/floor.c`, "
      "built by the benchmark with the system compiler: the same ioctls in a tight loop with cached "
      "directory fds); the **walk-based** remove and nested-subvolume discovery of the original Go "
      "driver; **libbtrfsutil**'s Python bindings (Debian's `python3-btrfsutil`); **GNU tar** for "
      "diffs.")
    w("")
    w("## Machine")
    w("")
    lines += table(["", ""], [list(r) for r in machine(data)])
    w("")
    w("A shared, noisy 2-core VM: other engineers' tests ran on the same machine during the run. Ratios "
      "between contenders measured side by side (interleaved or alternating round by round where the "
      "operation allows) are meaningful; absolute times move by tens of percent between runs.")
    w("")

    tlines, summary = targets_section(measured)
    w("## Targets")
    w("")
    n_met = sum(1 for s in summary if s[2] is True)
    n_not = sum(1 for s in summary if s[2] is False)
    n_none = sum(1 for s in summary if s[2] is None)
    w(f"{n_met} met, {n_not} not met, {n_none} not measured in this run. The limits live in "
      "`benchmarks/bench_targets.py`.")
    w("")
    lines += tlines
    w("")
    missed = [s for s in summary if s[2] is False]
    if missed:
        w("### Targets not met, and why")
        w("")
        missed_notes = load_notes()
        for tid, t, _, vals, _ms in missed:
            w(f"- **{t.what}** ({t.describe()}): measured {vals}. {explanation(tid, missed_notes)}")
        w("")
    unmeasured = [s for s in summary if s[2] is None]
    if unmeasured:
        w("### Targets not measured")
        w("")
        for _tid, t, *_ in unmeasured:
            w(f"- {t.what}: no benchmark of this run produced it (skipped or deselected; see below).")
        w("")

    # ---- syscalls
    if syscalls:
        sc = syscalls[-1]
        w("## Syscalls the driver adds to the bare ioctl, and what each costs")
        w("")
        w(f"From `benchmarks/syscall_probe.py` ({sc['n']} of each operation on an empty store with quotas "
          "off): which syscalls under `strace -f -T`, and each syscall timed on its own, untraced, in the "
          "order and state the driver makes it (`parts`). strace's own times include the tracing "
          f"(a bare `getppid` shows {sc.get('calibration_us')} us of it), so the untraced column is the cost.")
        w("")
        parts = sc.get("parts_untraced_us", {})
        for op, info in sc["ops"].items():
            bare = info.get("bare_median_us")
            added_parts = {k: v for k, v in parts.items() if k.startswith(f"{op}:") and "ioctl(" not in k}
            line = f"**{op}**: Driver median {info['driver_median_us']:.1f} us"
            if bare:
                line += f", the bare `_ioctl` call {bare:.1f} us (each timed in a window of its own)"
            line += f"; the bare call is `{info['bare']}`."
            if added_parts:
                line += (f" The added syscalls, each timed on its own untraced, sum to "
                         f"{sum(added_parts.values()):.1f} us.")
            w(line)
            w("")
            rows = []
            for c in info["calls"]:
                cost = [v for k, v in parts.items() if k.startswith(f"{op}:") and re.search(
                    r"\b" + re.escape(c["syscall"].split()[-1].lower()) + r"\b", k.lower())]
                rows.append([f"`{c['syscall']}`", "bare" if c["syscall"] == info["bare"] and c["per_op"] <= 1
                             else "added", f"{c['per_op']:g}", f"{c['strace_T_median_us']:.1f}",
                             "; ".join(f"{v:.1f}" for v in cost) or "-"])
            lines += table(["syscall", "", "per operation", "strace -T median (us, tracing included)",
                            "untraced, on its own (us)"],
                           rows)
            w("")
        if parts:
            w("Each syscall on its own, untraced (medians, us):")
            w("")
            lines += table(["syscall", "us"], [[k, f"{v:.1f}"] for k, v in parts.items()])
            w("")
        w("The remaining difference between the Driver's median and the bare call is Python: argument "
          "checks (`check_layer_id`), the id lock when quota files exist, and the calls themselves.")
        w("")

    # ---- per group
    w("## Results by operation")
    w("")
    w("`x btrfsx`: the contender's median over the btrfsx row of the group (marked **bold**). "
      "`vs reference`: the ratio recorded against the reference the benchmark names, measured beside "
      "it (for the CLI rows, how many times slower than the driver). Where each contender alternates "
      "round by round with a C floor run of its own (snapshots), contenders ran one after the other "
      "on a store that changes between them: compare each to its own reference, not across rows.")
    w("")
    qs = quota_summary(groups)
    if qs:
        w("### Quota modes side by side")
        w("")
        w("Medians of each operation with quotas off, simple quotas and full qgroups, each mode on a "
          "filesystem of its own holding the same number of snapshot layers of one 1,000-file base; "
          "the ratios are to the quotas-off operation run alternately with that mode (the groups below "
          "have every row).")
        w("")
        lines += qs
        w("")
    ss = store_size_summary(groups)
    if ss:
        w("### Stores of 100 to 10,000 layers")
        w("")
        w("`benchmarks/test_store_size_bench.py`: one CI-shaped store per quota mode (20 bases of 100 "
          "files, children snapshotted from random earlier layers, chains at most 40 deep; every layer "
          "sized with quotas on), grown in place, each operation alternating round by round with the "
          "same operation on a 100-layer reference store of the same shape on another filesystem. "
          "Growth: the median at the largest size over the reference's, alternating; for creates, "
          "snapshots and removes, the C floor's growth (the same ioctls in a loop in the same "
          "directory of the same filesystems) is the kernel's own. Whole-store operations: `ls --json` "
          "and `status` as fresh processes; the C floor of a listing is one TREE_SEARCH_V2 pass over the "
          "root tree's ROOT_ITEM/ROOT_BACKREF items and one over the quota tree. The store-size groups "
          "are not repeated below.")
        w("")
        lines += ss
        w("")
    for g in sorted(groups, key=group_key):
        if ss and STORE_SIZE_GROUP.match(g):
            continue
        rows = groups[g]
        base = next((r for r in rows if r.btrfsx), None) or next(
            (r for r in rows if r.contender.startswith("Driver")), None)
        w(f"### {g}")
        w("")
        out = []
        for r in rows:
            rel = (r.median / base.median) if base and base.median and r.median else None
            ref = (f"{fmt_ratio(r.ratio)} vs {r.reference}" if r.ratio is not None and r.reference else "")
            extra = []
            if "MiB/s" in r.extra and r.extra["MiB/s"]:
                extra.append(f"{r.extra['MiB/s']:.0f} MiB/s")
            if "peak_rss_mib" in r.extra:
                extra.append(f"peak RSS {r.extra['peak_rss_mib']:.1f} MiB")
            if r.note:
                extra.append(r.note)
            name = f"**{r.contender}**" if r is base else r.contender
            out.append([name, fmt_time(r.median), "-" if rel is None else fmt_ratio(rel), ref,
                        "-" if r.rounds is None else str(r.rounds), "; ".join(extra)])
        lines += table(["contender", "median", "x btrfsx", "vs reference", "rounds", "notes"], out)
        for n in notes.get(g, []):
            w("")
            w(f"- {n}")
        w("")

    skips = skipped(args.log)
    if skips:
        w("## Skipped")
        w("")
        for s in skips:
            w(f"- `{s}`")
        w("")
    w("## Reproduce")
    w("")
    w("As root, from a checkout (installs what is missing: `scripts/bootstrap.sh`, then `python3-btrfsutil` "
      "and `strace`):")
    w("")
    w("```sh")
    w(args.command)
    w("```")
    w("")
    w("It runs `pytest benchmarks/` with the 1 GiB diff tree (`BTRFSX_BENCH_LARGE_MIB=1024`), keeps the "
      "JSON (`--benchmark-json`) and the log, and writes this file from them "
      "(`benchmarks/report.py`). A plain `.venv/bin/python -m pytest benchmarks/` runs the same "
      "benchmarks with a 256 MiB large tree and prints the ratios at the end.")
    w("")
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    if args.readme:
        update_readme(args.readme, summary, groups, args.command)
    return text


def headline(summary, groups) -> list[str]:
    byid = {s[0]: s for s in summary}

    def val(tid, i=0):
        s = byid.get(tid)
        if not s or not s[4] or len(s[4]) <= i:
            return None
        return s[4][i]["value"]

    def verdict(*tids):
        out = []
        for tid in tids:
            s = byid.get(tid)
            if s and s[2] is not None:
                t = s[1]
                out.append("met" if s[2] else f"**not met** ({t.describe()})")
        if not out:
            return ""
        if len(set(out)) == 1:
            return f" Target {out[0]}." if len(out) == 1 else f" Targets {out[0]}."
        return " Targets: " + ", ".join(out) + "."

    def med(group_prefix, contender_prefix):
        for g, rows in groups.items():
            if g.startswith(group_prefix):
                for r in rows:
                    if r.contender.startswith(contender_prefix):
                        return r.median
        return None
    out = []
    c, r = med("create empty layer", "Driver.create"), med("remove empty layer", "Driver.remove")
    if c and r and val("driver_create") and val("driver_remove"):
        out.append(f"- Empty layer: `Driver.create` {fmt_time(c)}, {val('driver_create'):.2f}x the bare C ioctl; "
                   f"`Driver.remove` {fmt_time(r)}, {val('driver_remove'):.2f}x."
                   + verdict("driver_create", "driver_remove"))
    if val("cli_create") and val("cli_remove"):
        out.append(f"- {val('cli_create'):.0f}x faster than `btrfs subvolume create`, {val('cli_remove'):.0f}x "
                   f"faster than `btrfs subvolume delete`." + verdict("cli_create", "cli_remove"))
    if val("driver_snapshot"):
        out.append(f"- Snapshot of a 1,000-file layer: {val('driver_snapshot'):.2f}x the C floor; along a 300-deep "
                   f"chain {val('driver_snapshot_chain') or 0:.2f}x."
                   + verdict("driver_snapshot", "driver_snapshot_chain"))
    if val("nested_vs_walk"):
        out.append(f"- Nested subvolumes of a 50,000-file layer found {val('nested_vs_walk'):,.0f}x faster than by "
                   f"walking it; removing such a layer with 5 nested subvolumes: {val('remove_big_nested') or 0:.2f}x "
                   f"a C program doing the same." + verdict("nested_vs_walk", "remove_big_nested"))
    if val("remove_big_plain") is not None:
        vals = [m["value"] for m in byid["remove_big_plain"][4]]
        out.append(f"- Removing a 50,000-file layer: {', '.join(fmt_ratio(v) for v in vals)} the remove of an empty "
                   "layer (dentries cached, then not cached): the kernel evicts the cached dentries inside "
                   "SNAP_DESTROY, and a C program pays the same." + verdict("remove_big_plain"))
    q = [s for s in summary if s[0].startswith("quota_simple") and s[4]]
    if q:
        worst = max(q, key=lambda s: s[4][0]["value"] or 0)
        out.append(f"- Simple quotas against quotas off (sized create, snapshot, remove at 50 and 500 layers): "
                   f"{fmt_ratio(min(s[4][0]['value'] for s in q))} to {fmt_ratio(worst[4][0]['value'])}; "
                   f"{sum(1 for s in q if s[2])} of {len(q)} targets met.")
    if val("threads_speedup"):
        out.append(f"- 4 threads snapshotting through one `Driver`: {val('threads_speedup'):.2f}x the speed-up C "
                   f"threads reach; threads calling `fcntl.ioctl` gain nothing (GIL)." + verdict("threads_speedup"))
    for kind, label in (("small", "20,000 small files"), ("large", "Large files")):
        if val(f"diff:{kind}") and val(f"apply:{kind}"):
            out.append(f"- {label}: `diff` {val(f'diff:{kind}'):.2f}x and `apply_diff` {val(f'apply:{kind}'):.2f}x "
                       f"GNU tar's time." + verdict(f"diff:{kind}", f"apply:{kind}"))
    if val("mem:diff:large") and val("mem:apply:large"):
        out.append(f"- Peak memory on the large tree: `diff` {val('mem:diff:large'):.0f} MiB, `apply_diff` "
                   f"{val('mem:apply:large'):.0f} MiB resident, the interpreter included."
                   + verdict("mem:diff:large", "mem:apply:large"))
    return out


def update_readme(path, summary, groups, command) -> None:
    text = Path(path).read_text()
    begin, end = "<!-- perf:begin -->", "<!-- perf:end -->"
    if begin not in text or end not in text:
        print(f"report: no {begin} ... {end} block in {path}; README left alone", file=sys.stderr)
        return
    n_met = sum(1 for s in summary if s[2] is True)
    n_not = sum(1 for s in summary if s[2] is False)
    body = [begin, "",
            f"Figures of the last full run (medians, ratios within that run; {n_met} targets met, "
            f"{n_not} not: see [docs/performance.md](docs/performance.md) for every table, the machine and "
            "why each missed target is missed):", ""]
    body += headline(summary, groups)
    body += ["", "Reproduce (as root; installs what is missing, takes 5 to 10 minutes, rewrites "
             "docs/performance.md and this block):", "", "```sh", command, "```", "", end]
    a, b = text.index(begin), text.index(end) + len(end)
    Path(path).write_text(text[:a] + "\n".join(body) + text[b:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="append", required=True, help="pytest-benchmark JSON (repeatable)")
    p.add_argument("--out", default="docs/performance.md")
    p.add_argument("--log", help="the pytest output (run with -ra), for the skipped tests")
    p.add_argument("--readme", help="README to update between <!-- perf:begin --> and <!-- perf:end -->")
    p.add_argument("--command", default="scripts/perf-report", help="the command to quote for reproducing")
    args = p.parse_args(argv)
    write(args)
    print(f"report: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
