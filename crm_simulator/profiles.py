"""Data profiles: which CRM the simulator pretends to be.

``declared``
    Records exactly as the declared schema (``crm_assets/api.py``) describes them: integer ids
    1..n and integer references.
``crm``
    Shaped like a real CRM's API (Salesforce-like): 18-character, case-sensitive string ids with
    a per-object prefix (customers ``001…``, contacts ``003…``, cases ``500…``, leads ``00Q…``,
    opportunities ``006…``); references use the referenced resource's id form; camelCase fields
    the schema does not declare, one of them per resource colliding with a declared name once
    snake_cased; numbers in text columns; other ISO timestamp forms; money with 3-4 decimals;
    and some declared fields never sent (customers ``employee_count``, contacts ``social``).
``uuid``
    The declared records with UUID ids and references, plus an undeclared ``external_ref`` of
    zero-padded digits, a ``score`` that is sometimes the string ``"n/a"``, and nested lists.

The ``crm`` and ``uuid`` generators wrap the declared ones: they draw from the same per-resource
stream first and then transform the record. That keeps them deterministic, reuses the realistic
values, and keeps generation within about twice the declared profile's time.

Every id form is a pair of functions: ordinal (1-based creation order) -> id, and id -> ordinal
(None when the value is not of that form). The inverse lets the store find a record by id with a
binary search instead of decoding the whole collection.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .records import (
    _CITIES,
    _INDUSTRIES,
    _PRODUCTS,
    _STAGES,
    _TITLES,
    BASE_EPOCH,
    GENERATORS,
    Generator,
    Refs,
    _day_table,
    _time_table,
    case_record,
    contact_record,
    customer_record,
    iso,
    iso_date,
    lead_record,
    opportunity_record,
)

PROFILES: tuple[str, ...] = ("declared", "crm", "uuid")

# Fields that update_records changes on the built-in resources ("one ordinary field").
_TITLES_CYCLE = ("CEO", "CTO", "Head of Sales", "IT Manager", "Account Manager")
_PRIORITY_CYCLE = ("low", "normal", "high", "urgent")
_INDUSTRY_CYCLE = ("software", "retail", "finance", "energy")


class IdForm(NamedTuple):
    """How one collection names its records."""

    make: Callable[[int], Any]  # ordinal -> id
    ordinal: Callable[[Any], int | None]  # id -> ordinal, None if not of this form


# --- integer ids (declared) -------------------------------------------------------------------
def _int_id(ordinal: int) -> int:
    return ordinal


def _int_ordinal(value: Any) -> int | None:
    # bool is an int subclass; True is not the id 1.
    return value if type(value) is int and value > 0 else None


INT_IDS = IdForm(_int_id, _int_ordinal)


# --- Salesforce-like ids (crm) ----------------------------------------------------------------
# 15 characters: 3 key prefix + 2 instance + 1 reserved + 9 base-62 counter digits; then the
# 3-character suffix that makes the id unique case-insensitively (one character per 5-character
# chunk, encoding which of its characters are upper case). Fixed width and base-62 digits in
# ASCII order mean the ids sort like their ordinals.
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SF_CHECK = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_SF_INSTANCE = "5g"
_B62_VALUE = {c: i for i, c in enumerate(_B62)}
_UPPER = tuple(1 if "A" <= c <= "Z" else 0 for c in _B62)
# Two and three base-62 digits at once, with their upper-case bits: the last five counter digits
# (all of them below 62**5 ids) cost two look-ups. The 238,328 triples are built on first use.
_PAIRS = tuple(a + b for a in _B62 for b in _B62)
_PAIR_UPPER = tuple(ua | ub << 1 for ua in _UPPER for ub in _UPPER)


@functools.cache
def _triples() -> tuple[tuple[str, ...], tuple[int, ...]]:
    texts = tuple(p + c for p in _PAIRS for c in _B62)
    bits = tuple(pu | uc << 2 for pu in _PAIR_UPPER for uc in _UPPER)
    return texts, bits


_B62_5 = 62**5
SF_PREFIXES: dict[str, str] = {
    "customers": "001",  # Account
    "contacts": "003",  # Contact
    "cases": "500",  # Case
    "leads": "00Q",  # Lead
    "opportunities": "006",  # Opportunity
    "users": "005",  # User (record owners; not served)
    "notes": "002",  # Note (served per customer when the simulator has notes on)
}


def _upper_bits(chunk: str) -> int:
    return sum(1 << i for i, c in enumerate(chunk) if "A" <= c <= "Z")


def _sf_checksum(id15: str) -> str:
    return "".join(_SF_CHECK[_upper_bits(id15[i : i + 5])] for i in (0, 5, 10))


def sf_ids(prefix: str) -> IdForm:
    """18-character Salesforce-style ids with this 3-character key prefix."""
    if len(prefix) != 3 or any(c not in _B62_VALUE for c in prefix):
        raise ValueError(f"invalid key prefix {prefix!r}")
    head = prefix + _SF_INSTANCE + "0"
    # Below 62**5 the first four counter digits are "0000": chunk 2 is all digits ("A") and
    # chunk 1 is constant, so only chunk 3 needs computing per id.
    fast_head = head + "0000"
    fast_check = _SF_CHECK[_upper_bits(head[:5])] + "A"
    pairs, pair_upper, check = _PAIRS, _PAIR_UPPER, _SF_CHECK
    triples, triple_upper = _triples()

    def make(ordinal: int) -> str:
        if 0 <= ordinal < _B62_5:
            a, b = divmod(ordinal, 238_328)  # 62**3
            return (
                fast_head
                + pairs[a]
                + triples[b]
                + fast_check
                + check[pair_upper[a] | triple_upper[b] << 2]
            )
        if ordinal < 0 or ordinal >= 62**9:
            raise ValueError(f"ordinal {ordinal} out of range for a 9-digit counter")
        counter = []
        for _ in range(9):
            ordinal, d = divmod(ordinal, 62)
            counter.append(_B62[d])
        id15 = head + "".join(reversed(counter))
        return id15 + _sf_checksum(id15)

    def ordinal(value: Any) -> int | None:
        if not isinstance(value, str) or len(value) not in (15, 18) or value[:6] != head:
            return None
        n = 0
        for c in value[6:15]:
            d = _B62_VALUE.get(c)
            if d is None:
                return None
            n = n * 62 + d
        return n

    return IdForm(make, ordinal)


def sf_custom_prefix(name: str) -> str:
    """Key prefix for a collection added at run time: custom objects' prefixes start "a0"."""
    return "a0" + _B62[zlib.crc32(name.encode("utf-8")) % 62]


