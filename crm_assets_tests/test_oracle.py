"""The oracle: the project loads what plain dlt loads from the same CRM, for every data profile.

The same simulator is synced twice: once through plain `rest_api_source` with the API contract
as the seed writes it (its own DuckDB file), once through the project. Both must hold the same
ids in every table, and every field both loaded must hold equal values once representation is
normalised (see compare.py). Plain dlt flattens nested objects into `parent__child` columns; the
project keeps them as JSON, so those are compared inside the JSON. Where the CRM sends two fields
that dlt's naming maps to one column, dlt keeps one of them: its value must be one of the two the
project kept. A CRM that names its fields in PascalCase (`Id`, `CustomerId`) is compared the same
way, served by a scripted server from the simulator's records.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dlt
import duckdb
import orjson
import pytest
from dagster import DagsterInstance, materialize
from dlt.sources.rest_api import rest_api_source

from crm_assets import build_definitions
from crm_assets.api import CRM_API, SEED_API, resource_names
from crm_assets_tests.compare import candidates, equivalent, flattened, logical
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    PROFILES,
    Workspace,
    check_results,
    materialized_metadata,
    sync_in_process,
)
from crm_assets_tests.fault_support import Answer, ScriptedServer, endpoint_of
from crm_simulator import CRMSimulator


def plain_dlt(base_url: str, root: Path) -> Path:
    """The seed's config through dlt's own REST API source, as its documentation shows."""
    config: Any = copy.deepcopy(SEED_API)
    config["client"]["base_url"] = base_url
    config["client"]["auth"]["api_key"] = API_KEY
    config["client"]["headers"] = {"X-Access-Key": ACCESS_KEY}
    path = root / "plain.duckdb"
    pipeline = dlt.pipeline(
        "plain_dlt",
        destination=dlt.destinations.duckdb(str(path)),
        dataset_name="crm",
        pipelines_dir=str(root / "plain_pipelines"),
    )
    info = pipeline.run(rest_api_source(config))
    assert not info.has_failed_jobs
    return path


def table_rows(path: Path, table: str) -> dict[Any, dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as con:
        cursor = con.execute(f'SELECT * FROM crm."{table}"')
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {row["id"]: row for row in rows}


def differences(plain: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """dlt's fields whose value the project's row does not hold."""
    out: list[str] = []
    our_columns = list(ours)
    for column in plain:
        if column.startswith("_dlt") or "__v_" in column:
            continue
        expected = logical(plain, column)
        choices = [logical(ours, c) for c in candidates(column, our_columns) if c in ours]
        if not choices:
            # A nested value dlt flattened: look inside the project's JSON column.
            parent, _, path = column.partition("__")
            if parent in ours and path:
                choices = [flattened(ours[parent], path) if ours[parent] is not None else None]
            else:
                choices = [None]  # a column only dlt has must then be empty in this row
        if not any(equivalent(expected, choice) for choice in choices):
            out.append(f"{column}: dlt {expected!r}, project {choices!r}")
    return out


@pytest.mark.parametrize("profile", PROFILES)
def test_the_project_loads_what_plain_dlt_loads(
    profile: str, workspace: Workspace, simulator: CRMSimulator, tmp_path: Path
) -> None:
    plain = plain_dlt(simulator.base_url, tmp_path)
    result = sync_in_process()
    assert result.success
    assert_same_as_plain_dlt(plain, workspace.duckdb_path)


def assert_same_as_plain_dlt(plain: Path, ours_path: Path) -> None:
    """The same ids in every table, and every field dlt loaded held by the project's row."""
    problems: dict[str, list[str]] = {}
    for name in resource_names():
        theirs = table_rows(plain, name)
        ours = table_rows(ours_path, name)
        assert sorted(map(str, ours)) == sorted(map(str, theirs)), f"{name}: ids differ"
        for key, row in theirs.items():
            found = differences(row, ours[key])
            if found:
                problems.setdefault(name, []).extend(f"id={key} {d}" for d in found[:3])
    assert not problems, problems


