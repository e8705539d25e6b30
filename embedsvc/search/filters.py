"""Metadata filters: one small query language, compiled to one SQL condition for every mode.

A filter is a JSON object, as in MongoDB, Chroma or Qdrant's simple form::

    {"year": {"$gte": 2015, "$lt": 2020}, "journal": {"$in": ["Nature", "Cell"]}}
    {"$or": [{"kind": "review"}, {"cited": {"$gt": 100}}], "retracted": {"$ne": true}}

Keys side by side are ANDed. Operators: equality (a bare value or ``$eq``), ``$ne``,
``$in``, ``$nin``, ``$gt``/``$gte``/``$lt``/``$lte`` and ``$and``/``$or``. Values are
strings, numbers or booleans; a range compares numbers with numbers and strings with
strings, never one with the other (SQLite would order every number before every string).
``$ne`` and ``$nin`` match documents that lack the field, as MongoDB does.

The condition reads ``documents.metadata`` through ``json_extract`` with exactly the
expression of :func:`field_expression`, so the indexes made for a collection's indexed
fields (:func:`index_statement`) serve it; any other field is filtered by a scan.
Every mistake raises :class:`FilterError` naming the operator, field or value to change.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_RANGES = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = ("$eq", "$ne", "$in", "$nin", *_RANGES)
_LOGICAL = ("$and", "$or")


class FilterError(ValueError):
    """A filter that cannot be applied; the message names what to change, and ``limit`` the
    setting (``max_filter_depth``, ``max_filter_conditions``) when it is one that it broke."""

    def __init__(self, message: str, limit: str | None = None):
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class CompiledFilter:
    """A filter as an SQL condition on ``documents`` and its parameters."""

    sql: str
    params: tuple[Any, ...]
    key: str  # canonical JSON of the filter: equal filters have equal keys


def check_field(name: Any) -> str:
    if not isinstance(name, str) or not FIELD.fullmatch(name):
        raise FilterError(f"field name {name!r}: use 1-64 letters, digits, '_' or '-', starting "
                          "with a letter or '_'")
    return name


def field_expression(name: str) -> str:
    return f"json_extract(documents.metadata, '$.\"{check_field(name)}\"')"


def index_statement(name: str) -> str:
    """The expression index that makes filters on ``name`` use an index."""
    return (f'CREATE INDEX IF NOT EXISTS "meta_{check_field(name)}" ON documents('
            f"json_extract(metadata, '$.\"{name}\"'))")


def _type_of(name: str) -> str:
    return f"json_type(documents.metadata, '$.\"{name}\"')"


def compile_filter(raw: Any, max_depth: int = 8, max_conditions: int = 64) -> CompiledFilter:
    """Check a filter and compile it.

    Args:
        raw: the filter as parsed from JSON.
        max_depth: most nested ``$and``/``$or`` levels.
        max_conditions: most field conditions in the whole filter.

    Raises:
        FilterError: unknown operator, wrong value type, bad field name, too deep or too big.
    """
    compiler = _Compiler(max_depth, max_conditions)
    sql, params = compiler.clause(raw, "filter", 0)
    return CompiledFilter(sql, tuple(params), json.dumps(raw, sort_keys=True))


class _Compiler:
    def __init__(self, max_depth: int, max_conditions: int):
        self.max_depth, self.max_conditions = max_depth, max_conditions
        self.conditions = 0

    def clause(self, raw: Any, where: str, depth: int) -> tuple[str, list[Any]]:
        if not isinstance(raw, dict):
            raise FilterError(f"{where}: expected an object such as {{\"field\": value}}, got "
                              f"{_kind(raw)}")
        if depth > self.max_depth:
            raise FilterError(f"{where}: nested deeper than {self.max_depth} levels of $and/$or",
                              limit="max_filter_depth")
        parts = [self.logical(key, value, f"{where}.{key}", depth) if key.startswith("$")
                 else self.field(check_field(key), value, f"{where}.{key}") for key, value in raw.items()]
        if not parts:
            return "1", []
        return " AND ".join(f"({sql})" for sql, _ in parts), [p for _, ps in parts for p in ps]

    def logical(self, op: str, value: Any, where: str, depth: int) -> tuple[str, list[Any]]:
        if op not in _LOGICAL:
            raise FilterError(f"{where}: unknown operator {op!r} here; use $and or $or to "
                              f"combine, or put {', '.join(_OPERATORS)} under a field")
        if not isinstance(value, list) or not value:
            raise FilterError(f"{where}: {op} takes a non-empty list of filters, got {_kind(value)}")
        parts = [self.clause(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
        joiner = " AND " if op == "$and" else " OR "
        return joiner.join(f"({sql})" for sql, _ in parts), [p for _, ps in parts for p in ps]

    def field(self, name: str, value: Any, where: str) -> tuple[str, list[Any]]:
        conditions = value.items() if isinstance(value, dict) else [("$eq", value)]
        if isinstance(value, dict) and not value:
            raise FilterError(f"{where}: empty condition; give a value or an operator")
        parts = [self.condition(name, op, operand, f"{where}.{op}" if isinstance(value, dict)
                                else where) for op, operand in conditions]
        return " AND ".join(f"({sql})" for sql, _ in parts), [p for _, ps in parts for p in ps]

    def condition(self, name: str, op: str, operand: Any, where: str) -> tuple[str, list[Any]]:
        self.conditions += 1
        if self.conditions > self.max_conditions:
            raise FilterError(f"the filter has over {self.max_conditions} conditions; simplify it",
                              limit="max_filter_conditions")
        expr = field_expression(name)
        if op in ("$eq", "$ne"):
            _scalar(operand, where)
            if isinstance(operand, bool):  # JSON true/false, never the numbers 1/0
                verb = "=" if op == "$eq" else "IS NOT"
                return f"{_type_of(name)} {verb} ?", ["true" if operand else "false"]
            return f"{expr} {'=' if op == '$eq' else 'IS NOT'} ?", [operand]
        if op in ("$in", "$nin"):
            if not isinstance(operand, list):
                raise FilterError(f"{where}: {op} takes a list of values, got {_kind(operand)}")
            for i, item in enumerate(operand):
                _scalar(item, f"{where}[{i}]")
            if any(isinstance(item, bool) for item in operand):
                raise FilterError(f"{where}: {op} takes strings or numbers; for a boolean use "
                                  "the value itself")
            sql = f"{expr} IN (SELECT value FROM json_each(?))"
            return (sql if op == "$in" else f"coalesce({sql}, 0) = 0"), [json.dumps(operand)]
        if op in _RANGES:
            if isinstance(operand, bool) or not isinstance(operand, int | float | str):
                raise FilterError(f"{where}: {op} compares with a number or a string, got "
                                  f"{_kind(operand)}")
            _scalar(operand, where)
            kinds = "('text')" if isinstance(operand, str) else "('integer', 'real')"
            return f"{_type_of(name)} IN {kinds} AND {expr} {_RANGES[op]} ?", [operand]
        raise FilterError(f"{where}: unknown operator {op!r}; use one of {', '.join(_OPERATORS)}")


def _scalar(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"{where}: {value} is not a number a document can hold; give a finite one")
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise FilterError(f"{where}: {value} is beyond 64-bit integers; give a smaller number")
    if isinstance(value, str) and not encodable(value):
        raise FilterError(f"{where}: the text is not valid Unicode (a lone surrogate); send "
                          "UTF-8 text")
    if not isinstance(value, str | int | float | bool):
        raise FilterError(f"{where}: expected a string, number or boolean, got {_kind(value)}")


def encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode: JSON's ``"\\ud800"`` decodes to a lone surrogate,
    which no UTF-8 store (SQLite included) can hold."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
