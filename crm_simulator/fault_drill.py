"""Fault drill: full syncs through the real `dagster` CLI against a faulty CRM simulator.

    crm-fault-drill [--rate 0.3] [--scale 1] [--seed 7]
    python -m crm_simulator.fault_drill [--rate 0.3] [--scale 1] [--seed 7]

Each scenario runs `dagster asset materialize -m crm_assets --select '*'` in a fresh workspace
(its own DuckDB file, dlt pipelines folder and DAGSTER_HOME) with distinctive secrets, then
counts what the warehouse holds against what the simulator serves, the duplicate ids, and every
occurrence of either secret in the CLI's output, in every event of the instance, in every file
under DAGSTER_HOME and the pipelines folder, and in the DuckDB file. The failure scenarios (wrong
API key, nothing listening) run after a good sync in the same workspace: the warehouse must keep
that sync's rows.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crm_assets.api import resource_names
from crm_simulator.drill_support import (
    TRANSIENT_KINDS,
    cli_env,
    duplicates,
    leak_report,
    run_cli,
    table_ids,
    transient_rates,
)
from crm_simulator.faults import Faults
from crm_simulator.server import CRMSimulator

API_KEY = "sk-live-APIKEY-7f3a9c1e5b"
ACCESS_KEY = "ak-ACCESSKEY-4d8e2f6a0c"
BASE_COUNTS = {"customers": 250, "contacts": 431, "cases": 120, "leads": 309, "opportunities": 205}
MALFORMED_KINDS = ("not_json", "no_data", "data_not_list")


@dataclass
class DrillRow:
    scenario: str
    faults: dict[str, int]
    expected: int
    loaded: int
    duplicate_ids: int
    secrets: int
    exit_code: int
    expect_success: bool

    @property
    def ok(self) -> bool:
        return (
            self.loaded == self.expected
            and self.duplicate_ids == 0
            and self.secrets == 0
            and (self.exit_code == 0) == self.expect_success
        )


@dataclass
class _Workspace:
    root: Path

    @property
    def duckdb_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def pipelines_dir(self) -> Path:
        return self.root / "pipelines"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    def env(self, base_url: str, location: str) -> dict[str, str]:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        return cli_env(
            {
                "CRM_BASE_URL": base_url,
                "CRM_API_KEY": API_KEY,
                "CRM_ACCESS_KEY": ACCESS_KEY,
                "CRM_ACCESS_KEY_LOCATION": location,
                "CRM_ACCESS_KEY_NAME": "access_key" if location == "query" else "X-Access-Key",
                "CRM_DUCKDB_PATH": str(self.duckdb_path),
                "CRM_PIPELINES_DIR": str(self.pipelines_dir),
                "DAGSTER_HOME": str(self.dagster_home),
                "CRM_REQUEST_BACKOFF": "0.01",
                "CRM_REQUEST_MAX_BACKOFF": "0.2",
                "CRM_REQUEST_MAX_ATTEMPTS": "12",
            }
        )


def _counts(scale: float) -> dict[str, int]:
    return {name: max(1, round(n * scale)) for name, n in BASE_COUNTS.items()}


@contextmanager
def _simulator(scale: float, location: str, faults: Faults) -> Iterator[CRMSimulator]:
    with CRMSimulator(
        _counts(scale),
        api_key=API_KEY,
        access_key=ACCESS_KEY,
        access_key_location=location,
        access_key_name="access_key" if location == "query" else "X-Access-Key",
        faults=faults,
    ) as sim:
        yield sim


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(
    scenario: str,
    ws: _Workspace,
    sim: CRMSimulator,
    output: str,
    exit_code: int,
    expect_success: bool,
    kinds: tuple[str, ...],
) -> DrillRow:
    injected = sim.faults_injected()
    loaded = [table_ids(ws.duckdb_path, name) for name in resource_names()]
    leaks = leak_report(
        (API_KEY, ACCESS_KEY),
        output=output,
        dagster_home=ws.dagster_home,
        pipelines_dir=ws.pipelines_dir,
        duckdb_path=ws.duckdb_path,
    )
    return DrillRow(
        scenario=scenario,
        faults={k: injected.get(k, 0) for k in kinds},
        expected=sum(sim.count(name) for name in resource_names()),
        loaded=sum(len(ids) for ids in loaded),
        duplicate_ids=sum(duplicates(ids) for ids in loaded),
        secrets=leaks.total,
        exit_code=exit_code,
        expect_success=expect_success,
    )


def run_drill(
    rate: float = 0.3,
    scale: float = 1.0,
    seed: int = 7,
    root: Path | None = None,
    say: Callable[[str], None] = print,
    locations: tuple[str, ...] = ("header", "query"),
) -> list[DrillRow]:
    """Run every scenario and return one row each (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="crm-fault-drill-")) if root is None else root
    rows: list[DrillRow] = []
    transient = transient_rates(rate)
    # Slow responses take twice the drill's read timeout (cli_env sets 0.5 s): they time out.
    slow = {"slow_seconds": 1.0}

    for location in locations:
        ws = _Workspace(root / f"transient-{location}")
        faults = Faults(seed=seed, **transient, **slow)
        with _simulator(scale, location, faults) as sim:
            say(f"transient faults at {rate:.0%}, access key in the {location} ...")
            done = run_cli(ws.env(sim.base_url, location))
            rows.append(
                _measure(
                    f"transient 429/5xx/drop/slow, key in {location}",
                    ws,
                    sim,
                    done.stdout + done.stderr,
                    done.returncode,
                    True,
                    TRANSIENT_KINDS,
                )
            )
            if location != "header":
                continue
            # The same warehouse, now with a wrong API key, then with nothing listening: both
            # fail, and the rows of the good sync above stay as they were.
            sim.faults = Faults()
            sim.reset_requests()
            say("wrong API key (401) after a good sync ...")
            env = ws.env(sim.base_url, location)
            env["CRM_API_KEY"] = "wrong-" + API_KEY  # contains the real one: a leak would show
            done = run_cli(env)
            rows.append(
                _measure(
                    "401 wrong API key, after a good sync",
                    ws,
                    sim,
                    done.stdout + done.stderr,
                    done.returncode,
                    False,
                    (),
                )
            )
            say("connection refused after a good sync ...")
            done = run_cli(ws.env(f"http://127.0.0.1:{_free_port()}", location))
            rows.append(
                _measure(
                    "connection refused, after a good sync",
                    ws,
                    sim,
                    done.stdout + done.stderr,
                    done.returncode,
                    False,
                    (),
                )
            )

    ws = _Workspace(root / "malformed")
    malformed = {f"rate_{kind}": rate / len(MALFORMED_KINDS) for kind in MALFORMED_KINDS}
    with _simulator(scale, "header", Faults(seed=seed, **malformed, rate_no_total=rate)) as sim:
        say(f"malformed pages and missing totals at {rate:.0%} ...")
        done = run_cli(ws.env(sim.base_url, "header"))
        rows.append(
            _measure(
                "not JSON / no data / data not a list / no total",
                ws,
                sim,
                done.stdout + done.stderr,
                done.returncode,
                True,
                (*MALFORMED_KINDS, "no_total"),
            )
        )

    ws = _Workspace(root / "inserts")
    faults = Faults(seed=seed, **transient, insert_during_paging=2)
    with _simulator(scale, "header", faults) as sim:
        say("records inserted while paging, then a catch-up sync ...")
        first = run_cli(ws.env(sim.base_url, "header"))
        injected = sim.faults_injected()
        sim.faults = Faults()
        done = run_cli(ws.env(sim.base_url, "header"))
        row = _measure(
            f"inserts while paging + {rate:.0%} transient, then catch-up",
            ws,
            sim,
            first.stdout + first.stderr + done.stdout + done.stderr,
            max(first.returncode, done.returncode),
            True,
            (),
        )
        row.faults = {"inserted": injected["inserted"], **{k: injected[k] for k in TRANSIENT_KINDS}}
        rows.append(row)
    return rows


def format_table(rows: list[DrillRow]) -> str:
    header = (
        "scenario",
        "faults injected",
        "records expected",
        "records loaded",
        "duplicate ids",
        "secret occurrences",
        "exit",
        "ok",
    )
    lines = [header]
    for r in rows:
        faults = " ".join(f"{k}:{v}" for k, v in r.faults.items()) or "-"
        total = sum(r.faults.values())
        lines.append(
            (
                r.scenario,
                f"{total} ({faults})" if r.faults else "-",
                str(r.expected),
                str(r.loaded),
                str(r.duplicate_ids),
                str(r.secrets),
                str(r.exit_code),
                "yes" if r.ok else "NO",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.3, help="fraction of requests faulted")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the record counts")
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulator's faults")
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = run_drill(args.rate, args.scale, args.seed, say=lambda m: print(m, file=sys.stderr))
    print(format_table(rows))
    print(f"\n{len(rows)} scenarios in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
