"""The CRM API simulator itself, over real HTTP: contract, data, faults, limiter, log, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from crm_assets.api import CRM_COLUMNS
from crm_simulator import PROFILES, RESOURCES, CRMSimulator, Faults

KEY = "sim-test-APIKEY-93b1"
ACCESS = "sim-test-ACCESSKEY-5c2e"
COUNTS = {"customers": 250, "contacts": 431, "cases": 120, "leads": 309, "opportunities": 205}
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sim() -> Iterator[CRMSimulator]:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS) as s:
        yield s


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-Access-Key"] = ACCESS
        yield session


def get(
    http: requests.Session, sim: CRMSimulator, resource: str, **params: Any
) -> requests.Response:
    return http.get(f"{sim.base_url}/v1/{resource}", params={"api_key": KEY, **params}, timeout=10)


# --- contract ---------------------------------------------------------------------------------
def test_paging_covers_every_record_once_in_id_order(
    sim: CRMSimulator, http: requests.Session
) -> None:
    for resource in ("customers", "contacts", "leads", "opportunities"):
        seen: list[dict[str, Any]] = []
        start = 0
        while True:
            body = get(http, sim, resource, startIndex=start, limit=100).json()
            assert body["total"] == COUNTS[resource]
            assert (body["startIndex"], body["limit"]) == (start, 100)
            if not body["data"]:
                break
            seen.extend(body["data"])
            start += len(body["data"])
        assert [r["id"] for r in seen] == list(range(1, COUNTS[resource] + 1))
        assert seen == sim.records(resource)


def test_defaults_cap_and_past_the_end(sim: CRMSimulator, http: requests.Session) -> None:
    body = get(http, sim, "customers").json()
    assert (len(body["data"]), body["startIndex"], body["limit"]) == (100, 0, 100)
    capped = get(http, sim, "customers", limit=500, startIndex=10).json()
    assert len(capped["data"]) == 100 and capped["limit"] == 100
    assert capped["data"][0]["id"] == 11
    empty = get(http, sim, "customers", startIndex=10_000).json()
    assert empty["data"] == [] and empty["total"] == 250


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "-1"},
        {"limit": "ten"},
        {"startIndex": "-5"},
        {"startIndex": "1.5"},
        {"updated_since": "yesterday"},
    ],
)
def test_bad_parameters_are_400(
    sim: CRMSimulator, http: requests.Session, params: dict[str, str]
) -> None:
    r = get(http, sim, "customers", **params)
    assert r.status_code == 400
    assert isinstance(r.json()["error"], str)


def test_cases_come_on_one_page(sim: CRMSimulator, http: requests.Session) -> None:
    body = get(http, sim, "cases", startIndex=50, limit=10).json()
    assert set(body) == {"data", "total"}
    assert body["total"] == 120 and len(body["data"]) == 120
    assert body["data"] == sim.records("cases")


def test_unknown_paths_are_404_json(sim: CRMSimulator, http: requests.Session) -> None:
    for path in ("/v1/invoices", "/v2/customers", "/", "/v1/customers/1"):
        r = http.get(sim.base_url + path, params={"api_key": KEY}, timeout=10)
        assert r.status_code == 404 and r.json() == {"error": "not found"}
    assert http.post(f"{sim.base_url}/v1/customers", data=b"x" * 10, timeout=10).status_code == 404
    # The connection is still usable after a request with a body.
    assert get(http, sim, "leads").status_code == 200


def test_responses_are_json_keep_alive_with_length(sim: CRMSimulator) -> None:
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as conn:
        request = (
            f"GET /v1/leads?api_key={KEY}&limit=3 HTTP/1.1\r\nHost: x\r\n"
            f"x-access-key: {ACCESS}\r\n\r\n"
        ).encode()
        for _ in range(2):  # two requests on one connection
            conn.sendall(request)
            raw = b""
            while b"\r\n\r\n" not in raw:
                raw += conn.recv(65536)
            head, _, body = raw.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            while len(body) < length:
                body += conn.recv(65536)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"Content-Type: application/json" in head
            assert len(json.loads(body)["data"]) == 3


# --- auth -------------------------------------------------------------------------------------
def test_auth_with_access_key_in_a_header(sim: CRMSimulator) -> None:
    url = f"{sim.base_url}/v1/customers"
    assert requests.get(url, timeout=5).json() == {"error": "invalid api key"}
    r = requests.get(url, params={"api_key": "wrong"}, headers={"X-Access-Key": ACCESS}, timeout=5)
    assert r.status_code == 401
    r = requests.get(url, params={"api_key": KEY}, timeout=5)
    assert (r.status_code, r.json()) == (403, {"error": "invalid access key"})
    r = requests.get(url, params={"api_key": KEY}, headers={"X-Access-Key": "nope"}, timeout=5)
    assert r.status_code == 403
    r = requests.get(url, params={"api_key": KEY}, headers={"x-ACCESS-key": ACCESS}, timeout=5)
    assert r.status_code == 200  # header names are case-insensitive
    for response in (r,):
        assert KEY not in response.text and ACCESS not in response.text


def test_auth_with_access_key_in_the_query() -> None:
    with CRMSimulator(
        COUNTS,
        api_key=KEY,
        access_key=ACCESS,
        access_key_name="access_key",
        access_key_location="query",
    ) as s:
        url = f"{s.base_url}/v1/leads"
        r = requests.get(url, params={"api_key": KEY}, headers={"access_key": ACCESS}, timeout=5)
        assert r.status_code == 403  # a header does not count in query mode
        r = requests.get(url, params={"api_key": KEY, "access_key": "x"}, timeout=5)
        assert r.status_code == 403 and ACCESS not in r.text
        r = requests.get(url, params={"api_key": KEY, "access_key": ACCESS}, timeout=5)
        assert r.status_code == 200
        r = requests.get(url, params={"api_key": "bad", "access_key": ACCESS}, timeout=5)
        assert r.status_code == 401


def test_no_access_key_configured_means_no_check() -> None:
    with CRMSimulator({"customers": 3}, api_key=KEY, access_key=None) as s:
        r = requests.get(f"{s.base_url}/v1/customers", params={"api_key": KEY}, timeout=5)
        assert r.status_code == 200 and len(r.json()["data"]) == 3


# --- incremental --------------------------------------------------------------------------------
def test_updated_since_filters_then_pages(sim: CRMSimulator, http: requests.Session) -> None:
    records = sim.records("contacts")
    cutoff = sorted(r["updated_at"] for r in records)[len(records) // 2]
    expected = [r for r in records if r["updated_at"] >= cutoff]
    got: list[dict[str, Any]] = []
    for start in range(0, len(records), 100):
        body = get(http, sim, "contacts", updated_since=cutoff, startIndex=start).json()
        assert body["total"] == len(expected)
        got.extend(body["data"])
    assert got == expected
    # "+00:00" works too, even when a client leaves the "+" unescaped in the query string.
    plus = cutoff.replace("Z", "+00:00")
    assert get(http, sim, "contacts", updated_since=plus).json()["total"] == len(expected)
    raw = http.get(f"{sim.base_url}/v1/contacts?api_key={KEY}&updated_since={plus}", timeout=5)
    assert raw.json()["total"] == len(expected)
    cases = get(http, sim, "cases", updated_since=cutoff).json()
    assert cases["total"] == sum(r["updated_at"] >= cutoff for r in sim.records("cases"))


def test_updates_and_inserts_move_the_clock_forward(
    sim: CRMSimulator, http: requests.Session
) -> None:
    newest = max(r["updated_at"] for r in sim.records("leads"))
    before = {r["id"]: r for r in sim.records("leads")}
    changed = sim.update_records("leads", 5)
    assert len(set(changed)) == 5 and min(changed) < 100 < max(changed)  # spread over the ids
    added = sim.insert_records("leads", 2)
    assert added == [310, 311] and sim.count("leads") == 311
    body = get(http, sim, "leads", updated_since=newest.replace("Z", ".5Z")).json()
    assert [r["id"] for r in body["data"]] == sorted(changed) + added
    for record in body["data"][:5]:
        old = before[record["id"]]
        assert record["updated_at"] > newest
        assert sum(record[k] != old[k] for k in record) == 2  # updated_at + one ordinary field
    # Another call touches other records, later still.
    again = sim.update_records("leads", 5)
    assert set(again) != set(changed)


def test_set_field_and_add_resource(sim: CRMSimulator, http: requests.Session) -> None:
    sim.set_field("customers", 3, "id", None)
    sim.set_field("customers", 4, "loyalty_tier", "gold")
    data = get(http, sim, "customers", limit=5).json()["data"]
    assert data[2]["id"] is None and data[3]["loyalty_tier"] == "gold"
    sim.add_resource(
        "invoices", [{"id": i, "updated_at": "2024-06-01T00:00:00Z"} for i in range(1, 151)]
    )
    page = get(http, sim, "invoices", startIndex=100).json()
    assert page["total"] == 150 and [r["id"] for r in page["data"]] == list(range(101, 151))
    assert sim.insert_records("invoices", 1) == [151]


# --- data ---------------------------------------------------------------------------------------
def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text else 0


def test_records_are_realistic_and_consistent() -> None:
    sim = CRMSimulator(seed=7)  # default counts, no server needed for ground truth
    data = {name: sim.records(name) for name in RESOURCES}
    assert {k: len(v) for k, v in data.items()} == {
        "customers": 1000,
        "contacts": 3000,
        "cases": 500,
        "leads": 2000,
        "opportunities": 1500,
    }
    n_customers, n_contacts = len(data["customers"]), len(data["contacts"])
    money: list[float] = []
    for c in data["customers"]:
        assert c["created_at"] <= c["updated_at"]
        if c["annual_revenue"] is not None:
            money.append(c["annual_revenue"])
    for c in data["contacts"]:
        assert c["customer_id"] is None or 1 <= c["customer_id"] <= n_customers
    for case in data["cases"]:
        assert 1 <= case["customer_id"] <= n_customers
        assert (case["closed_at"] is not None) == (case["status"] == "closed")
        assert case["opened_at"] <= case["updated_at"]
    for lead in data["leads"]:
        assert 0 <= lead["score"] <= 100
        assert lead["contact_id"] is None or (
            lead["is_converted"] and lead["contact_id"] <= n_contacts
        )
    for opp in data["opportunities"]:
        money.append(opp["amount"])
        money.extend(item["unit_price"] for item in opp["line_items"])
        assert (opp["is_won"] is None) == (opp["stage"] not in ("closed_won", "closed_lost"))
        assert re.match(r"^\d{4}-\d{2}-\d{2}$", opp["expected_close_date"])
    assert all(_decimals(m) <= 2 and 0 <= m <= 10_000_000 for m in money)
    assert any(_decimals(m) == 2 for m in money)
    for records in data.values():
        assert [r["id"] for r in records] == list(range(1, len(records) + 1))
        assert all(TS_RE.match(r["updated_at"]) for r in records)
    emails = [c["email"] for c in data["customers"]]
    assert 0.05 < emails.count(None) / len(emails) < 0.3
    names = {c["last_name"] for c in data["contacts"]}
    assert {"Müller", "山田", "Ñúñez"} <= names
    no_customers = CRMSimulator({"customers": 0, "cases": 5, "opportunities": 5})
    assert all(r["customer_id"] is None for r in no_customers.records("cases"))


def test_same_seed_same_bytes_different_seed_different() -> None:
    small = {name: 40 for name in RESOURCES}
    bodies: list[list[bytes]] = []
    for seed in (5, 5, 6):
        with CRMSimulator(small, api_key=KEY, access_key=None, seed=seed) as s:
            bodies.append(
                [
                    requests.get(f"{s.base_url}/v1/{r}", params={"api_key": KEY}, timeout=5).content
                    for r in RESOURCES
                ]
            )
    assert bodies[0] == bodies[1]
    assert all(a != b for a, b in zip(bodies[0], bodies[2], strict=True))


# --- faults -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,status", [("429", 429), ("500", 500), ("502", 502), ("503", 503), ("504", 504)]
)
def test_http_error_faults(
    sim: CRMSimulator, http: requests.Session, kind: str, status: int
) -> None:
    sim.faults = Faults(**{f"rate_{kind}": 1.0})
    r = get(http, sim, "customers")
    assert r.status_code == status and "error" in r.json()
    if status == 429:
        assert r.headers["Retry-After"] == "0.05"  # the default retry_after
    assert sim.faults_injected()[kind] == 1
    assert sim.requests("customers")[-1].fault == kind


def test_payload_faults(sim: CRMSimulator, http: requests.Session) -> None:
    sim.faults = Faults(rate_not_json=1.0)
    r = get(http, sim, "leads")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    sim.faults = Faults(rate_no_data=1.0)
    assert "data" not in get(http, sim, "leads").json()
    sim.faults = Faults(rate_data_not_list=1.0)
    assert isinstance(get(http, sim, "leads").json()["data"], dict)
    sim.faults = Faults(rate_no_total=1.0)
    body = get(http, sim, "leads").json()
    assert "total" not in body and len(body["data"]) == 100
    sim.faults = Faults(omit_total=True)
    assert "total" not in get(http, sim, "cases").json()
    counts = sim.faults_injected()
    assert (
        counts["not_json"],
        counts["no_data"],
        counts["data_not_list"],
        counts["no_total"],
        counts["omit_total"],
    ) == (1, 1, 1, 1, 1)


def test_drop_and_slow_faults(sim: CRMSimulator, http: requests.Session) -> None:
    sim.faults = Faults(rate_drop=1.0, max_faults=1)
    with pytest.raises(
        (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)
    ):
        get(http, sim, "contacts")
    assert get(http, sim, "contacts").status_code == 200  # budget spent: back to normal
    sim.faults = Faults(rate_slow=1.0, slow_seconds=0.3)
    started = time.monotonic()
    assert get(http, sim, "contacts").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert sim.faults_injected()["drop"] == 1 and sim.faults_injected()["slow"] == 1


def test_fault_rates_seed_scope_and_budget(sim: CRMSimulator, http: requests.Session) -> None:
    def statuses() -> list[int]:
        return [get(http, sim, "opportunities").status_code for _ in range(200)]

    sim.faults = Faults(seed=11, rate_503=0.25)
    first = statuses()
    sim.faults = Faults(seed=11, rate_503=0.25)  # a new Faults object restarts the RNG
    assert statuses() == first
    assert 30 <= first.count(503) <= 70
    sim.faults = Faults(rate_500=1.0, only_resources=("leads",), max_faults=2)
    assert get(http, sim, "customers").status_code == 200
    assert [get(http, sim, "leads").status_code for _ in range(3)] == [500, 500, 200]


def test_insert_during_paging(sim: CRMSimulator, http: requests.Session) -> None:
    sim.faults = Faults(insert_during_paging=3)
    first = get(http, sim, "customers", startIndex=0).json()
    second = get(http, sim, "customers", startIndex=100).json()
    assert (first["total"], second["total"]) == (250, 253)
    assert sim.count("customers") == 256
    newest = sim.records("customers")[-1]
    assert newest["id"] == 256 and newest["updated_at"] > "2025-01-01"
    assert sim.faults_injected()["inserted"] == 6


# --- rate limit ---------------------------------------------------------------------------------
def test_rate_limit_429_with_retry_after_and_a_paced_client_never_sees_one(
    sim: CRMSimulator, http: requests.Session
) -> None:
    sim.rate_limit = 5  # burst 1
    responses = [get(http, sim, "leads") for _ in range(5)]
    assert responses[0].status_code == 200
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "back-to-back requests above the limit must be refused"
    retry = float(limited[0].headers["Retry-After"])
    assert 0.01 <= retry <= 0.2
    time.sleep(retry)
    assert get(http, sim, "leads").status_code == 200
    log = sim.requests("leads")
    assert {e.fault for e in log if e.status == 429} == {"rate_limited"}
    assert sim.faults_injected()["rate_limited"] == len(limited)

    sim.rate_limit = 40  # a new limit starts with a full bucket
    interval = 1 / 40
    due = time.monotonic()
    codes = []
    for _ in range(40):  # one second at the limit; a late request is not made up for
        time.sleep(max(0.0, due - time.monotonic()))
        codes.append(get(http, sim, "leads").status_code)
        due = max(due + interval, time.monotonic())
    assert codes == [200] * 40


# --- request log --------------------------------------------------------------------------------
def test_request_log_holds_no_secrets() -> None:
    with CRMSimulator(
        COUNTS, api_key=KEY, access_key=ACCESS, access_key_name="ak", access_key_location="query"
    ) as s:
        url = f"{s.base_url}/v1/customers"
        requests.get(url, params={"api_key": KEY, "ak": ACCESS, "limit": 7}, timeout=5)
        requests.get(url, params={"api_key": "typo-" + KEY, "ak": ACCESS}, timeout=5)
        log = s.requests()
        assert [(e.method, e.path, e.status) for e in log] == [
            ("GET", "/v1/customers", 200),
            ("GET", "/v1/customers", 401),
        ]
        assert log[0].params == {"api_key": "***", "ak": "***", "limit": "7"}
        assert KEY not in repr(log) and ACCESS not in repr(log)
        s.reset_requests()
        assert s.requests() == []


# --- CLI ----------------------------------------------------------------------------------------
def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CRM_API_KEY": KEY, "CRM_ACCESS_KEY": ACCESS}
    return subprocess.Popen(
        [sys.executable, "-m", "crm_simulator", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_cli_serves_until_sigterm_and_reports_a_busy_port(tmp_path: Path) -> None:
    # Both processes start at once: most of their start-up is importing the package.
    ready = tmp_path / "url"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = _cli("--port", str(port))
        proc = _cli(
            "--port", "0", "--count", "customers=12", "--scale", "0.01", "--ready-file", str(ready)
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            base = ready.read_text().strip()
            assert line == (
                f"CRM simulator listening on {base} (customers=12, contacts=30, "
                "cases=5, leads=20, opportunities=15)"
            )
            r = requests.get(
                f"{base}/v1/customers",
                params={"api_key": KEY},
                headers={"X-Access-Key": ACCESS},
                timeout=5,
            )
            assert r.json()["total"] == 12
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
            refused_out, refused_err = refused.communicate(timeout=60)
        finally:
            proc.kill()
            refused.kill()
    assert proc.returncode == 0
    assert out == "" and KEY not in err and ACCESS not in err
    assert not ready.exists()
    assert refused.returncode == 2
    assert refused_err == (
        f"crm-simulator: port {port} is in use; pick another with --port "
        "(or --port 0 for a free one)\n"
    )
    assert refused_out == ""


# --- data profiles ------------------------------------------------------------------------------
SF_ID = re.compile(r"^(001|003|500|00Q|006)5g0[0-9A-Za-z]{9}[A-Z0-5]{3}$")
SF_PREFIX = {
    "customers": "001",
    "contacts": "003",
    "cases": "500",
    "leads": "00Q",
    "opportunities": "006",
}
# column -> referenced resource, per resource (as the declared schema's references say)
REFERENCES = {
    "contacts": {"customer_id": "customers"},
    "cases": {"customer_id": "customers", "contact_id": "contacts"},
    "leads": {"contact_id": "contacts"},
    "opportunities": {"customer_id": "customers", "contact_id": "contacts"},
}


def fetch_all(
    http: requests.Session, sim: CRMSimulator, resource: str, **params: Any
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every record over HTTP, plus the total each page reported."""
    if resource == "cases":
        body = get(http, sim, resource, **params).json()
        return body["data"], [body["total"]]
    records: list[dict[str, Any]] = []
    totals: list[int] = []
    while True:
        body = get(http, sim, resource, startIndex=len(records), limit=100, **params).json()
        totals.append(body["total"])
        if not body["data"]:
            return records, totals
        records.extend(body["data"])


