"""Faults: transient ones are retried until every record is loaded exactly once; permanent ones
fail fast with one line and leave the warehouse as it was; schema drift loads and is reported."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from crm_assets.api import resource_names
from crm_assets.errors import CRMAPIError
from crm_assets.paging import (
    AHEAD_WITHOUT_TOTAL,
    PAGES_QUEUED_PER_WORKER,
    PageCounters,
    iter_pages,
)
from crm_assets.transport import CRMConnection, CRMTransport, RequestPolicy
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    SMALL_COUNTS,
    Workspace,
    assert_same_records,
    every_profile,
    materialized_metadata,
)
from crm_assets_tests.fault_support import (
    TRANSIENT_KINDS,
    ListLog,
    ScriptedServer,
    cli_env,
    count_secrets,
    duplicates,
    endpoint_of,
    leak_report,
    materialize_all,
    open_instance,
    run_cli,
    step_failure_message,
    table_ids,
    transient_rates,
)
from crm_simulator import CRMSimulator, Faults
from crm_simulator.fault_drill import format_table, run_drill

SECRETS = (API_KEY, ACCESS_KEY)
RETRY_LINE = re.compile(
    r"^(?P<resource>\w+): (?P<kind>HTTP \d{3}[\w ]*|timeout|connection error|malformed page .*)"
    r" on GET (?P<path>/v1/\S+); retry (?P<attempt>\d+)/(?P<of>\d+) in (?P<wait>[\d.]+) s$"
)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many cheap attempts, and a read timeout the simulator's slow responses exceed."""
    monkeypatch.setenv("CRM_REQUEST_MAX_ATTEMPTS", "12")
    monkeypatch.setenv("CRM_REQUEST_TIMEOUT", "0.3")


def user_messages(run_id: str) -> list[str]:
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    return [e.user_message for e in instance.all_logs(run_id) if e.dagster_event is None]


def assert_exact(workspace: Workspace, simulator: CRMSimulator) -> None:
    for name in resource_names():
        assert duplicates(table_ids(workspace.duckdb_path, name)) == 0
        assert_same_records(workspace, simulator, name)


@pytest.fixture
def larger_simulator(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, profile: str
) -> Iterator[CRMSimulator]:
    """Four times the small counts (about 60 pages), so that 30% is a fraction of many requests."""
    counts = {name: 4 * n for name, n in SMALL_COUNTS.items()}
    with CRMSimulator(counts, api_key=API_KEY, access_key=ACCESS_KEY, profile=profile) as sim:
        monkeypatch.setenv("CRM_BASE_URL", sim.base_url)
        yield sim


@every_profile
def test_thirty_percent_transient_faults_load_every_record_exactly_once(
    workspace: Workspace, larger_simulator: CRMSimulator, fast_retries: None
) -> None:
    simulator = larger_simulator
    simulator.faults = Faults(seed=11, **transient_rates(0.3), slow_seconds=0.6)
    result = materialize_all()
    assert result.success
    assert_exact(workspace, simulator)
    injected = simulator.faults_injected()
    served = len(simulator.requests())
    faulted = sum(injected[k] for k in TRANSIENT_KINDS)
    assert 0.2 * served < faulted < 0.4 * served, (faulted, served)
    # Every fault kind was hit (the seed makes this reproducible), on most resources: which
    # resource meets which of the seed's draws depends on the order in which concurrent requests
    # arrive, so a resource of a few pages (cases: 5) can go without a fault on a busy machine.
    assert all(injected[k] > 0 for k in TRANSIENT_KINDS), injected
    assert len({r.path for r in simulator.requests() if r.fault}) >= 3

    retries = [m for m in user_messages(result.run_id) if " retry " in m]
    parsed = [RETRY_LINE.match(m) for m in retries]
    assert all(parsed), [m for m, p in zip(retries, parsed, strict=True) if not p]
    # Dropped connections and slow responses are retried too (besides 429 and 5xx).
    kinds = Counter(
        p["kind"][:8] if p["kind"].startswith("HTTP") else p["kind"] for p in parsed if p
    )
    assert {"timeout", "connection error"} <= set(kinds)
    assert {f"HTTP {c}" for c in (429, 500, 502, 503)} <= set(kinds)
    # Every fault the simulator injected was retried. A busy machine can add read timeouts of
    # its own (0.3 s is short), so the retries are bounded below by the faults, not equal to
    # them; only a timeout can come on top: a 5xx or a dropped connection is always injected.
    assert len(retries) >= faulted
    assert kinds["connection error"] <= injected["drop"], (kinds, injected)
    for code in ("429", "500", "502", "503", "504"):
        assert kinds[f"HTTP {code}"] <= injected[code], (kinds, injected)
    assert not any(count_secrets(m, SECRETS) for m in retries)
    # The retries counted in the metadata are the ones logged.
    metadata = materialized_metadata(result)
    assert sum(m["retries"].value for m in metadata.values()) == len(retries)


