"""The CRM's REST API, described as data: the one place that knows endpoints, paging and schemas.

`CRM_API` follows dlt's `RESTAPIConfig` shape, so the same dict feeds `rest_api_source` as it is
(the benchmark's baseline does exactly that) and this project's own extractor. Adding a resource
is one entry in `CRM_API["resources"]` plus its columns in `CRM_COLUMNS`; nothing else names an
endpoint. This module imports neither Dagster nor the network.
"""

from __future__ import annotations

from typing import Any

from dlt.sources.rest_api import RESTAPIConfig

# The secret values are filled in at run time from the Dagster resource; the config only says
# where each secret travels. `base_url` is the seed's placeholder, overridden by CRM_BASE_URL.
DEFAULT_BASE_URL = "https://api.example.com"
API_KEY_PARAM = "api_key"

PAGE_LIMIT = 100


def _offset_paginator() -> dict[str, Any]:
    return {"type": "offset", "limit": PAGE_LIMIT, "offset_param": "startIndex"}


def _ts(description: str, nullable: bool = False) -> dict[str, Any]:
    return {
        "data_type": "timestamp",
        "timezone": True,
        "nullable": nullable,
        "description": description,
    }


def _money(description: str, nullable: bool = True) -> dict[str, Any]:
    # Money as an exact decimal: 18 digits of which 2 after the point covers every amount a CRM
    # sends (up to 10^16) without the rounding a float would add in the warehouse.
    return {
        "data_type": "decimal",
        "precision": 18,
        "scale": 2,
        "nullable": nullable,
        "description": description,
    }


def _col(data_type: str, description: str, nullable: bool = True) -> dict[str, Any]:
    return {"data_type": data_type, "nullable": nullable, "description": description}


def _id(description: str) -> dict[str, Any]:
    return {
        "data_type": "bigint",
        "nullable": False,
        "primary_key": True,
        "description": description,
    }


# Nested objects and lists land as one JSON column each (no child tables): a record stays one row,
# and a query reaches inside with DuckDB's `->>`/`json_extract`.
CRM_COLUMNS: dict[str, dict[str, dict[str, Any]]] = {
    "customers": {
        "id": _id("Customer id, unique within the CRM."),
        "name": _col("text", "Company or person name.", nullable=False),
        "email": _col("text", "Main e-mail address."),
        "phone": _col("text", "Main phone number."),
        "industry": _col("text", "Industry the customer works in."),
        "annual_revenue": _money("Annual revenue in the account currency."),
        "employee_count": _col("bigint", "Number of employees."),
        "is_active": _col("bool", "Whether the customer account is active.", nullable=False),
        "address": _col("json", "Postal address: street, city, postal_code, country."),
        "tags": _col("json", "Free-form labels, a JSON list of strings."),
        "created_at": _ts("When the customer was created."),
        "updated_at": _ts("When the customer was last changed."),
    },
    "contacts": {
        "id": _id("Contact id, unique within the CRM."),
        "customer_id": _col("bigint", "The customer this contact belongs to (customers.id)."),
        "first_name": _col("text", "Given name.", nullable=False),
        "last_name": _col("text", "Family name.", nullable=False),
        "email": _col("text", "E-mail address."),
        "phone": _col("text", "Phone number."),
        "title": _col("text", "Job title."),
        "is_primary": _col("bool", "Whether this is the customer's main contact.", nullable=False),
        "social": _col("json", "Social profiles: linkedin, twitter."),
        "created_at": _ts("When the contact was created."),
        "updated_at": _ts("When the contact was last changed."),
    },
    "cases": {
        "id": _id("Support case id, unique within the CRM."),
        "customer_id": _col(
            "bigint", "The customer who opened the case (customers.id).", nullable=False
        ),
        "contact_id": _col("bigint", "The contact who reported it (contacts.id)."),
        "subject": _col("text", "One-line summary of the case.", nullable=False),
        "status": _col("text", "open, pending or closed.", nullable=False),
        "priority": _col("text", "low, normal, high or urgent.", nullable=False),
        "opened_at": _ts("When the case was opened."),
        "closed_at": _ts("When the case was closed; null while open.", nullable=True),
        "comments": _col("json", "Conversation: a JSON list of {author, body, created_at}."),
        "updated_at": _ts("When the case was last changed."),
    },
    "leads": {
        "id": _id("Lead id, unique within the CRM."),
        "first_name": _col("text", "Given name.", nullable=False),
        "last_name": _col("text", "Family name.", nullable=False),
        "email": _col("text", "E-mail address."),
        "company": _col("text", "Company the lead works for."),
        "source": _col(
            "text",
            "Where the lead came from: web, referral, event, partner, cold_call.",
            nullable=False,
        ),
        "score": _col("bigint", "Lead score from 0 to 100.", nullable=False),
        "estimated_value": _money("Estimated deal value."),
        "is_converted": _col("bool", "Whether the lead became a contact.", nullable=False),
        "contact_id": _col("bigint", "The contact it became (contacts.id), once converted."),
        "created_at": _ts("When the lead was created."),
        "updated_at": _ts("When the lead was last changed."),
    },
    "opportunities": {
        "id": _id("Opportunity id, unique within the CRM."),
        "customer_id": _col(
            "bigint", "The customer the deal is with (customers.id).", nullable=False
        ),
        "contact_id": _col("bigint", "The main contact for the deal (contacts.id)."),
        "name": _col("text", "Deal name.", nullable=False),
        "stage": _col(
            "text", "Pipeline stage, from prospecting to closed_won/closed_lost.", nullable=False
        ),
        "amount": _money("Deal amount in `currency`.", nullable=False),
        "currency": _col("text", "ISO 4217 currency code.", nullable=False),
        "probability": _col("bigint", "Win probability in percent.", nullable=False),
        "expected_close_date": _col("date", "Expected close date.", nullable=True),
        "is_won": _col("bool", "Outcome once closed; null while open."),
        "line_items": _col("json", "Products: a JSON list of {sku, quantity, unit_price}."),
        "created_at": _ts("When the opportunity was created."),
        "updated_at": _ts("When the opportunity was last changed."),
    },
}


