"""The dlt source: one dlt resource per entry of `CRM_API`, fed over the CRM transport.

Pages become typed Arrow tables (see conversion.py: the data decides the types, the declaration
refines them) before dlt sees them, so dlt skips its per-record normalisation, the slowest part of
a plain `rest_api_source` sync, and still gets every field the CRM sends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.schema import Schema
from dlt.extract.resource import DltResource

from crm_assets.api import CRM_API
from crm_assets.conversion import TIMESTAMP, ColumnType, Drift, KeyTypeChanged, TableBuilder
from crm_assets.deletes import DELETED_COLUMN, LOAD_ID_COLUMN, LOAD_ID_HINT
from crm_assets.errors import CRMAPIError, CRMConfigError, CRMError
from crm_assets.paging import PageCounters, Position, iter_pages
from crm_assets.rest_api_path import (
    SecretScrubber,
    client_gap,
    dlt_pages,
    dlt_rest_resources,
    fast_path_gap,
)
from crm_assets.transport import CRMTransport, RequestCounters, escape_lone_surrogates

SOURCE_NAME = "crm"
# Rows per Arrow table handed to dlt. Each resource holds one batch of decoded records: 5,000
# rather than 10,000 took 40-50 MB off peak RSS at 402,000 records (string ids), in the same time.
# 2,500 took 15-25 MB more off, but typing 1,002,000 records took 5-6 s longer (two interleaved
# pairs of syncs, 5-8% more CPU).
BATCH_ROWS = 5_000
PROGRESS_EVERY_S = 5.0
RENAMES_STATE_KEY = "renamed_fields"
SPELLED_STATE_KEY = "declared_fields_sent_as"
RESUME_STATE_KEY = "resume"


@dataclass(frozen=True)
class Chunking:
    """When a long read lands what it has fetched so far: after `records` records (of the
    resources read in chunks together, shared evenly; see `per_resource`) or after `seconds`
    seconds, whichever comes first (0 turns either off). Each chunk is one dlt load, and where it
    ended is kept in dlt's state with it, so a run that stops later loses at most the chunk in
    flight: the next run goes on from there (see paging.Position).

    Why 400,000 records: a load costs about half a second whatever its size, plus a merge that
    grows with the table (except into a table that was empty: see loads.py), so small chunks
    cost time (measured here on 2,002,000 records, before first syncs appended: 21 loads in
    100,000-record chunks took 95 s, 6 loads in 400,000-record chunks 73 s, at the same peak
    RSS), while a chunk of 400,000 records is about 10 s of fetching from a local API, and 40 s
    from one that allows 100 requests/s: what a stopped run may have to fetch again."""

    records: int = 400_000
    seconds: float = 300.0

    def per_resource(self, resources: int) -> Chunking:
        """The share of each of `resources` read in chunks at once: a round of loads is as long
        whether one resource is long or five are. Resources read whole (one page, or through
        dlt) take no share: counted, they would cut the others' chunks short for nothing."""
        share = -(-self.records // max(1, resources)) if self.records else 0
        return Chunking(share, self.seconds)

    def time_is_up(self, seconds: float) -> bool:
        return 0 < self.seconds <= seconds


@dataclass
class ResourceStats:
    """The source's counters of one resource's extraction, next to the pager's and the
    transport's own; the asset reads them for its metadata."""

    paging: PageCounters = field(default_factory=PageCounters)
    requests: RequestCounters = field(default_factory=RequestCounters)
    failure: CRMError | None = None  # why this resource stopped, as data
    drift: Drift | None = None  # the table against its declaration
    column_types: dict[str, ColumnType] | None = None
    filter_refused: str | None = None  # the incremental filter the CRM answered 400 to
    cursor_start: str | None = None
    cursor_end: str | None = None
    seconds: float = 0.0  # from the first request to the last record of this resource
    null_keys: int = 0
    keyed_rows: int = 0  # records of this run handed to dlt with their key
    duplicate_keys: int = 0  # keys served more than once in this run (set once it has loaded)
    complete: bool = False  # every record of the resource was read, so absent ids are deletes
    rows_deleted: int = 0
    more: bool = False  # the read stopped at a chunk's end: land it, then read on
    chunks: int = 0  # chunks landed before the last one, in this run
    resumed_at: int | None = None  # the offset an earlier, stopped run had loaded up to
    earlier_records: int = 0  # records that earlier run read
    last_key: Any = None  # key of the last record read that has one: a chunk's anchor
    last_key_offset: int = -1
    waiting_s: float = 0.0  # waiting for pages (the CRM, the network, decoding JSON)
    typing_s: float = 0.0  # turning records into typed Arrow tables
    first_page_rows: int = 0

    @property
    def pages(self) -> int:
        return self.paging.pages

    @property
    def records(self) -> int:
        return self.paging.records

    @property
    def total(self) -> int | None:
        return self.paging.total

    @property
    def first_total(self) -> int | None:
        return self.paging.first_total

    @property
    def retries(self) -> int:
        return self.requests.retries


class _ExpectedArrowHintOverride(logging.Filter):
    """JSON columns reach dlt as Arrow strings, declared `json`: dlt keeps the declared type, as
    intended, but warns about it on every run for every resource. That warning says nothing a
    user can act on, so it is dropped; every other dlt message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "when merging arrow schema with dlt schema" not in record.getMessage()


def _quiet_expected_dlt_warnings() -> None:
    dlt_logger = logging.getLogger("dlt")
    if not any(isinstance(f, _ExpectedArrowHintOverride) for f in dlt_logger.filters):
        dlt_logger.addFilter(_ExpectedArrowHintOverride())


def _placeholder(name: str) -> Iterator[pa.Table]:
    raise CRMConfigError(f"{name}: no CRM connection; the source was built without credentials")
    yield  # pragma: no cover - makes this a generator


def _existing_columns(name: str) -> dict[str, Any]:
    """The columns dlt's schema holds for table `name` from earlier syncs (restored from the
    destination before extraction starts), so a column keeps its type from sync to sync."""
    try:
        schema = dlt.current.source_schema()
    except Exception:  # outside a pipeline run (e.g. iterating the source directly)
        return {}
    return dict(schema.tables.get(name, {}).get("columns", {}))


def naming() -> Any:
    """dlt's naming convention of the CRM source, the one that names its tables' columns:
    the running source's, or, outside a run, the one its schema would have."""
    try:
        return dlt.current.source_schema().naming
    except Exception:
        return Schema(SOURCE_NAME).naming