def test_retry_after_is_honoured_within_the_configured_bound(
    workspace: Workspace, simulator: CRMSimulator, fast_retries: None, monkeypatch
) -> None:
    """The wait before a 429's retry is the server's Retry-After, capped by
    CRM_REQUEST_MAX_BACKOFF (0.5 s here); the logged waits show both."""
    monkeypatch.setenv("CRM_REQUEST_MAX_BACKOFF", "0.5")
    simulator.faults = Faults(seed=5, rate_429=0.3, retry_after=0.3)
    result = materialize_all()
    assert result.success
    waits = [
        float(p["wait"])
        for p in map(RETRY_LINE.match, user_messages(result.run_id))
        if p and p["kind"].startswith("HTTP 429")
    ]
    assert waits and all(0.3 <= w <= 0.3 * 1.1 for w in waits), waits

    # A server asking for an hour is retried after the configured bound instead. (The client
    # directly: a second sync would be incremental and send too few requests to meet a 429.)
    log = ListLog()
    policy = RequestPolicy(max_attempts=12, backoff_base=0.01, backoff_max=0.5)
    faults = Faults(seed=5, rate_429=0.3, retry_after=3600)
    with CRMSimulator(
        {"contacts": 2000}, api_key=API_KEY, access_key=ACCESS_KEY, faults=faults
    ) as many_pages:
        connection = CRMConnection(many_pages.base_url, API_KEY, ACCESS_KEY)
        with CRMTransport(connection, policy, log=log) as transport:
            pages = list(iter_pages(transport, "contacts", endpoint_of("contacts")))
        assert sum(len(p) for p in pages) == 2000
    waits = [
        float(p["wait"])
        for p in map(RETRY_LINE.match, log.lines)
        if p and p["kind"].startswith("HTTP 429")
    ]
    assert waits and all(0.5 <= w <= 0.5 * 1.1 for w in waits), log.lines
    assert_exact(workspace, simulator)


@pytest.fixture
def pacing_server() -> Iterator[tuple[str, list[int]]]:
    """A server that answers every request of its first 0.5 s with 429 and `Retry-After: 0.001`
    (a slot it keeps giving to someone else, as a busy token bucket does), then a page; and
    answers 429 forever on /v1/never. Yields its URL and the statuses it sent."""
    sent: list[int] = []
    started: list[float] = []

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        if not started:
            started.append(time.monotonic())
        limited = path.startswith("/v1/never") or time.monotonic() - started[0] < 0.5
        sent.append(429 if limited else 200)
        if limited:
            return 429, {"Retry-After": "0.001"}, b'{"error": "rate limit"}'
        return 200, {}, b'{"data": [{"id": 1}]}'

    with ScriptedServer(answer) as server:
        yield server.url, sent


