"""PostgreSQL as the production set-up uses it: the machine's server at 127.0.0.1:5432 as the dlt
destination, and as Dagster's instance storage through dagster-postgres.

Every test works in names of its own (a schema per dataset, a database per instance) and drops
them afterwards, so nothing else in the `test` database is touched.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, materialize
from psycopg2 import sql

import crm_assets
from crm_assets.api import resource_names
from crm_assets_tests.conftest import Workspace, clean_env, dagster_cli
from crm_assets_tests.processes import REPO_ROOT
from crm_simulator import CRMSimulator

# Trust auth ignores the password, but dlt refuses credentials without one.
SERVER = "postgresql://postgres:postgres@127.0.0.1:5432"
TEST_DB = f"{SERVER}/test"


def connect(url: str = TEST_DB):
    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection


def query(sql_text: str | sql.Composable, url: str = TEST_DB) -> list[tuple]:
    with closing(connect(url)) as con, con.cursor() as cur:
        cur.execute(sql_text)
        return cur.fetchall()


@pytest.fixture
def pg_dataset(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A dataset (schema) of this test's own in `test`, with dlt pointed at it."""
    dataset = f"crm_{uuid.uuid4().hex[:10]}"
    settings = {
        "CRM_DESTINATION": "postgres",
        "CRM_DATASET": dataset,
        "DESTINATION__POSTGRES__CREDENTIALS": TEST_DB,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    workspace.env.update(settings)
    try:
        yield dataset
    finally:
        # dlt keeps merge staging tables in a sibling schema.
        with closing(connect()) as con, con.cursor() as cur:
            for schema in (dataset, f"{dataset}_staging"):
                cur.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


@pytest.fixture
def pg_instance_db() -> Iterator[str]:
    """A database of this test's own for Dagster's instance storage."""
    name = f"crm_dagster_{uuid.uuid4().hex[:10]}"
    with closing(connect()) as con, con.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{SERVER}/{name}"
    finally:
        with closing(connect()) as con, con.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def table_counts(dataset: str, table: str) -> tuple[int, int]:
    """Rows and distinct ids in one warehouse table."""
    rows = query(
        sql.SQL("SELECT count(*), count(DISTINCT id) FROM {}.{}").format(
            sql.Identifier(dataset), sql.Identifier(table)
        )
    )
    return rows[0][0], rows[0][1]


def test_postgres_destination_full_sync_then_merge(
    workspace: Workspace, simulator: CRMSimulator, pg_dataset: str
) -> None:
    defs = crm_assets.defs
    result = materialize(defs.assets, resources=defs.resources, instance=DagsterInstance.get())
    assert result.success
    for name in resource_names():
        assert table_counts(pg_dataset, name) == (simulator.count(name),) * 2, name

    changed = simulator.update_records("contacts", 7)
    result = materialize(defs.assets, resources=defs.resources, instance=DagsterInstance.get())
    assert result.success
    for name in resource_names():
        # Merged on id: the rerun adds no row, duplicates none.
        assert table_counts(pg_dataset, name) == (simulator.count(name),) * 2, name
    served = {r["id"]: r for r in simulator.records("contacts")}
    stored = dict(
        query(
            sql.SQL("SELECT id, title FROM {}.contacts WHERE id IN ({})").format(
                sql.Identifier(pg_dataset), sql.SQL(",").join(map(sql.Literal, changed))
            )
        )
    )
    assert stored == {i: served[i]["title"] for i in changed}
    metadata = {
        e.asset_key: e.materialization.metadata for e in result.get_asset_materialization_events()
    }
    assert metadata[AssetKey(["crm", "contacts"])]["dagster/row_count"].value == simulator.count(
        "contacts"
    )


def test_postgres_first_sync_keeps_one_row_of_an_id_served_twice(
    workspace: Workspace, simulator: CRMSimulator, pg_dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first sync appends into the empty table, then removes the repeat by its row id."""
    monkeypatch.setenv("CRM_CHUNK_RECORDS", "100")  # the repeat lands in a later load
    ids = [r["id"] for r in simulator.records("contacts")]
    simulator.set_field("contacts", ids[150], "title", "served second")
    simulator.set_field("contacts", ids[150], "id", ids[10])
    defs = crm_assets.defs
    contacts = [a for a in defs.assets if AssetKey(["crm", "contacts"]) in a.keys]
    result = materialize(
        contacts,
        resources=defs.resources,
        instance=DagsterInstance.get(),
        selection=[AssetKey(["crm", "contacts"])],
    )
    assert result.success
    served = simulator.count("contacts")
    assert table_counts(pg_dataset, "contacts") == (served - 1, served - 1)
    stored = query(
        sql.SQL("SELECT title FROM {}.contacts WHERE id = {}").format(
            sql.Identifier(pg_dataset), sql.Literal(ids[10])
        )
    )
    assert stored == [("served second",)]
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["load_mode"].value == "append (the table was empty)"
    assert event.materialization.metadata["duplicate_ids"].value == 1


def test_postgres_instance_storage_holds_the_run_and_its_events(
    workspace: Workspace, simulator: CRMSimulator, pg_dataset: str, pg_instance_db: str
) -> None:
    """The production set-up end to end: deploy/postgres/dagster.yaml as the instance, the
    warehouse in PostgreSQL too, one sync from the CLI."""
    shutil.copy(REPO_ROOT / "deploy" / "postgres" / "dagster.yaml", workspace.dagster_home)
    # `+psycopg2`: see deploy/postgres/dagster.yaml.
    url = pg_instance_db.replace("postgresql://", "postgresql+psycopg2://", 1)
    env = clean_env(**workspace.env, DAGSTER_PG_URL=url)
    done = dagster_cli("asset", "materialize", "-m", "crm_assets", "--select", "*", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in resource_names():
        assert table_counts(pg_dataset, name) == (simulator.count(name),) * 2, name

    runs = query("SELECT run_id, status FROM runs", pg_instance_db)
    assert [status for _, status in runs] == ["SUCCESS"]
    ((run_id, _),) = runs
    events = dict(
        query(
            sql.SQL(
                "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = {} "
                "GROUP BY dagster_event_type"
            ).format(sql.Literal(run_id)),
            pg_instance_db,
        )
    )
    # Run events keep their historical names in storage (DagsterEventType.RUN_START.value).
    assert events[DagsterEventType.RUN_START.value] == 1
    assert events[DagsterEventType.RUN_SUCCESS.value] == 1
    assert events["ASSET_MATERIALIZATION"] == len(resource_names())
    keys = {
        row[0]
        for row in query(
            "SELECT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'",
            pg_instance_db,
        )
    }
    assert keys == {f'["crm", "{name}"]' for name in resource_names()}
    # Nothing went to a local SQLite instance instead.
    assert not (workspace.dagster_home / "history").exists()
