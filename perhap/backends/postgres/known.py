"""What the writer's own commits tell it, so that a group of entities it already wrote to is
committed by one call of a server-side function, one round trip, instead of a transaction with a
look-up, an upsert and an insert.

After each commit the writer remembers the ids and versions of the entities it wrote, and the
head (last position) of each realm it locked. A later group whose every entity is remembered is
decided from that memory by :func:`.decide.decide`, the function that decides from a look-up, and
sent as one call of :data:`FUNCTION` (schema step 4), which is its own transaction: it takes the
group's realm locks, then runs :data:`WRITE_IF_UNCHANGED`, which first checks that the memory still
holds: every remembered version (of every entity a job writes or expects a version of) is the
stored one, and none of the group's client-chosen ids is stored. With the realms' heads, those are
all the inputs ``decide`` takes from a look-up (a look-up finding no stored id gives it nothing
more), and the heads only number the accepted events: so when the check holds, the outcomes
(acceptances and refusals alike) are the ones the look-up would have given, and the statement
writes them, each position moved by its realm's stored head minus the remembered one (schema step
6; zero when the memory is true). When the check does not hold (another process wrote to one of
the entities; rows removed behind the store's back) nothing is written, the outcomes are dropped,
and the call returns the stored heads and versions instead: the writer corrects its memory with
them and decides and calls again, once. Only a stored client id (a retry), an entity gone, a
second stale answer or a failed call sends the group to a transaction and the look-up, which finds
the stored events. The memory is therefore only a hint: stale, it costs a call, never a wrong
answer.

**A group in which no job expects a version is written relative to what is stored** (schema step
5). Whether such a job is accepted does not depend on any version (only on the group's own
client ids), and its events' versions are the remembered version plus their rank in the group:
decided from the stored values instead, every one moves by the stored value minus the remembered
one, and nothing else changes. So the statement skips the comparison of versions for such a group
(the client-id and entity checks stay) and writes each version moved by that difference, as it
does each position for every group. Whenever a call wrote rows moved from the memory's, the writer
corrects its memory from the returned values and decides again, which gives exactly the rows
written. Two processes appending to one realm (each makes the other's memory of the realm's head
stale at nearly every group) then need one call a group, not two or a transaction, with expected
versions or without.

**An entity its job expects to be new is created by the call** (schema step 7). An append with
expected version -1 to an entity the memory does not hold, in a domain it does (an
eventsourcing library's every new aggregate), is decided as if the entity had no events; the
statement checks, under the realm's lock (every writer takes it before it creates an entity of
the realm), that no such entity exists, and creates it with an id the writer took from the
entities' sequence beforehand, a block at a time. Should it exist, nothing is written and the
look-up decides (a 409 naming its version, as before). An unremembered entity whose job expects no
version, or one, still takes the look-up: it may exist, and a guess would cost a call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import asyncpg

from ...store.job import WriteJob
from .connection import LOST, Connection
from .decide import Accepted, Decided, Ids, Key, decide_group, keys_read

log = logging.getLogger("perhap.postgres")

#: Entities remembered at most (about 450 bytes each); past it the memory starts again empty,
#: which loses nothing: the next group of each entity takes the look-up and is remembered again.
LIMIT = 20_000

#: $1/$2 the group's realms and their remembered heads; $3/$4 every remembered entity the group
#: reads and its remembered version; $5 the group's client-chosen ids; $6/$7 the remembered entities
#: it writes and their new versions; $8/$9 new (entity, type) pairs; $10-$19 the events; $20 whether
#: the group may be written relative to the stored versions (no job expects a version; see
#: :func:`relative`); $21/$22 the domain ids and names of the entities its jobs expect to be new
#: (schema step 7), $23/$24 the id each is created with and its version (NULL and -1: its job was
#: refused, it is not created). One snapshot for the whole statement, taken after the realm locks
#: were granted, so ``stored`` sees every earlier group's commit, and no other writer can create an
#: entity of these realms meanwhile (each takes the realm's lock first). ``holds`` when no client id
#: is stored, every remembered entity exists and no new one does, and either the remembered
#: versions are the stored ones or the group is relative; every write is conditioned on it, so when
#: it is false nothing is written, and the stored heads and versions come back instead (and
#: ``new_exist``: the look-up must decide). When the stored heads or versions have ``moved``,
#: each position is written moved by its realm's stored head minus the remembered one, and each
#: version by its entity's (zero unless the group is relative: the check held them equal; looked
#: up by position in the arrays: a group names a few realms and at most a few hundred entities);
#: otherwise as given, at no cost per row. Each probe is of a unique index (a realm's head, an
#: entity by id, an event by id), whatever the plan for the rest.
_STATEMENT = """WITH stored AS (SELECT
    ARRAY(SELECT coalesce((SELECT e.position FROM perhap_events e WHERE e.realm_id = h.realm_id
                           ORDER BY e.position DESC LIMIT 1), 0)
          FROM unnest($1::int[]) WITH ORDINALITY AS h(realm_id, i) ORDER BY h.i) AS heads,
    ARRAY(SELECT (SELECT n.version FROM perhap_entities n WHERE n.id = c.id)
          FROM unnest($3::bigint[]) WITH ORDINALITY AS c(id, i) ORDER BY c.i) AS versions,
    EXISTS (SELECT 1 FROM unnest($5::uuid[]) AS u(id)
            WHERE EXISTS (SELECT 1 FROM perhap_events e WHERE e.event_id = u.id)) AS ids_stored,
    <new_exist> AS new_exist),
