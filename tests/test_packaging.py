"""Packaging: the version, the sdist, and how a product with circuitforge-core gets this package.

Products have the published circuitforge-core installed: one distribution that owns
circuitforge_core/__init__.py, an old db/ and other subpackages. This package reaches them as
part of a circuitforge-core release made by tools/export_to_core.py. These tests build a
stand-in for the published 0.21.0, install it in a fresh virtual environment, export into a copy
of its checkout, upgrade, and check that the product keeps its other subpackages and gets the new
db. Everything is built offline with this environment's setuptools (no build isolation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from circuitforge_core.db.cli import main as cf_db

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "export_to_core.py"
PUBLISHED = Version("0.21.0")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def run(args: list[str | Path], *, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run a command offline, with none of this process's Python path; return its stdout.

    Nor its CF_DB_SQLITE: the product's environment has no pysqlite3.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CF_DB_SQLITE")
        and not key.startswith("PIP_")
    }
    env |= {
        "PIP_CONFIG_FILE": os.devnull,  # no index or find-links from the machine's pip config
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def export(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run tools/export_to_core.py with this interpreter."""
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- the version ---------------------------------------------------------------------


def test_version_sorts_after_the_published_release_and_is_shown_alike(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """pyproject's version sorts after 0.21.0 as a pre-release; metadata and cf-db show it."""
    version = Version(PROJECT["version"])
    assert version > PUBLISHED
    assert version.is_prerelease, "this build must sort below the core release that carries it"
    assert metadata.version("circuitforge-core") == PROJECT["version"]
    assert cf_db(["--version"]) == 0
    assert capsys.readouterr().out.split() == ["cf-db", PROJECT["version"]]
    for page in ("README.md", "docs/upgrading.md"):  # they name the development build
        assert f"`{PROJECT['version']}`" in (ROOT / page).read_text(encoding="utf-8"), page


# -- the sdist -----------------------------------------------------------------------


def _tracked_files() -> list[str] | None:
    """The files git tracks in this checkout, or None outside one (an unpacked sdist)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        return None
    # Deleted in the work tree but not yet committed: not expected in the sdist either.
    return [name for name in out.stdout.split("\0") if name and (ROOT / name).exists()]


def _build_sdist(tmp_path: Path) -> Path:
    """An sdist of this project, built from a copy of the tree (the tree is not written to)."""
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            "*.egg-info",
            "build",
            "dist",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
        ),
    )
    out = tmp_path / "dist"
    out.mkdir()
    script = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    name = run([sys.executable, "-c", script, out], cwd=tree).split()[-1]
    return out / name


@pytest.mark.slow
def test_sdist_carries_what_its_tests_read_and_they_run(tmp_path: Path) -> None:
    """Every tracked file is in the sdist, its metadata is complete, and its suite runs there."""
    sdist = _build_sdist(tmp_path)
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {name.removeprefix(f"{top}/") for name in archive.getnames()}
        archive.extractall(tmp_path / "unpacked", filter="data")
    for needed in ("LICENSE", "tests/conftest.py", "examples/notes/migrations", "docs/cli.md"):
        assert needed in members, f"the sdist lacks {needed}"
    tracked = _tracked_files()
    if tracked is not None:
        missing = sorted(set(tracked) - members)
        assert not missing, f"tracked files not in the sdist (see MANIFEST.in): {missing}"
    info = (tmp_path / "unpacked" / top / "PKG-INFO").read_text(encoding="utf-8")
    assert f"Version: {PROJECT['version']}\n" in info
    assert "License-Expression: MIT\n" in info
    assert "License-File: LICENSE\n" in info
    assert "Project-URL: Repository, " in info
    assert "Classifier: Private :: Do Not Upload\n" in info  # PyPI refuses this build
    assert "Classifier: Programming Language :: Python :: 3.13\n" in info
    license_text = (tmp_path / "unpacked" / top / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 CircuitForge\n")

    unpacked = tmp_path / "unpacked" / top
    # On the standard library's SQLite even under `make test-bundled-sqlite`: this is about
    # what the sdist carries, and a bare `python -m pytest` cannot switch before conftest.
    env = {k: v for k, v in os.environ.items() if k != "CF_DB_SQLITE"}
    env["PYTHONPATH"] = str(unpacked / "src")
    where = subprocess.run(
        [sys.executable, "-c", "import circuitforge_core.db as m; print(m.__file__)"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert where.stdout.strip().startswith(str(unpacked)), where.stdout
    # Collect the whole suite (every module imports, conftest included) and run one file of it;
    # `make check-sdist` runs all of it.
    for args in (["--collect-only", "-q"], ["tests/test_public_api.py", "-q"]):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=unpacked,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# -- a product with the published circuitforge-core --------------------------------


PUBLISHED_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "circuitforge-core"
version = "0.21.0"
description = "Shared scaffold for CircuitForge products (MIT)"
requires-python = ">=3.11"
dependencies = []

[project.optional-dependencies]
# An extra of another subpackage; its "]" inside a string must not confuse the tool.
llm-local = [
    "circuitforge-core[llm]",
]
llm = []

[project.scripts]
cf-llm = "circuitforge_core.llm:main"

[tool.setuptools.packages.find]
where = ["."]
include = ["circuitforge_core*"]

[tool.setuptools.package-data]
"circuitforge_core.sync.migrations" = ["*.sql"]
"""

PUBLISHED_FILES = {
    "circuitforge_core/__init__.py": """\
        from importlib.metadata import PackageNotFoundError, version

        try:
            __version__ = version("circuitforge-core")
        except PackageNotFoundError:
            __version__ = "dev"
        """,
    # The published db module, as products use it (written from its description).
    "circuitforge_core/db/__init__.py": """\
        from circuitforge_core.db.base import get_connection
        from circuitforge_core.db.migrations import run_migrations

        __all__ = ["get_connection", "run_migrations"]
        """,
    "circuitforge_core/db/base.py": """\
        import os
        import sqlite3


        def get_connection(db_path, key=""):
            cloud = os.environ.get("CLOUD_MODE", "").lower() in ("1", "true", "yes")
            if cloud and key:
                from pysqlcipher3 import dbapi2

                conn = dbapi2.connect(str(db_path), timeout=30)
                conn.execute(f"PRAGMA key='{key}'")
                return conn
            return sqlite3.connect(str(db_path), timeout=30)
        """,
    "circuitforge_core/db/migrations.py": """\
        def run_migrations(conn, migrations_dir):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations "
                "(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP)"
            )
            conn.commit()
            applied = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
            for path in sorted(migrations_dir.glob("*.sql")):
                if path.name not in applied:
                    conn.executescript(path.read_text())
                    record = "INSERT OR IGNORE INTO _migrations (name) VALUES (?)"
                    conn.execute(record, (path.name,))
                    conn.commit()
        """,
    # A module the new package does not have: it must not survive the upgrade.
    "circuitforge_core/db/legacy.py": "LEGACY = True\n",
    # A sibling subpackage with a console script, and one with package data.
    "circuitforge_core/llm/__init__.py": """\
        def complete(prompt):
            return f"completed: {prompt}"


        def main():
            print(complete("from cf-llm"))
        """,
    "circuitforge_core/sync/__init__.py": "",
    "circuitforge_core/sync/migrations/__init__.py": "",
    "circuitforge_core/sync/migrations/001_sync.sql": "CREATE TABLE sync_state (k TEXT);\n",
}

PRODUCT_BEFORE = """\
import sys
from pathlib import Path
from circuitforge_core.db import get_connection, run_migrations
from circuitforge_core.llm import complete

conn = get_connection(Path(sys.argv[1]))
run_migrations(conn, Path(sys.argv[2]))
conn.execute("INSERT INTO items (name) VALUES ('before the upgrade')")
conn.commit()
print(complete("hello"))
"""

PRODUCT_AFTER = """\
import json, sys
from importlib import resources
from pathlib import Path
import circuitforge_core
import circuitforge_core.db
from circuitforge_core.db import get_connection, get_db, run_migrations
from circuitforge_core.db.base import get_connection as base_get_connection
from circuitforge_core.db.migrations import run_migrations as old_path_run_migrations
from circuitforge_core.llm import complete

assert get_connection is base_get_connection and run_migrations is old_path_run_migrations
conn = get_connection(Path(sys.argv[1]))
applied = run_migrations(conn, Path(sys.argv[2]))
conn.execute("INSERT INTO tags (item_id, tag) VALUES (1, 'kept')")
conn.commit()
fresh = get_db(Path(sys.argv[3]))
print(json.dumps({
    "version": circuitforge_core.__version__,
    "db_file": circuitforge_core.db.__file__,
    "llm": complete("hello"),
    "sync_sql": resources.files("circuitforge_core.sync.migrations")
        .joinpath("001_sync.sql").read_text(),
    "applied": applied,
    "recorded": [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")],
    "checksums": conn.execute(
        "SELECT count(*) FROM _migrations WHERE checksum IS NOT NULL").fetchone()[0],
    "items": conn.execute("SELECT name FROM items").fetchall(),
    "foreign_keys": fresh.execute("PRAGMA foreign_keys").fetchone()[0],
    "journal_mode": fresh.execute("PRAGMA journal_mode").fetchone()[0],
}))
"""

OWNERSHIP = """\
import json, sysconfig
from importlib import metadata
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
dists = [d for d in metadata.distributions() if d.metadata["Name"] == "circuitforge-core"]
recorded = {str(f) for d in dists for f in d.files or []}
on_disk = {
    p.relative_to(site).as_posix()
    for p in (site / "circuitforge_core").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
}
meta = dists[0].metadata
print(json.dumps({
    "distributions": len(dists),
    "unowned": sorted(on_disk - recorded),
    "extras": meta.get_all("Provides-Extra"),
    "requires": meta.get_all("Requires-Dist"),
    "site": str(site),
}))
"""


def _write_published_core(root: Path) -> Path:
    root.mkdir()
    (root / "pyproject.toml").write_text(PUBLISHED_PYPROJECT, encoding="utf-8")
    for name, text in PUBLISHED_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def _wheel(project: Path, out: Path) -> Path:
    """Build ``project``'s wheel into ``out`` with this environment's setuptools, offline."""
    before = set(out.glob("*.whl")) if out.exists() else set()
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps"]
    run([*pip_wheel, "-w", out, project])
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


@pytest.mark.slow
def test_export_gives_a_product_the_new_db_and_keeps_its_other_subpackages(
    tmp_path: Path,
) -> None:
    """Published 0.21.0 installed, exported, upgraded: siblings work, db is new, one owner."""
    checkout = _write_published_core(tmp_path / "circuitforge-core")
    published = _wheel(checkout, tmp_path / "wheels")
    venv = tmp_path / "product-venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python]
    run([*pip, "install", "-q", "--no-deps", published])

    # The product as it runs today, on the published module.
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_items.sql").write_text(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);", encoding="utf-8"
    )
    database = tmp_path / "product.db"
    before = run([python, "-I", "-c", PRODUCT_BEFORE, database, migrations])
    assert before.strip() == "completed: hello"

    # The release: export into the checkout, build it, upgrade the product's environment.
    exported = export("--version", "0.22.0", checkout)
    assert exported.returncode == 0, exported.stderr
    assert "updated circuitforge_core/db/base.py" in exported.stdout
    assert "removed circuitforge_core/db/legacy.py" in exported.stdout
    assert export("--check", checkout).returncode == 0
    upgrade_notes = (checkout / "docs" / "db" / "upgrading.md").read_bytes()
    assert upgrade_notes == (ROOT / "docs" / "upgrading.md").read_bytes()
    release = _wheel(checkout, tmp_path / "wheels")
    run([*pip, "install", "-q", "--no-deps", "--upgrade", release])

    (migrations / "002_tags.sql").write_text(
        "CREATE TABLE tags (item_id INTEGER NOT NULL REFERENCES items(id), tag TEXT);",
        encoding="utf-8",
    )
    after = json.loads(
        run([python, "-I", "-c", PRODUCT_AFTER, database, migrations, tmp_path / "new.db"])
    )
    ownership = json.loads(run([python, "-I", "-c", OWNERSHIP]))
    site = Path(ownership["site"])
    assert after["version"] == "0.22.0"
    assert after["llm"] == "completed: hello"
    assert after["sync_sql"] == "CREATE TABLE sync_state (k TEXT);\n"
    assert Path(after["db_file"]) == site / "circuitforge_core" / "db" / "__init__.py"
    assert not (site / "circuitforge_core" / "db" / "legacy.py").exists()
    assert after["applied"] == ["002_tags.sql"]
    assert after["recorded"] == ["001_items.sql", "002_tags.sql"]
    assert after["checksums"] == 2  # the old _migrations table was adopted in place
    assert after["items"] == [["before the upgrade"]]
    assert (after["foreign_keys"], after["journal_mode"]) == (1, "wal")

    assert run([venv / "bin" / "cf-db", "--version"]).split() == ["cf-db", "0.22.0"]
    assert "002_tags.sql" in run([venv / "bin" / "cf-db", "status", database, migrations])
    assert "migrate" in run([python, "-I", "-m", "circuitforge_core.db", "--help"])
    assert run([venv / "bin" / "cf-llm"]).strip() == "completed: from cf-llm"

    # One distribution owns every file, and declares the package's extras next to its own.
    assert ownership["distributions"] == 1
    assert ownership["unowned"] == []
    assert {"sqlcipher", "web", "llm", "llm-local"} <= set(ownership["extras"])
    assert 'sqlcipher3>=0.6.4; extra == "sqlcipher"' in ownership["requires"]
    run([*pip, "uninstall", "-q", "-y", "circuitforge-core"])
    leftovers = (
        [p for p in (site / "circuitforge_core").rglob("*") if p.is_file()]
        if (site / "circuitforge_core").exists()
        else []
    )
    assert leftovers == []


