"""Replica URLs: which URL holds one user's file, and how to show one in a log.

Owns the rule that a file's replica is its data-root-relative path under the
replica URL (``ROOT/alice/kiwi.db`` under ``s3://bucket/tenants?...`` is
``s3://bucket/tenants/alice/kiwi.db?...``), so any host with the same root
layout and URL finds the same replica, and the check that a file is really a
per-user file under the root. Does not talk to any storage.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from dataclasses import dataclass

from ..errors import ReplicationError, UnsafePathError
from ..tenancy import user_db_path

#: Replica URL schemes Litestream 0.5 understands (``NewReplicaClientFromURL``).
LITESTREAM_SCHEMES = frozenset(
    {"file", "s3", "gs", "abs", "sftp", "webdav", "webdavs", "nats", "oss"}
)
#: Query parameters and URL parts that may carry secrets (SSE-C keys, passwords).
_SECRET_HINTS = ("key", "secret", "token", "password")


@dataclass(frozen=True, slots=True)
class UserFile:
    """A per-user database file: its absolute path and its path under the data root.

    ``relative`` uses ``/`` and is what the replica URL is extended with.
    """

    root: str
    path: str
    relative: str


def user_file(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> UserFile:
    """``path`` (absolute, or relative to ``root``) checked to be a per-user file under ``root``.

    The same rules as ``user_db_path``: the first folder is the user id, the
    rest the product's sub-path (up to 4 names), each a plain name. Raises
    ``UnsafePathError`` for anything else, so a replica or restore never
    lands outside the user's own place.
    """
    root_path = os.path.abspath(os.fspath(root))
    given = os.fspath(path)
    absolute = os.path.abspath(given if os.path.isabs(given) else os.path.join(root_path, given))
    relative = os.path.relpath(absolute, root_path)
    parts = relative.split(os.sep)
    if relative == os.curdir or parts[0] == os.pardir or len(parts) < 2:
        raise UnsafePathError(
            f"{absolute} is not a per-user database under the data root {root_path}; give "
            f"USER/FILE (e.g. alice/kiwi.db) relative to the root, or a path inside it.",
            value=given,
        )
    checked = user_db_path(root_path, parts[0], "/".join(parts[1:]), create=False)
    return UserFile(root_path, os.fspath(checked), "/".join(parts))


def check_replica_url(url: str) -> str:
    """``url`` if Litestream can replicate to it, else ``ReplicationError`` saying why."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in LITESTREAM_SCHEMES:
        raise ReplicationError(
            f"the replica URL {redact(url)} has no scheme Litestream knows "
            f"({', '.join(sorted(LITESTREAM_SCHEMES))}); use e.g. file:///srv/replicas or "
            f"s3://bucket/prefix."
        )
    if scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ReplicationError(
                f"the replica URL {redact(url)} is not an absolute file URL; write "
                f"file:///absolute/folder (three slashes)."
            )
    elif not parts.netloc:
        raise ReplicationError(
            f"the replica URL {redact(url)} names no bucket or host; write "
            f"{scheme}://BUCKET/PREFIX."
        )
    return url


def replica_url_for(base_url: str, file: UserFile) -> str:
    """The replica URL of ``file``: its root-relative path appended to ``base_url``'s path."""
    parts = urllib.parse.urlsplit(check_replica_url(base_url))
    path = posixpath.join(parts.path.rstrip("/") or "/", file.relative)
    if not path.startswith("/"):
        path = "/" + path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def file_replica_folder(url: str) -> str:
    """The folder a ``file://`` replica URL names."""
    parts = urllib.parse.urlsplit(url)
    return os.path.normpath(urllib.parse.unquote(parts.path))


def redact(url: str) -> str:
    """``url`` fit for a log line: passwords and key-like query values replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    shown = [
        (name, "***" if any(hint in name.lower() for hint in _SECRET_HINTS) else value)
        for name, value in query
    ]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(shown, safe=":/"), "")
    )
