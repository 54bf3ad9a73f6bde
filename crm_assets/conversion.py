"""API records to typed Arrow tables: the data decides the types, the declaration refines them.

dlt types JSON records by inference, record by record, which is the slowest part of a plain
`rest_api_source` sync. This module does the same job on whole batches in Arrow, with the same
outcome a user of dlt expects, and never loses a value:

- A column the warehouse already has keeps its type (from dlt's stored schema).
- A new column takes its declared type when every value of the first batch converts to it
  without loss (an integer into a text column is `'3'`, a numeric string into a decimal is fine);
  otherwise it takes the type its values have, and the drift is reported.
- An undeclared column is typed as dlt types JSON: integers `bigint`, numbers with a fraction
  `double`, booleans `bool`, ISO timestamps (offsets, fractional seconds) `timestamp`, ISO dates
  `date`, nested objects and lists `json`, anything else `text`.
- A later value that does not fit its column goes to a variant column `<name>__v_<type>`, as dlt
  names them, instead of being truncated, rounded or nulled.
- Field names are normalised with dlt's naming convention; two fields that normalise to one name
  (`createdAt` beside `created_at`) both load, the second under `<name>_<n>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SYSTEM_PREFIXES = ("_dlt", "_crm")  # columns the pipeline adds, not the CRM
EXACT_FLOAT_INT = 2**53  # beyond this an integer does not survive a trip through a double
DEFAULT_DECIMAL = (38, 9)

# ISO-8601 forms Arrow and Python both read without loss: a date, a time to the minute, second
# or microsecond, and an optional `Z` or numeric offset. Nanoseconds would be truncated: not
# matched, so such a column stays text.
_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TIMESTAMP_RE = re.compile(_TIMESTAMP)
_DATE_RE = re.compile(_DATE)
_INTEGER_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")

# What Arrow and Python raise when a value does not fit the type asked for.
CONVERSION_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    OverflowError,
    TypeError,
    ValueError,
    InvalidOperation,
)


@dataclass(frozen=True)
class ColumnType:
    """A warehouse column type in dlt's terms."""

    data_type: str
    precision: int | None = None
    scale: int | None = None

    @classmethod
    def of(cls, column: Mapping[str, Any]) -> ColumnType:
        data_type = str(column.get("data_type") or "text")
        if data_type == "decimal":
            precision, scale = DEFAULT_DECIMAL
            return cls(
                "decimal", int(column.get("precision") or precision), int(column.get("scale") or 0)
            )
        if data_type in ("wei",):
            return cls("decimal", *DEFAULT_DECIMAL)
        return cls(data_type if data_type in _ARROW else "text")

    def arrow(self) -> pa.DataType:
        if self.data_type == "decimal":
            return pa.decimal128(self.precision or DEFAULT_DECIMAL[0], self.scale or 0)
        return _ARROW[self.data_type]

    def hints(self) -> dict[str, Any]:
        hints: dict[str, Any] = {"data_type": self.data_type}
        if self.data_type == "decimal":
            hints.update(precision=self.precision, scale=self.scale)
        if self.data_type == "timestamp":
            hints.update(timezone=True, precision=6)
        return hints

    def __str__(self) -> str:
        if self.data_type == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return self.data_type


_ARROW: dict[str, pa.DataType] = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "json": pa.string(),  # serialised JSON; dlt's `json` hint makes it a JSON column
    "decimal": pa.decimal128(*DEFAULT_DECIMAL),
}
TEXT = ColumnType("text")
BIGINT = ColumnType("bigint")
DOUBLE = ColumnType("double")
BOOL = ColumnType("bool")
TIMESTAMP = ColumnType("timestamp")
DATE = ColumnType("date")
JSON = ColumnType("json")
# Types Arrow's struct conversion reads straight from JSON values; timestamps and dates travel as
# their ISO text and are cast afterwards.
_STRUCT_TRANSPORT: dict[ColumnType, pa.DataType] = {
    TEXT: pa.string(),
    BIGINT: pa.int64(),
    DOUBLE: pa.float64(),
    BOOL: pa.bool_(),
    TIMESTAMP: pa.string(),
    DATE: pa.string(),
}