def _is_sf_id(value: Any, resource: str) -> bool:
    return isinstance(value, str) and bool(SF_ID.match(value)) and value[:3] == SF_PREFIX[resource]


def _is_uuid4(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return str(parsed) == value and parsed.version == 4


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.fixture(params=PROFILES)
def any_profile(request: pytest.FixtureRequest) -> Iterator[CRMSimulator]:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, profile=request.param) as s:
        yield s


def test_every_profile_pages_exact_totals_and_valid_references(
    any_profile: CRMSimulator, http: requests.Session
) -> None:
    sim = any_profile
    served: dict[str, list[dict[str, Any]]] = {}
    for resource in RESOURCES:
        records, totals = fetch_all(http, sim, resource)
        assert set(totals) == {COUNTS[resource]} and len(records) == COUNTS[resource]
        assert records == sim.records(resource)
        ids = [r["id"] for r in records]
        assert len(set(ids)) == len(ids) and ids == sim.ids(resource)
        if sim.profile == "declared":
            assert ids == list(range(1, COUNTS[resource] + 1))
        elif sim.profile == "crm":
            assert all(_is_sf_id(i, resource) for i in ids)
            assert ids == sorted(ids)  # fixed width, base-62 digits in ASCII order
        else:
            assert all(_is_uuid4(i) for i in ids)
        served[resource] = records
    for resource, refs in REFERENCES.items():
        for column, target in refs.items():
            known = {r["id"] for r in served[target]}
            values = [r[column] for r in served[resource] if r.get(column) is not None]
            assert values and set(values) <= known, (resource, column)


