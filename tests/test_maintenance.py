"""backup_database, check_database, verify_migrations on real files, with real processes."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from circuitforge_core.db import get_db, run_migrations
from circuitforge_core.db.errors import BackupError, OpenError
from circuitforge_core.db.maintenance import (
    backup_database,
    check_database,
    verify_migrations,
)
from circuitforge_core.db.sqlite_facts import HEADER as SQLITE_HEADER

Write = Callable[[str, "str | bytes"], Path]

# Inserts rows with consecutive ids as fast as it can, one commit each, until killed.
WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
n = db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
while True:
    n += 1
    db.execute("INSERT INTO t (id, payload) VALUES (?, randomblob(300))", (n,))
"""


def make_database(path: Path, rows: int = 200, blob: int = 100) -> None:
    """A WAL database with table t(id, payload) holding ``rows`` rows."""
    db = get_db(path)
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        db.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO t SELECT i, randomblob(?) FROM c",
            (rows, blob),
        )
        db.execute("PRAGMA user_version = 7")
        db.commit()
    finally:
        db.close()


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def max_id(path: Path) -> int:
    return int(query(path, "SELECT coalesce(max(id), 0) FROM t")[0][0])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "cf-db-backup" in p.name)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    """Start a process that writes to a database continuously; killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(path: Path) -> subprocess.Popen[bytes]:
        before = max_id(path)
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        started.append(process)
        deadline = time.monotonic() + 30
        while max_id(path) <= before + 50:  # it is writing
            assert process.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer never wrote"
            time.sleep(0.01)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=30)


# -- backup --------------------------------------------------------------------------


def test_backup_is_a_complete_checked_copy(tmp_path: Path) -> None:
    """Rows, header fields and permission bits arrive; the copy passes integrity_check."""
    source = tmp_path / "app.db"
    make_database(source)
    os.chmod(source, 0o640)
    result = backup_database(source, tmp_path / "copy.db")
    copy = tmp_path / "copy.db"
    assert result.path == str(copy)
    assert result.size == copy.stat().st_size
    assert result.check == "integrity_check"
    assert query(copy, "PRAGMA integrity_check") == [("ok",)]
    assert query(copy, "SELECT count(*) FROM t") == [(200,)]
    assert query(copy, "PRAGMA user_version") == [(7,)]
    assert copy.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path) == []


def test_backup_into_a_folder_keeps_the_name(tmp_path: Path) -> None:
    """DEST an existing folder: the copy is DEST/<DB's name>."""
    source = tmp_path / "app.db"
    make_database(source)
    (tmp_path / "backups").mkdir()
    result = backup_database(source, tmp_path / "backups", quick=True)
    assert result.path == str(tmp_path / "backups" / "app.db")
    assert result.check == "quick_check"
    assert query(Path(result.path), "SELECT count(*) FROM t") == [(200,)]


def test_backup_of_a_rollback_journal_database(tmp_path: Path) -> None:
    """A file never switched to WAL is copied just the same."""
    source = tmp_path / "old.db"
    db = sqlite3.connect(source)
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    backup_database(source, tmp_path / "copy.db")
    assert query(tmp_path / "copy.db", "SELECT * FROM t") == [(1,)]


def test_progress_counts_pages_up_to_the_total(tmp_path: Path) -> None:
    """progress(done, total) after every step, ending at done == total."""
    source = tmp_path / "app.db"
    make_database(source, rows=2000, blob=1000)
    calls: list[tuple[int, int]] = []
    result = backup_database(
        source, tmp_path / "copy.db", pages_per_step=64, progress=lambda d, t: calls.append((d, t))
    )
    assert len(calls) > 5
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert calls[-1] == (result.pages, result.pages)


def test_backup_replaces_an_older_backup_atomically(tmp_path: Path) -> None:
    """An existing SQLite file at DEST (an older backup) is replaced by the new copy."""
    source = tmp_path / "app.db"
    make_database(source)
    old = tmp_path / "copy.db"
    make_database(old, rows=3)
    backup_database(source, old)
    assert query(old, "SELECT count(*) FROM t") == [(200,)]
    empty = tmp_path / "empty.db"
    empty.touch()
    backup_database(source, empty)
    assert query(empty, "SELECT count(*) FROM t") == [(200,)]


