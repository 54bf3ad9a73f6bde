"""Deterministic, realistic CRM records for the simulator.

Every resource has its own ``random.Random`` seeded from ``"<seed>:<resource>"`` so that a
resource's records do not depend on which other resources were generated first (generation is
per resource and may happen in any order). References only need the *counts* of the referenced
resources, never their records.

Speed matters: the simulator must build millions of records in seconds. So the generators call
``rng.random()`` directly (the cheapest call on ``Random``) instead of ``choice``/``randint``,
format timestamps from precomputed tables, and do money arithmetic in integer cents (which also
guarantees that a money value never has more than two fraction digits once divided by 100).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")

RESOURCES: tuple[str, ...] = ("customers", "contacts", "cases", "leads", "opportunities")

DEFAULT_COUNTS: dict[str, int] = {
    "customers": 1000,
    "contacts": 3000,
    "cases": 500,
    "leads": 2000,
    "opportunities": 1500,
}

# Generated timestamps lie in [BASE_EPOCH, END_EPOCH); the simulator's logical clock starts at
# END_EPOCH, so every update/insert made through the simulator is newer than all generated data.
BASE_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
END_EPOCH = BASE_EPOCH + 366 * 86_400  # 2025-01-01T00:00:00Z (2024 is a leap year)
_TABLE_DAYS = 4 * 366  # covers generated data, expected close dates and the sim clock


@functools.cache
def _day_table() -> list[str]:
    start = date(2024, 1, 1)
    return [(start + timedelta(days=d)).isoformat() for d in range(_TABLE_DAYS)]


@functools.cache
def _time_table() -> list[str]:
    return [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86_400)]


def iso(epoch: int) -> str:
    """Format whole epoch seconds as ``YYYY-MM-DDTHH:MM:SSZ`` (fast path via lookup tables)."""
    d, s = divmod(int(epoch) - BASE_EPOCH, 86_400)
    if 0 <= d < _TABLE_DAYS:
        return _day_table()[d] + _time_table()[s]
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_date(epoch: int) -> str:
    """Format an epoch as ``YYYY-MM-DD``."""
    d = (int(epoch) - BASE_EPOCH) // 86_400
    if 0 <= d < _TABLE_DAYS:
        return _day_table()[d]
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d")


def parse_timestamp(value: Any) -> float | None:
    """Parse an ISO-8601 timestamp to epoch seconds; naive values are taken as UTC.

    Returns None when ``value`` is not a parsable timestamp string (the simulator then treats the
    record as never matching an ``updated_since`` filter, like a SQL comparison with NULL).
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# --- word lists -------------------------------------------------------------------------------
# (display, ascii) pairs: display names carry the unicode, ascii is used in emails and URLs.
_FIRST = (
    ("Zoë", "zoe"),
    ("Łukasz", "lukasz"),
    ("José", "jose"),
    ("太郎", "taro"),
    ("Anna", "anna"),
    ("Björn", "bjorn"),
    ("Chloé", "chloe"),
    ("Søren", "soren"),
    ("Ingrid", "ingrid"),
    ("Mohammed", "mohammed"),
    ("Aoife", "aoife"),
    ("François", "francois"),
    ("Małgorzata", "malgorzata"),
    ("Nguyễn", "nguyen"),
    ("Olga", "olga"),
    ("Priya", "priya"),
    ("Raúl", "raul"),
    ("Sebastián", "sebastian"),
    ("Tomáš", "tomas"),
    ("Ümit", "umit"),
    ("花子", "hanako"),
    ("John", "john"),
    ("Mary", "mary"),
    ("Jürgen", "jurgen"),
    ("Ana", "ana"),
    ("Li", "li"),
    ("Émilie", "emilie"),
    ("Dmitrij", "dmitrij"),
    ("Fatma", "fatma"),
    ("Grace", "grace"),
)
_LAST = (
    ("Müller", "muller"),
    ("Nowak", "nowak"),
    ("Ñúñez", "nunez"),
    ("山田", "yamada"),
    ("Smith", "smith"),
    ("García", "garcia"),
    ("Øberg", "oberg"),
    ("Kowalczyk", "kowalczyk"),
    ("Dubois", "dubois"),
    ("Rossi", "rossi"),
    ("O'Brien", "obrien"),
    ("Schröder", "schroder"),
    ("Novák", "novak"),
    ("Yılmaz", "yilmaz"),
    ("Andersson", "andersson"),
    ("佐藤", "sato"),
    ("Ivanova", "ivanova"),
    ("Silva", "silva"),
    ("Johnson", "johnson"),
    ("Łęcki", "lecki"),
    ("Van der Berg", "vanderberg"),
    ("Côté", "cote"),
    ("Kim", "kim"),
    ("Patel", "patel"),
)
_COMPANY_SUFFIX = (
    "GmbH",
    "Ltd",
    "Inc.",
    "S.A.",
    "Sp. z o.o.",
    "AG",
    "LLC",
    "& Söhne",
    "株式会社",
    "S.L.",
    "Group",
    "Holdings",
    "Consulting",
    "Logistics",
    "Systems",
)
_COMPANY_WORD = (
    ("Nordlicht", "nordlicht"),
    ("Acme", "acme"),
    ("Blue River", "blueriver"),
    ("Zürich Data", "zurichdata"),
    ("Café Noir", "cafenoir"),
    ("Sakura", "sakura"),
    ("Polaris", "polaris"),
    ("Łódź Tech", "lodztech"),
    ("Ñandú", "nandu"),
    ("Vértice", "vertice"),
    ("Greenfield", "greenfield"),
    ("Ostsee", "ostsee"),
    ("富士", "fuji"),
    ("Atlas", "atlas"),
)
_INDUSTRIES = (
    "software",
    "manufacturing",
    "retail",
    "healthcare",
    "finance",
    "logistics",
    "education",
    "energy",
    "hospitality",
    "telecommunications",
    "public sector",
    "agriculture",
)
_STREETS = (
    "Hauptstraße",
    "Main Street",
    "ul. Piotrkowska",
    "Calle Mayor",
    "Rue de Rivoli",
    "Königsallee",
    "銀座通り",
    "Baker Street",
    "Avenida Paulista",
    "Strøget",
    "Bahnhofstrasse",
)
# (city, postal code prefix, country)
_CITIES = (
    ("München", "80", "DE"),
    ("Berlin", "10", "DE"),
    ("Łódź", "90-", "PL"),
    ("Kraków", "30-", "PL"),
    ("Madrid", "28", "ES"),
    ("Paris", "75", "FR"),
    ("東京", "100-", "JP"),
    ("Zürich", "80", "CH"),
    ("New York", "100", "US"),
    ("São Paulo", "01", "BR"),
    ("København", "1", "DK"),
    ("London", "EC1A ", "GB"),
    ("Malmö", "21", "SE"),
)
_TAGS = (
    "vip",
    "enterprise",
    "smb",
    "partner",
    "churn-risk",
    "renewal",
    "beta",
    "emea",
    "apac",
    "amer",
    "öffentlich",
    "優先",
)
_TITLES = (
    "CEO",
    "CTO",
    "Head of Sales",
    "Einkaufsleiter",
    "IT Manager",
    "Procurement Specialist",
    "Directrice financière",
    "Account Manager",
    "営業部長",
    "Operations Lead",
    "Office Manager",
)
_SUBJECTS = (
    "Cannot log in",
    "Invoice missing",
    "Rechnung fehlt – bitte prüfen",
    "Export to CSV fails",
    "Password reset not received",
    "Problème de synchronisation",
    "API rate limit questions",
    "Feature request: dark mode",
    "データが表示されない",
    "Wrong VAT on invoice",
    "Duplicate contacts after import",
    "Słaba wydajność raportów",
    "Contract renewal question",
)
_COMMENT_BODIES = (
    "Thanks for reporting, we are looking into it.",
    "Could you send a screenshot?",
    "Danke, das Problem ist behoben.",
    "Escalated to engineering.",
    "Merci pour votre patience.",
    "Customer confirmed the fix.",
    "Waiting for the customer's reply.",
    "再現できました。修正中です。",
    "Workaround: clear the cache and retry.",
    "Dziękujemy, zgłoszenie zamknięte.",
)
_PRODUCTS = (
    "CRM Suite",
    "Analytics Add-on",
    "Support Plus",
    "Data Hub",
    "Onboarding",
    "Lizenzpaket",
    "Cloud Storage",
    "Formation équipe",
    "API Access",
)
_DEAL_KINDS = ("renewal", "upsell", "new business", "Ausbau Süd", "expansion", "pilot", "拡張")
_SOURCES = ("web", "referral", "event", "partner", "cold_call")
_STAGES = ("prospecting", "qualification", "proposal", "negotiation", "closed_won", "closed_lost")
# Probability bands per stage, so probability is plausible for its stage.
_STAGE_PROB = {
    "prospecting": (5, 20),
    "qualification": (15, 40),
    "proposal": (35, 65),
    "negotiation": (55, 90),
    "closed_won": (100, 100),
    "closed_lost": (0, 0),
}
_CURRENCIES = ("USD", "EUR", "GBP", "JPY")
_PRIORITIES = ("low", "normal", "high", "urgent")
_CASE_STATUS = ("open", "open", "pending", "closed", "closed")  # weighted: 40/20/40