def _extract(
    transport: CRMTransport,
    stats: ResourceStats,
    name: str,
    endpoint: Mapping[str, Any],
    columns: Mapping[str, Mapping[str, Any]],
    primary_key: str | None,
    full_refresh: bool = False,
    via_dlt: DltResource | None = None,
    chunking: Chunking | None = None,
) -> Iterator[Any]:
    """All records of one resource as typed Arrow tables. A failure ends this resource only: it
    is recorded in its stats, and the other resources of the same run carry on.

    With an `incremental` endpoint (the declaration names the CRM's filter), a sync after the
    first asks only for records changed since the cursor, which lives in dlt's resource state
    (stored with the data at the destination, so it survives a new machine). The first sync, a
    full refresh, and a CRM that refuses the filter read everything. The cursor moves only when
    the whole resource was read, so a failed or interrupted sync is repeated from the same point.

    With `chunking`, a long read of the fast path stops at a chunk's end and keeps its position
    in dlt's state; the caller lands the chunk and runs the source again, and this resource goes
    on from that position, in this run or, if this one stopped, in the next (`stats.more` says
    there is more to read).
    """
    state = dlt.current.resource_state()
    builder = TableBuilder(
        name,
        columns,
        primary_key,
        naming().normalize_path,
        existing=_existing_columns(name),
        renames=state.get(RENAMES_STATE_KEY),
        spelled=state.get(SPELLED_STATE_KEY),
    )
    stats.column_types = builder.types
    builder.add_column(DELETED_COLUMN, TIMESTAMP)
    # dlt's own resources keep their own incremental state and are read in one go; the fast path
    # keeps ours, and lands long reads in chunks.
    incremental = None if via_dlt is not None else endpoint.get("incremental")
    checkpoint = _checkpoint(transport, state, stats, name, full_refresh, chunking is not None)
    continuing, stats.more = stats.more, False
    params: dict[str, Any] = {}
    if checkpoint is not None:
        params = dict(checkpoint["params"])
        stats.cursor_start = checkpoint["cursor_start"]
    elif incremental:
        saved = None if full_refresh else state.get("cursor")
        stats.cursor_start = saved
        if saved is not None:
            params[incremental["start_param"]] = saved
    resume = (
        Position(
            checkpoint["offset"],
            checkpoint["anchor"],
            checkpoint["anchor_offset"],
            str(builder.primary_key),  # the CRM's own name of the key field, once it sent one
            checkpoint["step"],
        )
        if checkpoint is not None
        else None
    )
    newest: Any = checkpoint["newest"] if checkpoint is not None else None
    floor: Any = checkpoint["floor"] if checkpoint is not None else None
    started = time.monotonic()

    def _pages() -> Iterator[list[dict[str, Any]]]:
        if via_dlt is None:
            return iter_pages(
                transport,
                name,
                endpoint,
                params,
                stats.paging,
                resume,
                chunking.records if chunking is not None else None,
            )
        return _counted(dlt_pages(via_dlt, transport.connection), stats)

    try:
        try:
            tables = _tables(transport, name, _pages(), builder, stats, primary_key, chunking)
            first = next(tables, None)
        except CRMAPIError as exc:
            if not (params and exc.status == 400):
                raise
            # The CRM refuses the declared filter: read in full (exact, only slower) and say so.
            stats.filter_refused = incremental["start_param"]  # type: ignore[index]
            transport.log.warning(
                f"{name}: the CRM answered HTTP 400 to the filter {stats.filter_refused}; "
                "reading every record instead. Remove `incremental` from this resource in "
                "declared_schema.yaml, or run crm-discover, to stop asking"
            )
            params, resume, newest, floor = {}, None, None, None
            stats.paging = PageCounters()
            tables = _tables(transport, name, _pages(), builder, stats, primary_key, chunking)
            first = next(tables, None)
        if first is not None:
            handed = False  # a table went to dlt: the first one carries the JSON hints
            for n, table in enumerate(_chain(first, tables)):
                if n == 0 and resume is None and not continuing:
                    floor = _newest(table.slice(0, stats.first_page_rows), incremental, builder)
                newest = _later(newest, _newest(table, incremental, builder))
                if not table.num_rows:
                    # No record of the batch had its key (they are counted, and fail the run
                    # once the rest has loaded). An empty table would still bring the key
                    # column, which dlt refuses without data, and the load of every resource
                    # would fail with it. Its column hints go with the next table.
                    continue
                hints = builder.take_new_hints()
                if not handed:
                    hints = {**builder.json_hints(), **hints}
                    handed = True
                yield (
                    dlt.mark.with_hints(table, dlt.mark.make_hints(columns=hints))
                    if hints
                    else table
                )
        transport.log.info(_progress(name, stats))
    except KeyTypeChanged as exc:
        stats.failure = CRMError(
            f"{exc}; nothing of {name} was loaded in this run. Run once with the run config "
            "`rebuild: true` to reload the table with the CRM's key type"
        )
        transport.log.warning(str(stats.failure))
        return
    except CRMError as exc:
        stats.failure = exc
        stats.more = False
        transport.log.warning(f"{name}: extraction stopped: {exc}")
        if chunking is not None and stats.last_key_offset >= 0:
            # What was read before the failure lands with this run: the next one goes on after.
            state[RESUME_STATE_KEY] = _checkpoint_at(stats, params, newest, floor)
        return
    finally:
        stats.drift = builder.drift()
        if builder.renamed:
            state[RENAMES_STATE_KEY] = dict(builder.renamed)
        if builder.spelled:
            state[SPELLED_STATE_KEY] = dict(builder.spelled)
    stats.seconds += time.monotonic() - started
    if stats.more:
        # Where this chunk ends goes into dlt's state, which lands with the chunk's rows.
        state[RESUME_STATE_KEY] = _checkpoint_at(stats, params, newest, floor)
        stats.chunks += 1
        of_total = f" of {stats.total:,}" if stats.total is not None else ""
        transport.log.info(
            f"{name}: landing records up to offset {stats.paging.position:,}{of_total} before "
            "reading on; a run that stops now resumes from here"
        )
        return
    state.pop(RESUME_STATE_KEY, None)
    # Complete: the fast path with no filter, in this run from the first record, a total the
    # CRM reported (or one page) that did not move while paging, every record had its id. Only
    # then may ids missing from this read be taken as deleted in the CRM. (Without a total a
    # shift while paging cannot be seen, and an entry read through dlt may filter, page or derive
    # its records in ways this cannot see.)
    stats.complete = (
        via_dlt is None
        and not params
        and stats.resumed_at is None
        and stats.total is not None
        and not stats.paging.total_changed
        and not stats.paging.missing
        and not stats.null_keys
        and bool(primary_key)
    )
    _report_drift(transport, name, stats.drift)
    if stats.requests.escaped_strings:
        transport.log.warning(
            f"{name}: {stats.requests.escaped_strings:,} strings held half of a UTF-16 surrogate "
            "pair without the other half, which UTF-8 cannot store; loaded with that half as its "
            "escape text (such as \\ud83d)"
        )
    if stats.paging.missing:
        transport.log.warning(
            f"{name}: {stats.paging.missing:,} of the {stats.total:,} records the CRM counts were "
            "not on its pages (pages inside the listing came back short, also when asked again); "
            "no id missing from this read is taken as deleted"
            + (", and the cursor stays" if incremental else "")
        )
    # With records missing from the pages, the cursor stays: the next sync reads them again.
    if incremental and newest is not None and not stats.paging.missing:
        if stats.paging.total_changed:
            # Records joined or left the result while we paged concurrently, shifting offsets
            # under us: one may have been skipped. Keep the cursor so the next sync reads again.
            transport.log.warning(
                f"{name}: {stats.first_total} -> {stats.total} records changed while paging; "
                f"the cursor stays at {stats.cursor_start}"
            )
        elif stats.resumed_at is not None:
            # Records changed in the part an earlier run loaded were not read again. Each such
            # change is newer than every record of the read's first page, so the cursor moves
            # no further than that: the next sync reads them.
            if floor is not None:
                state["cursor"] = stats.cursor_end = _earlier(newest, floor)
        else:
            state["cursor"] = newest
            stats.cursor_end = newest