class _Misfit:
    """Marks a value that does not convert to a type without loss."""


MISFIT = _Misfit()


def value_kind(value: Any) -> ColumnType:
    """The type a single JSON value has on its own (timestamps are not detected here)."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return BIGINT if INT64_MIN <= value <= INT64_MAX else TEXT
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, dict | list):
        return JSON
    return TEXT


def json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, which orjson refuses
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _number_text(value: Any) -> str | None:
    """A number's JSON text, or None for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return json_text(value)


def _parse_timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace(" ", "T", 1))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def fit(value: Any, target: ColumnType) -> Any:
    """`value` converted to `target` without loss, or MISFIT. None stays None."""
    if value is None:
        return None
    kind = target.data_type
    try:
        if kind == "text":
            if isinstance(value, str):
                return value
            text = _number_text(value)
            return MISFIT if text is None else text
        if kind == "json":
            return json_text(value)
        if kind == "bool":
            return value if isinstance(value, bool) else MISFIT
        if kind == "bigint":
            if isinstance(value, bool):
                return MISFIT
            if isinstance(value, float):
                value = int(value) if value.is_integer() else MISFIT
            elif isinstance(value, str):
                value = int(value) if _INTEGER_RE.match(value) else MISFIT
            if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
                return value
            return MISFIT
        if kind == "double":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return MISFIT
            return float(value) if abs(value) <= EXACT_FLOAT_INT else MISFIT
        if kind == "decimal":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                return MISFIT
            number = Decimal(str(value))
            if not number.is_finite():
                return MISFIT
            digits = number.as_tuple()
            scale = max(0, -int(digits.exponent))
            whole = len(digits.digits) + int(digits.exponent)
            if scale > (target.scale or 0) or whole > (target.precision or 38) - (
                target.scale or 0
            ):
                return MISFIT
            return number
        if kind == "timestamp":
            if isinstance(value, str) and _TIMESTAMP_RE.match(value):
                return _parse_timestamp(value)
            return MISFIT
        if kind == "date":
            if isinstance(value, str) and _DATE_RE.match(value):
                return date.fromisoformat(value)
            return MISFIT
    except CONVERSION_ERRORS:
        return MISFIT
    return MISFIT


def _all_match(array: pa.Array, pattern: str) -> bool:
    valid = array.drop_null()
    return len(valid) == 0 or bool(pc.all(pc.match_substring_regex(valid, pattern)).as_py())


def _fast(values: list[Any], target: ColumnType) -> pa.Array:
    """The whole column in Arrow's converters; raises when any value would not fit."""
    kind = target.data_type
    if kind == "json":
        return pa.array([None if v is None else json_text(v) for v in values], pa.string())
    if kind == "bigint":
        # Arrow turns 1.5 into 1 in an integer column without a word: refuse floats here.
        if any(type(v) is float for v in values):
            raise pa.ArrowInvalid("float in an integer column")
        return pa.array(values, pa.int64())
    if kind == "double":
        # ... and True into 1.0 in a double column.
        if any(type(v) is bool for v in values):
            raise pa.ArrowInvalid("boolean in a double column")
        if any(type(v) is int and abs(v) > EXACT_FLOAT_INT for v in values):
            raise pa.ArrowInvalid("integer beyond a double's precision")
        return pa.array(values, pa.float64())
    if kind == "decimal":
        if any(type(v) is bool for v in values):
            raise pa.ArrowInvalid("boolean in a decimal column")
        text = pa.array([None if v is None else str(v) for v in values], pa.string())
        return text.cast(target.arrow())
    if kind in ("timestamp", "date"):
        return _temporal(pa.array(values, pa.string()), target)
    return pa.array(values, target.arrow())


