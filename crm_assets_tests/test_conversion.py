"""Layer 1: how API records become typed Arrow tables; the data decides, the declaration refines."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from dlt.common.schema import Schema

from crm_assets.api import CRM_COLUMNS
from crm_assets.conversion import KeyTypeChanged, TableBuilder
from crm_assets.transport import decode_page

NORMALIZE = Schema("crm").naming.normalize_path


def builder(
    declared: dict[str, Any] | None = None,
    existing: dict[str, Any] | None = None,
    renames: dict[str, str] | None = None,
    spelled: dict[str, str] | None = None,
) -> TableBuilder:
    return TableBuilder("things", declared or {}, "id", NORMALIZE, existing, renames, spelled)


def column(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist()


def test_declared_types_apply_where_the_values_convert_without_loss() -> None:
    b = builder(
        {
            "id": {"data_type": "bigint", "primary_key": True, "nullable": False},
            "phone": {"data_type": "text"},
            "amount": {"data_type": "decimal", "precision": 18, "scale": 2},
            "seen_at": {"data_type": "timestamp", "timezone": True},
        }
    )
    table = b.build(
        [
            {"id": 1, "phone": 4915112345678, "amount": "12.50", "seen_at": "2024-01-01T10:00:00Z"},
            {"id": 2, "phone": "+49 151", "amount": 3, "seen_at": "2024-01-01T12:00:00+02:00"},
        ]
    )
    assert column(table, "phone") == ["4915112345678", "+49 151"]
    assert column(table, "amount") == [Decimal("12.50"), Decimal("3.00")]
    assert column(table, "seen_at") == [datetime(2024, 1, 1, 10, tzinfo=UTC)] * 2
    assert table.schema.field("amount").type == pa.decimal128(18, 2)
    assert b.drift().count == 0


def test_numbers_in_a_text_field_load_as_text_and_leave_the_other_fields_in_one_pass() -> None:
    b = builder({"id": {"data_type": "bigint"}, "phone": {"data_type": "text"}})
    first = [{"id": 1, "phone": "+49 151", "name": "a", "seen": 2}]
    b.build(first)
    later = [
        {"id": 2, "phone": 4915112345678, "name": "b", "seen": 3},
        {"id": 3, "phone": "+1 212", "name": None, "seen": 4},
    ]
    table = b.build(later)
    assert column(table, "phone") == ["4915112345678", "+1 212"]
    assert column(table, "name") == ["b", None]
    assert column(table, "seen") == [3, 4]
    # Only the field that holds numbers left the one-pass conversion, for the rest of the sync.
    assert [raw for raw in ("id", "phone", "name", "seen") if not b._plain(raw)] == ["phone"]
    assert column(b.build(later), "phone") == ["4915112345678", "+1 212"]


def test_a_declaration_the_data_does_not_fit_gives_way_to_the_data() -> None:
    b = builder(
        {
            "id": {"data_type": "bigint"},
            "amount": {"data_type": "decimal", "precision": 18, "scale": 2},
            "never": {"data_type": "text"},
        }
    )
    table = b.build([{"id": "CUS-001", "amount": 1234.5678}, {"id": "000123", "amount": 1.5}])
    assert column(table, "id") == ["CUS-001", "000123"]  # leading zeros kept: text, not 123
    assert column(table, "amount") == [1234.5678, 1.5]
    assert table.schema.field("amount").type == pa.float64()
    drift = b.drift()
    assert drift.mistyped == {
        "id": "declared bigint, loaded as text",
        "amount": "declared decimal(18,2), loaded as double",
    }
    assert drift.never_sent == ["never"]
    assert "never" not in table.column_names  # no all-null column for a field never sent


def test_undeclared_fields_are_typed_from_their_values() -> None:
    b = builder({"id": {"data_type": "bigint"}})
    table = b.build(
        [
            {
                "id": 1,
                "count": 3,
                "ratio": 0.5,
                "flag": True,
                "modifiedAt": "2024-03-01T10:00:00.123456+02:00",
                "naive": "2024-03-01 10:00:00",
                "day": "2024-03-01",
                "owner": {"name": "Zoë", "tags": ["a"]},
                "labels": ["x", "y"],
                "code": "A1",
                "empty": None,
            },
            {
                "id": 2,
                "count": 4,
                "ratio": 2,
                "flag": False,
                "modifiedAt": "2024-03-02T10:00:00Z",
                "naive": None,
                "day": "2024-03-02",
                "owner": None,
                "labels": [],
                "code": "B2",
            },
        ]
    )
    types = {f.name: f.type for f in table.schema}
    assert types["count"] == pa.int64()
    assert types["ratio"] == pa.float64()
    assert types["flag"] == pa.bool_()
    assert types["modified_at"] == pa.timestamp("us", tz="UTC")
    assert types["naive"] == pa.timestamp("us", tz="UTC")
    assert types["day"] == pa.date32()
    assert column(table, "modified_at")[0] == datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    assert column(table, "naive")[0] == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert column(table, "day") == [date(2024, 3, 1), date(2024, 3, 2)]
    assert column(table, "owner") == ['{"name":"Zoë","tags":["a"]}', None]
    assert column(table, "labels") == ['["x","y"]', "[]"]
    assert column(table, "ratio") == [0.5, 2.0]
    assert "empty" not in table.column_names
    hints = b.take_new_hints()
    assert hints["owner"]["data_type"] == "json" and hints["labels"]["data_type"] == "json"
    # A field that only ever held null has no column yet, and so no drift to report.
    assert b.drift().undeclared == [
        "count", "ratio", "flag", "modifiedAt", "naive", "day", "owner", "labels", "code"
    ]  # fmt: skip


def test_values_that_do_not_fit_their_column_go_to_variants_not_truncated() -> None:
    b = builder({"id": {"data_type": "bigint"}, "employees": {"data_type": "bigint"}})
    b.build([{"id": i, "employees": i, "score": i} for i in range(1, 4)])
    table = b.build(
        [
            {"id": 4, "employees": 1.5, "score": "n/a"},
            {"id": 5, "employees": 3.0, "score": 7},
            {"id": 6, "employees": True, "score": None},
        ]
    )
    assert column(table, "employees") == [None, 3, None]
    assert column(table, "employees__v_double") == [1.5, None, None]
    assert column(table, "employees__v_bool") == [None, None, True]
    assert column(table, "score") == [None, 7, None]
    assert column(table, "score__v_text") == ["n/a", None, None]
    assert b.drift().variants == ["employees__v_double", "employees__v_bool", "score__v_text"]


def test_two_fields_with_one_normalised_name_both_load() -> None:
    b = builder({"id": {"data_type": "bigint"}, "created_at": {"data_type": "timestamp"}})
    records = [
        {"id": 1, "createdAt": "1700000000", "created_at": "2024-01-01T00:00:00Z"},
        {"id": 2, "createdAt": "1700000001", "created_at": "2024-01-02T00:00:00Z"},
    ]
    table = b.build(records)
    assert column(table, "created_at_2") == ["1700000000", "1700000001"]
    assert column(table, "created_at")[0] == datetime(2024, 1, 1, tzinfo=UTC)
    assert b.renamed == {"createdAt": "created_at_2"}
    assert b.drift().undeclared == ["createdAt"]
    # The next sync keeps the same column for the same field, whatever order fields come in.
    again = builder(b.declared, renames=b.renamed).build([dict(reversed(records[0].items()))])
    assert column(again, "created_at_2") == ["1700000000"]


def test_a_declared_field_the_crm_spells_its_own_way_is_that_field() -> None:
    """`Id` and `Name` where the declaration says `id` and `name` (as Salesforce or Dynamics send
    them): dlt's naming maps them to the declared columns, so they are those fields, with their
    declarations, the primary key included."""
    declared = {
        "id": {"data_type": "bigint", "primary_key": True, "nullable": False},
        "name": {"data_type": "text", "description": "The name."},
        "amount": {"data_type": "decimal", "precision": 18, "scale": 2},
    }
    b = builder(declared)
    table = b.build([{"Id": 1, "Name": "a", "Amount": "2.50"}, {"Id": 2, "Name": "b"}])
    assert table.column_names == ["id", "name", "amount"]
    assert column(table, "id") == [1, 2]
    assert b.key_column == "id" and b.primary_key == "Id"
    assert column(table, "amount") == [Decimal("2.50"), None]  # the declared type applies
    assert b.take_new_hints()["name"]["description"] == "The name."
    assert b.spelled == {"id": "Id", "name": "Name", "amount": "Amount"}
    assert b.renamed == {}
    drift = b.drift()
    assert (drift.never_sent, drift.undeclared, drift.spelled) == ([], [], b.spelled)
    assert b.field("name") == "Name" and b.field("other") == "other"


def test_a_declaration_may_spell_the_key_the_crms_way() -> None:
    """A declaration made from the CRM's records (crm-discover) names the key `Id`; the key of
    the config is `id`: one field, one column."""
    b = TableBuilder("things", {"Id": {"data_type": "bigint"}}, "id", NORMALIZE)
    table = b.build([{"Id": 1}, {"Id": 2}])
    assert b.key_column == "id" and table.column_names == ["id"]
    assert column(table, "id") == [1, 2]


def test_a_declared_field_sent_in_both_spellings_keeps_its_column() -> None:
    """Sent as declared and in another spelling: two fields, the declared one keeps its
    column, the other loads beside it, in this sync and the next ones."""
    b = builder({"id": {"data_type": "bigint"}, "name": {"data_type": "text"}})
    table = b.build([{"id": 1, "Name": "x", "name": "y"}])
    assert (column(table, "name"), column(table, "name_2")) == (["y"], ["x"])
    assert b.spelled == {} and b.renamed == {"Name": "name_2"}


def test_the_crms_spelling_of_a_declared_field_holds_in_later_syncs() -> None:
    """A field first sent as `Id` keeps the key column when the declared spelling turns up
    too, in a later sync (the spellings are kept in the resource's state)."""
    declared = {"id": {"data_type": "bigint"}, "name": {"data_type": "text"}}
    first = builder(declared)
    first.build([{"Id": 1, "name": "a"}])
    later = builder(declared, spelled=first.spelled)
    table = later.build([{"id": 100, "Id": 2, "name": "b"}])
    assert later.key_column == "id" and later.primary_key == "Id"
    assert column(table, "id") == [2]
    assert column(table, "id_2") == [100]


def test_a_column_keeps_the_type_the_warehouse_has() -> None:
    existing = {"id": {"data_type": "text"}, "amount": {"data_type": "double"}}
    b = builder(CRM_COLUMNS["opportunities"], existing=existing)
    table = b.build([{"id": 7, "amount": 10}])
    assert column(table, "id") == ["7"]
    assert column(table, "amount") == [10.0]


def test_a_key_whose_type_changed_since_the_last_sync_fails_in_one_line() -> None:
    b = builder({"id": {"data_type": "bigint"}}, existing={"id": {"data_type": "bigint"}})
    with pytest.raises(KeyTypeChanged, match=r"things: id is now text in the CRM .* bigint"):
        b.build([{"id": "CUS-1"}])


@pytest.mark.parametrize(
    "number",
    [
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**25 + 1,
        -(10**30) - 7,
        1234567890123456789,  # a 19-digit snowflake id
    ],
)
def test_a_page_keeps_every_digit_of_its_integers(number: int) -> None:
    page = f'{{"data": [{{"id": {number}, "o": {{"n": [{number}]}}, "s": "x-{number}"}}]}}'
    body, escaped = decode_page(page.encode())
    record = body["data"][0]
    assert escaped == 0
    assert record == {"id": number, "o": {"n": [number]}, "s": f"x-{number}"}
    assert type(record["id"]) is int
    table = builder().build([record])
    row = table.to_pylist()[0]
    assert str(row["id"]) == str(number)
    assert json.loads(row["o"]) == {"n": [number]}


@pytest.mark.parametrize("big", [False, True])  # the orjson path, and json's for big integers
def test_a_lone_surrogate_is_kept_as_its_escape_and_counted(big: bool) -> None:
    # JavaScript writes a string cut inside an emoji with half of its UTF-16 pair: valid JSON,
    # but not text UTF-8 can hold. Two ids that differ only in that half stay two ids.
    page = (
        rb'{"data": [{"id": "CUS-\ud83d", "note": "ok \ud83d\ude00", "n": %s},'
        rb' {"id": "CUS-\uD83E", "tags": ["\udc00", "fine"], "x\udfffy": 1}]}'
    ) % (b"123456789012345678901" if big else b"1")
    body, escaped = decode_page(page)
    first, second = body["data"]
    assert escaped == 4
    assert first["id"] == "CUS-\\ud83d"
    assert first["note"] == "ok \U0001f600"  # a whole pair is one character, as it was
    assert second["id"] == "CUS-\\ud83e"
    assert second["tags"] == ["\\udc00", "fine"]
    assert second["x\\udfffy"] == 1
    table = builder().build(body["data"])
    assert table.column("id").to_pylist() == ["CUS-\\ud83d", "CUS-\\ud83e"]


@pytest.mark.parametrize(
    "page",
    [
        b"<html>busy</html>",
        b'{"data": [1',
        b'{"data": [NaN]}',
        b"",
        b'{"data": [-Infinity, 123456789012345678901]}',
        b'{"data": ["\xff"]}',
    ],
)
def test_what_is_not_json_raises_value_error(page: bytes) -> None:
    with pytest.raises(ValueError):
        decode_page(page)
