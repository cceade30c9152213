"""The WAL-reset warning: once per process and library, readable where nothing set up logging,
silenced by CF_DB_ACCEPT_WAL_RESET_BUG, and what it tells people to do.

Most tests run a real child process, because "once per process" is about processes. The child
reports an affected library (``sqlite3.sqlite_version = "3.40.1"``) whatever this machine has,
so the tests mean the same on a fixed SQLite and on the bundled one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from circuitforge_core.db import Settings, SettingsError, wal_reset

# Imports circuitforge_core.db before sqlite3, as the bundled-SQLite switch requires.
AFFECTED = """\
import logging, sys
import circuitforge_core.db as cfdb
import sqlite3
sqlite3.sqlite_version = "3.40.1"  # an affected library, whatever this machine links
"""


SILENCE = "  To accept the risk and silence this warning, set CF_DB_ACCEPT_WAL_RESET_BUG=1."


def run_child(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CF_DB_ACCEPT_WAL_RESET_BUG"}
    return subprocess.run(
        [sys.executable, "-c", AFFECTED + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ | (env or {}),
        check=False,
    )


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "has the WAL-reset bug" in line]


def test_text_says_risk_exposure_ways_out_and_how_to_silence() -> None:
    """One record of a few lines: the bug and its link, who is exposed, fixes, the setting."""
    text = wal_reset.warning_text("3.40.1", module_name="sqlite3")
    lines = text.splitlines()
    assert 4 <= len(lines) <= 6
    assert lines[0].startswith("SQLite 3.40.1 (linked by this Python's sqlite3 module)")
    assert "https://sqlite.org/wal.html#walresetbug" in lines[0]
    assert "two connections write and checkpoint" in lines[0]
    assert "pooled or multi-worker server" in text
    assert "one connection used by one thread is not" in text
    assert "pip install 'circuitforge-core[bundled-sqlite]'" in text
    assert "CF_DB_SQLITE=bundled" in text
    assert "Debian 12 or 13" in text
    assert (
        lines[-1]
        == "  To accept the risk and silence this warning, set CF_DB_ACCEPT_WAL_RESET_BUG=1."
    )


def test_ways_out_follow_the_library_in_use() -> None:
    """pysqlite3-binary and sqlcipher3 each get their own upgrade; no bundled switch for them."""
    pysqlite = wal_reset.warning_text("3.51.1", module_name="pysqlite3")
    assert "(bundled in pysqlite3)" in pysqlite
    assert "pip uninstall pysqlite3-binary" in pysqlite
    assert "CF_DB_SQLITE" not in pysqlite
    cipher = wal_reset.warning_text("3.51.1", module_name="sqlcipher3")
    assert "(inside sqlcipher3, for encrypted databases)" in cipher
    assert "sqlcipher3>=0.6.4" in cipher
    assert "CF_DB_ACCEPT_WAL_RESET_BUG=1" in cipher


def test_warned_once_per_process_however_many_databases(tmp_path: Path) -> None:
    """53 backups of 53 users' files, pools and plain opens: one warning, one library line."""
    (tmp_path / "backup").mkdir()
    result = run_child(
        f"""
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        root = {str(tmp_path)!r}
        for n in range(53):
            db = cfdb.get_db(f"{{root}}/user{{n}}/app.db")
            db.execute("CREATE TABLE t (x)")
            db.commit()
            db.close()
            cfdb.backup_database(f"{{root}}/user{{n}}/app.db", f"{{root}}/backup/{{n}}.db")
        with cfdb.PoolRegistry() as registry:
            with registry.connection(f"{{root}}/user0/app.db") as db:
                db.execute("SELECT 1")
        """
    )
    assert result.returncode == 0, result.stderr
    assert len(warnings_in(result.stderr)) == 1, result.stderr
    assert result.stderr.count("SQLite library 3.40.1, from ") == 1
    assert result.stderr.count("WARNING ") == 1


def test_accepting_the_risk_silences_it(tmp_path: Path) -> None:
    """CF_DB_ACCEPT_WAL_RESET_BUG=1: no warning; an INFO line says the risk is accepted."""
    code = f"""
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        cfdb.get_db({str(tmp_path / "app.db")!r}).close()
        """
    result = run_child(code, env={"CF_DB_ACCEPT_WAL_RESET_BUG": "1"})
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    assert "INFO SQLite 3.40.1 (" in result.stderr
    assert "the risk is accepted (CF_DB_ACCEPT_WAL_RESET_BUG=1)" in result.stderr


def test_an_unusable_acceptance_value_is_refused(tmp_path: Path) -> None:
    """CF_DB_ACCEPT_WAL_RESET_BUG=maybe raises SettingsError naming the variable."""
    code = f"""
        try:
            cfdb.get_db({str(tmp_path / "app.db")!r})
        except cfdb.SettingsError as exc:
            print(exc)
        """
    result = run_child(code, env={"CF_DB_ACCEPT_WAL_RESET_BUG": "maybe"})
    assert "CF_DB_ACCEPT_WAL_RESET_BUG='maybe' is neither on nor off" in result.stdout


