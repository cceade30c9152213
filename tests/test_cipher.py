"""Encryption at rest: keys, encrypted connections, migrations on them, conversions."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuitforge_core.db import (
    ConnectionPool,
    DBError,
    EncryptionUnavailableError,
    MigrationFailedError,
    OpenError,
    PoolRegistry,
    Settings,
    SettingsError,
    UnsafePathError,
    decrypt_database,
    derive_user_key,
    encrypt_database,
    get_connection,
    get_db,
    migration_status,
    rekey_database,
    run_migrations,
    transaction,
    user_db_path,
    user_key_resolver,
)
from circuitforge_core.db import cipher as cipher_module
from circuitforge_core.db.cipher import key_literal

sqlcipher3 = pytest.importorskip("sqlcipher3")

KNOWN_PLAINTEXT = "KNOWN-PLAINTEXT-7f3a9c"
RAW_KEY = bytes(range(32))
SECRET = "a server secret that is long enough"

KEYS = {
    "quote": "it's",
    "doubled-quotes": "a''b'''",
    "backslashes": "back\\slash\\\\'\\",
    "binary-looking": "\x01\x02\x7f\x1b[0m\t\r\n\xff\xfe",
    "unicode": "ünïcødé 🔑 密钥 \u202e",
    "injection-pragma": "k'; PRAGMA key = 'other'; --",
    "injection-attach": "x'; ATTACH DATABASE 'evil.db' AS evil; --",
    "double-quotes": '"quoted" ""',
    "raw-bytes": RAW_KEY,
    "raw-text": "x'" + RAW_KEY.hex() + "'",
    "derived": derive_user_key(SECRET, "user-1"),
}


def file_bytes(path: Path) -> bytes:
    """The database file with its -wal, as they are on disk."""
    data = path.read_bytes()
    wal = Path(str(path) + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


def write_known_rows(path: Path, key: str | bytes | None) -> None:
    db = get_db(path, key=key)
    try:
        with transaction(db):
            db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            db.executemany(
                "INSERT INTO notes (body) VALUES (?)",
                [(f"{KNOWN_PLAINTEXT} {i}",) for i in range(50)],
            )
    finally:
        db.close()


def read_bodies(path: Path, key: str | bytes | None) -> list[str]:
    db = get_db(path, key=key)
    try:
        return [row[0] for row in db.execute("SELECT body FROM notes ORDER BY id")]
    finally:
        db.close()


# -- keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(KEYS.values()), ids=list(KEYS))
def test_round_trip_with_awkward_keys(db_path: Path, key: str | bytes) -> None:
    """Any key opens what it wrote, nothing else does, and the disk holds no plaintext."""
    write_known_rows(db_path, key)
    assert read_bodies(db_path, key)[0] == f"{KNOWN_PLAINTEXT} 0"
    assert KNOWN_PLAINTEXT.encode() not in file_bytes(db_path)
    assert not (db_path.parent / "evil.db").exists()
    with pytest.raises(OpenError, match="cannot decrypt"):
        get_db(db_path, key="not the key")
    with pytest.raises(OpenError, match="not a usable SQLite database"):
        get_db(db_path)


@given(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1))
def test_key_literal_reads_back_as_exactly_the_key(key: str) -> None:
    """SQLite parses the literal as one string equal to the key: no key can inject SQL."""
    if key[:2] in ("x'", "X'") and key.endswith("'"):
        return  # raw-key spelling, checked separately
    db = sqlite3.connect(":memory:")
    try:
        assert db.execute(f"SELECT {key_literal(key)}").fetchall() == [(key,)]
    finally:
        db.close()


def test_raw_key_matches_sqlcipher_documented_form(db_path: Path) -> None:
    """A bytes key is the raw key of SQLCipher's `PRAGMA key = "x'<hex>'"`, not a passphrase."""
    write_known_rows(db_path, RAW_KEY)
    raw = sqlcipher3.dbapi2.connect(str(db_path))
    try:
        raw.execute(f"PRAGMA key = \"x'{RAW_KEY.hex()}'\"")
        assert raw.execute("SELECT count(*) FROM notes").fetchone() == (50,)
    finally:
        raw.close()
    assert read_bodies(db_path, "x'" + RAW_KEY.hex().upper() + "'")[-1].endswith("49")