@pytest.mark.parametrize("name", ["app.db", "app.db-wal", "app.db-shm", "link.db"])
def test_backup_refuses_to_write_onto_the_database(tmp_path: Path, name: str) -> None:
    """DEST is the database itself (or its WAL, or a symlink to it): refused, DB intact."""
    source = tmp_path / "app.db"
    make_database(source)
    (tmp_path / "link.db").symlink_to(source)
    with pytest.raises(BackupError, match="onto itself"):
        backup_database(source, tmp_path / name)
    with pytest.raises(BackupError, match="onto itself"):
        backup_database(source, tmp_path)  # the folder: DEST/app.db is the source
    assert query(source, "SELECT count(*) FROM t") == [(200,)]
    assert leftovers(tmp_path) == []


def test_backup_refuses_to_overwrite_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A DEST holding something else is left exactly as it was."""
    source = tmp_path / "app.db"
    make_database(source)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(BackupError, match="not an SQLite database; refusing to overwrite"):
        backup_database(source, notes)
    assert notes.read_text() == "my notes"
    assert leftovers(tmp_path) == []


def test_backup_errors_name_what_is_wrong(tmp_path: Path) -> None:
    """Missing source, source a folder, source not a database, DEST folder missing."""
    source = tmp_path / "app.db"
    with pytest.raises(OpenError, match="does not exist; nothing to back up"):
        backup_database(source, tmp_path / "copy.db")
    with pytest.raises(OpenError, match="is a folder"):
        backup_database(tmp_path, tmp_path / "copy.db")
    source.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OpenError, match="not a usable SQLite database"):
        backup_database(source, tmp_path / "copy.db")
    make_database(tmp_path / "real.db")
    with pytest.raises(BackupError, match=r"folder .*nope does not exist"):
        backup_database(tmp_path / "real.db", tmp_path / "nope" / "copy.db")
    assert not (tmp_path / "copy.db").exists()
    assert leftovers(tmp_path) == []


def corrupt(path: Path) -> None:
    """Overwrite part of a b-tree page in the middle of the file."""
    with open(path, "r+b") as handle:
        handle.seek(4096 * 10 + 200)
        handle.write(b"\x07garbage" * 60)


def test_backup_of_a_damaged_database_writes_nothing(tmp_path: Path) -> None:
    """The copy fails integrity_check: BackupError with the problems; DEST untouched."""
    source = tmp_path / "app.db"
    db = sqlite3.connect(source)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE INDEX t_v ON t (v)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(f"value {i}" * 4,) for i in range(5000)])
    db.commit()
    db.close()
    corrupt(source)
    old = tmp_path / "copy.db"
    make_database(old, rows=3)
    before = old.read_bytes()
    with pytest.raises(BackupError, match="fails integrity_check") as info:
        backup_database(source, old)
    assert info.value.problems
    assert old.read_bytes() == before
    assert leftovers(tmp_path) == []


# A stepped backup (8 pages a step) that lets the writer commit at least once more
# after every step before it takes the next: the copy meets a commit between each
# pair of steps, whatever the speed of the machine.
BACKUP_BETWEEN_COMMITS = """
import sys, time
from circuitforge_core.db import get_db
from circuitforge_core.db.maintenance import backup_database

source, dest = sys.argv[1:3]
key = bytes.fromhex(sys.argv[3]) if len(sys.argv) > 3 else None
watch = get_db(source, key=key, readonly=True)

def newest():
    return watch.execute("SELECT max(id) FROM t").fetchone()[0]

seen = newest()

def progress(done, total):
    global seen
    deadline = time.monotonic() + 30
    while newest() == seen:
        if time.monotonic() > deadline:
            sys.exit("the writer stopped committing")
        time.sleep(0.001)
    seen = newest()

