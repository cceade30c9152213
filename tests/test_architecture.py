"""The tree is the architecture: docs/architecture.md's picture, held against the package.

Static checks of the source (no imports run): every module is in the picture's
layers and every name in it is a module; a module's top-level imports reach only
its own layer or the ones above; nothing imports ``cli/`` or the pytest plugin;
no module imports another module's private names or reaches into private
members its own module does not define.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "circuitforge_core" / "db"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def modules() -> dict[str, Path]:
    """Dotted name under the package ("pool.registry", "aio" for aio/__init__) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layers() -> dict[str, int]:
    """Module -> its layer's number in the picture (0 is the top)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    block = re.search(r"```\n(.*?)```", text, re.S)
    assert block, f"{ARCHITECTURE}: no picture of the layers (a ``` block) found"
    lines: list[str] = []
    for line in block.group(1).splitlines():
        if line.startswith(" ") and lines:
            lines[-1] += " " + line.strip()  # a layer continued on the next line
        elif line.strip():
            lines.append(line)
    placed: dict[str, int] = {}
    for number, line in enumerate(lines):
        label, _, rest = line.partition(" ")
        if label.endswith("/"):  # "migrations/  folder  plan ...": the layer is one package
            rest = f"{label} ({rest})"
        for package, inside, name in re.findall(r"(\w+)/ \(([^)]*)\)|\((?:[^)]*)\)|(\w+)", rest):
            if package:
                placed[package] = number
                for module in inside.split():
                    placed[f"{package}.{module}"] = number
            elif name:
                placed[name] = number
    for module in modules():  # a package named alone ("cli/"): its modules are in its layer
        if module not in placed and module.split(".")[0] in placed:
            placed[module] = placed[module.split(".")[0]]
    return placed


def top_level_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports at its top level (not inside functions)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = here if is_package else here[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join([*base, *([node.module] if node.module else [])])
        for alias in node.names:
            full = f"{target}.{alias.name}" if target else alias.name
            found.add(full if full in known else target)
    return found - {name}


def test_the_picture_names_every_module_and_only_modules() -> None:
    """docs/architecture.md's layers and the tree hold the same modules."""
    known, placed = modules(), layers()
    missing = sorted(set(known) - set(placed) - {""})
    unknown = sorted(set(placed) - set(known))
    assert missing == [], f"modules not in {ARCHITECTURE.name}'s picture: {missing}"
    assert unknown == [], f"names in {ARCHITECTURE.name}'s picture that are no module: {unknown}"


def test_imports_reach_only_the_same_layer_or_above() -> None:
    """A module's top-level imports come from its own layer or an upper one, never a lower."""
    known, placed = modules(), layers()
    upward = []
    for name, path in known.items():
        if not name:
            continue  # the package's __init__ is its public surface: it imports every layer
        for target in top_level_imports(name, path, known):
            if target and placed.get(target, -1) > placed[name]:
                upward.append(f"{name} (layer {placed[name]}) imports {target} ({placed[target]})")
    assert upward == [], f"imports from a lower layer: {upward}"


def test_nothing_imports_the_command_line_or_the_pytest_plugin() -> None:
    """cli/ and pytest_plugin are leaves: only cli/ itself and __main__ import cli/."""
    known = modules()
    offenders = []
    for name, path in known.items():
        if name.split(".")[0] in ("cli", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = node.module or ""
            targets = [module] if module else [alias.name for alias in node.names]
            offenders += [
                f"{name}: from {'.' * node.level}{module} import ..."
                for target in targets
                if re.match(r"(circuitforge_core\.db\.)?(cli|pytest_plugin)\b", target)
            ]
    assert offenders == [], f"imports of the command line or the pytest plugin: {offenders}"


def test_no_module_imports_another_modules_private_names() -> None:
    """``from X import _name`` nowhere: modules of one package share names without an underscore."""
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                offenders += [
                    f"{name}: from {'.' * node.level}{node.module or ''} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offenders == [], f"private names imported from another module: {offenders}"


def test_no_module_reaches_into_private_members_it_does_not_define() -> None:
    """``obj._name`` only where this module defines ``_name`` (its own classes' members)."""
    offenders = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined.update(alias.asname or alias.name for alias in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                defined.add(node.value)  # __slots__ entries
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in defined
            ):
                offenders.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == [], f"private members of another module's objects: {offenders}"
