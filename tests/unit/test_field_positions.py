"""A record's fields by name (issue 15, item 4): positions derived from the one list; no number indexes a record."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mplog
from mplog import formatters
from mplog.wire import RECORD_FIELDS, schema

# The names a record, its fields or a frame's columns go by in mplog's code.
_RECORD_NAMES = frozenset(("fields", "rec", "record", "row", "records", "columns", "head"))


def _constant_name(field: str) -> str:
    return "F_" + re.sub(r"(?<=[a-z])(?=[A-Z])", "_", field).upper()


def test_every_field_has_a_named_position_derived_from_the_one_list() -> None:
    for i, field in enumerate(RECORD_FIELDS):
        assert getattr(schema, _constant_name(field)) == i
    assert {name for name in schema.__all__ if name.startswith("F_")} == set(map(_constant_name, RECORD_FIELDS))


def test_the_json_formatter_names_the_wire_fields_it_writes() -> None:
    assert set(formatters.RECORD_FIELDS) == set(RECORD_FIELDS) - {"exc_text", "stack_info", "extra"}


def test_no_module_indexes_a_record_by_a_number() -> None:
    root = Path(mplog.__file__).parent
    found = [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id in _RECORD_NAMES
        and isinstance(node.slice, ast.Constant)
        and type(node.slice.value) is int
        and node.slice.value > 0
    ]
    assert found == []
