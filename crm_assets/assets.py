"""The CRM assets: one software-defined asset per `CRM_API` resource, built by dagster-dlt.

The assets are defined from a source without credentials (import reads no secret); the run builds
the real source from the `CRMCredentials` resource and hands it to `DagsterDltResource.run`.
"""

import atexit
import gc
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import cache
from typing import Any

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Config,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
)

# dagster-embedded-elt's dlt module is a re-export of dagster_dlt that warns on import; the
# integration code is dagster_dlt's, so it is imported from there (see the README).
from dagster_dlt import DagsterDltResource, DagsterDltTranslator, dlt_assets
from dagster_dlt.translator import DltResourceTranslatorData
from dlt import config as dlt_config
from pydantic import Field

from crm_assets.api import CRM_API
from crm_assets.automation import CRM_GROUP, QUALITY_CHECKS
from crm_assets.deletes import MassDeleteRefused, apply_deletes
from crm_assets.errors import CRMAPIError, CRMConfigError, CRMError
from crm_assets.loads import (
    append_to,
    checkpoints_between,
    keep_one_row_per_key,
    row_count,
    row_id_column,
    rows_and_keys_written,
    tables_to_append,
)
from crm_assets.resources import CRMCredentials, CRMRequestSettings, CRMWarehouse
from crm_assets.source import ResourceStats, chunked_reads, crm_source
from crm_assets.sync_lock import exclusive_sync
from crm_assets.transport import CRMTransport

KEY_PREFIX = "crm"
LOADER_FILE_FORMAT = "parquet"  # flat memory and fast DuckDB loads (see the README)
# dlt's settings for the time of a sync.
SYNC_SETTINGS = {
    # Every row carries the load that wrote it, as in any dlt table (dlt leaves it out of Arrow
    # data unless asked; it adds it at extraction, as a dictionary column): deletes and
    # duplicates are counted from this run's loads in the warehouse, not from keys kept in memory.
    "normalize.parquet_normalizer.add_dlt_load_id": True,
    # The Parquet files are written once and read once, by the load: snappy cost more CPU than
    # it saved (402,000 string-id records: 9.45 s against 9.96 s a run, three interleaved pairs).
    "data_writer.compression": "none",
    # A loaded package keeps its metadata, not its files: the pipelines folder kept every record
    # of every sync (95 MB after one of 402,000), growing with each.
    "load.delete_completed_jobs": True,
}


@contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Keep CPython's cyclic GC out of a sync; reference counting still frees every record.

    Decoding pages allocates millions of containers, so the collector ran hundreds of times and
    its older passes walked every record waiting in a batch: about 9% of the CPU samples of a
    402,000-record sync (perf), even with young collections ten times rarer than the default.
    Records hold no cycles. What a sync leaves in cycles (dlt's and Dagster's bookkeeping) is
    small, about 34,000 objects per 400,000 records, collected in 0.03 s (measured here), and the
    sync collects it after each round, so memory stays flat however long the read. Objects alive
    before the sync are frozen: those collections do not walk Dagster's and dlt's modules.
    """
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


@cache  # once per process
def skip_the_last_collection() -> None:
    """Freeze every object when the process exits, so that the interpreter's last cyclic
    collection has nothing to walk: it walked every object of Dagster and dlt, 0.6-0.7 s of
    each `dagster asset materialize` after its run had ended (measured here). The teardown
    still frees objects as before; only cycles unreachable by then are left to the operating
    system. Registered when a sync starts, so after logging's own exit handler: it runs first."""
    atexit.register(gc.freeze)