@pytest.mark.parametrize(
    ("key", "error", "match"),
    [
        ("", ValueError, "empty"),
        ("a\x00b", ValueError, "NUL"),
        ("lone \udc80 surrogate", ValueError, "Unicode"),
        (b"short", ValueError, "exactly 32 bytes"),
        ("x'" + "Z" * 64 + "'", ValueError, "raw key"),
        ("x'" + "ab" * 31 + "'", ValueError, "raw key"),
        (12345, TypeError, "str .passphrase. or bytes"),
    ],
)
def test_bad_keys_are_refused_before_any_file_exists(
    db_path: Path, key: object, error: type[Exception], match: str
) -> None:
    """A key that cannot be applied faithfully is refused and creates nothing."""
    with pytest.raises(error, match=match):
        get_db(db_path, key=key)  # type: ignore[arg-type]
    assert not db_path.parent.exists()


# -- opening -------------------------------------------------------------------------


def test_encrypted_connection_gets_the_same_pragmas(db_path: Path) -> None:
    """WAL, foreign keys and the other open-time pragmas hold on encrypted files too."""
    db = get_db(db_path, key="k", busy_timeout=2.5, cache_size_kib=1024)
    try:
        assert db.path == str(db_path)
        assert db.busy_timeout == 2.5
        assert db.readonly is False
        assert db.execute("PRAGMA cipher_version").fetchone()[0]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert db.execute("PRAGMA synchronous").fetchone() == (1,)
        assert db.execute("PRAGMA cache_size").fetchone() == (-1024,)
        assert db.execute("PRAGMA temp_store").fetchone() == (2,)
        assert not isinstance(db, sqlite3.Connection)
        assert isinstance(db, sqlcipher3.dbapi2.Connection)
    finally:
        db.close()


def test_implicit_transactions_behave_as_on_plain_connections(db_path: Path) -> None:
    """DML opens BEGIN IMMEDIATE; commit() and rollback() work; DDL does not open one."""
    db = get_db(db_path, key="k")
    try:
        db.execute("CREATE TABLE t (x)")
        assert not db.in_transaction
        db.execute("INSERT INTO t VALUES (1)")
        assert db.in_transaction
        db.rollback()
        db.execute("INSERT INTO t VALUES (2)")
        db.commit()
        assert db.execute("SELECT x FROM t").fetchall() == [(2,)]
    finally:
        db.close()


def test_wrong_key_names_the_file_and_changes_nothing(db_path: Path) -> None:
    """A wrong key raises OpenError naming the file; its bytes and folder stay as they were."""
    write_known_rows(db_path, "right key")
    before = {p.name: p.read_bytes() for p in db_path.parent.iterdir()}
    for readonly in (False, True):
        with pytest.raises(OpenError, match=r"app\.db: cannot decrypt.*not changed") as info:
            get_db(db_path, key="wrong key", readonly=readonly)
        assert info.value.path == str(db_path)
    assert {p.name: p.read_bytes() for p in db_path.parent.iterdir()} == before


def test_plain_file_opened_with_a_key_says_so(db_path: Path) -> None:
    """A key on a plain database is refused with advice, not a generic corruption error."""
    write_known_rows(db_path, None)
    with pytest.raises(OpenError, match=r"plain \(unencrypted\).*cf-db encrypt"):
        get_db(db_path, key="k")
    assert read_bodies(db_path, None)[0].startswith(KNOWN_PLAINTEXT)


def test_open_errors_of_encrypted_files_say_why_in_their_reason(db_path: Path) -> None:
    """OpenError.reason tells a wrong key, a key for a plain file and a missing key apart."""
    write_known_rows(db_path, "right key")
    plain = db_path.with_name("plain.db")
    write_known_rows(plain, None)
    cases = [
        (lambda: get_db(db_path, key="wrong key"), "wrong_key"),
        (lambda: get_db(db_path, key="wrong key", readonly=True), "wrong_key"),
        (lambda: get_db(plain, key="k"), "not_encrypted"),
        (lambda: get_db(db_path), "not_a_database"),
        (lambda: encrypt_database(db_path, "again"), "not_a_database"),
        (lambda: rekey_database(db_path, "wrong key", "new"), "wrong_key"),
        (lambda: encrypt_database(db_path.with_name("missing.db"), "k"), "missing"),
        (lambda: get_db(db_path.with_name("missing.db"), key="k", readonly=True), "missing"),
    ]
    for attempt, reason in cases:
        with pytest.raises(OpenError) as info:
            attempt()
        assert info.value.reason == reason, info.value
    reader = get_db(db_path, key="right key")
    try:
        reader.execute("SELECT count(*) FROM notes").fetchone()
        with pytest.raises(OpenError) as info:
            rekey_database(db_path, "right key", "new")
        assert info.value.reason == "in_use"
    finally:
        reader.close()