def test_profile_ids_are_deterministic_and_seeded() -> None:
    small = {name: 30 for name in RESOURCES}
    for profile in ("crm", "uuid"):
        bodies: list[list[bytes]] = []
        for seed in (5, 5, 6):
            with CRMSimulator(small, api_key=KEY, access_key=None, seed=seed, profile=profile) as s:
                bodies.append(
                    [
                        requests.get(
                            f"{s.base_url}/v1/{r}", params={"api_key": KEY}, timeout=5
                        ).content
                        for r in RESOURCES
                    ]
                )
        assert bodies[0] == bodies[1]
        assert all(a != b for a, b in zip(bodies[0], bodies[2], strict=True))
    # The uuid profile's ids come from the seed; the crm profile's from the ordinal alone.
    assert CRMSimulator(small, seed=1, profile="uuid").ids("leads") != CRMSimulator(
        small, seed=2, profile="uuid"
    ).ids("leads")
    with pytest.raises(ValueError, match="unknown profile"):
        CRMSimulator(profile="hubspot")


def _walk(value: Any) -> Iterator[Any]:
    """Every value nested in ``value``, itself included."""
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_crm_profile_is_shaped_like_a_real_crm(http: requests.Session) -> None:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, profile="crm") as sim:
        data = {resource: fetch_all(http, sim, resource)[0] for resource in RESOURCES}
    for resource, records in data.items():
        declared = set(CRM_COLUMNS[resource])
        for rec in records:
            assert "updated_at" in rec and TS_RE.match(rec["updated_at"])
            undeclared = set(rec) - declared
            # camelCase fields the schema does not declare, one of them colliding with a
            # declared field once snake_cased, on the same record.
            assert any(k != _snake(k) for k in undeclared), resource
            assert any(k != _snake(k) and _snake(k) in rec for k in undeclared), resource
    collisions = {
        "customers": ("createdAt", "created_at"),
        "contacts": ("isPrimary", "is_primary"),
        "cases": ("openedAt", "opened_at"),
        "leads": ("createdAt", "created_at"),
        "opportunities": ("expectedCloseDate", "expected_close_date"),
    }
    for resource, (camel, snake) in collisions.items():
        assert all(r[camel] != r[snake] for r in data[resource])
    customers, contacts = data["customers"], data["contacts"]
    assert isinstance(customers[0]["createdAt"], int)  # epoch milliseconds
    # Declared fields this CRM never sends.
    assert "employee_count" in CRM_COLUMNS["customers"]
    assert not any("employee_count" in c for c in customers)
    assert not any("social" in c for c in contacts)
    # Numbers in columns declared as text, beside ordinary text.
    for records, column in ((customers, "phone"), (customers, "industry"), (contacts, "title")):
        kinds = {type(r[column]) for r in records if r[column] is not None}
        assert kinds == {int, str}, column
    # Money with more decimals than the declared scale of 2.
    assert all(_decimals(o["amount"]) > 2 for o in data["opportunities"])
    values = [lead["estimated_value"] for lead in data["leads"] if lead["estimated_value"]]
    assert values and all(_decimals(v) == 3 for v in values)
    # Undeclared timestamps in other ISO forms, all parsable.
    strings = [
        v
        for resource, records in data.items()
        for rec in records
        for key, value in rec.items()
        if key not in CRM_COLUMNS[resource]
        for v in _walk(value)
        if isinstance(v, str)
    ]
    forms = {
        "+02:00 with microseconds": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+02:00$",
        "-05:00": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-05:00$",
        "Z with microseconds": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$",
        "date only": r"^\d{4}-\d\d-\d\d$",
    }
    for form, pattern in forms.items():
        matching = [s for s in strings if re.match(pattern, s)]
        assert matching, form
        for text in matching:
            datetime.fromisoformat(text)
    # Undeclared nested objects and lists.
    assert all(isinstance(c["customFields"], dict) for c in customers)
    assert any(c["segments"] and isinstance(c["segments"][0], dict) for c in customers)
    assert any(o["stageHistory"] for o in data["opportunities"])
    assert all(re.match(r"^\d{8}$", case["caseNumber"]) for case in data["cases"])


