"""perhap as a persistence module for the `eventsourcing` library (``pip install '.[eventsourcing]'`` in a checkout).

Set ``PERSISTENCE_MODULE=perhap.eventsourcing`` and ``PERHAP_URL`` (a server, or a store opened in
process); see docs/eventsourcing.md for the mapping and the settings.
"""

try:
    import eventsourcing  # noqa: F401 (only to say what is missing, in words)
except ImportError as exc:
    raise ImportError(
        "perhap.eventsourcing needs the eventsourcing library 9.5.x: pip install 'eventsourcing>=9.5,<9.6', "
        "or pip install '.[eventsourcing]' in a perhap checkout") from exc

from .factory import Factory
from .recorders import (
    PerhapAggregateRecorder,
    PerhapApplicationRecorder,
    PerhapProcessRecorder,
    PerhapSnapshotRecorder,
    PerhapTrackingRecorder,
)
from .subscription import PerhapSubscription

__all__ = [
    "Factory",
    "PerhapAggregateRecorder",
    "PerhapApplicationRecorder",
    "PerhapProcessRecorder",
    "PerhapSnapshotRecorder",
    "PerhapSubscription",
    "PerhapTrackingRecorder",
]