# --- UUIDs (uuid) -----------------------------------------------------------------------------
_MASK122 = (1 << 122) - 1
_MASK62 = (1 << 62) - 1


def uuid_ids(seed: int, name: str) -> IdForm:
    """Version-4-shaped UUIDs whose 122 free bits are a seeded bijection of the ordinal: an
    affine map with an odd factor, then xor-shift, multiply, xor-shift so that consecutive
    ordinals share no visible prefix. Every step is invertible, so ids are unique and map back
    to their ordinal without a table."""
    rng = random.Random(f"{seed}:{name}:uuid")
    mult = rng.getrandbits(122) | 1
    key = rng.getrandbits(122)
    mix = rng.getrandbits(122) | 1
    mult_inv = pow(mult, -1, 1 << 122)
    mix_inv = pow(mix, -1, 1 << 122)

    def make(ordinal: int) -> str:
        x = (ordinal * mult + key) & _MASK122
        x ^= x >> 61  # its own inverse: 2 * 61 >= 122
        x = (x * mix) & _MASK122
        x ^= x >> 61
        # 48 + 12 + 14 + 48 bits around the version nibble 4 and the variant bits 10. %-format:
        # about twice as fast as the f-string with five format specs.
        return "%08x-%04x-4%03x-%04x-%012x" % (  # noqa: UP031
            x >> 90,
            x >> 74 & 0xFFFF,
            x >> 62 & 0xFFF,
            0x8000 | x >> 48 & 0x3FFF,
            x & 0xFFFF_FFFF_FFFF,
        )

    def ordinal(value: Any) -> int | None:
        if not isinstance(value, str) or len(value) != 36:
            return None
        try:
            u = int(value.replace("-", ""), 16)
        except ValueError:
            return None
        if (u >> 76) & 0xF != 4 or (u >> 62) & 0x3 != 2:
            return None
        x = (u >> 80) << 74 | ((u >> 64) & 0xFFF) << 62 | (u & _MASK62)
        x ^= x >> 61
        x = (x * mix_inv) & _MASK122
        x ^= x >> 61
        return ((x - key) * mult_inv) & _MASK122

    return IdForm(make, ordinal)


