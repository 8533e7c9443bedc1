"""Property-based fuzzing (Hypothesis) of every entry point that takes
outside input: the size parser, the driver and storage option parsers, the
layer id validator (alone and through a real Driver), and ``apply_diff`` on
generated, possibly hostile tar streams.

The reliability issue's requirement: every entry point refuses malformed
input with a clear error and no side effect.

The inputs Hypothesis found that were btrfsx bugs were fixed with this
module (an id holding a newline in the apply marker, quota file names of
long multibyte ids, out-of-range tar metadata escaping as OverflowError or
ValueError, layer_infos taking ids unchecked, options trimmed unlike Go's
TrimSpace) and are kept so they stay fixed: as plain regression tests (section 5) and as explicit ``@example``s
of the property that found them.  While they were open the inputs that
stopped an expensive property at its first example were split off, and the
split stays, so each property keeps its budget of examples for the rest:
out-of-range metadata has its own property
(test_apply_diff_with_out_of_range_metadata), and the end-to-end id
property draws ids without a newline, which section 5 covers.

Hypothesis keeps no example database here (``database=None``) and its
Unicode cache goes to the temporary directory: nothing is written into the
repository.  The apply_diff fuzz runs 60 examples by default and 2000 more
with ``--run-slow``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import re
import stat
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from btrfsx import ArchiveError, CreateOpts, Driver, OptionError, quota
from btrfsx.loopback import Loopback
from btrfsx.options import DriverOptions, check_size, parse_driver_options, parse_key_value, parse_storage_opt
from btrfsx.store import check_layer_id
from btrfsx.units import ram_in_bytes

INT64_LIMIT = 1 << 63

# Hypothesis caches Unicode tables in its home directory (.hypothesis in the
# working directory by default) even with no example database: keep it out of
# the repository.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "btrfsx-hypothesis"))

#: Pure-logic properties: fast, so many examples.
FAST = settings(database=None, max_examples=1000, deadline=None)
#: Properties that touch a real filesystem, one example at a time.
ON_BTRFS = settings(database=None, max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ================================================================ 1. the size parser

#: Pieces of size strings: numbers in every Go float spelling, separators,
#: unit letters in both cases, special values, and characters go-units refuses
#: or treats specially (the Kelvin sign lowers to "k", U+023A grows when lowered,
#: U+0130 lowers to "i", an Arabic-Indic digit is no Go digit).
SIZE_TOKENS = [
    "0", "1", "2", "5", "9", "10", "32", "007", "1024", "8191", "8192",
    "9223372036854774784", "9223372036854775807", "18446744073709551616",
    ".", "..", ".5", "_", "e", "E", "e3", "e-3", "e309", "+", "-", "0x", "0X", "1p4", "p", "P",
    " ", "  ", "b", "B", "k", "K", "m", "M", "g", "G", "t", "T", "i", "I", "ib", "iB", "kb", "KiB", "MB",
    "inf", "Inf", "nan", "NaN", "Infinity",
    "\u212a", "\u023a", "\u0130", "\u0663", "\t", "\n", "\0", "\u00e9", "'", "\\", "\udce9",
]
size_like = st.lists(st.sampled_from(SIZE_TOKENS), max_size=7).map("".join)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)  # surrogates too
size_text = st.one_of(size_like, any_text, st.binary(max_size=12).map(os.fsdecode))

#: Every unit go-units knows, with its power of 1024.
UNITS = [("", 0), ("b", 0)] + [(letter + tail, power) for power, letter in enumerate("kmgtp", 1)
                               for tail in ("", "b", "ib")]

# An independent description of what go-units can accept: a Go float
# (decimal, or hex with a "p" exponent; digits, "_", one ".", an exponent),
# at most one space, which then sits right before the suffix, and a suffix
# without digits, dots or spaces.
_DEC = r"[0-9_]*\.?[0-9_]*(?:[eE][+-]?[0-9_]+)?"
_HEX = r"0[xX][0-9a-fA-F_]*\.?[0-9a-fA-F_]*[pP][+-]?[0-9_]+"
ACCEPTED_SHAPE = re.compile(rf"(?P<number>[+-]?(?:{_HEX}|{_DEC}))(?P<space> ?)(?P<suffix>[^0-9. ]*)", re.DOTALL)
_KNOWN_SUFFIXES = {unit for unit, _ in UNITS}


def _suffix_go_units_takes(suffix: str) -> bool:
    lowered = "".join("i" if ch == "\u0130" else ch.lower() for ch in suffix)
    if lowered in _KNOWN_SUFFIXES:
        return True
    # go-units' length quirk (mirrored on purpose by btrfsx, see test_units):
    # a suffix of at most 3 bytes that lowers to 4 or more bytes is never
    # checked past its first letter.
    raw = len(suffix.encode("utf-8", "surrogatepass"))
    low = lowered.encode("utf-8", "surrogatepass")
    return raw <= 3 and len(low) >= 4 and low[:1] in (b"k", b"m", b"g", b"t", b"p")


@FAST
@given(size_text)
@example("")
@example("1.5.5g")
@example("\ud800")
@example("0x1p99999999999999999999")
@example("1" + "0" * 400)
def test_ram_in_bytes_returns_an_int64_or_refuses_with_a_value_error(text):
    try:
        value = ram_in_bytes(text)
    except ValueError as e:
        assert type(e) is ValueError, f"{type(e).__name__} for {text!r}"
        # The message names the input as go-units does ("invalid size: '%s'"),
        # verbatim: see the report for why this is not repr(text).
        assert str(e).startswith(f"invalid size: '{text}'"), (text, str(e))
        return
    assert type(value) is int
    assert 0 <= value < INT64_LIMIT, (text, value)
    # accepted strings never hold a character go-units refuses
    m = ACCEPTED_SHAPE.fullmatch(text)
    assert m is not None, f"accepted {text!r}, which is not a Go float with a unit"
    assert re.search(r"[0-9]", m["number"]), text
    assert _suffix_go_units_takes(m["suffix"]), text
    assert not any(ch in text for ch in "\0\t\n\r\v\f"), text


@st.composite
def size_with_unit(draw, beyond: bool = False):
    """(text, n, power): n of a unit, in any case, maybe with a space, a "+",
    leading zeros or a trailing ".0"."""
    unit, power = draw(st.sampled_from(UNITS))
    mult = 1 << (10 * power)
    if beyond:
        n = draw(st.integers(min_value=-(-(1 << 64) // mult), max_value=1 << 80))  # n * mult >= 2**64
    else:
        n = draw(st.integers(min_value=0, max_value=min((1 << 53) - 1, (INT64_LIMIT - 1) // mult)))
    unit = "".join(ch.upper() if draw(st.booleans()) else ch for ch in unit)
    number = draw(st.sampled_from(["{}", "+{}", "00{}", "{}.", "{}.0", "{}.000"])).format(n)
    return number + draw(st.sampled_from(["", " "])) + unit, n, power


@FAST
@given(size_with_unit())
@example(("0", 0, 0))
@example(("8191PiB", 8191, 5))
@example(("9007199254740991", (1 << 53) - 1, 0))
def test_ram_in_bytes_round_trips_every_unit(case):
    text, n, power = case
    assert ram_in_bytes(text) == n * 1024 ** power


@FAST
@given(size_with_unit(beyond=True))
@example(("18446744073709551616", 1 << 64, 0))
@example(("16384P", 16384, 5))
def test_ram_in_bytes_refuses_sizes_beyond_2_64(case):
    text, n, power = case
    with pytest.raises(ValueError, match="invalid size"):
        ram_in_bytes(text)


@FAST
@given(st.integers(min_value=0, max_value=1 << 70), st.sampled_from(UNITS))
def test_ram_in_bytes_is_float_arithmetic_truncated_or_refused(n, unit):
    # go-units: int64(float64(n) * 1024**k), refused by btrfsx beyond int64
    text, power = f"{n}{unit[0]}", unit[1]
    exact = float(n) * float(1 << (10 * power))
    if exact >= INT64_LIMIT:
        with pytest.raises(ValueError):
            ram_in_bytes(text)
    else:
        assert ram_in_bytes(text) == int(exact)


@pytest.mark.parametrize("text", ["-1", "", "abc", "1.5.5g", "18446744073709551616", "1e30", "inf", "nan",
                                  " 1G", "-0.5k", "1G ", "1 G B", "1e", "0x10", "1,5g", "1\0", "\u0663k"])
def test_ram_in_bytes_refuses_the_issues_examples(text):
    with pytest.raises(ValueError) as excinfo:
        ram_in_bytes(text)
    assert type(excinfo.value) is ValueError
    assert str(excinfo.value).startswith(f"invalid size: '{text}'")


# ================================================================ 2. the option parsers

DRIVER_KEYS = ["btrfs.min_space", "btrfs.size", "btrfs.mountopt", "btrfsx.quota", "btrfsx.changes",
               "BTRFS.Size", "Btrfs.Min_Space", "btrfs.min-space", "btrfs.sizes", "size", "overlay.size", ""]
#: Go's unicode.IsSpace (strings.TrimSpace); Python's str.strip() also takes U+001C..U+001F.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
           "\u2028\u2029\u202f\u205f\u3000"
PADDING = st.sampled_from(["", " ", "\t", "\n", "\xa0", "\u3000", "\x1f", "\x1c"])
option_values = st.one_of(size_text, st.sampled_from(["simple", "qgroup", "QGROUP", "auto", "naive", "Naive",
                                                       "fast", "", "1G", "512m", "0", "-1"]))


@st.composite
def driver_option(draw):
    if draw(st.integers(0, 4)) == 0:
        return draw(any_text)  # anything at all, '=' or not
    key = draw(st.sampled_from(DRIVER_KEYS) | any_text)
    return draw(PADDING) + key + draw(PADDING) + "=" + draw(PADDING) + draw(option_values) + draw(PADDING)


def _go_trim(text: str) -> str:
    return text.strip(GO_SPACE)


def _model_driver_options(options: list[str]):
    """containers/storage's parseOptions plus btrfsx's two keys, written out
    plainly: the DriverOptions fields, or None for a refusal."""
    values = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            return None
        key, value = _go_trim(key).lower(), _go_trim(value)
        if key in ("btrfs.min_space", "btrfs.size"):
            try:
                values["min_space" if key == "btrfs.min_space" else "default_size"] = ram_in_bytes(value)
            except ValueError:
                return None
        elif key == "btrfsx.quota" and value.lower() in ("simple", "qgroup"):
            values["quota_mode"] = value.lower()
        elif key == "btrfsx.changes" and value.lower() in ("auto", "naive"):
            values["changes"] = value.lower()
        else:
            return None
    return values


@FAST
@given(st.lists(driver_option(), max_size=5))
@example(["btrfs.size=-1"])
@example(["btrfs.size="])
@example(["btrfs.size"])
@example(["btrfs.min_space=1.5.5g"])
@example(["btrfs.min_space=18446744073709551616"])
@example(["btrfs.unknown=1"])
@example(["btrfs.min_space=0\x1f"])  # found: a btrfsx bug, fixed (section 5)
def test_parse_driver_options_returns_options_or_raises_option_error(options):
    expected = _model_driver_options(options)
    try:
        parsed = parse_driver_options(options)
    except OptionError as e:
        assert isinstance(e, ValueError)
        assert str(e)
        assert expected is None, f"refused {options!r} ({e}), which parses as {expected}"
        return
    assert type(parsed) is DriverOptions
    assert expected is not None, f"accepted {options!r} as {parsed}"
    assert parsed == DriverOptions(**expected)
    assert parsed.min_space >= 0 and parsed.default_size >= 0


@FAST
@given(any_text)
@example("\x1f=")  # found: a btrfsx bug, fixed (section 5)
def test_parse_key_value_splits_or_raises_option_error(option):
    try:
        key, value = parse_key_value(option)
    except OptionError:
        assert "=" not in option
        return
    assert "=" in option
    assert key == _go_trim(option.partition("=")[0])
    assert value == _go_trim(option.partition("=")[2])


storage_keys = st.one_of(st.sampled_from(["size", "SIZE", "Size", " size", "size ", "inodes", "", "sIzE"]), any_text)
storage_opts = st.one_of(st.none(), st.dictionaries(storage_keys, option_values, max_size=4))


@FAST
@given(storage_opts)
@example({"size": "-1"})
@example({"size": ""})
@example({"size": "abc"})
@example({"size": "1.5.5g"})
@example({"size": "18446744073709551616"})
@example({"inodes": "10"})
def test_parse_storage_opt_returns_a_size_or_raises_option_error(opts):
    expected, bad = None, False
    for key, value in (opts or {}).items():
        if key.lower() != "size":
            bad = True
            continue
        try:
            expected = ram_in_bytes(value)
        except ValueError:
            bad = True
    try:
        size = parse_storage_opt(opts)
    except OptionError as e:
        assert bad, f"refused {opts!r}: {e}"
        return
    assert not bad, f"accepted {opts!r} as {size}"
    assert size == expected
    assert size is None or (type(size) is int and 0 <= size < INT64_LIMIT)


@FAST
@given(st.integers(min_value=-INT64_LIMIT, max_value=INT64_LIMIT - 1),
       st.integers(min_value=0, max_value=INT64_LIMIT - 1))
@example(0, 0)
@example(-1, 0)
@example(1, 0)
@example(1 << 20, 100 << 20)
@example(100 << 20, 100 << 20)
def test_check_size_refuses_non_positive_sizes_and_sizes_below_min_space(size, min_space):
    if size <= 0 or (min_space > 0 and size < min_space):
        with pytest.raises(OptionError, match="btrfs: (invalid storage size|storage size cannot be less than)"):
            check_size(size, min_space)
    else:
        assert check_size(size, min_space) is None


# ================================================================ 3. layer ids

ID_SPECIALS = ["", ".", "..", "/", "//", "a/b", "/a", "a/", "\0", "a\0b", "..a", "...", ". ", "a\n", "a\nb",
               "\udce9", "\ud800", "caf\udce9", "-", " ", "\\", "a" * 255, "a" * 256, "\u00e9" * 127,
               "\u00e9" * 128, "\U0001F600" * 63, "\U0001F600" * 64]
long_ids = st.builds(lambda ch, n, tail: ch * n + tail,
                     st.sampled_from(["a", "\u00e9", "\u20ac", "\U0001F600", "\udce9"]),
                     st.integers(50, 300), st.sampled_from(["", "a", "/", "\0"]))
layer_ids = st.one_of(st.sampled_from(ID_SPECIALS), any_text, st.binary(max_size=24).map(os.fsdecode), long_ids)


def id_is_valid(layer_id: str) -> bool:
    """One directory entry of 1..255 bytes: what check_layer_id must accept."""
    try:
        raw = os.fsencode(layer_id)
    except UnicodeEncodeError:
        return False  # a lone surrogate that no file name can hold
    return 1 <= len(raw) <= 255 and b"/" not in raw and b"\0" not in raw and raw not in (b".", b"..")


valid_ids = layer_ids.filter(id_is_valid).filter(lambda i: i not in ("base", "fresh", "child"))
#: Valid ids without a newline, for the end-to-end property: ids with one
#: are section 5's (test_regression_*_newline_*), from when they were a bug.
valid_ids_without_newline = valid_ids.filter(lambda i: "\n" not in i)
bad_ids = layer_ids.filter(lambda i: not id_is_valid(i))


@FAST
@given(layer_ids)
def test_check_layer_id_accepts_exactly_the_directory_entries(layer_id):
    if id_is_valid(layer_id):
        assert check_layer_id(layer_id) is layer_id
    else:
        with pytest.raises(ValueError):
            check_layer_id(layer_id)


@FAST
@given(st.one_of(st.binary(max_size=8), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
                 st.builds(Path, st.sampled_from(["a", "b"]))))
def test_check_layer_id_refuses_non_strings_with_type_error(layer_id):
    with pytest.raises(TypeError):
        check_layer_id(layer_id)


def _staging_state(home: Path) -> dict:
    root = home / ".btrfsx" / "staging"
    return {d.name: sorted(os.listdir(d)) for d in root.iterdir()} if root.exists() else {}


def _store_state(home: Path) -> dict:
    quotas = home / "quotas"
    return {"subvolumes": sorted(os.listdir(home / "subvolumes")),
            "staging": _staging_state(home),
            "quotas": sorted(os.listdir(quotas)) if quotas.exists() else None,
            "home": sorted(os.listdir(home))}


@pytest.fixture
def id_driver(btrfs_fs):
    d = Driver(btrfs_fs.mountpoint / "home")
    try:
        d.create("base")
        (Path(d.get("base")) / "file").write_bytes(b"base\n")
        yield d
    finally:
        d.cleanup()


def _tar(*entries) -> bytes:
    """A PAX tar of (name, bytes) regular files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


