"""Deciding a group's jobs in Python, in queue order, from what one look-up found (or what the
writer remembers of its own commits, :mod:`.known`): idempotent replays, version conflicts, and for
accepted jobs the versions and positions of their events.

Nothing here touches the database: the writer (:mod:`.writer`) looks up the versions and realm
heads under the realm locks, and writes the rows decided here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ...errors import PerhapError, VersionConflict
from ...model import Appended, AppendResult, Event, replay_or_conflict, replay_or_conflict_multi
from ...store.job import WriteJob

Key = tuple[str, str, str]  # realm, domain, entity
Ids = tuple[int, int, int]  # the realm, domain and entity ids of a Key
#: A job's outcome: the result, or the error that refuses it (that job alone).
Decided = AppendResult | PerhapError


class Accepted(NamedTuple):
    """An accepted job: the version of each of its events, and the position of its first."""

    job: WriteJob
    versions: Sequence[int]
    first_position: int

    def keys(self) -> list[Key]:
        """The entity each event goes to, in the order of the batch."""
        job = self.job
        if job.entities is None:
            return [job.key] * len(job.batch)
        return [(job.realm, job.domain, entity) for entity in job.entities]


def keys_read(job: WriteJob) -> list[Key]:
    """The entities a job must look up: those it writes to, and those it only expects versions of."""
    if not job.multi:
        return [job.key]
    named = [*(job.entities or ()), *(job.expectations or {})]
    return [(job.realm, job.domain, entity) for entity in dict.fromkeys(named)]


def replay_of(job: WriteJob, stored: dict[str, Event]) -> AppendResult | None:
    """The original result when the job's client ids are stored as this very job; None when none
    of them is stored; EventIdConflict otherwise."""
    if job.entities is not None:
        return replay_or_conflict_multi(job.batch, job.entities, stored, job.realm, job.domain)
    return replay_or_conflict(job.batch, stored, *job.key)


def decide(job: WriteJob, stored: dict[str, Event], versions: dict[Key, int], heads: dict[str, int],
           ts: str, accepted: list[Accepted]) -> AppendResult:
    """Decide one job against the versions and heads left by the jobs before it in the group: a
    replay, or accepted (added to ``accepted``, versions, heads and ``stored`` moved on); a
    refusal raises its PerhapError and changes nothing."""
    mine = {e.event_id: stored[e.event_id] for e in job.batch if e.event_id in stored}
    replayed = replay_of(job, mine)
    if replayed is not None:
        return replayed
    realm, domain, batch = job.realm, job.domain, job.batch
    if job.expectations:
        conflicts = [(entity, expected, versions[(realm, domain, entity)])
                     for entity, expected in job.expectations.items()
                     if versions[(realm, domain, entity)] != expected]
        if conflicts:
            raise VersionConflict.several(conflicts)
    elif job.expected is not None and job.expected != versions[job.key]:
        raise VersionConflict(versions[job.key], job.expected)
    first_position = heads.get(realm, 0) + 1
    heads[realm] = first_position + len(batch) - 1
    given: Sequence[int]
    if job.entities is None:  # one entity: its next versions, without a look-up per event
        first = versions[job.key] + 1
        given = range(first, first + len(batch))
        versions[job.key] = given[-1]
        entities: Sequence[str | None] = [None] * len(batch)
    else:
        given = []
        for entity in job.entities:
            key = (realm, domain, entity)
            versions[key] += 1
            given.append(versions[key])
        entities = job.entities  # multi-entity results name their entity
    # An import may bring an event's original time; otherwise the group's commit time.
    results = [Appended(e.event_id, version, position, e.timestamp or ts, entity)
               for e, version, position, entity in zip(batch, given, range(first_position, heads[realm] + 1),
                                                         entities, strict=True)]
    for e, appended in zip(batch, results, strict=True):
        if e.client_id:  # a later job of this group may be its retry
            stored[e.event_id] = Event(e.event_id, realm, domain, appended.entity or job.entity, e.type,
                                       appended.version, appended.timestamp, e.data_json, e.meta_json,
                                       appended.position, appended.position)
    accepted.append(Accepted(job, given, first_position))
    return AppendResult(results, created=True)


def decide_group(jobs: list[WriteJob], stored: dict[str, Event], versions: dict[Key, int],
                 heads: dict[str, int], ts: str) -> tuple[list[Decided], list[Accepted]]:
    """Every job of a group decided in queue order (:func:`decide`): its outcome, a refusal
    standing for that job alone, and the accepted jobs; ``versions``, ``heads`` and ``stored`` move on."""
    outcomes: list[Decided] = []
    accepted: list[Accepted] = []
    for job in jobs:
        try:
            outcomes.append(decide(job, stored, versions, heads, ts, accepted))
        except PerhapError as exc:
            outcomes.append(exc)
    return outcomes, accepted


def pair_columns(pairs: set[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(entity, type) pairs as two columns, in order (so row locks are taken in one order)."""
    ordered = sorted(pairs)
    return [p[0] for p in ordered], [p[1] for p in ordered]


def event_columns(accepted: list[Accepted], ids_of: dict[Key, Ids], types: dict[str, int],
                  ts: str) -> tuple[tuple[list[Any], ...], set[tuple[int, int]]]:
    """The accepted jobs' events as the columns of their rows (the order of ``perhap_events``'
    columns in the writer's statements), and the (entity, type) pairs they make."""
    event_ids: list[str] = []
    position_col: list[int] = []
    realm_col: list[int] = []
    domain_col: list[int] = []
    entity_col: list[int] = []
    type_col: list[int] = []
    version_col: list[int] = []
    ts_col: list[str] = []
    data_col: list[bytes] = []
    meta_col: list[bytes] = []
    pairs: set[tuple[int, int]] = set()
    for a in accepted:
        job = a.job
        version_col.extend(a.versions)
        position_col.extend(range(a.first_position, a.first_position + len(job.batch)))
        for key, e in zip(a.keys(), job.batch, strict=True):
            realm_id, domain_id, entity_id = ids_of[key]
            type_id = types[e.type]
            pairs.add((entity_id, type_id))
            event_ids.append(e.event_id)
            realm_col.append(realm_id)
            domain_col.append(domain_id)
            entity_col.append(entity_id)
            type_col.append(type_id)
            ts_col.append(e.timestamp or ts)
            data_col.append(e.data_json)
            meta_col.append(e.meta_json)
    columns = (event_ids, position_col, realm_col, domain_col, entity_col, type_col, version_col, ts_col,
               data_col, meta_col)
    return columns, pairs


def answered_from(stored: dict[str, Event], jobs: list[WriteJob], outcomes: list[Decided],
                  accepted: list[Accepted]) -> list[Decided]:
    """A committed group's outcomes with each accepted job's answer read from its stored events
    (a call whose own answer was lost); the other jobs' outcomes as decided."""
    answers = {id(a.job): AppendResult([
        Appended(e.event_id, s.version, s.position, s.timestamp, s.entity if a.job.entities is not None else None)
        for e, s in ((e, stored[e.event_id]) for e in a.job.batch)], created=True) for a in accepted}
    return [answers.get(id(job), outcome) for job, outcome in zip(jobs, outcomes, strict=True)]


def written_by(jobs: list[WriteJob], outcomes: list[Decided]) -> int:
    """Events the group stores (replays and refusals store none)."""
    return sum(len(job.batch) for job, o in zip(jobs, outcomes, strict=True)
               if isinstance(o, AppendResult) and o.created)
