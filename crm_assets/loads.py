"""How a sync's records land in a table, and what its loads left there.

dlt merges on the primary key by copying each load into a staging table, deleting the rows whose
key it holds and inserting it, numbered to keep one row per key. Into a table that has no row yet
there is nothing to delete, and the copy into staging and the numbering are the cost of the load:
on 400,000 records of string ids, a merge into empty tables took 3.6 s where an append of the
same files took 1.3 s (measured here in DuckDB, with the sync's memory cap). So a sync appends
to a table that is empty when it starts (its first sync, or a rebuild) and merges into any other.

An append keeps every record it is handed, so a key the CRM served twice in that sync (a page
that shifted while paging, say) is in the table twice when the loads end. The sync then keeps
the row of each such key that the latest load wrote, as the merge would have, and removes the
others: one row per key either way, and the repeat still counts as a duplicate id. Removing a
row needs the destination's own row id, so only DuckDB and PostgreSQL append; every other
destination merges from the first sync on.

All the accounting after the loads (rows written, distinct keys, repeats removed, rows in the
table, deletes) goes through one connection.

In DuckDB about half of a load's time is the checkpoint that compresses its rows into the file
(0.84 of 1.71 s for 402,000 rows, timed alone), on one core when the load's last connection
closes. A sync keeps a connection open instead, and checkpoints each round in the background
while the next one is fetched (the fetching takes one core and the checkpoint the other), and
the last one while Dagster records the run and its checks wait (see `checkpoints_between`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.extract import DltResource, DltSource
from dlt.pipeline.pipeline import Pipeline

from crm_assets.deletes import LOAD_ID_COLUMN, load_id_list
from crm_assets.errors import Log
from crm_assets.sync_lock import SyncHold

# The column that names a row within its table, for the destinations that have one.
DUCKDB = "dlt.destinations.duckdb"  # dlt's destination type
ROW_IDS = {DUCKDB: "rowid", "dlt.destinations.postgres": "ctid"}


def row_id_column(pipeline: Pipeline) -> str | None:
    """The destination's row id, or None where a repeated key could not be removed."""
    return ROW_IDS.get(pipeline.destination.destination_type)


class Checkpoints:
    """DuckDB's checkpoints of one sync's rounds (see `checkpoints_between`); does nothing on
    other destinations, which have nothing to checkpoint."""

    def __init__(self, pipeline: Pipeline, log: Log) -> None:
        self.log = log
        self.client: Any = None  # dlt's SQL client, on DuckDB only
        if pipeline.destination.destination_type == DUCKDB:
            # Open for the whole sync: each load closing the database's last connection would
            # checkpoint it there and then, in the load's time.
            self.client = pipeline.sql_client()
            self.client.open_connection()
        self._previous: threading.Thread | None = None
        self._hold: SyncHold | None = None

    def after_round(self) -> None:
        """A round has loaded and another begins: checkpoint the first while the next is
        fetched, one checkpoint at a time."""
        if self.client is None:
            return
        if self._previous is not None:
            self._previous.join()  # the previous round's, long done by now
        self._previous = threading.Thread(target=self._checkpoint, name="crm-duckdb-checkpoint")
        self._previous.start()

    def last_in_background(self, hold: SyncHold) -> None:
        """Leave the last checkpoint to a thread that keeps `hold` until it is done."""
        self._hold = hold

    def _checkpoint(self) -> None:
        try:
            self.client.execute_sql("CHECKPOINT")
        except Exception as exc:  # the rows are committed; the next checkpoint takes them
            detail = " ".join(str(exc).split())  # DuckDB's messages may span lines
            with suppress(Exception):  # the last one may end after its run's log has closed
                self.log.warning(f"DuckDB checkpoint failed, left to the next one: {detail}")

    def _last(self) -> None:
        try:
            self._checkpoint()
        finally:
            self.client.close_connection()

    def close(self, failed: bool) -> None:
        if self.client is None:
            return
        if self._previous is not None:
            self._previous.join()
        if self._hold is None or failed:
            self.client.close_connection()  # which checkpoints, here and now
        else:
            self._hold.in_background(self._last, "crm-duckdb-last-checkpoint")