def _checkpoint_at(
    stats: ResourceStats, params: dict[str, Any], newest: Any, floor: Any
) -> dict[str, Any]:
    """The position a read reached, as dlt's state keeps it (it lands with the rows read)."""
    return {
        "offset": stats.paging.position,
        "anchor": stats.last_key,
        "anchor_offset": stats.last_key_offset,
        "step": stats.paging.step,
        "params": params,
        "total": stats.total,
        "cursor_start": stats.cursor_start,
        "newest": newest,
        "floor": floor,
        "records": stats.earlier_records + stats.records,
        "null_keys": stats.null_keys,
        # A listing that moved while this read paged may have had a record skipped: the run
        # that finishes the read must know it, to keep the cursor where it was.
        "listing_changed": stats.paging.total_changed,
    }


def _checkpoint(
    transport: CRMTransport,
    state: dict[str, Any],
    stats: ResourceStats,
    name: str,
    full_refresh: bool,
    chunked: bool,
) -> dict[str, Any] | None:
    """Where an unfinished read of this resource stopped, if the run should go on from there:
    the chunk before, in this run, or an earlier run that stopped (killed, or failed)."""
    checkpoint = state.get(RESUME_STATE_KEY)
    if checkpoint is None or not chunked:
        return None
    if stats.more:
        return checkpoint  # the next chunk of this run's read
    if full_refresh and checkpoint["params"]:
        # It was an incremental read; a full refresh reads everything, from the start.
        state.pop(RESUME_STATE_KEY, None)
        return None
    stats.resumed_at = checkpoint["offset"]
    stats.earlier_records = checkpoint["records"]
    stats.null_keys = checkpoint["null_keys"]
    stats.paging.total = stats.paging.first_total = checkpoint["total"]
    stats.paging.total_changed = bool(checkpoint.get("listing_changed"))
    of_total = f" of {checkpoint['total']:,}" if checkpoint["total"] is not None else ""
    transport.log.info(
        f"{name}: an earlier run loaded {checkpoint['offset']:,}{of_total} records and stopped; "
        "going on from there"
    )
    return checkpoint