def _ordinal_is_id(ordinal: int) -> int:
    return ordinal


class Refs:
    """What a generator may reference: the counts of customers and contacts (their ordinals are
    1..count, fixed when a resource generates) and how an ordinal becomes that resource's id.

    The declared generators draw ordinals, which are the ids in the declared profile; profiles
    with other id forms map them with ``customer_id``/``contact_id`` (see ``profiles.py``).
    """

    __slots__ = ("customers", "contacts", "customer_id", "contact_id")

    def __init__(
        self,
        customers: int,
        contacts: int,
        customer_id: Callable[[int], Any] = _ordinal_is_id,
        contact_id: Callable[[int], Any] = _ordinal_is_id,
    ) -> None:
        self.customers = customers
        self.contacts = contacts
        self.customer_id = customer_id
        self.contact_id = contact_id


# A generator gets (rng, ordinal, lo, hi, refs) and returns (record, updated_at epoch) so the
# store needs no parsing to index it. The ordinal is the record's 1-based place in creation order;
# in the declared profile it is also the id.
Generator = Callable[[random.Random, int, int, int, Refs], tuple[dict[str, Any], int]]


def _pick(r: Callable[[], float], choices: Sequence[T]) -> T:
    """One of `choices`, drawn with exactly one call of `r` (the record stream depends on it)."""
    return choices[int(r() * len(choices))]