# -- what the export refuses ----------------------------------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace('name = "circuitforge-core"', 'name = "kiwi"'),
            "names the distribution 'kiwi'",
        ),
        (
            lambda t: t.replace('requires-python = ">=3.11"', 'requires-python = ">=3.9"'),
            "admits Python 3.9, 3.10",
        ),
        (
            lambda t: t.replace(
                'cf-llm = "circuitforge_core.llm:main"',
                'cf-llm = "circuitforge_core.llm:main"\ncf-db = "circuitforge_core.dbtool:run"',
            ),
            "script cf-db runs circuitforge_core.dbtool:run",
        ),
        (
            lambda t: t.replace(
                'include = ["circuitforge_core*"]', 'include = ["circuitforge_core"]'
            ),
            "does not find circuitforge_core.db",
        ),
        (
            lambda t: t.replace(
                'version = "0.21.0"', 'dynamic = ["optional-dependencies"]\nversion = "0.21.0"'
            ).replace("[project.optional-dependencies]", "[tool.unused]"),
            "project.optional-dependencies dynamic",
        ),
        (
            lambda t: t.replace(
                '[project.scripts]\ncf-llm = "circuitforge_core.llm:main"\n', ""
            ).replace("dependencies = []", 'dependencies = []\nscripts = { cf-llm = "x.y:z" }'),
            "defines project.scripts inline",
        ),
    ],
    ids=[
        "not-the-core",
        "older-python",
        "script-conflict",
        "package-not-found",
        "dynamic",
        "inline",
    ],
)
def test_export_refuses_what_needs_a_human_and_writes_nothing(
    tmp_path: Path, edit: object, message: str
) -> None:
    """Each refusal exits 2 naming what to fix, before any file of the checkout changes."""
    checkout = _write_published_core(tmp_path / "core")
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(edit(pyproject.read_text(encoding="utf-8")), encoding="utf-8")  # type: ignore[operator]
    before = _snapshot(checkout)
    result = export(checkout)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert _snapshot(checkout) == before


