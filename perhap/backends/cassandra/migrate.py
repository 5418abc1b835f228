"""Bringing a keyspace of schema 1 or 2 to schema 3: positions for the events already stored.

Each event gets ``ts * 1024 + rank``, its rank among its realm's events of that same ts in the
order readers used until now, ``(ts, id)``; so positions increase in today's realm order. They
are written into the event's four rows (realm and domain index, entity, by id), once, by the
process that holds the migration lock (a ``meta`` row changed by Paxos rounds, with an expiry
so that a process that died while migrating is replaced); the others wait until the new schema
version is recorded. New events are placed above every migrated ts (``position_floor``), so a
writer slot never meets a migrated rank. Deterministic: a migration cut short and done again
writes the same values. Blocking: it runs in open_keyspace's thread.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from cassandra.concurrent import execute_concurrent_with_args

from ...errors import StorageUnavailable
from . import clock
from .records import ATTEMPT, EVENT, SLOT_BITS, Namespace
from .url import CassandraOptions

log = logging.getLogger("perhap.cassandra")

FLOOR = "position_floor"  # meta: every migrated event's ts lies below it
LOCK = "migration"
LOCK_US = 60_000_000  # the migration lock's lease, renewed while the migration runs
CONCURRENCY = 64


def give_positions(session: Any, options: CassandraOptions, old: str, new: str) -> None:
    """Give every stored event its position and record schema ``new``, or wait for the process
    doing it."""
    ks = options.keyspace
    waited = False
    while True:
        row = session.execute(f"SELECT value FROM {ks}.meta WHERE key = 'schema_version'").one()
        version = None if row is None else row[0]
        if version == new:
            return
        if version != old:
            raise StorageUnavailable(f"keyspace {ks} changed schema from {old} to {version} while this "
                                     "process was bringing it up to date; start it again")
        lock = Lock(session, ks, options.skew_us)
        if not lock.take():
            if not waited:
                log.warning("waiting for another process to give positions to the events of keyspace %s", ks)
                waited = True
            time.sleep(1)
            continue
        try:
            floor = Migration(session, ks, lock).run()
            session.execute(f"INSERT INTO {ks}.meta (key, value) VALUES (%s, %s)", (FLOOR, str(floor)))
            session.execute(f"UPDATE {ks}.meta SET value = %s WHERE key = 'schema_version' IF value = %s",
                            (new, old), execution_profile="lwt")
        finally:
            lock.release()
        return


class Lock:
    """The migration lock: a lease in ``meta`` taken and renewed by Paxos rounds."""

    def __init__(self, session: Any, ks: str, skew_us: int) -> None:
        self.session, self.ks, self.skew_us = session, ks, skew_us
        self.me = uuid.uuid4().hex
        self.value: str | None = None
        self.expires = 0

    def _value(self) -> tuple[str, int]:
        expires = clock.now_us() + LOCK_US
        return json.dumps({"holder": self.me, "expires": expires}), expires

    def take(self) -> bool:
        """Take the lock if it is free or its holder's lease ran out; False if it is held."""
        ks, s = self.ks, self.session
        value, expires = self._value()
        row = s.execute(f"INSERT INTO {ks}.meta (key, value) VALUES (%s, %s) IF NOT EXISTS",
                        (LOCK, value), execution_profile="lwt").one()
        if not row["[applied]"]:
            held = json.loads(row["value"])
            if clock.now_us() <= held["expires"] + self.skew_us:
                return False
            row = s.execute(f"UPDATE {ks}.meta SET value = %s WHERE key = %s IF value = %s",
                            (value, LOCK, row["value"]), execution_profile="lwt").one()
            if not row["[applied]"]:
                return False
        self.value, self.expires = value, expires
        return True

    def keep(self) -> None:
        """Renew the lease when half of it is gone; a lost lock stops this migration."""
        if self.expires - clock.now_us() > LOCK_US // 2:
            return
        value, expires = self._value()
        row = self.session.execute(f"UPDATE {self.ks}.meta SET value = %s WHERE key = %s IF value = %s",
                                   (value, LOCK, self.value), execution_profile="lwt").one()
        if not row["[applied]"]:
            raise StorageUnavailable("another process took over the migration of this keyspace (this one "
                                     "was too slow to renew its lock); start this one again")
        self.value, self.expires = value, expires

    def release(self) -> None:
        if self.value is not None:
            self.session.execute(f"DELETE FROM {self.ks}.meta WHERE key = %s IF value = %s",
                                 (LOCK, self.value), execution_profile="lwt")
            self.value = None


