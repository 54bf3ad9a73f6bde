"""The CRM's REST API, described as data: the one place that knows endpoints, paging and schemas.

`SEED_API` is the API contract as dlt's `RESTAPIConfig`: base URL, `api_key` in the query, five
resources under `/v1/...`, records under `data`, offset paging on `startIndex` with limit 100
(cases on one page), primary key `id`, merge. `CRM_API` is the same config with the declared
schema of `declared_schema.yaml` added to each resource (column hints, references and, where the
CRM has one, its "changed since" filter). The same dict feeds dlt's `rest_api_source` as it is and
this project's own extractor. Adding a resource is one entry in `SEED_API["resources"]`, plus,
optionally, its declaration; nothing else names an endpoint. This module imports neither Dagster
nor the network.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from dlt.common.exceptions import DictValidationException
from dlt.common.validation import validate_dict
from dlt.sources.rest_api import RESTAPIConfig
from dlt.sources.rest_api.typing import EndpointResource

# The secret values are filled in at run time from the Dagster resource; the config only says
# where each secret travels. `base_url` is the seed's placeholder, overridden by CRM_BASE_URL.
DEFAULT_BASE_URL = "https://api.example.com"
API_KEY_PARAM = "api_key"
PAGE_LIMIT = 100
DECLARATION_PATH = Path(__file__).with_name("declared_schema.yaml")


def _offset_paginator() -> dict[str, Any]:
    return {"type": "offset", "limit": PAGE_LIMIT, "offset_param": "startIndex"}


def _seed_resource(name: str, paginated: bool = True) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"path": f"/v1/{name}", "data_selector": "data"}
    if paginated:
        endpoint["paginator"] = _offset_paginator()
    return {"name": name, "endpoint": endpoint}


SEED_API: RESTAPIConfig = {
    "client": {
        "base_url": DEFAULT_BASE_URL,
        "auth": {"type": "api_key", "name": API_KEY_PARAM, "location": "query"},
    },
    "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
    "resources": [
        _seed_resource("customers"),
        _seed_resource("contacts"),
        # The seed gives cases no paginator: the API returns every case on one page.
        _seed_resource("cases", paginated=False),
        _seed_resource("leads"),
        _seed_resource("opportunities"),
    ],
}


def load_declaration(path: Path = DECLARATION_PATH) -> dict[str, dict[str, Any]]:
    """The declared schema per resource name (see declared_schema.yaml for the format)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    resources = document.get("resources") or {}
    if not isinstance(resources, dict):
        raise ValueError(f"{path}: `resources` must map resource names to declarations")
    return resources


def declare(seed: RESTAPIConfig, declaration: dict[str, dict[str, Any]]) -> RESTAPIConfig:
    """`seed` with each resource's declaration added: `columns` and `references` on the
    resource, `incremental` (with an initial value: the first sync reads in full) on its
    endpoint. Resources the declaration does not name stay as they are."""
    config = copy.deepcopy(seed)
    for resource in config["resources"]:
        if not isinstance(resource, dict):
            continue
        declared = declaration.get(resource["name"]) or {}
        if declared.get("columns"):
            resource["columns"] = copy.deepcopy(declared["columns"])
        if declared.get("references"):
            resource["references"] = copy.deepcopy(declared["references"])
        if declared.get("primary_key"):
            resource["primary_key"] = declared["primary_key"]
        incremental = declared.get("incremental")
        if incremental:
            resource["endpoint"]["incremental"] = {
                key: incremental[key]
                for key in ("cursor_path", "start_param", "initial_value")
                if incremental.get(key) is not None
            }
    return config


CRM_API: RESTAPIConfig = declare(SEED_API, load_declaration())

# The declared columns of each resource, keyed by the API's field names.
CRM_COLUMNS: dict[str, dict[str, dict[str, Any]]] = {
    r["name"]: r.get("columns", {})  # type: ignore[index,union-attr]
    for r in CRM_API["resources"]
}


def validate_api_config(config: RESTAPIConfig) -> None:
    """Refuse, in one line naming the entry and the feature, a config dlt would not accept: when
    the definitions load, not halfway through a sync."""
    for entry in config["resources"]:
        name = entry.get("name") if isinstance(entry, dict) else entry
        try:
            validate_dict(EndpointResource, entry, path=str(name))
        except DictValidationException as exc:
            # dlt names every alternative it tried; the deepest path is the one that failed.
            found = re.findall(
                r"Path `([^`]*)`: (field `[^`]*`|received unexpected fields \S+)", str(exc)
            )
            path, what = max(found, key=lambda f: f[0].count("/")) if found else (name, str(exc))
            raise ValueError(
                f"CRM_API resource {name!r}: {what} at {path} is not valid in dlt's REST API config"
            ) from None


def resource_names(config: RESTAPIConfig = CRM_API) -> list[str]:
    """Names of the resources in `config`, in declaration order."""
    return [r["name"] for r in config["resources"]]  # type: ignore[index]
