"""`crm-demo`: sync all five resources from the bundled CRM simulator and show what landed.

It starts the simulator on a free port, runs the real `dagster asset materialize` CLI against it
with throwaway demo secrets, and prints one progress line per resource, the checks' outcome and
rows per table of the DuckDB warehouse. The CLI's whole output (Dagster's DEBUG run log, some
hundred lines) goes to a file next to the warehouse instead of the terminal. The warehouse and
Dagster's run history stay in the repo (`data/`, `.dagster_home/`), so `dagster dev` shows the run.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import duckdb

from crm_assets.api import resource_names
from crm_assets.resources import DEFAULT_DUCKDB_PATH, REPO_ROOT
from crm_simulator import DEFAULT_COUNTS, CRMSimulator

DEMO_API_KEY = "demo-api-key"
DEMO_ACCESS_KEY = "demo-access-key"
LOG_NAME = "demo-run.log"

# The lines of Dagster's run log worth showing, matched on the message at the end of the line
# ("<time> - dagster - INFO - <job> - <run id> - <step> - <message>"). The first two are the
# source's own log lines (crm_assets/source.py), the third Dagster's check event.
PROGRESS = re.compile(r" - (?P<text>\w+: [\d,]+ pages?, [\d,]+(?:/[\d,]+)? records fetched)$")
STOPPED = re.compile(r" - (?P<text>\w+: extraction stopped: .*)$")
CHECK = re.compile(
    r"ASSET_CHECK_EVALUATION - Asset check '(?P<check>\w+)' on '(?P<asset>[^']+)' "
    r"(?P<outcome>passed|did not pass)\.(?: Description: '(?P<why>.*)')?$"
)
# The last line of a Python traceback, `package.module.SomeError: what happened`, as Dagster
# prints a failed step's error; the module path is dropped when shown.
EXCEPTION = re.compile(r"^(?:[a-z_]\w*\.)*(?P<text>[A-Z]\w*: \S.*)$")
# The CLI's own closing line says only that something failed, not what.
GENERIC = re.compile(r"^Error: Materialization failed\.?$")


@dataclass
class RunReport:
    """What the demo picked out of the CLI's output while copying all of it to the log."""

    checks_passed: int = 0
    checks_failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    def error_summary(self, limit: int = 3) -> list[str]:
        """The last few distinct error lines; the end of the output if none was recognised."""
        lines = list(dict.fromkeys(self.errors)) or [line for line in self.tail if line.strip()]
        return lines[-limit:]


def follow(lines: Iterable[str], log: TextIO, out: TextIO) -> RunReport:
    """Copy every line of the CLI's output to `log`; show progress and stopped resources on `out`
    as they happen, and keep the rest that the summary needs."""
    report = RunReport()
    for raw in lines:
        log.write(raw)
        line = raw.rstrip("\n")
        report.tail = [*report.tail[-9:], line]
        if match := PROGRESS.search(line):
            print(f"  {match['text']}", file=out, flush=True)
        elif match := STOPPED.search(line):
            print(f"  ! {match['text']}", file=out, flush=True)
            report.errors.append(match["text"])
        elif match := CHECK.search(line):
            if match["outcome"] == "passed":
                report.checks_passed += 1
            else:
                why = f": {match['why']}" if match["why"] else ""
                report.checks_failed.append(f"{match['asset']}:{match['check']}{why}")
        elif (match := EXCEPTION.match(line)) and not GENERIC.match(line):
            report.errors.append(match["text"])
    return report


def run_cli(
    command: Sequence[str], env: Mapping[str, str], log_path: Path, out: TextIO = sys.stdout
) -> tuple[int, RunReport]:
    """Run `command` from the repo root with stdout and stderr, interleaved as a terminal would
    show them, going to `log_path`; returns its exit code and what `follow` picked out."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "w", encoding="utf-8") as log,
        subprocess.Popen(
            list(command),
            env={**env, "PYTHONUNBUFFERED": "1"},  # progress lines as they happen, not at exit
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
        ) as proc,
    ):
        assert proc.stdout is not None
        report = follow(proc.stdout, log, out)
    return proc.returncode, report


def warehouse_summary(path: Path, dataset: str = "crm") -> list[tuple[str, int]]:
    """Rows per CRM table in the DuckDB file at `path`."""
    with duckdb.connect(str(path), read_only=True) as con:
        return [
            (name, con.execute(f'SELECT count(*) FROM {dataset}."{name}"').fetchone()[0])
            for name in resource_names()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crm-demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the simulator's default record counts"
    )
    parser.add_argument(
        "--log",
        type=Path,
        help=f"where the CLI's full output goes (default: {LOG_NAME} next to the warehouse)",
    )
    args = parser.parse_args(argv)

    duckdb_path = Path(os.environ.get("CRM_DUCKDB_PATH") or DEFAULT_DUCKDB_PATH)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home")
    dagster_home.mkdir(parents=True, exist_ok=True)
    log_path = (args.log or duckdb_path.with_name(LOG_NAME)).resolve()
    counts = {name: round(n * args.scale) for name, n in DEFAULT_COUNTS.items()}
    with CRMSimulator(counts, api_key=DEMO_API_KEY, access_key=DEMO_ACCESS_KEY) as simulator:
        print(
            f"CRM simulator at {simulator.base_url}: "
            + ", ".join(f"{n} {k}" for k, n in counts.items()),
            flush=True,
        )
        env = {
            **os.environ,
            "CRM_BASE_URL": simulator.base_url,
            "CRM_API_KEY": DEMO_API_KEY,
            "CRM_ACCESS_KEY": DEMO_ACCESS_KEY,
            "CRM_DUCKDB_PATH": str(duckdb_path),
            "DAGSTER_HOME": str(dagster_home),
        }
        command = [
            str(Path(sys.executable).with_name("dagster")),
            "asset",
            "materialize",
            "-m",
            "crm_assets",
            "--select",
            "*",
        ]
        print("$ " + shlex.join(["dagster", *command[1:]]), flush=True)
        started = time.monotonic()
        returncode, report = run_cli(command, env, log_path)
        seconds = time.monotonic() - started
        if returncode != 0:
            sys.stdout.flush()
            lines = [
                f"crm-demo: the sync failed (exit {returncode}) after {seconds:.1f} s:",
                *(f"  {line}" for line in report.error_summary()),
                f"Full run log: {log_path}",
            ]
            print("\n".join(lines), file=sys.stderr, flush=True)
            return returncode
        expected = {name: simulator.count(name) for name in resource_names()}
    checks = f"{report.checks_passed} checks passed"
    if report.checks_failed:
        checks += f", {len(report.checks_failed)} did not"
    print(f"Synced in {seconds:.1f} s; {checks}.")
    for failed in report.checks_failed:
        print(f"  ! {failed}")
    print(f"Full run log: {log_path}")
    summary = warehouse_summary(duckdb_path)
    width = max(len("crm." + name) for name, _ in summary) + 2
    print(f"\nWarehouse {duckdb_path} (dataset crm):")
    print(f"  {'table':<{width}}{'rows':>8}{'in CRM':>10}")
    for name, rows in summary:
        print(f"  {'crm.' + name:<{width}}{rows:>8,}{expected[name]:>10,}")
    print(
        '\nQuery it:\n  .venv/bin/python -c "import duckdb; print(duckdb.connect('
        f"'{duckdb_path}', read_only=True).sql('SELECT * FROM crm.customers LIMIT 5'))\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
