"""Realistic migration folders for the benchmarks, generated from code.

Owns what the benchmarked migrations look like: the kinds of change a
product's schema goes through over its life (new tables with foreign keys,
indexes and ``updated_at`` triggers, added columns, lookup tables with seed
rows, FTS5 search tables kept in step by triggers, views, data fixes, and
table rebuilds), repeated in a ten-file cycle. Does not time anything.

Rebuilds only ever target "leaf" tables that no other table references, so
the files also run unchanged as one ``executescript`` with foreign keys on
(the floor the runner is compared against).
"""

from __future__ import annotations

from pathlib import Path

CYCLE = 10  # one of each kind of change per ten files


def write_folder(folder: Path, count: int) -> Path:
    """Write ``001_...sql`` .. ``{count}_...sql`` into ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        name, text = migration(number)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def migration(number: int) -> tuple[str, str]:
    """The file name and text of migration ``number`` (1-based)."""
    if number == 1:
        return "001_accounts.sql", _accounts()
    cycle, kind = divmod(number - 2, CYCLE)
    slug, body = _KINDS[kind](cycle)
    name = f"{number:03d}_{slug}.sql"
    return name, f"-- {name}: {slug.replace('_', ' ')}\n{body}"


# Every cycle c owns three entity tables: item_c (owned by an account),
# part_c (belongs to an item) and event_c (a leaf: nothing references it).


def _accounts() -> str:
    return """\
-- 001_accounts.sql: the root every user-owned row hangs from
CREATE TABLE accounts (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name       TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO accounts (id, email, name) VALUES (1, 'owner@example.com', 'Owner');
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO settings VALUES ('theme', 'light'), ('locale', 'en; fallback=en-US');
"""


def _entity(table: str, parent: str, parent_column: str) -> str:
    """A table with a foreign key, its indexes and an ``updated_at`` trigger."""
    return f"""\
CREATE TABLE {table} (
    id          INTEGER PRIMARY KEY,
    {parent_column} INTEGER NOT NULL REFERENCES {parent}(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'active', 'done')),
    payload     TEXT,
    created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at  TEXT
);
CREATE INDEX {table}_by_{parent_column} ON {table}({parent_column});
CREATE INDEX {table}_by_status ON {table}(status, created_at);
CREATE TRIGGER {table}_touch AFTER UPDATE ON {table}
WHEN old.updated_at IS new.updated_at
BEGIN
    UPDATE {table} SET updated_at = CURRENT_TIMESTAMP WHERE id = new.id;
END;
"""


def _create_item(cycle: int) -> tuple[str, str]:
    body = _entity(f"item_{cycle}", "accounts", "account_id")
    body += f"INSERT INTO item_{cycle} (account_id, name) VALUES (1, 'first item; seeded');\n"
    return f"create_item_{cycle}", body


def _add_columns(cycle: int) -> tuple[str, str]:
    return f"add_item_{cycle}_columns", (
        f"ALTER TABLE item_{cycle} ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;\n"
        f"ALTER TABLE item_{cycle} ADD COLUMN due_at TEXT;\n"
        f"CREATE INDEX item_{cycle}_by_due ON item_{cycle}(due_at) WHERE due_at IS NOT NULL;\n"
    )


def _create_part(cycle: int) -> tuple[str, str]:
    body = _entity(f"part_{cycle}", f"item_{cycle}", "item_id")
    body += (
        f"INSERT INTO part_{cycle} (item_id, name)\n"
        f"    SELECT id, 'part of ' || name FROM item_{cycle};\n"
    )
    return f"create_part_{cycle}", body


def _lookup(cycle: int) -> tuple[str, str]:
    rows = ",\n    ".join(f"('code{n}', 'Label {n} (cycle {cycle})')" for n in range(10))
    return f"create_kind_{cycle}", (
        f"CREATE TABLE kind_{cycle} (code TEXT PRIMARY KEY, label TEXT NOT NULL) WITHOUT ROWID;\n"
        f"INSERT INTO kind_{cycle} (code, label) VALUES\n    {rows};\n"
    )


def _search(cycle: int) -> tuple[str, str]:
    table = f"item_{cycle}"
    fts = f"{table}_fts"
    slug = f"add_{table}_search"
    body = f"""\
