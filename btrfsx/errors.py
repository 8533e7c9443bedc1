"""The exception types btrfsx adds where the standard ones do not fit."""


class PrerequisitesError(RuntimeError):
    """The driver cannot run here: its home is not on btrfs (containers/storage's
    ``ErrPrerequisites``)."""


class OptionError(ValueError):
    """A driver option or a layer's storage option is malformed, unknown or out of range."""