def test_uuid_profile_has_mixed_types_zero_padded_refs_and_nested_lists(
    http: requests.Session,
) -> None:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, profile="uuid") as sim:
        data = {resource: fetch_all(http, sim, resource)[0] for resource in RESOURCES}
    scores = [lead["score"] for lead in data["leads"]]
    assert {type(s) for s in scores} == {int, str}
    assert {s for s in scores if isinstance(s, str)} == {"n/a"}
    assert all(0 <= s <= 100 for s in scores if isinstance(s, int))
    for resource in ("customers", "opportunities"):
        refs = [r["external_ref"] for r in data[resource]]
        assert all(isinstance(x, str) and x.isdigit() and x.startswith("0") for x in refs)
        assert all(len(x) == 6 for x in refs)
    locations = [loc for c in data["customers"] for loc in c["locations"]]
    assert locations and all(isinstance(loc["phones"], list) for loc in locations)
    assert any(c["phone_numbers"] for c in data["contacts"])
    # Every declared field is sent.
    for resource, records in data.items():
        assert all(set(CRM_COLUMNS[resource]) <= set(r) for r in records)


@pytest.mark.parametrize("profile", ["crm", "uuid"])
def test_mutations_with_string_ids(http: requests.Session, profile: str) -> None:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, profile=profile) as sim:
        before = {r["id"]: r for r in sim.records("opportunities")}
        newest = max(r["updated_at"] for r in before.values())
        changed = sim.update_records("opportunities", 4)
        added = sim.insert_records("opportunities", 3)
        assert all(isinstance(i, str) for i in changed + added)
        assert not set(added) & set(before) and len(set(added)) == 3
        if profile == "crm":
            assert all(_is_sf_id(i, "opportunities") for i in added)
            assert added == sorted(added) and added[0] > max(before)
        else:
            assert all(_is_uuid4(i) for i in added)
        body = get(http, sim, "opportunities", updated_since=newest.replace("Z", ".5Z")).json()
        assert [r["id"] for r in body["data"]] == changed + added
        for record in body["data"][: len(changed)]:
            old = before[record["id"]]
            assert sum(record[k] != old[k] for k in record) == 2  # updated_at + one field
            if profile == "crm":  # the update keeps the CRM's money precision
                assert _decimals(record["amount"]) > 2
        customers = set(sim.ids("customers"))
        assert all(r["customer_id"] in customers for r in body["data"][len(changed) :])

        customer_ids = sim.ids("customers")
        target = customer_ids[17]
        assert sim.position_of("customers", target) == 17
        sim.set_field("customers", target, "loyalty_tier", "gold")
        page = get(http, sim, "customers", startIndex=17, limit=1).json()["data"]
        assert page[0]["id"] == target and page[0]["loyalty_tier"] == "gold"
        if profile == "crm":  # even with customers never sending employee_count
            sim.update_records("customers", 5)
            assert not any("employee_count" in c for c in sim.records("customers"))
        with pytest.raises(KeyError):
            sim.set_field("customers", "no-such-id", "name", "x")
        # Collections added at run time: given ids are kept, inserts continue the id form.
        sim.add_resource("notes", [{"id": f"N-{i}", "updated_at": newest} for i in range(3)])
        (note,) = sim.insert_records("notes", 1)
        assert isinstance(note, str) and note not in {"N-0", "N-1", "N-2"}
        assert sim.ids("notes")[-1] == note


