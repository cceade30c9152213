"""The public surface: __all__ is exactly the public names, sorted, and the tree of errors."""

from __future__ import annotations

import types

import pytest

import circuitforge_core.db as package
from circuitforge_core.db import (
    DBError,
    ForeignKeyViolationError,
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationRefusedError,
    MigrationSourceError,
    OpenError,
    TransactionError,
)


def test_all_is_exactly_the_public_names() -> None:
    """Every public non-module attribute is in __all__, every __all__ name exists, sorted."""
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    # Imported at first use (``__getattr__``): public once asked for, like the rest.
    public |= {
        name for name in package.__all__ if name not in vars(package) and hasattr(package, name)
    }
    assert set(package.__all__) == public
    assert list(package.__all__) == sorted(package.__all__)


def test_every_error_derives_from_the_base() -> None:
    """One base exception for the package; migration errors under MigrationError."""
    for error in (OpenError, TransactionError, MigrationError):
        assert issubclass(error, DBError)
    for error in (
        MigrationSourceError,
        MigrationRefusedError,
        MigrationModifiedError,
        MigrationFailedError,
        ForeignKeyViolationError,
    ):
        assert issubclass(error, MigrationError)
    exported_errors = [
        value
        for value in vars(package).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert all(issubclass(error, DBError) for error in exported_errors)


@pytest.mark.parametrize(("library", "expected"), [("stdlib", "[]"), ("bundled", "['pysqlite3']")])
def test_runtime_needs_only_the_standard_library(library: str, expected: str) -> None:
    """Importing the package pulls in no third-party module; pysqlite3 only when asked for."""
    import os
    import subprocess
    import sys

    if library == "bundled":
        pytest.importorskip("pysqlite3")
    script = (
        "import sys; before = set(sys.modules)\n"
        "import circuitforge_core.db, circuitforge_core.db.cli\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "third_party = sorted(m for m in new if m not in sys.stdlib_module_names "
        "and m != 'circuitforge_core' and not m.startswith('__'))\n"  # __mp_main__: an alias
        "print(third_party)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "CF_DB_SQLITE": library},
    )
    assert result.stdout.strip() == expected
