"""Values compared once their representation is normalised: what the CRM served, what the project
loaded and what plain dlt loaded must be the same data, whatever types each one chose.

Timestamps compare as instants, dates as dates, decimals, floats and integers as numbers, JSON as
parsed values, and a value that went to a variant column (`<column>__v_<type>`) still counts as
the column's value. Nothing here knows a profile's field names or id type.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from dlt.common.schema import Schema

normalize = Schema("crm").naming.normalize_path


def _instant(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace(" ", "T", 1))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal | str):
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return None
    return None


def equivalent(a: Any, b: Any) -> bool:
    """Whether `a` and `b` are the same value in two representations."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, datetime) or isinstance(b, datetime):
        ia, ib = _instant(a), _instant(b)
        return ia is not None and ia == ib
    if isinstance(a, date) or isinstance(b, date):
        return str(a) == str(b)
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        pa = json.loads(a) if isinstance(a, str) else a
        pb = json.loads(b) if isinstance(b, str) else b
        return pa == pb
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float | Decimal) or isinstance(b, int | float | Decimal):
        na, nb = _number(a), _number(b)
        return na is not None and na == nb
    return a == b


def logical(row: dict[str, Any], column: str) -> Any:
    """A column's value in a row, taken from a variant column when the column holds null."""
    value = row.get(column)
    if value is not None:
        return value
    for name, other in row.items():
        if name.startswith(f"{column}__v_") and other is not None:
            return other
    return None


def candidates(field: str, columns: list[str]) -> list[str]:
    """The warehouse columns an API field may have landed in: its normalised name, or that name
    with a numbered suffix when another field normalised to the same name."""
    base = normalize(field)
    pattern = re.compile(rf"{re.escape(base)}_\d+")
    return [base, *(c for c in columns if pattern.fullmatch(c))]


def record_differences(record: dict[str, Any], row: dict[str, Any]) -> list[str]:
    """Fields of an API record whose value is in no candidate column of its warehouse row."""
    columns = list(row)
    return [
        f"{field}={value!r}"
        for field, value in record.items()
        if not any(equivalent(value, logical(row, c)) for c in candidates(field, columns))
    ]


def flattened(value: Any, path: str) -> Any:
    """`address__city` of a JSON column `address`: the nested value dlt would have flattened
    into that column (dlt normalises each nested key, so `Region__c` is `region__c` there)."""
    data = json.loads(value) if isinstance(value, str) else value
    return _flatten(data, "").get(path)


def _flatten(data: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = normalize(key) if not prefix else f"{prefix}__{normalize(key)}"
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out
