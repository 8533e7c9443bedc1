"""Byte sizes as containers/storage reads and prints them.

A re-implementation of docker/go-units v0.5.0 (``size.go``): ``RAMInBytes``,
``HumanSize`` and ``BytesSize``.  Standard library only.
"""

from __future__ import annotations

import math

__all__ = ["ram_in_bytes", "human_size", "bytes_size"]

# go-units binaryMap: every unit letter is a power of 1024, even in "MB".
_BINARY_MULTIPLIERS = {
    ord("k"): 1 << 10,
    ord("m"): 1 << 20,
    ord("g"): 1 << 30,
    ord("t"): 1 << 40,
    ord("p"): 1 << 50,
}
# strings.LastIndexAny(sizeStr, "01234567890. ") in parseSize.
_SEPARATORS = frozenset("0123456789. ")
_DIGITS = frozenset("0123456789")
_HEX_LETTERS = frozenset("abcdefABCDEF")
_INT64_LIMIT = 1 << 63

_DECIMAL_ABBRS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_BINARY_ABBRS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def ram_in_bytes(text: str) -> int:
    """Parse a size such as ``"32k"``, ``"0.3MB"`` or ``"2 GiB"`` into bytes.

    Raises ``ValueError`` for anything go-units refuses, and also for the
    inputs where go-units returns a meaningless number (infinities, NaN,
    values beyond int64).
    """
    sep = -1
    for index in range(len(text) - 1, -1, -1):
        if text[index] in _SEPARATORS:
            sep = index
            break
    if sep == -1:
        raise ValueError(f"invalid size: '{text}'")
    # A space is the separator itself and belongs to neither part, so "32 "
    # is 32 while " 32" and "32  b" fail in the float parse.
    number = text[:sep] if text[sep] == " " else text[: sep + 1]
    suffix = text[sep + 1 :]

    try:
        size = _go_parse_float(number)
    except ValueError as err:
        raise ValueError(f"invalid size: '{text}': {err}") from None
    # go-units only checks size < 0 (so "-0" is 0) and hands +Inf and NaN
    # (from "inf b", "nan k", "Infinity ") to int64(), whose result Go leaves
    # to the platform: refuse them instead.
    if math.isnan(size) or math.isinf(size):
        raise ValueError(f"invalid size: '{text}': not a finite number")
    if size < 0:
        raise ValueError(f"invalid size: '{text}'")
    if not suffix:
        return _to_int64(size, text)

    # Go's len() counts UTF-8 bytes, and the length test comes before
    # strings.ToLower, which may change the byte length.
    if len(suffix.encode("utf-8", "surrogatepass")) > 3:
        raise _bad_suffix(text, suffix)
    lowered = _go_to_lower(suffix)
    raw = lowered.encode("utf-8", "surrogatepass")
    if raw[0] == ord("b"):
        if len(raw) > 1:
            raise _bad_suffix(text, lowered)
        return _to_int64(size, text)
    multiplier = _BINARY_MULTIPLIERS.get(raw[0])
    if multiplier is None:
        raise _bad_suffix(text, lowered)
    size *= float(multiplier)
    # go-units checks only the lengths 2 and 3 after lowering, so a lowered
    # suffix of 4 bytes passes: "32kȺ" is 32768, as "32\u212a" (Kelvin sign,
    # lowered to "k") is.  Mirrored on purpose.
    if len(raw) == 2 and raw[1] != ord("b"):
        raise _bad_suffix(text, lowered)
    if len(raw) == 3 and raw[1:] != b"ib":
        raise _bad_suffix(text, lowered)
    return _to_int64(size, text)


def human_size(size: float) -> str:
    """go-units ``HumanSize``: decimal units, 4 significant digits (``104.9MB``)."""
    return _custom_size(float(size), 1000.0, _DECIMAL_ABBRS)


def bytes_size(size: float) -> str:
    """go-units ``BytesSize``: binary units, 4 significant digits (``100MiB``)."""
    return _custom_size(float(size), 1024.0, _BINARY_ABBRS)


def _custom_size(size: float, base: float, abbrs: tuple[str, ...]) -> str:
    # getSizeAndUnit: divide while size >= base, stopping at the last unit
    # (so huge sizes print as e.g. "1e+04YB").  NaN and negatives never divide.
    index = 0
    while size >= base and index < len(abbrs) - 1:
        size /= base
        index += 1
    return _go_format_g4(size) + abbrs[index]


