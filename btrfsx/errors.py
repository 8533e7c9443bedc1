"""The exception types btrfsx adds where the standard ones do not fit."""


class PrerequisitesError(RuntimeError):
    """The driver cannot run here: its home is not on btrfs (containers/storage's
    ``ErrPrerequisites``)."""


class OptionError(ValueError):
    """A driver option or a layer's storage option is malformed, unknown or out of range."""


class ArchiveError(ValueError):
    """A layer tarball is malformed, truncated, or holds an entry that cannot be applied."""


class UnsafeArchiveError(ArchiveError):
    """A layer tarball entry would reach outside the layer (``..``, a symlinked
    parent, a hard link to a path outside)."""


class NativeChangesUnavailable(RuntimeError):
    """``btrfsx.changes=native`` was asked for, but a layer's changes cannot be
    read from btrfs metadata (it is not a snapshot of the parent, holds nested
    subvolumes, or the process may not search btrfs trees)."""