# --- strict parameters ----------------------------------------------------------------------------
def test_strict_params_refuse_unknown_names_without_echoing_values() -> None:
    with CRMSimulator(
        COUNTS,
        api_key=KEY,
        access_key=ACCESS,
        access_key_name="ak",
        access_key_location="query",
        strict_params=True,
        filter_param="modified_after",
    ) as s:

        def call(resource: str, **params: Any) -> requests.Response:
            return requests.get(
                f"{s.base_url}/v1/{resource}",
                params={"api_key": KEY, "ak": ACCESS, **params},
                timeout=5,
            )

        ok = call("leads", startIndex=5, limit=10, modified_after="2024-06-01T00:00:00Z")
        assert ok.status_code == 200 and ok.json()["total"] < COUNTS["leads"]
        assert call("cases", modified_after="2024-06-01T00:00:00Z").status_code == 200
        cases = [
            ("leads", {"updated_since": "2024-06-01T00:00:00Z"}, "updated_since"),
            ("leads", {"limit": 5, "offset": 10}, "offset"),
            ("cases", {"startIndex": 0}, "startIndex"),  # cases are not paged
            ("customers", {"token": KEY}, "token"),
            ("customers", {"fields": ACCESS, "sort": "id"}, "fields"),
        ]
        for resource, params, name in cases:
            r = call(resource, **params)
            assert (r.status_code, r.json()) == (
                400,
                {"error": f"unknown query parameter: {name}"},
            )
            assert KEY not in r.text and ACCESS not in r.text
        # A secret where a parameter name goes is not echoed either.
        r = requests.get(f"{s.base_url}/v1/leads?api_key={KEY}&ak={ACCESS}&{KEY}=1", timeout=5)
        assert r.status_code == 400 and KEY not in r.text
        # Authentication still comes first.
        assert call("leads", api_key="wrong", bogus=1).status_code == 401
        assert all(KEY not in repr(e) and ACCESS not in repr(e) for e in s.requests())


