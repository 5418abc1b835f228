"""Processes for the eventsourcing end-to-end test: a bank-accounts writer and a ledger follower.

Each is run as ``python -m tests.es_e2e.writer`` / ``python -m tests.es_e2e.follower`` with
``PERSISTENCE_MODULE=perhap.eventsourcing`` and ``PERHAP_URL`` naming a ``perhap serve``.
"""
