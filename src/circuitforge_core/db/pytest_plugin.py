"""The pytest plugin products' test suites get with the package (entry point ``cf_db``).

Owns the fixtures and the migration check as pytest sees them; the work is
the library's (``get_db``, ``run_migrations``, ``PoolRegistry``,
``check_migrations``). Inert until a suite uses it: the fixtures do nothing
until a test requests one, and the migration check runs only when the ini
option ``cf_db_check_migrations`` is on or a test carries the
``cf_db_check_migrations`` marker. A product writes, in ``pyproject.toml``::

    [tool.pytest.ini_options]
    cf_db_migrations = "app/db/migrations"
    cf_db_check_migrations = true

and its tests take ``cf_db`` (a connection to a migrated temporary
database), ``cf_db_path`` (its path) or ``cf_db_cloud`` (a temporary data
root, a registry and ``as_user()`` to run code as one user's request).
Relative folders are relative to the ini file's folder (the rootdir when
there is none); the ``cf_db_migrations(folder)`` marker or an override of
the ``cf_db_migrations`` fixture picks another folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .connect import Connection, get_db
from .migrations import MigrationCheckReport, check_migrations, run_migrations
from .migrations.rehearsal import RerunScope
from .pool import PoolRegistry
from .tenancy import use_db, user_db_path

_INI_FOLDER = "cf_db_migrations"
_INI_CHECK = "cf_db_check_migrations"
_INI_ROW_LOSS = "cf_db_allow_row_loss"
_INI_RERUN = "cf_db_rerun_check"
_INI_PRODUCT_PATH = "cf_db_product_path"
_CHECK_NAME = "cf-db migration check"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI_FOLDER,
        "cf-db: the migrations folder of the cf_db fixtures and the migration check "
        "(relative to the ini file)",
        default="",
    )
    parser.addini(
        _INI_CHECK,
        "cf-db: add one test that checks every migration on an empty and a seeded database",
        type="bool",
        default=False,
    )
    parser.addini(
        _INI_ROW_LOSS,
        "cf-db: migration files the check allows to delete rows (one per line)",
        type="linelist",
        default=[],
    )
    parser.addini(
        _INI_RERUN,
        "cf-db: files re-run from a half-applied state: all, no-transaction or off",
        default="all",
    )
    parser.addini(
        _INI_PRODUCT_PATH,
        "cf-db: each user's database under the data root of cf_db_cloud",
        default="app.db",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cf_db_migrations(folder): the migrations folder the cf_db fixtures use in this test",
    )
    config.addinivalue_line(
        "markers",
        "cf_db_check_migrations(folder=None, allow_row_loss=(), rerun='all'): run the cf-db "
        "migration check before this test's body; the test fails on any problem",
    )


# -- configuration -------------------------------------------------------------------


def _base(config: pytest.Config) -> Path:
    return config.inipath.parent if config.inipath is not None else config.rootpath


def _configured_folder(config: pytest.Config, given: object = None) -> Path:
    """The migrations folder: ``given`` (a marker argument), else the ini option; checked."""
    raw = given if given is not None else config.getini(_INI_FOLDER)
    if not raw:
        raise pytest.UsageError(
            f'cf-db: no migrations folder. Set `{_INI_FOLDER} = "path/to/migrations"` in '
            f"[tool.pytest.ini_options], mark the test @pytest.mark.cf_db_migrations(folder), "
            f"or override the cf_db_migrations fixture."
        )
    folder = Path(str(raw))
    if not folder.is_absolute():
        folder = _base(config) / folder
    if not folder.is_dir():
        raise pytest.UsageError(f"cf-db: the migrations folder {folder} is not a folder.")
    return folder


def _check_options(config: pytest.Config, marker: pytest.Mark | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "allow_row_loss": list(config.getini(_INI_ROW_LOSS)),
        "rerun": config.getini(_INI_RERUN),
    }
    if marker is not None:
        options.update({k: v for k, v in marker.kwargs.items() if k != "folder"})
    if options["rerun"] not in ("all", "no-transaction", "off"):
        raise pytest.UsageError(
            f"cf-db: {_INI_RERUN} must be all, no-transaction or off, not {options['rerun']!r}."
        )
    return options


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def cf_db_migrations(request: pytest.FixtureRequest) -> Path:
    """The migrations folder: the test's ``cf_db_migrations`` marker, else the ini option."""
    marker = request.node.get_closest_marker("cf_db_migrations")
    return _configured_folder(request.config, marker.args[0] if marker and marker.args else None)