def test_the_conversions_keep_their_old_import_path() -> None:
    """encrypt/decrypt/rekey_database still import from cipher, where they used to live."""
    from circuitforge_core.db.cipher import decrypt_database as old_decrypt
    from circuitforge_core.db.cipher import encrypt_database as old_encrypt
    from circuitforge_core.db.cipher import rekey_database as old_rekey

    assert (old_encrypt, old_decrypt, old_rekey) == (
        encrypt_database,
        decrypt_database,
        rekey_database,
    )
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        cipher_module.nothing_here  # noqa: B018


def test_readonly_encrypted_connection_refuses_writes(db_path: Path) -> None:
    """readonly=True works with a key and refuses writes."""
    write_known_rows(db_path, "k")
    db = get_db(db_path, key="k", readonly=True)
    try:
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (50,)
        with pytest.raises(sqlcipher3.dbapi2.OperationalError):
            db.execute("DELETE FROM notes")
    finally:
        db.close()


def test_missing_extra_raises_and_writes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without sqlcipher3 a key raises EncryptionUnavailableError with the install command."""
    monkeypatch.setitem(sys.modules, "sqlcipher3", None)
    with pytest.raises(
        EncryptionUnavailableError, match=r"pip install 'circuitforge-core\[sqlcipher\]'"
    ):
        get_db(db_path, key="k")
    with pytest.raises(EncryptionUnavailableError, match=r"app\.db"):
        get_connection(db_path, key="k")
    with pytest.raises(EncryptionUnavailableError):
        encrypt_database(db_path, "k")
    assert not db_path.parent.exists()


def test_driver_without_sqlcipher_never_writes_plaintext(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 'sqlcipher3' on plain SQLite (which ignores PRAGMA key) is detected; no file is left."""
    impostor = types.ModuleType("sqlcipher3")
    impostor.dbapi2 = sqlite3  # type: ignore[attr-defined]  # real SQLite, no SQLCipher in it
    monkeypatch.setitem(sys.modules, "sqlcipher3", impostor)
    with pytest.raises(EncryptionUnavailableError, match="ignores PRAGMA key"):
        get_db(db_path, key="k")
    assert list(db_path.parent.iterdir()) == []


