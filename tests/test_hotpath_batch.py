"""The hot paths' shortcuts build exactly what the plain code would (issue 18, rows 3-5).

- Ids made a batch at a time (``uuid7_many``) are the ids ``uuid7`` would make one by one: valid
  UUIDv7s, strictly increasing, interleaved freely with single ones, across a millisecond's
  4,096 sequence numbers, from several threads; the random bytes read ahead are not shared with
  a forked child.
- Events, new events and append results built without their frozen dataclasses' __init__ equal
  the dataclass-built ones field for field, are of the very class, and stay frozen.
- ``prepare_batch`` (type names checked once a batch, ids made together) accepts and refuses what
  ``new_event`` does for each event, with the same messages, and keeps the batch's order.
- The SQLite writer's one-entity path stores each event's own type and timestamp, and records
  every type of the entity, as the row-by-row code did.
- ``check_name`` answers names it accepted before from a set: a name valid at one level is still
  refused where another rule applies (a realm beginning with '_'), refused names are refused
  every time, and the set stays bounded. The request path's fast paths for unquoting a segment
  and quoting a Location's names give what ``urllib.parse`` gives.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from perhap import ids
from perhap.backends.sqlite import open_sqlite
from perhap.backends.sqlite.queries import make_event
from perhap.backends.sqlite.writes import make_appended
from perhap.errors import InvalidInput
from perhap.http.handlers.reads import _checked_scope
from perhap.http.pagecache import page_key
from perhap.model import Appended, Event, NewEvent, Scope, check_name, make_new_event, new_event, prepare_batch
from perhap.slotted import fast_constructor
from perhap.store.query import ReadQuery, read_query

# ------------------------------------------------------------------ ids


def _check_uuid7(value: str) -> uuid.UUID:
    parsed = uuid.UUID(value)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert str(parsed) == value  # canonical: lower case, hyphenated
    return parsed


def test_ids_made_together_are_uuid7_and_increase_with_single_ones() -> None:
    made = [ids.uuid7(), *ids.uuid7_many(3), ids.uuid7(), *ids.uuid7_many(1), *ids.uuid7_many(0), ids.uuid7()]
    assert len(made) == 7
    for value in made:
        _check_uuid7(value)
    assert made == sorted(made) and len(set(made)) == len(made)


def test_a_batch_larger_than_a_milliseconds_numbers_stays_increasing() -> None:
    made = ids.uuid7_many(10_000)  # more than the 4,096 sequence numbers of one millisecond
    assert made == sorted(made) and len(set(made)) == len(made)
    for value in made:
        _check_uuid7(value)
    assert ids.uuid7() > made[-1]


def test_ids_written_column_by_column_read_as_formatted_one_by_one() -> None:
    random_hex = os.urandom(8 * 100).hex().encode()
    for first, size in ((0, 100), (0xFFF - 99, 100), (7, 32), (7, 31), (5, 1)):
        made = ids._format(0x01A2_3781_FE64, first, size, random_hex[:16 * size])
        expected = []
        for k in range(size):
            r = random_hex[16 * k:16 * k + 16].decode()
            expected.append(f"01a23781-fe64-7{first + k:03x}-{r[:4]}-{r[4:]}")
        assert made == expected


def test_random_bits_differ_between_ids() -> None:
    made = ids.uuid7_many(2_000)
    tails = {value[19:] for value in made}  # variant and rand_b: 62 random bits each
    assert len(tails) == len(made)


def test_ids_from_several_threads_are_unique() -> None:
    found: list[list[str]] = [[] for _ in range(8)]

    def work(i: int) -> None:
        for _ in range(200):
            found[i].append(ids.uuid7())
            found[i].extend(ids.uuid7_many(5))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [value for part in found for value in part]
    assert len(set(every)) == len(every)
    for part in found:  # each thread's ids increase, as the counter is shared under a lock
        assert part == sorted(part)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    ids.uuid7()  # the pool holds bytes read ahead now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the random bytes its next id would take, then leave at once
        try:
            os.write(write, ids._random_bytes(16))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 100):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    # With the pool shared, both would take the same bytes for their next ids.
    assert len(child) == 16 and child != ids._random_bytes(16)


# ------------------------------------------------------------------ objects built without __init__


def _same_object(made: Any, built: Any) -> None:
    assert type(made) is type(built)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    for f in dataclasses.fields(built):
        assert getattr(made, f.name) == getattr(built, f.name)
    first = dataclasses.fields(built)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, first, getattr(made, first))
    assert dataclasses.replace(made) == built


def test_fast_constructors_build_the_dataclasses_own_objects() -> None:
    event_fields = ("0190e3a0-0000-7000-8000-000000000001", "r", "d", "e", "t", 3, "2026-01-01T00:00:00.000000Z",
                    b'{"a":1}', b"{}", 7, 3)
    _same_object(make_event(*event_fields), Event(*event_fields))
    assert make_event(*event_fields).cursor == 3
    new_fields = ("t", b"1", b"{}", "0190e3a0-0000-7000-8000-000000000001", True, None)
    _same_object(make_new_event(*new_fields), NewEvent(*new_fields))
    for entity in (None, "e"):
        appended = ("0190e3a0-0000-7000-8000-000000000001", 1, 2, "2026-01-01T00:00:00.000000Z", entity)
        _same_object(make_appended(*appended), Appended(*appended))
        assert make_appended(*appended).to_dict() == Appended(*appended).to_dict()


def test_a_dataclass_the_fast_constructor_cannot_mirror_keeps_its_own_constructor() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        a: int
        b: str

    assert fast_constructor(NoSlots) is NoSlots
    assert fast_constructor(Checked) is Checked  # its check must keep running
    fast = fast_constructor(Plain)
    assert fast is not Plain
    _same_object(fast(1, "x"), Plain(1, "x"))
    # Asked for, a constructor that skips the check (for values already checked), and only it.
    checked = fast_constructor(Checked, checked=True)
    assert checked is not Checked
    _same_object(checked(1), Checked(1))
    assert checked(-1).a == -1  # the caller promised the check: it is not made again


def test_the_read_paths_scopes_and_queries_are_the_classes_own_objects() -> None:
    for names in (("r",), ("r", "d"), ("r", "d", "e"), ("r", "d", "e", "t")):
        _same_object(_checked_scope(*names, *(None,) * (4 - len(names))), Scope(*names))
    _same_object(read_query(Scope("r", "d", "e"), limit=7), ReadQuery(Scope("r", "d", "e"), limit=7))
    made = read_query(Scope("r", "d", "e"), order="desc", types=["b", "a"], after_version="2", until_version=5,
                      limit=7)
    _same_object(made, ReadQuery(Scope("r", "d", "e"), ("a", "b"), True, 2, 6, None, None, 7))


def test_page_keys_are_equal_exactly_when_the_reads_are() -> None:
    entity, other = Scope("r", "d", "e"), Scope("r", "d", "f")
    queries = [ReadQuery(entity), ReadQuery(other), ReadQuery(Scope("r", "d")), ReadQuery(Scope("r", "e", "e")),
               ReadQuery(entity, limit=2), ReadQuery(entity, descending=True), ReadQuery(entity, ("t",)),
               ReadQuery(entity, ("t", "u")), ReadQuery(entity, after=3), ReadQuery(entity, before=3),
               ReadQuery(entity, after_position=3), ReadQuery(entity, before_position=3),
               ReadQuery(entity, after=3, limit=2), ReadQuery(Scope("r", "d", "e"))]
    reads = [(q, f) for q in queries for f in (None, "0190e3a0-0000-7000-8000-000000000001",
                                                "0190e3a0-0000-7000-8000-000000000002")]
    for a in reads:
        for b in reads:
            assert (page_key(*a) == page_key(*b)) == (a == b), (a, b)
            if a == b:
                assert hash(page_key(*a)) == hash(page_key(*b))


# ------------------------------------------------------------------ prepare_batch


def _error(events: Any) -> str:
    with pytest.raises(InvalidInput) as err:
        prepare_batch(events)
    return str(err.value.detail)


def test_prepare_batch_makes_what_new_event_makes() -> None:
    events: list[Any] = [{"type": "a", "event": {"n": 1}}, {"type": "b", "event": [1, 2], "meta": {"m": True}},
                         {"type": "a", "event": 2**70},  # beyond orjson: the exact stdlib path
                         {"type": "a", "event": None, "event_id": "0190E3A0-0000-7000-8000-00000000000A"},
                         new_event("c", "made before"), {"type": "ü✓", "event": "x"}]
    prepared = prepare_batch(events)
    assert all(type(e) is NewEvent for e in prepared)
    for item, e in zip(events, prepared):
        if isinstance(item, NewEvent):
            assert e is item
            continue
        plain = new_event(item["type"], item["event"], item.get("event_id"), item.get("meta"))
        assert (e.type, e.data_json, e.meta_json, e.client_id, e.timestamp) == \
               (plain.type, plain.data_json, plain.meta_json, plain.client_id, plain.timestamp)
        if item.get("event_id"):
            assert e.event_id == plain.event_id == "0190e3a0-0000-7000-8000-00000000000a"
        else:
            _check_uuid7(e.event_id)
    server_made = [e.event_id for e, item in zip(prepared, events) if isinstance(item, dict) and "event_id" not in item]
    assert server_made == sorted(server_made) and len(set(server_made)) == len(server_made)
    assert prepare_batch(tuple(events[:2]))[0].type == "a"  # any sequence, not only a list


def test_prepare_batch_refuses_what_new_event_refuses() -> None:
    good = {"type": "a", "event": 1}
    assert _error("nope") == "events must be a list"
    assert _error({"type": "a"}) == "events must be a list"
    assert _error([]) == "a batch holds 1 to 10000 events, got 0"
    assert _error([good, 5]) == "events[1] must be an object"
    assert _error([good, {**good, "x": 1, "y": 2}]) == "events[1] has unknown keys: x, y"
    assert _error([good, {"type": "a"}]) == "events[1] needs an 'event'"
    assert _error([good, {"event": 1}]) == "events[1] needs a 'type'"
    # A type name valid once is still checked for every other name, whatever comes first.
    for bad in ("", "a/b", "keys", 5, ["a"], "x" * 256):
        with pytest.raises(InvalidInput) as plain:
            new_event(bad, 1)  # type: ignore[arg-type]
        assert _error([good, {"type": bad, "event": 1}]) == f"events[1]: {plain.value.detail}"
    assert _error([good, {**good, "meta": [1]}]) == "events[1]: meta must be a JSON object"
    assert _error([good, {**good, "event": {1, 2}}]).startswith("events[1]: event is not serialisable as JSON")
    assert _error([good, {**good, "meta": {"x": object()}}]).startswith("events[1]: meta is not serialisable")
    assert _error([good, {**good, "event_id": "nope"}]).startswith("events[1]: event_id must be a UUID")
    twice = "0190e3a0-0000-7000-8000-00000000000a"
    assert _error([{**good, "event_id": twice}, {**good, "event_id": twice.upper()}]) == \
        "the same event_id appears twice in the batch"
    made = new_event("a", 1)
    assert _error([made, made]) == "the same event_id appears twice in the batch"


# ------------------------------------------------------------------ the SQLite writer's one-entity path


async def test_a_batch_keeps_each_events_type_and_timestamp(tmp_path: Path) -> None:
    store = await open_sqlite(str(tmp_path / "s.db"))
    try:
        imported = new_event("old", {"n": 0}, timestamp="2020-05-01T10:00:00+02:00")
        batch: list[Any] = [imported, {"type": "a", "event": 1}, {"type": "b", "event": 2}, {"type": "a", "event": 3}]
        result = await store.append_batch("r", "d", "e", batch)
        page = await store.read(Scope("r", "d", "e"))
        assert [e.type for e in page.events] == ["old", "a", "b", "a"]
        assert [e.version for e in page.events] == [0, 1, 2, 3]
        assert [e.position for e in page.events] == [a.position for a in result.events] == [1, 2, 3, 4]
        assert page.events[0].timestamp == result.events[0].timestamp == "2020-05-01T08:00:00.000000Z"
        assert {e.timestamp for e in page.events[1:]} == {result.events[1].timestamp}
        assert [a.event_id for a in result.events] == [e.event_id for e in page.events]
        assert (await store.keys("r", "d", "e")).keys == ["a", "b", "old"]
        assert [e.event for e in (await store.read(Scope("r", "d", "e", "a"))).events] == [1, 3]
        # One event alone takes the short way through the writer: the same outcome.
        single = await store.append("r", "d", "e", "c", {"n": 4}, expected_version=3)
        assert (single.first.version, single.first.position) == (4, 5)
        assert (await store.keys("r", "d", "e")).keys == ["a", "b", "c", "old"]
    finally:
        await store.close()


def test_names_accepted_before_are_accepted_again_and_only_where_their_rules_allow() -> None:
    from perhap import model

    assert check_name("_internal", "domain") == "_internal"
    for _ in range(2):  # once to fill the set, once from it
        with pytest.raises(InvalidInput, match="reserved for system endpoints"):
            check_name("_internal", "realm", realm=True)
        assert check_name("_internal", "domain") == "_internal"
        for bad in ("", "a/b", "keys", "..", "x\x00"):
            with pytest.raises(InvalidInput):
                check_name(bad, "entity")
    with pytest.raises(InvalidInput, match="must be a string"):
        check_name(["a"], "entity")
    for i in range(model._VALID_MAX + 10):
        check_name(f"entity-{i}", "entity")
    assert all(len(known) <= model._VALID_MAX for known in model._VALID)
    assert check_name("entity-1", "entity") == "entity-1"


def test_segment_and_location_fast_paths_match_urllib() -> None:
    from urllib.parse import quote, unquote_to_bytes

    from perhap.http.handlers.groups import group_path
    from perhap.http.handlers.writes import event_path
    from perhap.http.routes import decode_segment

    for name in ("plain-Name_1.~", "with space", "caf\u00e9", "a%2Fb", "%", "~x", "50%25", "\U0001f600"):
        raw = quote(name, safe="%").encode()
        assert decode_segment(raw) == unquote_to_bytes(raw).decode()
        assert event_path(name, name, "id") == f"/{quote(name, safe='')}/{quote(name, safe='')}/id"
        assert group_path(name, name) == f"/_groups/{quote(name, safe='')}/{quote(name, safe='')}"
    with pytest.raises(InvalidInput):
        decode_segment(b"\xff")
    with pytest.raises(InvalidInput):
        decode_segment(b"%ff")