def use_jemalloc_for_arrow() -> None:
    """Arrow's buffers from jemalloc, unless ARROW_DEFAULT_MEMORY_POOL names a pool. pyarrow's
    default here, mimalloc, keeps the pages of freed batches: peak RSS of a sync of 2,002,000
    records was 716 MB with it, 653 MB with the system allocator and 606 MB with jemalloc, in
    the same time (measured here). Set when a sync starts: the pool is the process's.

    jemalloc then gives freed pages back at once rather than after a decay: its default kept
    them resident through the load that follows, where the sync's peak is. On 2,002,000 records
    of string ids (measured here, interleaved) the run's peak tree RSS was 563-569 MB against
    581-593 MB, in the same time within the machine's noise."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    with suppress(NotImplementedError):  # a pyarrow built without jemalloc keeps its default
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)


def checks_follow(context: AssetExecutionContext) -> bool:
    """Whether this run goes on to the checks that read the warehouse."""
    steps = context.run.step_keys_to_execute
    return context.job_def.graph.has_node_named(QUALITY_CHECKS) and (
        steps is None or QUALITY_CHECKS in steps
    )


def asset_key(resource: str) -> AssetKey:
    """The one asset-key scheme: `crm/<resource>`."""
    return AssetKey([KEY_PREFIX, resource])


def declared_table_schema(columns: Mapping[str, Mapping[str, Any]]) -> TableSchema:
    """The declared columns as Dagster shows them, before the first sync has happened."""
    return TableSchema(
        columns=[
            TableColumn(
                name=name,
                type=str(column.get("data_type", "text")),
                description=column.get("description"),
                constraints=TableColumnConstraints(
                    nullable=bool(column.get("nullable", True)),
                    unique=bool(column.get("primary_key", False)),
                ),
            )
            for name, column in columns.items()
        ]
    )


class CRMTranslator(DagsterDltTranslator):
    """Keys `crm/<resource>`, group `crm`, no upstream source asset, freshness on each asset."""

    def __init__(
        self, freshness: FreshnessPolicy | None = None, config: Mapping[str, Any] = CRM_API
    ) -> None:
        self.freshness = freshness
        self.columns = {r["name"]: r.get("columns", {}) for r in config["resources"]}
        default_key = config.get("resource_defaults", {}).get("primary_key", "id")
        self.primary_keys = {
            r["name"]: r.get("primary_key", default_key) for r in config["resources"]
        }

    def get_asset_spec(self, data: DltResourceTranslatorData) -> AssetSpec:
        name = data.resource.name
        return (
            super()
            .get_asset_spec(data)
            .replace_attributes(
                key=asset_key(name),
                group_name=CRM_GROUP,
                deps=[],
                kinds={"dlt", "rest_api"},
                description=f"CRM `{name}`, merged on `id` into the warehouse table `{name}`.",
                freshness_policy=self.freshness,
                metadata={
                    "dagster/column_schema": declared_table_schema(self.columns.get(name, {}))
                },
            )
        )


def drift_metadata(stats: ResourceStats) -> dict[str, Any]:
    """How the table differs from its declaration, from the first sync on; the schema_drift
    check reads these entries."""
    drift = stats.drift
    if drift is None:
        return {}
    metadata: dict[str, Any] = {
        "declared_never_sent": MetadataValue.text(", ".join(drift.never_sent) or "-"),
        "undeclared_fields": MetadataValue.text(", ".join(drift.undeclared) or "-"),
        "type_mismatches": MetadataValue.json(dict(drift.mistyped)),
        "variant_columns": MetadataValue.text(", ".join(drift.variants) or "-"),
        "renamed_fields": MetadataValue.json(dict(drift.renamed)),
        "declared_fields_sent_as": MetadataValue.json(dict(drift.spelled)),
        "drift_count": MetadataValue.int(drift.count),
    }
    if stats.filter_refused:
        metadata["filter_refused"] = MetadataValue.text(stats.filter_refused)
    return metadata


def loaded_table_schema(
    stats: ResourceStats, declared: Mapping[str, Mapping[str, Any]], primary_key: str
) -> TableSchema | None:
    """The table's columns as loaded, with their declared descriptions."""
    if stats.column_types is None:
        return None
    columns = []
    for name, kind in stats.column_types.items():
        column = declared.get(name) or {}
        columns.append(
            TableColumn(
                name=name,
                type=str(kind),
                description=column.get("description"),
                constraints=TableColumnConstraints(
                    nullable=name != primary_key, unique=name == primary_key
                ),
            )
        )
    return TableSchema(columns=columns)