def test_get_connection_key_encrypts(db_path: Path) -> None:
    """The old get_connection(db_path, key) now opens the file encrypted."""
    db = get_connection(db_path, key="legacy key")
    try:
        assert db.busy_timeout == 30.0
        db.execute("CREATE TABLE t (body TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (KNOWN_PLAINTEXT,))
        db.commit()
    finally:
        db.close()
    assert KNOWN_PLAINTEXT.encode() not in file_bytes(db_path)
    assert read_bodies_from_t(db_path, "legacy key") == [KNOWN_PLAINTEXT]


def read_bodies_from_t(path: Path, key: str) -> list[str]:
    db = get_db(path, key=key)
    try:
        return [row[0] for row in db.execute("SELECT body FROM t")]
    finally:
        db.close()


def test_factory_mixins_carry_over_to_encrypted_connections(db_path: Path) -> None:
    """A factory's mixins come along with key=; methods on the factory itself are refused."""
    from circuitforge_core.db import Connection

    class CountsExecutes:
        def execute(self, sql: str, parameters: object = (), /) -> object:
            self.executed = getattr(self, "executed", 0) + 1
            return super().execute(sql, parameters)  # type: ignore[misc]

    class Counting(CountsExecutes, Connection):
        pass

    class OwnMethod(Connection):
        def ping(self) -> int:
            return 1

    with pytest.raises(TypeError, match=r"OwnMethod\.ping.*mixin"):
        get_db(db_path, key="k", factory=OwnMethod)
    db = get_db(db_path, key="k", factory=Counting)
    try:
        assert isinstance(db, CountsExecutes)
        assert isinstance(db, sqlcipher3.dbapi2.Connection)
        before = db.executed  # type: ignore[attr-defined]
        db.execute("SELECT 1").fetchall()
        assert db.executed == before + 1  # type: ignore[attr-defined]
    finally:
        db.close()


# -- transactions and migrations on encrypted files ----------------------------------


def test_transaction_nests_and_rolls_back_on_encrypted_files(db_path: Path) -> None:
    """transaction() commits, rolls back and nests as savepoints with sqlcipher3 connections."""
    db = get_db(db_path, key="k")
    try:
        db.execute("CREATE TABLE t (x INTEGER)")
        with transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(RuntimeError), transaction(db):
                db.execute("INSERT INTO t VALUES (2)")
                raise RuntimeError("undo the inner block only")
        with pytest.raises(RuntimeError), transaction(db):
            db.execute("INSERT INTO t VALUES (3)")
            raise RuntimeError("undo everything")
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        db.close()


def test_threads_writing_an_encrypted_file_queue_without_errors(db_path: Path) -> None:
    """Writers on their own encrypted connections lose no update and never see 'locked'."""
    setup = get_db(db_path, key=RAW_KEY)
    setup.execute("CREATE TABLE counter (n INTEGER)")
    setup.execute("INSERT INTO counter VALUES (0)")
    setup.commit()
    setup.close()
    threads_n, rounds = 4, 25
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work() -> None:
        db = get_db(db_path, key=RAW_KEY)
        try:
            barrier.wait(timeout=10)
            for _ in range(rounds):
                with transaction(db):
                    (n,) = db.execute("SELECT n FROM counter").fetchone()
                    db.execute("UPDATE counter SET n = ?", (n + 1,))
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    db = get_db(db_path, key=RAW_KEY)
    try:
        assert db.execute("SELECT n FROM counter").fetchone() == (threads_n * rounds,)
    finally:
        db.close()


def test_migrations_run_on_an_encrypted_database(
    db_path: Path, migrations_dir: Path, write_migration
) -> None:  # type: ignore[no-untyped-def]
    """run_migrations applies, records, rebuilds tables with FK checks and reports status."""
    write_migration("001_users.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);")
    write_migration(
        "002_notes.sql",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), "
        "body TEXT);\nINSERT INTO users (name) VALUES ('ada');\n"
        f"INSERT INTO notes (user_id, body) VALUES (1, '{KNOWN_PLAINTEXT}');",
    )
    write_migration(
        "003_rebuild.sql",
        "PRAGMA foreign_keys=OFF;\n"
        "CREATE TABLE users_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '');\n"
        "INSERT INTO users_new SELECT id, name FROM users;\n"
        "DROP TABLE users;\nALTER TABLE users_new RENAME TO users;",
    )
    write_migration("004_vacuum.sql", "-- cf-db: no-transaction\nVACUUM;")
    db = get_db(db_path, key="migration key")
    try:
        assert run_migrations(db, migrations_dir) == [
            "001_users.sql",
            "002_notes.sql",
            "003_rebuild.sql",
            "004_vacuum.sql",
        ]
        assert run_migrations(db, migrations_dir) == []
        assert {s.state for s in migration_status(db, migrations_dir)} == {"applied"}
        assert db.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert db.execute("SELECT body FROM notes").fetchone() == (KNOWN_PLAINTEXT,)
    finally:
        db.close()
    assert KNOWN_PLAINTEXT.encode() not in file_bytes(db_path)


def test_failing_migration_on_an_encrypted_database_rolls_back(
    db_path: Path, migrations_dir: Path, write_migration
) -> None:  # type: ignore[no-untyped-def]
    """A sqlcipher3 error in a migration becomes MigrationFailedError and leaves no trace."""
    write_migration("001_bad.sql", "CREATE TABLE t (x);\nINSERT INTO nowhere VALUES (1);")
    db = get_db(db_path, key="k")
    try:
        with pytest.raises(MigrationFailedError, match="no such table: nowhere") as info:
            run_migrations(db, migrations_dir)
        assert info.value.line == 2
        assert db.execute("SELECT name FROM sqlite_schema WHERE name = 't'").fetchone() is None
        assert [s.state for s in migration_status(db, migrations_dir)] == ["pending"]
    finally:
        db.close()