ok AS (SELECT ($20::boolean OR versions = $4::bigint[])
              AND array_position(versions, NULL) IS NULL AND NOT ids_stored AND NOT new_exist AS holds,
              heads <> $2::bigint[] OR versions <> $4::bigint[] AS moved FROM stored),
<created>up AS (UPDATE perhap_entities n SET version = CASE WHEN (SELECT moved FROM ok)
        THEN u.version + (SELECT versions[array_position($3::bigint[], u.id)] FROM stored)
             - ($4::bigint[])[array_position($3::bigint[], u.id)] ELSE u.version END
    FROM unnest($6::bigint[], $7::bigint[]) AS u(id, version)
    WHERE n.id = u.id AND (SELECT holds FROM ok)),
pairs AS (INSERT INTO perhap_entity_types SELECT p.entity_id, p.type_id
    FROM unnest($8::bigint[], $9::int[]) AS p(entity_id, type_id) WHERE (SELECT holds FROM ok)
    ON CONFLICT DO NOTHING),
ins AS (INSERT INTO perhap_events (event_id, position, realm_id, domain_id, entity_id, type_id, version,
                                   ts, data, meta)
    SELECT v.event_id,
           CASE WHEN (SELECT moved FROM ok)
                THEN v.position + (SELECT heads[array_position($1::int[], v.realm_id)] FROM stored)
                                - ($2::bigint[])[array_position($1::int[], v.realm_id)]
                ELSE v.position END,
           v.realm_id, v.domain_id, v.entity_id, v.type_id,
           CASE WHEN (SELECT moved FROM ok)  -- (a new entity's versions never move)
                THEN v.version + coalesce((SELECT versions[array_position($3::bigint[], v.entity_id)] FROM stored)
                                          - ($4::bigint[])[array_position($3::bigint[], v.entity_id)], 0)
                ELSE v.version END,
           v.ts, v.data, v.meta
    FROM unnest($10::uuid[], $11::bigint[], $12::int[], $13::int[], $14::bigint[], $15::int[],
                $16::bigint[], $17::text[], $18::json[], $19::json[])
         AS v(event_id, position, realm_id, domain_id, entity_id, type_id, version, ts, data, meta)
    WHERE (SELECT holds FROM ok))
SELECT holds, heads, versions, ids_stored, new_exist FROM ok, stored"""

#: The statement's parts for the entities a group's jobs expect to be new (schema step 7): whether
#: any exists, and the insert that creates them. A group expecting none runs the statement without
#: them (:func:`write_if_unchanged`): with nothing to probe or insert they still cost a call some
#: 50 µs of the server's CPU (the insert's set-up).
_NEW_EXIST = """EXISTS (SELECT 1 FROM unnest($21::int[], $22::text[]) AS x(domain_id, name)
            WHERE EXISTS (SELECT 1 FROM perhap_entities n WHERE n.domain_id = x.domain_id
                          AND n.name = x.name))"""
_CREATED = """created AS (INSERT INTO perhap_entities (id, domain_id, name, version) OVERRIDING SYSTEM VALUE
    SELECT x.id, x.domain_id, x.name, x.version
    FROM unnest($23::bigint[], $21::int[], $22::text[], $24::bigint[]) AS x(id, domain_id, name, version)
    WHERE x.id IS NOT NULL AND (SELECT holds FROM ok)),
"""


def write_if_unchanged(new_entities: bool) -> str:
    """The statement, with the new entities' parts or (none expected) without them."""
    return _STATEMENT.replace("<new_exist>", _NEW_EXIST if new_entities else "false").replace(
        "<created>", _CREATED if new_entities else "")


WRITE_IF_UNCHANGED = write_if_unchanged(True)

#: The writer sends a group of remembered entities as one call of this function, outside any
#: transaction: the call is its own transaction, so the group costs one round trip, and the realm
#: locks are held only while the server works. Inside, it takes the realm locks ($1, sorted) and
#: only then runs :data:`WRITE_IF_UNCHANGED` (its parameters one further on): in a volatile
#: PL/pgSQL function each statement reads a new snapshot, so the check sees every commit made
#: before the locks were granted. It notifies listeners only if it stored events; the commit at the call's
#: end delivers that. The settings are the writer's transaction's (``writer.DURABLE`` and
#: ``KEY_PLANS``), set after the locks; no JIT, which a price-only `enable_sort = off` can set
#: off for nothing (11 ms a call, seen on the lock statement's sort); and the generic plan, made
#: once a session: left to choose, the server planned the statement anew at every call once it
#: had the new entities' parts (schema step 7), some 350 µs a call under the realm's lock, which
#: halved two processes' appends in one realm (docs/performance.md, section 19). The generic plan
#: is the same probes (tests/test_pg_known.py).
def _in_function(statement: str) -> str:
    """The statement as the function runs it: its parameters one further on, its answer kept."""
    return re.sub(r"[$](\d+)", lambda m: "$" + str(int(m.group(1)) + 1), statement).replace(
        "SELECT holds, heads, versions, ids_stored, new_exist FROM ok, stored",
        "SELECT holds, heads, versions, ids_stored, new_exist INTO holds_, heads_, versions_, ids_stored_,"
        " new_exist_ FROM ok, stored")

#: The function's arguments before schema step 5 (which added the last, ``relative``).
STEP_4_ARGUMENTS = """int[], int[], bigint[], bigint[], bigint[], uuid[], bigint[], bigint[], bigint[], int[],
    uuid[], bigint[], int[], int[], bigint[], int[], bigint[], text[], json[], json[]"""

#: The function's arguments from schema step 5 to step 6 (step 7 added the last four, new entities).
STEP_6_ARGUMENTS = STEP_4_ARGUMENTS + ", boolean"

FUNCTION = """CREATE OR REPLACE FUNCTION perhap_write_known(
    """ + STEP_6_ARGUMENTS + """, int[], text[], bigint[], bigint[])
RETURNS TABLE (out_holds boolean, out_heads bigint[], out_versions bigint[], out_ids_stored boolean,
               out_new_exist boolean)
LANGUAGE plpgsql AS $body$
DECLARE holds_ boolean; heads_ bigint[]; versions_ bigint[]; ids_stored_ boolean; new_exist_ boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(%(lock_class)d, k) FROM unnest($1) AS k ORDER BY k;
    PERFORM set_config('synchronous_commit', 'on', true) WHERE current_setting('synchronous_commit') = 'off';
    PERFORM set_config('jit', 'off', true), set_config('enable_seqscan', 'off', true),
            set_config('enable_sort', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true);
    IF cardinality($22) = 0 THEN  -- no entity expected new: the statement without their parts
        """ + _in_function(write_if_unchanged(False)).replace("%", "%%") + """;
    ELSE
        """ + _in_function(WRITE_IF_UNCHANGED).replace("%", "%%") + """;
    END IF;
    IF holds_ AND cardinality($11) > 0 THEN  -- $11: the events' ids, accepted jobs' only
        PERFORM pg_notify('%(channel)s', '');
    END IF;
    RETURN QUERY SELECT holds_, heads_, versions_, ids_stored_, new_exist_;
END
$body$"""

#: The call; $1 the realms' lock keys, then WRITE_IF_UNCHANGED's parameters.
CALL = "SELECT * FROM perhap_write_known(" + ", ".join(f"${n}" for n in range(1, 26)) + ")"


class Known:
    """The writer's memory of its own commits (see the module docstring)."""

    def __init__(self) -> None:
        self.ids: dict[Key, Ids] = {}
        self.versions: dict[Key, int] = {}
        self.heads: dict[str, int] = {}  # realm -> last position (realm ids are in ``ids``)
        self.domains: dict[tuple[str, str], tuple[int, int]] = {}  # (realm, domain) -> their ids
        self._staged: list[tuple[dict[Key, Ids], dict[Key, int], dict[str, int]]] = []

    def covering(self, jobs: Iterable[WriteJob]) -> tuple[list[Key], list[Key]] | None:
        """Every entity the group reads, in first-seen order, split in two: those remembered, and
        those new to the memory that the first job naming them expects to be new (version -1), in
        a remembered domain (the call checks that none of them exists, and creates them: schema
        step 7). None when any other entity, or a realm's head, is not remembered."""
        remembered: list[Key] = []
        new: list[Key] = []
        seen: set[Key] = set()
        versions, heads, domains = self.versions, self.heads, self.domains
        for job in jobs:
            for key in keys_read(job):
                if key in seen:
                    continue
                seen.add(key)
                if key[0] not in heads:
                    return None
                if key in versions:
                    remembered.append(key)
                elif (key[0], key[1]) in domains and expects_new(job, key[2]):
                    new.append(key)
                else:
                    return None
        return remembered, new

    def correct(self, keys: list[Key], realms: list[str], versions: list[int | None], heads: list[int]) -> bool:
        """Take the stored versions and heads the statement found; False (and the memory dropped)
        when an entity is gone."""
        if None in versions:
            self.forget()
            return False
        self.versions.update((k, v) for k, v in zip(keys, versions, strict=True) if v is not None)
        self.heads.update(zip(realms, heads, strict=True))
        return True

    def stage(self, ids: dict[Key, Ids], versions: dict[Key, int], heads: dict[str, int]) -> None:
        """What a transaction wrote (ids and versions of its entities, heads of its realms), to be
        remembered once it commits."""
        self._staged.append((ids, versions, heads))

    def committed(self) -> None:
        """The transaction committed: remember what it staged."""
        staged, self._staged = self._staged, []
        if len(self.ids) > LIMIT:
            self.forget()
        for ids, versions, heads in staged:
            self.ids.update(ids)
            self.versions.update((key, versions[key]) for key in ids)
            self.heads.update(heads)
            self.domains.update(((key[0], key[1]), (realm_id, domain_id))
                                for key, (realm_id, domain_id, _) in ids.items())

    def forget(self) -> None:
        """Drop the memory and anything staged (a transaction failed or was redone)."""
        self.ids.clear()
        self.versions.clear()
        self.heads.clear()
        self.domains.clear()
        self._staged.clear()


class EntityIds:
    """Ids for the entities calls create, taken from the entities' own sequence a block at a time
    (one round trip for many new entities). An id a call did not use is simply never used: ids
    need only be unique."""

    BLOCK = 64
    TAKE = ("SELECT array_agg(nextval(pg_get_serial_sequence('perhap_entities', 'id'))) "
            "FROM generate_series(1, $1::int)")

    def __init__(self) -> None:
        self.pool: list[int] = []
        self.refused = False  # the role may not take them

    async def take(self, conn: Connection, count: int) -> list[int] | None:
        """``count`` ids; None if the role has no privilege on the sequence: new entities then
        take the look-up, as before schema step 7."""
        if len(self.pool) < count:
            if self.refused:
                return None
            try:
                self.pool.extend(await conn.fetchval(self.TAKE, max(count - len(self.pool), self.BLOCK)))
            except asyncpg.PostgresError as exc:
                if isinstance(exc, LOST):
                    raise
                self.refused = True
                log.warning("new entities take the look-up: the role cannot take entity ids (%s)", exc)
                return None
        taken, self.pool = self.pool[:count], self.pool[count:]
        return taken


def expects_new(job: WriteJob, entity: str) -> bool:
    """Whether ``job`` expects ``entity`` to have no events yet (expected version -1)."""
    if job.multi:
        return job.expectations is not None and job.expectations.get(entity) == -1
    return job.expected == -1


def relative(jobs: list[WriteJob]) -> bool:
    """Whether a group may be written relative to the stored versions (as every group is to the
    stored heads): no job expects a version, so whether each job is accepted does not depend on
    them, and its versions are the remembered ones moved by the stored minus the remembered
    (:mod:`.known`)."""
    return all(job.expected is None and not job.expectations for job in jobs)


def decide_known(jobs: list[WriteJob], keys: list[Key], new: list[Key], realms: list[str], known: Known,
                 ts: str) -> tuple[list[Decided], list[Accepted], dict[Key, int], dict[str, int]]:
    """The group decided from the memory, ``new`` entities having no events: outcomes, accepted
    jobs, and the versions and heads they leave. A refusal stands only if the call finds the
    memory true (and the new entities absent)."""
    versions = {k: known.versions[k] for k in keys}
    versions.update((k, -1) for k in new)
    heads = {realm: known.heads[realm] for realm in realms}
    # No stored client id is known here: the call checks that none of the group's is stored.
    outcomes, accepted = decide_group(jobs, {}, versions, heads, ts)
    return outcomes, accepted, versions, heads