backup_database(source, dest, key=key, pages_per_step=8, progress=progress)
watch.close()
"""


def test_backup_holds_every_row_committed_before_it_began(
    tmp_path: Path, writer: Callable[[Path], subprocess.Popen[bytes]]
) -> None:
    """A stepped copy with another process's commits between every two steps: no restart,
    no loss.

    Without the snapshot the backup holds, each commit between two steps
    restarts the copy and this one would never finish (it runs in a child
    process with a timeout).
    """
    source = tmp_path / "app.db"
    make_database(source, rows=3000, blob=1000)
    process = writer(source)
    before = max_id(source)
    subprocess.run(
        [sys.executable, "-c", BACKUP_BETWEEN_COMMITS, str(source), str(tmp_path / "copy.db")],
        check=True,
        timeout=120,
    )
    assert process.poll() is None, "the writer stopped during the backup"
    assert max_id(source) > before
    copy = tmp_path / "copy.db"
    assert query(copy, "PRAGMA integrity_check") == [("ok",)]
    assert query(copy, f"SELECT count(*) FROM t WHERE id <= {before}") == [(before,)]


# A backup that stops after its first step, says so on stdout, and goes on when the
# test writes a line to its stdin (or is killed there).
PAUSED_BACKUP = """
import sys
from circuitforge_core.db.maintenance import backup_database

paused = False

def progress(done, total):
    global paused
    if not paused:
        paused = True
        print(f"{done}/{total}", flush=True)
        sys.stdin.readline()

backup_database(sys.argv[1], sys.argv[2], pages_per_step=8, progress=progress)
"""


def start_paused_backup(source: Path, dest: Path) -> subprocess.Popen[bytes]:
    """A backup of ``source`` to ``dest`` stopped in the middle of its copy."""
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_BACKUP, source, dest],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    assert ready, "the backup never finished its first step"
    assert process.stdout.readline(), "the backup ended before its first step"
    return process


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_killed_backup_leaves_the_old_dest_and_the_next_one_cleans_up(tmp_path: Path) -> None:
    """SIGKILL mid-copy: DEST is still the old backup; the next backup removes the leftover."""
    source = tmp_path / "app.db"
    make_database(source, rows=400, blob=1000)
    dest = tmp_path / "copy.db"
    make_database(dest, rows=3)
    process = start_paused_backup(source, dest)
    assert leftovers(tmp_path), "the copy in progress should exist"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert query(dest, "SELECT count(*) FROM t") == [(3,)]
    assert query(dest, "PRAGMA integrity_check") == [("ok",)]
    assert leftovers(tmp_path)  # a killed process cannot clean up
    backup_database(source, dest)
    assert leftovers(tmp_path) == []
    assert query(dest, "SELECT count(*) FROM t") == [(400,)]


def test_a_concurrent_backup_keeps_its_copy(tmp_path: Path) -> None:
    """Another backup to the same DEST never removes the copy of one still running."""
    source = tmp_path / "app.db"
    make_database(source, rows=400, blob=1000)
    dest = tmp_path / "copy.db"
    process = start_paused_backup(source, dest)
    try:
        backup_database(source, dest)
        assert leftovers(tmp_path), "the paused backup's copy was removed"
    finally:
        process.communicate(b"go on\n", timeout=60)
    assert process.returncode == 0
    assert query(dest, "SELECT count(*) FROM t") == [(400,)]
    assert leftovers(tmp_path) == []


# -- check ---------------------------------------------------------------------------


def test_check_of_a_sound_database(tmp_path: Path) -> None:
    """integrity_check and foreign_key_check both clean: ok; the file is not written."""
    source = tmp_path / "app.db"
    make_database(source)
    before = source.read_bytes()
    result = check_database(source)
    assert result.ok
    assert (result.check, result.integrity, result.foreign_keys) == ("integrity_check", (), ())
    assert check_database(source, quick=True).check == "quick_check"
    assert source.read_bytes() == before


def test_check_groups_dangling_foreign_keys(tmp_path: Path) -> None:
    """Rows pointing at nothing, grouped per constraint with columns, count and rowids."""
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY);\n"
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, note_id INTEGER REFERENCES notes(id));\n"
        "CREATE TABLE pins (note_id INTEGER REFERENCES notes);\n"
        "INSERT INTO notes VALUES (1);\n"
        "INSERT INTO tags (note_id) VALUES (1), (2), (3), (4), (5), (6), (7), (8);\n"
        "INSERT INTO pins VALUES (9);\n"
    )
    db.close()
    result = check_database(path)
    assert not result.ok
    assert result.integrity == ()
    by_table = {p.table: p for p in result.foreign_keys}
    tags = by_table["tags"]
    assert (tags.columns, tags.parent, tags.parent_columns, tags.count) == (
        ("note_id",),
        "notes",
        ("id",),
        7,
    )
    assert tags.rowids == (2, 3, 4, 5, 6)
    pins = by_table["pins"]
    assert (pins.columns, pins.parent, pins.parent_columns, pins.count) == (
        ("note_id",),
        "notes",
        (),
        1,
    )


def test_check_reports_corruption_one_message_per_line(tmp_path: Path) -> None:
    """A damaged page: integrity problems, each its own message, no heading lines."""
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE INDEX t_v ON t (v)")
    db.executemany("INSERT INTO t (v) VALUES (?)", [(f"value {i}" * 4,) for i in range(5000)])
    db.commit()
    db.close()
    corrupt(path)
    result = check_database(path, max_errors=5)
    assert not result.ok
    assert 1 <= len(result.integrity) <= 5
    assert all("\n" not in m and not m.startswith("***") for m in result.integrity)


def test_check_errors_name_the_file(tmp_path: Path) -> None:
    """Missing, a folder, not a database: OpenError naming the path."""
    with pytest.raises(OpenError, match="does not exist; nothing to check"):
        check_database(tmp_path / "nope.db")
    with pytest.raises(OpenError, match="is a folder"):
        check_database(tmp_path)
    (tmp_path / "text.db").write_text("hello" * 1000)
    with pytest.raises(OpenError, match="not a usable SQLite database"):
        check_database(tmp_path / "text.db")
    assert not (tmp_path / "nope.db").exists()


def test_check_of_a_file_whose_schema_is_damaged(tmp_path: Path) -> None:
    """A readable header but a garbled schema page is a finding, not a crash."""
    path = tmp_path / "app.db"
    make_database(path)
    data = bytearray(path.read_bytes())
    assert data[:16] == SQLITE_HEADER
    data[100:600] = b"\xff" * 500  # page 1 after the header: sqlite_schema's b-tree
    path.write_bytes(bytes(data))
    result = check_database(path)
    assert not result.ok
    assert result.integrity


# -- verify --------------------------------------------------------------------------


def test_verify_states(db_path: Path, migrations_dir: Path, write_migration: Write) -> None:
    """ok, modified, missing, pending, and unchecked rows left by the old runner."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    write_migration("003_c.sql", "CREATE TABLE c (x);")
    db = get_db(db_path)
    try:
        run_migrations(db, migrations_dir)
        db.execute("INSERT INTO _migrations (name) VALUES ('000_old.sql')")
        db.commit()
    finally:
        db.close()
    write_migration("000_old.sql", "SELECT 1;")
    write_migration("002_b.sql", "CREATE TABLE b (x, y);")
    (migrations_dir / "003_c.sql").unlink()
    write_migration("004_d.sql", "CREATE TABLE d (x);")
    db = get_db(db_path, readonly=True)
    try:
        checks = verify_migrations(db, migrations_dir)
    finally:
        db.close()
    assert [(c.name, c.state) for c in checks] == [
        ("000_old.sql", "unchecked"),
        ("001_a.sql", "ok"),
        ("002_b.sql", "modified"),
        ("004_d.sql", "pending"),
        ("003_c.sql", "missing"),
    ]
    modified = checks[2]
    assert modified.recorded is not None
    assert modified.recorded != modified.actual
    assert checks[1].recorded == checks[1].actual