def _sync_metadata(
    stats: ResourceStats,
    rows_loaded: int,
    rows_in_table: int,
    seconds: float,
    load_id: str | None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "rows_loaded": MetadataValue.int(rows_loaded),
        "records_fetched": MetadataValue.int(stats.records),
        "pages_fetched": MetadataValue.int(stats.pages),
        "retries": MetadataValue.int(stats.retries),
        "duration_s": MetadataValue.float(round(seconds, 3)),
        "records_per_s": MetadataValue.float(
            round(stats.records / stats.seconds, 1) if stats.seconds else 0.0
        ),
    }
    metadata["dagster/row_count"] = MetadataValue.int(rows_in_table)
    if load_id:
        metadata["dlt_load_id"] = MetadataValue.text(load_id)
    if stats.cursor_start is not None:
        metadata["cursor_start"] = MetadataValue.text(stats.cursor_start)
        metadata["cursor_end"] = MetadataValue.text(stats.cursor_end or stats.cursor_start)
    metadata["chunks"] = MetadataValue.int(stats.chunks + 1)
    if stats.resumed_at is not None:
        metadata["resumed_at_offset"] = MetadataValue.int(stats.resumed_at)
    metadata["rows_deleted"] = MetadataValue.int(stats.rows_deleted)
    metadata["complete_read"] = MetadataValue.bool(stats.complete)
    metadata["records_missing_from_pages"] = MetadataValue.int(stats.paging.missing)
    metadata["records_without_id"] = MetadataValue.int(stats.null_keys)
    metadata["strings_with_lone_surrogates"] = MetadataValue.int(stats.requests.escaped_strings)
    metadata["duplicate_ids"] = MetadataValue.int(stats.duplicate_keys)
    metadata.update(drift_metadata(stats))
    return metadata


def failure_summary(failures: list[CRMError], total: int) -> str:
    """One line for the run, every resource with its kind and path; a fix they all share (a
    wrong key fails all five alike) is said once, up front, rather than five times."""
    head = f"{len(failures)} of {total} CRM resources failed"
    api = [f for f in failures if isinstance(f, CRMAPIError)]
    hints = {f.detail for f in api}
    if len(failures) > 1 and len(api) == len(failures) and len(hints) == 1 and hints != {""}:
        parts = [f"{f.resource}: {f.kind} from GET {f.path}" for f in api]
        return f"{head} ({hints.pop()}): " + "; ".join(parts)
    return f"{head}: " + "; ".join(str(f) for f in failures)


def timing_line(
    seconds: float, rounds: int, phases: Mapping[str, float], stats: Iterable[ResourceStats]
) -> str:
    """Where the sync's time went, in one line of the run log. Resources are read in parallel,
    so waiting and typing are each the longest of any one resource."""
    stats = list(stats)
    waiting = max((s.waiting_s for s in stats), default=0.0)
    typing = max((s.typing_s for s in stats), default=0.0)
    return (
        f"sync timing: {seconds:.2f} s in {rounds} load(s); extract {phases['extract']:.2f} s "
        f"(waiting for pages {waiting:.2f} s, typing records {typing:.2f} s), "
        f"normalize {phases['normalize']:.2f} s, load {phases['load']:.2f} s"
    )


class CRMSyncConfig(Config):
    """Run configuration of a sync (the UI's launchpad, or `--config-json` on the CLI)."""

    full_refresh: bool = Field(
        default=False,
        description="Ignore the incremental cursors of the selected resources: read every "
        "record again and merge it.",
    )
    rebuild: bool = Field(
        default=False,
        description="Drop the selected resources' tables and state, then load them again from "
        "the CRM: the way out when a key's type changed in the CRM. Rows come back with the "
        "load; until it succeeds the tables are empty.",
    )