def test_lenient_params_and_other_filter_names(http: requests.Session) -> None:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, filter_param=None) as s:
        r = get(http, s, "customers", updated_since="2030-01-01T00:00:00Z", bogus="x")
        assert r.status_code == 200 and r.json()["total"] == COUNTS["customers"]
        s.strict_params = True  # read per request
        r = get(http, s, "customers", updated_since="2030-01-01T00:00:00Z")
        assert r.json() == {"error": "unknown query parameter: updated_since"}
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, filter_param="since") as s:
        assert get(http, s, "leads", since="2030-01-01T00:00:00Z").json()["total"] == 0
        bad = get(http, s, "leads", since="soon")
        assert bad.json() == {"error": "since must be an ISO-8601 timestamp"}
    for clash in ("limit", "api_key", ""):
        with pytest.raises(ValueError):
            CRMSimulator(filter_param=clash)


# --- deletions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_delete_and_restore(http: requests.Session, profile: str) -> None:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, profile=profile) as sim:
        before = sim.records("contacts")
        ids = [r["id"] for r in before]
        cutoff = sorted(r["updated_at"] for r in before)[200]
        # A filtered request first, so the updated_since cache holds this cutoff.
        assert get(http, sim, "contacts", updated_since=cutoff).json()["total"] == len(ids) - 200

        deleted = sim.delete_records("contacts", 6)
        assert len(set(deleted)) == 6 and set(deleted) <= set(ids)
        kept = [i for i in ids if i not in deleted]
        first, hundredth = kept[0], kept[100]
        assert sim.delete_records("contacts", [hundredth, first]) == [first, hundredth]
        gone = {*deleted, first, hundredth}
        records, totals = fetch_all(http, sim, "contacts")
        assert set(totals) == {COUNTS["contacts"] - 8}
        assert [r["id"] for r in records] == [i for i in ids if i not in gone]
        assert sim.ids("contacts") == [r["id"] for r in records]
        recent = sum(r["updated_at"] >= cutoff for r in before if r["id"] not in gone)
        assert get(http, sim, "contacts", updated_since=cutoff).json()["total"] == recent
        with pytest.raises(KeyError):
            sim.delete_records("contacts", [first])  # already deleted
        with pytest.raises(KeyError):
            sim.restore_records("contacts", [kept[1]])  # never deleted

        # Inserts never reuse a deleted id.
        (fresh,) = sim.insert_records("contacts", 1)
        assert fresh not in ids

        newest = max(r["updated_at"] for r in sim.records("contacts"))
        assert sim.restore_records("contacts", [hundredth, first]) == [hundredth, first]
        # Back in their places: served order is creation order again, the insert last.
        assert sim.ids("contacts") == kept + [fresh]
        assert sim.position_of("contacts", hundredth) == 100
        restored = [r for r in sim.records("contacts") if r["id"] in (first, hundredth)]
        assert all(r["updated_at"] > newest for r in restored)
        later = get(http, sim, "contacts", updated_since=newest.replace("Z", ".5Z")).json()
        assert [r["id"] for r in later["data"]] == [first, hundredth]
        assert get(http, sim, "contacts").json()["total"] == COUNTS["contacts"] - 6 + 1


