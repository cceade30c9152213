"""What a block may change on a pooled connection, how the pool notices, and how check-in undoes it.

Owns the per-connection state that outlives a ``with`` block unless check-in
puts it back: pragmas (those ``get_db`` set and the others a block can set),
attached databases, objects in the ``temp`` schema, and what Python's
connection methods install (an authorizer, a progress handler, a trace
callback, limits, ``setconfig`` switches, functions, collations, extensions,
``deserialize``). ``watch`` is called once when a pooled connection is
opened: it records the connection's settings as ``get_db`` left them (its
``Baseline``) and installs the pool's authorizer. At every check-in
``put_back_callbacks`` runs first (before the rollback, which a block's
authorizer or progress handler could refuse) and ``restore`` last; it raises
``NotReusable`` when the connection cannot be made as good as new, and the
pool closes it instead. Does not own the transaction, the
cursors or the factories (connection.py), nor which connections exist.

Noticing costs nothing per checkout. SQLite asks an authorizer about every
statement while preparing it, including ``PRAGMA name=value`` (with its
value), ``ATTACH`` and every ``CREATE TEMP ...``; the pool's records what it
sees and allows everything. Check-in then reads back only the pragmas that
were set, compares each with what ``get_db`` left, and sets back those that
differ. Python's methods are watched by wrapping them on the pooled
connection class. A statement Python keeps in its statement cache is not
prepared again, so after any change the authorizer is installed anew, which
makes SQLite re-prepare (and so re-examine) every cached statement on its
next use.

What ``get_db`` left is read once per kind of connection (driver and
``get_db`` arguments: the same kind gives the same values), from the first
pooled connection of that kind before it is handed out; only the values that
depend on the file (``cache_spill``, counted in its pages, and
``journal_mode``) are read for each connection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..connect import Connection
from ..sqlite_facts import quote_identifier

#: Per-connection pragmas check-in puts back: get_db's own first, then the
#: others a block can set. Those this SQLite build lacks are left out.
PRAGMAS = (
    "foreign_keys",
    "busy_timeout",
    "synchronous",
    "journal_size_limit",
    "cache_size",
    "mmap_size",
    "temp_store",
    "query_only",
    "journal_mode",
    "recursive_triggers",
    "defer_foreign_keys",
    "legacy_alter_table",
    "trusted_schema",
    "ignore_check_constraints",
    "writable_schema",
    "reverse_unordered_selects",
    "cell_size_check",
    "automatic_index",
    "secure_delete",
    "cache_spill",
    "count_changes",
    "full_column_names",
    "short_column_names",
    "empty_result_callbacks",
    "read_uncommitted",
    "max_page_count",
    "analysis_limit",
    "threads",
    "checkpoint_fullfsync",
    "fullfsync",
    "wal_autocheckpoint",
    "locking_mode",
)
#: Read for each connection: their values depend on the file, not only on the kind.
PER_FILE_PRAGMAS = ("cache_spill", "journal_mode")
#: Write-only: seen through the LIKE operator (``'a' LIKE 'A'`` is 1 unless case-sensitive).
CASE_SENSITIVE_LIKE = "case_sensitive_like"
#: Put back by closing the connection: an exclusive lock, once taken, is only
#: released by the next read after switching back, and closing is certain.
DISCARD_WHEN_CHANGED = frozenset({"locking_mode"})
#: Pragmas that take an argument and leave no per-connection setting behind:
#: they describe or check something, change the file itself (a change the
#: product means to keep, which every connection sees), or are process-wide.
#: Any other pragma the pool does not know closes the connection at check-in.
LEAVES_NO_SETTING = frozenset(
    {
        # describe or check one object
        "table_info",
        "table_xinfo",
        "table_list",
        "index_info",
        "index_xinfo",
        "index_list",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        # maintenance
        "wal_checkpoint",
        "optimize",
        "incremental_vacuum",
        "shrink_memory",
        # stored in the file
        "user_version",
        "application_id",
        "schema_version",
        "auto_vacuum",
        "page_size",
        "encoding",
        # process-wide: closing the connection would not undo them either
        "soft_heap_limit",
        "hard_heap_limit",
        "temp_store_directory",
        "data_store_directory",
    }
)

_KNOWN_PRAGMAS = frozenset((*PRAGMAS, CASE_SENSITIVE_LIKE))
_TEMP_SCHEMA_TABLES = frozenset({"sqlite_temp_master", "sqlite_temp_schema"})
_CREATES_IN_TEMP = frozenset(
    {
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
    }
)
_WATCHED_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_PRAGMA,
        sqlite3.SQLITE_ATTACH,
        sqlite3.SQLITE_CREATE_VTABLE,
        sqlite3.SQLITE_INSERT,
        *_CREATES_IN_TEMP,
    }
)
# What a block's temp objects are dropped in: triggers and views may depend on tables.
_TEMP_OBJECTS = (
    "SELECT type, name FROM temp.sqlite_master WHERE type IN ('trigger', 'view', 'table') "
    "ORDER BY CASE type WHEN 'trigger' THEN 0 WHEN 'view' THEN 1 ELSE 2 END"
)
_ATTACHED = "SELECT name FROM pragma_database_list WHERE name NOT IN ('main', 'temp')"


class NotReusable(Exception):
    """Check-in cannot make this connection as good as new; the pool closes it instead.

    Not a ``DBError``: it never reaches the pool's caller.
    """


# -- what a checkout changed ------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Changes:
    """What the current checkout changed that check-in must look at; empty most of the time.

    ``any`` is the one attribute the common check-in reads.
    """

    any: bool = False
    pragmas: set[str] = field(default_factory=set)
    attached: bool = False
    temp_objects: bool = False
    progress_handler: bool = False
    trace_callback: bool = False
    limits: dict[int, int] = field(default_factory=dict)  # category -> the value before
    configs: dict[int, bool] = field(default_factory=dict)  # op -> the value before
    cannot_undo: str | None = None

    def saw_pragma(self, name: str) -> None:
        name = name.lower()
        if name not in LEAVES_NO_SETTING:
            self.pragmas.add(name)
            self.any = True

    def cannot_be_undone(self, what: str) -> None:
        if self.cannot_undo is None:
            self.cannot_undo = what
        self.any = True

    def clear(self) -> None:
        self.any = self.attached = self.temp_objects = False
        self.progress_handler = self.trace_callback = False
        self.pragmas.clear()
        self.limits.clear()
        self.configs.clear()
        self.cannot_undo = None


class Watch:
    """The pool's authorizer: notes statements that change connection state as SQLite prepares them.

    It allows everything. A block's own authorizer is called after it (see
    ``chained``), so the block sees every statement and has the last word.
    """

    __slots__ = ("changes",)

    def __init__(self, changes: Changes) -> None:
        self.changes = changes

    def __call__(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        schema: str | None,
        source: str | None,
    ) -> int:
        if action not in _WATCHED_ACTIONS:  # nearly every call: reads, selects, functions
            return sqlite3.SQLITE_OK
        changes = self.changes
        if action == sqlite3.SQLITE_PRAGMA:
            if arg2 is not None and arg1 is not None:  # a pragma without a value only reads
                changes.saw_pragma(arg1)
        elif action == sqlite3.SQLITE_ATTACH:
            changes.attached = changes.any = True
        elif action == sqlite3.SQLITE_INSERT:
            if arg1 in _TEMP_SCHEMA_TABLES:  # any object created in temp
                changes.temp_objects = changes.any = True
        elif action in _CREATES_IN_TEMP or schema == "temp":  # CREATE VIRTUAL TABLE temp.x
            changes.temp_objects = changes.any = True
        return sqlite3.SQLITE_OK

    def chained(self, user: Callable[..., int] | None) -> Callable[..., int]:
        """The watch alone, or the watch and then the block's own authorizer."""
        if user is None:
            return self

        def watch_then_user(
            action: int,
            arg1: str | None,
            arg2: str | None,
            schema: str | None,
            source: str | None,
        ) -> int:
            self(action, arg1, arg2, schema, source)
            return user(action, arg1, arg2, schema, source)

        return watch_then_user


