"""Data-quality checks on every CRM asset, built from `CRM_API` like the assets themselves.

Each check reads the warehouse through the same dlt destination the sync wrote to, so it works
on DuckDB and PostgreSQL alike, and, for what the warehouse cannot show (records the API served
without an id are left out of the load), the metadata of the asset's latest materialization.
"""

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    BetaWarning,
    build_column_schema_change_checks,
    build_metadata_bounds_checks,
    multi_asset_check,
)
from dlt.destinations.exceptions import DatabaseTerminalException, DatabaseUndefinedRelation

from crm_assets.api import CRM_API
from crm_assets.assets import asset_key
from crm_assets.automation import QUALITY_CHECKS
from crm_assets.resources import CRMWarehouse
from crm_assets.source import naming
from crm_assets.sync_lock import exclusive_sync

PRIMARY_KEY = "primary_key"
REFERENCES = "references"
DELETES = "deletes"
# Deletes per sync below this are never a jump: a CRM loses a few records every day.
DELETES_NOISE = 10
SYNCS_COMPARED = 6  # the last sync's deletes against the five before it
SCHEMA_DRIFT = "schema_drift"


def _specs(api_config: Mapping[str, Any]) -> list[AssetCheckSpec]:
    specs: list[AssetCheckSpec] = []
    for resource in api_config["resources"]:
        key = asset_key(resource["name"])
        specs += [
            AssetCheckSpec(
                PRIMARY_KEY,
                asset=key,
                description="Every record has an id, and each id is in the table once (ERROR, "
                "blocking).",
                blocking=True,
            ),
            AssetCheckSpec(
                DELETES,
                asset=key,
                description="The rows marked deleted by the last sync are not a jump: at most "
                f"twice the most of the five syncs before, or {DELETES_NOISE} (WARN).",
            ),
            AssetCheckSpec(
                SCHEMA_DRIFT,
                asset=key,
                description="The data matches its declaration: no declared field missing, no "
                "undeclared field, every declared type fits (WARN).",
            ),
        ]
        if resource.get("references"):
            specs.append(
                AssetCheckSpec(
                    REFERENCES,
                    asset=key,
                    description="Every reference points at an existing row (WARN).",
                )
            )
    return specs


class _Warehouse:
    """Read-only questions to the warehouse, through dlt's SQL client for its destination, on
    one connection for all the checks of a run."""

    def __init__(self, warehouse: CRMWarehouse) -> None:
        self.client = warehouse.pipeline().sql_client()

    def __enter__(self) -> "_Warehouse":
        self.client.open_connection()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close_connection()

    def query(self, sql: str) -> list[tuple[Any, ...]] | None:
        """Rows of `sql`, or None when a table it names does not exist (yet)."""
        try:
            return list(self.client.execute_sql(sql) or [])
        except DatabaseUndefinedRelation:
            return None

    def table(self, name: str) -> str:
        return self.client.make_qualified_table_name(name)

    def has_column(self, table: str, column: str) -> bool:
        try:
            self.client.execute_sql(
                f"SELECT {self.column(column)} FROM {self.table(table)} WHERE 1 = 0"
            )
        except DatabaseUndefinedRelation:
            return False
        except DatabaseTerminalException:
            return False
        return True

    def column(self, name: str) -> str:
        """A column name quoted and escaped for this destination (names come from the CRM)."""
        return self.client.escape_column_name(name)


