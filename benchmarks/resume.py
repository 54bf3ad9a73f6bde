"""Resume after kill -9: a first sync of 1,000,000 records killed at about 80%, then a rerun.

    .venv/bin/python benchmarks/resume.py [--records 1000000] [--kill-at 0.8] [--profile crm]

The simulator runs in this process (its request log is what is counted); the sync is the real
`dagster asset materialize -m crm_assets --select '*'` with the project's default settings but
100,000-record chunks (`CHUNK_RECORDS`), in its own process group. Once the simulator has served
`--kill-at` of the pages, the group gets SIGKILL. While the first sync runs, records are inserted
(appended, as a CRM's new records are); between the kill and the rerun, records are deleted from
the part already loaded, which shifts the offsets of everything after them. The rerun must then
load every record the CRM serves (and keep the deleted ones: only a complete read marks deletes),
no id twice, and ask for at most a third of the pages again. The counts are checked by run.py's
`verify_counts` (exact rows, no duplicate and no null id).

Results go to `benchmarks/results/resume.md` and `resume.json` (or `--results-dir`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run import verify_counts  # benchmarks/run.py: exact rows, distinct and non-null ids

from crm_simulator import CRMSimulator

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGSTER = str(Path(sys.executable).with_name("dagster"))
API_KEY = "bench-api-key"
ACCESS_KEY = "bench-access-key"
RESOURCES = ("customers", "contacts", "cases", "leads", "opportunities")
CASES = 2_000
INSERTED = 1_000  # customers added while the first sync runs
DELETED = 50  # contacts deleted between the kill and the rerun, all in the part loaded first
CHUNK_RECORDS = 100_000  # records per chunk (CRM_CHUNK_RECORDS) in these runs


def counts_for(records: int) -> dict[str, int]:
    each = (records - CASES) // 4
    counts = dict.fromkeys(RESOURCES, each)
    counts["cases"] = CASES
    counts["customers"] += records - CASES - 4 * each
    return counts


def pages_of(counts: dict[str, int]) -> int:
    return sum(1 if name == "cases" else math.ceil(n / 100) for name, n in counts.items())


def rows_of(found: dict[str, Any]) -> dict[str, int]:
    """Rows per table in `verify_counts`' answer (a table not created yet has none)."""
    return {name: t["rows"] if isinstance(t, dict) else 0 for name, t in found.items()}


def sync(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [DAGSTER, "asset", "materialize", "-m", "crm_assets", "--select", "*"],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the CLI and its step process, killed together
        )


def page_requests(sim: CRMSimulator) -> int:
    return sum(1 for r in sim.requests() if r.path.startswith("/v1/"))