def test_delete_from_an_added_collection_and_unpaged_cases(http: requests.Session) -> None:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS) as sim:
        tasks = [{"id": i, "updated_at": "2024-06-01T00:00:00Z"} for i in range(1, 11)]
        sim.add_resource("tasks", tasks)
        assert sim.delete_records("tasks", [3, 4]) == [3, 4]
        assert sim.insert_records("tasks", 1) == [11]
        assert sim.restore_records("tasks", [4]) == [4]
        assert sim.ids("tasks") == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
        deleted = sim.delete_records("cases", 20)
        body = get(http, sim, "cases").json()
        assert body["total"] == 100 and not {r["id"] for r in body["data"]} & set(deleted)


def test_cli_profile_strict_params_and_filter_options(tmp_path: Path) -> None:
    ready = tmp_path / "url"
    clash = _cli("--port", "0", "--filter-param", "limit")
    proc = _cli(
        "--port",
        "0",
        "--scale",
        "0.01",
        "--profile",
        "uuid",
        "--strict-params",
        "--no-filter",
        "--ready-file",
        str(ready),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.endswith("opportunities=15; profile uuid)")
        base = ready.read_text().strip()

        def call(**params: Any) -> requests.Response:
            return requests.get(
                f"{base}/v1/leads",
                params={"api_key": KEY, **params},
                headers={"X-Access-Key": ACCESS},
                timeout=5,
            )

        body = call(limit=5).json()
        assert body["total"] == 20 and all(_is_uuid4(r["id"]) for r in body["data"])
        assert call(updated_since="2024-01-01T00:00:00Z").json() == {
            "error": "unknown query parameter: updated_since"
        }
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        clash_out, clash_err = clash.communicate(timeout=60)
    finally:
        proc.kill()
        clash.kill()
    assert proc.returncode == 0 and out == "" and KEY not in err
    assert clash.returncode == 2 and clash_out == ""
    assert "filter_param 'limit'" in clash_err


# --- link paging and unpaged added collections ------------------------------------------------
def _events(n: int) -> list[dict[str, Any]]:
    # Two halves with different updated_at, so a filtered walk has something to leave out.
    return [
        {"id": i, "kind": "click", "updated_at": f"2024-0{1 + (i > n // 2)}-01T00:00:00Z"}
        for i in range(1, n + 1)
    ]


def _walk_links(
    http: requests.Session, first: str, **params: Any
) -> tuple[list[dict[str, Any]], list[str]]:
    """Follow "next" like a link paginator does: the next URL as given, plus only the auth."""
    records: list[dict[str, Any]] = []
    links: list[str] = []
    r = http.get(first, params={"api_key": KEY, **params}, timeout=10)
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"data", "next"}
        records.extend(body["data"])
        if body["next"] is None:
            return records, links
        links.append(body["next"])
        r = http.get(body["next"], params={"api_key": KEY}, timeout=10)


def test_link_paging_walks_to_the_end_without_secrets_in_next(
    sim: CRMSimulator, http: requests.Session
) -> None:
    events = _events(250)
    sim.add_resource("events", events, paging="link")
    url = f"{sim.base_url}/v1/events"
    records, links = _walk_links(http, url, limit=40)
    assert records == events == sim.records("events")
    assert len(links) == 6  # 7 pages of 40, the last one with 10 records
    for link in links:
        assert link.startswith(f"{url}?cursor=") and link.endswith("&limit=40")
        assert KEY not in link and ACCESS not in link and "api_key" not in link
    # Defaults: 100 per page, and no limit in the links unless the request had one.
    records, links = _walk_links(http, url)
    assert records == events and len(links) == 2
    assert all("limit" not in link for link in links)
    # A limit above 100 is capped, in the page and in the link.
    body = get(http, sim, "events", limit=500).json()
    assert len(body["data"]) == 100 and body["next"].endswith("&limit=100")
    # An exact multiple of the limit ends on a full page, not an extra empty one.
    sim.add_resource("even", _events(200), paging="link")
    records, links = _walk_links(http, f"{sim.base_url}/v1/even")
    assert len(records) == 200 and len(links) == 1
    # The filter applies before paging and travels in the links.
    since = "2024-02-01T00:00:00+00:00"
    records, links = _walk_links(http, url, limit=50, updated_since=since)
    assert records == events[125:] and len(links) == 2
    assert all("updated_since=2024-02-01T00%3A00%3A00%2B00%3A00" in link for link in links)
    # The log shows the cursor, never a secret.
    log = sim.requests("events")
    assert log[-1].params["cursor"] and log[-1].params["api_key"] == "***"
    assert KEY not in repr(log) and ACCESS not in repr(log)


def test_link_paging_bad_parameters_and_strict_mode(
    sim: CRMSimulator, http: requests.Session
) -> None:
    sim.add_resource("events", _events(30), paging="link")
    for params in ({"cursor": "nope"}, {"cursor": ""}, {"cursor": "é"}, {"limit": "0"}):
        r = get(http, sim, "events", **params)
        assert r.status_code == 400 and isinstance(r.json()["error"], str)
    next_url = get(http, sim, "events", limit=10).json()["next"]
    sim.strict_params = True
    assert http.get(next_url, params={"api_key": KEY}, timeout=5).status_code == 200
    r = get(http, sim, "events", startIndex=10)
    assert r.json() == {"error": "unknown query parameter: startIndex"}
    # Offset collections keep their own parameters: a cursor is unknown there.
    assert get(http, sim, "customers", cursor="x").status_code == 400
    # Auth is checked like everywhere else.
    assert requests.get(f"{sim.base_url}/v1/events", timeout=5).status_code == 401
    with pytest.raises(ValueError, match="paging"):
        sim.add_resource("bad", [], paging="page")


def test_link_paging_faults(sim: CRMSimulator, http: requests.Session) -> None:
    sim.add_resource("events", _events(30), paging="link")
    sim.faults = Faults(rate_503=1.0, max_faults=1, only_resources=("events",))
    assert get(http, sim, "events").status_code == 503
    sim.faults = Faults(omit_total=True, insert_during_paging=2)
    body = get(http, sim, "events", limit=10).json()
    assert set(body) == {"data", "next"}  # never a total to omit
    assert sim.count("events") == 32
    assert sim.faults_injected()["omit_total"] == 0


