"""Put this repository's circuitforge_core.db into a circuitforge-core checkout.

    python tools/export_to_core.py [--check] [--version X] [--allow-dirty] CORE_CHECKOUT
    make export-core CORE=../circuitforge-core [VERSION=0.22.0]

circuitforge_core.db is developed and tested here, but products get it inside the
circuitforge-core distribution, which also owns circuitforge_core/__init__.py and every other
subpackage (llm, tasks, ...). Two distributions must never write the same files, so this
repository's own build is for development only, and a release of the module is a change to a
circuitforge-core checkout, made by this tool:

- ``circuitforge_core/db/`` there is replaced by ``src/circuitforge_core/db/`` from here, whole:
  files the new package no longer has are removed (so is a stale ``build/lib`` copy of it).
  ``circuitforge_core/__init__.py`` there is never touched.
- ``docs/db/`` there is replaced by ``docs/`` from here, so products find the reference and the
  upgrade notes (``docs/db/upgrading.md``) in the core they upgrade.
- its pyproject.toml is checked and updated so that the core declares what this package needs:
  the runtime dependencies, every extra except ``dev`` (sqlcipher, web, ...), the console
  scripts (cf-db), the entry points (the ``pytest11`` plugin), the package data (py.typed), a
  ``requires-python`` no wider than ours, and a package list that includes
  ``circuitforge_core.db`` and its subpackages. Requirements of an extra that the core already
  has are kept; one for the same project is replaced by ours.
- ``--version X`` also sets the core's version (it must sort after its current one).

``--check`` writes nothing and exits 1 if the checkout differs from what an export would make
(useful in the core's CI, to catch edits made to circuitforge_core/db there instead of here).
Exit codes: 0 done or up to date, 1 ``--check`` found differences, 2 refused (nothing written).
Everything is planned and checked before the first file is written; the folder is swapped in by
rename and pyproject.toml replaced atomically.

Runs with the project's dev environment (it needs ``packaging``, which pytest brings).
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - the dev environment always has it
    sys.exit("error: this tool needs the 'packaging' library; run it with .venv/bin/python")

HERE = Path(__file__).resolve().parent.parent
PACKAGE = "circuitforge_core.db"
DISTRIBUTION = "circuitforge-core"
DEV_EXTRAS = {"dev"}  # this repository's tooling, never the core's business
IGNORED_FILES = ("__pycache__", "*.pyc", "*.pyo")
DOCS_FOLDER = "docs/db"  # where the core keeps this package's documentation, owned by the export


class Refused(Exception):
    """The export cannot be made safely; the message says what to fix. Nothing was written."""


# -- a TOML file edited as text ------------------------------------------------------
#
# tomllib only reads, and the core's pyproject.toml has comments worth keeping, so edits are
# made to its text: one entry (``key = value`` with everything up to the next top-level line)
# replaced or inserted, one table appended. The result is parsed again and compared with the
# intended values before anything is written.


def _line_states(text: str) -> list[bool]:
    """For each line: does it start outside every string, array and inline table?"""
    states = []
    depth = 0
    string: str | None = None  # the delimiter of the string we are in
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        if at_line_start:
            states.append(depth == 0 and string is None)
            at_line_start = False
        char = text[i]
        if string is not None:
            if string in ('"', '"""') and char == "\\":  # an escape, maybe a line-ending one
                at_line_start = text.startswith("\n", i + 1)
                i += 2
                continue
            if text.startswith(string, i):
                i += len(string)
                string = None
                continue
            if char == "\n":
                at_line_start = True
            i += 1
            continue
        if char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if char in "\"'":
            string = char * 3 if text.startswith(char * 3, i) else char
            i += len(string)
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "\n":
            at_line_start = True
        i += 1
    return states


_HEADER = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""\s*(?:"([^"\\]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")