#: Every Driver entry point that takes a layer id, called with a bad one in the named place.
ID_ENTRY_POINTS = {
    "create": lambda d, bad: d.create(bad),
    "create-parent": lambda d, bad: d.create("fresh", bad),
    "create_read_write": lambda d, bad: d.create_read_write(bad, "base"),
    "create_from_template": lambda d, bad: d.create_from_template(bad, "base"),
    "create_from_template-template": lambda d, bad: d.create_from_template("fresh", bad),
    "remove": lambda d, bad: d.remove(bad),
    "get": lambda d, bad: d.get(bad),
    "exists": lambda d, bad: d.exists(bad),
    "changes": lambda d, bad: d.changes(bad),
    "changes-parent": lambda d, bad: d.changes("base", bad),
    "diff": lambda d, bad: d.diff(bad),
    "diff-parent": lambda d, bad: d.diff("base", bad),
    "diff_size": lambda d, bad: d.diff_size(bad),
    "diff_size-parent": lambda d, bad: d.diff_size("base", bad),
    "apply_diff": lambda d, bad: d.apply_diff(bad, None, io.BytesIO(_tar(("x", b"x\n")))),
    "parent": lambda d, bad: d.parent(bad),
}


@ON_BTRFS
@given(bad_ids, st.sampled_from(sorted(ID_ENTRY_POINTS)))
@example("..", "create")
@example("/", "create")
@example("", "create")
@example("a\0b", "create")
@example("a" * 256, "create")
@example("\ud800", "create")
@example("..", "create-parent")
@example("..", "remove")
@example("../subvolumes/base", "apply_diff")
def test_a_bad_layer_id_is_refused_with_no_side_effect(id_driver, bad, entry_point):
    d = id_driver
    home = Path(d.home)
    before = _store_state(home)
    base = Path(d.get("base"))
    base_before = sorted(os.listdir(base))
    if bad == "" and entry_point.endswith(("-parent", "-template")):
        reject()  # an empty parent is no parent, as in containers/storage
    with pytest.raises(ValueError) as excinfo:
        ID_ENTRY_POINTS[entry_point](d, bad)
    if not isinstance(excinfo.value, UnicodeEncodeError):  # a lone surrogate: no file name at all
        assert "invalid layer id" in str(excinfo.value)
    assert _store_state(home) == before
    assert sorted(os.listdir(base)) == base_before
    assert d.layers() == ["base"]


