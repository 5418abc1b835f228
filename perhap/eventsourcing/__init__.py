"""perhap as a persistence module for the `eventsourcing` library (``pip install 'perhap[eventsourcing]'``).

Set ``PERSISTENCE_MODULE=perhap.eventsourcing`` and ``PERHAP_URL`` (a server, or a store opened in
process); see docs/eventsourcing.md for the mapping and the settings.
"""

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