class Migration:
    """One pass over every realm index of the keyspace, bucket by bucket, in order."""

    def __init__(self, session: Any, ks: str, lock: Lock) -> None:
        self.session, self.ks, self.lock = session, ks, lock
        p = session.prepare
        self.index = p(f"UPDATE {ks}.scope_log SET position = ? WHERE realm = ? AND scope = ? AND bucket = ? "
                       f"AND ts = ? AND id = ?")
        self.entity = p(f"UPDATE {ks}.entity_log SET position = ? WHERE realm = ? AND domain = ? AND entity = ? "
                        f"AND kind = {EVENT} AND seq = ? AND id = ?")
        self.by_id = p(f"UPDATE {ks}.events_by_id SET position = ? WHERE shard = ? AND id = ?")
        self.marker = p(f"SELECT aborted FROM {ks}.entity_log WHERE realm = ? AND domain = ? AND entity = ? "
                        f"AND kind = {ATTEMPT} AND seq = 0 AND id = ?")
        self.fence = p(f"INSERT INTO {ks}.entity_log (realm, domain, entity, kind, seq, id, aborted) "
                       f"VALUES (?, ?, ?, {ATTEMPT}, 0, ?, true) IF NOT EXISTS")
        self.rows = p(f"SELECT ts, id, domain, entity, version, txn, ok FROM {ks}.scope_log "
                      f"WHERE realm = ? AND scope = '' AND bucket = ?")
        self.buckets = p(f"SELECT bucket FROM {ks}.scope_dir WHERE realm = ? AND scope = '' AND era = ?")
        self.decided: dict[uuid.UUID, bool] = {}

    def run(self) -> int:
        """Write every event's position; returns the ts every later position must start from."""
        partitions = self.session.execute(f"SELECT DISTINCT realm, scope, era FROM {self.ks}.scope_dir")
        eras: dict[str, list[int]] = {}
        for realm, scope, era in partitions:
            if scope == "" and era >= 0:
                eras.setdefault(realm, []).append(era)
        floor = 0
        for realm in sorted(eras):
            for era in sorted(eras[realm]):
                for (bucket,) in self.session.execute(self.buckets, (realm, era)):
                    floor = max(floor, self.bucket(realm, bucket))
                    self.lock.keep()
        return floor + 1

    def bucket(self, realm: str, bucket: int) -> int:
        """Positions for one bucket of a realm's index; returns its highest ts."""
        ns = Namespace(realm.split("/", 1)[0] if "/" in realm else "")
        index: list[tuple[Any, ...]] = []
        entities: list[tuple[Any, ...]] = []
        ids: list[tuple[Any, ...]] = []
        last_ts, rank = -1, 0
        for ts, u, domain, entity, version, txn, ok in self.session.execute(self.rows, (realm, bucket)):
            rank = rank + 1 if ts == last_ts else 0
            if rank >> SLOT_BITS:
                raise StorageUnavailable(f"cannot give positions to realm {realm}: more than {1 << SLOT_BITS} "
                                         f"events share the microsecond {ts}")
            last_ts = ts
            position = ts << SLOT_BITS | rank
            index += [(position, realm, "", bucket, ts, u), (position, realm, domain, bucket, ts, u)]
            ids.append((position, ns.shard(u), u))
            if ok or self.committed((realm, domain, entity), txn):
                entities.append((position, realm, domain, entity, version, u))
        for statement, args in ((self.index, index), (self.entity, entities), (self.by_id, ids)):
            if args:
                execute_concurrent_with_args(self.session, statement, args, concurrency=CONCURRENCY)
        return last_ts

    def committed(self, key: tuple[str, str, str], txn: uuid.UUID) -> bool:
        """Whether a pending row's attempt committed; one that has not is fenced so that it never
        does (the readers of the new schema delete its rows, see settle.py)."""
        if txn not in self.decided:
            marker = self.session.execute(self.marker, (*key, txn)).one()
            if marker is None:
                fence = self.session.execute(self.fence, (*key, txn), execution_profile="lwt").one()
                self.decided[txn] = not fence["[applied]"] and not fence["aborted"]
            else:
                self.decided[txn] = not marker[0]
        return self.decided[txn]