def test_a_paced_request_is_retried_for_the_backoff_bound_not_a_count_of_attempts(
    pacing_server: tuple[str, list[int]],
) -> None:
    """Three attempts would end within milliseconds of 429s whose Retry-After is 1 ms; a
    request only being paced is retried until CRM_REQUEST_MAX_BACKOFF has passed, and gets its
    page. A server that never lets it through still fails it, in one line."""
    base_url, sent = pacing_server
    policy = RequestPolicy(max_attempts=3, backoff_base=0.01, backoff_max=2.0)
    connection = CRMConnection(base_url, API_KEY, ACCESS_KEY)
    with CRMTransport(connection, policy, log=ListLog()) as transport:
        body = transport.get("customers", "/v1/customers", {"startIndex": 0}, "data")
        assert body["data"] == [{"id": 1}]
        assert sent.count(429) > 3 and sent[-1] == 200
    quick = RequestPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.2)
    with (
        CRMTransport(connection, quick, log=ListLog()) as transport,
        pytest.raises(CRMAPIError) as failed,
    ):
        transport.get("customers", "/v1/never", {}, "data")
    assert "HTTP 429" in str(failed.value) and "gave up after" in str(failed.value)


def test_malformed_pages_and_missing_totals_are_retried_or_paged_around(
    workspace: Workspace, simulator: CRMSimulator, fast_retries: None
) -> None:
    simulator.faults = Faults(
        seed=13, rate_not_json=0.1, rate_no_data=0.1, rate_data_not_list=0.1, rate_no_total=0.2
    )
    assert materialize_all().success
    injected = simulator.faults_injected()
    assert all(injected[k] > 0 for k in ("not_json", "no_data", "data_not_list", "no_total"))
    assert_exact(workspace, simulator)