def run(records: int, kill_at: float, profile: str, work: Path) -> dict[str, Any]:
    counts = counts_for(records)
    pages = pages_of(counts)
    report: dict[str, Any] = {
        "records": records,
        "pages": pages,
        "profile": profile,
        "kill_at": kill_at,
        "load_average": os.getloadavg(),
    }
    with CRMSimulator(counts, api_key=API_KEY, access_key=ACCESS_KEY, profile=profile) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_", "DAGSTER_"))}
        home = work / "dagster_home"
        home.mkdir()
        db = work / "warehouse.duckdb"
        env.update(
            CRM_BASE_URL=sim.base_url,
            CRM_API_KEY=API_KEY,
            CRM_ACCESS_KEY=ACCESS_KEY,
            CRM_DUCKDB_PATH=str(db),
            CRM_PIPELINES_DIR=str(work / "pipelines"),
            DAGSTER_HOME=str(home),
            # The chunk size the figures in results/resume.md were measured with; with the
            # default (400,000) a kill at 80% of 1,000,000 records may fall before the second
            # chunk has landed.
            CRM_CHUNK_RECORDS=str(CHUNK_RECORDS),
        )
        started = time.monotonic()
        first = sync(env, work / "first.log")
        inserted = threading.Event()
        while page_requests(sim) < kill_at * pages:
            if first.poll() is not None:
                raise RuntimeError(f"the first sync ended before the kill: see {work}/first.log")
            if not inserted.is_set() and page_requests(sim) >= 0.4 * pages:
                sim.insert_records("customers", INSERTED)
                inserted.set()
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        landed = rows_of(verify_counts(db, counts)[1])
        report["first_sync"] = {
            "killed_after_s": round(time.monotonic() - started, 1),
            "pages_served": page_requests(sim),
            "landed": landed,
            "records_landed": sum(landed.values()),
        }
        # Deleted from the part loaded: every offset after them moves back.
        loaded_contacts = landed["contacts"]
        ids = sim.ids("contacts")[: max(0, loaded_contacts - 1)]
        gone = sim.delete_records("contacts", ids[:: max(1, len(ids) // DELETED)][:DELETED])
        sim.reset_requests()
        started = time.monotonic()
        rerun = sync(env, work / "rerun.log")
        code = rerun.wait()
        served = {name: sim.count(name) for name in RESOURCES}
        expected = {**served, "contacts": served["contacts"] + len(gone)}
        exact, found = verify_counts(db, expected)
        report["rerun"] = {
            "exit_code": code,
            "seconds": round(time.monotonic() - started, 1),
            "pages_requested": page_requests(sim),
            "share_of_pages": round(page_requests(sim) / pages, 3),
            "warehouse": found,
            "expected": expected,
        }
    report["inserted_during_first_sync"] = INSERTED
    report["deleted_before_rerun"] = len(gone)
    report["exact"] = exact
    report["at_most_a_third"] = report["rerun"]["share_of_pages"] <= 1 / 3
    report["ok"] = code == 0 and report["exact"] and report["at_most_a_third"]
    return report


def to_markdown(report: dict[str, Any]) -> str:
    first, rerun = report["first_sync"], report["rerun"]
    lines = [
        "# Resume after kill -9",
        "",
        f"{report['when']}, {report['machine']}, load average at start "
        + ", ".join(f"{x:.2f}" for x in report["load_average"]),
        "",
        f"- {report['records']:,} records ({report['profile']} profile), {report['pages']:,} "
        f"pages, CRM_CHUNK_RECORDS {CHUNK_RECORDS}, other settings default.",
        f"- First sync: SIGKILL after {first['killed_after_s']} s, once {first['pages_served']:,} "
        f"pages ({first['pages_served'] / report['pages']:.0%}) were served; "
        f"{first['records_landed']:,} records had landed. {report['inserted_during_first_sync']:,} "
        "customers were inserted while it ran.",
        f"- Before the rerun, {report['deleted_before_rerun']} contacts were deleted from the part "
        "already loaded (every offset after them moved back).",
        f"- Rerun: exit {rerun['exit_code']} in {rerun['seconds']} s, "
        f"{rerun['pages_requested']:,} page requests = {rerun['share_of_pages']:.1%} of a full "
        "read (target: at most 33.3%).",
        "",
        "| table | rows | distinct ids | expected |",
        "|---|---|---|---|",
    ]
    for name in RESOURCES:
        found = rerun["warehouse"][name]
        if not isinstance(found, dict):  # the table is missing: verify_counts says why
            lines.append(f"| {name} | {found} | - | {rerun['expected'][name]:,} |")
            continue
        lines.append(
            f"| {name} | {found['rows']:,} | {found['distinct_ids']:,} | "
            f"{rerun['expected'][name]:,} |"
        )
    lines += [
        "",
        "Expected: every record the CRM serves after the rerun, plus the deleted contacts "
        "(loaded before their deletion; only a complete read marks deletes).",
        "",
        f"Exact: {report['exact']}. At most a third of the pages again: "
        f"{report['at_most_a_third']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--kill-at", type=float, default=0.8)
    parser.add_argument("--profile", default="crm")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crm-resume-") as tmp:
        report = run(args.records, args.kill_at, args.profile, Path(tmp))
    report["when"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report["machine"] = f"{os.cpu_count()} cores, {platform.python_version()}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "resume.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    (args.results_dir / "resume.md").write_text(markdown)
    print(markdown)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
