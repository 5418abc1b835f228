"""The backend-neutral storage interface: the Store template, its value types and its errors.

``from perhap.store import X`` keeps working for every name the store has ever exported here.
"""

from ..errors import EventIdConflict, InvalidInput, NotFound, PerhapError, StorageUnavailable, VersionConflict
from ..ids import check_event_id, check_timestamp, utc_timestamp, uuid7
from ..jsoncodec import EMPTY_OBJECT, canonical_json, dump_json, load_json
from ..model import (
    DEFAULT_LIMIT,
    MAX_BATCH,
    MAX_LIMIT,
    MAX_NAME_BYTES,
    MAX_VERSION,
    RESERVED_NAME,
    Appended,
    AppendResult,
    Cursor,
    Event,
    KeysPage,
    NewEvent,
    Page,
    Scope,
    check_expected_version,
    check_limit,
    check_name,
    new_event,
    prepare_batch,
    replay_or_conflict,
)
from .base import Statistic, Store
from .job import WriteJob
from .subscription import Subscription

__all__ = [
    "DEFAULT_LIMIT", "EMPTY_OBJECT", "MAX_BATCH", "MAX_LIMIT", "MAX_NAME_BYTES", "MAX_VERSION",
    "RESERVED_NAME", "AppendResult", "Appended", "Cursor", "Event", "EventIdConflict", "InvalidInput",
    "KeysPage", "NewEvent", "NotFound", "Page", "PerhapError", "Scope", "Statistic", "StorageUnavailable",
    "Store", "Subscription", "VersionConflict", "WriteJob", "canonical_json", "check_event_id",
    "check_expected_version", "check_limit", "check_name", "check_timestamp", "dump_json", "load_json",
    "new_event", "prepare_batch", "replay_or_conflict", "utc_timestamp", "uuid7",
]