def test_a_server_that_never_sends_total_is_paged_to_the_empty_page(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    simulator.faults = Faults(omit_total=True)
    assert materialize_all().success
    assert simulator.faults_injected()["omit_total"] > 0
    assert_exact(workspace, simulator)


def _read_pages(
    sim: CRMSimulator, resource: str, endpoint: dict[str, Any], into: list[list[dict[str, Any]]]
) -> threading.Thread:
    """A thread reading every page of `resource` from `sim` into `into`, as the sync does."""

    def read() -> None:
        connection = CRMConnection(sim.base_url, API_KEY, ACCESS_KEY)
        with CRMTransport(connection, RequestPolicy(), log=ListLog()) as transport:
            into.extend(iter_pages(transport, resource, endpoint))

    return threading.Thread(target=read, name=f"read-{resource}")


def test_without_a_total_full_pages_are_asked_for_a_few_ahead() -> None:
    """Behind latency, pages read one after another would wait out each round trip in turn:
    while pages come back full, the next AHEAD_WITHOUT_TOTAL are asked for at once, no more
    (those past the end are requests spent for nothing). Held pages show which were asked."""
    endpoint = endpoint_of("customers")
    with CRMSimulator(
        {"customers": 1_050}, api_key=API_KEY, access_key=ACCESS_KEY, faults=Faults(omit_total=True)
    ) as sim:
        hold = sim.hold("customers", 200)  # the first two pages answer, the rest wait
        pages: list[list[dict[str, Any]]] = []
        reader = _read_pages(sim, "customers", endpoint, pages)
        reader.start()
        try:
            assert hold.reached.wait(30)
            deadline = time.monotonic() + 30
            while len(hold.held) < AHEAD_WITHOUT_TOTAL and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # room for a request beyond the window, which must not come
            held = sorted(hold.held)
        finally:
            sim.release()
            reader.join(60)
        assert held == [200 + 100 * i for i in range(AHEAD_WITHOUT_TOTAL)]
        served = [r["id"] for r in sim.records("customers")]
        offsets = [int(r.params["startIndex"]) for r in sim.requests("customers")]
    assert [r["id"] for page in pages for r in page] == served
    # Every page once. The page at 1,000 is short (50 records): the read goes on from where it
    # ended, and the empty page there (1,050) ends it. Pages asked for ahead, past 1,000, are
    # the only requests spent for nothing, and only those that left before the read ended reach
    # the server (the rest are cancelled), so they are bounded, not counted.
    assert sorted(set(offsets)) == sorted(offsets)
    assert set(range(0, 1_100, 100)) | {1_050} <= set(offsets)
    assert max(offsets) <= 1_000 + 100 * (AHEAD_WITHOUT_TOTAL - 1)


def test_pages_fetched_ahead_of_a_slow_reader_are_bounded() -> None:
    """Decoded pages wait in memory until the reader takes them: a reader that stops after two
    pages leaves PAGES_QUEUED_PER_WORKER per worker fetched ahead, and no request beyond them,
    however long it pauses. Taken up again, it gets every record once."""
    endpoint = endpoint_of("customers")
    policy = RequestPolicy(concurrency=2)
    ahead = PAGES_QUEUED_PER_WORKER * policy.concurrency
    with CRMSimulator({"customers": 5_000}, api_key=API_KEY, access_key=ACCESS_KEY) as sim:
        connection = CRMConnection(sim.base_url, API_KEY, ACCESS_KEY)
        with CRMTransport(connection, policy, log=ListLog()) as transport:
            pages = iter_pages(transport, "customers", endpoint)
            read = [next(pages), next(pages)]  # the first page, then one of the queue
            deadline = time.monotonic() + 30
            while len(sim.requests("customers")) < 1 + ahead and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # room for a request beyond the queue, which must not come
            asked = sorted(int(r.params["startIndex"]) for r in sim.requests("customers"))
            read.extend(pages)
        served = [r["id"] for r in sim.records("customers")]
    assert asked == [100 * i for i in range(1 + ahead)]
    assert [r["id"] for page in read for r in page] == served


def test_without_a_total_a_page_below_the_limit_is_followed_one_page_at_a_time() -> None:
    """A server that caps pages below the limit asked for, and gives no total: a short page may
    be its cap, not the end, so from it the read steps by what each page held and asks for
    nothing ahead. Nothing is skipped, nothing read twice."""
    customers = endpoint_of("customers")
    endpoint = {**customers, "paginator": {**customers["paginator"], "limit": 150}}
    with CRMSimulator(
        {"customers": 520}, api_key=API_KEY, access_key=ACCESS_KEY, faults=Faults(omit_total=True)
    ) as sim:  # the simulator serves at most 100 records a page
        pages: list[list[dict[str, Any]]] = []
        reader = _read_pages(sim, "customers", endpoint, pages)
        reader.start()
        reader.join(60)
        served = [r["id"] for r in sim.records("customers")]
        offsets = [int(r.params["startIndex"]) for r in sim.requests("customers")]
    assert [r["id"] for page in pages for r in page] == served
    assert offsets == [0, 100, 200, 300, 400, 500, 520]


def test_a_null_data_past_the_end_ends_the_read() -> None:
    """An API without a total that answers `"data": null` past the end of its listing: that is
    its empty page, which ends the read; a page without `data` at all is still malformed."""

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        offset = int(parse_qs(urlsplit(path).query)["startIndex"][0])
        if offset < 250:
            data = [{"id": offset + i} for i in range(min(100, 250 - offset))]
            return 200, {}, orjson.dumps({"data": data})
        return 200, {}, orjson.dumps({"data": None})

    endpoint = endpoint_of("customers")
    with ScriptedServer(answer) as server:
        connection = CRMConnection(server.url, API_KEY, ACCESS_KEY)
        with CRMTransport(connection, RequestPolicy(max_attempts=2), log=ListLog()) as transport:
            pages = list(iter_pages(transport, "customers", endpoint))
            assert [r["id"] for page in pages for r in page] == list(range(250))
            past_the_end = {"startIndex": 300, "limit": 100}
            with pytest.raises(CRMAPIError, match=re.escape("no 'result.data'")):
                transport.get("customers", endpoint["path"], past_the_end, "result.data")


@pytest.mark.parametrize(("total", "known"), [("250", 250), ("²⁵⁰", None), ("25O", None)])
def test_a_total_sent_as_a_string_of_digits_is_the_total(total: str, known: int | None) -> None:
    """`"total": "250"`: the read knows where the listing ends, as with a number (it asks for
    no page past it, and may count as complete). A string that is not ASCII digits is no total
    (superscript digits are digits to Python, not to `int`): the read goes on to the short page."""
    asked: list[int] = []

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        offset = int(parse_qs(urlsplit(path).query)["startIndex"][0])
        asked.append(offset)
        data = [{"id": offset + i} for i in range(max(0, min(100, 250 - offset)))]
        return 200, {}, orjson.dumps({"data": data, "total": total})

    counters = PageCounters()
    with ScriptedServer(answer) as server:
        connection = CRMConnection(server.url, API_KEY, ACCESS_KEY)
        with CRMTransport(connection, RequestPolicy(), log=ListLog()) as transport:
            pages = list(iter_pages(transport, "customers", endpoint_of("customers"), {}, counters))
    assert [r["id"] for page in pages for r in page] == list(range(250))
    assert counters.total == known
    if known is not None:
        assert sorted(asked) == [0, 100, 200]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"data": [{"id": 1, "score": NaN}], "total": 1}', "NaN at char 29"),
        (b'{"data": [{"id": 1, "score": -Infinity}], "total": 1}', "-Infinity at char 29"),
        (b'{"data": [{"id": 123456789012345678901, "x": NaN}], "total": 1}', "NaN"),
    ],
)
def test_a_page_with_nan_fails_naming_it(body: bytes, reason: str) -> None:
    """Python's json writes NaN and Infinity by default, and they are not JSON: the error says
    which, where a decoder would only say "unexpected character"."""

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, body

    with ScriptedServer(answer) as server:
        connection = CRMConnection(server.url, API_KEY, ACCESS_KEY)
        policy = RequestPolicy(max_attempts=2)
        with (
            CRMTransport(connection, policy, log=ListLog()) as transport,
            pytest.raises(CRMAPIError) as failed,
        ):
            transport.get("leads", "/v1/leads", {"startIndex": 0}, "data")
    assert str(failed.value).startswith(
        f"leads: malformed page (not JSON: {reason}, a number JSON does not have) "
        "from GET /v1/leads?startIndex=0"
    )