def _span(r: Callable[[], float], lo: int, hi: int) -> tuple[int, int]:
    """created in [lo, hi], updated in [created, hi]; lo == hi gives both == lo (inserts)."""
    created = lo + int(r() * (hi - lo))
    return created, created + int(r() * (hi - created))


def _money(r: Callable[[], float], max_cents: int) -> float:
    # Integer cents / 100 is the closest double to a 2-decimal value; its shortest repr (which
    # orjson emits) therefore has at most two fraction digits.
    return int(r() * max_cents) / 100


# Each gen_<x> wraps <x>_record, which also returns the created (cases: opened) epoch: the other
# profiles (profiles.py) derive further timestamps from it without parsing them back.
def customer_record(
    rng: random.Random, rid: int, lo: int, hi: int, refs: Refs
) -> tuple[dict[str, Any], int, int]:
    r = rng.random
    word, slug = _pick(r, _COMPANY_WORD)
    last, _ = _pick(r, _LAST)
    suffix = _pick(r, _COMPANY_SUFFIX)
    name = f"{word} {suffix}" if r() < 0.6 else f"{last} {suffix}"
    created, updated = _span(r, lo, hi)
    if r() < 0.15:
        address = None
    else:
        city, postal, country = _pick(r, _CITIES)
        address = {
            "street": f"{_pick(r, _STREETS)} {int(r() * 200) + 1}",
            "city": city,
            "postal_code": f"{postal}{int(r() * 900) + 100}",
            "country": country,
        }
    ntags = int(r() * 4)
    tags = sorted({_pick(r, _TAGS) for _ in range(ntags)})
    rec = {
        "id": rid,
        "name": name,
        "email": None if r() < 0.15 else f"info{rid}@{slug}.example.com",
        "phone": None
        if r() < 0.15
        else f"+{int(r() * 89) + 10} {int(r() * 900) + 100} {int(r() * 9_000_000) + 1_000_000}",
        "industry": None if r() < 0.12 else _pick(r, _INDUSTRIES),
        "annual_revenue": None if r() < 0.2 else _money(r, 1_000_000_000),
        "employee_count": None if r() < 0.15 else int(r() ** 3 * 50_000) + 1,
        "is_active": r() < 0.85,
        "address": address,
        "tags": tags,
        "created_at": iso(created),
        "updated_at": iso(updated),
    }
    return rec, created, updated


