"""CRM API simulator (see ``server.py`` for the contract and usage)."""

from .faults import Faults
from .profiles import PROFILES
from .records import DEFAULT_COUNTS, RESOURCES
from .server import CRMSimulator, RequestLog

__all__ = ["CRMSimulator", "DEFAULT_COUNTS", "Faults", "PROFILES", "RESOURCES", "RequestLog"]