CREATE VIRTUAL TABLE {fts} USING fts5(name, payload, content='{table}', content_rowid='id');
INSERT INTO {fts}(rowid, name, payload) SELECT id, name, payload FROM {table};
CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} BEGIN
    INSERT INTO {fts}(rowid, name, payload) VALUES (new.id, new.name, new.payload);
END;
CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} BEGIN
    INSERT INTO {fts}({fts}, rowid, name, payload) VALUES ('delete', old.id, old.name, old.payload);
END;
CREATE TRIGGER {fts}_update AFTER UPDATE OF name, payload ON {table} BEGIN
    INSERT INTO {fts}({fts}, rowid, name, payload) VALUES ('delete', old.id, old.name, old.payload);
    INSERT INTO {fts}(rowid, name, payload) VALUES (new.id, new.name, new.payload);
END;
"""
    return slug, body


def _view(cycle: int) -> tuple[str, str]:
    slug = f"create_item_{cycle}_summary"
    body = f"""\
CREATE VIEW item_{cycle}_summary AS
SELECT i.id, i.name, a.email, count(p.id) AS parts,
       CASE WHEN i.status = 'done' THEN 'closed' ELSE 'open' END AS state
FROM item_{cycle} AS i
JOIN accounts AS a ON a.id = i.account_id
LEFT JOIN part_{cycle} AS p ON p.item_id = i.id
GROUP BY i.id;
"""
    return slug, body


def _create_event(cycle: int) -> tuple[str, str]:
    return f"create_event_{cycle}", _entity(f"event_{cycle}", f"part_{cycle}", "part_id")


def _data_fix(cycle: int) -> tuple[str, str]:
    return f"activate_item_{cycle}", (
        "/* Items created before statuses existed; a ';' here must not split. */\n"
        f"UPDATE item_{cycle} SET status = 'active' WHERE status = 'new' AND payload IS NULL;\n"
        f"UPDATE settings SET value = value || ';v{cycle}' WHERE key = 'locale';\n"
    )


def _rebuild_event(cycle: int) -> tuple[str, str]:
    """The usual SQLite way to change a column: create new, copy, drop old, rename."""
    table = f"event_{cycle}"
    slug = f"rebuild_{table}"
    body = f"""\
CREATE TABLE {table}_new (
    id          INTEGER PRIMARY KEY,
    part_id     INTEGER NOT NULL REFERENCES part_{cycle}(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'active', 'done')),
    payload     TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at  TEXT
);
INSERT INTO {table}_new (id, part_id, name, status, payload, created_at, updated_at)
    SELECT id, part_id, name, status, coalesce(payload, ''), created_at, updated_at FROM {table};
DROP TABLE {table};
ALTER TABLE {table}_new RENAME TO {table};
CREATE INDEX {table}_by_part_id ON {table}(part_id);
CREATE TRIGGER {table}_touch AFTER UPDATE ON {table}
WHEN old.updated_at IS new.updated_at
BEGIN
    UPDATE {table} SET updated_at = CURRENT_TIMESTAMP WHERE id = new.id;
END;
"""
    return slug, body


def _guard(cycle: int) -> tuple[str, str]:
    slug = f"guard_part_{cycle}_names"
    body = f"""\
-- Names may not be blank; the message itself holds a ';'.
CREATE TRIGGER part_{cycle}_name_guard BEFORE INSERT ON part_{cycle}
BEGIN
    SELECT RAISE(ABORT, 'part name is blank; give it a name')
    WHERE trim(new.name) = '';
END;
CREATE INDEX part_{cycle}_by_name ON part_{cycle}(name COLLATE NOCASE);
"""
    return slug, body


# File 001 is the accounts table; the cycles start at file 002.
_KINDS = [
    _create_item,
    _add_columns,
    _create_part,
    _lookup,
    _search,
    _view,
    _create_event,
    _data_fix,
    _rebuild_event,
    _guard,
]