@ON_BTRFS
@given(bad_ids)
@example("..")
@example(".")
@example("../subvolumes/base")
@example("a\0b")
def test_layer_infos_refuses_a_bad_layer_id(id_driver, bad):
    """Fixed bug: Driver.layer_infos(ids) did not call
    check_layer_id: ".." and "." come back as layers (the filesystem's
    top-level subvolume, with its UUID), "../subvolumes/base" as a layer of
    that name, and a NUL gives a bare "embedded null byte"."""
    with pytest.raises(ValueError, match="invalid layer id"):
        id_driver.layer_infos([bad])


@ON_BTRFS
@given(st.one_of(st.binary(min_size=1, max_size=8), st.integers(), st.none()),
       st.sampled_from(["create", "create-parent", "remove", "get", "exists", "apply_diff"]))
def test_a_layer_id_that_is_not_a_str_is_refused_with_type_error(id_driver, bad, entry_point):
    d = id_driver
    before = _store_state(Path(d.home))
    if not bad and entry_point == "create-parent":
        reject()  # None (or another false value) as the parent: no parent
    with pytest.raises(TypeError):
        ID_ENTRY_POINTS[entry_point](d, bad)
    assert _store_state(Path(d.home)) == before


@settings(ON_BTRFS, max_examples=60)
@given(valid_ids_without_newline)
@example(os.fsdecode(b"caf\xe9"))
@example("a" * 255)
@example("-")
@example(".hidden")
def test_a_valid_layer_id_works_end_to_end(id_driver, layer_id):
    """create, get, exists, layers, parent, apply_diff, changes, diff, a
    child, an apply_diff that fails and is undone, remove: for any valid id,
    including non-UTF-8 bytes (surrogate-escaped)."""
    d = id_driver
    home = Path(d.home)
    before = _store_state(home)
    assert not d.exists(layer_id)
    d.create(layer_id, "base")
    try:
        assert d.exists(layer_id)
        path = d.get(layer_id)
        assert path == os.path.join(d.home, "subvolumes", layer_id)
        assert os.fsencode(os.path.basename(path)) == os.fsencode(layer_id)
        assert layer_id in d.layers()
        assert d.parent(layer_id) == "base"
        assert d.apply_diff(layer_id, "base", io.BytesIO(_tar(("added", b"added\n")))) == 6
        assert [c.path for c in d.changes(layer_id, "base")] == ["/added"]
        with d.diff(layer_id, "base") as stream:
            assert [m.name for m in tarfile.open(fileobj=io.BytesIO(stream.read()))] == ["added"]
        d.create("child", layer_id)
        assert d.parent("child") == layer_id
        assert sorted(os.listdir(d.get("child"))) == ["added", "file"]
        d.remove("child")
        layer_before = sorted(os.listdir(path))
        with pytest.raises(ArchiveError):
            d.apply_diff(layer_id, "base", io.BytesIO(_tar(("partial", b"p\n"), ("../escape", b"e\n"))))
        assert sorted(os.listdir(path)) == layer_before  # all or nothing
        assert _staging_state(home) == {k: [] for k in _staging_state(home)}
    finally:
        d.remove(layer_id)
    assert not d.exists(layer_id)
    assert d.layers() == ["base"]
    assert _store_state(home)["subvolumes"] == before["subvolumes"]