# --- crm: records shaped like a real CRM's ----------------------------------------------------
# Some integrations write codes instead of text: SIC codes for industries, job levels for titles.
_INDUSTRY_CODES = dict(
    zip(
        _INDUSTRIES,
        (7372, 3711, 5311, 8062, 6022, 4731, 8221, 4911, 7011, 4813, 9199, 100),
        strict=True,
    )
)
_TITLE_CODES = {title: level for level, title in enumerate(_TITLES, start=1)}
_REGIONS = ("EMEA", "APAC", "AMER", "LATAM")
_SLA = ("Gold", "Silver", "Bronze", "Platinum")
_LANGUAGES = ("en", "de", "fr", "es", "pl", "ja")
# Lists drawn whole from precomputed choices (one draw each) rather than built item by item:
# every subset of the contact channels, file names, and sets of up to three interests.
_CHANNEL_SETS = tuple(
    tuple(c for bit, c in enumerate(("email", "phone", "sms", "mail")) if mask >> bit & 1)
    for mask in range(16)
)
_FILE_NAMES = tuple(
    f"{stem}.{ext}"
    for stem in ("screenshot", "invoice", "log", "export", "Rechnung", "contract")
    for ext in ("png", "pdf", "txt", "csv", "zip")
)
_INTEREST_SETS = tuple(
    tuple(sorted({_PRODUCTS[(k * 7 + j * 5) % len(_PRODUCTS)] for j in range(k % 4)}))
    for k in range(48)
)
_BIRTH_YEARS = tuple(str(y) for y in range(1958, 2004))
_ORIGINS = ("Email", "Phone", "Web", "Chat")
_SLA_HOURS = {"urgent": 4, "high": 24, "normal": 72, "low": 168}
_UTM_MEDIUM = ("cpc", "email", "social", "organic", "display")
_CAMPAIGNS = ("spring-promo", "webinar", "trade-fair", "newsletter", "retargeting")
_FORECAST = {
    "prospecting": "Pipeline",
    "qualification": "Pipeline",
    "proposal": "BestCase",
    "negotiation": "Commit",
    "closed_won": "Closed",
    "closed_lost": "Omitted",
}
# The stages an opportunity went through to reach its current one.
_STAGE_PATH = {stage: _STAGES[: min(i, 4)] + (stage,) for i, stage in enumerate(_STAGES)}
# Fractions of a second, six digits each; drawn from a table because formatting them per
# timestamp would cost more than the rest of the timestamp.
_FRACTIONS = tuple(f".{i * 7919 % 1000:03d}{i * 104_729 % 1000:03d}" for i in range(1000))


def _phone_number(phone: str) -> int:
    """ "+49 123 4567890" as the integer some systems store: 491234567890."""
    return int(phone[1:].replace(" ", ""))


