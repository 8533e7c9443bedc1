"""btrfsx: a btrfs layer store with a compiled ioctl layer.

The public API is the containers/storage btrfs graph driver's, in Python::

    from btrfsx import Driver, CreateOpts
    with Driver("/var/lib/containers/storage/btrfs") as d:
        d.create("base")
        d.create("layer", "base", CreateOpts(storage_opt={"size": "10G"}))

and on top of it, pristine writable copies of a prepared tree for test
suites (:class:`Template`, and the ``btrfs_template`` fixture of
:mod:`btrfsx.testing`)::

    tpl = Template(home, "fixture", build=make_fixture, key=file_key("fixture.sql"))
    with tpl.copy() as path:
        run_test(path)
"""

from btrfsx._version import __version__
from btrfsx.archive import Change, ChangeKind
from btrfsx.driver import CreateOpts, Driver, LayerInfo, MountOpts
from btrfsx.errors import (
    ArchiveError,
    NativeChangesUnavailable,
    OptionError,
    PrerequisitesError,
    UnsafeArchiveError,
)
from btrfsx.idmap import IDMap
from btrfsx.quota import QuotaMode
from btrfsx.store import GcReport
from btrfsx.template import Template, file_key

__all__ = ["Driver", "CreateOpts", "MountOpts", "IDMap", "PrerequisitesError", "OptionError",
           "Change", "ChangeKind", "ArchiveError", "UnsafeArchiveError", "NativeChangesUnavailable", "QuotaMode",
           "Template", "file_key",
           "GcReport", "LayerInfo",
           "__version__"]
