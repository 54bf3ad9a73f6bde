"""Records deleted in the CRM leave the warehouse's live view.

The API has no deleted-records endpoint, so a delete shows only as an id that a *complete* read
of the resource no longer returns: `cases` on every sync (one page, always read whole), the paged
resources on a full refresh (the weekly `crm_reconcile_schedule`, or by hand). After such a read
has loaded, every live row whose id it did not return is marked: `_crm_deleted_at` is set (soft,
the default) or the row is removed (`hard`). A row that comes back is loaded again with
`_crm_deleted_at` null. Live rows: `SELECT * FROM crm.<table> WHERE _crm_deleted_at IS NULL`.

Safety first, because a wrong delete is data loss: a read that was not complete (a failed page,
a total that moved while paging, a record without id, an incremental read) marks nothing, and a
read that would mark more than `max_delete_share` of the table marks nothing and fails the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.pipeline.pipeline import Pipeline

from crm_assets.errors import CRMError

DeleteMode = Literal["soft", "hard", "off"]
DELETE_MODES: tuple[str, ...] = ("soft", "hard", "off")
DELETED_COLUMN = "_crm_deleted_at"
_CHUNK = 500  # ids per statement: short statements on every destination


class MassDeleteRefused(CRMError):
    """A complete read would have marked more of a table than the configured share."""


def _literal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        value = str(value)
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def apply_deletes(
    pipeline: Pipeline,
    table: str,
    key_column: str,
    seen: pa.ChunkedArray | None,
    mode: DeleteMode,
    max_share: float,
) -> int:
    """Mark (or remove) the live rows of `table` whose key a complete read did not return.
    Returns how many; raises `MassDeleteRefused`, having changed nothing, past `max_share`."""
    if mode == "off":
        return 0
    # Every key read is now a live row (the merge just loaded it), so the live rows beyond the
    # distinct keys read are the deleted ones: counted first, fetched only when there are any.
    distinct_seen = pc.count_distinct(seen).as_py() if seen is not None and len(seen) else 0
    with pipeline.sql_client() as client:
        qualified = client.make_qualified_table_name(table)
        key = client.escape_column_name(key_column)
        deleted = client.escape_column_name(DELETED_COLUMN)
        try:
            live, total = client.execute_sql(
                f"SELECT count(*) FILTER (WHERE {deleted} IS NULL), count(*) FROM {qualified}"
            )[0]
        except DatabaseUndefinedRelation:
            return 0  # nothing loaded yet: nothing to mark
        count = int(live) - distinct_seen
        if count <= 0:
            return 0
        if count > max_share * total:
            raise MassDeleteRefused(
                f"{table}: a complete read would mark {count:,} of {total:,} rows deleted, "
                f"more than CRM_MAX_DELETE_SHARE={max_share:g} of the table; nothing was marked. "
                "If the CRM really lost them, raise CRM_MAX_DELETE_SHARE for one run"
            )
        rows = client.execute_sql(f"SELECT {key} FROM {qualified} WHERE {deleted} IS NULL")
        live_keys = pa.array([row[0] for row in rows or []])
        if seen is not None and len(seen):
            live_keys = live_keys.filter(
                pc.invert(pc.is_in(live_keys, value_set=seen.combine_chunks()))
            )
        gone = live_keys.to_pylist()
        now = datetime.now(UTC).isoformat()
        for chunk in _chunks(gone):
            ids = ", ".join(_literal(v) for v in chunk)
            if mode == "hard":
                client.execute_sql(f"DELETE FROM {qualified} WHERE {key} IN ({ids})")
            else:
                client.execute_sql(
                    f"UPDATE {qualified} SET {deleted} = CAST('{now}' AS TIMESTAMP WITH TIME ZONE) "
                    f"WHERE {key} IN ({ids})"
                )
    return len(gone)