def test_pages_asked_for_past_the_end_are_not_retried_for_nobody() -> None:
    """An API without a total that answers 503 past the end of its listing: the pages asked for
    ahead beyond the empty page fail, and are given up rather than retried (with a 5 s backoff,
    a retry would hold the read's end, and spend requests, for pages nobody reads)."""
    asked: list[int] = []

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        offset = int(parse_qs(urlsplit(path).query)["startIndex"][0])
        asked.append(offset)
        if offset > 300:
            return 503, {}, b'{"error": "out of range"}'
        data = [{"id": offset + i} for i in range(100)] if offset < 300 else []
        return 200, {}, orjson.dumps({"data": data})

    endpoint = endpoint_of("customers")
    policy = RequestPolicy(max_attempts=3, backoff_base=5.0, backoff_max=5.0)
    log = ListLog()
    with ScriptedServer(answer) as server:
        connection = CRMConnection(server.url, API_KEY, ACCESS_KEY)
        with CRMTransport(connection, policy, log=log) as transport:
            pages = list(iter_pages(transport, "customers", endpoint))
    assert [r["id"] for page in pages for r in page] == list(range(300))
    past = [offset for offset in asked if offset > 300]
    assert past and sorted(past) == sorted(set(past)), asked  # each asked for once, no retry
    assert not [line for line in log.lines if "retry 2/" in line], log.lines


