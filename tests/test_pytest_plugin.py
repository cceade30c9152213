"""The pytest plugin, run as products run it: inner pytest sessions (pytester) on real files."""

from __future__ import annotations

import textwrap

import pytest

GOOD_MIGRATIONS = {
    "001_notes.sql": (
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL);"
    ),
    "002_tags.sql": (
        "CREATE TABLE IF NOT EXISTS tags (id INTEGER PRIMARY KEY,"
        " note_id INTEGER NOT NULL REFERENCES notes(id), tag TEXT);"
    ),
}


def write_folder(pytester: pytest.Pytester, name: str, files: dict[str, str]) -> None:
    folder = pytester.path / name
    folder.mkdir()
    for file_name, text in files.items():
        (folder / file_name).write_text(text, encoding="utf-8")


def ini(pytester: pytest.Pytester, **options: object) -> None:
    lines = []
    for key, value in options.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        lines.append(f"{key} = {value}")
    pytester.makeini("[pytest]\n" + "\n".join(lines) + "\n")


def test_a_suite_that_does_not_use_it_sees_nothing(pytester: pytest.Pytester) -> None:
    """No option, no fixture requested: no extra test, no file written, nothing configured."""
    pytester.makepyfile("def test_plain(): assert 1 + 1 == 2")
    before = sorted(p.name for p in pytester.path.iterdir())
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*migration check*")
    assert sorted(p.name for p in pytester.path.iterdir()) == before


@pytest.mark.slow
def test_the_plugin_is_loaded_through_its_entry_point(pytester: pytest.Pytester) -> None:
    """A fresh interpreter finds it by the pytest11 entry point and lists its fixtures."""
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(["*cf_db*", "*cf_db_path*", "*cf_db_cloud*"])
    assert result.ret == 0


def test_cf_db_is_a_migrated_temporary_database(pytester: pytest.Pytester) -> None:
    """The ini option names the folder; each test gets its own migrated file."""
    write_folder(pytester, "migrations", GOOD_MIGRATIONS)
    ini(pytester, cf_db_migrations="migrations")
    pytester.makepyfile(
        """
        seen = []

        def test_migrated(cf_db, cf_db_path):
            names = [r[0] for r in cf_db.execute("SELECT name FROM _migrations ORDER BY name")]
            assert names == ["001_notes.sql", "002_tags.sql"]
            cf_db.execute("INSERT INTO notes (title) VALUES ('x')")
            cf_db.commit()
            assert cf_db.path == str(cf_db_path)
            seen.append(cf_db_path)

        def test_fresh_each_time(cf_db, cf_db_path):
            assert cf_db.execute("SELECT count(*) FROM notes").fetchone()[0] == 0
            assert cf_db_path != seen[0]
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_fixture_override_and_marker_pick_other_folders(pytester: pytest.Pytester) -> None:
    """A conftest override of cf_db_migrations, and the cf_db_migrations marker, win."""
    write_folder(pytester, "one", {"001_a.sql": "CREATE TABLE a (x);"})
    write_folder(pytester, "two", {"001_b.sql": "CREATE TABLE b (x);"})
    pytester.makeconftest(
        """
        import pathlib
        import pytest

        @pytest.fixture
        def cf_db_migrations(request):
            marker = request.node.get_closest_marker("cf_db_migrations")
            folder = marker.args[0] if marker else "one"
            return pathlib.Path(request.config.rootpath) / folder
        """
    )
    pytester.makepyfile(
        """
        import pytest

        def tables(db):
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return [name for (name,) in rows if not name.startswith("_")]

        def test_override(cf_db):
            assert tables(cf_db) == ["a"]

        @pytest.mark.cf_db_migrations("two")
        def test_marker(cf_db):
            assert tables(cf_db) == ["b"]
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_marker_alone_names_the_folder(pytester: pytest.Pytester) -> None:
    """Without an override, the plugin's own fixture honours the marker, relative to the ini."""
    write_folder(pytester, "two", {"001_b.sql": "CREATE TABLE b (x);"})
    ini(pytester)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cf_db_migrations("two")
        def test_marker(cf_db):
            assert cf_db.execute("SELECT count(*) FROM b").fetchone() == (0,)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_no_folder_configured_says_how_to_configure_it(pytester: pytest.Pytester) -> None:
    """A test asking for cf_db without any folder errors with the three ways to give one."""
    pytester.makepyfile("def test_x(cf_db): pass")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no migrations folder*cf_db_migrations*"])


def test_cloud_fixture_gives_each_user_a_migrated_file(pytester: pytest.Pytester) -> None:
    """cf_db_cloud: a data root in the environment, per-user files, as_user sets request_db."""
    write_folder(pytester, "migrations", GOOD_MIGRATIONS)
    ini(pytester, cf_db_migrations="migrations", cf_db_product_path="kiwi/kiwi.db")
    pytester.makepyfile(
        """
        import os
        from circuitforge_core.db import Settings, current_db_path, get_db

        def test_cloud(cf_db_cloud):
            settings = Settings.from_env()
            assert settings.cloud_mode and settings.data_root == cf_db_cloud.root
            with cf_db_cloud.as_user("alice") as alice:
                assert current_db_path() == str(alice)
                assert alice == cf_db_cloud.root / "alice" / "kiwi" / "kiwi.db"
                with cf_db_cloud.registry.connection(current_db_path()) as db:
                    db.execute("INSERT INTO notes (title) VALUES ('hers')")
                    db.commit()
            with cf_db_cloud.connection("bob") as db:
                assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)
            db = get_db(cf_db_cloud.path("alice"))
            assert db.execute("SELECT title FROM notes").fetchall() == [("hers",)]
            db.close()

        def test_environment_restored():
            assert "CLOUD_DATA_ROOT" not in os.environ
        """
    )
    pytester.runpytest("-W", "error").assert_outcomes(passed=2)


BAD_MIGRATIONS = {
    **GOOD_MIGRATIONS,
    "003_owner.sql": "ALTER TABLE notes ADD COLUMN owner TEXT NOT NULL;",
}


def test_ini_option_adds_one_passing_check(pytester: pytest.Pytester) -> None:
    """cf_db_check_migrations = true: one more test, which passes on a sound folder."""
    write_folder(pytester, "migrations", GOOD_MIGRATIONS)
    ini(pytester, cf_db_migrations="migrations", cf_db_check_migrations=True)
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*cf-db migration check PASSED*"])


def test_ini_check_fails_naming_the_file_and_why(pytester: pytest.Pytester) -> None:
    """A file that only fails once tables hold rows fails the check, with the reason."""
    write_folder(pytester, "migrations", BAD_MIGRATIONS)
    ini(pytester, cf_db_migrations="migrations", cf_db_check_migrations=True)
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*003_owner.sql, line 1: runs on an empty database but fails on one holding rows*"]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_ini_check_can_be_deselected_and_stays_out_of_focused_runs(
    pytester: pytest.Pytester,
) -> None:
    """-k deselects it like any test; naming a test file runs only that file's tests."""
    write_folder(pytester, "migrations", BAD_MIGRATIONS)
    ini(pytester, cf_db_migrations="migrations", cf_db_check_migrations=True)
    test_file = pytester.makepyfile("def test_plain(): pass")
    pytester.runpytest("-k", "not migration").assert_outcomes(passed=1, deselected=1)
    pytester.runpytest(str(test_file)).assert_outcomes(passed=1)
    pytester.runpytest(str(pytester.path)).assert_outcomes(passed=1, failed=1)


