"""Layer 5: the project as a user meets it in the UI, served by the real `dagster-webserver` and
`dagster-daemon` from workspace.yaml: runs launched through GraphQL and by clicking in Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crm_assets.api import resource_names
from crm_assets_tests.conftest import (
    ACCESS_KEY,
    API_KEY,
    SMALL_COUNTS,
    Workspace,
    assert_same_records,
    clean_env,
    make_workspace,
)
from crm_assets_tests.processes import (
    REPO_ROOT,
    Webserver,
    all_asset_keys,
    dagster_stack,
    wait_for,
    write_instance_yaml,
)
from crm_simulator import CRMSimulator

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses (see NOTES.md).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"


@dataclass
class Stack:
    server: Webserver
    workspace: Workspace
    simulator: CRMSimulator


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One simulator, webserver and daemon for the module: starting them takes seconds."""
    with CRMSimulator(SMALL_COUNTS, api_key=API_KEY, access_key=ACCESS_KEY) as simulator:
        ws = make_workspace(tmp_path_factory.mktemp("ui"), simulator.base_url)
        write_instance_yaml(ws.dagster_home)
        with dagster_stack(clean_env(**ws.env), ws.root / "logs") as server:
            assert server is not None
            yield Stack(server, ws, simulator)


def assert_warehouse_matches(stack: Stack) -> None:
    for name in resource_names():
        assert stack.workspace.count(name) == stack.simulator.count(name), name
        assert_same_records(stack.workspace, stack.simulator, name)


def run_ids(server: Webserver) -> set[str]:
    runs = server.graphql("{ runsOrError { ... on Runs { results { runId } } } }")
    return {r["runId"] for r in runs["runsOrError"]["results"]}


def test_run_launched_through_graphql_materializes_all_five_assets(stack: Stack) -> None:
    run_id = stack.server.launch_assets(all_asset_keys())
    assert stack.server.wait_for_run(run_id) == "SUCCESS", stack.server.run_messages(run_id)[-20:]
    assert_warehouse_matches(stack)
    messages = stack.server.run_messages(run_id)
    # The per-resource progress lines reach the UI's run log too.
    for name in resource_names():
        assert any(m.startswith(f"{name}: ") and "records fetched" in m for m in messages), name
    assert not any(API_KEY in m or ACCESS_KEY in m for m in messages)


def test_materialize_all_clicked_in_chromium(stack: Stack) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: run scripts/ensure-chromium"
    before = run_ids(stack.server)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(60_000)
            # Assertions keep their own bound (5 s by default): a busy machine renders slower.
            expect.set_options(timeout=60_000)
            page.goto(f"{stack.server.url}/asset-groups/crm")
            # A fresh browser profile first gets the "Join the Dagster community" dialog.
            page.get_by_role("button", name="Skip").click()
            for name in resource_names():
                expect(page.get_by_role("button", name=name).first).to_be_visible()
            page.get_by_role("button", name="Materialize all").click()

            new = wait_for(
                lambda: run_ids(stack.server) - before, 120, "the clicked run to appear", 1
            )
            assert len(new) == 1, new
            (run_id,) = new
            status = stack.server.wait_for_run(run_id)
            assert status == "SUCCESS", stack.server.run_messages(run_id)[-20:]

            # What the user sees: the run page says Success ...
            page.goto(f"{stack.server.url}/runs/{run_id}")
            expect(page.get_by_text("Success").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "ui-run.png"))
            # ... and the lineage graph shows every asset materialized by that run.
            page.goto(f"{stack.server.url}/asset-groups/crm")
            expect(page.get_by_text("Materialized", exact=True)).to_have_count(5)
            page.wait_for_timeout(1000)  # let the graph finish its zoom-to-fit animation
            page.screenshot(path=str(ARTIFACTS / "ui-materialized.png"))
        finally:
            browser.close()
    assert_warehouse_matches(stack)