# -- what get_db left -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    """A pooled connection's settings as ``get_db`` left them: what check-in restores."""

    pragmas: dict[str, object]  # name -> value, for the pragmas this build has
    busy_timeout: float  # the Connection attribute transaction() waits by


@dataclass(frozen=True, slots=True)
class _Library:
    """What one driver (sqlite3, or sqlcipher3's own SQLite) offers: read once per class."""

    builtin_functions: frozenset[str] | None  # None: this build cannot list them
    builtin_collations: frozenset[str]


_libraries: dict[type, _Library] = {}
# (connection class, get_db's arguments) -> what get_db left, but the per-file values.
_left_by_get_db: dict[tuple[type, tuple[tuple[str, Any], ...]], dict[str, object]] = {}
_guard = threading.Lock()
_BUILTIN_FUNCTIONS = "SELECT name FROM pragma_function_list WHERE builtin"


def _library(conn: Any) -> _Library:
    library = _libraries.get(type(conn))
    if library is None:
        try:
            functions = frozenset(row[0].lower() for row in conn.execute(_BUILTIN_FUNCTIONS))
        except conn.Error:  # built without the introspection pragmas
            functions = None
        collations = {
            row[0].lower() for row in conn.execute("SELECT name FROM pragma_collation_list")
        }
        library = _Library(functions, frozenset(collations))
        with _guard:
            library = _libraries.setdefault(type(conn), library)
    return library


