"""Helpers shared by the fault, isolation, crash and secret tests.

Running the CLI, reading the warehouse and looking for secrets live in
`crm_simulator.drill_support` (the fault drill uses them too); the in-process runs and the
instance summaries below are for the tests only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from crm_assets.api import CRM_API, resource_names
from crm_assets_tests.conftest import sync_in_process
from crm_simulator.drill_support import (
    DAGSTER_EXE,
    MATERIALIZE_ALL,
    REPO_ROOT,
    TRANSIENT_KINDS,
    LeakReport,
    all_run_ids,
    cli_env,
    count_secrets,
    duplicates,
    leak_report,
    open_instance,
    run_cli,
    run_event_dump,
    scan_duckdb,
    scan_files,
    table_ids,
    transient_rates,
)

__all__ = [
    "DAGSTER_EXE",
    "MATERIALIZE_ALL",
    "REPO_ROOT",
    "TRANSIENT_KINDS",
    "LeakReport",
    "ScriptedServer",
    "all_run_ids",
    "cli_env",
    "count_secrets",
    "duplicates",
    "expected_counts",
    "leak_report",
    "materialize_all",
    "open_instance",
    "run_cli",
    "run_event_dump",
    "run_summaries",
    "scan_duckdb",
    "scan_files",
    "step_failure_message",
    "step_failure_messages",
    "table_ids",
    "transient_rates",
]


def step_failure_messages(dagster_home: Path, run_id: str | None = None) -> list[str]:
    """The error messages of a run's failed steps, as stored in the instance."""

    with open_instance(dagster_home) as instance:
        if run_id is None:
            run_id = instance.get_runs(limit=1)[0].run_id
        messages = []
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is not None and event.event_type_value == "STEP_FAILURE":
                messages.append(event.step_failure_data.error.message)
        return messages


def expected_counts(simulator: Any) -> dict[str, int]:
    return {name: simulator.count(name) for name in resource_names()}


def materialize_all(selection: list[str] | None = None) -> Any:
    """The definitions' assets materialized in this process, on the instance of DAGSTER_HOME."""
    return sync_in_process(selection)


def step_failure_message(result: Any) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.step_failure_data.error.message


def run_summaries(dagster_home: Path) -> list[dict[str, Any]]:
    """Per run (oldest first): the outcome of each step, the assets materialized and the
    messages logged by user code, all of them and per step."""
    summaries = []
    with open_instance(dagster_home) as instance:
        for run in reversed(instance.get_runs()):
            steps: dict[str, str] = {}
            assets: list[str] = []
            messages: list[str] = []
            by_step: dict[str, list[str]] = {}
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None:
                    messages.append(entry.user_message or "")
                    by_step.setdefault(entry.step_key or "", []).append(entry.user_message or "")
                elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                    steps[event.step_key or ""] = event.event_type_value
                elif event.event_type_value == "ASSET_MATERIALIZATION":
                    assets.append(event.asset_key.path[-1])
            summaries.append(
                {
                    "run_id": run.run_id,
                    "steps": steps,
                    "assets": assets,
                    "messages": messages,
                    "step_messages": by_step,
                }
            )
    return summaries


# path -> status, headers, body
Answer = Callable[[str], tuple[int, dict[str, str], bytes]]


def endpoint_of(resource: str) -> dict[str, Any]:
    """The endpoint of `resource` in CRM_API, as the sync pages it."""
    return next(r for r in CRM_API["resources"] if r["name"] == resource)["endpoint"]


class ListLog:
    """A logger (the client's, a lock's) that keeps its lines, for a test to read."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: object) -> None:
        self.lines.append(msg)

    def warning(self, msg: str, *args: object) -> None:
        self.lines.append(msg)


class ScriptedServer(ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 answering each GET with `answer(path)`, for what the
    simulator does not do; it keeps every request it got (request line and headers) in `seen`.
    Use it as a context manager."""

    def __init__(self, answer: Answer) -> None:
        self.seen: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.seen.append(f"GET {self.path}\n{self.headers}")
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
