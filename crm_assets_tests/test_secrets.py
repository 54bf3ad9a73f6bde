"""Secrets never leak: not in output, events, metadata, exception messages or any file.

Both secrets are distinctive strings; the access key travels in a header or in the query string
(where `requests` puts it into every URL, and so into its exception texts). After a successful
run and after each failure mode, both are searched for in the captured stdout/stderr, in every
event the instance stored for the run (serialized as stored: messages, metadata, errors with
their causes, contexts and stack traces), in the materialization metadata, in every file under
DAGSTER_HOME and the dlt pipelines folder, and in the DuckDB file (its raw bytes and, through
DuckDB, every text cell of every table, dlt's compressed state included).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
from dagster import serialize_value

from crm_assets.api import resource_names
from crm_assets.transport import CRMConnection, CRMTransport
from crm_assets_tests.conftest import ACCESS_KEY, API_KEY, SMALL_COUNTS, Workspace
from crm_assets_tests.fault_support import (
    ScriptedServer,
    count_secrets,
    leak_report,
    materialize_all,
    transient_rates,
)
from crm_simulator import CRMSimulator, Faults

SECRETS = (API_KEY, ACCESS_KEY)
QUERY_KEY_NAME = "access_key"


@pytest.fixture(params=["header", "query"])
def located(
    request: pytest.FixtureRequest, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CRMSimulator]:
    """A simulator expecting the access key in a header or in the query, and the run set up
    to send it there."""
    location = request.param
    name = QUERY_KEY_NAME if location == "query" else "X-Access-Key"
    with CRMSimulator(
        SMALL_COUNTS,
        api_key=API_KEY,
        access_key=ACCESS_KEY,
        access_key_location=location,
        access_key_name=name,
    ) as sim:
        monkeypatch.setenv("CRM_BASE_URL", sim.base_url)
        monkeypatch.setenv("CRM_ACCESS_KEY_LOCATION", location)
        monkeypatch.setenv("CRM_ACCESS_KEY_NAME", name)
        monkeypatch.setenv("CRM_REQUEST_MAX_ATTEMPTS", "10")
        monkeypatch.setenv("CRM_REQUEST_TIMEOUT", "0.3")
        yield sim


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# mode -> (what to break, whether the run succeeds)
MODES = {
    "success": True,
    "transient": True,  # 429/5xx, dropped connections, read timeouts, all retried
    "no_total": True,
    "401": False,
    "403": False,
    "refused": False,
    "malformed": False,  # a page that stays not-JSON through every retry
    "one_resource_5xx": False,  # one resource gives up after its retries, four load
}


@pytest.mark.parametrize("mode", list(MODES))
def test_no_secret_anywhere_after_the_run(
    located: CRMSimulator,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    mode: str,
) -> None:
    if mode == "transient":
        located.faults = Faults(seed=29, **transient_rates(0.4), slow_seconds=0.6)
    elif mode == "no_total":
        located.faults = Faults(seed=29, omit_total=True)
    elif mode == "401":
        # The wrong key contains the real one, so that echoing it would be caught too.
        monkeypatch.setenv("CRM_API_KEY", "wrong-" + API_KEY)
    elif mode == "403":
        monkeypatch.setenv("CRM_ACCESS_KEY", "wrong-" + ACCESS_KEY)
    elif mode == "refused":
        monkeypatch.setenv("CRM_BASE_URL", _refused_url())
    elif mode == "malformed":
        located.faults = Faults(seed=29, rate_not_json=1.0, only_resources=("contacts",))
    elif mode == "one_resource_5xx":
        located.faults = Faults(seed=29, rate_502=1.0, only_resources=("leads",))

    result = materialize_all()
    assert result.success is MODES[mode]
    if mode == "transient":
        assert sum(located.faults_injected().values()) > 0
    if not MODES[mode]:
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert failure.step_failure_data.error is not None

    # Metadata and every event of the in-process result, serialized as Dagster stores them.
    for event in result.all_events:
        assert count_secrets(serialize_value(event), SECRETS) == 0, event.event_type_value
    materialized = [e.materialization.metadata for e in result.get_asset_materialization_events()]
    assert count_secrets(repr(materialized), SECRETS) == 0
    if mode in ("malformed", "one_resource_5xx"):
        assert len(materialized) == len(resource_names()) - 1

    captured = capfd.readouterr()
    leaks = leak_report(
        SECRETS,
        output=captured.out + captured.err,
        dagster_home=workspace.dagster_home,
        pipelines_dir=workspace.pipelines_dir,
        duckdb_path=workspace.duckdb_path,
    )
    assert leaks.total == 0, leaks
    # The scan did look at something: the instance has the run and its events.
    assert workspace.dagster_home.exists() and any(workspace.dagster_home.rglob("*.db"))
    if MODES[mode]:
        assert any(workspace.pipelines_dir.rglob("*")) and workspace.duckdb_path.exists()


def test_no_secret_in_debug_logs(
    located: CRMSimulator, workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment that keeps Python's DEBUG logs gets every request line of the HTTP client,
    retries included, with the query string: the keys in it are masked."""
    located.faults = Faults(seed=31, **transient_rates(0.3))
    caplog.set_level(logging.DEBUG)

    assert materialize_all().success

    request_lines = [
        r for r in caplog.records if r.name.startswith("urllib3") and "/v1/" in r.getMessage()
    ]
    assert request_lines, "the HTTP client logged no request line at DEBUG"
    leaked = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if count_secrets(r.getMessage(), SECRETS)
    ]
    assert leaked == []