def _pascal(name: str) -> str:
    """`customer_id` or `createdAt` as a CRM that names its fields in PascalCase sends it."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _pascal_record(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        # `created_at` and `createdAt` both become `CreatedAt`: the second keeps its name.
        out[_pascal(key) if _pascal(key) not in out else key] = value
    return out


def _pages_of(
    records: dict[str, list[dict[str, Any]]], encode: Callable[[Any], bytes] = orjson.dumps
) -> Answer:
    """The seed's API contract over fixed records: `data`, `total`, `startIndex` and `limit`."""

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(path)
        query = parse_qs(url.query)
        every = records[url.path.rsplit("/", 1)[-1]]
        rows = every
        if "startIndex" in query:
            start, limit = int(query["startIndex"][0]), int(query["limit"][0])
            rows = every[start : start + limit]
        return 200, {}, encode({"data": rows, "total": len(every)})

    return answer


@pytest.mark.parametrize("profile", ["crm"])
def test_a_crm_that_names_its_fields_in_pascal_case_loads_as_plain_dlt_does(
    profile: str,
    workspace: Workspace,
    simulator: CRMSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Id`, `Name`, `CustomerId`, as Salesforce or Dynamics name them: dlt's naming maps them
    to the declared columns, and plain dlt loads them there, the key included. So does the
    project, with the declarations of those fields, and it says which it matched."""
    served = {
        name: [_pascal_record(r) for r in simulator.records(name)] for name in resource_names()
    }
    assert all("Id" in records[0] and "id" not in records[0] for records in served.values())
    # Read in chunks of 200 records a resource: each round goes on after the last record the
    # one before loaded, which it finds again by its key.
    monkeypatch.setenv("CRM_CHUNK_RECORDS", "800")
    with ScriptedServer(_pages_of(served)) as theirs, ScriptedServer(_pages_of(served)) as crm:
        plain = plain_dlt(theirs.url, tmp_path)
        monkeypatch.setenv("CRM_BASE_URL", crm.url)
        result = sync_in_process()
        first_sync = len(crm.seen)
        # The next sync asks for what changed since the newest `UpdatedAt` (declared as
        # `updated_at`, the cursor), and changes nothing: the server ignores the filter.
        again = sync_in_process()
    assert result.success and again.success
    assert any("updated_since=" in r for r in crm.seen[first_sync:] if "/customers?" in r)
    assert_same_as_plain_dlt(plain, workspace.duckdb_path)
    metadata = {
        event.asset_key.path[-1]: event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    for name in resource_names():
        ours = table_rows(workspace.duckdb_path, name)
        assert sorted(map(str, ours)) == sorted(str(r["Id"]) for r in served[name])
        if endpoint_of(name).get("paginator"):
            asked = crm.seen[:first_sync]
            firsts = [r for r in asked if f"/{name}?" in r and "startIndex=0&" in r]
            assert len(firsts) == 1, f"{name}: read from the start again"
    # 431 records in rounds: each found where the last one ended by the key, so the read is
    # whole (a read that could not check its place would not count as complete).
    assert metadata["contacts"]["chunks"].value > 1
    assert metadata["contacts"]["complete_read"].value is True
    assert metadata["customers"]["declared_fields_sent_as"].value["id"] == "Id"
    assert metadata["contacts"]["declared_fields_sent_as"].value["customer_id"] == "CustomerId"


@pytest.mark.parametrize("profile", ["declared", "crm"])  # integer ids, and string ids
def test_references_declared_in_the_crm_s_spelling_are_checked(
    profile: str,
    workspace: Workspace,
    simulator: CRMSimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`crm-discover` declares a PascalCase CRM's references as the CRM names its fields
    (`CustomerId` -> customers.`Id`); they loaded into `customer_id` and `id`. The references
    check finds those columns, so a dangling id is reported, not passed over as never sent."""
    served = {
        name: [_pascal_record(r) for r in simulator.records(name)] for name in resource_names()
    }
    served["contacts"][3]["CustomerId"] = 999_999  # an id no customer has, of either id type
    config = copy.deepcopy(CRM_API)
    for resource in config["resources"]:
        for ref in resource.get("references", []):
            ref["columns"] = [_pascal(c) for c in ref["columns"]]
            ref["referenced_columns"] = [_pascal(c) for c in ref["referenced_columns"]]
    assert config["resources"][1]["references"][0]["columns"] == ["CustomerId"]
    defs = build_definitions(config)
    with ScriptedServer(_pages_of(served)) as crm:
        monkeypatch.setenv("CRM_BASE_URL", crm.url)
        result = materialize(
            [*defs.assets, *defs.asset_checks],
            resources=defs.resources,
            instance=DagsterInstance.get(),
            raise_on_error=False,
        )
    assert result.success
    checks = check_results(result)
    assert checks["crm/contacts:references"] == (False, "WARN")
    assert checks["crm/opportunities:references"] == (True, "WARN")
    evaluation = next(
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.event_specific_data.asset_key.path[-1] == "contacts"
        and e.event_specific_data.check_name == "references"
    )
    assert evaluation.metadata["dangling CustomerId -> customers.Id"].value == 1


@pytest.mark.parametrize("profile", ["crm"])
def test_integers_beyond_64_bits_load_with_every_digit(
    profile: str,
    workspace: Workspace,
    simulator: CRMSimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Numeric ids past 2^64 (some CRMs number records that way), a count below -2^63 and a
    nested balance past 2^64: JSON holds them exactly, and so must the warehouse. Read as
    floats, such ids would be a handful of distinct keys, and the merge would keep one row of
    each. (Plain dlt is no oracle here: its extract refuses such integers, "Integer exceeds 64-bit
    range".)"""
    served = {name: copy.deepcopy(simulator.records(name)) for name in resource_names()}
    for n, lead in enumerate(served["leads"]):
        lead["id"] = 10**25 + n
    for n, customer in enumerate(served["customers"]):
        customer["ledgerNumber"] = -(2**63) - 1 - n
        customer["ledger"] = {"balance": 2**64 + n}
    pages = _pages_of(served, lambda body: json.dumps(body).encode())  # orjson refuses them
    with ScriptedServer(pages) as crm:
        monkeypatch.setenv("CRM_BASE_URL", crm.url)
        result = sync_in_process()
    assert result.success
    leads = table_rows(workspace.duckdb_path, "leads")
    assert sorted(leads) == sorted(str(lead["id"]) for lead in served["leads"])
    customers = table_rows(workspace.duckdb_path, "customers")
    for customer in served["customers"]:
        row = customers[customer["id"]]
        assert row["ledger_number"] == str(customer["ledgerNumber"])
        assert json.loads(row["ledger"]) == customer["ledger"]


def _escaped(text: str) -> str:
    """A string as the warehouse keeps it: a lone surrogate as its escape text."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.mark.parametrize("profile", ["crm"])
def test_strings_cut_inside_an_emoji_load_with_the_half_as_its_escape(
    profile: str,
    workspace: Workspace,
    simulator: CRMSimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CRM that cuts strings to a length in UTF-16 units (as JavaScript counts) can leave half
    of an emoji's pair at the end: valid JSON (`"\\ud83d"`), but text no warehouse stores, and
    a page orjson refuses. Every record loads, that half kept as its escape text; ids that differ
    only in it stay distinct rows (U+FFFD in its place would merge them); the count is in the
    metadata and the log. (Plain dlt is no oracle here: its extract refuses such strings.)"""
    served = {name: copy.deepcopy(simulator.records(name)) for name in resource_names()}
    leads = served["leads"]
    for n in range(0, 40, 2):
        base = str(leads[n]["id"])
        leads[n]["id"], leads[n + 1]["id"] = base + "\ud83d", base + "\ud83e"
    customers = served["customers"]
    for customer in customers[:15]:
        customer["name"] = customer["name"][:6] + "\udc00"
    customers[15]["name"] = "whole pair \U0001f600"  # a pair is one character: no escape
    pages = _pages_of(served, lambda body: json.dumps(body).encode())  # json writes "\udXXX"
    with ScriptedServer(pages) as crm:
        monkeypatch.setenv("CRM_BASE_URL", crm.url)
        result = sync_in_process()
    assert result.success
    lead_ids = table_rows(workspace.duckdb_path, "leads")
    assert sorted(lead_ids) == sorted(_escaped(str(lead["id"])) for lead in leads)
    assert len(lead_ids) == len(leads)
    rows = table_rows(workspace.duckdb_path, "customers")
    assert rows[customers[0]["id"]]["name"] == customers[0]["name"][:6] + "\\udc00"
    assert rows[customers[15]["id"]]["name"] == "whole pair \U0001f600"
    metadata = materialized_metadata(result)
    assert metadata["leads"]["strings_with_lone_surrogates"].value == 40
    assert metadata["customers"]["strings_with_lone_surrogates"].value == 15
    assert metadata["contacts"]["strings_with_lone_surrogates"].value == 0
    logs = [e.user_message for e in DagsterInstance.get().all_logs(result.run_id)]
    assert any(m.startswith("leads: 40 strings held half of a UTF-16 surrogate") for m in logs)