def _go_format_g4(value: float) -> str:
    # fmt's "%.4g" and Python's agree on finite values (same %e/%f switch,
    # trailing zeros dropped, two-digit minimum exponent, "-0"); fmt spells
    # the non-finite ones "+Inf", "-Inf" and "NaN".
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "%.4g" % value


def _to_int64(size: float, text: str) -> int:
    # Go's int64(float64) truncates toward zero; out of range the result is
    # platform-defined (amd64 gives -9223372036854775808, so "8192P" comes
    # back negative).  Refuse instead of returning that.
    if size >= _INT64_LIMIT:
        raise ValueError(f"invalid size: '{text}': out of int64 range")
    return int(size)


def _bad_suffix(text: str, suffix: str) -> ValueError:
    return ValueError(f"invalid size: '{text}': invalid suffix: '{suffix}'")


def _go_to_lower(text: str) -> str:
    # strings.ToLower maps rune by rune with unicode.ToLower (simple case
    # mapping); str.lower() differs only for U+0130, which it turns into two
    # characters where Go gives "i".
    return "".join("i" if ch == "\u0130" else ch.lower() for ch in text)


def _go_parse_float(text: str) -> float:
    """strconv.ParseFloat(text, 64), raising ValueError where Go errs."""
    special = _go_special(text)
    if special is not None:
        return special
    end, is_hex = _go_read_float(text)
    if end != len(text):
        raise ValueError(f'strconv.ParseFloat: parsing "{text}": invalid syntax')
    digits = text.replace("_", "")
    if is_hex:
        try:
            return float.fromhex(digits)
        except OverflowError:
            raise ValueError(
                f'strconv.ParseFloat: parsing "{text}": value out of range'
            ) from None
    value = float(digits)
    if math.isinf(value):
        raise ValueError(f'strconv.ParseFloat: parsing "{text}": value out of range')
    return value


def _go_special(text: str) -> float | None:
    # strconv's special(): "inf"/"infinity" with an optional sign, "nan" without
    # one, any case.  A special prefix followed by more text is a syntax error.
    lowered = text.lower()
    body = lowered[1:] if lowered[:1] in ("+", "-") else lowered
    if body in ("inf", "infinity"):
        return -math.inf if lowered[0] == "-" else math.inf
    if lowered == "nan":
        return math.nan
    if body.startswith("inf") or lowered.startswith("nan"):
        raise ValueError(f'strconv.ParseFloat: parsing "{text}": invalid syntax')
    return None


def _go_read_float(s: str) -> tuple[int, bool]:
    """strconv.readFloat: return (characters consumed, is hex), or raise.

    Decimal or hex ("0x1.8p3", exponent required) mantissa with an optional
    sign, and underscores only where Go literals allow them ("1_000").
    """
    syntax = ValueError(f'strconv.ParseFloat: parsing "{s}": invalid syntax')
    n = len(s)
    i = 0
    if n == 0:
        raise syntax
    if s[0] in "+-":
        i += 1
    is_hex = False
    if i + 2 < n and s[i] == "0" and s[i + 1] in "xX":
        is_hex = True
        i += 2
    underscores = saw_dot = saw_digits = False
    while i < n:
        c = s[i]
        if c == "_":
            underscores = True
        elif c == ".":
            if saw_dot:
                break
            saw_dot = True
        elif c in _DIGITS or (is_hex and c in _HEX_LETTERS):
            saw_digits = True
        else:
            break
        i += 1
    if not saw_digits:
        raise syntax
    if i < n and s[i] in ("pP" if is_hex else "eE"):
        i += 1
        if i >= n:
            raise syntax
        if s[i] in "+-":
            i += 1
        if i >= n or s[i] not in _DIGITS:
            raise syntax
        while i < n and (s[i] in _DIGITS or s[i] == "_"):
            if s[i] == "_":
                underscores = True
            i += 1
    elif is_hex:
        raise syntax
    if underscores and not _go_underscore_ok(s[:i]):
        raise syntax
    return i, is_hex


def _go_underscore_ok(s: str) -> bool:
    # strconv.underscoreOK: "_" only between digits, or after a base prefix.
    saw = "^"
    i = 0
    if s[:1] in ("+", "-"):
        s = s[1:]
    is_hex = False
    if len(s) >= 2 and s[0] == "0" and s[1] in "bBoOxX":
        i = 2
        saw = "0"
        is_hex = s[1] in "xX"
    while i < len(s):
        c = s[i]
        if c in _DIGITS or (is_hex and c in _HEX_LETTERS):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
        i += 1
    return saw != "_"