# -- encrypted databases -------------------------------------------------------------

KNOWN_PLAINTEXT = b"KNOWN-PLAINTEXT-5be1d0"
RAW_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def sqlcipher() -> None:
    """Skip where the SQLCipher driver (the sqlcipher extra) is not installed."""
    pytest.importorskip("sqlcipher3")


def make_encrypted(path: Path, key: str | bytes, rows: int = 200, blob: int = 100) -> None:
    """An encrypted WAL database: t(id, payload) with the known plaintext in every row."""
    db = get_db(path, key=key)
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        db.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO t SELECT i, ? || hex(randomblob(?)) FROM c",
            (rows, KNOWN_PLAINTEXT.decode(), blob // 2),
        )
        db.execute("PRAGMA user_version = 7")
        db.commit()
    finally:
        db.close()


def encrypted_query(path: Path, key: str | bytes, sql: str) -> list[tuple[object, ...]]:
    db = get_db(path, key=key, readonly=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def make_damaged_encrypted(path: Path, key: bytes, offset: int) -> None:
    """An encrypted database of a few hundred pages with bytes overwritten at ``offset``."""
    db = get_db(path, key=key)
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("CREATE INDEX t_v ON t (v)")
        db.executemany("INSERT INTO t (v) VALUES (?)", [(f"value {i}" * 4,) for i in range(5000)])
        db.commit()
    finally:
        db.close()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x07garbage" * 60)


@pytest.mark.parametrize("key", [RAW_KEY, "a passphrase with a ' quote"], ids=["raw", "passphrase"])
def test_backup_of_an_encrypted_database_is_encrypted_with_the_same_key(
    tmp_path: Path, sqlcipher: None, key: str | bytes
) -> None:
    """The copy opens with the key and holds every row; without it, it does not open;
    its bytes hold no plaintext."""
    source = tmp_path / "app.db"
    make_encrypted(source, key)
    os.chmod(source, 0o600)
    copy = tmp_path / "copy.db"
    result = backup_database(source, copy, key=key)
    assert (result.path, result.size) == (str(copy), copy.stat().st_size)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("copy", "."))) == [
        "copy.db"  # no temporary copy, no -wal or -shm
    ]
    everything = "SELECT id, payload FROM t ORDER BY id"
    assert encrypted_query(copy, key, everything) == encrypted_query(source, key, everything)
    assert encrypted_query(copy, key, "SELECT count(*) FROM t") == [(200,)]
    assert encrypted_query(copy, key, "PRAGMA user_version") == [(7,)]
    assert encrypted_query(copy, key, "PRAGMA integrity_check") == [("ok",)]
    data = copy.read_bytes()
    assert KNOWN_PLAINTEXT not in data
    assert not data.startswith(SQLITE_HEADER)
    with pytest.raises(OpenError, match="give its key if it is encrypted"):
        get_db(copy, readonly=True)
    with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
        query(copy, "SELECT count(*) FROM t")
    with pytest.raises(OpenError, match="cannot decrypt"):
        get_db(copy, key=OTHER_KEY, readonly=True)
    assert copy.stat().st_mode & 0o777 == 0o600