# Incremental sync, in dlt's own `incremental` terms: the API filters on `updated_since`, and the
# cursor is the newest `updated_at` a complete sync of the resource has seen. The initial value
# predates any CRM record, so the first sync is a full one.
UPDATED_SINCE: dict[str, Any] = {
    "cursor_path": "updated_at",
    "start_param": "updated_since",
    "initial_value": "1970-01-01T00:00:00Z",
}


def _references(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    """`column -> table.id` references, checked on every sync (see checks.py)."""
    return [
        {"columns": [column], "referenced_table": table, "referenced_columns": ["id"]}
        for column, table in pairs
    ]


def _resource(
    name: str,
    paginated: bool = True,
    incremental: bool = True,
    references: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"path": f"/v1/{name}", "data_selector": "data"}
    if paginated:
        endpoint["paginator"] = _offset_paginator()
    if incremental:
        endpoint["incremental"] = dict(UPDATED_SINCE)
    resource: dict[str, Any] = {"name": name, "endpoint": endpoint, "columns": CRM_COLUMNS[name]}
    if references:
        resource["references"] = references
    return resource


CRM_API: RESTAPIConfig = {
    "client": {
        "base_url": DEFAULT_BASE_URL,
        "auth": {"type": "api_key", "name": API_KEY_PARAM, "location": "query"},
    },
    "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
    "resources": [
        _resource("customers"),
        _resource("contacts", references=_references(("customer_id", "customers"))),
        # The seed gives cases no paginator: the API returns every case on one page, so there is
        # nothing to save by asking for changes only, and cases sync in full every time.
        _resource(
            "cases",
            paginated=False,
            incremental=False,
            references=_references(("customer_id", "customers"), ("contact_id", "contacts")),
        ),
        _resource("leads", references=_references(("contact_id", "contacts"))),
        _resource(
            "opportunities",
            references=_references(("customer_id", "customers"), ("contact_id", "contacts")),
        ),
    ],
}


def resource_names(config: RESTAPIConfig = CRM_API) -> list[str]:
    """Names of the resources in `config`, in declaration order."""
    return [r["name"] for r in config["resources"]]  # type: ignore[index]
