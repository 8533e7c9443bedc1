"""Driver options and per-layer storage options, parsed as containers/storage does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from btrfsx.errors import OptionError
from btrfsx.units import human_size, ram_in_bytes

QUOTA_MODES = ("simple", "qgroup")
CHANGES_MODES = ("auto", "native", "naive")


# Go's strings.TrimSpace trims Unicode White_Space; Python's str.strip also
# takes U+001C..U+001F, which Go keeps.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # noqa: E501 (one character set)


def parse_key_value(option: str) -> tuple[str, str]:
    """``key=value`` split at the first ``=``, both sides trimmed as Go's
    strings.TrimSpace does (parsers.ParseKeyValueOpt)."""
    key, sep, value = option.partition("=")
    if not sep:
        raise OptionError(f"unable to parse key/value option: {option}")
    return key.strip(_GO_SPACE), value.strip(_GO_SPACE)


def _size(key: str, value: str) -> int:
    try:
        return ram_in_bytes(value)
    except ValueError as e:
        raise OptionError(f"{key}: {e}") from None


@dataclass(frozen=True)
class DriverOptions:
    min_space: int = 0            #: btrfs.min_space: smallest layer size; turns quotas on
    default_size: int = 0         #: btrfs.size: limit of read-write layers made without one
    quota_mode: str | None = None  #: btrfsx.quota: the mode to enable quotas in (None: simple if the kernel has it)
    changes: str = "auto"         #: btrfsx.changes: how layer changes are found

    @property
    def wants_quota(self) -> bool:
        return self.min_space > 0


def parse_driver_options(options: Iterable[str]) -> DriverOptions:
    """Parse ``Driver(options=...)``; keys are case-insensitive."""
    if isinstance(options, str):
        raise OptionError(f"driver options must be a sequence of key=value strings, not the string {options!r}")
    values: dict[str, Any] = {}
    for option in options:
        key, value = parse_key_value(option)
        key = key.lower()
        if key == "btrfs.min_space":
            values["min_space"] = _size(key, value)
        elif key == "btrfs.size":
            values["default_size"] = _size(key, value)
        elif key == "btrfs.mountopt":
            raise OptionError("btrfs driver does not support mount options")
        elif key == "btrfsx.quota":
            mode = {"qgroups": "qgroup"}.get(value.lower(), value.lower())   # as status() spelled it before 0.1.0
            if mode not in QUOTA_MODES:
                raise OptionError(f"btrfsx.quota must be one of {', '.join(QUOTA_MODES)}, not {value!r}")
            values["quota_mode"] = mode
        elif key == "btrfsx.changes":
            if value.lower() not in CHANGES_MODES:
                raise OptionError(f"btrfsx.changes must be one of {', '.join(CHANGES_MODES)}, not {value!r}")
            values["changes"] = value.lower()
        else:
            raise OptionError(f"Unknown option {key}")
    return DriverOptions(**values)


def parse_storage_opt(storage_opt: Mapping[str, str] | None) -> int | None:
    """The ``size`` of a layer's storage options (the only key), or None."""
    size = None
    for key, value in (storage_opt or {}).items():
        if key.lower() != "size":
            raise OptionError(f"Unknown option {key.lower()}")
        size = _size("size", value)
    return size


def check_size(size: int, min_space: int) -> None:
    """A layer size must be positive and at least ``btrfs.min_space``."""
    if size <= 0:
        raise OptionError(f"btrfs: invalid storage size: {human_size(size)}")
    if min_space > 0 and size < min_space:
        raise OptionError(f"btrfs: storage size cannot be less than {human_size(min_space)}")