@functools.cache
def _crm_generators() -> dict[str, Generator]:
    """The crm generators. Built once, as closures over the timestamp tables: these records
    carry several derived timestamps each, and local look-ups keep the profile within about
    twice the declared profile's generation time."""
    days, times = _day_table(), _time_table()
    plain = [t[:-1] for t in times]  # "THH:MM:SS", for offsets other than Z
    ndays = len(days)
    fractions = _FRACTIONS
    base = BASE_EPOCH
    customer_id = sf_ids(SF_PREFIXES["customers"]).make
    contact_id = sf_ids(SF_PREFIXES["contacts"]).make
    case_id = sf_ids(SF_PREFIXES["cases"]).make
    lead_id = sf_ids(SF_PREFIXES["leads"]).make
    opportunity_id = sf_ids(SF_PREFIXES["opportunities"]).make
    user_id = sf_ids(SF_PREFIXES["users"]).make

    def day(t: int) -> str:
        d = (t - base) // 86_400
        return days[d] if 0 <= d < ndays else iso_date(t)

    def local(t: int, tz: str, offset: int, frac: str = "") -> str:
        """``t`` as local time at a UTC offset (``tz`` its text, ``offset`` its seconds)."""
        d, sec = divmod(t + offset - base, 86_400)
        if 0 <= d < ndays:
            return days[d] + plain[sec] + frac + tz
        return iso(t + offset)[:-1] + frac + tz

    def customer(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, created, upd = customer_record(rng, n, lo, hi, refs)
        r = rng.random
        rid = customer_id(n)
        phone = rec["phone"]
        if phone is not None and r() < 0.25:
            phone = _phone_number(phone)
        industry = rec["industry"]
        if industry is not None and r() < 0.2:
            industry = _INDUSTRY_CODES[industry]
        tags = rec["tags"]
        since = day(created)
        out = {
            "id": rid,
            "name": rec["name"],
            "email": rec["email"],
            "phone": phone,
            "industry": industry,
            "annual_revenue": rec["annual_revenue"],
            # employee_count is declared but this CRM never sends it.
            "is_active": rec["is_active"],
            "address": rec["address"],
            "tags": tags,
            "ownerId": user_id(int(r() * 40) + 1),
            "created_at": rec["created_at"],
            # snake_cases to created_at: epoch milliseconds, up to a second off the ISO value.
            "createdAt": created * 1000 + int(r() * 1000),
            "updated_at": rec["updated_at"],
            "lastActivityDate": None if r() < 0.3 else day(created + int(r() * (hi - created))),
            "lastViewedDate": local(
                upd + int(r() * (hi - upd)), "+02:00", 7_200, fractions[int(r() * 1000)]
            ),
            "customFields": {
                "Region__c": _REGIONS[int(r() * len(_REGIONS))],
                "Tier__c": int(r() * 3) + 1,
                "SLA__c": _SLA[int(r() * len(_SLA))],
                "Renewal_Date__c": day(created + int(r() * 700) * 86_400),
            },
            "segments": [{"code": tag, "since": since} for tag in tags],
        }
        return out, upd

    def contact(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, created, upd = contact_record(rng, n, lo, hi, refs)
        r = rng.random
        rid = contact_id(n)
        customer = rec["customer_id"]
        phone = rec["phone"]
        if phone is not None and r() < 0.25:
            phone = _phone_number(phone)
        title = rec["title"]
        if title is not None and r() < 0.2:
            title = _TITLE_CODES[title]
        social = rec["social"]
        profiles: list[dict[str, str]] = []
        if social is not None:
            if social["linkedin"] is not None:
                profiles.append({"network": "linkedin", "url": social["linkedin"]})
            if social["twitter"] is not None:
                profiles.append({"network": "twitter", "handle": social["twitter"]})
        is_primary = rec["is_primary"]
        # Birthdays lie before the day table: a day of 2025 (not a leap year, so any year can
        # have it) with the year swapped.
        birthdate = (
            None
            if r() < 0.4
            else _BIRTH_YEARS[int(r() * len(_BIRTH_YEARS))] + days[366 + int(r() * 365)][4:]
        )
        out = {
            "id": rid,
            "customer_id": None if customer is None else refs.customer_id(customer),
            "first_name": rec["first_name"],
            "last_name": rec["last_name"],
            "email": rec["email"],
            "phone": phone,
            "title": title,
            "is_primary": is_primary,
            # snake_cases to is_primary: the same fact as text.
            "isPrimary": "yes" if is_primary else "no",
            # social is declared but this CRM sends the profiles as a list instead.
            "socialProfiles": profiles,
            "birthdate": birthdate,
            "lastContactedAt": None
            if r() < 0.25
            else local(created + int(r() * (hi - created)), "-05:00", -18_000),
            "preferences": {
                "language": _LANGUAGES[int(r() * len(_LANGUAGES))],
                "doNotCall": r() < 0.1,
                "channels": _CHANNEL_SETS[int(r() * 16)],
            },
            "created_at": rec["created_at"],
            "updated_at": rec["updated_at"],
        }
        return out, upd

    def case(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, opened, upd = case_record(rng, n, lo, hi, refs)
        r = rng.random
        rid = case_id(n)
        customer, contact = rec["customer_id"], rec["contact_id"]
        attachments = [
            {
                "fileName": _FILE_NAMES[int(r() * len(_FILE_NAMES))],
                "sizeBytes": int(r() * 5_000_000) + 1,
                "uploadedAt": local(
                    opened + int(r() * (hi - opened)), "Z", 0, fractions[int(r() * 1000)]
                ),
            }
            for _ in range(int(r() * 3))
        ]
        sla_due = opened + _SLA_HOURS[rec["priority"]] * 3600
        out = {
            "id": rid,
            "caseNumber": f"{n:08d}",
            "customer_id": None if customer is None else refs.customer_id(customer),
            "contact_id": None if contact is None else refs.contact_id(contact),
            "subject": rec["subject"],
            "status": rec["status"],
            "priority": rec["priority"],
            "origin": _ORIGINS[int(r() * len(_ORIGINS))],
            "opened_at": rec["opened_at"],
            # snake_cases to opened_at: the same instant in US Eastern time.
            "openedAt": local(opened, "-05:00", -18_000),
            "closed_at": rec["closed_at"],
            "slaDueAt": local(sla_due, "+02:00", 7_200, fractions[int(r() * 1000)]),
            "comments": rec["comments"],
            "attachments": attachments,
            "updated_at": rec["updated_at"],
        }
        return out, upd

    def lead(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, created, upd = lead_record(rng, n, lo, hi, refs)
        r = rng.random
        rid = lead_id(n)
        value = rec["estimated_value"]
        if value is not None:
            # Three decimals, the last never 0: always more precise than the declared scale 2.
            value = (round(value * 100) * 10 + int(r() * 9) + 1) / 1000
        contact = rec["contact_id"]
        converted = rec["is_converted"]
        source = rec["source"]
        out = {
            "id": rid,
            "first_name": rec["first_name"],
            "last_name": rec["last_name"],
            "email": rec["email"],
            "company": rec["company"],
            "source": source,
            "score": rec["score"],
            "estimated_value": value,
            "is_converted": converted,
            "contact_id": None if contact is None else refs.contact_id(contact),
            "convertedDate": day(created + int(r() * (hi - created))) if converted else None,
            "created_at": rec["created_at"],
            # snake_cases to created_at: local time with microseconds, up to a minute later.
            "createdAt": local(
                created + int(r() * 60), "+02:00", 7_200, fractions[int(r() * 1000)]
            ),
            "updated_at": rec["updated_at"],
            "utm": {
                "source": source,
                "medium": _UTM_MEDIUM[int(r() * len(_UTM_MEDIUM))],
                "campaign": _CAMPAIGNS[int(r() * len(_CAMPAIGNS))],
            }
            if source == "web"
            else None,
            "interests": _INTEREST_SETS[int(r() * len(_INTEREST_SETS))],
        }
        return out, upd

    def opportunity(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, created, upd = opportunity_record(rng, n, lo, hi, refs)
        r = rng.random
        rid = opportunity_id(n)
        customer, contact = rec["customer_id"], rec["contact_id"]
        stage = rec["stage"]
        # The last two stage changes (the API pages longer histories elsewhere).
        history = []
        t = created
        for step in _STAGE_PATH[stage][-2:]:
            history.append(
                {"stage": step, "changedAt": local(t, "Z", 0, fractions[int(r() * 1000)])}
            )
            t += int(r() * (upd - t) * 0.5)
        close = rec["expected_close_date"]
        out = {
            "id": rid,
            "customer_id": None if customer is None else refs.customer_id(customer),
            "contact_id": None if contact is None else refs.contact_id(contact),
            "name": rec["name"],
            "stage": stage,
            # Four decimals (the last never 0), as a CRM with currency precision 4 sends them.
            "amount": (round(rec["amount"] * 100) * 100 + int(r() * 99) + 1) / 10_000,
            "currency": rec["currency"],
            "probability": rec["probability"],
            "expected_close_date": close,
            # snake_cases to expected_close_date: end of that day, US Eastern, as a timestamp.
            "expectedCloseDate": close + "T23:59:59-05:00",
            "is_won": rec["is_won"],
            "line_items": rec["line_items"],
            "forecastCategory": _FORECAST[stage],
            "fiscalYear": int(close[:4]),
            "stageHistory": history,
            "lastStageChangeDate": history[-1]["changedAt"][:10],
            "created_at": rec["created_at"],
            "updated_at": rec["updated_at"],
        }
        return out, upd

    return {
        "customers": customer,
        "contacts": contact,
        "cases": case,
        "leads": lead,
        "opportunities": opportunity,
    }


# --- uuid: declared records with UUID ids and a few awkward columns ---------------------------
# Phone numbers for the nested lists, drawn whole (formatting them per record costs more than
# the rest of the list).
_PHONES = tuple(
    f"+{10 + i * 37 % 89} {1_000_000 + i * 7_654_321 % 9_000_000}" for i in range(1, 1000)
)
_PHONE_KINDS = ("work", "mobile", "home")


def _uuid_generators(forms: Mapping[str, IdForm]) -> dict[str, Generator]:
    customer_id, contact_id = forms["customers"].make, forms["contacts"].make
    case_id, lead_id = forms["cases"].make, forms["leads"].make
    opportunity_id = forms["opportunities"].make

    def customer(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, _created, upd = customer_record(rng, n, lo, hi, refs)
        r = rng.random
        rec["id"] = customer_id(n)
        # Below 100000 with six digits: there is always at least one leading zero to lose.
        rec["external_ref"] = f"{int(r() * 100_000):06d}"
        locations = []
        for _ in range(int(r() * 3)):
            city, _postal, country = _CITIES[int(r() * len(_CITIES))]
            phones = [_PHONES[int(r() * len(_PHONES))]]
            if r() < 0.5:
                phones.append(_PHONES[int(r() * len(_PHONES))])
            locations.append({"city": city, "country": country, "phones": phones})
        rec["locations"] = locations
        return rec, upd

    def contact(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, _created, upd = contact_record(rng, n, lo, hi, refs)
        r = rng.random
        rec["id"] = contact_id(n)
        if rec["customer_id"] is not None:
            rec["customer_id"] = refs.customer_id(rec["customer_id"])
        rec["phone_numbers"] = [
            {"kind": _PHONE_KINDS[int(r() * 3)], "number": _PHONES[int(r() * len(_PHONES))]}
            for _ in range(int(r() * 3))
        ]
        return rec, upd

    def case(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, _created, upd = case_record(rng, n, lo, hi, refs)
        rec["id"] = case_id(n)
        if rec["customer_id"] is not None:
            rec["customer_id"] = refs.customer_id(rec["customer_id"])
        if rec["contact_id"] is not None:
            rec["contact_id"] = refs.contact_id(rec["contact_id"])
        return rec, upd

    def lead(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, _created, upd = lead_record(rng, n, lo, hi, refs)
        r = rng.random
        rec["id"] = lead_id(n)
        if rec["contact_id"] is not None:
            rec["contact_id"] = refs.contact_id(rec["contact_id"])
        if r() < 0.05:
            rec["score"] = "n/a"  # an integer column that sometimes holds text
        return rec, upd

    def opportunity(
        rng: random.Random, n: int, lo: int, hi: int, refs: Refs
    ) -> tuple[dict[str, Any], int]:
        rec, _created, upd = opportunity_record(rng, n, lo, hi, refs)
        r = rng.random
        rec["id"] = opportunity_id(n)
        if rec["customer_id"] is not None:
            rec["customer_id"] = refs.customer_id(rec["customer_id"])
        if rec["contact_id"] is not None:
            rec["contact_id"] = refs.contact_id(rec["contact_id"])
        rec["external_ref"] = f"{int(r() * 10_000):06d}"
        return rec, upd

    return {
        "customers": customer,
        "contacts": contact,
        "cases": case,
        "leads": lead,
        "opportunities": opportunity,
    }


# --- the profile ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """A profile bound to a seed: generators plus the id form of every collection."""

    name: str
    seed: int
    generators: Mapping[str, Generator]
    id_forms: Mapping[str, IdForm]

    def id_form(self, resource: str) -> IdForm:
        """The id form of a built-in resource, or the string id form this profile gives a
        collection added at run time whose ids are not integers."""
        form = self.id_forms.get(resource)
        if form is not None:
            return form
        if self.name == "crm":
            return sf_ids(sf_custom_prefix(resource))
        return uuid_ids(self.seed, resource)

    def note_id_form(self) -> IdForm:
        """The id form of customer notes: integers in the declared profile (whose ids are all
        integers), else the profile's own form."""
        if self.name == "declared":
            return INT_IDS
        if self.name == "crm":
            return sf_ids(SF_PREFIXES["notes"])
        return uuid_ids(self.seed, "notes")

    def refs(self, customers: int, contacts: int) -> Refs:
        """References to the first ``customers``/``contacts`` records, in this profile's ids."""
        return Refs(
            customers,
            contacts,
            self.id_forms["customers"].make,
            self.id_forms["contacts"].make,
        )

    def change_one_field(self, resource: str, rec: dict[str, Any], call: int) -> None:
        """The "one ordinary field" update_records changes on each built-in resource."""
        if resource == "customers":
            if "employee_count" in rec or self.name != "crm":
                rec["employee_count"] = (rec.get("employee_count") or 0) + 1
            else:  # the crm profile never sends employee_count, so it must not appear now
                current = rec.get("industry")
                choices = [i for i in _INDUSTRY_CYCLE if i != current]
                rec["industry"] = choices[call % len(choices)]
        elif resource == "contacts":
            current = rec.get("title")
            choices = [t for t in _TITLES_CYCLE if t != current]
            rec["title"] = choices[call % len(choices)]
        elif resource == "cases":
            current = rec.get("priority")
            pos = _PRIORITY_CYCLE.index(current) if current in _PRIORITY_CYCLE else -1
            rec["priority"] = _PRIORITY_CYCLE[(pos + 1) % len(_PRIORITY_CYCLE)]
        elif resource == "leads":
            score = rec.get("score")
            rec["score"] = (score + 7) % 101 if isinstance(score, int) else 50
        elif resource == "opportunities":
            amount = rec.get("amount")
            if self.name == "crm" and isinstance(amount, int | float):
                rec["amount"] = round(amount + 100, 4)  # keeps the CRM's four decimals
            else:
                cents = round(amount * 100) if isinstance(amount, int | float) else 0
                rec["amount"] = (cents + 10_000) / 100  # +100.00, still at most 2 decimals


def make_profile(name: str, seed: int) -> Profile:
    """The profile ``name`` (one of ``PROFILES``) for data seed ``seed``."""
    if name == "declared":
        forms = dict.fromkeys(GENERATORS, INT_IDS)
        return Profile(name, seed, GENERATORS, forms)
    if name == "crm":
        forms = {resource: sf_ids(SF_PREFIXES[resource]) for resource in GENERATORS}
        return Profile(name, seed, _crm_generators(), forms)
    if name == "uuid":
        forms = {resource: uuid_ids(seed, resource) for resource in GENERATORS}
        return Profile(name, seed, _uuid_generators(forms), forms)
    raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