def _temporal(text: pa.Array, target: ColumnType) -> pa.Array:
    """ISO text to timestamps (UTC) or dates; raises unless every value is one."""
    if target.data_type == "date":
        if not _all_match(text, _DATE):
            raise pa.ArrowInvalid("not an ISO date")
        return text.cast(pa.date32())
    if not _all_match(text, _TIMESTAMP):
        raise pa.ArrowInvalid("not an ISO timestamp")
    try:
        return text.cast(target.arrow())
    except CONVERSION_ERRORS:
        # Timestamps without an offset are taken as UTC, as dlt takes them; Arrow's cast wants
        # one form per column, so a column that mixes both goes value by value.
        return pa.array(
            [None if v is None else _parse_timestamp(v) for v in text.to_pylist()],
            target.arrow(),
        )


def convert(values: list[Any], target: ColumnType) -> tuple[pa.Array, list[int]]:
    """`values` as an Arrow array of `target`, and the positions of values that do not fit it
    (left null in the array, for a variant column to take)."""
    try:
        return _fast(values, target), []
    except CONVERSION_ERRORS:
        pass
    converted: list[Any] = []
    misfits: list[int] = []
    for position, value in enumerate(values):
        result = fit(value, target)
        if result is MISFIT:
            misfits.append(position)
            converted.append(None)
        else:
            converted.append(result)
    return pa.array(converted, target.arrow()), misfits


def infer(values: Iterable[Any]) -> ColumnType:
    """The type dlt would give a new column holding `values` (nulls aside), with ISO dates
    detected too: a column of date-only strings is a `date`, not text."""
    kinds: list[ColumnType] = []
    seen: set[ColumnType] = set()
    strings: list[str] = []
    for value in values:
        if value is None:
            continue
        kind = value_kind(value)
        if kind not in seen:
            seen.add(kind)
            kinds.append(kind)
        if isinstance(value, str):
            strings.append(value)
    if not kinds:
        return TEXT
    if seen <= {BIGINT, DOUBLE}:
        return DOUBLE if DOUBLE in seen else BIGINT
    if seen == {TEXT} and strings:
        text = pa.array(strings, pa.string())
        for temporal in (TIMESTAMP, DATE):
            try:
                _temporal(text, temporal)
            except CONVERSION_ERRORS:
                continue
            return temporal
    # Mixed kinds: the first value's type is the column's, as in dlt; the rest convert to it
    # where they can and go to variant columns where they cannot.
    return kinds[0]


def variant_name(column: str, kind: ColumnType) -> str:
    return f"{column}__v_{kind.data_type}"


@dataclass
class Drift:
    """How a resource's data differs from its declaration. Judged on the table as it stands
    after this sync (its columns and their types), so a difference is reported on every sync
    until the declaration says what the CRM sends, not only on the sync that first saw it."""

    never_sent: list[str] = field(default_factory=list)  # declared, no column ever loaded
    undeclared: list[str] = field(default_factory=list)  # loaded, not declared
    mistyped: dict[str, str] = field(default_factory=dict)  # column -> "declared X, loaded as Y"
    variants: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # API field -> column
    spelled: dict[str, str] = field(default_factory=dict)  # declared field -> the CRM's name

    @property
    def count(self) -> int:
        return len(self.never_sent) + len(self.undeclared) + len(self.mistyped) + len(self.variants)


class KeyTypeChanged(Exception):
    """The primary key's values no longer fit the key column the warehouse already has."""