bad_storage_opts = st.one_of(
    st.dictionaries(storage_keys, option_values, min_size=1, max_size=3),
    st.sampled_from([{"size": "-1"}, {"size": ""}, {"size": "abc"}, {"size": "1.5.5g"},
                     {"size": "18446744073709551616"}, {"size": "0"}, {"inodes": "1"}, {"size": "1G", "x": "1"}]))


@settings(ON_BTRFS, max_examples=40)
@given(bad_storage_opts, st.sampled_from(["create", "create_read_write", "snapshot"]))
def test_bad_storage_options_are_refused_with_no_side_effect(id_driver, opts, how):
    d = id_driver
    try:
        size = parse_storage_opt(opts)
        check_size(size, 0)
    except OptionError:
        pass
    else:
        reject()  # a good size: not this test's business
    home = Path(d.home)
    before = _store_state(home)
    call = {"create": lambda: d.create("sized", None, CreateOpts(storage_opt=opts)),
            "create_read_write": lambda: d.create_read_write("sized", None, CreateOpts(storage_opt=opts)),
            "snapshot": lambda: d.create("sized", "base", CreateOpts(storage_opt=opts))}[how]
    with pytest.raises(OptionError):
        call()
    assert _store_state(home) == before
    assert not d.exists("sized")
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert quota.mode(fd) is quota.QuotaMode.OFF  # a refused size turns nothing on
    finally:
        os.close(fd)


@settings(ON_BTRFS, max_examples=30)
@given(st.lists(driver_option(), min_size=1, max_size=4))
@example(["btrfs.min_space=-1"])
@example(["btrfs.size=1.5.5g"])
@example(["btrfs.mountopt=nodev"])
def test_a_driver_with_bad_options_is_refused_with_no_side_effect(btrfs_fs, options):
    if _model_driver_options(options) is not None:
        reject()
    try:
        parse_driver_options(options)
    except OptionError:
        pass
    else:
        reject()  # accepted: section 2 reports any disagreement with the model
    mnt = btrfs_fs.mountpoint
    listing = sorted(os.listdir(mnt))
    with pytest.raises(OptionError):
        Driver(mnt / "home-never-made", options)
    assert sorted(os.listdir(mnt)) == listing
    assert not os.path.ismount(mnt / "home-never-made")