@pytest.fixture
def cf_db_path(cf_db_migrations: Path, tmp_path: Path) -> Path:
    """A temporary database file with every migration applied (closed: open it as you like)."""
    path = tmp_path / "cf-db" / "test.db"
    db = get_db(path)
    try:
        run_migrations(db, cf_db_migrations)
    finally:
        db.close()
    return path


@pytest.fixture
def cf_db(cf_db_path: Path) -> Iterator[Connection]:
    """A ``get_db`` connection to the migrated temporary database, closed after the test."""
    db = get_db(cf_db_path)
    try:
        yield db
    finally:
        db.close()


class CloudDatabases:
    """Cloud mode for one test: a temporary data root, a registry, per-user files.

    ``root`` is the data root (also in ``CLOUD_DATA_ROOT``, with
    ``CLOUD_MODE=1``, for the test's duration), ``registry`` a
    ``PoolRegistry`` applying the migrations to each file on first use.
    ``path(user)`` is that user's migrated file; ``as_user(user)`` makes it
    the request's database (``use_db``) for a ``with`` block, as the
    middleware does for a request; ``connection(user)`` checks one out.
    """

    def __init__(self, root: Path, product_path: str, registry: PoolRegistry) -> None:
        self.root = root
        self.product_path = product_path
        self.registry = registry

    def path(self, user_id: str) -> Path:
        path = user_db_path(self.root, user_id, self.product_path)
        with self.registry.connection(path):
            pass  # the first checkout applies the migrations
        return path

    @contextlib.contextmanager
    def as_user(self, user_id: str) -> Iterator[Path]:
        path = self.path(user_id)
        with use_db(path):
            yield path

    def connection(self, user_id: str) -> contextlib.AbstractContextManager[Connection]:
        return self.registry.connection(self.path(user_id))


@pytest.fixture
def cf_db_cloud(
    cf_db_migrations: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[CloudDatabases]:
    """Cloud mode with a temporary data root; see ``CloudDatabases``."""
    root = tmp_path / "cf-db-data"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("CLOUD_MODE", "1")
    monkeypatch.setenv("CLOUD_DATA_ROOT", str(root))
    product_path = str(request.config.getini(_INI_PRODUCT_PATH))
    registry = PoolRegistry(migrations=cf_db_migrations)
    try:
        yield CloudDatabases(root, product_path, registry)
    finally:
        registry.close()


# -- the migration check -------------------------------------------------------------


class MigrationCheckFailed(Exception):
    """The migration check found problems; the report says which."""

    def __init__(self, report: MigrationCheckReport) -> None:
        self.report = report
        super().__init__(str(report))


def _run_check(config: pytest.Config, marker: pytest.Mark | None) -> MigrationCheckReport:
    given = None
    if marker is not None:
        given = marker.kwargs.get("folder", marker.args[0] if marker.args else None)
    folder = _configured_folder(config, given)
    options = _check_options(config, marker)
    rerun: RerunScope = options["rerun"]
    report = check_migrations(folder, allow_row_loss=options["allow_row_loss"], rerun=rerun)
    if not report.ok:
        raise MigrationCheckFailed(report)
    return report


class MigrationCheckItem(pytest.Item):
    """The one test the ini option ``cf_db_check_migrations`` adds to a run."""

    def runtest(self) -> None:
        _run_check(self.config, None)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str:
        if isinstance(excinfo.value, MigrationCheckFailed | pytest.UsageError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, _CHECK_NAME


def _whole_suite(config: pytest.Config) -> bool:
    """True unless the command line picked files or single tests (a focused run)."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return any(Path(arg.split("::")[0]).is_dir() for arg in config.args)


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect, so they apply to it too
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.getini(_INI_CHECK) and _whole_suite(config):
        items.append(MigrationCheckItem.from_parent(session, name=_CHECK_NAME, nodeid=_CHECK_NAME))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    marker = item.get_closest_marker("cf_db_check_migrations")
    if marker is None:
        return
    try:
        _run_check(item.config, marker)
    except MigrationCheckFailed as exc:
        pytest.fail(str(exc), pytrace=False)
