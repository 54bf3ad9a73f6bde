"""`crm-discover`: read a sample of every resource from the live CRM and write its declared schema.

It uses the same settings as a sync (CRM_BASE_URL, CRM_API_KEY, CRM_ACCESS_KEY, or dlt's
`[sources.crm]` secrets), reads the first pages of each resource of the API contract, types every
field from its values exactly as a sync would, and writes `declared_schema.yaml`: types,
nullability seen, the primary key, `*_id` references, and, where the CRM has one, its "changed
since" filter. Descriptions already in the file are kept for fields of the same name. Review the
result, describe the columns, and commit it.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from crm_assets.api import DECLARATION_PATH, SEED_API, load_declaration
from crm_assets.conversion import TableBuilder
from crm_assets.errors import CRMAPIError, CRMError
from crm_assets.paging import iter_pages
from crm_assets.resources import CRMCredentials, CRMRequestSettings
from crm_assets.source import naming
from crm_assets.transport import CRMTransport

DEFAULT_SAMPLE_PAGES = 5
# Names CRMs give the field that says when a record last changed, and the query parameters they
# filter it with. Only a parameter the CRM is seen to honour is written to the declaration.
CURSOR_FIELDS = (
    "updated_at",
    "updatedAt",
    "modified_at",
    "modifiedAt",
    "last_modified",
    "lastModifiedDate",
)
FILTER_PARAMS = (
    "updated_since",
    "updatedSince",
    "modified_since",
    "modifiedSince",
    "since",
    "updated_after",
)
FUTURE = "2999-01-01T00:00:00Z"

HEADER = """\
# The declared schema of the CRM's resources: hints, not rules (README: Declared schema).
# Written by crm-discover from a sample of {base_url}: review it, describe the columns, commit.
"""

log = logging.getLogger("crm_assets.discover")


def _reference_target(field: str, resources: Sequence[str]) -> str | None:
    """`customer_id` / `customerId` -> `customers`, when the API has such a resource."""
    match = re.fullmatch(r"(.+?)(_id|Id|ID)", field)
    if not match:
        return None
    stem = re.sub(r"(?<!^)(?=[A-Z])", "_", match.group(1)).lower()
    for candidate in (stem + "s", stem + "es", stem[:-1] + "ies" if stem.endswith("y") else ""):
        if candidate in resources:
            return candidate
    return None


def _total(
    transport: CRMTransport, name: str, endpoint: Mapping[str, Any], params: dict
) -> int | None:
    """How many records the CRM reports (or returns on one page) for `params`."""
    query = dict(params)
    paginator = endpoint.get("paginator")
    if paginator:
        query[paginator.get("offset_param", "offset")] = 0
        query[paginator.get("limit_param", "limit")] = paginator.get("limit", 100)
    body = transport.get(name, endpoint["path"], query, endpoint.get("data_selector"))
    if paginator and isinstance(body, dict) and isinstance(body.get("total"), int):
        return body["total"]
    data = body.get(endpoint.get("data_selector", "data")) if isinstance(body, dict) else body
    return len(data) if isinstance(data, list) else None


def probe_filter(
    transport: CRMTransport, name: str, endpoint: Mapping[str, Any], cursor: str
) -> str | None:
    """The query parameter that filters `name` on `cursor`: asked for records changed after a
    date in the future, a CRM that honours it returns fewer records than unfiltered; one that
    ignores it returns them all; one that refuses it answers 400."""
    unfiltered = _total(transport, name, endpoint, {})
    if not unfiltered:
        return None
    for param in FILTER_PARAMS:
        try:
            filtered = _total(transport, name, endpoint, {param: FUTURE})
        except CRMAPIError as exc:
            if exc.status in (400, 422):
                continue
            raise
        if filtered is not None and filtered < unfiltered:
            return param
    return None


def discover_resource(
    transport: CRMTransport,
    entry: Mapping[str, Any],
    primary_key: str,
    resources: Sequence[str],
    known: Mapping[str, Any],
    pages: int,
) -> dict[str, Any]:
    """The declaration of one resource from its first `pages` pages."""
    name = entry["name"]
    endpoint = entry["endpoint"]
    records: list[dict[str, Any]] = []
    for n, page in enumerate(iter_pages(transport, name, endpoint, {}), start=1):
        records.extend(page)
        if n >= pages:
            break
    builder = TableBuilder(name, {}, primary_key, naming().normalize_path)
    if records:
        builder.build(records)
    described = (known.get("columns") or {}) if known else {}
    columns: dict[str, Any] = {}
    for field, column in builder.columns.items():
        kind = builder.types.get(column)
        if kind is None:
            continue  # only nulls in the sample: nothing to say about its type
        hints: dict[str, Any] = kind.hints()
        if kind.data_type == "timestamp":
            hints.pop("precision")  # microseconds, dlt's default: not worth a line per column
        missing = any(r.get(field) is None for r in records)
        # The key as the CRM spells it (`Id` for `id`), as the sync matches it.
        hints["nullable"] = field != builder.primary_key and missing
        if field == builder.primary_key:
            hints["primary_key"] = True
        description = (described.get(field) or {}).get("description")
        if description:
            hints["description"] = description
        columns[field] = hints
    declaration: dict[str, Any] = {}
    cursor = next((f for f in CURSOR_FIELDS if f in columns), None)
    if cursor and endpoint.get("paginator") and columns[cursor]["data_type"] == "timestamp":
        param = probe_filter(transport, name, endpoint, cursor)
        if param:
            declaration["incremental"] = {"cursor_path": cursor, "start_param": param}
    references = [
        {"columns": [field], "referenced_table": target, "referenced_columns": [primary_key]}
        for field in columns
        if field != builder.primary_key and (target := _reference_target(field, resources))
    ]
    if references:
        declaration["references"] = references
    declaration["columns"] = columns
    if builder.primary_key not in columns:
        log.warning(f"{name}: no `{primary_key}` in the sample; records without it cannot merge")
    return declaration


def discover(transport: CRMTransport, pages: int = DEFAULT_SAMPLE_PAGES) -> dict[str, Any]:
    """The declared schema of every resource of the API contract."""
    names = [r["name"] for r in SEED_API["resources"]]  # type: ignore[index]
    primary_key = SEED_API["resource_defaults"].get("primary_key", "id")  # type: ignore[union-attr]
    try:
        known = load_declaration()
    except (OSError, yaml.YAMLError):
        known = {}
    return {
        entry["name"]: discover_resource(  # type: ignore[index]
            transport,
            entry,
            primary_key,
            names,
            known.get(entry["name"]) or {},
            pages,  # type: ignore[index,arg-type]
        )
        for entry in SEED_API["resources"]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crm-discover", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=DECLARATION_PATH, help=f"default {DECLARATION_PATH}"
    )
    parser.add_argument(
        "--pages", type=int, default=DEFAULT_SAMPLE_PAGES, help="pages to sample per resource"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        connection = CRMCredentials().connection()
        with CRMTransport(connection, CRMRequestSettings().policy(), log=log) as transport:
            declaration = discover(transport, args.pages)
    except CRMError as exc:
        print(f"crm-discover: {exc}", file=sys.stderr)
        return 1
    text = HEADER.format(base_url=connection.base_url) + yaml.safe_dump(
        {"resources": declaration}, sort_keys=False, allow_unicode=True, width=100
    )
    args.output.write_text(text, encoding="utf-8")
    for name, entry in declaration.items():
        incremental = entry.get("incremental")
        print(
            f"{name}: {len(entry['columns'])} columns"
            + (f", filter {incremental['start_param']}" if incremental else ", no filter")
            + (
                f", {len(entry.get('references', []))} references"
                if entry.get("references")
                else ""
            )
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