def _read(conn: Any, name: str) -> object:
    """One setting's current value; None for a pragma this build does not have."""
    if name == CASE_SENSITIVE_LIKE:
        return conn.execute("SELECT 'a' LIKE 'A'").fetchone()[0]
    row = conn.execute(f"PRAGMA {name}").fetchone()  # an unknown pragma returns nothing
    return None if row is None else row[0]


def _read_all(conn: Any, names: tuple[str, ...]) -> dict[str, object]:
    values = {name: _read(conn, name) for name in names}
    return {name: value for name, value in values.items() if value is not None}


def _baseline_of(conn: Any, connect_kwargs: Mapping[str, Any]) -> Baseline:
    try:
        kind = (type(conn), tuple(sorted(connect_kwargs.items())))
        shared = _left_by_get_db.get(kind)
    except TypeError:  # an argument that cannot be a key: read everything for this one
        kind, shared = None, None
    if shared is None:
        shared = _read_all(
            conn,
            tuple(name for name in (*PRAGMAS, CASE_SENSITIVE_LIKE) if name not in PER_FILE_PRAGMAS),
        )
        if kind is not None:
            with _guard:
                shared = _left_by_get_db.setdefault(kind, shared)
    return Baseline(shared | _read_all(conn, PER_FILE_PRAGMAS), conn.busy_timeout)


# -- the pooled connection's side --------------------------------------------------------


def watch(conn: Any, connect_kwargs: Mapping[str, Any]) -> None:
    """Record what ``get_db`` set on a newly opened pooled connection, and start watching it.

    Called once, before the connection is first handed out: its functions
    and collations are still only the built-in ones, and its settings those
    that ``get_db`` made with ``connect_kwargs``.
    """
    _library(conn)
    conn._baseline = _baseline_of(conn, connect_kwargs)
    conn._changes.clear()
    _driver(conn).set_authorizer(conn._watch)


def put_back_callbacks(conn: Any) -> None:
    """First at check-in: remove what the block installed through Python's methods.

    Before anything runs SQL on the connection (the rollback included): a
    block's authorizer, progress handler or limits could refuse it. Setting
    the pool's authorizer again also makes SQLite re-prepare every cached
    statement on its next use, so that one the block ran to change a setting
    is seen again if a later block runs it.
    """
    changes: Changes = conn._changes
    if not changes.any or conn._baseline is None:
        return
    driver = _driver(conn)
    driver.set_authorizer(conn._watch)
    if changes.progress_handler:
        driver.set_progress_handler(None, 0)
    if changes.trace_callback:
        driver.set_trace_callback(None)
    for category, value in changes.limits.items():
        driver.setlimit(category, value)
    for op, enabled in changes.configs.items():
        driver.setconfig(op, enabled)
    changes.progress_handler = changes.trace_callback = False
    changes.limits.clear()
    changes.configs.clear()