@every_profile
def test_records_inserted_while_paging_are_loaded_once_and_caught_up_next_run(
    workspace: Workspace, simulator: CRMSimulator, fast_retries: None
) -> None:
    at_start = {name: {r["id"] for r in simulator.records(name)} for name in resource_names()}
    simulator.faults = Faults(seed=17, insert_during_paging=3, **transient_rates(0.2))
    assert materialize_all().success
    assert simulator.faults_injected()["inserted"] > 0
    for name in resource_names():
        ids = table_ids(workspace.duckdb_path, name)
        assert duplicates(ids) == 0
        served = [r["id"] for r in simulator.records(name)]
        # Everything that existed when the sync began, and only records the CRM has.
        assert at_start[name] <= set(ids) <= set(served)
    simulator.faults = Faults()
    assert materialize_all().success
    assert_exact(workspace, simulator)


# -- permanent failures ----------------------------------------------------------------------


def _snapshot(workspace: Workspace) -> dict[str, list[dict]]:
    return {name: workspace.rows(name) for name in resource_names()}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("401", "HTTP 401 Unauthorized from GET /v1/{r}"),
        ("403", "HTTP 403 Forbidden from GET /v1/{r}"),
        ("refused", "connection refused from GET /v1/{r}"),
        (
            "not_json",  # the decoder's reason and where, never the page's text
            "malformed page (not JSON: unexpected character, expected a JSON value: line 1 "
            "column 1 (char 0)) from GET /v1/{r}",
        ),
    ],
)
def test_permanent_failure_fails_fast_in_one_line_and_keeps_the_last_good_state(
    workspace: Workspace,
    simulator: CRMSimulator,
    fast_retries: None,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    expected: str,
) -> None:
    assert materialize_all().success
    before = _snapshot(workspace)
    simulator.update_records("customers", 5)  # a change the failed run must not half-apply
    simulator.reset_requests()
    if case == "401":
        monkeypatch.setenv("CRM_API_KEY", "wrong-" + API_KEY)
    elif case == "403":
        monkeypatch.setenv("CRM_ACCESS_KEY", "wrong-" + ACCESS_KEY)
    elif case == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("CRM_BASE_URL", f"http://127.0.0.1:{port}")
    else:
        simulator.faults = Faults(seed=1, rate_not_json=1.0)
    result = materialize_all()
    assert not result.success
    message = step_failure_message(result)
    assert "\n" not in message.strip()
    assert message.startswith("dagster._core.definitions.events.Failure: 5 of 5 CRM resources")
    for name in resource_names():
        assert expected.format(r=name) in message
    assert count_secrets(message, SECRETS) == 0
    assert "<html" not in message.lower() and "@" not in message  # no body, no customer data
    requests = simulator.requests()
    if case in ("401", "403"):
        assert len(requests) == len(resource_names())  # one attempt each: no retries
    elif case == "not_json":
        assert len(requests) == 12 * len(resource_names())  # the bounded attempts, no more
    assert _snapshot(workspace) == before


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/v1/no-such-thing", {}, "customers: HTTP 404 Not Found from GET /v1/no-such-thing"),
        (
            "/v1/customers",
            {"startIndex": "-1"},
            "customers: HTTP 400 Bad Request from GET /v1/customers?startIndex=-1",
        ),
    ],
)
def test_404_and_400_are_not_retried_and_name_resource_status_and_path(
    simulator: CRMSimulator, path: str, params: dict, expected: str
) -> None:
    connection = CRMConnection(simulator.base_url, API_KEY, ACCESS_KEY)
    simulator.reset_requests()
    policy = RequestPolicy(max_attempts=5, backoff_base=0.01)
    with CRMTransport(connection, policy) as transport, pytest.raises(CRMAPIError) as raised:
        transport.get("customers", path, params, "data")
    assert str(raised.value) == expected
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert len(simulator.requests()) == 1


# -- schema drift --------------------------------------------------------------------------