def _latest_metadata(
    context: AssetCheckExecutionContext, key: AssetKey, limit: int
) -> list[Mapping[str, Any]]:
    """The metadata of the asset's `limit` latest materializations, newest first."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key), limit=limit
    ).records
    return [r.asset_materialization.metadata for r in records if r.asset_materialization]


def _value(metadata: Mapping[str, Any], name: str, default: Any = 0) -> Any:
    entry = metadata.get(name)
    return getattr(entry, "value", default) if entry is not None else default


def _primary_key(
    db: _Warehouse, history: Sequence[Mapping[str, Any]], key: AssetKey, table: str, pk: str
) -> AssetCheckResult:
    column = db.column(pk)
    rows = db.query(
        f"SELECT count(*) - count({column}), count({column}) - count(DISTINCT {column}) "
        f"FROM {db.table(table)}"
    )
    null_in_table, duplicate_in_table = rows[0] if rows else (0, 0)
    latest = history[0] if history else {}
    served_without = _value(latest, "records_without_id")
    served_twice = _value(latest, "duplicate_ids")
    problems = int(null_in_table) + int(duplicate_in_table) + served_without + served_twice
    return AssetCheckResult(
        asset_key=key,
        check_name=PRIMARY_KEY,
        passed=problems == 0,
        severity=AssetCheckSeverity.ERROR,
        description=None
        if problems == 0
        else (
            f"{table}: {served_without} records served without {pk} (left out), "
            f"{served_twice} {pk}s served more than once; in the table {null_in_table} null and "
            f"{duplicate_in_table} duplicated"
        ),
        metadata={
            "null_ids_in_table": int(null_in_table),
            "duplicate_ids_in_table": int(duplicate_in_table),
            "records_served_without_id": served_without,
            "ids_served_more_than_once": served_twice,
        },
    )


@cache
def _normalized(field: str) -> str:
    return naming().normalize_path(field)


def _column_of(field: str, history: Sequence[Mapping[str, Any]]) -> str:
    """The warehouse column of an API field as the sync named it: dlt's naming (`CustomerId` is
    `customer_id`), or the suffixed name it got where two fields met (`renamed_fields`)."""
    renamed = _value(history[0], "renamed_fields", {}) if history else {}
    return (renamed or {}).get(field) or _normalized(field)


def _references(
    db: _Warehouse,
    key: AssetKey,
    table: str,
    references: Sequence[Mapping[str, Any]],
    history_of: Callable[[AssetKey], Sequence[Mapping[str, Any]]],
) -> AssetCheckResult:
    dangling: dict[str, int] = {}
    for ref in references:
        # Named as the declaration names them, which may be as the CRM spells its fields
        # (`CustomerId`, as crm-discover writes them): found by the columns they loaded into.
        column, parent = ref["columns"][0], ref["referenced_table"]
        parent_column = ref["referenced_columns"][0]
        loaded_as = _column_of(column, history_of(key))
        child = db.column(loaded_as)
        target = db.column(_column_of(parent_column, history_of(asset_key(parent))))
        if not db.has_column(table, loaded_as):
            dangling[f"{column} -> {parent}.{parent_column}"] = 0  # never sent: nothing dangles
            continue
        # Compared as text: a CRM may send a reference with another type than the key it names.
        rows = db.query(
            f"SELECT count(*) FROM {db.table(table)} c WHERE c.{child} IS NOT NULL AND NOT "
            f"EXISTS (SELECT 1 FROM {db.table(parent)} p "
            f"WHERE CAST(p.{target} AS VARCHAR) = CAST(c.{child} AS VARCHAR))"
        )
        if rows is None:  # the parent table is missing: every reference dangles
            rows = db.query(f"SELECT count({child}) FROM {db.table(table)}")
        dangling[f"{column} -> {parent}.{parent_column}"] = int(rows[0][0]) if rows else 0
    bad = {k: v for k, v in dangling.items() if v}
    return AssetCheckResult(
        asset_key=key,
        check_name=REFERENCES,
        passed=not bad,
        severity=AssetCheckSeverity.WARN,
        metadata={f"dangling {k}": v for k, v in dangling.items()},
        description=None
        if not bad
        else f"{table}: " + ", ".join(f"{n} rows whose {k} does not exist" for k, n in bad.items()),
    )


def _schema_drift(
    history: Sequence[Mapping[str, Any]], key: AssetKey, table: str
) -> AssetCheckResult:
    now = history[0] if history else {}
    findings: list[str] = []
    never_sent = _value(now, "declared_never_sent", "-")
    undeclared = _value(now, "undeclared_fields", "-")
    mistyped = _value(now, "type_mismatches", {}) or {}
    variants = _value(now, "variant_columns", "-")
    if never_sent != "-":
        findings.append(f"declared but never sent: {never_sent}")
    if undeclared != "-":
        findings.append(f"sent but not declared: {undeclared}")
    if mistyped:
        findings.append("types: " + ", ".join(f"{c} {d}" for c, d in mistyped.items()))
    if variants != "-":
        findings.append(f"values that fit no column type went to {variants}")
    return AssetCheckResult(
        asset_key=key,
        check_name=SCHEMA_DRIFT,
        passed=not findings,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "declared_never_sent": never_sent,
            "undeclared_fields": undeclared,
            "type_mismatches": ", ".join(f"{c}: {d}" for c, d in mistyped.items()) or "-",
            "variant_columns": variants,
        },
        description=f"{table}: " + "; ".join(findings) if findings else None,
    )


def _deletes(history: Sequence[Mapping[str, Any]], key: AssetKey, table: str) -> AssetCheckResult:
    deleted = [_value(m, "rows_deleted") for m in history[:SYNCS_COMPARED]]
    latest, before = (deleted[0], deleted[1:]) if deleted else (0, [])
    bound = max(DELETES_NOISE, 2 * max(before, default=0))
    return AssetCheckResult(
        asset_key=key,
        check_name=DELETES,
        passed=latest <= bound,
        severity=AssetCheckSeverity.WARN,
        metadata={"rows_deleted": latest, "bound": bound},
        description=None
        if latest <= bound
        else f"{table}: {latest:,} rows marked deleted in the last sync, more than {bound:,}",
    )


def build_crm_checks(api_config: Mapping[str, Any] = CRM_API) -> list[AssetChecksDefinition]:
    """Every check of every resource in `api_config`: Dagster's own builders where one fits
    (a table that is not empty, columns unchanged since the previous sync), and one multi-check,
    subsettable, for what only the warehouse and the declaration can tell. Freshness is the
    assets' FreshnessPolicy, which the daemon evaluates."""
    keys = [asset_key(r["name"]) for r in api_config["resources"]]
    resources = {r["name"]: r for r in api_config["resources"]}
    pk = api_config.get("resource_defaults", {}).get("primary_key", "id")

    @multi_asset_check(
        specs=_specs(api_config),
        can_subset=True,
        name=QUALITY_CHECKS,
        description="Data-quality checks of the CRM tables.",
    )
    def crm_quality_checks(
        context: AssetCheckExecutionContext, crm_warehouse: CRMWarehouse
    ) -> Iterator[AssetCheckResult]:
        # The checks read the pipeline folder and the DuckDB file a sync writes: they wait for
        # a sync in progress rather than fail on DuckDB's single-writer lock, and read beside
        # the last checkpoint of the sync that ran before them in this process.
        with (
            exclusive_sync(crm_warehouse, context.log, reading=True),
            _Warehouse(crm_warehouse) as db,
        ):
            histories: dict[AssetKey, list[Mapping[str, Any]]] = {}  # one read per asset
            results = [
                evaluate(db, context, key, histories)
                for key in sorted(
                    context.selected_asset_check_keys,
                    key=lambda k: (k.asset_key.to_user_string(), k.name),
                )
            ]
        yield from (r for r in results if r is not None)

    def evaluate(
        db: _Warehouse,
        context: AssetCheckExecutionContext,
        check_key: AssetCheckKey,
        histories: dict[AssetKey, list[Mapping[str, Any]]],
    ) -> AssetCheckResult | None:
        key, name = check_key.asset_key, check_key.name
        table = key.path[-1]

        def history_of(asset: AssetKey) -> list[Mapping[str, Any]]:
            if asset not in histories:
                histories[asset] = _latest_metadata(context, asset, SYNCS_COMPARED)
            return histories[asset]

        if name == REFERENCES:
            return _references(db, key, table, resources[table]["references"], history_of)
        history = history_of(key)
        if name == PRIMARY_KEY:
            return _primary_key(db, history, key, table, resources[table].get("primary_key", pk))
        if name == DELETES:
            return _deletes(history, key, table)
        if name == SCHEMA_DRIFT:
            return _schema_drift(history, key, table)
        return None

    # Both builders are marked beta in Dagster 1.13; their warning would print on every load
    # of the definitions, in every CLI command and run, and says nothing a user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        row_count = build_metadata_bounds_checks(
            assets=keys,
            metadata_key="dagster/row_count",
            min_value=1,
            severity=AssetCheckSeverity.WARN,
        )
        column_changes = build_column_schema_change_checks(
            assets=keys, severity=AssetCheckSeverity.WARN
        )
    return [crm_quality_checks, *row_count, *column_changes]
