"""Run (c) of the benchmark: the physical floor of a sync from a local API.

One plain `requests.Session` fetches every page of every `SEED_API` resource one after another and
decodes it with the standard `json` module; nothing is stored. Endpoints and paging come from
`SEED_API` itself (the API contract, which `CRM_API` only adds schema hints to), so the floor
asks for exactly the pages a full sync needs, whatever the shape of the records.

Usage (the runner calls it): python benchmarks/floor.py, with CRM_BASE_URL, CRM_API_KEY and
CRM_ACCESS_KEY in the environment. Prints one JSON line: pages, records, seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time

import requests

from crm_assets.api import API_KEY_PARAM, SEED_API

MAX_PAGES_PER_RESOURCE = 1_000_000  # a bound on every loop; far above any benchmark size


def main() -> int:
    base_url = os.environ["CRM_BASE_URL"].rstrip("/")
    started = time.monotonic()
    pages = records = 0
    with requests.Session() as session:
        session.headers["X-Access-Key"] = os.environ["CRM_ACCESS_KEY"]
        auth = {API_KEY_PARAM: os.environ["CRM_API_KEY"]}
        for resource in SEED_API["resources"]:
            endpoint = resource["endpoint"]  # type: ignore[index]
            url = base_url + endpoint["path"]
            paginator = endpoint.get("paginator")
            if paginator is None:
                response = session.get(url, params=auth, timeout=60)
                response.raise_for_status()
                records += len(json.loads(response.content)[endpoint["data_selector"]])
                pages += 1
                continue
            limit = paginator["limit"]
            offset = 0
            for _ in range(MAX_PAGES_PER_RESOURCE):
                params = {**auth, paginator["offset_param"]: offset, "limit": limit}
                response = session.get(url, params=params, timeout=60)
                response.raise_for_status()
                body = json.loads(response.content)
                records += len(body[endpoint["data_selector"]])
                pages += 1
                offset += limit
                if offset >= body["total"]:
                    break
    seconds = time.monotonic() - started
    print(json.dumps({"pages": pages, "records": records, "seconds": round(seconds, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