def test_the_scan_finds_a_secret_where_one_was_written(workspace: Workspace) -> None:
    """The scanner is not blind: a secret written into each kind of place is found."""
    import gzip

    import duckdb

    (workspace.pipelines_dir / "crm_sync").mkdir(parents=True)
    (workspace.pipelines_dir / "crm_sync" / "trace.gz").write_bytes(
        gzip.compress(f"url=...?api_key={API_KEY}".encode())
    )
    with duckdb.connect(str(workspace.duckdb_path)) as con:
        con.execute("CREATE SCHEMA crm; CREATE TABLE crm.t (v VARCHAR)")
        con.execute("INSERT INTO crm.t SELECT ? || range FROM range(5000)", [ACCESS_KEY])
    leaks = leak_report(
        SECRETS,
        output=f"X-Access-Key: {ACCESS_KEY}",
        dagster_home=workspace.dagster_home,
        pipelines_dir=workspace.pipelines_dir,
        duckdb_path=workspace.duckdb_path,
    )
    assert leaks.output == 1
    assert any(path.endswith("trace.gz") for path in leaks.files)
    assert leaks.warehouse == {"crm.t.v": 5000}


def test_a_redirect_to_another_host_does_not_take_the_access_key_along() -> None:
    """The CRM, or a proxy in front of it, redirects a page to another host: the request
    follows, without the access key header, as it would drop Authorization. A redirect within
    the CRM's own host keeps the key, or the page would be refused."""
    page = b'{"data": [{"id": 1}]}'

    def other_answer(path: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, page

    with ScriptedServer(other_answer) as other:

        def crm_answer(path: str) -> tuple[int, dict[str, str], bytes]:
            if path.startswith("/v1/elsewhere"):
                return 302, {"Location": f"{other.url}/v1/customers"}, b""
            if path.startswith("/v1/moved"):
                return 302, {"Location": "/v1/customers"}, b""
            return 200, {}, page

        with ScriptedServer(crm_answer) as crm:
            connection = CRMConnection(crm.url, API_KEY, ACCESS_KEY)
            with CRMTransport(connection) as transport:
                away = transport.get("customers", "/v1/elsewhere", {"startIndex": 0}, "data")
                home = transport.get("customers", "/v1/moved", {"startIndex": 0}, "data")
    assert away["data"] == home["data"] == [{"id": 1}]
    # The other host was asked, and got neither secret.
    assert len(other.seen) == 1 and other.seen[0].startswith("GET /v1/customers")
    assert count_secrets(other.seen[0], SECRETS) == 0, other.seen[0]
    # The CRM's own host got the key on every request, the redirected one included.
    followed = [r for r in crm.seen if r.startswith("GET /v1/customers")]
    assert len(crm.seen) == 3 and len(followed) == 1
    assert all(f"X-Access-Key: {ACCESS_KEY}" in r for r in crm.seen), crm.seen
