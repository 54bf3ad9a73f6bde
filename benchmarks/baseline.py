"""Run (a) of the benchmark: the seed's `CRM_API` through plain dlt with default settings.

This is what a user would write with the seed's config: `rest_api_source(CRM_API)` into DuckDB,
nothing tuned (default loader file format, no workers, dlt's own REST client). Only the run-time
values are set, on a deep copy: the base URL, the api key and the access-key header. The
`columns` hints stay: they are part of the seed's config, and they give the baseline the same
tables as the project (nested values as JSON columns, not child tables), so both do the same job.

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


def main(argv: list[str]) -> int:
    duckdb_path, pipelines_dir = argv[1], argv[2]
    started = time.monotonic()
    import dlt
    from dlt.sources.rest_api import rest_api_source

    from crm_assets.api import CRM_API

    config: Any = copy.deepcopy(CRM_API)
    config["client"]["base_url"] = os.environ["CRM_BASE_URL"]
    config["client"]["auth"]["api_key"] = os.environ["CRM_API_KEY"]
    config["client"]["headers"] = {"X-Access-Key": os.environ["CRM_ACCESS_KEY"]}
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
