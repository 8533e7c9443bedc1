"""Process helpers below every module that records process ids (the store's
staging names, the loopback images' owners): a module of its own so that
each imports it downward."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
