"""Paging: how the records of one resource are read page by page, over the transport.

The API contract pages by offset (`startIndex`, `limit`) and reports a `total`: once the first
page has told the total, the other pages are fetched concurrently on the transport's workers and
yielded in offset order. Without a total, the end is the first empty page: while pages come back
full, a few of the next ones are asked for ahead (the last of them are past the end, a few
requests spent for nothing); after a page that is not full, one page after another, each from
where the last one ended. A resource without a paginator is one page. Entries of other shapes
go through dlt's own rest_api machinery (rest_api_path.py).

A read can start where an earlier one stopped (`Position`, kept in dlt's state by source.py).
Offsets shift when the CRM inserts or deletes records in front of that point, so the offset alone
is not trusted: the read goes on after the last record loaded (the anchor), wherever it now is,
looked for on the pages around its old offset. If it is not found there, the read starts over
from the first page. Either way nothing is skipped; a few records may be read twice, which the
merge absorbs.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from crm_assets.errors import CRMConfigError
from crm_assets.transport import CRMTransport, select_records

# Pages asked for ahead of the one being read, per resource, when the API gives no total: enough
# to keep the workers busy behind latency (four resources at once fill eight workers), few
# enough that the requests past the end cost little against a rate limit.
AHEAD_WITHOUT_TOTAL = 4
# Pages queued per worker and resource when the total is known. Pages are yielded in order, so a
# page waiting out a Retry-After would idle every worker if only `concurrency` pages were queued;
# a deeper queue keeps them busy (the pool still bounds the requests in flight). Decoded pages
# wait in it, though: at 4 per worker, four resources held 12,800 records, and the heap (which
# keeps its high-water mark through the load that follows) was 10-45 MB larger than at 2.
PAGES_QUEUED_PER_WORKER = 2


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
    position: int = 0  # offset in the listing just after the last record yielded
    step: int = 0  # records per page, as the server pages
    cut: bool = False  # stopped at `chunk_records`, with more to read
    # Records the total promised on pages inside the listing that came back short, also when
    # asked again: the read cannot count as complete.
    missing: int = 0
    anchor_lost: bool = False  # a resumed read had to start over: it is not cut again


@dataclass(frozen=True)
class Position:
    """Where an earlier read stopped: `offset` records of the listing were loaded, read `step`
    records per page; the last of them with a key (its `key` field) was `anchor`, at offset
    `anchor_offset`."""

    offset: int
    anchor: Any
    anchor_offset: int
    key: str
    step: int


def iter_pages(
    transport: CRMTransport,
    resource: str,
    endpoint: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    stats: PageCounters | None = None,
    resume: Position | None = None,
    chunk_records: int | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the record lists of every page of one endpoint of `CRM_API`, in offset order, from
    the start or from just after `resume`; `stats.position` follows the pages yielded. With
    `chunk_records`, no page is asked for beyond that many records from where the read started
    (`stats.cut` says there was more)."""
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
        stats.position = len(records)
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
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)  # `"total": "230"`, as some APIs send their counts
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def fetch(offset: int) -> tuple[list[dict[str, Any]], int | None]:
        body = transport.get(resource, path, page_params(offset), selector)
        return select(body), total_of(body)

    def note_total(total: int | None) -> None:
        if total is None:
            return
        if stats.first_total is None:
            stats.first_total = total
        if stats.total is not None and total != stats.total:
            stats.total_changed = True
        stats.total = total

    start = None if resume is None else _find_anchor(resume, fetch, stats, transport, resource)
    stats.anchor_lost = resume is not None and start is None
    # Once started over, the rest is read in one go: a listing that keeps moving under its
    # anchor would otherwise be started over chunk after chunk.
    until = (
        (resume.offset if start else 0) + chunk_records
        if chunk_records and not stats.anchor_lost
        else None
    )
    stats.cut = False
    if start is None:
        records, total = fetch(0)
        note_total(total)
        # A server may cap the page below our limit; its first page says by how much.
        n = len(records)
        step = n if total is not None and 0 < n < min(limit, total) else limit
        stats.position = n
    else:
        stats.position, records, total = start
        note_total(total)
        step = resume.step  # type: ignore[union-attr]
    stats.step = step
    if records:
        yield records

    def concurrently(total: int | None) -> Generator[list[dict[str, Any]], None, int | None]:
        return _fetch_concurrently(
            transport,
            resource,
            path,
            selector,
            step,
            stats.position,
            total,
            until,
            page_params,
            select,
            total_of,
            note_total,
            stats,
        )

    if total is not None:
        yield from concurrently(total)
        return
    # Without a total the only safe end is an empty page, and a page of another size than the
    # step may be the server's own cap: from such a page on, the read steps by what each page
    # held, one page after another. While pages come back full, the next ones are asked for
    # ahead (at the end, those past the empty page are requests spent for nothing).
    # A resumed read may have yielded nothing yet (the anchor ended its page): it goes on.
    ended = start is None and not records
    full = len(records) == step
    while not ended:
        if until is not None and stats.position >= until:
            stats.cut = True
            return
        if full:
            last = yield from concurrently(None)
            if last is None:  # stopped at `until`
                return
            ended, full = last == 0, False
            continue
        records, _ = fetch(stats.position)
        stats.position += len(records)
        ended = not records
        full = len(records) == step
        if records:
            yield records


