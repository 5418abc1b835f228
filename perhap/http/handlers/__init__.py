"""The handlers, one per kind of operation in the route table."""

from __future__ import annotations

from collections.abc import Mapping

from ..requests import Handler
from ..routes import Kind
from . import groups, reads, system, writes

HANDLERS: Mapping[Kind, Handler] = {
    Kind.ROOT: system.index,
    Kind.UI: system.ui,
    Kind.HEALTH: system.health,
    Kind.DOCUMENT: system.document,
    Kind.METRICS: system.metrics,
    Kind.KEYS: reads.keys,
    Kind.READ: reads.read,
    Kind.READ_OR_EVENT: reads.read_or_event,
    Kind.APPEND: writes.append,
    Kind.APPEND_BATCH: writes.append_batch,
    Kind.APPEND_MANY: writes.append_many,
    Kind.GROUPS: groups.list_groups,
    Kind.GROUP: groups.describe,
    Kind.GROUP_CREATE: groups.create,
    Kind.GROUP_DELETE: groups.delete,
    Kind.GROUP_LEASE: groups.lease,
    Kind.GROUP_ACK: groups.ack,
    Kind.GROUP_NACK: groups.nack,
    Kind.GROUP_PARKED: groups.parked,
    Kind.GROUP_REPLAY: groups.replay,
    Kind.NO_ROUTE: system.no_route,
    Kind.WRONG_METHOD: system.wrong_method,
}
