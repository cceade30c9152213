"""Why a database file would not open: SQLite's open failures as an OpenError with its reason.

Owns the translation, written once for plain opens (connect.py) and encrypted
ones (cipher.py) alike, of what SQLite reports while it opens and first reads
a file into an ``OpenError`` that names the file, says what to do and carries
its ``reason``. It goes by result codes rather than message text, and looks at
the file system where SQLite's "unable to open database file" or "disk I/O
error" hides the real cause: a path longer than SQLite takes, a folder where
its -wal or -journal belongs, a read-only or full file system, missing
permissions. Also what the operating system said when a database's folder or
file could not be created (``cannot_create``), and the path-length rule that
callers check before creating anything (``too_long``). Opens nothing itself;
the messages for a wrong key belong to cipher.py.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Literal

from .errors import OpenError
from .sqlite_facts import (
    MAX_DATABASE_PATH_BYTES,
    SQLITE_CANTOPEN,
    SQLITE_CORRUPT,
    SQLITE_FULL,
    SQLITE_IOERR,
    SQLITE_NOTADB,
    SQLITE_READONLY,
    primary_code,
)

#: How a file is opened, as in SQLite's URI ``mode=``: read-only, read-write
#: (the file must exist), or read-write and created when missing.
Access = Literal["ro", "rw", "rwc"]

#: Less free space than this where the database lives, and SQLite cannot open
#: it: the -shm alone takes 32 KiB, written out page by page.
ROOM_TO_OPEN = 256 * 1024

# What SQLite keeps beside a database, and what each is for (named in messages).
_BESIDE = (
    ("-wal", "write-ahead log"),
    ("-journal", "rollback journal"),
    ("-shm", "shared-memory index"),
)


def path_length(path: str) -> int:
    """The length in bytes of ``path`` as SQLite sees it: absolute, symbolic links resolved."""
    return len(os.fsencode(os.path.realpath(path)))


def too_long(path: str) -> OpenError | None:
    """An OpenError if SQLite could never open ``path`` because its name is too long."""
    length = path_length(path)
    if length <= MAX_DATABASE_PATH_BYTES:
        return None
    resolved = "" if os.path.realpath(path) == path else " once its symbolic links are resolved"
    return OpenError(
        path,
        f"{path}: its full path is {length} bytes long{resolved}, and SQLite opens database "
        f"files whose full path is at most {MAX_DATABASE_PATH_BYTES} bytes. Shorten it by "
        f"{length - MAX_DATABASE_PATH_BYTES} bytes (shorter folder or file names).",
        reason="path_too_long",
    )


def unopenable(path: str, exc: BaseException, *, access: Access) -> OpenError:
    """SQLite could not open the file or the files beside it: the actual reason, from the disk.

    The causes are tried from the most certain to the least: a name SQLite
    cannot take, a missing file, something else where SQLite's own files go,
    the permission to read, a read-only file system, the permission to write,
    a full file system.
    """
    return (
        too_long(path)
        or _missing(path, access)
        or _not_a_file_beside(path)
        or _unreadable(path)
        or _read_only_file_system(path, access)
        or _unwritable(path, access)
        or _full_file_system(path)
        or OpenError(
            path,
            f"{path}: cannot open the database (SQLite says: {exc}). Its path, folder, "
            f"permissions and free space look right: check the disk and the file system "
            f"(the kernel log).",
        )
    )


def open_failed(path: str, exc: BaseException, *, access: Access) -> OpenError:
    """What SQLite said while reading a file it had opened (the schema, the journal mode)."""
    message = str(exc)
    code = primary_code(exc)
    if code is None:  # not an SQLite error after all: judge by the words
        code = SQLITE_NOTADB if "file is not a database" in message else None
    if code in (SQLITE_NOTADB, SQLITE_CORRUPT):
        return OpenError(
            path,
            f"{path} is not a usable SQLite database (SQLite says: {message}). Check "
            f"the path, give its key if it is encrypted, or restore the file from a backup.",
            reason="not_a_database" if code == SQLITE_NOTADB else "damaged",
        )
    if code in (SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL):
        return unopenable(path, exc, access=access)
    return OpenError(path, f"{path}: cannot open the database ({message}).")


def cannot_create(database: str, created: str, exc: OSError) -> OpenError:
    """The operating system would not create ``created``, a folder for ``database`` or the file."""
    parent = os.path.dirname(created)
    code = exc.errno
    start = f"{database}: cannot create {created}"
    if code in (errno.EACCES, errno.EPERM):
        return OpenError(
            database,
            f"{start}: permission denied: the service user ({_user()}) may not write "
            f"{parent}. Make {parent} owned by (or writable for) that user.",
            reason="permission",
        )
    if code == errno.EROFS:
        return OpenError(
            database,
            f"{start}: it would be on a read-only file system (mounted at "
            f"{_mount_point(parent)}). Remount it read-write, or keep the databases on a "
            f"writable file system.",
            reason="read_only",
        )
    if code == errno.EDQUOT:
        return OpenError(
            database,
            f"{start}: the disk quota of the service user ({_user()}) is used up. Free some "
            f"of its space, or raise its quota.",
            reason="disk_full",
        )
    if code == errno.ENOSPC:
        return _full_file_system(database, always=True) or OpenError(
            database, f"{start}: no space left on the device.", reason="disk_full"
        )
    if code == errno.ENAMETOOLONG:
        return OpenError(
            database,
            f"{start}: a name in the path is longer than the file system allows. Use "
            f"shorter folder or file names.",
            reason="path_too_long",
        )
    if code in (errno.ENOTDIR, errno.EEXIST):
        return OpenError(
            database,
            f"{start}: a file stands where a folder is needed on the way to it. Move that "
            f"file, or choose another path.",
            reason="not_a_file",
        )
    return OpenError(database, f"{start}: {exc.strerror or exc}.")


# -- the causes, one each ------------------------------------------------------------------


def _missing(path: str, access: Access) -> OpenError | None:
    if access == "rwc" or os.path.exists(path):
        return None
    return OpenError(path, f"{path} does not exist; check the path.", reason="missing")


def _not_a_file_beside(path: str) -> OpenError | None:
    """A folder (or anything but a file) where SQLite keeps its -wal, -journal or -shm."""
    for suffix, role in _BESIDE:
        companion = path + suffix
        try:
            mode = os.stat(companion).st_mode
        except OSError:
            continue  # absent, which is normal
        if stat.S_ISREG(mode):
            continue
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        return OpenError(
            path,
            f"{companion} is {kind}: SQLite keeps the {role} of {path} under that name and "
            f"cannot open the database while something else is there. Move it out of the "
            f"way (it is not part of the database).",
            reason="not_a_file",
        )
    return None


def _unreadable(path: str) -> OpenError | None:
    if not os.path.exists(path) or os.access(path, os.R_OK):
        return None
    return OpenError(
        path,
        f"{path}: permission denied; the service user ({_user()}) must be able to read it: "
        f"fix the file's owner or mode.",
        reason="permission",
    )


def on_read_only_mount(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is on a file system mounted read-only (False when that is unknown)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # not POSIX, or gone meanwhile
        return False


def _read_only_file_system(path: str, access: Access) -> OpenError | None:
    folder = _nearest_folder(path)
    if not on_read_only_mount(folder):
        return None
    mount = _mount_point(folder)
    if access == "ro":
        what = (
            f"SQLite can read a WAL database there only while its -wal and -shm files exist "
            f"beside it, and it cannot create them. Copy the database to a writable file "
            f"system, or remount {mount} read-write."
        )
    else:
        what = (
            f"SQLite can neither write the database nor create the -wal and -shm files it "
            f"keeps beside it. Remount {mount} read-write, or keep the database on a writable "
            f"file system."
        )
    return OpenError(
        path,
        f"{path} is on a read-only file system (mounted at {mount}): {what}",
        reason="read_only",
    )


def _unwritable(path: str, access: Access) -> OpenError | None:
    if access == "ro":
        return None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return OpenError(
            path,
            f"{path}: permission denied; the service user ({_user()}) must be able to read "
            f"and write it: fix the file's owner or mode.",
            reason="permission",
        )
    parent = os.path.dirname(path)
    if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        return OpenError(
            path,
            f"{path}: its folder {parent} is not writable by the service user ({_user()}), "
            f"and SQLite needs to create the -wal and -shm files beside the database. Make "
            f"{parent} owned by (or writable for) that user.",
            reason="permission",
        )
    return None


def _full_file_system(path: str, *, always: bool = False) -> OpenError | None:
    """No room (or no inodes) left where ``path`` lives; ``always``: the OS already said so."""
    folder = _nearest_folder(path)
    try:
        fs = os.statvfs(folder)
    except OSError:
        return None
    blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail  # root may use the reserve
    free = blocks * fs.f_frsize
    no_inodes = fs.f_files > 0 and fs.f_favail == 0
    if free >= ROOM_TO_OPEN and not no_inodes and not always:
        return None
    left = "no free inodes" if no_inodes and free >= ROOM_TO_OPEN else f"{_size(free)} free"
    return OpenError(
        path,
        f"{path}: the file system holding it (mounted at {_mount_point(folder)}) is full "
        f"({left}); SQLite needs room beside the database for its -wal and -shm files. "
        f"Free some space there, or move the database to a file system with room.",
        reason="disk_full",
    )


# -- small facts about the file system -------------------------------------------------------


def _nearest_folder(path: str) -> str:
    """The closest folder above ``path`` that exists (what statvfs can look at)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _mount_point(folder: str) -> str:
    """The folder where the file system holding ``folder`` is mounted."""
    current = os.path.realpath(folder)
    try:
        device = os.stat(current).st_dev
        while current != os.path.dirname(current):
            parent = os.path.dirname(current)
            if os.stat(parent).st_dev != device:
                break
            current = parent
    except OSError:
        pass
    return current


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count / 1024:.0f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def _user() -> str:
    """Who the process runs as, for messages about permissions."""
    uid = os.geteuid()
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except (ImportError, KeyError):
        return f"uid {uid}"