def test_encrypted_backup_with_a_wrong_or_missing_key_writes_nothing(
    tmp_path: Path, sqlcipher: None
) -> None:
    """Wrong key, no key, a key for a plain file: OpenError naming DB; DEST as it was."""
    source = tmp_path / "app.db"
    make_encrypted(source, RAW_KEY)
    before = source.read_bytes()
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    make_encrypted(old, RAW_KEY, rows=3)
    old_bytes = old.read_bytes()
    for dest in (new, old):
        with pytest.raises(OpenError, match=rf"{source}: cannot decrypt the database"):
            backup_database(source, dest, key=OTHER_KEY)
        with pytest.raises(OpenError, match=rf"{source} is not a usable .* give its key"):
            backup_database(source, dest)
    assert not new.exists()
    assert old.read_bytes() == old_bytes
    plain = tmp_path / "plain.db"
    make_database(plain)
    with pytest.raises(OpenError, match=rf"{plain} is a plain \(unencrypted\) SQLite database"):
        backup_database(plain, new, key=RAW_KEY)
    assert not new.exists()
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        backup_database(source, new, key=b"short")
    assert not new.exists()
    assert source.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_encrypted_backup_replaces_only_a_backup_its_key_opens(
    tmp_path: Path, sqlcipher: None
) -> None:
    """An older backup under the same key is replaced; one under another key is refused."""
    source = tmp_path / "app.db"
    make_encrypted(source, RAW_KEY)
    dest = tmp_path / "copy.db"
    make_encrypted(dest, RAW_KEY, rows=3)
    backup_database(source, dest, key=RAW_KEY)
    assert encrypted_query(dest, RAW_KEY, "SELECT count(*) FROM t") == [(200,)]
    backup_database(source, dest, key=RAW_KEY)  # the nightly backup, again
    assert encrypted_query(dest, RAW_KEY, "SELECT count(*) FROM t") == [(200,)]
    foreign = tmp_path / "foreign.db"
    make_encrypted(foreign, OTHER_KEY, rows=3)
    before = foreign.read_bytes()
    with pytest.raises(BackupError, match="not an SQLite database, nor one that this key"):
        backup_database(source, foreign, key=RAW_KEY)
    assert foreign.read_bytes() == before
    assert not Path(f"{foreign}-wal").exists()
    assert not Path(f"{foreign}-shm").exists()
    assert leftovers(tmp_path) == []