@dataclass
class TomlText:
    """The lines of a TOML document, with the one kind of edit this tool makes."""

    lines: list[str]

    @classmethod
    def parse(cls, text: str) -> TomlText:
        return cls(_lines(text))

    def text(self) -> str:
        return "".join(self.lines)

    def table_span(self, name: str) -> tuple[int, int] | None:
        """The body of table ``[name]``: its first line and the line after its last entry."""
        top = _line_states(self.text())
        start = None
        for number, line in enumerate(self.lines):
            is_header = top[number] and line.lstrip().startswith("[")
            if not is_header:
                continue
            if start is not None:
                return start, self._entries_end(start, number)
            header = _HEADER.match(line)
            if (
                header
                and not line.lstrip().startswith("[[")
                and _dotted(header[1]) == _dotted(name)
            ):
                start = number + 1
        return None if start is None else (start, self._entries_end(start, len(self.lines)))

    def _entries_end(self, start: int, stop: int) -> int:
        """Before the blank and comment lines that lead up to ``stop`` (the next header)."""
        end = stop
        while end > start and (
            not self.lines[end - 1].strip() or self.lines[end - 1].lstrip().startswith("#")
        ):
            end -= 1
        return end

    def _entry_span(self, table: tuple[int, int], key: str) -> tuple[int, int] | None:
        """The lines of ``key = ...`` in a table body, a multi-line value included."""
        top = _line_states(self.text())
        first, stop = table
        for number in range(first, stop):
            match = _KEY.match(self.lines[number]) if top[number] else None
            if match and next(g for g in match.groups() if g is not None) == key:
                end = number + 1
                while end < stop and not top[end]:
                    end += 1
                return number, end
        return None

    def set_entry(self, table_name: str, key: str, value_text: str) -> None:
        """Replace or add ``key = value_text`` in ``[table_name]``, adding the table if needed."""
        entry = _lines(f"{_key(key)} = {value_text}\n")
        table = self.table_span(table_name)
        if table is None:
            if self.lines and not self.lines[-1].endswith("\n"):
                self.lines[-1] += "\n"
            self.lines += ["\n", f"[{table_name}]\n", *entry]
            return
        found = self._entry_span(table, key)
        if found is None:
            self.lines[table[1] : table[1]] = entry
        else:
            self.lines[found[0] : found[1]] = entry


def _lines(text: str) -> list[str]:
    """``text`` cut after each newline only (TOML's lines; str.splitlines also cuts at U+2028)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _dotted(name: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in name.split("."))


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _array(items: list[str]) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"    {json.dumps(item)},\n" for item in items) + "]"


# -- the plan --------------------------------------------------------------------------


@dataclass
class FolderPlan:
    """One folder of the core that an export replaces whole with one folder of this repository."""

    source: Path
    target: Path
    label: str  # the target, relative to the core checkout, as reports name it
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @classmethod
    def compare(cls, source: Path, target: Path, core: Path) -> FolderPlan:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise Refused(f"{target} is not a plain folder; replace it by hand")
        plan = cls(source, target, target.relative_to(core).as_posix())
        new_files = _files(source)
        old_files = _files(target) if target.exists() else {}
        plan.removed = sorted(set(old_files) - set(new_files))
        plan.added = sorted(set(new_files) - set(old_files))
        plan.changed = sorted(
            name
            for name in set(new_files) & set(old_files)
            if not filecmp.cmp(new_files[name], old_files[name], shallow=False)
        )
        return plan

    @property
    def differs(self) -> bool:
        return bool(self.removed or self.added or self.changed)


@dataclass
class Plan:
    """What an export changes in one core checkout."""

    core: Path
    folders: list[FolderPlan]  # the package first, then its documentation
    metadata: list[str] = field(default_factory=list)  # one line per pyproject change
    new_pyproject: str = ""
    notes: list[str] = field(default_factory=list)
    stale_build: Path | None = None  # a build/lib copy of the old package, removed with it

    def differences(self) -> list[str]:
        """One line per change an export would make."""
        lines = []
        for folder in self.folders:
            lines += [f"{folder.label}/{name}: not in this build" for name in folder.removed]
            lines += [f"{folder.label}/{name}: missing" for name in folder.added]
            lines += [f"{folder.label}/{name}: differs from this build" for name in folder.changed]
        return lines + [f"pyproject.toml: {line}" for line in self.metadata]


def _files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by relative POSIX path, caches left out."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(fnmatchcase(part, pattern) for part in relative.parts for pattern in IGNORED_FILES):
            continue
        if path.is_file() or path.is_symlink():
            found[relative.as_posix()] = path
    return found


def _subpackages(folder: Path) -> list[str]:
    """``circuitforge_core.db`` and every package below it, as dotted names."""
    names = [PACKAGE]
    for init in sorted(folder.rglob("__init__.py")):
        relative = init.parent.relative_to(folder)
        if relative.parts and "__pycache__" not in relative.parts:
            names.append(".".join((PACKAGE, *relative.parts)))
    return names


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise Refused(
            f"{path} does not exist; give the root of a circuitforge-core checkout"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise Refused(f"{path} is not valid TOML ({exc}); fix it first") from None


def _find_core_package(core: Path, config: dict[str, Any]) -> Path:
    """The core's circuitforge_core folder, wherever its layout puts it."""
    setuptools = config.get("tool", {}).get("setuptools", {})
    package_dir = setuptools.get("package-dir", {})
    packages = setuptools.get("packages")
    wheres = packages.get("find", {}).get("where", []) if isinstance(packages, dict) else []
    candidates: list[Path] = []
    if "circuitforge_core" in package_dir:
        candidates.append(core / package_dir["circuitforge_core"])
    roots = [package_dir[""]] if "" in package_dir else []
    candidates += [core / root / "circuitforge_core" for root in [*roots, *wheres, ".", "src"]]
    for folder in candidates:
        if (folder / "__init__.py").is_file():
            return folder.resolve()
    raise Refused(
        f"{core} has no circuitforge_core/__init__.py (looked in "
        f"{', '.join(str(c) for c in candidates)}); give the root of a circuitforge-core checkout"
    )