# ================================================================ 4. apply_diff on generated archives

# --- a fingerprint of a tree

def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fingerprint(root) -> dict:
    """relative path -> (type, mode, uid, gid, size, content hash, symlink
    target, xattrs, mtime, link count), walking without following symlinks."""
    root = os.fspath(root)
    out = {}

    def visit(rel: str) -> None:
        full = os.path.join(root, rel) if rel else root
        st_ = os.lstat(full)
        is_dir, is_reg, is_lnk = (stat.S_ISDIR(st_.st_mode), stat.S_ISREG(st_.st_mode),
                                  stat.S_ISLNK(st_.st_mode))
        try:
            xattrs = tuple(sorted((k, os.getxattr(full, k, follow_symlinks=False))
                                  for k in os.listxattr(full, follow_symlinks=False)))
        except OSError:
            xattrs = ()
        out[rel] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid,
                    None if is_dir else st_.st_size, _sha(full) if is_reg else None,
                    os.readlink(full) if is_lnk else None, xattrs, st_.st_mtime_ns,
                    None if is_dir else st_.st_nlink)
        if is_dir:
            for name in sorted(os.listdir(full)):
                visit(os.path.join(rel, name) if rel else name)

    visit("")
    return out


def differences(before: dict, after: dict) -> list[str]:
    out = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            out.append(f"gone: {key!r}")
        elif key not in before:
            out.append(f"new: {key!r}")
        elif before[key] != after[key]:
            out.append(f"changed: {key!r}: {before[key]} -> {after[key]}")
    return out


# --- the filesystem, the store and its base layer: one for the module

CANARY_TOKEN = "@CANARY@"   # replaced by the canary's absolute path when a stream is built


class ApplyEnv(SimpleNamespace):
    def __repr__(self) -> str:  # short, in Hypothesis's reports
        return f"ApplyEnv({self.mnt})"


@pytest.fixture(scope="module")
def apply_env(request, btrfs_available):
    mountpoint = Path(os.path.realpath(tempfile.mkdtemp(prefix="btrfsx-fuzz-")))
    fs = driver = None
    try:
        fs = Loopback.create(request.config.getoption("--btrfs-image-dir"), mountpoint)
        fs._owns_mountpoint = True
        canary = mountpoint / "canary"
        canary.mkdir()
        (canary / "file").write_bytes(b"canary: must not change\n")
        (canary / "dir").mkdir()
        (canary / "dir" / "f").write_bytes(b"nested canary\n")
        os.symlink("file", canary / "link")
        home = mountpoint / "home"
        driver = Driver(home)
        driver.create("base")
        base = Path(driver.get("base"))
        for rel in ("a", "a/b", "d", "d/sub"):
            (base / rel).mkdir()
        for rel, data in (("f", b"f\n"), ("g", b"g\n" * 300), ("a/f", b"a/f\n"), ("a/b/g", b"a/b/g\n"),
                          ("d/f", b"d/f\n"), ("d/sub/f", b"d/sub/f\n")):
            (base / rel).write_bytes(data)
        os.chmod(base / "g", 0o4755)
        os.setxattr(base / "f", "user.x", b"1")
        os.link(base / "f", base / "hl")
        os.symlink(str(canary), base / "out")                                  # points out, absolute
        os.symlink(os.path.relpath(canary, base), base / "rel")                # points out, relative
        os.symlink(str(canary / "file"), base / "outfile")
        os.symlink("d", base / "lnk")                                          # points in
        os.mkfifo(base / "p")
        # names at the host's root that a stream escaping through "/" could make
        host_absent = [p for p in (f"/{c}" for c in COMPONENTS if c not in ("", ".", "..")) if not os.path.lexists(p)]
        env = ApplyEnv(fs=fs, mnt=mountpoint, canary=canary, home=home, d=driver, base=base,
                              base_print=fingerprint(base), counter=itertools.count(), host_absent=host_absent,
                              examples=0, failures=0)
        yield env
    finally:
        try:
            if driver is not None:
                driver.close()
        finally:
            if fs is not None:
                fs.close()
            elif mountpoint.exists():
                os.rmdir(mountpoint)


def _host_state(env) -> tuple:
    with open("/etc/passwd", "rb") as f:
        passwd = hashlib.sha256(f.read()).hexdigest()
    st_ = os.stat("/etc/passwd")
    return (passwd, st_.st_nlink, st_.st_mtime_ns, [p for p in env.host_absent if os.path.lexists(p)])


def _outside_state(env) -> dict:
    """Everything an apply_diff to a layer t<N> must leave alone."""
    return {"canary": fingerprint(env.canary),
            "base": fingerprint(env.base),
            "mountpoint": sorted(os.listdir(env.mnt)),
            "home": sorted(os.listdir(env.home)),
            "subvolumes": sorted(os.listdir(env.home / "subvolumes")),
            "staging": _staging_state(env.home),
            "host": _host_state(env)}


# --- generated streams

#: Path components: the base layer's names (files, dirs, symlinks pointing
#: out and in, a hard link, a FIFO), new names, "..", ".", empty, whiteout
#: spellings, a non-UTF-8 name and one too long for btrfs.
COMPONENTS = ["a", "b", "d", "f", "g", "hl", "new", "out", "rel", "outfile", "lnk", "p", "sub",
              "..", ".", "", ".wh.a", ".wh..wh..opq", ".wh..", "caf\udce9", "x" * 256]
#: Benign components more often than the rest, directories most often
#: in the middle of a path, so that many streams apply.
WEIGHTED_COMPONENTS = ["a", "b", "d", "f", "g", "new", "sub", "n3"] * 10 + COMPONENTS
DIRECTORY_COMPONENTS = ["a", "b", "d", "sub", "new", "n2"] * 15 + COMPONENTS
BASE_FILES = ["f", "g", "hl", "a/f", "a/b/g", "d/f", "d/sub/f", "p", "out", "lnk"]