def contact_record(
    rng: random.Random, rid: int, lo: int, hi: int, refs: Refs
) -> tuple[dict[str, Any], int, int]:
    r = rng.random
    first, first_a = _pick(r, _FIRST)
    last, last_a = _pick(r, _LAST)
    created, updated = _span(r, lo, hi)
    if r() < 0.2:
        social = None
    else:
        social = {
            "linkedin": None
            if r() < 0.3
            else f"https://www.linkedin.com/in/{first_a}-{last_a}-{rid}",
            "twitter": None if r() < 0.5 else f"@{first_a}{rid}",
        }
    rec = {
        "id": rid,
        "customer_id": None if refs.customers == 0 or r() < 0.1 else int(r() * refs.customers) + 1,
        "first_name": first,
        "last_name": last,
        "email": None if r() < 0.15 else f"{first_a}.{last_a}{rid}@example.com",
        "phone": None if r() < 0.2 else f"+{int(r() * 89) + 10} {int(r() * 9_000_000) + 1_000_000}",
        "title": None if r() < 0.15 else _pick(r, _TITLES),
        "is_primary": r() < 0.3,
        "social": social,
        "created_at": iso(created),
        "updated_at": iso(updated),
    }
    return rec, created, updated


def case_record(
    rng: random.Random, rid: int, lo: int, hi: int, refs: Refs
) -> tuple[dict[str, Any], int, int]:
    r = rng.random
    opened = lo + int(r() * (hi - lo))
    status = _pick(r, _CASE_STATUS)
    closed = opened + int(r() * (hi - opened)) if status == "closed" else None
    last_activity = closed if closed is not None else hi
    ncomments = int(r() * 5)
    times = sorted(opened + int(r() * (last_activity - opened)) for _ in range(ncomments))
    comments = []
    for t in times:
        first, _ = _pick(r, _FIRST)
        last, _ = _pick(r, _LAST)
        comments.append(
            {
                "author": f"{first} {last}",
                "body": _pick(r, _COMMENT_BODIES),
                "created_at": iso(t),
            }
        )
    newest = max(opened, closed or opened, times[-1] if times else opened)
    updated = newest + int(r() * (hi - newest))
    rec = {
        "id": rid,
        "customer_id": int(r() * refs.customers) + 1 if refs.customers else None,
        "contact_id": None if refs.contacts == 0 or r() < 0.2 else int(r() * refs.contacts) + 1,
        "subject": _pick(r, _SUBJECTS),
        "status": status,
        "priority": _pick(r, _PRIORITIES),
        "opened_at": iso(opened),
        "closed_at": iso(closed) if closed is not None else None,
        "comments": comments,
        "updated_at": iso(updated),
    }
    return rec, opened, updated


def lead_record(
    rng: random.Random, rid: int, lo: int, hi: int, refs: Refs
) -> tuple[dict[str, Any], int, int]:
    r = rng.random
    first, first_a = _pick(r, _FIRST)
    last, last_a = _pick(r, _LAST)
    created, updated = _span(r, lo, hi)
    converted = r() < 0.25
    rec = {
        "id": rid,
        "first_name": first,
        "last_name": last,
        "email": None if r() < 0.15 else f"{first_a}.{last_a}.{rid}@example.org",
        "company": None
        if r() < 0.2
        else f"{_pick(r, _COMPANY_WORD)[0]} {_pick(r, _COMPANY_SUFFIX)}",
        "source": _pick(r, _SOURCES),
        "score": int(r() * 101),
        "estimated_value": None if r() < 0.2 else _money(r, 100_000_000),
        "is_converted": converted,
        "contact_id": int(r() * refs.contacts) + 1 if converted and refs.contacts else None,
        "created_at": iso(created),
        "updated_at": iso(updated),
    }
    return rec, created, updated


