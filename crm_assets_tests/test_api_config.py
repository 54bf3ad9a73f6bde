"""Layer 1: the REST config is the seed's, and valid dlt `RESTAPIConfig` data."""

from __future__ import annotations

from dlt.common.validation import validate_dict
from dlt.sources.rest_api import RESTAPIConfig

from crm_assets.api import CRM_API, CRM_COLUMNS


def test_config_is_valid_dlt_rest_api_config() -> None:
    validate_dict(RESTAPIConfig, CRM_API, path=".")


def test_config_matches_the_seed() -> None:
    assert CRM_API["client"]["auth"] == {"type": "api_key", "name": "api_key", "location": "query"}
    assert CRM_API["resource_defaults"] == {"primary_key": "id", "write_disposition": "merge"}
    endpoints = {r["name"]: r["endpoint"] for r in CRM_API["resources"]}
    assert list(endpoints) == ["customers", "contacts", "cases", "leads", "opportunities"]
    for name, endpoint in endpoints.items():
        assert endpoint["path"] == f"/v1/{name}"
        assert endpoint["data_selector"] == "data"
        if name == "cases":
            assert "paginator" not in endpoint
        else:
            assert endpoint["paginator"] == {
                "type": "offset",
                "limit": 100,
                "offset_param": "startIndex",
            }


def test_every_resource_declares_typed_nullable_columns_with_descriptions() -> None:
    for resource in CRM_API["resources"]:
        columns = resource["columns"]
        assert columns is CRM_COLUMNS[resource["name"]]
        assert columns["id"]["primary_key"] is True
        assert columns["id"]["nullable"] is False
        for name, column in columns.items():
            assert column["data_type"], name
            assert isinstance(column["nullable"], bool), name
            assert column["description"], name