def test_export_check_names_drift_and_a_rerun_changes_nothing(tmp_path: Path) -> None:
    """--check exits 1 naming each difference; after an export it and a second export are no-ops."""
    checkout = _write_published_core(tmp_path / "core")
    result = export("--check", checkout)
    assert result.returncode == 1
    assert "circuitforge_core/db/base.py: differs from this build" in result.stdout
    assert "[project.scripts] cf-db: add 'circuitforge_core.db.cli:main'" in result.stdout
    assert "[project.optional-dependencies] sqlcipher: add" in result.stdout
    assert (
        "[project.entry-points.pytest11] cf_db: add 'circuitforge_core.db.pytest_plugin'"
        in result.stdout
    )
    assert export(checkout).returncode == 0
    exported = _snapshot(checkout)
    again = export(checkout)
    assert (again.returncode, again.stdout.strip()) == (
        0,
        f"{checkout.resolve()}: already up to date",
    )
    assert _snapshot(checkout) == exported
    assert "cf-llm" in exported["pyproject.toml"].decode()  # the core's own entries are kept

    (checkout / "circuitforge_core" / "db" / "stray.py").write_text("# edited in the core\n")
    with (checkout / "docs" / "db" / "migrations.md").open("a") as page:
        page.write("edited in the core\n")
    drift = export("--check", checkout)
    assert drift.returncode == 1
    assert "circuitforge_core/db/stray.py: not in this build" in drift.stdout
    assert "docs/db/migrations.md: differs from this build" in drift.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_export_refuses_to_overwrite_uncommitted_work(tmp_path: Path) -> None:
    """A checkout with uncommitted edits to its db folder is left alone unless --allow-dirty."""
    checkout = _write_published_core(tmp_path / "core")
    git = ["git", "-C", checkout, "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    run([*git, "init", "-q"])
    run([*git, "add", "."])
    run([*git, "commit", "-q", "-m", "published"])
    (checkout / "circuitforge_core" / "db" / "base.py").write_text("# work in progress\n")
    before = _snapshot(checkout)
    refused = export(checkout)
    assert refused.returncode == 2
    assert "uncommitted changes" in refused.stderr
    assert "circuitforge_core/db/base.py" in refused.stderr
    assert _snapshot(checkout) == before
    assert export("--allow-dirty", checkout).returncode == 0