def opportunity_record(
    rng: random.Random, rid: int, lo: int, hi: int, refs: Refs
) -> tuple[dict[str, Any], int, int]:
    r = rng.random
    created, updated = _span(r, lo, hi)
    stage = _pick(r, _STAGES)
    plo, phi = _STAGE_PROB[stage]
    product = _pick(r, _PRODUCTS)
    kind = _pick(r, _DEAL_KINDS)
    nitems = int(r() * 5)  # 0..4; with no items the amount is a free estimate
    items = []
    total_cents = 0
    for _ in range(nitems):
        qty = int(r() * 50) + 1
        price_cents = int(r() * 1_000_000) + 100
        total_cents += qty * price_cents
        items.append(
            {
                "sku": f"SKU-{int(r() * 9000) + 1000}",
                "quantity": qty,
                "unit_price": price_cents / 100,
            }
        )
    if not items:
        total_cents = int(r() ** 2 * 1_000_000_000) + 10_000
    rec = {
        "id": rid,
        "customer_id": int(r() * refs.customers) + 1 if refs.customers else None,
        "contact_id": None if refs.contacts == 0 or r() < 0.25 else int(r() * refs.contacts) + 1,
        "name": f"{product} – {kind}",
        "stage": stage,
        "amount": total_cents / 100,
        "currency": _pick(r, _CURRENCIES),
        "probability": plo + int(r() * (phi - plo + 1)),
        "expected_close_date": iso_date(created + int(r() * 300 * 86_400)),
        "is_won": True if stage == "closed_won" else False if stage == "closed_lost" else None,
        "line_items": items,
        "created_at": iso(created),
        "updated_at": iso(updated),
    }
    return rec, created, updated


_NOTE_BODIES = (
    "Called about the renewal; wants a quote by Friday.",
    "Kunde wünscht einen Rückruf nächste Woche.",
    "Sent the onboarding checklist.",
    "Réunion de suivi prévue en mars.",
    "Asked for SSO support, forwarded to product.",
    "Budget approved for Q3 expansion.",
    "請求書の再発行を依頼されました。",
    "Prefers contact by email, not phone.",
    "Spotkanie przełożone na przyszły tydzień.",
    "Complained about response times; escalated to the account manager.",
    "Interested in the Analytics Add-on.",
    "Cambio de dirección de facturación pendiente.",
)


def note_records(
    rng: random.Random,
    customers: Sequence[tuple[Any, int]],
    note_id: Callable[[int], Any],
) -> list[tuple[Any, list[dict[str, Any]]]]:
    """0-3 notes per customer, given as (id, created epoch) in creation order; returns
    (customer id, its notes oldest first) per customer. Note ids take ordinals 1, 2, ... across
    all customers, so they are unique; a note is never older than its customer."""
    r = rng.random
    hi = END_EPOCH - 1
    ordinal = 0
    out: list[tuple[Any, list[dict[str, Any]]]] = []
    for customer_id, created in customers:
        lo = min(max(created, BASE_EPOCH), hi)
        times = sorted(lo + int(r() * (hi - lo)) for _ in range(int(r() * 4)))
        notes: list[dict[str, Any]] = []
        for t in times:
            ordinal += 1
            notes.append(
                {
                    "id": note_id(ordinal),
                    "customer_id": customer_id,
                    "body": _pick(r, _NOTE_BODIES),
                    "created_at": iso(t),
                }
            )
        out.append((customer_id, notes))
    return out


def _with_updated(record: Callable[..., tuple[dict[str, Any], int, int]]) -> Generator:
    """A generator for the store: the record and its updated_at (its created time is for the
    profiles that derive other fields from it)."""

    def generate(
        rng: random.Random, rid: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, _created, updated = record(rng, rid, lo, hi, refs)
        return rec, updated

    return generate


GENERATORS: Mapping[str, Generator] = {
    "customers": _with_updated(customer_record),
    "contacts": _with_updated(contact_record),
    "cases": _with_updated(case_record),
    "leads": _with_updated(lead_record),
    "opportunities": _with_updated(opportunity_record),
}


def resource_rng(seed: int, resource: str) -> random.Random:
    """One independent, reproducible stream per resource (str seeds hash with SHA-512, so this
    does not depend on PYTHONHASHSEED)."""
    return random.Random(f"{seed}:{resource}")
