"""Paging: how the records of one resource are read page by page, over the transport.

The API contract pages by offset (`startIndex`, `limit`) and reports a `total`: once the first
page has told the total, the other pages are fetched concurrently on the transport's workers and
yielded in offset order. Without a total, pages are read one after another up to the first empty
one. A resource without a paginator is one page. Entries of other shapes go through dlt's own
rest_api machinery (rest_api_path.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from crm_assets.errors import CRMConfigError
from crm_assets.transport import CRMTransport, select_records


@dataclass
class PageCounters:
    """The pager's counters for one resource."""

    pages: int = 0
    records: int = 0
    total: int | None = None
    first_total: int | None = None  # the total the first page gave, before any change
    # A page reported another total than the first: records were added or deleted while we
    # paged, offsets shifted, and a record may have been skipped. Also true when it went down.
    total_changed: bool = False


def iter_pages(
    transport: CRMTransport,
    resource: str,
    endpoint: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    stats: PageCounters | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the record lists of every page of one endpoint of `CRM_API`, in offset order."""
    path = endpoint["path"]
    selector = endpoint.get("data_selector")
    base = {**(endpoint.get("params") or {}), **(params or {})}
    paginator = endpoint.get("paginator")
    stats = stats if stats is not None else PageCounters()

    def select(body: Any) -> list[dict[str, Any]]:
        # `get` has checked the selector's path on this body already.
        data = select_records(body, selector) if selector else body
        stats.pages += 1
        stats.records += len(data)
        return data

    if paginator is None:
        body = transport.get(resource, path, base, selector)
        records = select(body)
        stats.total = stats.first_total = len(records)
        announced = body.get("total") if isinstance(body, dict) else None
        if isinstance(announced, int) and announced > len(records):
            # The config says one page, the API says there is more: load what came, and
            # say plainly that the endpoint needs a paginator in api.py.
            transport.log.warning(
                f"{resource}: GET {path} returned {len(records)} of {announced} records on "
                "its one page; give this resource a paginator in CRM_API to load the rest"
            )
        yield records
        return
    if paginator.get("type") != "offset":
        raise CRMConfigError(
            f"{resource}: paginator type {paginator.get('type')!r} is not "
            "supported; use 'offset' or none"
        )
    limit = int(paginator.get("limit", 100))
    offset_param = paginator.get("offset_param", "offset")
    limit_param = paginator.get("limit_param", "limit")
    total_path = paginator.get("total_path", "total")

    def page_params(offset: int) -> dict[str, Any]:
        return {**base, offset_param: offset, limit_param: limit}

    def total_of(body: Any) -> int | None:
        value = body.get(total_path) if isinstance(body, dict) and total_path else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    first = transport.get(resource, path, page_params(0), selector)
    records = select(first)
    total = total_of(first)
    stats.total = stats.first_total = total
    yield records
    if total is None:
        # Without a total the only safe end is an empty page: step by what each page held.
        offset = len(records)
        while records:
            records = select(transport.get(resource, path, page_params(offset), selector))
            offset += len(records)
            if records:
                yield records
        return
    # A server may cap the page below our limit; its first page says by how much.
    step = len(records) if 0 < len(records) < min(limit, total) else limit
    yield from _fetch_concurrently(
        transport, resource, path, selector, step, total, page_params, select, total_of, stats
    )


def _fetch_concurrently(
    transport: CRMTransport,
    resource: str,
    path: str,
    selector: str | None,
    step: int,
    total: int,
    page_params: Callable[[int], dict[str, Any]],
    select: Callable[[Any], list[dict[str, Any]]],
    total_of: Callable[[Any], int | None],
    stats: PageCounters,
) -> Iterator[list[dict]]:
    window: deque[Future[Any]] = deque()
    next_offset = step
    planned_end = total
    try:
        while True:
            # Pages are yielded in order, so a page waiting out a Retry-After would idle every
            # worker if only `concurrency` pages were queued; a deeper queue keeps them busy
            # (the pool still bounds the requests in flight).
            while next_offset < planned_end and len(window) < 4 * transport.policy.concurrency:
                window.append(
                    transport.submit(
                        transport.get, resource, path, page_params(next_offset), selector
                    )
                )
                next_offset += step
            if not window:
                return
            body = window.popleft().result()
            newer = total_of(body)
            if newer is not None and newer != stats.total:
                stats.total = newer
                stats.total_changed = True
            # Records added while we page push the total up: fetch the new tail too.
            if newer is not None and newer > planned_end:
                planned_end = newer
            records = select(body)
            if records:
                yield records
    finally:
        for future in window:
            future.cancel()
