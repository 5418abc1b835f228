"""A consumer group's settings: what a PUT may say, checked once, and compared on a second PUT."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from ..model import MAX_POSITION, Scope, check_name
from ..store.query import MAX_TYPES

MAX_ACK_TIMEOUT = 86_400.0  # a day: a longer lease is a lost consumer, not a slow one
#: The settings a PUT (the client, the CLI) leaves out.
DEFAULT_ACK_TIMEOUT = 30.0
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_MAX_IN_FLIGHT = 1000
#: Events one lease (GET .../events) takes when its ``max`` is left out, and its longest ``wait``.
DEFAULT_LEASE_MAX = 100
MAX_LEASE_WAIT = 300.0

# How the service (service.py) works, not settings of a group:
#: Compare-and-set attempts of one operation before it gives up (503): only other processes
#: writing the same group at the same moment make an attempt fail.
MAX_ATTEMPTS = 50
#: How often a waiting consumer looks at a group another process may have changed, where no
#: notification says so (Cassandra; a PostgreSQL notification lost with its connection).
SHARED_POLL = 0.5
#: A consumer's last activity is stored again after this long (an idle poll writes nothing before).
SEEN_EVERY = 5.0
#: Event bodies kept for redelivery, so a retried event is not read by id again: at most this
#: many, holding at most BODY_CACHE_BYTES of data and meta (by count alone, 20,000 events of 900 KB
#: that a group had read were 18 GB kept).
BODY_CACHE = 20_000
BODY_CACHE_BYTES = 64 * 1024 * 1024
#: A group's read of its scope (looking for new events, or an entity's deferred ones) stops once
#: its events hold this many bytes (one event at least), and the next read goes on from there.
READ_BYTES = 16 * 1024 * 1024
MAX_DELIVERIES = 1000
MAX_IN_FLIGHT = 10_000
STARTS = ("beginning", "end")
_KEYS = ("domain", "types", "start", "ack_timeout", "max_deliveries", "max_in_flight")


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """What a group delivers (``domain``, ``types``: the whole realm and every type when None),
    from where (``start``), and its lease rules."""

    domain: str | None = None
    types: tuple[str, ...] | None = None
    start: str | int = "beginning"
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> GroupSettings:
        """The settings of a PUT body (defaults for what it leaves out); a 400 names what is wrong."""
        unknown = sorted(set(body) - set(_KEYS))
        if unknown:
            raise InvalidInput(f"unknown group setting {unknown[0]!r}: a group takes {', '.join(_KEYS)}")
        domain = body.get("domain")
        if domain is not None:
            domain = check_name(domain, "domain")
        return cls(domain, _types(body.get("types")), _start(body.get("start", "beginning")),
                   _number(body.get("ack_timeout", DEFAULT_ACK_TIMEOUT), "ack_timeout", 0.0, MAX_ACK_TIMEOUT,
                           exclusive=True),
                   _count(body.get("max_deliveries", DEFAULT_MAX_DELIVERIES), "max_deliveries", MAX_DELIVERIES),
                   _count(body.get("max_in_flight", DEFAULT_MAX_IN_FLIGHT), "max_in_flight", MAX_IN_FLIGHT))

    def to_json(self) -> dict[str, Any]:
        timeout = self.ack_timeout
        return {"domain": self.domain, "types": None if self.types is None else list(self.types),
                "start": self.start, "ack_timeout": int(timeout) if timeout.is_integer() else timeout,
                "max_deliveries": self.max_deliveries, "max_in_flight": self.max_in_flight}

    def differences(self, other: GroupSettings) -> list[str]:
        """The names of the settings that differ, for a 409."""
        mine, theirs = self.to_json(), other.to_json()
        for said in (mine, theirs):  # positions 0 and 1 are the beginning: the same start, said so
            if said["start"] in (0, 1) and not isinstance(said["start"], bool):
                said["start"] = "beginning"
        return [key for key in _KEYS if mine[key] != theirs[key]]

    def scope(self, realm: str) -> Scope:
        return Scope(realm, self.domain)


def check_group_name(value: Any) -> str:
    return check_name(value, "group")


def _types(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("types must be a list of event type names (or null for every type)")
    if len(value) > MAX_TYPES:
        raise InvalidInput(f"types may name at most {MAX_TYPES} types, got {len(value)}")
    names = tuple(sorted({check_name(t, "type") for t in value}))
    return names or None  # an empty list filters nothing: the same group as no list


def _start(value: Any) -> str | int:
    if isinstance(value, str) and value in STARTS:
        return value
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POSITION:
        return value
    raise InvalidInput(f'start must be "beginning", "end" or a position (an integer from 0 to {MAX_POSITION})')


def _number(value: Any, name: str, low: float, high: float, *, exclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a number of seconds")
    if not (low < value if exclusive else low <= value) or value > high:
        raise InvalidInput(f"{name} must be more than {low:g} and at most {high:g} seconds, got {value}")
    return float(value)


def _integral(value: Any) -> Any:
    """A float with nothing after the point (5.0, which JSON Schema calls an integer) as an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _count(value: Any, name: str, high: int) -> int:
    value = _integral(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidInput(f"{name} must be an integer from 1 to {high}")
    return value
