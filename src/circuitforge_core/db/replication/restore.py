"""Restoring one user's file from its replica, atomically, while the service runs.

Owns the sequence: ``litestream restore`` into a private folder beside the
target (same filesystem, so the final rename is atomic), a check of the copy
(``integrity_check``, its ``_migrations`` readable, optionally its status
against a migrations folder), mode 0600 and fsync, then the rename into
place and an fsync of the folder. A failure at any step leaves the target as
it was and removes the temporary folder: never a half-written database.

Replacing a file that exists is refused unless asked for, and refused while
any connection of any process has it open (exclusive.py: an exclusive lock on
the old file is taken first and held across the rename; Litestream's own
connection counts, so the caller unregisters it first). Litestream's local state for the file
(``.<name>-litestream``) is removed with the old file: it describes a
database that is no longer there. Does not decide whether a user should be
restored (that is the registry's placement), and does not register the
restored file (the next checkout does).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ReplicaNotFoundError, RestoreError
from ..files import fsync, remove_quietly
from ..migrations import MigrationsDir, migration_status
from ..sqlite_facts import companion_files
from .binary import find_litestream, litestream_environment
from .exclusive import DEFAULT_LOCK_WAIT, held_alone
from .urls import UserFile, redact

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_RESTORE_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore did.

    ``replaced``: an existing, non-empty database was replaced. ``migrations``:
    the names recorded in the restored file's ``_migrations``; ``pending``: the
    files of the given migrations folder it has not applied yet (the next
    checkout applies them). ``seconds``: the whole restore, download included.
    """

    path: str
    replica_url: str
    replaced: bool
    size: int
    migrations: tuple[str, ...]
    pending: tuple[str, ...]
    seconds: float
    timestamp: str | None = None