ENCRYPTED_WRITER = """
import sys
from circuitforge_core.db import get_db
db = get_db(sys.argv[1], key=bytes.fromhex(sys.argv[2]), busy_timeout=30)
n = db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
while True:
    n += 1
    db.execute("INSERT INTO t (id, payload) VALUES (?, randomblob(300))", (n,))
    db.commit()
"""


def test_encrypted_backup_holds_every_row_committed_before_it_began(
    tmp_path: Path, sqlcipher: None
) -> None:
    """A stepped copy of an encrypted file with commits between every two steps: no restart,
    no loss, and the copy checks out with the key."""
    source = tmp_path / "app.db"
    make_encrypted(source, RAW_KEY, rows=3000, blob=1000)

    def max_id() -> int:
        return int(encrypted_query(source, RAW_KEY, "SELECT max(id) FROM t")[0][0])  # type: ignore[call-overload]

    first = max_id()
    writer = subprocess.Popen([sys.executable, "-c", ENCRYPTED_WRITER, source, RAW_KEY.hex()])
    try:
        deadline = time.monotonic() + 30
        while max_id() <= first + 50:
            assert writer.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer never wrote"
            time.sleep(0.01)
        before = max_id()
        subprocess.run(
            [
                sys.executable,
                "-c",
                BACKUP_BETWEEN_COMMITS,
                source,
                tmp_path / "copy.db",
                RAW_KEY.hex(),
            ],
            check=True,
            timeout=120,
        )
        assert writer.poll() is None, "the writer stopped during the backup"
        assert max_id() > before
    finally:
        writer.kill()
        writer.wait(timeout=30)
    copy = tmp_path / "copy.db"
    assert encrypted_query(copy, RAW_KEY, "PRAGMA integrity_check") == [("ok",)]
    assert encrypted_query(copy, RAW_KEY, f"SELECT count(*) FROM t WHERE id <= {before}") == [
        (before,)
    ]
    assert KNOWN_PLAINTEXT not in copy.read_bytes()


def test_backup_of_a_damaged_encrypted_database_writes_nothing(
    tmp_path: Path, sqlcipher: None
) -> None:
    """A page that fails its HMAC: BackupError (or a copy error) naming DEST; DEST absent."""
    source = tmp_path / "app.db"
    make_damaged_encrypted(source, RAW_KEY, offset=4096 * 10 + 200)
    with pytest.raises(BackupError, match=rf"{tmp_path / 'copy.db'}.* was not written"):
        backup_database(source, tmp_path / "copy.db", key=RAW_KEY)
    assert not (tmp_path / "copy.db").exists()
    assert leftovers(tmp_path) == []


def test_check_of_an_encrypted_database(tmp_path: Path, sqlcipher: None) -> None:
    """With its key: ok and never written; without it or with another: OpenError naming it."""
    source = tmp_path / "app.db"
    make_encrypted(source, RAW_KEY)
    before = source.read_bytes()
    result = check_database(source, key=RAW_KEY)
    assert result.ok
    assert (result.check, result.integrity, result.foreign_keys) == ("integrity_check", (), ())
    assert check_database(source, quick=True, key=RAW_KEY).ok
    with pytest.raises(OpenError, match=rf"{source} is not a usable .* give its key"):
        check_database(source)
    with pytest.raises(OpenError, match=rf"{source}: cannot decrypt the database"):
        check_database(source, key=OTHER_KEY)
    assert source.read_bytes() == before


def test_check_reports_damage_in_an_encrypted_database(tmp_path: Path, sqlcipher: None) -> None:
    """A damaged page deep in the file, or the first page: findings, not a wrong-key error."""
    middle = tmp_path / "middle.db"
    make_damaged_encrypted(middle, RAW_KEY, offset=4096 * 10 + 200)
    for quick in (False, True):
        result = check_database(middle, quick=quick, key=RAW_KEY)
        assert not result.ok
        assert result.integrity
    first = tmp_path / "first.db"
    make_damaged_encrypted(first, RAW_KEY, offset=200)  # past the salt, inside page 1
    result = check_database(first, key=RAW_KEY)
    assert not result.ok
    assert "the key is right and the file is damaged" in result.integrity[0]
    assert "HMAC verification failed for page 1" in result.integrity
    with pytest.raises(OpenError, match="cannot decrypt"):
        check_database(first, key=OTHER_KEY)  # no page verifies: that is a wrong key