class TableBuilder:
    """Types the records of one resource, batch after batch, the same way for the whole sync.

    `declared` are the declared columns (dlt column hints, keyed by the API's field names);
    `existing` the columns dlt's schema already holds for the table (earlier syncs);
    `renames` the field -> column names given to colliding fields in earlier syncs (kept in the
    resource's state, so a column never changes its source between syncs);
    `spelled` the declared fields the CRM sent under its own spelling in earlier syncs (declared
    name -> the CRM's, also kept in the state).

    A declared field is matched by its name through the naming convention, as dlt matches its
    hints to columns: a CRM that sends `Id` or `Name` where the declaration says `id` and `name`
    sends those fields, into their declared columns, with their declarations (the primary key
    included), unless it also sends the declared spelling itself.
    """

    def __init__(
        self,
        resource: str,
        declared: Mapping[str, Mapping[str, Any]],
        primary_key: str | None,
        normalize: Callable[[str], str],
        existing: Mapping[str, Mapping[str, Any]] | None = None,
        renames: Mapping[str, str] | None = None,
        spelled: Mapping[str, str] | None = None,
    ) -> None:
        self.resource = resource
        self.declared = dict(declared)
        self.normalize = normalize
        if primary_key and primary_key not in self.declared:
            # A declaration may spell the key the CRM's way (`Id` for the key `id`).
            base = normalize(primary_key)
            primary_key = next((d for d in self.declared if normalize(d) == base), primary_key)
        self.primary_key = primary_key
        self.types: dict[str, ColumnType] = {
            name: ColumnType.of(column)
            for name, column in (existing or {}).items()
            if column.get("data_type") and not name.startswith("_dlt")
        }
        self.columns: dict[str, str] = {}  # API field -> column
        self.renamed: dict[str, str] = {}  # API field -> column, where not its normalised name
        self.spelled: dict[str, str] = {}  # declared field -> the CRM's spelling of it
        self.sent: set[str] = set()  # API fields seen in this sync
        self.new_hints: dict[str, dict[str, Any]] = {}
        # Columns that met a misfit, or broke the one-pass conversion: converted one by one.
        self._slow: set[str] = set()
        for declared_name, sent in (spelled or {}).items():
            if declared_name in self._names() and sent not in self.declared:
                self._respell(declared_name, sent)
        for raw, column in (renames or {}).items():
            self._assign(raw, column)
        for raw in self._names():
            self.column_of(raw)

    def _names(self) -> list[str]:
        """The fields the configuration names: the declared ones and the primary key."""
        names = list(self.declared)
        if self.primary_key and self.primary_key not in self.declared:
            names.append(self.primary_key)
        return names

    def _respell(self, declared_field: str, sent: str) -> None:
        """Take `sent` for the declared field named `declared_field` now: its declaration, its
        column, and the primary key if it is the key."""
        # A field respelled once more ("ID" after "Id") still stands for the same declaration.
        original = next((d for d, s in self.spelled.items() if s == declared_field), declared_field)
        self.declared = {sent if k == declared_field else k: v for k, v in self.declared.items()}
        if declared_field in self.columns:
            self.columns[sent] = self.columns.pop(declared_field)
        if self.primary_key == declared_field:
            self.primary_key = sent
        self.spelled[original] = sent

    def field(self, declared_field: str) -> str:
        """The CRM's name of a declared field: its own spelling, once it has sent one."""
        return self.spelled.get(declared_field, declared_field)

    def see(self, records: list[dict[str, Any]]) -> set[str]:
        """Give a column to each field seen for the first time in `records`; returns the fields
        of `records`."""
        present: set[str] = set().union(*records)
        fresh = present - self.sent
        if not fresh:
            return present
        first_seen: dict[str, None] = {}
        for record in records:
            first_seen.update(dict.fromkeys(k for k in record if k in fresh))
        self.sent.update(fresh)
        # A declared field spelled the CRM's way ("Id" for "id") is that field, unless the
        # declared spelling is sent too (then it keeps its column and the other gets a suffix).
        by_column = {
            self.columns[d]: d for d in self._names() if d in self.columns and d not in self.sent
        }
        for raw in first_seen:
            if raw in self.declared or raw in self.columns:
                continue
            declared_field = by_column.pop(self.normalize(raw), None)
            if declared_field is not None:
                self._respell(declared_field, raw)
        # Declared names first, so that a field with the declared name keeps it.
        for raw in [f for f in self.declared if f in fresh] + list(first_seen):
            self.column_of(raw)
        return present

    def _assign(self, raw: str, column: str) -> None:
        self.columns[raw] = column
        if column != self.normalize(raw):
            self.renamed[raw] = column

    def column_of(self, raw: str) -> str:
        """The warehouse column of API field `raw`; a name another field already has gets a
        numbered suffix (dlt would otherwise refuse the collision or merge two fields)."""
        column = self.columns.get(raw)
        if column is not None:
            return column
        base = self.normalize(raw)
        taken = set(self.columns.values())
        column, n = base, 2
        while column in taken:
            column, n = f"{base}_{n}", n + 1
        self._assign(raw, column)
        return column

    @property
    def key_column(self) -> str | None:
        return self.column_of(self.primary_key) if self.primary_key else None

    def _decide(self, raw: str, column: str, values: list[Any]) -> ColumnType | None:
        """The type of a column seen for the first time; None while it has held only nulls."""
        if all(v is None for v in values):
            declared = self.declared.get(raw)
            return ColumnType.of(declared) if declared and declared.get("data_type") else None
        declared = self.declared.get(raw)
        if declared and declared.get("data_type"):
            wanted = ColumnType.of(declared)
            if not convert(values, wanted)[1]:
                return wanted
            return infer(values)
        return infer(values)

    def _hints(self, raw: str, column: str, kind: ColumnType) -> dict[str, Any]:
        hints = kind.hints()
        declared = self.declared.get(raw) or {}
        if declared.get("description"):
            hints["description"] = declared["description"]
        if column == self.key_column:
            hints.update(nullable=False, primary_key=True)
        else:
            hints["nullable"] = True
        return hints

    def build(self, records: list[dict[str, Any]]) -> pa.Table:
        """One batch as an Arrow table; records without a value for the key stay in it (the
        caller counts and removes them)."""
        present = self.see(records)
        order = [raw for raw in self.columns if raw in present]
        fast = self._fast_columns(records, [raw for raw in order if self._plain(raw)])
        arrays: list[pa.Array] = []
        names: list[str] = []
        for raw in order:
            column = self.columns[raw]
            if column in fast:
                arrays.append(fast[column])
                names.append(column)
                continue
            values = [r.get(raw) for r in records]
            kind = self.types.get(column)
            if kind is None:
                kind = self._decide(raw, column, values)
                if kind is None:
                    continue  # only nulls so far: dlt does not create such a column either
                self.types[column] = kind
                self.new_hints[column] = self._hints(raw, column, kind)
            array, misfits = convert(values, kind)
            arrays.append(array)
            names.append(column)
            if misfits:
                self._slow.add(column)
                if column == self.key_column:
                    sample = values[misfits[0]]
                    raise KeyTypeChanged(
                        f"{self.resource}: {self.primary_key} is now {value_kind(sample)} in the "
                        f"CRM (e.g. {str(sample)[:40]!r}) but {kind} in the warehouse"
                    )
                for variant, array in self._variants(column, values, misfits):
                    arrays.append(array)
                    names.append(variant)
        return pa.table(arrays, names=names)

    def _plain(self, raw: str) -> bool:
        """Whether a field's column can go through the one-pass struct conversion."""
        column = self.columns[raw]
        kind = self.types.get(column)
        return kind is not None and kind in _STRUCT_TRANSPORT and column not in self._slow

    def _fast_columns(
        self, records: list[dict[str, Any]], fields: list[str]
    ) -> dict[str, pa.Array]:
        """The plain columns of a batch in one pass of Arrow's C++ converter over the records
        rather than one Python list per column (about half the time, measured on 10,000-record
        batches). A field that breaks the pass (numbers in a text field, say) is found, goes
        column by column from then on, and the pass is made without it: one loose field must not
        send every column of every batch the slow way. Empty when no field is to blame."""
        if not fields:
            return {}
        try:
            return self._struct_columns(records, fields)
        except CONVERSION_ERRORS:
            pass
        broken = [raw for raw in fields if not self._converts(records, raw)]
        if not broken:
            return {}
        self._slow.update(self.columns[raw] for raw in broken)
        return self._fast_columns(records, [raw for raw in fields if raw not in broken])

    def _converts(self, records: list[dict[str, Any]], raw: str) -> bool:
        try:
            self._struct_columns(records, [raw])
        except CONVERSION_ERRORS:
            return False
        return True

    def _struct_columns(
        self, records: list[dict[str, Any]], fields: list[str]
    ) -> dict[str, pa.Array]:
        """`fields` of `records` through one struct conversion; raises when a value would not
        convert without loss."""
        kinds = {raw: self.types[self.columns[raw]] for raw in fields}
        transport = pa.struct([pa.field(raw, _STRUCT_TRANSPORT[kinds[raw]]) for raw in fields])
        integers = [raw for raw in fields if kinds[raw] == BIGINT]
        doubles = [raw for raw in fields if kinds[raw] == DOUBLE]
        struct = pa.array(records, transport)
        if integers:
            # Arrow turns 1.5 into 1 in an integer column without a word: the same values read
            # as doubles must be equal.
            as_double = pa.array(records, pa.struct([(f, pa.float64()) for f in integers]))
            for raw in integers:
                same = pc.equal(struct.field(raw).cast(pa.float64()), as_double.field(raw))
                if pc.all(same).as_py() not in (True, None):
                    raise pa.ArrowInvalid(f"{raw}: a fraction in an integer column")
        if doubles:
            # ... and True into 1.0 in a double column; read as integers, a boolean (or a
            # string) raises.
            pa.array(records, pa.struct([(f, pa.int64()) for f in doubles]))
        out: dict[str, pa.Array] = {}
        for raw in fields:
            array = struct.field(raw)
            kind = kinds[raw]
            if kind in (TIMESTAMP, DATE):
                array = _temporal(array, kind)
            out[self.columns[raw]] = array
        return out

    def _variants(
        self, column: str, values: list[Any], misfits: list[int]
    ) -> list[tuple[str, pa.Array]]:
        """Values that do not fit `column`, each in the variant column of its own type."""
        by_kind: dict[ColumnType, list[int]] = {}
        for position in misfits:
            by_kind.setdefault(value_kind(values[position]), []).append(position)
        out: list[tuple[str, pa.Array]] = []
        for kind, positions in by_kind.items():
            name = variant_name(column, kind)
            self.add_column(name, kind)
            chosen = [None] * len(values)
            for position in positions:
                chosen[position] = values[position]
            # The variant's name says its type, and every value converts to its own type.
            array, _ = convert(chosen, kind)
            out.append((name, array))
        return out

    def add_column(self, column: str, kind: ColumnType) -> None:
        """A nullable column no API field maps to (a variant, or one the pipeline adds), typed
        once: an existing column keeps its type."""
        if column not in self.types:
            self.types[column] = kind
            self.new_hints[column] = {**kind.hints(), "nullable": True}

    def take_new_hints(self) -> dict[str, dict[str, Any]]:
        """Column hints for dlt of the columns typed since the last call."""
        hints, self.new_hints = self.new_hints, {}
        return hints

    def json_hints(self) -> dict[str, dict[str, Any]]:
        """The `json` hint of every JSON column, for the first table of each extraction: JSON
        travels as Arrow strings, and a table that comes without the hint turns the column into
        text in dlt's schema, so the sync after next would take it for text and push every
        object into a variant column."""
        return {column: JSON.hints() for column, kind in self.types.items() if kind == JSON}

    def drift(self) -> Drift:
        """The table's differences from the declaration, as the table stands now."""
        declared_columns = {self.column_of(raw): column for raw, column in self.declared.items()}
        field_of = {column: raw for raw, column in self.columns.items()}
        drift = Drift(renamed=dict(self.renamed), spelled=dict(self.spelled))
        for column, declared in declared_columns.items():
            kind = self.types.get(column)
            if kind is None:
                drift.never_sent.append(field_of.get(column, column))
            elif declared.get("data_type") and kind != ColumnType.of(declared):
                drift.mistyped[column] = f"declared {ColumnType.of(declared)}, loaded as {kind}"
        for column in self.types:
            if column.startswith(SYSTEM_PREFIXES):
                continue
            if "__v_" in column:
                drift.variants.append(column)
            elif column not in declared_columns:
                drift.undeclared.append(field_of.get(column, column))
        return drift
