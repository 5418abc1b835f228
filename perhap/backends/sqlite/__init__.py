"""The embedded SQLite backend (the default).

Modules: ``store`` (the Store subclass: reads, life cycle), ``schema`` (tables, opening a file,
migrating schemas 1 and 2), ``reads`` (scope reads as index walks), ``queries`` (one event, names, rows
to Events), ``writer`` (the writer thread, group commit, fast and careful paths), ``writes`` (one
job's checks, rows and positions), ``ring`` (recent events for subscribers), ``lock`` (one
process owns a file).
"""

from .schema import SCHEMA, SCHEMA_VERSION
from .store import SQLiteStore, open_sqlite

__all__ = ["SCHEMA", "SCHEMA_VERSION", "SQLiteStore", "open_sqlite"]
