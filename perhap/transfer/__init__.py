"""Export, import and copy whole stores through the in-process store API, in constant memory.

The dump format (``perhap-dump``, version 3) is JSON Lines in UTF-8:

- line 1, a header: ``{"format":"perhap-dump","version":3,"scope":null}`` (``scope`` is the
  exported ``realm[/domain[/entity]]``, or null for the whole store);
- then one event a line, exactly the event object of the HTTP API:
  ``{"event_id","realm","domain","entity","type","event","meta","version","position","timestamp"}``;
- last, the end line ``{"format":"perhap-dump","end":true,"events":N}``, written once every event
  is out: a dump cut short between two lines has none, and its import fails once it has stored
  the events it holds.

Version 1 (before positions) is the same without ``position``, version 2 without the end line;
both still import.

Realms come in name order, each realm's events in commit order (a domain's or an entity's in its
own order when the export is scoped), so importing the lines in order recreates the commit order.
The header is optional on import: the output of ``perhap read`` imports too.

Import keeps each event's id, version, timestamp and meta; not its position: the destination
gives every event its own, in the order the events are written (the dump's order). Consecutive
events of one entity go as one atomic batch with ``expected_version`` = the first version - 1, so
an event lands at its own version or the import stops with a clear error. Importing again is idempotent: a batch that is
stored already is an idempotent replay, and a batch that is partly stored (an earlier import was
interrupted) is reconciled event by event against what the destination holds.

Modules: :mod:`.dump` (the format), :mod:`.reading` (paging through a store, and
:class:`TransferStore`: what the rest uses of one), :mod:`.export`, :mod:`.importer`, :mod:`.copy`
(copy and verify), :mod:`.progress` (the terminal's progress line) and :mod:`.remote` (a server as
a store, over the HTTP API; not imported here, as it needs the client).
"""

from .copy import CopyReport, RealmCheck, RealmDigest, copy_store, realm_digest
from .dump import (
    DUMP_FORMAT,
    DUMP_VERSION,
    EVENT_KEYS,
    OPTIONAL_KEYS,
    DumpEvent,
    TransferError,
    dump_header,
    event_to_import,
    parse_dump,
)
from .export import export_dump
from .importer import (
    BATCH_BYTES,
    BATCH_EVENTS,
    WINDOW_BATCHES,
    WINDOW_BYTES,
    Importer,
    ImportStats,
    import_dump,
)
from .progress import Progress, file_size
from .reading import PAGE_SIZE, TransferStore, iter_keys, iter_scope

__all__ = [
    "BATCH_BYTES", "BATCH_EVENTS", "DUMP_FORMAT", "DUMP_VERSION", "EVENT_KEYS", "OPTIONAL_KEYS", "PAGE_SIZE",
    "WINDOW_BATCHES", "WINDOW_BYTES", "CopyReport", "DumpEvent", "ImportStats", "Importer", "Progress",
    "RealmCheck", "RealmDigest", "TransferError", "TransferStore", "copy_store", "dump_header", "event_to_import",
    "export_dump", "file_size", "import_dump", "iter_keys", "iter_scope", "parse_dump", "realm_digest",
]