SYMLINK_TARGETS = [CANARY_TOKEN, CANARY_TOKEN + "/file", "/", "/etc/passwd", "..", "../..", "../../../canary",
                   "d", "a/b", ".", "", "/etc", "out", "lnk/f"]
#: PAX records that override a header field or add an xattr: malformed
#: numbers, NUL bytes, escaping names, xattrs the kernel refuses.
PAX_OVERRIDES = {
    "mtime": ["abc", "1.5", "-1", "", "1600000000.123456789", "-4611686018427387904"],
    "uid": ["-1", "abc", "1000", "4294967295"],
    "gid": ["-1", "abc", "1000"],
    "size": ["0", "1", "999999"],
    "path": ["a\0b", "../x", "/new", "new"],
    "linkpath": ["f", "../f", "x\0y", CANARY_TOKEN],
    "SCHILY.xattr.user.a": ["v", ""],
    "SCHILY.xattr.trusted.t": ["v"],
    "SCHILY.xattr.security.capability": ["garbage"],
    "SCHILY.xattr.system.posix_acl_access": ["garbage"],
    "SCHILY.xattr.bogus": ["v"],
    "SCHILY.xattr.": ["v"],
    "SCHILY.xattr.user." + "k" * 300: ["v"],
}
#: What the main stream generator leaves to test_apply_diff_with_out_of_range_metadata
#: (once btrfsx bugs, section 5): numbers outside uid_t and time_t, NaN and
#: Infinity, an xattr name with a NUL; each must be an ArchiveError.
OUT_OF_RANGE_IDS = [-5, 2 ** 32, 2 ** 40]
OUT_OF_RANGE_MTIMES = [10 ** 30, -(10 ** 30)]
OUT_OF_RANGE_PAX = {
    "mtime": ["nan", "inf", "-inf", "1e999", "1e20"],
    "uid": ["4294967296", "99999999999999999999"],
    "gid": ["4294967296"],
    "SCHILY.xattr.user.\0x": ["v"],
}

paths = st.builds(lambda lead, middle, last, trail: ("/" if lead else "") + "/".join(middle + [last])
                  + ("/" if trail else ""),
                  st.integers(0, 5).map(lambda n: n == 0),
                  st.lists(st.sampled_from(DIRECTORY_COMPONENTS), max_size=3),
                  st.sampled_from(WEIGHTED_COMPONENTS),
                  st.integers(0, 5).map(lambda n: n == 0))
modes = st.one_of(st.sampled_from([0o644, 0o755, 0o600, 0o000, 0o4755, 0o1777, 0o7777]), st.integers(0, 0o7777))


def owner_ids(hostile: bool):
    return st.one_of(st.just(0), st.integers(0, 70000),
                     st.sampled_from([-1, 2 ** 32 - 1] + (OUT_OF_RANGE_IDS if hostile else [])))


def mtimes(hostile: bool):
    return st.one_of(st.just(1_600_000_000), st.integers(-(2 ** 33), 2 ** 33), st.floats(0, 2e9),
                     st.sampled_from([-(2 ** 62)] + (OUT_OF_RANGE_MTIMES if hostile else [])))


def pax_extra(hostile: bool):
    table = {k: v + OUT_OF_RANGE_PAX.get(k, []) if hostile else v for k, v in PAX_OVERRIDES.items()}
    if hostile:
        table.update({k: v for k, v in OUT_OF_RANGE_PAX.items() if k not in table})
    return st.dictionaries(st.sampled_from(sorted(table)), st.just(None), max_size=2).flatmap(
        lambda keys: st.fixed_dictionaries({k: st.sampled_from(table[k]) for k in keys}))


contents = st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"x" * 1500, b"\0" * 512]))


@st.composite
def entry_specs(draw, earlier: list[str], hostile: bool = False):
    kind = draw(st.sampled_from(["reg", "reg", "reg", "dir", "dir", "sym", "hard", "whiteout", "opaque", "fifo",
                                 "chr"]))
    name = draw(paths)
    extra = {}
    if kind == "reg":
        extra["data"] = draw(contents)
    elif kind == "sym":
        extra["target"] = draw(st.one_of(st.sampled_from(SYMLINK_TARGETS), paths))
    elif kind == "hard":
        known = st.sampled_from(earlier + BASE_FILES)
        extra["target"] = draw(st.one_of(known, known, known, paths, st.just(CANARY_TOKEN + "/file")))
    elif kind == "whiteout":
        parent = draw(st.one_of(st.just(""), paths)).rstrip("/")
        name = (parent + "/" if parent else "") + ".wh." + draw(st.sampled_from(WEIGHTED_COMPONENTS))
        kind = "reg"
        extra["data"] = b""
    elif kind == "opaque":
        parent = draw(st.one_of(st.just(""), paths)).rstrip("/")
        name = (parent + "/" if parent else "") + ".wh..wh..opq"
        kind = "reg"
        extra["data"] = b""
    # metadata: mostly plain, sometimes hostile
    plain = draw(st.integers(0, 7)) > 0 and not (hostile and draw(st.booleans()))
    meta = {"mode": draw(modes),
            "uid": 0 if plain else draw(owner_ids(hostile)),
            "gid": 0 if plain else draw(owner_ids(hostile)),
            "mtime": 1_600_000_000 if plain else draw(mtimes(hostile)),
            "pax": {} if plain else draw(pax_extra(hostile))}
    return (kind, name, extra, meta)


@st.composite
def streams(draw, hostile: bool = False):
    """A generated stream's spec: its entries, a mutation (a cut or bytes
    appended), a compression, and whether the mutation hits the compressed
    bytes.  ``hostile`` adds the metadata of OUT_OF_RANGE_*."""
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        entries.append(draw(entry_specs([e[1] for e in entries], hostile)))
    mutated = draw(st.integers(0, 3)) == 0
    mutation = None if not mutated else draw(st.one_of(
        st.tuples(st.just("cut"), st.integers(1, 1 << 16)),
        st.tuples(st.just("append"), st.one_of(st.binary(min_size=1, max_size=600),
                                               st.sampled_from([b"\0" * 512, b"\0" * 1024, b"garbage" * 100])))))
    compression = draw(st.sampled_from(["none", "none", "gzip", "zstd"]))
    mutate_compressed = draw(st.booleans())
    return entries, mutation, compression, mutate_compressed


