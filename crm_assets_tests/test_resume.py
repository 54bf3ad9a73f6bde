"""Resume: a long read lands in chunks, each with its position in dlt's state, so a sync that
stops (killed, or failed for good) loses at most the chunk in flight and the next one goes on
from there, gap-free even when the CRM inserted or deleted records in the meantime.

Every stop is placed by the simulator holding a page request unanswered (`CRMSimulator.hold`),
not by timing: the sync is known to be waiting at that offset when it is killed or fails.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from crm_assets.paging import PageCounters, Position, iter_pages
from crm_assets.transport import CRMConnection, CRMTransport, RequestPolicy
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    SMALL_COUNTS,
    Workspace,
    assert_same_records,
    every_profile,
    make_workspace,
    materialized_metadata,
    sync_in_process,
)
from crm_assets_tests.fault_support import (
    DAGSTER_EXE,
    cli_env,
    endpoint_of,
    run_cli,
    step_failure_message,
    table_ids,
)
from crm_assets_tests.processes import start
from crm_simulator import CRMSimulator

LONG = 3_000  # customers: 30 pages
CHUNK = 300  # records per chunk: ten chunks
HOLD_AT = 2_400  # the sync is stopped 80% of the way in, at the start of the ninth chunk


def customer_pages(simulator: CRMSimulator) -> int:
    return sum(1 for r in simulator.requests("customers") if "startIndex" in r.params)


@pytest.fixture
def long_crm(profile: str) -> CRMSimulator:
    with CRMSimulator(
        {**SMALL_COUNTS, "customers": LONG}, api_key=API_KEY, access_key=ACCESS_KEY, profile=profile
    ) as sim:
        yield sim


def test_killed_first_sync_resumes_after_its_last_chunk(
    long_crm: CRMSimulator, tmp_path: Path
) -> None:
    """kill -9 at 80% of a first sync, inserts and deletes while it was down, then a rerun:
    exact ids, none twice, and the rerun reads about a fifth of the pages again."""
    sim = long_crm
    ws = make_workspace(tmp_path / "ws", sim.base_url)
    # A long timeout: the held request must still be waiting when the kill comes.
    env = cli_env(ws.env, CRM_CHUNK_RECORDS=str(CHUNK), CRM_REQUEST_TIMEOUT="600")
    select = ["asset", "materialize", "-m", "crm_assets", "--select", "crm/customers"]
    hold = sim.hold("customers", HOLD_AT)
    process = start(
        "first-sync",
        [str(DAGSTER_EXE), *select],
        env,
        tmp_path / "logs",
        stop_signal=signal.SIGKILL,
    )
    try:
        assert hold.reached.wait(300), f"the sync never reached offset {HOLD_AT}:\n{process.log()}"
    finally:
        process.stop()  # SIGKILL to the CLI and its step process, while they wait on the CRM
    sim.release()
    # Eight chunks landed before the ninth was asked for; the one in flight is lost.
    assert ws.count("customers") == HOLD_AT
    # While the sync was down: records deleted in the part already loaded shift every offset
    # after them back, inserted ones are appended.
    gone = sim.delete_records("customers", [sim.ids("customers")[i] for i in (10, 500, 2_100)])
    added = sim.insert_records("customers", 7)
    sim.reset_requests()

    rerun = run_cli(env, *select)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    ids = [str(i) for i in table_ids(ws.duckdb_path, "customers")]
    assert len(ids) == len(set(ids)), "an id is in the warehouse twice"
    # Every record the CRM serves, and the deleted ones (loaded before their deletion; only a
    # complete read marks deletes, and a resumed read is not one).
    assert set(ids) == {str(i) for i in sim.ids("customers")} | {str(i) for i in gone}
    assert {str(i) for i in added} <= set(ids)
    pages = LONG // 100
    assert customer_pages(sim) <= pages // 3, (
        f"the rerun read {customer_pages(sim)} of {pages} pages again"
    )
    assert "going on from there" in rerun.stdout + rerun.stderr


@every_profile
def test_failed_sync_keeps_its_chunks_and_the_next_goes_on(
    long_crm: CRMSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page that fails for good (here: never answered within the timeout) fails the run after
    the chunks before it and the pages read before it have landed; the next sync reads only the
    rest, and the table ends exact, on every data profile."""
    sim = long_crm
    workspace = make_workspace(tmp_path / "ws", sim.base_url)
    for name, value in workspace.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CRM_CHUNK_RECORDS", str(CHUNK))
    monkeypatch.setenv("CRM_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("CRM_REQUEST_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("CRM_CONCURRENCY", "1")  # one request in flight: stops exactly there
    sim.hold("customers", 2_600)
    failed = sync_in_process(["crm/customers"])
    sim.release()
    assert not failed.success
    assert "customers" in step_failure_message(failed)
    # Eight chunks and the pages at 2,400 and 2,500 landed, though the run failed.
    assert workspace.count("customers") == 2_600
    sim.reset_requests()

    resumed = sync_in_process(["crm/customers"])
    assert resumed.success
    assert_same_records(workspace, sim, "customers")
    # The 400 records left are four pages; each of the two chunks reads the page that ends with
    # the record loaded last again, to find it.
    assert customer_pages(sim) == 6
    metadata = materialized_metadata(resumed)["customers"]
    assert metadata["records_fetched"].value == LONG - 2_600
    assert metadata["resumed_at_offset"].value == 2_600
    assert metadata["complete_read"].value is False


def test_chunked_sync_is_exact_and_complete(
    simulator: CRMSimulator, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read in many chunks in one run, a sync loads what one read loads, still counts as a
    complete read (so deletes are marked) and moves the incremental cursor."""
    # 100 records for each of the five resources read at once: up to five chunks each.
    monkeypatch.setenv("CRM_CHUNK_RECORDS", "500")
    first = sync_in_process()
    assert first.success
    metadata = materialized_metadata(first)
    # Contacts (431) in several chunks; cases (one page, never cut) in one.
    assert metadata["contacts"]["chunks"].value > 2
    assert metadata["cases"]["chunks"].value == 1
    for name, count in SMALL_COUNTS.items():
        assert metadata[name]["rows_loaded"].value == count
        assert metadata[name]["complete_read"].value is True
        assert_same_records(workspace, simulator, name)
    gone = simulator.delete_records("contacts", 4)
    simulator.reset_requests()
    again = sync_in_process(["crm/contacts"], full_refresh=True)
    assert materialized_metadata(again)["contacts"]["rows_deleted"].value == 4
    deleted = {str(r["id"]) for r in workspace.rows("contacts") if r["_crm_deleted_at"]}
    assert deleted == {str(i) for i in gone}
    # The cursor moved after the first sync: an incremental sync asks only for changes.
    simulator.reset_requests()
    assert sync_in_process(["crm/leads"]).success
    assert all("updated_since" in r.params for r in simulator.requests("leads"))


@every_profile
def test_columns_keep_their_types_across_chunks_and_syncs(
    simulator: CRMSimulator, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column keeps the type the first sync gave it however many loads follow. JSON columns
    travel as Arrow strings: a load without their hint turned them into text in dlt's schema,
    and the load after that pushed every object into a `__v_json` variant column."""
    assert sync_in_process().success  # one load: every resource fits in the default chunk
    first = {name: workspace.column_types(name) for name in SMALL_COUNTS}
    monkeypatch.setenv("CRM_CHUNK_RECORDS", "500")
    for _ in range(2):
        result = sync_in_process(full_refresh=True)
        assert result.success
    metadata = materialized_metadata(result)
    assert metadata["contacts"]["chunks"].value > 2
    for name in SMALL_COUNTS:
        assert workspace.column_types(name) == first[name], name
        assert_same_records(workspace, simulator, name)


@pytest.mark.parametrize("change", ["none", "delete_before", "insert_before", "insert_after"])
def test_resumed_paging_goes_on_after_its_anchor(simulator: CRMSimulator, change: str) -> None:
    """A read of 250 customers stopped after 200 and resumed goes on right after the record it
    loaded last, wherever the CRM's changes moved it: nothing skipped, nothing read twice; a
    change in front of it, or of the total, marks the listing changed."""
    connection = CRMConnection(simulator.base_url, API_KEY, ACCESS_KEY)
    endpoint = endpoint_of("customers")
    ids = simulator.ids("customers")
    if change == "insert_before":
        # Deleted before the first read and re-created after it, in the part already read.
        simulator.delete_records("customers", [ids[40]])
    with CRMTransport(connection, RequestPolicy()) as transport:
        first = PageCounters()
        pages = iter_pages(transport, "customers", endpoint, {}, first, chunk_records=200)
        loaded = [record["id"] for page in pages for record in page]
        assert first.cut and first.position == 200 and len(loaded) == 200
        if change == "delete_before":
            simulator.delete_records("customers", [ids[3], ids[150]])
        elif change == "insert_before":
            simulator.restore_records("customers", [ids[40]])
        elif change == "insert_after":
            simulator.insert_records("customers", 5)
        rest = PageCounters(total=first.total, first_total=first.total)
        anchor = Position(200, loaded[-1], 199, "id", first.step)
        pages = iter_pages(transport, "customers", endpoint, {}, rest, anchor)
        read = [record["id"] for page in pages for record in page]
    now = simulator.ids("customers")
    assert read == now[now.index(loaded[-1]) + 1 :]
    assert rest.total_changed is (change != "none")
    assert not rest.anchor_lost


def test_lost_anchor_reads_from_the_start(simulator: CRMSimulator) -> None:
    """If the record loaded last was deleted, the read starts over: slower, never a gap."""
    connection = CRMConnection(simulator.base_url, API_KEY, ACCESS_KEY)
    endpoint = endpoint_of("customers")
    with CRMTransport(connection, RequestPolicy()) as transport:
        ids = simulator.ids("customers")
        simulator.delete_records("customers", [ids[199]])
        stats = PageCounters(total=250, first_total=250)
        anchor = Position(200, ids[199], 199, "id", 100)
        pages = iter_pages(transport, "customers", endpoint, {}, stats, anchor)
        read = [record["id"] for page in pages for record in page]
    assert read == simulator.ids("customers")
    assert stats.anchor_lost
