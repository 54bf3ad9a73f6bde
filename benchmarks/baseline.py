"""Run (a) of the benchmark: the seed's `SEED_API` through plain dlt with default settings.

This is what a user would write with the seed's config: `rest_api_source(SEED_API)` into DuckDB,
nothing tuned (default loader file format, no workers, dlt's own REST client, no schema hints).
Only the run-time values are set, on a deep copy: the base URL, the api key and the access-key
header. Nothing else is added: no declared columns and no incremental filter, so every request
carries only the parameters the seed names (the api key and, on paged resources, `startIndex`
and `limit`). Without column hints dlt infers every type from the data and unnests nested values
into child tables, which is its default behaviour for this config.

Usage (the runner calls it): python benchmarks/baseline.py DUCKDB_PATH PIPELINES_DIR
with CRM_BASE_URL, CRM_API_KEY and CRM_ACCESS_KEY in the environment. Prints one JSON line.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any


def baseline_config(base_url: str, api_key: str, access_key: str) -> Any:
    """`SEED_API` with only the run-time values filled in."""
    from crm_assets.api import SEED_API

    config: Any = copy.deepcopy(SEED_API)
    config["client"]["base_url"] = base_url
    config["client"]["auth"]["api_key"] = api_key
    # A header, not a query parameter: the seed's requests keep exactly their parameters.
    config["client"]["headers"] = {"X-Access-Key": access_key}
    return config


def main(argv: list[str]) -> int:
    duckdb_path, pipelines_dir = argv[1], argv[2]
    started = time.monotonic()
    import dlt
    from dlt.sources.rest_api import rest_api_source

    config = baseline_config(
        os.environ["CRM_BASE_URL"], os.environ["CRM_API_KEY"], os.environ["CRM_ACCESS_KEY"]
    )
    pipeline = dlt.pipeline(
        pipeline_name="crm_baseline",
        destination=dlt.destinations.duckdb(duckdb_path),
        dataset_name="crm",
        pipelines_dir=pipelines_dir,
    )
    pipeline.run(rest_api_source(config))
    steps = {
        step.step: round((step.finished_at - step.started_at).total_seconds(), 2)
        for step in pipeline.last_trace.steps
        if step.finished_at is not None
    }
    print(json.dumps({"seconds": round(time.monotonic() - started, 3), "steps": steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
