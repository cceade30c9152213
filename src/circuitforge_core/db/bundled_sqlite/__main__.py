"""python -m circuitforge_core.db.bundled_sqlite: run a program on the bundled SQLite.

    python -m circuitforge_core.db.bundled_sqlite -m uvicorn app.main:app --workers 4
    python -m circuitforge_core.db.bundled_sqlite -m pytest    # see docs/upgrading.md
    python -m circuitforge_core.db.bundled_sqlite -c "import sqlite3; print(sqlite3.sqlite_version)"
    python -m circuitforge_core.db.bundled_sqlite manage.py migrate   # a script, or a
                                                                      # console script on PATH

For programs whose import order cannot be arranged so that circuitforge_core.db
comes before anything that imports ``sqlite3`` (a test runner and its plugins,
a server's command line, a module that imports ``sqlite3`` at its top): the
switch is made here, before the program's first import, and
``CF_DB_SQLITE=bundled`` is set for every process it starts. Started without
that variable, this module has already loaded the standard library's SQLite
with the package, so it starts itself once more with the variable set.
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
from collections.abc import Sequence

from ..settings import hand_sqlite_library_to_children, sqlite_library_from_env
from . import LAUNCHER, active

USAGE = f"usage: {LAUNCHER} (-m MODULE | -c CODE | SCRIPT) [ARG ...]"
_MODULE_NAME = "circuitforge_core.db.bundled_sqlite"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the program named by ``argv`` on the bundled SQLite; return an exit code on errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__}", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] in ("-m", "-c") and len(args) < 2:
        print(f"error: {args[0]} needs an argument\n{USAGE}", file=sys.stderr)
        return 2
    if not active():
        return _restart_switched(args)
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    if args[0] == "-c":
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})  # as `python -c`
        return 0
    script = args[0] if os.path.isfile(args[0]) else shutil.which(args[0])
    if script is None:
        print(f"error: {args[0]}: no such file, nor a command on PATH\n{USAGE}", file=sys.stderr)
        return 2
    with open(script, "rb") as handle:
        if b"\0" in handle.read(4096):
            print(f"error: {script} is a program, not a Python script\n{USAGE}", file=sys.stderr)
            return 2
    sys.argv = [script, *args[1:]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` would
    runpy.run_path(script, run_name="__main__")
    return 0


def _restart_switched(args: list[str]) -> int:  # noqa: RET503 - os.execv does not return
    """Start this launcher again in a fresh interpreter, with ``CF_DB_SQLITE=bundled`` set."""
    if sqlite_library_from_env() == "bundled":  # set, and still not switched: never loop
        print("error: CF_DB_SQLITE=bundled is set but the switch did not happen", file=sys.stderr)
        return 2
    hand_sqlite_library_to_children("bundled")
    command = [sys.executable, *_interpreter_options(), "-m", _MODULE_NAME, *args]
    os.execv(sys.executable, command)


def _interpreter_options() -> list[str]:
    """The options given to this interpreter itself (``-X dev``, ``-W error``), kept on restart."""
    original = sys.orig_argv
    for index in range(1, len(original) - 1):
        if original[index] == "-m" and original[index + 1] == _MODULE_NAME:
            return original[1:index]
    return []


if __name__ == "__main__":
    sys.exit(main())
