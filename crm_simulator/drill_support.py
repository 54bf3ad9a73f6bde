"""Running a sync through the `dagster` CLI and looking at what it left behind.

Used by the fault drill (`crm-fault-drill`) and by the project's tests. Everything here looks at
real artefacts: the DuckDB file, every file a run leaves behind, and every event the Dagster
instance stored for a run. Nothing here imports the definitions.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import subprocess
import sys
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

# The folder holding crm_assets and crm_simulator (the checkout, in an editable install): the
# CLI runs there, so `-m crm_assets` loads the same code as this process.
REPO_ROOT = Path(__file__).resolve().parent.parent
DAGSTER_EXE = Path(sys.executable).with_name("dagster")
MATERIALIZE_ALL = ("asset", "materialize", "-m", "crm_assets", "--select", "*")

# Every transient kind the simulator can inject, at equal shares of a total rate.
TRANSIENT_KINDS = ("429", "500", "502", "503", "504", "drop", "slow")


def transient_rates(total: float) -> dict[str, float]:
    """`Faults` keyword arguments spreading `total` evenly over the transient kinds."""
    share = total / len(TRANSIENT_KINDS)
    return {f"rate_{kind}": share for kind in TRANSIENT_KINDS}


def cli_env(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment for a CLI run: this process's, minus any CRM_* setting, plus `base`.

    Retries are bounded low so that a run provoking failures ends quickly; the read timeout is
    short so that the simulator's slow responses do time out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        CRM_REQUEST_MAX_ATTEMPTS="8",
        CRM_REQUEST_TIMEOUT="0.5",
        CRM_CONNECT_TIMEOUT="2",
    )
    env.update(base)
    env.update(extra)
    return env


def run_cli(
    env: Mapping[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`dagster asset materialize -m crm_assets --select '*'` (or `args`) as a user runs it."""
    return subprocess.run(
        [str(DAGSTER_EXE), *(args or MATERIALIZE_ALL)],
        env=dict(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- the warehouse -------------------------------------------------------------------------------


def table_ids(duckdb_path: Path, table: str) -> list[int]:
    """Every id in `crm.<table>` (an empty list when the table or the file does not exist)."""
    if not duckdb_path.exists():
        return []
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'crm' AND table_name = ?",
            [table],
        ).fetchone()[0]
        if not exists:
            return []
        return [r[0] for r in con.execute(f'SELECT id FROM crm."{table}" ORDER BY id').fetchall()]


def duplicates(ids: list[int]) -> int:
    return len(ids) - len(set(ids))


# -- secrets -------------------------------------------------------------------------------------


def count_secrets(data: bytes | str, secrets: Iterable[str]) -> int:
    """Occurrences of any secret in `data`, also inside gzip/zlib/base64+zlib payloads (dlt
    compresses load files and the pipeline state it stores in the destination)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    blobs = [raw]
    unpackers = (gzip.decompress, zlib.decompress, lambda b: zlib.decompress(base64.b64decode(b)))
    for unpack in unpackers:
        # Not that encoding: nothing more to look into.
        with contextlib.suppress(Exception):
            blobs.append(unpack(raw))
    return sum(blob.count(s.encode()) for blob in blobs for s in secrets)


def scan_files(roots: Iterable[Path], secrets: Iterable[str]) -> dict[str, int]:
    """Files under `roots` holding a secret, with the number of occurrences."""
    secrets = tuple(secrets)
    found: dict[str, int] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            hits = count_secrets(path.read_bytes(), secrets)
            if hits:
                found[str(path)] = hits
    return found


def scan_duckdb(duckdb_path: Path, secrets: Iterable[str]) -> dict[str, int]:
    """Text cells of every table (including dlt's own, whose state column is compressed) that
    hold a secret. The raw file is scanned too, by `scan_files`; this sees through DuckDB's
    string compression."""
    secrets = tuple(secrets)
    found: dict[str, int] = {}
    if not duckdb_path.exists():
        return found
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        columns = con.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE data_type IN ('VARCHAR', 'JSON', 'BLOB')"
        ).fetchall()
        for schema, table, column in columns:
            values = con.execute(f'SELECT "{column}" FROM "{schema}"."{table}"').fetchall()
            hits = sum(count_secrets(v[0], secrets) for v in values if v[0] is not None)
            if hits:
                found[f"{schema}.{table}.{column}"] = hits
    return found


def open_instance(dagster_home: Path) -> Any:
    """The instance a CLI run with this DAGSTER_HOME used (an empty dagster.yaml makes its
    defaults explicit and keeps Dagster from warning about it on every open)."""
    from dagster import DagsterInstance

    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("")
    return DagsterInstance.from_config(str(dagster_home))


def run_event_dump(dagster_home: Path, run_id: str | None = None) -> list[tuple[str, str]]:
    """Every stored event of a run (the latest one by default), serialized the way Dagster stores
    it: messages, metadata, errors with their causes, contexts and stack traces."""
    from dagster import serialize_value

    with open_instance(dagster_home) as instance:
        if run_id is None:
            runs = instance.get_runs(limit=1)
            if not runs:
                return []
            run_id = runs[0].run_id
        return [
            (entry.dagster_event_type or "LOG", serialize_value(entry))
            for entry in instance.all_logs(run_id)
        ]


def all_run_ids(dagster_home: Path) -> list[str]:
    with open_instance(dagster_home) as instance:
        return [r.run_id for r in instance.get_runs()]


@dataclass
class LeakReport:
    """Where the secrets were found after a run; empty when nothing leaked."""

    output: int = 0
    events: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    warehouse: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return (
            self.output
            + sum(self.events.values())
            + sum(self.files.values())
            + sum(self.warehouse.values())
        )


def leak_report(
    secrets: Iterable[str],
    *,
    output: str = "",
    dagster_home: Path,
    pipelines_dir: Path,
    duckdb_path: Path,
    extra_texts: Iterable[str] = (),
) -> LeakReport:
    """Look for the secrets in a run's output, in every event of every run in the instance, in
    every file under DAGSTER_HOME and the pipelines dir, and in the DuckDB file."""
    secrets = tuple(secrets)
    report = LeakReport(output=count_secrets(output, secrets))
    report.output += sum(count_secrets(t, secrets) for t in extra_texts)
    for run_id in all_run_ids(dagster_home):
        for i, (kind, text) in enumerate(run_event_dump(dagster_home, run_id)):
            hits = count_secrets(text, secrets)
            if hits:
                report.events[f"{run_id[:8]}#{i} {kind}"] = hits
    roots = [p for p in (dagster_home, pipelines_dir, duckdb_path) if p.exists()]
    wal = duckdb_path.with_name(duckdb_path.name + ".wal")
    if wal.exists():
        roots.append(wal)
    report.files = scan_files(roots, secrets)
    report.warehouse = scan_duckdb(duckdb_path, secrets)
    return report
