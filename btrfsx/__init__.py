"""btrfsx: a btrfs layer store with a compiled ioctl layer.

The public API is the containers/storage btrfs graph driver's, in Python::

    from btrfsx import Driver, CreateOpts
    with Driver("/var/lib/containers/storage/btrfs") as d:
        d.create("base")
        d.create("layer", "base", CreateOpts(storage_opt={"size": "10G"}))
"""

__version__ = "0.1.0"

from btrfsx.archive import Change, ChangeKind  # noqa: E402
from btrfsx.driver import CreateOpts, Driver, LayerInfo, MountOpts  # noqa: E402
from btrfsx.errors import (  # noqa: E402
    ArchiveError,
    NativeChangesUnavailable,
    OptionError,
    PrerequisitesError,
    UnsafeArchiveError,
)
from btrfsx.idmap import IDMap  # noqa: E402
from btrfsx.quota import QuotaMode  # noqa: E402
from btrfsx.store import GcReport  # noqa: E402

__all__ = ["Driver", "CreateOpts", "MountOpts", "IDMap", "PrerequisitesError", "OptionError",
           "Change", "ChangeKind", "ArchiveError", "UnsafeArchiveError", "NativeChangesUnavailable", "QuotaMode",
           "GcReport", "LayerInfo",
           "__version__"]
