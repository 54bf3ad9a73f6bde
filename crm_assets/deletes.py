"""Records deleted in the CRM leave the warehouse's live view.

The API has no deleted-records endpoint, so a delete shows only as an id that a *complete* read
of the resource no longer returns: `cases` on every sync (one page, always read whole), the paged
resources on a full refresh (the weekly `crm_reconcile_schedule`, or by hand). After such a read
has loaded, every live row whose id it did not return is marked: `_crm_deleted_at` is set (soft,
the default) or the row is removed (`hard`). Every record read was written into the table by
one of this run's loads (merged, or appended into an empty table: see loads.py), so those rows
are the live rows whose `_dlt_load_id` is not one of this run's: the warehouse answers, and no
key of the read is held in memory. A row that comes back is loaded again with `_crm_deleted_at`
null. Live rows:
`SELECT * FROM crm.<table> WHERE _crm_deleted_at IS NULL`.

Safety first, because a wrong delete is data loss: a read that was not complete (a failed page,
a total that moved while paging, a record without id, an incremental read) marks nothing, and a
read that would mark more than `max_delete_share` of the table marks nothing and fails the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from dlt.destinations.exceptions import DatabaseUndefinedRelation

from crm_assets.errors import CRMError

DeleteMode = Literal["soft", "hard", "off"]
DELETE_MODES: tuple[str, ...] = ("soft", "hard", "off")
DELETED_COLUMN = "_crm_deleted_at"
LOAD_ID_COLUMN = "_dlt_load_id"
# dlt makes its load-id column NOT NULL, which it cannot add to a table loaded before its rows
# carried one: nullable, the old rows keep a null there (and count as loaded by no run of now).
LOAD_ID_HINT = {"data_type": "text", "nullable": True}


class MassDeleteRefused(CRMError):
    """A complete read would have marked more of a table than the configured share."""


def load_id_list(client: Any, load_ids: Sequence[str]) -> str:
    """`load_ids` as a list of the destination's literals."""
    return ", ".join(client.capabilities.escape_literal(i) for i in load_ids)


def apply_deletes(
    client: Any,
    table: str,
    load_ids: Sequence[str],
    mode: DeleteMode,
    max_share: float,
) -> int:
    """Mark (or remove) the live rows of `table` that a complete read, loaded by `load_ids`,
    did not return. Returns how many; raises `MassDeleteRefused`, having changed nothing, past
    `max_share`."""
    if mode == "off":
        return 0
    qualified = client.make_qualified_table_name(table)
    deleted = client.escape_column_name(DELETED_COLUMN)
    load_id = client.escape_column_name(LOAD_ID_COLUMN)
    gone = f"{deleted} IS NULL"
    if load_ids:
        # Rows loaded before the table had load ids have none, and were not loaded now.
        gone += f" AND ({load_id} IS NULL OR {load_id} NOT IN ({load_id_list(client, load_ids)}))"
    try:
        count, total = client.execute_sql(
            f"SELECT count(*) FILTER (WHERE {gone}), count(*) FROM {qualified}"
        )[0]
    except DatabaseUndefinedRelation:
        return 0  # nothing loaded yet: nothing to mark
    count = int(count)
    if count == 0:
        return 0
    if count > max_share * total:
        raise MassDeleteRefused(
            f"{table}: a complete read would mark {count:,} of {total:,} rows deleted, "
            f"more than CRM_MAX_DELETE_SHARE={max_share:g} of the table; nothing was marked. "
            "If the CRM really lost them, raise CRM_MAX_DELETE_SHARE for one run"
        )
    if mode == "hard":
        client.execute_sql(f"DELETE FROM {qualified} WHERE {gone}")
    else:
        now = datetime.now(UTC).isoformat()
        client.execute_sql(
            f"UPDATE {qualified} SET {deleted} = CAST('{now}' AS TIMESTAMP WITH TIME ZONE) "
            f"WHERE {gone}"
        )
    return count
