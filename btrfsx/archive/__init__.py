"""Layer diffs: what changed (``changes``), as an OCI layer tar (``export``),
and applying one safely (``apply``)."""

from btrfsx.archive.apply import apply_layer
from btrfsx.archive.changes import Change, ChangeKind, changes, changes_size
from btrfsx.archive.export import export_changes

__all__ = ["Change", "ChangeKind", "changes", "changes_size", "export_changes", "apply_layer"]