@contextmanager
def checkpoints_between(pipeline: Pipeline, log: Log) -> Iterator[Checkpoints]:
    """DuckDB's checkpoints for the rounds of one sync, on a connection open for all of them.
    The body's queries after the last round (the sync's accounting) share it.

    In DuckDB about half of a load's time is the checkpoint that compresses its rows into the
    file, on one core, when the load's last connection closes. So a round's checkpoint runs in
    the background while the next round is fetched (`after_round`). Measured here on 2,002,000
    records of string ids in five rounds, interleaved with the code before: loads took
    4.8-5.1 s instead of 9.9-10.0 s, and the runs 49.8 and 52.7 s against 54.4 s; each
    checkpoint took 1.2-1.5 s beside the fetching. DuckDB takes a load that starts while a
    checkpoint is still running (tried here: no error, every row); a checkpoint that fails
    leaves the rows committed in DuckDB's log, for the next one.

    The last round's checkpoint runs when the block ends, unless the body hands it to the
    background (`last_in_background`) with the sync's hold on the warehouse: the thread keeps
    the warehouse's locks until the file is checkpointed and closed, and the process waits for
    it before exiting. The sync is over once its rows are committed; Dagster records the
    materializations and runs its own checks meanwhile, and the checks that read the
    warehouse read beside it (DuckDB reads while it checkpoints) and end once it has ended
    (see sync_lock). A body that fails checkpoints at once.
    Measured here through the CLI, interleaved with the code before: 402,000 string-id records
    in 11.67 / 11.94 / 12.42 s against 12.67 / 12.25 / 12.51 s; 201,000 records from an API
    that allows 100 requests/s in 23.37 / 23.57 s against 23.72 / 23.80 s."""
    checkpoints = Checkpoints(pipeline, log)
    failed = True
    try:
        yield checkpoints
        failed = False
    finally:
        checkpoints.close(failed)


def empty_tables(pipeline: Pipeline, tables: Iterable[str]) -> set[str]:
    """Those of `tables` with no row at the destination (a table not created yet has none)."""
    empty: set[str] = set()
    with pipeline.sql_client() as client:
        for table in tables:
            qualified = client.make_qualified_table_name(table)
            try:
                # One row at most: no count(*) over a large PostgreSQL table.
                rows = client.execute_sql(f"SELECT 1 FROM {qualified} LIMIT 1")
            except DatabaseUndefinedRelation:
                empty.add(table)
                continue
            if not rows:
                empty.add(table)
    return empty


def row_count(client: Any, table: str) -> int:
    """Rows now in `table` (dagster-dlt's own count fails on a zero-row load); a resource that
    has never had a record has no table yet, which is zero rows."""
    try:
        rows = client.execute_sql(f"SELECT count(*) FROM {client.make_qualified_table_name(table)}")
    except DatabaseUndefinedRelation:
        return 0
    return int(rows[0][0]) if rows else 0


def rows_and_keys_written(
    client: Any, table: str, key_column: str, load_ids: Sequence[str]
) -> tuple[int, int]:
    """Rows of `table` that `load_ids` wrote, and distinct keys among them: with the keyed
    records a run read, the keys tell how many the CRM served more than once."""
    if not load_ids:
        return 0, 0
    qualified = client.make_qualified_table_name(table)
    key = client.escape_column_name(key_column)
    load_id = client.escape_column_name(LOAD_ID_COLUMN)
    try:
        rows = client.execute_sql(
            f"SELECT count(*), count(DISTINCT {key}) FROM {qualified} "
            f"WHERE {load_id} IN ({load_id_list(client, load_ids)})"
        )
    except DatabaseUndefinedRelation:
        return 0, 0
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def keep_one_row_per_key(
    client: Any, table: str, key_column: str, load_ids: Sequence[str], row_id: str
) -> None:
    """Remove all but one of the rows that `load_ids` wrote with the same key: the latest
    load's (a merge's choice too); between rows of one load, any."""
    qualified = client.make_qualified_table_name(table)
    key = client.escape_column_name(key_column)
    load_id = client.escape_column_name(LOAD_ID_COLUMN)
    this_run = f"{load_id} IN ({load_id_list(client, load_ids)})"
    client.execute_sql(
        f"DELETE FROM {qualified} WHERE {row_id} IN ("
        f"SELECT row_id FROM (SELECT {row_id} AS row_id, ROW_NUMBER() OVER "
        f"(PARTITION BY {key} ORDER BY {load_id} DESC) AS n FROM {qualified} "
        f"WHERE {this_run} AND {key} IN (SELECT {key} FROM {qualified} WHERE {this_run} "
        f"GROUP BY {key} HAVING count(*) > 1)) AS repeated WHERE n > 1)"
    )


def _merges(resource: DltResource) -> bool:
    disposition = resource.write_disposition
    if isinstance(disposition, Mapping):
        disposition = disposition.get("disposition")
    return disposition == "merge"


def tables_to_append(
    pipeline: Pipeline, source: DltSource, names: Iterable[str], rebuild: bool
) -> set[str]:
    """Which of the resources `names` this sync appends: those that merge into a table with
    no row yet, or into one the sync rebuilds; on a destination with a row id, and with no
    package of a stopped run waiting to load."""
    merging = [n for n in names if n in source.resources and _merges(source.resources[n])]
    if not merging or row_id_column(pipeline) is None:
        return set()
    if pipeline.has_pending_data:
        # A stopped run left packages that this run's load finishes first: their rows are not
        # this run's, so a key they share with it would not be found again. Merge.
        return set()
    return set(merging) if rebuild else empty_tables(pipeline, merging)


def append_to(source: DltSource, names: Iterable[str]) -> None:
    """Load `names` of `source` with dlt's append instead of its merge."""
    for name in names:
        if name in source.resources:
            source.resources[name].apply_hints(write_disposition="append")
