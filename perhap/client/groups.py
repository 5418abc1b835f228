"""Consumer groups on the client side, without I/O: the :class:`Delivery` value type, and
:class:`GroupCore`, which builds every request of the ``/_groups`` API and parses its answers.

The sync and async clients send these ops as they send the others (:mod:`.core`); the worker
loops of ``consume`` are in :mod:`.workers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import InvalidInput
from ..ids import check_event_id
from ..model import Cursor, Event, check_consumer, check_name  # noqa: F401 (Cursor: see Delivery)
from .core import ClientCore, H, Op
from .errors import unexpected
from .wire import event_from_dict, json_body, path

NACK_ACTIONS = ("retry", "park", "release")


@dataclass(frozen=True, slots=True)
class Delivery(Event):
    """An event as a consumer group hands it out: the :class:`~perhap.model.Event` (any code that
    takes an Event takes it), plus ``delivery``, how many times it was delivered (1 the first time).

    A parked event (:meth:`Client.parked`) also has ``parked_at`` (RFC 3339) and ``reason``
    (``"nack"`` or ``"max_deliveries"``); both are None for a leased one.
    """

    # The __init__ dataclass makes here resolves the fields inherited from Event (``cursor:
    # Cursor | None``) in this module's globals: hence Cursor's import above.

    delivery: int = 1
    parked_at: str | None = None
    reason: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form: the event's, plus ``delivery`` (and ``parked_at``, ``reason`` when parked)."""
        item = Event.to_json_dict(self)  # (not super(): slotted dataclasses are rebuilt classes)
        item["delivery"] = self.delivery
        if self.parked_at is not None:
            item["parked_at"] = self.parked_at
            item["reason"] = self.reason
        return item


def delivery_from_dict(item: Any) -> Delivery:
    """A :class:`Delivery` from its wire form (raises KeyError or TypeError when it is not one)."""
    e = event_from_dict(item)
    delivery, parked_at, reason = item["delivery"], item.get("parked_at"), item.get("reason")
    if not isinstance(delivery, int) or not isinstance(parked_at, str | None) or not isinstance(reason, str | None):
        raise TypeError("not a delivered event")
    return Delivery(e.event_id, e.realm, e.domain, e.entity, e.type, e.version, e.timestamp, e.data_json,
                    e.meta_json, e.position, delivery=delivery, parked_at=parked_at, reason=reason)


def _event_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):  # one id given bare would be iterated as characters
        raise InvalidInput("event_ids must be a list of event ids")
    return [check_event_id(i, "event_ids") for i in ids]


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{what} must be a number of seconds, 0 or more")
    return float(value)