def restore(conn: Any) -> None:
    """Last at check-in, after ``put_back_callbacks`` and the rollback: put settings back.

    Raises ``NotReusable`` when it cannot.

    Costs one attribute read when the block changed nothing this module watches.
    """
    baseline: Baseline | None = conn._baseline
    if baseline is None:  # not opened by the pool
        return
    changes: Changes = conn._changes
    if changes.any:
        _put_settings_back(conn, changes, baseline)
        changes.clear()  # not on NotReusable: asked again, it says so again
    if conn.busy_timeout != baseline.busy_timeout:
        conn.busy_timeout = baseline.busy_timeout


def _put_settings_back(conn: Any, changes: Changes, baseline: Baseline) -> None:
    if changes.cannot_undo is not None:
        raise NotReusable(changes.cannot_undo)
    if changes.pragmas:  # before the rest: query_only would refuse to drop temp tables
        _put_pragmas_back(conn, changes.pragmas, baseline)
    if changes.attached:
        _detach_all(conn)
    if changes.temp_objects:
        _drop_temp_objects(conn)


def _put_pragmas_back(conn: Any, names: set[str], baseline: Baseline) -> None:
    unknown = names - _KNOWN_PRAGMAS
    if unknown:
        raise NotReusable(
            f"PRAGMA {', '.join(sorted(unknown))} was set, which the pool does not know how "
            f"to put back"
        )
    for name in sorted(names & baseline.pragmas.keys()):  # the others: not in this build
        wanted = baseline.pragmas[name]
        if _read(conn, name) == wanted:
            continue
        if name in DISCARD_WHEN_CHANGED:
            raise NotReusable(f"PRAGMA {name} was changed")
        conn.execute(_setting_statement(name, wanted)).fetchall()
        if _read(conn, name) != wanted:
            raise NotReusable(f"PRAGMA {name} could not be put back to {wanted!r}")


def _setting_statement(name: str, value: object) -> str:
    if name == CASE_SENSITIVE_LIKE:
        return f"PRAGMA case_sensitive_like={'OFF' if value else 'ON'}"
    if isinstance(value, int) or (isinstance(value, str) and value.isidentifier()):
        return f"PRAGMA {name}={value}"  # journal_mode's value is a word
    raise NotReusable(f"PRAGMA {name} was changed and its value {value!r} cannot be set back")


def _detach_all(conn: Any) -> None:
    for (name,) in conn.execute(_ATTACHED).fetchall():
        conn.execute(f"DETACH DATABASE {quote_identifier(name)}")
    left = [name for (name,) in conn.execute(_ATTACHED).fetchall()]
    if left:
        raise NotReusable(f"database(s) {', '.join(left)} could not be detached")


def _drop_temp_objects(conn: Any) -> None:
    """Temp tables, views and triggers belong to the checkout that made them."""
    for kind, name in conn.execute(_TEMP_OBJECTS).fetchall():
        conn.execute(f"DROP {kind.upper()} IF EXISTS temp.{quote_identifier(name)}")
    if conn.execute("SELECT count(*) FROM temp.sqlite_master").fetchone()[0]:
        raise NotReusable("objects in the temp schema could not be dropped")


def _driver(conn: Any) -> Any:
    """The connection's methods as the driver defines them, past the watched wrappers."""
    return super(WatchesState, conn)


# -- Python's connection methods, watched -------------------------------------------------
#
# Each wrapper notes what the call changes, then makes it. They are descriptors
# rather than plain methods so that a method the driver lacks (sqlcipher3 has no
# setlimit, the standard library no set_busy_handler) stays missing.


class _Watched:
    """A driver method that first notes what it changes; missing where the driver lacks it."""

    def __init__(self, note: Callable[..., Any]) -> None:
        self._note = note
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, conn: Any, owner: type | None = None) -> Any:
        if conn is None:
            return self
        method = getattr(super(WatchesState, conn), self._name)  # AttributeError: not here
        note = self._note

        def watched(*args: Any, **kwargs: Any) -> Any:
            return note(conn, method, *args, **kwargs)

        watched.__name__ = watched.__qualname__ = self._name
        watched.__doc__ = method.__doc__
        return watched