def build_crm_assets(
    freshness: FreshnessPolicy | None = None, api_config: Mapping[str, Any] = CRM_API
) -> Any:
    """The multi-asset over every resource in `api_config`, subsettable to any of them."""

    translator = CRMTranslator(freshness, api_config)

    @dlt_assets(
        dlt_source=crm_source(None, api_config),
        dlt_pipeline=None,  # built per run from CRMWarehouse: creating one writes files
        name="crm_sync_assets",
        dagster_dlt_translator=translator,
        pool="crm_warehouse",
    )
    def crm_sync_assets(
        context: AssetExecutionContext,
        config: CRMSyncConfig,
        dlt: DagsterDltResource,
        crm_credentials: CRMCredentials,
        crm_warehouse: CRMWarehouse,
        crm_requests: CRMRequestSettings,
    ) -> Iterator[MaterializeResult]:
        # Settings first: a missing or wrong one fails the run in one line, before any request,
        # lock or file.
        try:
            connection = crm_credentials.connection(api_config.get("client"))
            policy = crm_requests.policy()
            chunking = crm_warehouse.chunking()
            delete_mode, delete_share = crm_warehouse.delete_mode(), crm_warehouse.delete_share()
        except CRMConfigError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        # One sync at a time per pipeline folder and per DuckDB file, whatever the instance's
        # pool settings: concurrent dlt runs corrupt each other's state (see exclusive_sync).
        with exclusive_sync(crm_warehouse, context.log) as hold:
            use_jemalloc_for_arrow()
            skip_the_last_collection()
            started = time.monotonic()
            pipeline = crm_warehouse.pipeline()
            with checkpoints_between(pipeline, context.log) as checkpoints:
                with (
                    without_cyclic_gc(),
                    dlt_config.values(SYNC_SETTINGS),
                    CRMTransport(connection, policy, log=context.log) as transport,
                ):
                    stats_of: dict[str, ResourceStats] = {}
                    rows_loaded: Counter[str] = Counter()
                    phases: Counter[str] = Counter()  # seconds in each of dlt's steps, all rounds
                    rounds = 0
                    appending: set[str] = set()  # resources whose tables were empty: appended
                    load_ids: list[str] = []  # the packages this run extracted, all rounds
                    results: dict[Any, MaterializeResult] = {}
                    refresh = {"refresh": "drop_resources"} if config.rebuild else {}
                    # One dlt load per round: a long read stops at each chunk's end (its position
                    # lands with its rows, in dlt's state) and the next round goes on from there.
                    while rounds == 0 or any(s.more for s in stats_of.values()):
                        if rounds:
                            checkpoints.after_round()  # compressed while this one is fetched
                        going_on = [name for name, stats in stats_of.items() if stats.more]
                        reading = (
                            len(going_on)
                            if rounds
                            else chunked_reads(
                                api_config, (key.path[-1] for key in context.selected_asset_keys)
                            )
                        )
                        source = crm_source(
                            transport,
                            api_config,
                            full_refresh=config.full_refresh,
                            stats=stats_of,
                            chunking=chunking.per_resource(reading),
                        )
                        if rounds == 0:
                            appending = tables_to_append(
                                pipeline,
                                source,
                                (key.path[-1] for key in context.selected_asset_keys),
                                config.rebuild,
                            )
                        append_to(source, appending)  # empty tables: every round (see loads.py)
                        if rounds:  # the reads that stopped at a chunk's end, and only those
                            source = source.with_resources(*going_on)
                        for result in dlt.run(
                            context=context,
                            dlt_source=source,
                            dlt_pipeline=pipeline,
                            dagster_dlt_translator=translator,
                            loader_file_format=LOADER_FILE_FORMAT,
                            **refresh,
                        ):
                            results[result.asset_key] = result  # a later round's is the newer
                        rounds += 1
                        refresh = {}  # a rebuild drops the tables before the first round only
                        gc.collect()  # this round's cycles (see without_cyclic_gc)
                        trace = pipeline.last_trace
                        if trace.last_extract_info:
                            # Not the load step's: that one also finishes packages a stopped run
                            # left, whose rows this run did not read.
                            load_ids.extend(trace.last_extract_info.loads_ids)
                        if trace.last_normalize_info:
                            rows_loaded.update(trace.last_normalize_info.row_counts)
                        for step in trace.steps:
                            if step.step in ("extract", "normalize", "load") and step.finished_at:
                                took = step.finished_at - step.started_at
                                phases[step.step] += took.total_seconds()
                seconds = time.monotonic() - started
                context.log.info(timing_line(seconds, rounds, phases, stats_of.values()))
                load_info = pipeline.last_trace.last_load_info
                load_id = load_info.loads_ids[-1] if load_info and load_info.loads_ids else None
                failures: list[CRMError] = []
                done: dict[Any, dict[str, Any]] = {}  # each resource's metadata, once accounted
                row_id = row_id_column(pipeline)
                with pipeline.sql_client() as client:  # one connection for what the loads left
                    for key, result in results.items():
                        name = key.path[-1] if key else ""
                        stats = stats_of.get(name, ResourceStats())
                        pk = translator.primary_keys.get(name, "id")
                        if stats.keyed_rows:
                            written, distinct = rows_and_keys_written(client, name, pk, load_ids)
                            stats.duplicate_keys = stats.keyed_rows - distinct
                            if written > distinct and name in appending and row_id:
                                # Served twice into an append: one row per key, as a merge keeps;
                                # a read that failed later has loaded its pages too.
                                keep_one_row_per_key(client, name, pk, load_ids, row_id)
                        if stats.failure:
                            failures.append(stats.failure)
                            continue
                        if stats.complete:
                            try:
                                stats.rows_deleted = apply_deletes(
                                    client, name, load_ids, delete_mode, delete_share
                                )
                            except MassDeleteRefused as exc:
                                failures.append(exc)
                            if stats.rows_deleted:
                                context.log.info(
                                    f"{name}: {stats.rows_deleted:,} rows no longer in the CRM, "
                                    f"{'removed' if delete_mode == 'hard' else 'marked deleted'}"
                                )
                        if stats.null_keys:
                            read = stats.earlier_records + stats.records
                            # Loaded, but not whole: the rest of the resource is in; the run fails.
                            failures.append(
                                CRMError(
                                    f"{name}: {stats.null_keys:,} of {read:,} records have no "
                                    f"{pk}; loaded {read - stats.null_keys:,}"
                                )
                            )
                        metadata = {
                            **(result.metadata or {}),
                            **_sync_metadata(
                                stats, rows_loaded[name], row_count(client, name), seconds, load_id
                            ),
                            "load_mode": MetadataValue.text(
                                "append (the table was empty)" if name in appending else "merge"
                            ),
                        }
                        schema = loaded_table_schema(
                            stats, translator.columns.get(name, {}), translator.primary_keys[name]
                        )
                        if schema is not None:
                            metadata["dagster/column_schema"] = schema
                        done[key] = metadata
                if not failures and checks_follow(context):
                    # The checks that read the warehouse come next in this run and read beside
                    # the last checkpoint; Dagster records the materializations and runs its own
                    # checks meanwhile.
                    checkpoints.last_in_background(hold)
            for key, metadata in done.items():
                yield MaterializeResult(asset_key=key, metadata=metadata)
            if failures:
                raise Failure(
                    description=failure_summary(failures, len(results)), allow_retries=False
                )

    return crm_sync_assets
