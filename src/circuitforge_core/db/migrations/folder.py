"""The migrations folder: which files are migrations, their text and checksum, the next name.

Owns the one listing of a folder that the runner, status, verify, lint and
``new_migration`` all use (files whose name ends in ``.sql``, in filename
order; sub-folders are not migrations, whatever their name), how a file's
bytes become the text the runner runs and checksums (no BOM, ``\\n`` line
endings, UTF-8 without NUL), and the name and creation of the next numbered
file. An entry named like a migration that cannot be one (a dangling
symbolic link, a FIFO, a name that is not UTF-8) is an error naming the
folder and the entry, never left out: left out, it would run later, out of
order. Knows nothing of databases.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from ..errors import MigrationNameError, MigrationSourceError

MigrationsDir = str | os.PathLike[str] | Traversable

NO_TRANSACTION_MARKER = "-- cf-db: no-transaction"
#: The only files the runner reads; everything else in the folder is ignored.
MIGRATION_SUFFIX = ".sql"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class MigrationFile:
    """One ``.sql`` file, normalised: no BOM, ``\\n`` line endings.

    ``checksum`` is the SHA-256 of the normalised text, so a change of line
    endings or BOM alone is not an edit.
    """

    name: str
    text: str
    checksum: str

    @property
    def no_transaction(self) -> bool:
        first_line = self.text.split("\n", 1)[0].strip()
        return is_no_transaction_marker(first_line)


def is_no_transaction_marker(line: str) -> bool:
    """Whether one line of a file is the ``-- cf-db: no-transaction`` marker."""
    return " ".join(line.split()).lower() == NO_TRANSACTION_MARKER


# -- listing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FolderListing:
    """The files of a migrations folder, each group in filename order.

    ``migrations`` are the files the runner reads; ``others`` every other
    file (lint warns about a ``.SQL`` there, which the runner never reads).
    """

    folder: Traversable
    migrations: tuple[Traversable, ...]
    others: tuple[Traversable, ...]


def list_folder(migrations_dir: MigrationsDir) -> FolderListing:
    """The folder's files, sorted by name; raises ``MigrationSourceError`` naming the folder.

    Also for an entry named ``*.sql`` that is neither a file nor a folder, or
    whose name is not UTF-8 (it could not be recorded in ``_migrations``).
    """
    folder = as_traversable(migrations_dir)
    try:
        entries = sorted(folder.iterdir(), key=_name)
        migrations = []
        others = []
        for entry in entries:
            if entry.name.endswith(MIGRATION_SUFFIX):
                if _is_migration(entry, folder):
                    migrations.append(entry)
            elif entry.is_file():
                others.append(entry)
    except (OSError, ValueError) as exc:
        raise MigrationSourceError(
            f"cannot list the migrations folder {folder}: {exc}. Check the path."
        ) from exc
    return FolderListing(folder, tuple(migrations), tuple(others))


def shown_name(name: str) -> str:
    """A file name as messages show it: bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_migration(entry: Traversable, folder: Traversable) -> bool:
    """A file named ``*.sql`` (True), a folder (False, ignored), or an error naming the entry."""
    name = entry.name
    if shown_name(name) != name:
        raise MigrationSourceError(
            f"the migrations folder {folder} holds {shown_name(name)}, whose name is not valid "
            f"UTF-8 (the undecodable bytes are shown as \\xNN), so it cannot be recorded in "
            f"_migrations. Rename it to a UTF-8 name.",
            name=shown_name(name),
        )
    if entry.is_file():
        return True
    if entry.is_dir():
        return False
    raise MigrationSourceError(
        f"{name} in the migrations folder {folder} {_why_not_a_file(entry)}, so it cannot be "
        f"read as a migration (and would run out of order once it can). Fix or remove it.",
        name=name,
    )


def _why_not_a_file(entry: Traversable) -> str:
    """What an entry that is neither a file nor a folder is."""
    if not isinstance(entry, Path):
        return "is neither a file nor a folder"
    if entry.is_symlink():
        target = os.readlink(entry)
        try:
            entry.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"is a symbolic link to {target} that loops back on itself"
            return f"is a symbolic link to {target}, which does not exist"
    kind = stat.S_IFMT(os.stat(entry).st_mode)
    what = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}.get(kind, "a device")
    return f"is {what}, not a regular file"


def _name(entry: Traversable) -> str:
    return entry.name


def as_traversable(migrations_dir: MigrationsDir) -> Traversable:
    """A path as a ``Path`` that must be an existing folder; a traversable as it is."""
    if isinstance(migrations_dir, str | os.PathLike):
        folder = Path(migrations_dir)
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise MigrationSourceError(
                f"the migrations folder {folder} {what}. Pass the folder that holds the "
                f"product's NNN_name.sql files."
            )
        return folder
    return migrations_dir


# -- reading -------------------------------------------------------------------------