def test_ini_options_allow_row_loss_and_scope_reruns(pytester: pytest.Pytester) -> None:
    """cf_db_allow_row_loss lists intended deletions; cf_db_rerun_check narrows the rerun test."""
    files = {
        "001_notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT);",
        "002_purge.sql": "DELETE FROM notes;",
        "003_two.sql": "CREATE TABLE a (x TEXT);\nCREATE TABLE b (y TEXT);",
    }
    write_folder(pytester, "migrations", files)
    ini(pytester, cf_db_migrations="migrations", cf_db_check_migrations=True)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*002_purge.sql: loses rows*", "*003_two.sql*cannot run again*"])
    pytester.makeini(
        textwrap.dedent(
            """
            [pytest]
            cf_db_migrations = migrations
            cf_db_check_migrations = true
            cf_db_allow_row_loss =
                002_purge.sql
            cf_db_rerun_check = no-transaction
            """
        )
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_marker_runs_the_check_as_that_test(pytester: pytest.Pytester) -> None:
    """@pytest.mark.cf_db_check_migrations(folder) fails the marked test on a bad folder."""
    write_folder(pytester, "good", GOOD_MIGRATIONS)
    write_folder(pytester, "bad", BAD_MIGRATIONS)
    ini(pytester)
    pytester.makepyfile(
        """
        import pytest

        body_ran = []

        @pytest.mark.cf_db_check_migrations("good")
        def test_good():
            body_ran.append(True)

        @pytest.mark.cf_db_check_migrations(folder="bad", rerun="off")
        def test_bad():
            body_ran.append(True)

        def test_bodies():
            assert body_ran == [True]
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_bad*", "*003_owner.sql*fails on one holding rows*"])


def test_bad_rerun_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """An unknown cf_db_rerun_check value is named, with the values it may take."""
    write_folder(pytester, "migrations", GOOD_MIGRATIONS)
    ini(pytester, cf_db_migrations="migrations", cf_db_check_migrations=True, cf_db_rerun_check="x")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cf_db_rerun_check must be all, no-transaction or off*"])