def _set_authorizer(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The block's authorizer runs after the pool's watch, which check-in puts back alone."""
    given = [*args, *kwargs.values()]  # positional, or authorizer_callback= before 3.13
    if len(given) != 1:
        return method(*args, **kwargs)  # the driver's own TypeError
    conn._changes.any = True
    return method(conn._watch.chained(given[0]))


def _set_progress_handler(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    conn._changes.progress_handler = conn._changes.any = True
    return method(*args, **kwargs)


def _set_trace_callback(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    conn._changes.trace_callback = conn._changes.any = True
    return method(*args, **kwargs)


def _register_function(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """create_function, create_aggregate, create_window_function: the name comes first."""
    name = args[0] if args else kwargs.get("name")
    builtins = _library(conn).builtin_functions
    if builtins is None:
        conn._changes.cannot_be_undone(
            f"the SQL function {name}() was registered, and this SQLite cannot list its "
            f"built-in functions to tell whether it replaced one"
        )
    elif not isinstance(name, str) or name.lower() in builtins:
        conn._changes.cannot_be_undone(f"the built-in SQL function {name}() was replaced")
    # Python cannot unregister a function: one under a new name stays (see docs/cloud-mode.md).
    return method(*args, **kwargs)


def _create_collation(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    name = args[0] if args else kwargs.get("name")
    if isinstance(name, str) and name.lower() in _library(conn).builtin_collations:
        conn._changes.cannot_be_undone(f"the built-in collation {name} was replaced")
    return method(*args, **kwargs)


def _cannot_be_undone(what: str) -> Callable[..., Any]:
    def note(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        conn._changes.cannot_be_undone(what)
        return method(*args, **kwargs)

    return note


def _enable_load_extension(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if any(args) or any(kwargs.values()):
        conn._changes.cannot_be_undone("extension loading was enabled (extensions cannot unload)")
    return method(*args, **kwargs)


def _setlimit(conn: Any, method: Callable[..., Any], category: int, limit: int, /) -> int:
    before: int = method(category, limit)
    changes: Changes = conn._changes
    changes.limits.setdefault(category, before)
    changes.any = True
    return before


def _setconfig(conn: Any, method: Callable[..., Any], op: int, *args: Any) -> bool:
    changes: Changes = conn._changes
    changes.configs.setdefault(op, conn.getconfig(op))
    changes.any = True
    return bool(method(op, *args))


def _sets_busy_timeout(conn: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """sqlcipher3's set_busy_handler and set_busy_timeout: PRAGMA busy_timeout undoes both."""
    conn._changes.saw_pragma("busy_timeout")
    return method(*args, **kwargs)


if TYPE_CHECKING:
    _StateBase = Connection
else:
    _StateBase = object


class WatchesState(_StateBase):
    """Notes what a block changes through Python's connection methods (see Changes).

    A mixin for the pooled connection class, like connection.py's handle
    tracking, so that the encrypted twin carries it too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changes = Changes()
        self._watch = Watch(self._changes)
        self._baseline: Baseline | None = None  # set by watch() when the pool opens it

    if not TYPE_CHECKING:  # typed as the driver's own methods
        set_authorizer = _Watched(_set_authorizer)
        set_progress_handler = _Watched(_set_progress_handler)
        set_trace_callback = _Watched(_set_trace_callback)
        create_function = _Watched(_register_function)
        create_aggregate = _Watched(_register_function)
        create_window_function = _Watched(_register_function)
        create_collation = _Watched(_create_collation)
        enable_load_extension = _Watched(_enable_load_extension)
        load_extension = _Watched(_cannot_be_undone("an extension was loaded"))
        deserialize = _Watched(_cannot_be_undone("the database was replaced by deserialize()"))
        setlimit = _Watched(_setlimit)
        setconfig = _Watched(_setconfig)
        set_busy_handler = _Watched(_sets_busy_timeout)  # sqlcipher3
        set_busy_timeout = _Watched(_sets_busy_timeout)  # sqlcipher3
        set_key = _Watched(_cannot_be_undone("the key was changed with set_key()"))  # sqlcipher3
        reset_key = _Watched(_cannot_be_undone("the key was changed with reset_key()"))
