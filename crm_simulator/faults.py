"""Fault configuration and the seeded picker that decides which request gets which fault."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

# Random fault kinds, in the order their rates are stacked on one uniform draw per request.
# One draw per request means the rates are exact fractions and mutually exclusive.
FAULT_KINDS: tuple[tuple[str, str], ...] = (
    ("429", "rate_429"),
    ("500", "rate_500"),
    ("502", "rate_502"),
    ("503", "rate_503"),
    ("504", "rate_504"),
    ("drop", "rate_drop"),
    ("slow", "rate_slow"),
    ("not_json", "rate_not_json"),
    ("no_data", "rate_no_data"),
    ("data_not_list", "rate_data_not_list"),
    ("no_total", "rate_no_total"),
)


@dataclass
class Faults:
    """What the simulator breaks on purpose. Rates are fractions of requests (0..1).

    Mutable at run time: the simulator reads the fields on every request. Assigning a new
    ``Faults`` object to ``CRMSimulator.faults`` restarts the seeded RNG and the ``max_faults``
    budget.
    """

    seed: int = 0
    rate_429: float = 0.0  # 429 with header Retry-After: <retry_after> seconds
    retry_after: float = 0.05
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_504: float = 0.0
    rate_drop: float = 0.0  # headers + half the body, then the connection is closed
    rate_slow: float = 0.0  # sleep slow_seconds before answering normally
    slow_seconds: float = 0.0
    rate_not_json: float = 0.0  # 200 with an HTML body
    rate_no_data: float = 0.0  # 200 JSON page without "data"
    rate_data_not_list: float = 0.0  # 200 JSON page where "data" is an object
    rate_no_total: float = 0.0  # 200 valid page without "total"
    omit_total: bool = False  # never send "total"
    insert_during_paging: int = 0  # after each served page, append this many new records
    # The page at this startIndex comes back with "data": [] (and the usual total), as a CRM
    # that glitches, or counts records it does not serve; `empty_page_times` times, or always.
    empty_page_at: int | None = None
    empty_page_times: int | None = None
    only_resources: tuple[str, ...] | None = None  # None = faults apply to every resource
    max_faults: int | None = None  # stop injecting random faults after this many

    def applies_to(self, resource: str) -> bool:
        return self.only_resources is None or resource in self.only_resources

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class FaultPicker:
    """Draws at most one random fault per request from a RNG seeded by ``Faults.seed``."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.injected = 0

    def pick(self) -> str | None:
        f = self.faults
        if f.max_faults is not None and self.injected >= f.max_faults:
            return None
        rates = [(kind, float(getattr(f, attr))) for kind, attr in FAULT_KINDS]
        if not any(rate > 0 for _, rate in rates):
            return None  # do not consume the RNG when nothing can fire
        u = self.rng.random()
        acc = 0.0
        for kind, rate in rates:
            acc += rate
            if u < acc:
                self.injected += 1
                return kind
        return None
