"""Placement: which host serves each user, as the product's directory says.

Owns asking the product's directory (``directory(user_id) -> host or
None``) and comparing the answer with this host's name, for the two places
that must know: the ASGI middleware (a request for a user placed on another
host gets the product's "elsewhere" response) and the registry (a first
checkout of an absent file is restored from the replica only when this host
owns the user, and refused when another host does). The directory itself
stays in the product (a table in its control-plane database, a hash of the
user id); this module never caches or stores it. Does not move anyone
(docs/replication.md gives the order).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .errors import UnsafePathError

State = Literal["here", "elsewhere", "unknown"]


@dataclass(frozen=True, slots=True)
class Where:
    """Where a user lives: ``here``, ``elsewhere`` (on ``host``), or ``unknown`` (unplaced)."""

    state: State
    host: str | None = None


class Placement:
    """This host's name and the product's directory of users to hosts.

    ``directory(user_id)`` returns the name of the host that owns the user,
    or None for a user nobody placed (a sign-up not recorded yet, a typo);
    it is called for every request the middleware sees and for a registry's
    first checkout of an absent file, so keep it cheap (a dict, a cache).
    The user id of a path is its first folder under ``data_root`` (the layout
    ``user_db_path`` makes).
    """

    def __init__(
        self,
        data_root: str | os.PathLike[str],
        this_host: str,
        directory: Callable[[str], str | None],
    ) -> None:
        if not this_host:
            raise ValueError("this_host must name this host, as the directory names it")
        self.data_root = os.path.abspath(os.fspath(data_root))
        self.this_host = this_host
        self.directory = directory

    def user_of(self, path: str | os.PathLike[str]) -> str:
        """The user id of a per-user file under the data root (``UnsafePathError`` otherwise)."""
        relative = os.path.relpath(os.path.abspath(os.fspath(path)), self.data_root)
        first = relative.split(os.sep, 1)[0]
        if first in (os.curdir, os.pardir) or os.sep not in relative:
            raise UnsafePathError(
                f"{path} is not a per-user file under the data root {self.data_root}; the "
                f"placement cannot tell whose it is.",
                value=os.fspath(path),
            )
        return first

    def where(self, path: str | os.PathLike[str]) -> Where:
        """Where the user owning ``path`` lives."""
        host = self.directory(self.user_of(path))
        if host is None:
            return Where("unknown")
        if host == self.this_host:
            return Where("here", host)
        return Where("elsewhere", host)

    def __repr__(self) -> str:
        return f"<Placement {self.this_host} for {self.data_root}>"