def _subst(text: str, canary: str) -> str:
    return text.replace(CANARY_TOKEN, canary)


def render(spec, canary: str) -> bytes:
    """The bytes of a generated stream (Python's tarfile, PAX format)."""
    entries, mutation, compression, mutate_compressed = spec
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as t:
            for kind, name, extra, meta in entries:
                info = tarfile.TarInfo(name)
                info.type = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                             "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
                if kind == "chr":
                    info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
                info.mode, info.uid, info.gid, info.mtime = meta["mode"], meta["uid"], meta["gid"], meta["mtime"]
                if "target" in extra:
                    info.linkname = _subst(extra["target"], canary)
                info.pax_headers = {k: _subst(v, canary) for k, v in meta["pax"].items()}
                data = extra.get("data")
                info.size = len(data) if data is not None else 0
                t.addfile(info, io.BytesIO(data) if data is not None else None)
    except (ValueError, tarfile.TarError, UnicodeError):
        reject()  # tarfile cannot write it: not a stream
    data = buf.getvalue()

    def mutate(b: bytes) -> bytes:
        if mutation is None:
            return b
        how, arg = mutation
        return b[:arg % (len(b) + 1)] if how == "cut" else b + arg

    if compression == "none" or not mutate_compressed:
        data = mutate(data)
    if compression == "gzip":
        data = gzip.compress(data, mtime=0)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    if compression != "none" and mutate_compressed:
        data = mutate(data)
    return data


def _clean_parts(name: str) -> list[str] | None:
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return parts


def what_the_stream_holds(data: bytes) -> tuple[int, set, set]:
    """Read a stream apply_diff took, as it reads it: the total size of its
    regular files, their contents' hashes and its symlink targets."""
    from btrfsx.archive.apply import decompressed
    size, hashes, targets = 0, set(), set()
    with tarfile.open(fileobj=decompressed(io.BytesIO(data)), mode="r|", encoding="utf-8",
                      errors="surrogateescape") as t:
        for info in t:
            parts = _clean_parts(info.name) or [""]
            if info.isreg() and not parts[-1].startswith(".wh."):
                size += info.size
                hashes.add(hashlib.sha256(t.extractfile(info).read()).hexdigest())
            elif info.issym():
                targets.add(info.linkname)
    return size, hashes, targets


