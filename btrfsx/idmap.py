"""User-namespace id maps, as containers/storage's idtools uses them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class IDMap(NamedTuple):
    """Ids ``container_id .. container_id + size - 1`` map to ``host_id ..``."""

    container_id: int
    host_id: int
    size: int


def to_host(container_id: int, maps: Sequence[IDMap] | None) -> int:
    """The host id of a container id; the id itself when there are no maps."""
    if not maps:
        return container_id
    for m in maps:
        if m.container_id <= container_id < m.container_id + m.size:
            return m.host_id + (container_id - m.container_id)
    raise ValueError(f"Container ID {container_id} cannot be mapped to a host ID")


def to_container(host_id: int, maps: Sequence[IDMap] | None) -> int:
    """The container id of a host id; the id itself when there are no maps."""
    if not maps:
        return host_id
    for m in maps:
        if m.host_id <= host_id < m.host_id + m.size:
            return m.container_id + (host_id - m.host_id)
    raise ValueError(f"Host ID {host_id} cannot be mapped to a container ID")


def root_pair(uid_maps: Sequence[IDMap] | None, gid_maps: Sequence[IDMap] | None) -> tuple[int, int]:
    """The host uid and gid of the container's root (idtools.GetRootUIDGID)."""
    return to_host(0, uid_maps), to_host(0, gid_maps)