def read_migrations(migrations_dir: MigrationsDir) -> list[MigrationFile]:
    """The ``*.sql`` files of the folder, in filename order; other files are ignored."""
    listing = list_folder(migrations_dir)
    return [
        normalised(entry.name, read_bytes(entry, listing.folder), listing.folder)
        for entry in listing.migrations
    ]


def read_bytes(entry: Traversable, folder: Traversable) -> bytes:
    """The raw bytes of one migration file, naming it if they cannot be read."""
    try:
        return entry.read_bytes()
    except OSError as exc:
        raise MigrationSourceError(
            f"cannot read migration {entry.name} in {folder}: {exc}.", name=entry.name
        ) from exc


def normalised(name: str, raw: bytes, folder: Traversable) -> MigrationFile:
    """The file as the runner runs it; ``MigrationSourceError`` if it is not UTF-8 or has a NUL."""
    raw = raw.removeprefix(BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MigrationSourceError(
            f"migration {name} in {folder} is not valid UTF-8 (byte {exc.start}, line {line}). "
            f"Save it as UTF-8.",
            name=name,
        ) from exc
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise MigrationSourceError(
            f"migration {name} in {folder} contains a NUL byte (line {line}), which SQLite "
            f"cannot take in SQL text. Remove it; write char(0) or X'00' where a value needs one.",
            name=name,
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return MigrationFile(name, text, hashlib.sha256(text.encode("utf-8")).hexdigest())


# -- the next file -------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[a-z0-9_]{1,100}\Z")
_NUMBERED = re.compile(r"(\d+)_?(.*)\.sql\Z")
#: Digits of the first number in an empty folder.
DEFAULT_WIDTH = 3


@dataclass(frozen=True, slots=True)
class NewMigration:
    """A migration file ``new_migration`` created.

    ``path`` is the folder as given joined with the file name, ``number`` the
    file's number, ``no_transaction`` whether it starts with the marker.
    """

    path: Path
    number: int
    no_transaction: bool

    @property
    def name(self) -> str:
        """The file name, which ``_migrations`` will record."""
        return self.path.name


def new_migration(
    migrations_dir: str | os.PathLike[str], name: str, *, no_transaction: bool = False
) -> NewMigration:
    """Create the folder's next migration file, ``NNN_<name>.sql``, and say where it is.

    The number is one more than the highest in the folder, zero-padded to the
    width of that file's number (3 digits in an empty folder). ``name`` must be
    1 to 100 of ``a-z``, ``0-9`` and ``_``, and no migration may have it yet;
    otherwise ``MigrationNameError``, as when the next number needs more
    digits than the folder uses (it would sort before the others). The folder
    must exist (``MigrationSourceError``): a typo never starts a second one.
    An existing file is never overwritten (``FileExistsError``). The file holds
    two comment lines saying how it runs, after the no-transaction marker
    when ``no_transaction`` is true.
    """
    folder = Path(migrations_dir)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise MigrationSourceError(
            f"{folder} {what}; create the migrations folder first (mkdir -p)."
        )
    number, file_name = _next_file_name(folder, name)
    path = folder / file_name
    header = f"{NO_TRANSACTION_MARKER}\n" if no_transaction else ""
    how = (
        "runs statement by statement, outside a transaction: make it safe to run again"
        if no_transaction
        else "runs in one transaction together with its _migrations row"
    )
    with open(path, "x", encoding="utf-8") as handle:  # "x": never overwrite a file
        handle.write(
            f"{header}-- {path.name}: {how}.\n"
            f"-- Once it is applied anywhere, never edit it: put further changes in a new file.\n"
        )
    return NewMigration(path, number, no_transaction)


def _next_file_name(folder: Path, name: str) -> tuple[int, str]:
    """The number and file name the next migration called ``name`` gets in ``folder``."""
    if not _SAFE_NAME.match(name):
        raise MigrationNameError(
            f"{name!r} is not a safe migration name: use 1 to 100 lower-case letters, digits "
            f"and _ (no spaces, dots or slashes), e.g. add_tags."
        )
    numbered = [
        (int(match[1]), len(match[1]), match[2], entry.name)
        for entry in list_folder(folder).migrations
        if (match := _NUMBERED.match(entry.name))
    ]
    for _, _, existing_name, file_name in numbered:
        if existing_name.lower() == name:
            raise MigrationNameError(
                f"{folder} already has a migration named {name}: {file_name}. Choose a name "
                f"that says what this one changes.",
                name=file_name,
            )
    number = max((n for n, _, _, _ in numbered), default=0) + 1
    width = max((w for n, w, _, _ in numbered if n == number - 1), default=DEFAULT_WIDTH)
    digits = str(number).zfill(width)
    if len(digits) > width:
        raise MigrationNameError(
            f"the next number, {number}, needs more digits than the {width} the files in "
            f"{folder} use, so {digits}_{name}.sql would sort (and run) before the files "
            f"numbered 1 to 9{'9' * (width - 1)}. Renumber the files with more digits while "
            f"none is applied anywhere, or keep the numbering by hand (see cf-db lint)."
        )
    return number, f"{digits}_{name}.sql"
