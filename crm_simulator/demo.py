"""`crm-demo`: sync all five resources from the bundled CRM simulator and show what landed.

It starts the simulator on a free port, runs the real `dagster asset materialize` CLI against it
with throwaway demo secrets, and prints rows per table of the DuckDB warehouse. The warehouse and
Dagster's run history stay in the repo (`data/`, `.dagster_home/`), so `dagster dev` shows the run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from crm_assets.api import resource_names
from crm_assets.resources import DEFAULT_DUCKDB_PATH, REPO_ROOT
from crm_simulator import DEFAULT_COUNTS, CRMSimulator

DEMO_API_KEY = "demo-api-key"
DEMO_ACCESS_KEY = "demo-access-key"


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
    args = parser.parse_args(argv)

    duckdb_path = Path(os.environ.get("CRM_DUCKDB_PATH") or DEFAULT_DUCKDB_PATH)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home")
    dagster_home.mkdir(parents=True, exist_ok=True)
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
        print("$ " + " ".join(command[1:]), flush=True)
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, check=False)
        if done.returncode != 0:
            print(
                f"crm-demo: the sync failed (exit {done.returncode}); see the log above",
                file=sys.stderr,
            )
            return done.returncode
        expected = {name: simulator.count(name) for name in resource_names()}
    print(f"\nWarehouse {duckdb_path} (dataset crm):")
    print(f"  {'table':<16}{'rows':>10}{'in CRM':>10}")
    for name, rows in warehouse_summary(duckdb_path):
        print(f"  {'crm.' + name:<16}{rows:>10,}{expected[name]:>10,}")
    print(
        '\nQuery it:\n  .venv/bin/python -c "import duckdb; print(duckdb.connect('
        f"'{duckdb_path}', read_only=True).sql('SELECT * FROM crm.customers LIMIT 5'))\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