def test_without_logging_set_up_the_warning_is_a_log_line(tmp_path: Path) -> None:
    """No handler anywhere: the one record still shows its level and source, not a bare line."""
    result = run_child(f"cfdb.get_db({str(tmp_path / 'app.db')!r}).close()")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("WARNING: circuitforge_core.db: SQLite 3.40.1 (")
    assert (
        lines[-1]
        == "  To accept the risk and silence this warning, set CF_DB_ACCEPT_WAL_RESET_BUG=1."
    )
    assert len(warnings_in(result.stderr)) == 1


def test_logging_turned_down_for_the_package_hides_it(tmp_path: Path) -> None:
    """An app that set the package's logger to ERROR sees nothing, handler or not."""
    result = run_child(
        f"""
        logging.getLogger("circuitforge_core.db").setLevel(logging.ERROR)
        cfdb.get_db({str(tmp_path / "app.db")!r}).close()
        """
    )
    assert result.returncode == 0
    assert result.stderr == ""


def test_each_library_is_warned_about_once(tmp_path: Path) -> None:
    """The SQLite of sqlite3 and the one inside sqlcipher3 get one warning each, no more."""
    result = run_child(
        """
        from circuitforge_core.db import wal_reset
        for _ in range(3):
            wal_reset.warn_once("sqlcipher3", "3.51.1", module_name="sqlcipher3")
            wal_reset.warn_once("sqlite3", "3.40.1", module_name=sqlite3.__name__)
        wal_reset.warn_once("sqlite3", "3.53.4", module_name="pysqlite3")
        """
    )
    found = warnings_in(result.stderr)
    assert len(found) == 2, result.stderr
    assert "SQLite 3.51.1 (inside sqlcipher3, for encrypted databases)" in found[0]
    assert "SQLite 3.40.1 (" in found[1]


def test_a_fixed_library_gets_no_warning() -> None:
    """3.51.3 and later: nothing is said, even the first time."""
    result = run_child(
        """
        from circuitforge_core.db import wal_reset
        wal_reset.warn_once("sqlite3", "3.51.3", module_name="sqlite3")
        wal_reset.warn_once("sqlcipher3", "3.53.4", module_name="sqlcipher3")
        """
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_sqlcipher3_0_6_4_is_silent(tmp_path: Path) -> None:
    """The SQLite inside sqlcipher3 0.6.4 is 3.53: its open logs INFO only."""
    pytest.importorskip("sqlcipher3")
    result = run_child(
        f"""
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        sqlite3.sqlite_version = "3.53.4"  # this test is about the other library
        for _ in range(3):
            cfdb.get_db({str(tmp_path / "secret.db")!r}, key="passphrase").close()
        """
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    assert result.stderr.count("INFO SQLCipher ") == 1


def test_uvicorn_shows_it_once_as_a_warning(tmp_path: Path) -> None:
    """A real uvicorn serving an app that configured no logging: one WARNING record with its
    source, among uvicorn's own lines, however many connections the app opens."""
    pytest.importorskip("uvicorn")
    (tmp_path / "app.py").write_text(
        AFFECTED
        + textwrap.dedent(
            f"""
            import asyncio, signal

            for _ in range(5):
                cfdb.get_db({str(tmp_path / "app.db")!r}).close()

            async def app(scope, receive, send):
                assert scope["type"] == "lifespan"
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        cfdb.get_db({str(tmp_path / "app.db")!r}).close()
                        await send({{"type": "lifespan.startup.complete"}})
                        # Stop by ourselves: uvicorn shuts down on SIGINT.
                        asyncio.get_running_loop().call_later(
                            0.2, signal.raise_signal, signal.SIGINT
                        )
                    elif message["type"] == "lifespan.shutdown":
                        await send({{"type": "lifespan.shutdown.complete"}})
                        return
            """
        ),
        encoding="utf-8",
    )
    environ = {k: v for k, v in os.environ.items() if k != "CF_DB_ACCEPT_WAL_RESET_BUG"}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "app:app"),
            *("--host", "127.0.0.1", "--port", "0", "--lifespan", "on"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        check=False,
    )
    assert "Application startup complete." in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if "has the WAL-reset bug" in line]
    assert len(starts) == 1, result.stderr
    assert lines[starts[0]].startswith("WARNING: circuitforge_core.db: SQLite 3.40.1 (")
    assert "CF_DB_ACCEPT_WAL_RESET_BUG=1" in "\n".join(lines[starts[0] : starts[0] + 6])


# -- the settings ------------------------------------------------------------------------


def test_settings_read_the_acknowledgement() -> None:
    """accept_wal_reset_bug is off by default and read from CF_DB_ACCEPT_WAL_RESET_BUG."""
    assert Settings.from_env({}).accept_wal_reset_bug is False
    assert Settings.from_env({"CF_DB_ACCEPT_WAL_RESET_BUG": "yes"}).accept_wal_reset_bug is True
    with pytest.raises(SettingsError, match="CF_DB_ACCEPT_WAL_RESET_BUG='2'"):
        Settings.from_env({"CF_DB_ACCEPT_WAL_RESET_BUG": "2"})