def restore_database(
    file: UserFile,
    replica_url: str,
    *,
    timestamp: dt.datetime | str | None = None,
    replace: bool = False,
    missing_ok: bool = False,
    migrations: MigrationsDir | None = None,
    litestream: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_RESTORE_TIMEOUT,
    lock_wait: float = DEFAULT_LOCK_WAIT,
) -> RestoreResult | None:
    """Restore ``file`` from ``replica_url`` (its own replica, see ``replica_url_for``).

    ``timestamp`` restores the state at that time (a timezone-aware datetime,
    or RFC 3339 text such as ``2026-05-01T12:00:00Z``) instead of the latest.
    A target that is absent or empty (the placeholder ``user_db_path``
    creates) is filled; an existing database is replaced only with
    ``replace=True``. No copy in the replica raises ``ReplicaNotFoundError``,
    or returns None with ``missing_ok`` (nothing is created then).
    """
    started = time.monotonic()
    target = file.path
    stamp = _rfc3339(timestamp)
    existing = _size(target)
    if existing and not replace:
        raise RestoreError(
            f"{target} exists ({existing} bytes); restoring would replace it. Pass replace "
            f"(cf-db restore --replace) to do so, after stopping its use in the service.",
            path=target,
        )
    folder = os.path.dirname(target)
    _make_folders(file.root, folder)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.restore-", dir=folder)
    try:
        copy = os.path.join(work, os.path.basename(target))
        _run_restore(copy, replica_url, stamp, missing_ok, litestream, timeout, target)
        if not os.path.exists(copy):
            if missing_ok:
                return None
            raise RestoreError(
                f"litestream restore of {redact(replica_url)} reported success but wrote "
                f"nothing; {target} was left as it was.",
                path=target,
            )
        names, pending = _check_copy(copy, target, migrations)
        os.chmod(copy, 0o600)
        fsync(copy)
        size = os.path.getsize(copy)
        if existing:
            _replace_unused(target, copy, lock_wait)
        else:
            _fill_absent(target, copy)
        fsync(folder)
        _remove_litestream_state(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = RestoreResult(
        path=target,
        replica_url=redact(replica_url),
        replaced=bool(existing),
        size=size,
        migrations=names,
        pending=pending,
        seconds=time.monotonic() - started,
        timestamp=stamp,
    )
    logger.info(
        "restored %s from %s (%d bytes, %d migrations recorded%s) in %.3f s",
        target,
        result.replica_url,
        size,
        len(names),
        f", {len(pending)} pending" if pending else "",
        result.seconds,
    )
    return result


def litestream_state_folder(path: str) -> str:
    """Where Litestream keeps its local state for a file it was given over the socket."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}-litestream")


def remove_litestream_state(path: str, *, ignore_errors: bool = False) -> list[str]:
    """Delete Litestream's state folder beside ``path``; the folders removed (none or one)."""
    state = litestream_state_folder(path)
    if not os.path.isdir(state):
        return []
    shutil.rmtree(state, ignore_errors=ignore_errors)
    return [state]


# -- steps -------------------------------------------------------------------------------


def _run_restore(
    copy: str,
    replica_url: str,
    stamp: str | None,
    missing_ok: bool,
    litestream: str | os.PathLike[str] | None,
    timeout: float,
    target: str,
) -> None:
    argv: list[str] = [find_litestream(litestream), "restore", "-o", copy]
    if stamp is not None:
        argv += ["-timestamp", stamp]
    if missing_ok:
        argv.append("-if-replica-exists")
    argv.append(replica_url)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=litestream_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RestoreError(
            f"restoring {target} from {redact(replica_url)} took longer than {timeout:g} s and "
            f"was stopped; the target was left as it was. Check the replica's reachability, "
            f"or allow more time.",
            path=target,
        ) from exc
    if done.returncode == 0:
        return
    said = _last_lines(done.stderr or done.stdout)
    if "no matching backup" in said or "no snapshots available" in said:
        raise ReplicaNotFoundError(
            f"the replica {redact(replica_url)} holds no copy of {target}"
            f"{' at or before ' + stamp if stamp else ''} (never replicated, or erased); "
            f"the target was left as it was.",
            path=target,
        )
    raise RestoreError(
        f"litestream restore of {target} from {redact(replica_url)} failed (exit "
        f"{done.returncode}): {said}; the target was left as it was.",
        path=target,
    )


def _check_copy(
    copy: str, target: str, migrations: MigrationsDir | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Refuse a copy that is damaged or whose migration records cannot be read."""
    try:
        conn = sqlite3.connect(copy, isolation_level=None)
    except sqlite3.Error as exc:
        raise RestoreError(
            f"the restored copy of {target} cannot be opened: {exc}", path=target
        ) from exc
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise RestoreError(
                f"the restored copy of {target} failed its integrity check "
                f"({'; '.join(problems[:3])}); the target was left as it was. Try an earlier "
                f"--timestamp.",
                path=target,
            )
        has_records = conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_migrations'"
        ).fetchone()
        names: tuple[str, ...] = ()
        if has_records:
            names = tuple(row[0] for row in conn.execute("SELECT name FROM _migrations"))
        pending: tuple[str, ...] = ()
        if migrations is not None:
            statuses = migration_status(conn, migrations)
            modified = [s.name for s in statuses if s.state == "modified"]
            if modified:
                raise RestoreError(
                    f"the restored copy of {target} recorded migrations whose files have "
                    f"changed since ({', '.join(modified[:3])}); the target was left as it was.",
                    path=target,
                )
            pending = tuple(s.name for s in statuses if s.state == "pending")
    except sqlite3.Error as exc:
        raise RestoreError(
            f"the restored copy of {target} cannot be read ({exc}); the target was left as it was.",
            path=target,
        ) from exc
    finally:
        conn.close()  # the last connection: its -wal and -shm go with it
    remove_quietly(*companion_files(copy))
    return names, pending


def _fill_absent(target: str, copy: str) -> None:
    """Put ``copy`` where there is no database (or an empty placeholder)."""
    if _size(target):
        raise RestoreError(
            f"{target} was created while it was being restored; it was left as it is. Stop "
            f"serving the user while restoring (the registry's restore-on-miss does).",
            path=target,
        )
    # Nothing is open on an absent or empty file; a stray -wal would be replayed into the
    # restored file.
    for side in remove_quietly(*companion_files(target)):
        logger.warning("removed %s, left over beside a missing database", side)
    os.replace(copy, target)


def _replace_unused(target: str, copy: str, lock_wait: float) -> None:
    """Rename ``copy`` over ``target`` while holding the old file alone (exclusive.py).

    Its WAL is emptied first, so a process opening the path right after the
    rename meets the new file and an empty ``-wal``. Nothing is removed after
    the rename: a new connection may already use the path's ``-wal``.
    """
    with held_alone(target, doing="replaced", error=RestoreError, wait=lock_wait):
        os.replace(copy, target)


def _remove_litestream_state(target: str) -> None:
    for state in remove_litestream_state(target, ignore_errors=True):
        logger.info("removed Litestream's state for the old file: %s", state)


def _make_folders(root: str, folder: str) -> None:
    """Create the missing folders between ``root`` and ``folder``, each 0700."""
    if not os.path.isdir(root):
        raise RestoreError(
            f"the data root {root} does not exist; create it (0700) or fix the path.", path=root
        )
    relative = os.path.relpath(folder, root)
    current = root
    for name in [] if relative == os.curdir else relative.split(os.sep):
        current = os.path.join(current, name)
        try:
            os.mkdir(current, 0o700)
        except FileExistsError:
            continue
        os.chmod(current, 0o700)


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return None


def _rfc3339(timestamp: dt.datetime | str | None) -> str | None:
    if timestamp is None:
        return None
    if isinstance(timestamp, str):
        try:
            parsed = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(
                f"timestamp {timestamp!r} is not RFC 3339; write e.g. 2026-05-01T12:00:00Z"
            ) from exc
    else:
        parsed = timestamp
    if parsed.tzinfo is None:
        raise ValueError(
            f"timestamp {timestamp!s} has no time zone; add one (e.g. Z for UTC) so the "
            f"restore point is not guessed."
        )
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _last_lines(text: str, count: int = 3) -> str:
    lines: Sequence[str] = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"