def test_new_field_becomes_a_nullable_column_and_type_change_goes_to_a_variant(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    assert materialize_all().success
    simulator.set_field("customers", 3, "loyalty_tier", "gold")
    simulator.set_field("opportunities", 7, "amount", "n/a")
    simulator.set_field("leads", 9, "score", {"value": 80})
    # Changed records carry a newer updated_at, so the incremental sync fetches them.
    for resource, record_id in (("customers", 3), ("opportunities", 7), ("leads", 9)):
        simulator.set_field(resource, record_id, "updated_at", "2026-11-28T00:00:00Z")
    result = materialize_all()
    assert result.success
    columns = workspace.column_types("customers")
    assert columns["loyalty_tier"] == "VARCHAR"
    tiers = {r["id"]: r["loyalty_tier"] for r in workspace.rows("customers")}
    assert tiers[3] == "gold" and sum(v is not None for v in tiers.values()) == 1
    opportunities = {r["id"]: r for r in workspace.rows("opportunities")}
    assert opportunities[7]["amount"] is None and opportunities[7]["amount__v_text"] == "n/a"
    assert sum(r["amount__v_text"] is not None for r in opportunities.values()) == 1
    leads = {r["id"]: r for r in workspace.rows("leads")}
    assert leads[9]["score__v_json"] == '{"value":80}'
    metadata = materialized_metadata(result)
    assert metadata["opportunities"]["variant_columns"].value == "amount__v_text"
    assert metadata["leads"]["variant_columns"].value == "score__v_json"
    # The new column is in the asset's column schema; no value changed type there.
    schema = metadata["customers"]["dagster/column_schema"].value
    assert "loyalty_tier" in {c.name for c in schema.columns}
    assert metadata["customers"]["variant_columns"].value == "-"
    assert metadata["customers"]["undeclared_fields"].value == "loyalty_tier"
    assert metadata["contacts"]["drift_count"].value == 0
    assert workspace.count("customers") == simulator.count("customers")


# -- through the real CLI --------------------------------------------------------------------


def test_high_fault_sync_through_the_cli_then_401_and_refused(
    workspace: Workspace, simulator: CRMSimulator
) -> None:
    """The acceptance run: half the requests fail transiently, `dagster asset materialize`
    with the default attempts and backoff still loads every record once, and no secret shows
    up anywhere."""
    simulator.faults = Faults(seed=23, **transient_rates(0.5), slow_seconds=1.0)
    env = cli_env(workspace.env)
    for name in ("CRM_REQUEST_MAX_ATTEMPTS", "CRM_REQUEST_BACKOFF", "CRM_REQUEST_MAX_BACKOFF"):
        del env[name]  # the defaults; only the read timeout stays short, below slow_seconds
    done = run_cli(env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exact(workspace, simulator)
    assert sum(simulator.faults_injected()[k] for k in TRANSIENT_KINDS) >= 10
    outputs = [done.stdout + done.stderr]
    simulator.faults = Faults()

    wrong_key = run_cli({**env, "CRM_API_KEY": "wrong-" + API_KEY})
    assert wrong_key.returncode != 0
    assert "customers: HTTP 401 Unauthorized from GET /v1/customers" in wrong_key.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = run_cli({**env, "CRM_BASE_URL": f"http://127.0.0.1:{port}"})
    assert refused.returncode != 0
    assert "customers: connection refused from GET /v1/customers" in refused.stderr
    outputs += [p.stdout + p.stderr for p in (wrong_key, refused)]
    assert_exact(workspace, simulator)
    leaks = leak_report(
        SECRETS,
        output="".join(outputs),
        dagster_home=workspace.dagster_home,
        pipelines_dir=workspace.pipelines_dir,
        duckdb_path=workspace.duckdb_path,
    )
    assert leaks.total == 0, leaks
    with open_instance(workspace.dagster_home) as instance:
        assert len(instance.get_runs()) == 3


def test_fault_drill_prints_exact_counts_no_duplicates_and_no_secrets(tmp_path: Path) -> None:
    rows = run_drill(rate=0.3, scale=0.2, seed=3, root=tmp_path, locations=("header",))
    table = format_table(rows)
    print(table)
    assert len(rows) == 5
    for row in rows:
        assert row.expected > 0 and row.loaded == row.expected, table
        assert row.duplicate_ids == 0 and row.secrets == 0, table
        assert row.ok, table
    assert sum(rows[0].faults.values()) > 0