def check_one_stream(env, spec) -> None:
    d = env.d
    data = render(spec, str(env.canary))
    layer_id = f"t{next(env.counter)}"
    d.create(layer_id, "base")
    env.examples += 1
    try:
        layer = Path(d.get(layer_id))
        before = fingerprint(layer)
        outside = _outside_state(env)
        error = None
        try:
            size = d.apply_diff(layer_id, "base", io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 -- the type is what is checked
            error = e
        if error is not None:
            env.failures += 1
            # all or nothing: the layer exactly as it was
            assert differences(before, fingerprint(layer)) == [], f"a failed apply ({error!r}) changed the layer"
            assert isinstance(error, (ArchiveError, OSError)), \
                f"apply_diff raised {type(error).__name__}: {error}"
        else:
            after = fingerprint(layer)
            # no file of the layer is reached through a symlink component
            for rel, entry in after.items():
                full = os.path.join(layer, rel) if rel else str(layer)
                parent = os.path.dirname(full)
                if rel:
                    assert os.path.realpath(parent) == parent, f"{rel!r} is reached through a symlink"
                if not stat.S_ISLNK(entry[0]):
                    assert os.path.realpath(full) == full, f"{rel!r} is reached through a symlink"
                    assert full == str(layer) or full.startswith(str(layer) + "/")
            # what the layer holds came from the base or from the stream
            want_size, hashes, targets = what_the_stream_holds(data)
            assert size == want_size
            base_hashes = {e[5] for e in env.base_print.values() if e[5]}
            base_targets = {e[6] for e in env.base_print.values() if e[6] is not None}
            for rel, entry in after.items():
                if entry[5] is not None:
                    assert entry[5] in base_hashes | hashes, f"{rel!r} holds content from nowhere"
                if entry[6] is not None:
                    assert entry[6] in base_targets | targets, f"{rel!r} is a symlink from nowhere"
        # in every case: nothing outside the layer changed
        after_outside = _outside_state(env)
        for key in ("canary", "base"):
            assert differences(outside[key], after_outside[key]) == [], key
        assert after_outside == outside
        assert all(not entries for entries in after_outside["staging"].values()), after_outside["staging"]
    finally:
        try:
            d.remove(layer_id)
        except Exception:  # noqa: BLE001 -- do not hide the failure above
            pass


@settings(ON_BTRFS, max_examples=60, suppress_health_check=list(HealthCheck))
@given(streams())
def test_apply_diff_on_generated_streams(apply_env, spec):
    check_one_stream(apply_env, spec)


@pytest.mark.slow
@settings(ON_BTRFS, max_examples=2000, suppress_health_check=list(HealthCheck))
@given(streams())
def test_apply_diff_on_generated_streams_long(apply_env, spec):
    check_one_stream(apply_env, spec)


def _one_file(**meta) -> tuple:
    """The spec of a stream of one regular file "a" with this metadata."""
    return ([("reg", "a", {"data": b"a\n"},
              {"mode": 0o644, "uid": 0, "gid": 0, "mtime": 1_600_000_000, "pax": {}, **meta})], None, "none", False)


@settings(ON_BTRFS, max_examples=60, suppress_health_check=list(HealthCheck))
@given(streams(hostile=True))
@example(_one_file(mtime=10 ** 30))       # found: OverflowError (timestamp out of range for platform time_t)
@example(_one_file(gid=2 ** 32))          # found: OverflowError (gid is greater than maximum)
@example(_one_file(pax={"SCHILY.xattr.user.\0x": "v"}))  # found: ValueError (embedded null byte)
@example(_one_file(pax={"mtime": "nan"}))  # found: ValueError (cannot convert NaN to integer)
def test_apply_diff_with_out_of_range_metadata(apply_env, spec):
    """The same property on streams that also carry uids, gids and mtimes
    outside uid_t/time_t, NaN/Infinity mtimes and xattr names with NUL: the
    examples are the inputs that found the bugs of section 5."""
    check_one_stream(apply_env, spec)


# ================================================================ 5. regressions: btrfsx bugs found here, fixed

def _plain_tar(*entries) -> bytes:
    """A PAX tar of TarInfo objects (regular files get their size of bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _reg(name, data=b"x\n", **attrs):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_600_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


HOSTILE_PAX_VALUES = {
    "uid 2**40": {"uid": 2 ** 40},
    "gid 2**32": {"gid": 2 ** 32},
    "uid -5": {"uid": -5},
    "mtime 10**30": {"mtime": 10 ** 30},
    "PAX mtime nan": {"pax_headers": {"mtime": "nan"}},
    "PAX mtime inf": {"pax_headers": {"mtime": "inf"}},
    "PAX mtime 1e999": {"pax_headers": {"mtime": "1e999"}},
    "PAX mtime 1e20": {"pax_headers": {"mtime": "1e20"}},
    "xattr name with NUL": {"pax_headers": {"SCHILY.xattr.user.\0x": "v"}},
}


@pytest.mark.parametrize("case", list(HOSTILE_PAX_VALUES))
def test_regression_hostile_pax_values_are_archive_errors(apply_env, case):
    """Fixed bug: a uid/gid outside uid_t, an mtime outside time_t (or NaN,
    Infinity) escapes apply_diff as OverflowError/ValueError, and an xattr
    name with a NUL byte as ValueError("embedded null byte"), instead of
    ArchiveError (btrfsx/archive/apply.py, _Applier.metadata_fd/metadata:
    os.fchown, os.utime, int(Decimal), os.setxattr).  The layer is rolled
    back; only the type is wrong."""
    info, data = _reg("new", **HOSTILE_PAX_VALUES[case])
    spec_data = _plain_tar(_reg("first", b"first\n"), (info, data))
    env = apply_env
    layer_id = f"r{next(env.counter)}"
    env.d.create(layer_id, "base")
    try:
        layer = Path(env.d.get(layer_id))
        before = fingerprint(layer)
        with pytest.raises((ArchiveError, OSError)):
            env.d.apply_diff(layer_id, "base", io.BytesIO(spec_data))
        assert differences(before, fingerprint(layer)) == []
    finally:
        env.d.remove(layer_id)


def test_regression_a_failed_apply_diff_on_an_id_with_a_newline_is_undone(id_driver):
    """Fixed bug: begin_apply records "ID\\nBACKUP-UUID\\n" and abort_apply splits
    on the first newline, so for a valid id holding one ("c\\nd") it swaps
    the backup with the layer named by the id's first line ("c") -- another
    layer, whose files are then deleted with the backup -- and leaves the
    failed layer part-applied while the error says "left as it was"."""
    d = id_driver
    d.create("c", "base")
    (Path(d.get("c")) / "only-in-c").write_bytes(b"c's own\n")
    d.create("c\nd", "base")
    c_before = fingerprint(d.get("c"))
    cd_before = fingerprint(d.get("c\nd"))
    with pytest.raises(ArchiveError):
        d.apply_diff("c\nd", "base", io.BytesIO(_tar(("new", b"new\n"), ("../escape", b"e\n"))))
    assert {"layer 'c\\nd' (the failed apply)": differences(cd_before, fingerprint(d.get("c\nd"))),
            "layer 'c' (another layer)": differences(c_before, fingerprint(d.get("c")))} == \
        {"layer 'c\\nd' (the failed apply)": [], "layer 'c' (another layer)": []}


@pytest.mark.parametrize("layer_id", ["a\n", "x\ny"])
def test_regression_a_successful_apply_diff_on_an_id_with_a_newline_commits_cleanly(id_driver, layer_id):
    """Fixed bug, same cause as above, on success: commit_apply takes the second
    line of "ID\nBACKUP-UUID\n" for the backup's UUID.  For "a\n" that is
    "", and forget_lineage("") unlinks the lineage directory itself:
    IsADirectoryError after the commit point (the diff is applied, the
    caller told it failed, the staging directory retired).  For "x\ny" it
    forgets "y" and the backup's lineage record is left behind."""
    d = id_driver
    d.create(layer_id, "base")
    assert d.apply_diff(layer_id, "base", io.BytesIO(_tar(("new", b"new\n")))) == 4
    lineage = Path(d.home) / ".btrfsx" / "lineage"
    assert not lineage.exists() or os.listdir(lineage) == []


@pytest.mark.parametrize("layer_id", ["\u00e9" * 127, "\U0001F600" * 63, "\u20ac" * 85],
                         ids=["e-acute x127", "emoji x63", "euro x85"])
def test_regression_a_size_limit_works_for_a_long_multibyte_id(id_driver, layer_id):
    """Fixed bug: Store.write_quota names its temporary file ".{id[:200]}.PID.TID.tmp",
    cutting the id by characters, not bytes: a valid id of more than about
    225 bytes in multibyte characters gives a name over 255 bytes, and
    create(..., storage_opt={"size": ...}) fails with ENAMETOOLONG."""
    assert id_is_valid(layer_id)
    d = id_driver
    d.create(layer_id, opts=CreateOpts(storage_opt={"size": "1G"}))
    try:
        assert d.exists(layer_id)
    finally:
        d.remove(layer_id)


@pytest.mark.parametrize("option", ["btrfs.size=1G\x1f", "btrfs.size\x1c=1G", "\x1dbtrfs.min_space=1G",
                                    "btrfsx.quota=simple\x1e"], ids=["US", "FS", "GS", "RS"])
def test_regression_options_are_trimmed_as_go_trims_them(option):
    """Fixed bug: parse_key_value strips with str.strip(), which also removes
    U+001C..U+001F; Go's strings.TrimSpace (parsers.ParseKeyValueOpt, which
    it claims to mirror) does not, so containers/storage refuses these
    options and btrfsx accepts them."""
    with pytest.raises(OptionError):
        parse_driver_options([option])