# -- per-user keys -------------------------------------------------------------------


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    """The HKDF underneath is RFC 5869's (test case 1)."""
    okm = cipher_module._hkdf_sha256(
        bytes([0x0B]) * 22, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_derive_user_key_is_stable_and_per_user() -> None:
    """Same secret and user give the same key forever (pinned); other users get other keys."""
    key = derive_user_key("correct horse battery staple", "user-42")
    assert key.hex() == "6b377ea179571ca2d32428d38f921848c8cb19da3e9ee895cb04f0105df1d20b"
    assert derive_user_key(b"correct horse battery staple", "user-42") == key
    assert derive_user_key("correct horse battery staple", "user-43") != key
    assert derive_user_key("correct horse battery staplf", "user-42") != key
    assert len(key) == 32


@pytest.mark.parametrize(
    ("secret", "user_id", "error"),
    [
        ("short", "u", ValueError),
        (SECRET, "", ValueError),
        (SECRET, "a\x00b", ValueError),
        (SECRET, 42, TypeError),
        (None, "u", TypeError),
    ],
)
def test_derive_user_key_refuses_bad_input(secret: object, user_id: object, error: type) -> None:
    """Weak secrets and empty or NUL-carrying user ids are refused."""
    with pytest.raises(error):
        derive_user_key(secret, user_id)  # type: ignore[arg-type]


# -- conversions ---------------------------------------------------------------------


def build_rich_database(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """A plain database with the kinds of things a product has; returns its table contents."""
    db = get_db(path)
    try:
        db.executescript(
            f"""
            CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE);
            CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id)
                                ON DELETE CASCADE, body TEXT, data BLOB);
            CREATE INDEX notes_by_user ON notes(user_id);
            CREATE VIEW note_counts AS SELECT user_id, count(*) AS n FROM notes GROUP BY user_id;
            CREATE TABLE audit (note_id INTEGER, at TEXT);
            CREATE TRIGGER notes_audit AFTER INSERT ON notes
                BEGIN INSERT INTO audit VALUES (new.id, 'now'); END;
            CREATE VIRTUAL TABLE search USING fts5(body);
            PRAGMA user_version = 7;
            PRAGMA application_id = 1129727810;
            INSERT INTO users (name) VALUES ('ada'), ('grace');
            INSERT INTO search (body) VALUES ('{KNOWN_PLAINTEXT} in fts');
            ANALYZE;
            """
        )
        with transaction(db):
            db.executemany(
                "INSERT INTO notes (user_id, body, data) VALUES (?, ?, ?)",
                [(1 + i % 2, f"{KNOWN_PLAINTEXT} {i}", os.urandom(64)) for i in range(300)],
            )
        return snapshot(db)
    finally:
        db.close()


def snapshot(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
    contents = {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    contents["pragmas"] = [
        db.execute("PRAGMA user_version").fetchone(),
        db.execute("PRAGMA application_id").fetchone(),
    ]
    contents["fts"] = db.execute("SELECT body FROM search WHERE search MATCH 'fts'").fetchall()
    return contents


def snapshot_of(path: Path, key: str | bytes | None) -> dict[str, list[tuple[object, ...]]]:
    db = get_db(path, key=key)
    try:
        return snapshot(db)
    finally:
        db.close()


def test_encrypt_rekey_decrypt_keep_every_row(db_path: Path) -> None:
    """plain -> encrypted -> rekeyed -> plain keeps every row, index, trigger, view and header."""
    original = build_rich_database(db_path)
    assert sum(len(v) for k, v in original.items() if k in ("users", "notes", "audit")) == 602

    rows = encrypt_database(db_path, "first key")
    assert rows >= 602
    assert KNOWN_PLAINTEXT.encode() not in file_bytes(db_path)
    assert snapshot_of(db_path, "first key") == original
    with pytest.raises(OpenError):
        get_db(db_path)

    derived = derive_user_key(SECRET, "user-1")
    assert rekey_database(db_path, "first key", derived) == rows
    with pytest.raises(OpenError, match="cannot decrypt"):
        get_db(db_path, key="first key")
    assert snapshot_of(db_path, derived) == original

    assert decrypt_database(db_path, derived) == rows
    assert snapshot_of(db_path, None) == original
    assert KNOWN_PLAINTEXT.encode() in db_path.read_bytes()
    leftovers = sorted(p.name for p in db_path.parent.iterdir())
    assert leftovers == ["app.db"]


def test_converted_file_is_in_wal_mode_and_keeps_its_permissions(db_path: Path) -> None:
    """The new file replaces the old one with the same mode bits and WAL journal."""
    write_known_rows(db_path, None)
    os.chmod(db_path, 0o600)
    encrypt_database(db_path, "k")
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    assert db_path.read_bytes()[:16] != b"SQLite format 3\x00"
    raw = sqlcipher3.dbapi2.connect(str(db_path))
    try:
        raw.execute("PRAGMA key = 'k'")
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_conversion_refuses_wrong_or_mismatched_keys_and_changes_nothing(db_path: Path) -> None:
    """Wrong old key, encrypting twice, decrypting a plain file: clear errors, file untouched."""
    write_known_rows(db_path, "k")
    before = db_path.read_bytes()
    with pytest.raises(OpenError, match="cannot decrypt"):
        rekey_database(db_path, "wrong", "new")
    with pytest.raises(OpenError, match=r"encrypted \(give its key"):
        encrypt_database(db_path, "again")
    with pytest.raises(OpenError, match="does not exist"):
        encrypt_database(db_path.with_name("missing.db"), "k")
    with pytest.raises(ValueError, match="empty"):
        rekey_database(db_path, "k", "")
    assert db_path.read_bytes() == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["app.db"]

    plain = db_path.with_name("plain.db")
    write_known_rows(plain, None)
    with pytest.raises(OpenError, match="plain"):
        decrypt_database(plain, "k")


def test_conversion_refuses_a_database_in_use(db_path: Path) -> None:
    """While another connection has the file open, rekey refuses and the data stays readable."""
    write_known_rows(db_path, "k")
    reader = get_db(db_path, key="k")
    try:
        reader.execute("SELECT count(*) FROM notes").fetchone()
        with pytest.raises(OpenError, match="in use"):
            rekey_database(db_path, "k", "new")
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        reader.close()
    assert len(read_bodies(db_path, "k")) == 50
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["app.db"]


def test_conversion_refuses_a_plain_database_open_in_another_process(db_path: Path) -> None:
    """A service process holding the plain file open makes encrypt refuse."""
    write_known_rows(db_path, None)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from circuitforge_core.db import get_db
                db = get_db({str(db_path)!r})
                db.execute("SELECT count(*) FROM notes").fetchone()
                print("ready", flush=True)
                sys.stdin.read()
                db.close()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(OpenError, match="in use"):
            encrypt_database(db_path, "k")
    finally:
        holder.communicate("", timeout=30)
    assert read_bodies(db_path, None)[0].startswith(KNOWN_PLAINTEXT)


def test_failure_before_the_rename_leaves_the_original_and_no_temp_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the final rename fails, the original is intact, still WAL, and the copy is gone."""
    write_known_rows(db_path, None)

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cipher_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        encrypt_database(db_path, "k")
    monkeypatch.undo()
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["app.db"]
    assert len(read_bodies(db_path, None)) == 50
    db = get_db(db_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


def test_rows_left_in_the_wal_by_a_crash_are_converted(db_path: Path) -> None:
    """A process killed with rows only in its -wal: encrypt checkpoints them first."""
    write_known_rows(db_path, None)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, signal
                from circuitforge_core.db import get_db
                db = get_db({str(db_path)!r})
                db.execute("PRAGMA wal_autocheckpoint=0")
                db.execute("INSERT INTO notes (body) VALUES ('only in the wal')")
                db.commit()
                os.kill(os.getpid(), signal.SIGKILL)
                """
            ),
        ],
        timeout=60,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL
    assert os.path.getsize(str(db_path) + "-wal") > 0
    encrypt_database(db_path, "k")
    assert read_bodies(db_path, "k")[-1] == "only in the wal"
    assert not Path(str(db_path) + "-wal").exists()


def _encrypt_and_kill_when(db_path: Path, stage: Callable[[], bool]) -> None:
    """Run encrypt_database in a child and SIGKILL it as soon as ``stage()`` holds (or it ends)."""
    script = (
        "from circuitforge_core.db import encrypt_database; "
        f"encrypt_database({str(db_path)!r}, 'k')"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        while child.poll() is None and not stage():
            time.sleep(0.0005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_during_encrypt_leaves_old_or_new_database(db_path: Path) -> None:
    """Killed while its copy is built, or after the rename: the whole plain or encrypted file."""
    db = get_db(db_path)
    with transaction(db):
        db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany(
            "INSERT INTO big (body) VALUES (?)", [(f"{KNOWN_PLAINTEXT} {i}",) for i in range(30000)]
        )
    db.close()

    def copies() -> list[Path]:
        return [p for p in db_path.parent.iterdir() if p.name.startswith(".app.db.cf-db-")]

    def encrypted() -> bool:
        with open(db_path, "rb") as f:
            return f.read(16) != b"SQLite format 3\x00"

    building, renamed = "while the copy is built", "after the rename"
    stages = {building: copies, renamed: encrypted}
    landed = dict.fromkeys(stages, False)
    for _attempt in range(20):  # each stage is waited for, but the child may outrun the kill
        for stage, reached in stages.items():
            _encrypt_and_kill_when(db_path, reached)
            key = "k" if encrypted() else None
            left = copies()
            assert key is None or not left, f"{left} left beside an already encrypted file"
            landed[stage] |= bool(left) if stage == building else key == "k"
            check = get_db(db_path, key=key)
            try:
                assert check.execute("SELECT count(*) FROM big").fetchone() == (30000,)
                assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            finally:
                check.close()
            if key is not None:
                decrypt_database(db_path, "k")  # also removes copies a killed run left
        if all(landed.values()):
            break
    assert landed == {building: True, renamed: True}
    encrypt_database(db_path, "k")
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["app.db"]


def test_conversion_errors_are_db_errors(db_path: Path) -> None:
    """Conversion failures raise DBError subclasses that name the file."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DBError, match=r"app\.db"):
        encrypt_database(db_path, "k")
    assert db_path.read_bytes() == b"not a database at all" * 100


# -- the command line ----------------------------------------------------------------


def test_cli_encrypt_rekey_decrypt_with_keys_from_env_and_files(
    db_path: Path,
    tmp_path: Path,
    migrations_dir: Path,
    write_migration,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """cf-db encrypt/rekey/decrypt and keyed migrate/status/verify, keys never on argv."""
    from circuitforge_core.db.cli import main

    write_migration(
        "001_notes.sql",
        f"CREATE TABLE notes (body TEXT);\nINSERT INTO notes VALUES ('{KNOWN_PLAINTEXT}');",
    )
    assert main(["migrate", str(db_path), str(migrations_dir)]) == 0
    monkeypatch.setenv("APP_DB_KEY", "it's the \\ key")
    key_file = tmp_path / "new.key"
    key_file.write_text("x'" + RAW_KEY.hex() + "'\n", encoding="utf-8")

    assert main(["encrypt", str(db_path), "--key-env", "APP_DB_KEY"]) == 0
    assert "encrypted" in capsys.readouterr().out
    assert KNOWN_PLAINTEXT.encode() not in file_bytes(db_path)
    assert main(["status", str(db_path), str(migrations_dir), "--key-env", "APP_DB_KEY"]) == 0

    argv = ["rekey", str(db_path), "--key-env", "APP_DB_KEY", "--new-key-file", str(key_file)]
    assert main(argv) == 0
    assert read_bodies_from_notes(db_path, RAW_KEY) == [KNOWN_PLAINTEXT]
    write_migration("002_more.sql", "ALTER TABLE notes ADD COLUMN at TEXT;")
    assert main(["migrate", str(db_path), str(migrations_dir), "--key-file", str(key_file)]) == 0
    assert main(["verify", str(db_path), str(migrations_dir), "--key-file", str(key_file)]) == 0

    monkeypatch.setattr(sys, "stdin", open(key_file, encoding="utf-8"))  # noqa: SIM115
    try:
        assert main(["decrypt", str(db_path), "--key-file", "-"]) == 0
    finally:
        sys.stdin.close()
    assert read_bodies_from_notes(db_path, None) == [KNOWN_PLAINTEXT]


def read_bodies_from_notes(path: Path, key: str | bytes | None) -> list[str]:
    db = get_db(path, key=key)
    try:
        return [row[0] for row in db.execute("SELECT body FROM notes")]
    finally:
        db.close()


def test_cli_key_errors_exit_2_and_change_nothing(
    db_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No key source, an unset variable, an empty file or a wrong key: exit 2, file untouched."""
    from circuitforge_core.db.cli import main

    write_known_rows(db_path, "k")
    before = db_path.read_bytes()
    assert main(["encrypt", str(db_path)]) == 2
    assert "--key-env" in capsys.readouterr().err
    assert main(["decrypt", str(db_path), "--key-env", "CF_TEST_UNSET_KEY"]) == 2
    assert "CF_TEST_UNSET_KEY is not set" in capsys.readouterr().err
    empty = tmp_path / "empty.key"
    empty.write_text("\n", encoding="utf-8")
    assert main(["decrypt", str(db_path), "--key-file", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    monkeypatch.setenv("WRONG_KEY", "wrong")
    assert main(["decrypt", str(db_path), "--key-env", "WRONG_KEY"]) == 2
    assert "cannot decrypt" in capsys.readouterr().err
    assert db_path.read_bytes() == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["app.db"]


# -- pools and the registry ----------------------------------------------------------


def test_pool_opens_encrypted_connections_and_still_closes_cursors(
    db_path: Path, migrations_dir: Path, write_migration
) -> None:  # type: ignore[no-untyped-def]
    """ConnectionPool(key=) migrates, writes encrypted, and closes leftover cursors at check-in."""
    write_migration("001_notes.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);")
    with ConnectionPool(db_path, key=RAW_KEY, migrations=migrations_dir) as pool:
        with pool.connection() as db:
            assert isinstance(db, sqlcipher3.dbapi2.Connection)
            with transaction(db):
                db.executemany(
                    "INSERT INTO notes (body) VALUES (?)", [(KNOWN_PLAINTEXT,), ("second",)]
                )
            left_open = db.execute("SELECT body FROM notes")
            left_open.fetchone()
        with pytest.raises(sqlcipher3.dbapi2.ProgrammingError):
            left_open.fetchone()  # closed by the check-in, so it pins no WAL snapshot
        with pool.connection() as db:
            db.execute("INSERT INTO notes (body) VALUES ('never committed')")
        with pytest.raises(sqlcipher3.dbapi2.OperationalError), pool.connection() as db:
            db.execute("SELECT * FROM nowhere")
        with pool.connection() as db:
            assert db.execute("SELECT count(*) FROM notes").fetchone() == (2,)
        assert pool.stats().rollbacks_on_return == 1
    assert KNOWN_PLAINTEXT.encode() not in file_bytes(db_path)
    assert read_bodies(db_path, RAW_KEY) == [KNOWN_PLAINTEXT, "second"]


def test_pool_asks_its_key_resolver_for_every_new_connection(db_path: Path) -> None:
    """A callable key is called with the file's path each time a connection is opened."""
    asked: list[str] = []

    def resolver(path: str) -> bytes:
        asked.append(path)
        return RAW_KEY

    with (
        ConnectionPool(db_path, key=resolver, max_size=2) as pool,
        pool.connection() as first,
        pool.connection() as second,
    ):
        first.execute("CREATE TABLE t (x)")
        first.commit()
        assert second.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert asked == [str(db_path), str(db_path)]


def test_registry_opens_each_users_file_with_that_users_key(
    tmp_path: Path, migrations_dir: Path, write_migration
) -> None:  # type: ignore[no-untyped-def]
    """PoolRegistry(key=user_key_resolver(...)): per-user keys, no plaintext, no key mix-up."""
    write_migration("001_notes.sql", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);")
    root = tmp_path / "data"
    root.mkdir()
    resolver = user_key_resolver(root, SECRET)
    paths = {user: user_db_path(root, user, "app.db") for user in ("alice", "bob")}
    with PoolRegistry(key=resolver, migrations=migrations_dir) as registry:
        for user, path in paths.items():
            with registry.connection(path) as db, transaction(db):
                db.execute("INSERT INTO notes (body) VALUES (?)", (f"{KNOWN_PLAINTEXT} {user}",))
        stray = tmp_path / "elsewhere" / "app.db"
        with (
            pytest.raises(UnsafePathError, match="not a per-user database"),
            registry.connection(stray),
        ):
            pass
        with pytest.raises(UnsafePathError), registry.connection(root / "app.db"):
            pass
        assert registry.drop_database(paths["bob"])
    assert not stray.exists()
    alice = derive_user_key(SECRET, "alice")
    assert read_bodies(paths["alice"], alice) == [f"{KNOWN_PLAINTEXT} alice"]
    assert KNOWN_PLAINTEXT.encode() not in file_bytes(paths["alice"])
    with pytest.raises(OpenError, match="cannot decrypt"):
        get_db(paths["alice"], key=derive_user_key(SECRET, "bob"))


def test_rotating_a_users_key_behind_a_registry(tmp_path: Path) -> None:
    """evict(), rekey_database(), then a registry with the new secret reads every row."""
    root = tmp_path / "data"
    root.mkdir()
    path = user_db_path(root, "alice", "app.db")
    new_secret = "the next server secret, rotated"
    with PoolRegistry(key=user_key_resolver(root, SECRET)) as registry:
        with registry.connection(path) as db:
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()
        with pytest.raises(OpenError, match="in use"):
            rekey_database(path, derive_user_key(SECRET, "alice"), b"\x00" * 32)
        registry.evict(path)
        rekey_database(path, derive_user_key(SECRET, "alice"), derive_user_key(new_secret, "alice"))
    with (
        PoolRegistry(key=user_key_resolver(root, new_secret)) as registry,
        registry.connection(path) as db,
    ):
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_settings_read_the_server_secret_and_never_show_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CF_SERVER_SECRET is read once, kept out of repr, and a weak one is refused."""
    assert Settings.from_env().server_secret is None
    monkeypatch.setenv("CF_SERVER_SECRET", SECRET)
    settings = Settings.from_env()
    assert settings.server_secret == SECRET
    assert SECRET not in repr(settings)
    monkeypatch.setenv("CF_SERVER_SECRET", "short")
    with pytest.raises(SettingsError, match="CF_SERVER_SECRET"):
        Settings.from_env()
    with pytest.raises(ValueError, match="at least 16"):
        user_key_resolver("/srv/data", "short")
    with pytest.raises(SettingsError, match="CF_SERVER_SECRET"):
        user_key_resolver("/srv/data", None)  # type: ignore[arg-type]
