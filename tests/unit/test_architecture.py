"""The package tree keeps its shape: no private name is imported from another part of mplog.

The layers themselves (which part may import which) are import-linter contracts in
pyproject.toml, run by ``lint-imports`` (tox -e lint, .ci/run); import-linter cannot say
"no private names across packages", so this test does, by reading the source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mplog

ROOT = Path(mplog.__file__).parent


def _part(module: str) -> str:
    """The part of mplog a module belongs to: ``mplog.listener.loop`` -> ``mplog.listener``."""
    return ".".join(module.split(".")[:2])


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_imports_across_parts() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        importer = _module_of(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("mplog."):
                continue
            if _part(node.module or "") == _part(importer):
                continue
            found.extend(
                f"{importer}:{node.lineno} imports {alias.name} from {node.module}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            )
    return found


def test_no_private_name_is_imported_from_another_part_of_mplog() -> None:
    assert _private_imports_across_parts() == []


def _private_imports_across_modules(package: str) -> list[str]:
    """Private names one module of ``package`` imports from another (the parts' rule, a module at a time)."""
    found = []
    for path in sorted((ROOT.parent / package.replace(".", "/")).glob("*.py")):
        importer = _module_of(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module == importer:
                continue
            found.extend(
                f"{importer}:{node.lineno} imports {alias.name} from {node.module}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            )
    return found


def test_the_wire_packages_modules_use_each_others_public_names() -> None:
    """The codec's repair and columns use what encode, decode and schema name publicly (issue 15, item 4)."""
    assert _private_imports_across_modules("mplog.wire") == []