def _requirement(text: str, where: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise Refused(f"{where}: {text!r} is not a valid requirement ({exc})") from None


def _merge_requirements(theirs: list[str], ours: list[str], where: str) -> list[str]:
    """``theirs`` with each of ``ours`` added, or put in place of theirs for the same project."""
    merged = list(theirs)
    for mine in ours:
        name = canonicalize_name(_requirement(mine, "this build").name)
        same = [
            i
            for i, item in enumerate(merged)
            if canonicalize_name(_requirement(item, where).name) == name
        ]
        if not same:
            merged.append(mine)
        elif str(_requirement(merged[same[0]], where)) != str(_requirement(mine, "this build")):
            merged[same[0]] = mine
    return merged


def _check_packages_found(config: dict[str, Any], subpackages: list[str]) -> None:
    """Refuse when the core's setuptools settings would leave part of the package out."""
    setuptools = config.get("tool", {}).get("setuptools", {})
    packages = setuptools.get("packages")
    if isinstance(packages, list):
        missing = [name for name in subpackages if name not in packages]
        if missing:
            raise Refused(
                "pyproject.toml lists [tool.setuptools] packages explicitly and leaves out "
                f"{', '.join(missing)}; add them (or switch to packages.find) and run again"
            )
        return
    find = packages.get("find", {}) if isinstance(packages, dict) else {}
    include = find.get("include", ["*"])
    exclude = find.get("exclude", [])
    for name in subpackages:
        found = any(fnmatchcase(name, p) for p in include)
        if not found or any(fnmatchcase(name, p) for p in exclude):
            raise Refused(
                f"pyproject.toml's [tool.setuptools.packages.find] (include={include}, "
                f"exclude={exclude}) does not find {name}; make it match and run again"
            )


def _check_python(core_spec: str | None, our_spec: str) -> None:
    """Refuse a core that would install on a Python this package does not support."""
    ours = SpecifierSet(our_spec)
    theirs = SpecifierSet(core_spec or "")
    admitted = [f"3.{minor}" for minor in range(30) if theirs.contains(f"3.{minor}")]
    unsupported = [v for v in admitted if not ours.contains(v)]
    if unsupported:
        raise Refused(
            f"pyproject.toml has requires-python = {core_spec!r}, which admits Python "
            f"{', '.join(unsupported)}; circuitforge_core.db needs {our_spec!r}. Raise it "
            "(a change for the whole distribution, so it is not made for you) and run again"
        )


@dataclass(frozen=True)
class Entry:
    """One pyproject value the package needs: its table, key, and the value it must have."""

    table: str
    key: str
    before: Any
    after: Any

    def describe(self) -> str:
        where = f"[{self.table}] {self.key}"
        if self.before is None:
            return f"{where}: add {self.after!r}"
        return f"{where}: {self.before!r} -> {self.after!r}"

    def toml(self) -> str:
        return _array(self.after) if isinstance(self.after, list) else json.dumps(self.after)


def _needed_entries(
    core_config: dict[str, Any], ours: dict[str, Any], subpackages: list[str], version: str | None
) -> list[Entry]:
    """The pyproject values the core must change so it declares what the package needs.

    Raises Refused for what needs a human: a conflict, a setting for the whole distribution,
    metadata that is dynamic or written in a shape this tool does not edit.
    """
    project = core_config.get("project", {})
    our_project = ours["project"]
    if canonicalize_name(project.get("name", "")) != DISTRIBUTION:
        raise Refused(
            f"pyproject.toml names the distribution {project.get('name')!r}, not "
            f"{DISTRIBUTION!r}; give the root of a circuitforge-core checkout"
        )
    _check_python(project.get("requires-python"), our_project["requires-python"])
    _check_packages_found(core_config, subpackages)
    entries: list[Entry] = []

    if version is not None:
        current = str(project.get("version", "0"))
        try:
            later = Version(version) > Version(current)
        except InvalidVersion as exc:
            raise Refused(f"--version: {exc}") from None
        if version != current and not later:
            raise Refused(f"--version {version} does not sort after the core's {current}")
        entries.append(Entry("project", "version", current, version))

    dependencies = project.get("dependencies", [])
    merged = _merge_requirements(dependencies, our_project.get("dependencies", []), "dependencies")
    entries.append(Entry("project", "dependencies", project.get("dependencies"), merged))

    extras = project.get("optional-dependencies", {})
    for name, requirements in our_project.get("optional-dependencies", {}).items():
        if name not in DEV_EXTRAS:
            current = extras.get(name)
            merged = _merge_requirements(current or [], requirements, f"extra {name!r}")
            entries.append(Entry("project.optional-dependencies", name, current, merged))

    scripts = project.get("scripts", {})
    our_scripts = our_project.get("scripts", {})
    for name, target in our_scripts.items():
        current = scripts.get(name)
        if current is not None and current != target and not _inside_package(current):
            raise Refused(
                f"pyproject.toml's script {name} runs {current}, not circuitforge_core.db's "
                f"{target}; two commands cannot share a name, so rename one and run again"
            )
        entries.append(Entry("project.scripts", name, current, target))
    for name, target in scripts.items():
        if _inside_package(target) and name not in our_scripts:
            raise Refused(
                f"pyproject.toml's script {name} runs {target}, which this build no longer "
                "provides; remove it and run again"
            )

    groups = project.get("entry-points", {})
    for group, points in our_project.get("entry-points", {}).items():
        for name, target in points.items():
            current = groups.get(group, {}).get(name)
            if current is not None and current != target and not _inside_package(current):
                raise Refused(
                    f"pyproject.toml's {group} entry point {name} loads {current}, not "
                    f"circuitforge_core.db's {target}; two entry points cannot share a name, so "
                    "rename one and run again"
                )
            entries.append(Entry(f"project.entry-points.{group}", name, current, target))

    package_data = core_config.get("tool", {}).get("setuptools", {}).get("package-data", {})
    our_data = ours.get("tool", {}).get("setuptools", {}).get("package-data", {})
    for name, patterns in our_data.items():
        if name.startswith(PACKAGE):
            current = package_data.get(name)
            merged = list(current or []) + [p for p in patterns if p not in (current or [])]
            entries.append(Entry("tool.setuptools.package-data", name, current, merged))

    needed = [entry for entry in entries if entry.before != entry.after]
    for entry in needed:
        if entry.table.startswith("project") and _dynamic(project, entry):
            raise Refused(
                f"pyproject.toml declares project.{_dynamic(project, entry)} dynamic; this tool "
                "edits static metadata only, so make that change by hand"
            )
    return needed


def _inside_package(entry_point: str) -> bool:
    """Whether ``module:function`` names a module of circuitforge_core.db."""
    module = entry_point.split(":", 1)[0].strip()
    return module == PACKAGE or module.startswith(f"{PACKAGE}.")


def _dynamic(project: dict[str, Any], entry: Entry) -> str | None:
    field_name = entry.key if entry.table == "project" else entry.table.split(".")[1]
    return field_name if field_name in project.get("dynamic", []) else None


def _expected(config: dict[str, Any], entries: list[Entry]) -> dict[str, Any]:
    """``config`` with every entry set: what the edited pyproject.toml must parse to."""
    expected = copy.deepcopy(config)
    for entry in entries:
        table = expected
        for part in entry.table.split("."):
            table = table.setdefault(part, {})
        table[entry.key] = entry.after
    return expected


def _edit(original: str, before: dict[str, Any], entries: list[Entry]) -> str:
    """The text of pyproject.toml with ``entries`` made, checked by parsing it again."""
    text = TomlText.parse(original)
    for entry in entries:
        if text.table_span(entry.table) is None and _has(before, entry.table):
            raise Refused(
                f"pyproject.toml defines {entry.table} inline or with dotted keys rather than "
                f"as a [{entry.table}] table; move it to its own table and run again"
            )
        text.set_entry(entry.table, entry.key, entry.toml())
    edited = text.text()
    try:
        after = tomllib.loads(edited)
    except tomllib.TOMLDecodeError as exc:  # a bug in this tool: say so rather than write it
        raise Refused(f"editing pyproject.toml made it invalid ({exc}); edit it by hand") from None
    if after != _expected(before, entries):
        raise Refused("editing pyproject.toml did not give the intended values; edit it by hand")
    return edited


def _has(config: dict[str, Any], dotted: str) -> bool:
    table: Any = config
    for part in dotted.split("."):
        if not isinstance(table, dict) or part not in table:
            return False
        table = table[part]
    return True


def plan_export(core: Path, version: str | None = None) -> Plan:
    """Everything an export into ``core`` would change; raises Refused, writes nothing."""
    core = core.resolve()
    ours = _load(HERE / "pyproject.toml")
    source = HERE / "src" / "circuitforge_core" / "db"
    pyproject = core / "pyproject.toml"
    core_config = _load(pyproject)
    package = FolderPlan.compare(source, _find_core_package(core, core_config) / "db", core)
    docs = FolderPlan.compare(HERE / "docs", core / DOCS_FOLDER, core)
    plan = Plan(core=core, folders=[package, docs])
    built = core / "build" / "lib" / package.target.relative_to(package.target.parents[1])
    if built.is_dir() and package.differs:
        plan.stale_build = built
    entries = _needed_entries(core_config, ours, _subpackages(source), version)
    plan.metadata = [entry.describe() for entry in entries]
    original = pyproject.read_text(encoding="utf-8")
    plan.new_pyproject = _edit(original, core_config, entries) if entries else original
    plan.notes = _notes(core_config, version, ours)
    return plan


def _notes(core_config: dict[str, Any], version: str | None, ours: dict[str, Any]) -> list[str]:
    """What the maintainer still has to do by hand."""
    current = version or core_config.get("project", {}).get("version", "0")
    ours_version = ours["project"]["version"]
    notes = []
    try:
        if Version(current) <= Version(ours_version):
            notes.append(
                f"the core's version {current} does not sort after this build's {ours_version}: "
                "set a higher one (--version) before releasing, or an environment that has this "
                "development build installed will not upgrade to it"
            )
    except InvalidVersion:
        notes.append(f"the core's version {current!r} is not a valid version")
    notes.append(
        f"add a CHANGELOG line to the core pointing products at {DOCS_FOLDER}/upgrading.md"
    )
    return notes


# -- applying it -----------------------------------------------------------------------


def _dirty(core: Path, paths: list[Path]) -> list[str]:
    """Uncommitted changes to ``paths`` in the core's git work tree (none outside git)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(core), "status", "--porcelain", "--", *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return result.stdout.splitlines() if result.returncode == 0 else []


def _replace_folder(folder: FolderPlan) -> None:
    """Put a fresh copy of ``folder.source`` where ``folder.target`` is, by rename."""
    folder.target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cf-export-", dir=folder.target.parent))
    try:
        fresh, old = staging / "new", staging / "old"
        # Fresh modification times (copy, not copy2): setuptools copies a file into build/
        # only when it is newer than the copy already there.
        shutil.copytree(
            folder.source,
            fresh,
            ignore=shutil.ignore_patterns(*IGNORED_FILES),
            copy_function=shutil.copy,
        )
        if folder.target.exists():
            folder.target.rename(old)
        try:
            fresh.rename(folder.target)
        except BaseException:
            if old.exists():
                old.rename(folder.target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def apply(plan: Plan) -> None:
    """Swap each folder in by rename, then replace pyproject.toml atomically."""
    for folder in plan.folders:
        if folder.differs:
            _replace_folder(folder)
    # setuptools never empties build/lib, so a module removed here would still be built
    # into the next wheel from there.
    if plan.stale_build is not None:
        shutil.rmtree(plan.stale_build)
    if plan.metadata:
        pyproject = plan.core / "pyproject.toml"
        handle, temporary = tempfile.mkstemp(prefix=".pyproject-", dir=plan.core)
        try:
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
                out.write(plan.new_pyproject)
            shutil.copymode(pyproject, temporary)
            os.replace(temporary, pyproject)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _report(plan: Plan) -> Iterator[str]:
    for folder in plan.folders:
        for what, names in (
            ("removed", folder.removed),
            ("added", folder.added),
            ("updated", folder.changed),
        ):
            for name in names:
                yield f"{what} {folder.label}/{name}"
    if plan.stale_build is not None:
        yield f"removed {plan.stale_build} (an old build of the package)"
    for line in plan.metadata:
        yield f"pyproject.toml: {line}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export_to_core.py",
        description="Put circuitforge_core.db from this repository into a circuitforge-core "
        "checkout: the package folder, and the extras, scripts and package data its "
        "pyproject.toml must declare.",
        epilog="exit codes: 0 done or up to date, 1 --check found differences, 2 refused.",
    )
    parser.add_argument("core", type=Path, help="root of the circuitforge-core checkout")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on differences")
    parser.add_argument("--version", help="also set the core's version (must sort after it)")
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="export even over uncommitted changes to the core's db folder or pyproject.toml",
    )
    args = parser.parse_args(argv)
    try:
        plan = plan_export(args.core, args.version)
        if args.check:
            differences = plan.differences()
            for line in differences:
                print(line)
            if differences:
                print(
                    f"{plan.core}: {len(differences)} difference(s) from this build of "
                    f"{PACKAGE}; run tools/export_to_core.py without --check"
                )
                return 1
            print(f"{plan.core}: circuitforge_core/db and pyproject.toml match this build")
            return 0
        if not (any(folder.differs for folder in plan.folders) or plan.metadata):
            print(f"{plan.core}: already up to date")
            return 0
        targets = [folder.target for folder in plan.folders]
        dirty = _dirty(plan.core, [*targets, plan.core / "pyproject.toml"])
        if dirty and not args.allow_dirty:
            raise Refused(
                f"{plan.core} has uncommitted changes the export would overwrite "
                f"({'; '.join(d.strip() for d in dirty[:5])}); commit or stash them, "
                "or pass --allow-dirty"
            )
        apply(plan)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in _report(plan):
        print(line)
    for note in plan.notes:
        print(f"to do: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
