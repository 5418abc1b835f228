"""The PostgreSQL backend."""

from .store import PostgresStore, open_postgres

__all__ = ["PostgresStore", "open_postgres"]