def _report_drift(transport: CRMTransport, name: str, drift: Any) -> None:
    """Say in the run log where the data did not fit its declaration (also in the metadata)."""
    if drift.mistyped:
        transport.log.warning(
            f"{name}: declared types the data does not fit, loaded as the data's own: "
            + "; ".join(f"{column} {what}" for column, what in drift.mistyped.items())
        )
    if drift.variants:
        transport.log.warning(
            f"{name}: values that fit no column type went to " + ", ".join(drift.variants)
        )
    if drift.spelled:
        transport.log.info(
            f"{name}: declared fields the CRM names its own way, loaded as declared: "
            + ", ".join(f"{declared} as {sent}" for declared, sent in drift.spelled.items())
        )
    if drift.undeclared or drift.never_sent:
        transport.log.info(
            f"{name}: {len(drift.undeclared)} fields not declared, "
            f"{len(drift.never_sent)} declared fields never sent (see the asset's metadata)"
        )


def _chain(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest


def _counted(
    pages: Iterator[list[dict[str, Any]]], stats: ResourceStats
) -> Iterator[list[dict[str, Any]]]:
    """dlt's pages, counted; decoded by `requests`, which keeps a lone surrogate that no
    warehouse can store: it is escaped here as the fast path's decoder escapes it."""
    for page in pages:
        page, escaped = escape_lone_surrogates(page)
        stats.requests.escaped_strings += escaped
        stats.paging.pages += 1
        stats.paging.records += len(page)
        yield page


def _tables(
    transport: CRMTransport,
    name: str,
    pages: Iterator[list[dict[str, Any]]],
    builder: TableBuilder,
    stats: ResourceStats,
    primary_key: str | None,
    chunking: Chunking | None,
) -> Iterator[pa.Table]:
    batch: list[dict[str, Any]] = []
    last_report = started = time.monotonic()
    with closing(pages):  # a chunk's end leaves pages in flight: cancel them
        while True:
            asked = time.monotonic()
            try:
                records = next(pages)
            except StopIteration:
                break
            except CRMError:
                # The pages read before the failure land; then the failure ends the read.
                if batch:
                    yield _timed_table(stats, batch, builder, primary_key)
                raise
            stats.waiting_s += time.monotonic() - asked
            builder.see(records)  # the key's field is known before any batch is typed
            batch.extend(records)
            if len(batch) >= BATCH_ROWS:
                yield _timed_table(stats, batch, builder, primary_key)
                batch = []
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                transport.log.info(_progress(name, stats))
            if primary_key:
                _note_anchor(stats, records, builder.primary_key)
            if (
                chunking is not None
                and not stats.paging.anchor_lost
                and chunking.time_is_up(now - started)
            ):
                stats.more = True
                break
    stats.more = stats.more or (chunking is not None and stats.paging.cut)
    if batch:
        yield _timed_table(stats, batch, builder, primary_key)


def _timed_table(
    stats: ResourceStats,
    batch: list[dict[str, Any]],
    builder: TableBuilder,
    primary_key: str | None,
) -> pa.Table:
    started = time.monotonic()
    table = _to_table(stats, batch, builder, primary_key)
    stats.typing_s += time.monotonic() - started
    return table


def _note_anchor(stats: ResourceStats, records: list[dict[str, Any]], key: str) -> None:
    """Remember the last record read that has its key: a chunk ending here goes on after it."""
    page_start = stats.paging.position - len(records)
    for i in range(len(records) - 1, -1, -1):
        value = records[i].get(key)
        if value is not None:
            stats.last_key, stats.last_key_offset = value, page_start + i
            return


def _to_table(
    stats: ResourceStats,
    batch: list[dict[str, Any]],
    builder: TableBuilder,
    primary_key: str | None,
) -> pa.Table:
    table = builder.build(batch)
    key = builder.key_column
    if primary_key and key is not None:
        if key not in table.column_names:
            # Not one record of the batch had the key field.
            stats.null_keys += table.num_rows
            return table.slice(0, 0)
        keys = table[key]
        if keys.null_count:
            # A record without its key cannot be merged: it is counted, left out of the load,
            # and fails the run once everything else has loaded.
            stats.null_keys += keys.null_count
            table = table.filter(pc.is_valid(keys))
        stats.keyed_rows += table.num_rows
    # Every row read now is live: a row marked deleted before and served again is unmarked.
    return table.append_column(
        DELETED_COLUMN, pa.nulls(table.num_rows, pa.timestamp("us", tz="UTC"))
    )


def _newest(table: pa.Table, incremental: Mapping[str, Any] | None, builder: TableBuilder) -> Any:
    """The table's largest cursor value, as the ISO string the API's filter takes. Only a
    timestamp cursor can move: a cursor field of another type keeps every sync a full one."""
    if not incremental:
        return None
    column = builder.column_of(builder.field(incremental["cursor_path"]))
    if column not in table.column_names or not pa.types.is_timestamp(table[column].type):
        return None
    value = pc.max(table[column]).as_py()
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _later(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return b if datetime.fromisoformat(b) > datetime.fromisoformat(a) else a


def _earlier(a: str, b: str) -> str:
    return b if datetime.fromisoformat(b) < datetime.fromisoformat(a) else a


def _progress(name: str, stats: ResourceStats) -> str:
    of_total = f"/{stats.total:,}" if stats.total is not None else ""
    return f"{name}: {stats.pages:,} pages, {stats.records:,}{of_total} records fetched"


def _specs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    defaults = config.get("resource_defaults", {})
    return [{**defaults, **entry} for entry in config["resources"]]


def _through_dlt(config: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether dlt's own rest_api reads this entry (see rest_api_path.py)."""
    return client_gap(config.get("client") or {}) is not None or fast_path_gap(spec) is not None


def _in_chunks(config: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether a long read of this entry lands in chunks: only offset pages of the fast path
    can be gone on from; a one-page resource, or one dlt reads, is read whole."""
    endpoint = spec["endpoint"]
    return (
        not _through_dlt(config, spec)
        and isinstance(endpoint, Mapping)
        and isinstance(endpoint.get("paginator"), Mapping)
    )


def chunked_reads(config: Mapping[str, Any], names: Iterable[str]) -> int:
    """How many of the resources `names` are read in chunks."""
    wanted = set(names)
    return sum(1 for spec in _specs(config) if spec["name"] in wanted and _in_chunks(config, spec))


@dlt.source(name=SOURCE_NAME)
def crm_source(
    transport: CRMTransport | None = None,
    config: Mapping[str, Any] | None = None,
    full_refresh: bool = False,
    stats: dict[str, ResourceStats] | None = None,
    chunking: Chunking | None = None,
) -> list[DltResource]:
    """Build the dlt source for every resource in `config`.

    An entry the fast path covers (the API contract's shape) is fetched by `transport`; any other
    entry dlt's REST config accepts is fetched by dlt's own `rest_api` machinery (see
    rest_api_path.py). With no transport (as at import, where no secrets may be read) the resources
    exist, with their names, but raise if they are run. `full_refresh` ignores the incremental
    cursors of the fast path: every record is read again and merged. Column types are not given
    to dlt here: they come with the data (see conversion.py). `stats` collects each resource's
    counters for the caller; with `chunking`, long reads stop at each chunk's end (see
    `_extract`) and the caller runs the source again while any of them has `more`.
    """
    config = config if config is not None else CRM_API
    stats = stats if stats is not None else {}
    specs = _specs(config)
    via_dlt: dict[str, DltResource] = {}
    if transport is not None:
        _quiet_expected_dlt_warnings()
        _scrub_logs(transport.connection.secrets)
        general = [spec["name"] for spec in specs if _through_dlt(config, spec)]
        if general:
            via_dlt = dlt_rest_resources(config, general, transport.connection)
    resources: list[DltResource] = []
    for spec in specs:
        name = spec["name"]
        endpoint = spec["endpoint"] if isinstance(spec["endpoint"], Mapping) else {}
        data = (
            _placeholder(name)
            if transport is None
            else _extract(
                transport,
                stats.setdefault(name, ResourceStats(requests=transport.counters_for(name))),
                name,
                endpoint,
                spec.get("columns", {}),
                spec.get("primary_key"),
                full_refresh,
                via_dlt.get(name),
                chunking if _in_chunks(config, spec) else None,
            )
        )
        resources.append(
            dlt.resource(
                data,
                name=name,
                primary_key=spec.get("primary_key"),
                columns={LOAD_ID_COLUMN: LOAD_ID_HINT},
                write_disposition=spec.get("write_disposition", "append"),
                references=spec.get("references"),
                parallelized=True,
            )
        )
    return resources


# Loggers that write request URLs (query string and all) or headers: dlt's REST client, and
# urllib3's pools and redirects at DEBUG. A logger's filter sees only the records logged on that
# very logger, not its children's, so each one that writes is named.
URL_LOGGERS = ("dlt", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry")


def _scrub_logs(secrets: tuple[str, ...]) -> None:
    """One scrubber on each logger that may write a URL, with this sync's secrets."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, SecretScrubber)]:
            logger.removeFilter(old)
        logger.addFilter(SecretScrubber(secrets))