def test_unpaged_added_collection(sim: CRMSimulator, http: requests.Session) -> None:
    events = _events(250)
    sim.add_resource("events", events, paging="none")
    body = get(http, sim, "events", limit=10).json()
    assert body == {"data": events}
    assert get(http, sim, "events", updated_since="2024-02-01T00:00:00Z").json() == {
        "data": events[125:]
    }
    sim.strict_params = True
    assert get(http, sim, "events", limit=10).status_code == 400
    assert get(http, sim, "events").json() == {"data": events}


# --- customer notes -----------------------------------------------------------------------------
def _notes_url(sim: CRMSimulator, customer_id: Any) -> str:
    return f"{sim.base_url}/v1/customers/{customer_id}/notes"


def test_customer_notes(http: requests.Session) -> None:
    with CRMSimulator(COUNTS, api_key=KEY, access_key=ACCESS, notes=True) as sim:
        customers = sim.records("customers")
        served: list[dict[str, Any]] = []
        for customer in customers[:40]:
            r = http.get(_notes_url(sim, customer["id"]), params={"api_key": KEY}, timeout=5)
            assert r.status_code == 200
            body = r.json()
            assert set(body) == {"data"}
            notes = body["data"]
            assert notes == sim.notes(customer["id"])
            assert 0 <= len(notes) <= 3
            for note in notes:
                assert set(note) == {"id", "customer_id", "body", "created_at"}
                assert note["customer_id"] == customer["id"]
                assert isinstance(note["body"], str) and note["body"]
                assert TS_RE.match(note["created_at"])
                assert note["created_at"] >= customer["created_at"]
            assert [n["created_at"] for n in notes] == sorted(n["created_at"] for n in notes)
            served.extend(notes)
        assert {len(sim.notes(c["id"])) for c in customers} == {0, 1, 2, 3}
        every = sim.notes()
        assert every[: len(served)] == served
        ids = [n["id"] for n in every]
        assert ids == list(range(1, len(every) + 1))  # unique across customers
        # The collection log keeps only collection requests; notes have their own paths.
        assert sim.requests("customers") == []
        log = sim.requests()
        assert log[0].path == f"/v1/customers/{customers[0]['id']}/notes"
        assert log[0].params == {"api_key": "***"}

        for missing in (10_000, "abc", 0, "01"):
            r = http.get(_notes_url(sim, missing), params={"api_key": KEY}, timeout=5)
            assert (r.status_code, r.json()) == (404, {"error": "not found"})
        with pytest.raises(KeyError):
            sim.notes(10_000)
        # Deleted customers' notes are gone; new customers have none yet.
        deleted = sim.delete_records("customers", [customers[1]["id"]])[0]
        assert http.get(_notes_url(sim, deleted), params={"api_key": KEY}).status_code == 404
        assert deleted not in {n["customer_id"] for n in sim.notes()}
        (fresh,) = sim.insert_records("customers", 1)
        assert http.get(_notes_url(sim, fresh), params={"api_key": KEY}).json() == {"data": []}

        # Auth as everywhere else, and the faults' own scope.
        first = _notes_url(sim, customers[0]["id"])
        assert requests.get(first, params={"api_key": "x"}, timeout=5).status_code == 401
        assert requests.get(first, params={"api_key": KEY}, timeout=5).status_code == 403
        sim.faults = Faults(rate_503=1.0, only_resources=("notes",))
        assert http.get(first, params={"api_key": KEY}, timeout=5).status_code == 503
        assert get(http, sim, "customers").status_code == 200
        sim.faults = Faults()
        sim.strict_params = True
        r = http.get(first, params={"api_key": KEY, "limit": 5}, timeout=5)
        assert r.json() == {"error": "unknown query parameter: limit"}


def test_customer_notes_are_seeded_and_follow_the_profile_ids(http: requests.Session) -> None:
    small = {"customers": 30}
    assert CRMSimulator(small, notes=True).notes() == CRMSimulator(small, notes=True).notes()
    assert (
        CRMSimulator(small, notes=True, seed=1).notes()
        != CRMSimulator(small, notes=True, seed=2).notes()
    )
    with CRMSimulator(small, api_key=KEY, access_key=ACCESS, notes=True, profile="crm") as sim:
        customer = next(c for c in sim.ids("customers") if sim.notes(c))
        body = http.get(_notes_url(sim, customer), params={"api_key": KEY}, timeout=5).json()
        assert body["data"] == sim.notes(customer)
        assert all(n["id"].startswith("0025g0") and len(n["id"]) == 18 for n in body["data"])
        ids = [n["id"] for n in sim.notes()]
        assert len(set(ids)) == len(ids)


def test_customer_notes_are_off_by_default(sim: CRMSimulator, http: requests.Session) -> None:
    assert not sim.notes_enabled
    r = http.get(_notes_url(sim, 1), params={"api_key": KEY}, timeout=5)
    assert (r.status_code, r.json()) == (404, {"error": "not found"})
    with pytest.raises(RuntimeError, match="notes=True"):
        sim.notes()


def test_cli_notes_option(tmp_path: Path) -> None:
    ready = tmp_path / "url"
    proc = _cli("--port", "0", "--scale", "0.01", "--notes", "--ready-file", str(ready))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip().endswith("opportunities=15; customer notes)")
        base = ready.read_text().strip()
        r = requests.get(
            f"{base}/v1/customers/1/notes",
            params={"api_key": KEY},
            headers={"X-Access-Key": ACCESS},
            timeout=5,
        )
        assert r.status_code == 200 and all(n["customer_id"] == 1 for n in r.json()["data"])
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and KEY not in err