def _find_anchor(
    resume: Position,
    fetch: Callable[[int], tuple[list[dict[str, Any]], int | None]],
    stats: PageCounters,
    transport: CRMTransport,
    resource: str,
) -> tuple[int, list[dict[str, Any]], int | None] | None:
    """Where to go on after `resume`: the next offset to fetch, the records after the anchor on
    the page it was found in, and the total; None when the anchor is lost (read from the start).

    The anchor is looked for on the page that ends with it and on the page after it: records
    deleted in front of it move it back, inserted ones forward. That costs one page per resume,
    and keeps the pages where they were. Anywhere but its old place, the listing shifted since
    the earlier read; records inserted in the part already loaded were not read, so the read is
    marked as one whose listing changed (it does not count as complete).
    """
    if resume.anchor is None:
        # Not one record read so far had its key: go on from the offset, unverified.
        records, total = fetch(resume.offset)
        stats.total_changed = True
        return resume.offset + len(records), records, total
    for look in (max(0, resume.anchor_offset + 1 - resume.step), resume.anchor_offset + 1):
        records, total = fetch(look)
        keys = [record.get(resume.key) for record in records]
        if resume.anchor in keys:
            i = keys.index(resume.anchor)
            # Read again only to find the anchor; records after it that were loaded already
            # (without a key of their own) are read twice.
            stats.records -= i + 1
            if look + i != resume.anchor_offset:
                stats.total_changed = True
                transport.log.info(
                    f"{resource}: the record loaded last moved from offset "
                    f"{resume.anchor_offset:,} to {look + i:,} since; going on after it"
                )
            return look + len(records), records[i + 1 :], total
        stats.records -= len(records)
        if not records:
            break
    transport.log.warning(
        f"{resource}: the record loaded last (offset {resume.anchor_offset:,}) is no longer where "
        "it was; reading from the start so that nothing is skipped"
    )
    return None


def _fetch_concurrently(
    transport: CRMTransport,
    resource: str,
    path: str,
    selector: str | None,
    step: int,
    next_offset: int,
    total: int | None,
    until: int | None,
    page_params: Callable[[int], dict[str, Any]],
    select: Callable[[Any], list[dict[str, Any]]],
    total_of: Callable[[Any], int | None],
    note_total: Callable[[int | None], None],
    stats: PageCounters,
) -> Generator[list[dict[str, Any]], None, int | None]:
    """Pages from `next_offset` on, `step` apart, several at a time, yielded in order, up to
    `total` (or a later total a page reports) and no further than `until`.

    Without a total the end is not known: pages are asked for ahead only a few at a time, and
    the first page that is not `step` records long ends this and its size is returned (0: the
    listing has ended; more: the caller goes on one page at a time). None: `total` or `until`
    was reached."""
    window: deque[tuple[int, Future[Any]]] = deque()
    # Set when this read ends: pages still in flight then (past the end without a total, past
    # a chunk's end) give up instead of retrying for nobody.
    abandoned = threading.Event()
    planned_end: float = total if total is not None else math.inf
    # Without a total, each page queued past the end is a request spent for nothing: a few keep
    # the workers busy enough.
    depth = (
        PAGES_QUEUED_PER_WORKER * transport.policy.concurrency
        if total is not None
        else AHEAD_WITHOUT_TOTAL
    )
    try:
        while True:
            end = planned_end if until is None else min(planned_end, until)
            while next_offset < end and len(window) < depth:
                window.append(
                    (
                        next_offset,
                        transport.submit(
                            transport.get,
                            resource,
                            path,
                            page_params(next_offset),
                            selector,
                            abandoned,
                        ),
                    )
                )
                next_offset += step
            if not window:
                stats.cut = end < planned_end
                return None
            offset, future = window.popleft()
            body = future.result()
            newer = total_of(body)
            note_total(newer)
            # Records added while we page push the total up: fetch the new tail too.
            if total is not None and newer is not None and newer > planned_end:
                planned_end = newer
            records = select(body)
            expected = min(step, planned_end - offset)
            if total is not None and len(records) < expected and not stats.total_changed:
                # A page inside the listing came back short, the total unchanged (a passing
                # glitch of the CRM, or records it counts but does not serve): asked once more,
                # and what is still missing is counted, so that nothing absent from it is taken
                # as deleted. (A total that moved explains short pages, and already makes the
                # read incomplete.)
                stats.records -= len(records)
                body = transport.get(resource, path, page_params(offset), selector)
                note_total(total_of(body))
                records = select(body)
                stats.missing += max(0, expected - len(records))
            if records:
                stats.position = offset + len(records)
                yield records
            if total is None and len(records) != step:
                return len(records)
    finally:
        abandoned.set()
        for _, pending in window:
            pending.cancel()