def _group_object(response: httpx.Response, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise unexpected(response, "not a consumer group")
    return body


def _counts(response: httpx.Response, *keys: str) -> dict[str, int]:
    """The named integer members of an answer (``{"acknowledged": 3}``)."""
    body = json_body(response)
    counts: dict[str, int] = {}
    for key in keys:
        value = body.get(key) if isinstance(body, dict) else None
        if not isinstance(value, int):
            raise unexpected(response, f"no {key} count")
        counts[key] = value
    return counts


def _parked_page(response: httpx.Response) -> tuple[list[Delivery], str | None]:
    body = json_body(response)
    following = body.get("next") if isinstance(body, dict) else None
    if following is not None and not isinstance(following, str):
        raise unexpected(response, "next is not an event id")
    return _delivered(response, body), following


def _deliveries(response: httpx.Response) -> list[Delivery]:
    return _delivered(response, json_body(response))


def _delivered(response: httpx.Response, body: Any) -> list[Delivery]:
    try:
        return [delivery_from_dict(e) for e in body["events"]]
    except (KeyError, TypeError):
        raise unexpected(response, "not a list of delivered events") from None


class GroupCore(ClientCore[H]):
    """:class:`ClientCore` plus the requests of consumer groups (``/_groups/{realm}/{group}...``)."""

    def _group_path(self, realm: str, group: str, *rest: str) -> str:
        check_name(realm, "realm", realm=True)
        check_name(group, "group")
        return path("_groups", realm, group, *rest)

    def _create_group_op(self, realm: str, group: str, domain: str | None, types: Sequence[str] | None,
                         start: str | int, ack_timeout: float, max_deliveries: int,
                         max_in_flight: int) -> Op[dict[str, Any]]:
        if domain is not None:
            check_name(domain, "domain")
        if isinstance(types, str):
            raise InvalidInput("types must be a list of event types")
        names = None if types is None else [check_name(t, "type") for t in types]
        body = {"domain": domain, "types": names, "start": start, "ack_timeout": ack_timeout,
                "max_deliveries": max_deliveries, "max_in_flight": max_in_flight}
        request = self._request("PUT", self._group_path(realm, group), body=body)
        return Op(request, lambda r: _group_object(r, json_body(r)))

    def _groups_op(self, realm: str) -> Op[list[dict[str, Any]]]:
        check_name(realm, "realm", realm=True)

        def parse(response: httpx.Response) -> list[dict[str, Any]]:
            body = json_body(response)
            listed = body.get("groups") if isinstance(body, dict) else None
            if not isinstance(listed, list):
                raise unexpected(response, "not a list of consumer groups")
            return [_group_object(response, g) for g in listed]

        return Op(self._request("GET", path("_groups", realm)), parse)

    def _group_op(self, realm: str, group: str) -> Op[dict[str, Any]]:
        request = self._request("GET", self._group_path(realm, group))
        return Op(request, lambda r: _group_object(r, json_body(r)))

    def _delete_group_op(self, realm: str, group: str) -> Op[None]:
        def parse(response: httpx.Response) -> None:
            if response.status_code >= 400:
                json_body(response)  # raises the answer's error

        return Op(self._request("DELETE", self._group_path(realm, group)), parse)

    def _lease_op(self, realm: str, group: str, consumer: str, max: int, wait: float) -> Op[list[Delivery]]:
        consumer = check_consumer(consumer)
        if isinstance(max, bool) or not isinstance(max, int) or max < 1:
            raise InvalidInput("max must be an integer, 1 or more")
        wait = _seconds(wait, "wait")
        # A long poll answers after up to `wait` seconds: the read timeout must outlast it.
        base = self._http.timeout
        read = None if base.read is None else base.read + wait
        timeout = httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)
        # Fixed-point: a query parameter in exponent form (1e-05) is not a number every parser takes.
        params = {"consumer": consumer, "max": str(max), "wait": f"{wait:.3f}".rstrip("0").rstrip(".")}
        request = self._request("GET", self._group_path(realm, group, "events"), params=params, timeout=timeout)
        return Op(request, _deliveries)

    def _ack_op(self, realm: str, group: str, consumer: str, event_ids: Sequence[str]) -> Op[int]:
        body = {"consumer": check_consumer(consumer), "event_ids": _event_ids(event_ids)}
        request = self._request("POST", self._group_path(realm, group, "ack"), body=body)
        return Op(request, lambda r: _counts(r, "acknowledged")["acknowledged"])

    def _nack_op(self, realm: str, group: str, consumer: str, event_ids: Sequence[str],
                 action: str) -> Op[dict[str, int]]:
        if action not in NACK_ACTIONS:
            raise InvalidInput(f'action must be "retry", "park" or "release", got {action!r}')
        body = {"consumer": check_consumer(consumer), "event_ids": _event_ids(event_ids), "action": action}
        request = self._request("POST", self._group_path(realm, group, "nack"), body=body)
        keys = ("released",) if action == "release" else ("retried", "parked")
        return Op(request, lambda r: _counts(r, *keys))

    def _parked_op(self, realm: str, group: str, following: str | None) -> Op[tuple[list[Delivery], str | None]]:
        """A page of parked events, and the ``following`` of the next page (None at the end)."""
        params = None if following is None else {"following": following}
        return Op(self._request("GET", self._group_path(realm, group, "parked"), params=params), _parked_page)

    def _replay_op(self, realm: str, group: str, event_ids: Sequence[str] | None) -> Op[int]:
        body = None if event_ids is None else {"event_ids": _event_ids(event_ids)}
        request = self._request("POST", self._group_path(realm, group, "parked", "replay"), body=body)
        return Op(request, lambda r: _counts(r, "replayed")["replayed"])
