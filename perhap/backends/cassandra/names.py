"""Names one level below another (realms, domains, entities, types), written once per process."""

from __future__ import annotations

import heapq
import zlib

from .driver import gather
from .records import EntityKey
from .schema import ENTITY_SHARDS, Keyspace

#: Drop the memory of written names (and directory rows) past this many: rewriting is harmless.
MAX_KNOWN = 200_000


def entity_shard(name: str) -> int:
    return zlib.crc32(name.encode()) % ENTITY_SHARDS


class Names:
    """The ``names`` table, and the memory of rows this process has written already."""

    def __init__(self, ks: Keyspace) -> None:
        self.ks = ks
        #: Key rows (("r", realm), ("d", realm, domain), ("e", realm, domain, entity)) and directory
        #: rows ((realm, scope, bucket), added by the writer) already written.
        self.known: set[tuple[str | int, ...]] = set()

    async def write(self, key: EntityKey) -> None:
        """Make an entity's realm, domain and entity listed (only the first time this process sees them)."""
        ks = self.ks
        realm, domain, entity = key
        jobs = []
        for known, args in ((("r", realm), (ks.ns.realms, "", 0, ks.ns.shown(realm))),
                            (("d", realm, domain), (realm, "", 0, domain)),
                            (("e", *key), (realm, domain, entity_shard(entity), entity))):
            if known not in self.known:
                jobs.append(ks.db.run(ks.q.name_add, args))
        await gather(jobs)
        self.known.update({("r", realm), ("d", realm, domain), ("e", *key)})
        if len(self.known) > MAX_KNOWN:
            self.known.clear()

    async def read(self, realm: str | None, domain: str | None, entity: str | None,
                   after: str, limit: int) -> list[str]:
        """Up to ``limit`` names one level below the given one, greater than ``after``, in order."""
        ks = self.ks
        run, names = ks.db.run, ks.q.names
        if realm is None:
            return [r[0] for r in await run(names, (ks.ns.realms, "", 0, after, limit))]
        realm = ks.ns.stored(realm)
        if domain is None:
            return [r[0] for r in await run(names, (realm, "", 0, after, limit))]
        if entity is None:
            shards = await gather([run(names, (realm, domain, s, after, limit)) for s in range(ENTITY_SHARDS)])
            return [r[0] for r in heapq.merge(*shards)][:limit]
        rows = await run(ks.q.types, (realm, domain, entity))
        return sorted(n for n in (rows[0][0] or ()) if n > after)[:limit] if rows else []
