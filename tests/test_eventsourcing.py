"""perhap.eventsourcing against the rules eventsourcing's own suite does not check: state bytes byte
for byte (JSON, binary, compressed, encrypted), UUID and awkward string ids, versions from 0 or 1,
topics perhap cannot name, the exceptions the library expects, atomic process recording (with a
crash), snapshots, and where the events land. In process and over HTTP, on every backend under test.
"""

from __future__ import annotations

import base64
import gc
import json
import random
import signal
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing import persistence as es
from eventsourcing.cipher import AESCipher
from eventsourcing.persistence import IntegrityError, OperationalError, Tracking
from eventsourcing.utils import Environment

from perhap.auth import add_token
from perhap.client import stream as stream_module
from perhap.eventsourcing import Factory, PerhapApplicationRecorder
from perhap.eventsourcing import backlog as backlog_module
from perhap.eventsourcing.mapping import ESCAPED_TOPIC_TYPE
from perhap.model import new_event
from tests.conftest import BACKENDS, get_provider
from tests.es_helpers import (
    MODULE,
    Account,
    Account0,
    BankAccounts,
    Ledger,
    Target,
    in_threads,
    read_raw,
    stored,
    take,
    versions,
    write_until_killed,
)
from tests.servers import ProcessServer, ThreadServer, free_port

PARAMS = [(b, t) for b in BACKENDS for t in ("inprocess", "http")]
#: Backends with multi-entity appends (process recording, several aggregates in one save).
MULTI = [(b, t) for b, t in PARAMS if b != "cassandra"]
CASSANDRA = [(b, t) for b, t in PARAMS if b == "cassandra"]


def _serve(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    backend, transport = request.param
    store_url = get_provider(backend, tmp_path_factory).new_url()
    if transport == "http":
        with ThreadServer(store_url, heartbeat=1.0) as server:
            yield Target(backend, transport, store_url, server.url)
    else:
        yield Target(backend, transport, store_url, store_url)


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{b}-{t}" for b, t in PARAMS])
def shared_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _serve(request, tmp_path_factory)


@pytest.fixture(scope="module", params=MULTI, ids=[f"{b}-{t}" for b, t in MULTI])
def shared_multi_target(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _serve(request, tmp_path_factory)


@pytest.fixture(scope="module", params=CASSANDRA, ids=[f"{b}-{t}" for b, t in CASSANDRA])
def shared_cassandra_target(request: pytest.FixtureRequest,
                            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _serve(request, tmp_path_factory)


@pytest.fixture
def target(shared_target: Target) -> Iterator[Target]:
    yield shared_target
    shared_target.close()


@pytest.fixture
def multi_target(shared_multi_target: Target) -> Iterator[Target]:
    """A target whose backend has multi-entity appends (not Cassandra: see the Cassandra test)."""
    yield shared_multi_target
    shared_multi_target.close()


@pytest.fixture
def cassandra_target(shared_cassandra_target: Target) -> Iterator[Target]:
    yield shared_cassandra_target
    shared_cassandra_target.close()


# --------------------------------------------------------------------------- 1. state bytes

READABLE = [b'{"a":1,"b":[true,null,"x"],"c":{"d":"\xc3\xa9"}}', b"[1,2,3]", b'"text"']
#: JSON as the library's JSONTranscoder (Python's json) writes it, where perhap writes it otherwise
#: (1e-07 for 1e-7): still readable, with meta.state = "python-json".
PYTHON_SPELLED = [b'{"a":1e-07,"b":[2.5e-05,1e+16,-3.1e-10],"c":"\xc3\xa9"}', b"[1e+22,0.0001,1e-05]"]
#: JSON nested as deep as a server's --max-depth (64) allows a whole body, and deeper: stored as
#: base64 when the request's envelope would take it past the limit, so it round-trips over HTTP too.
DEEP_STATES = [b"[" * n + b"1" + b"]" * n for n in (60, 61, 62, 64, 200)]
OTHER_STATES = [
    *DEEP_STATES,
    b'{"a": 1}', b'{"a":1.0}', b"1e5", b'{"b":1, "a":2}', b'"\\u00e9"', b'{"a":1}\n', b'{"a":1,"a":2}',
    b'{"a":18446744073709551616}', b'{"a":"\\ud800"}', b"NaN", b"true", b"null", b"123", b" {}",
    b"", b"\x00", b"\xff\xfe\xfd", b'"unterminated', b'{"a":"\xff"}', b"\xef\xbb\xbf{}",
    random.Random(7).randbytes(70_000),
]


def test_state_bytes_round_trip(target: Target) -> None:
    env, states, aggregate = target.env(), READABLE + PYTHON_SPELLED + OTHER_STATES, uuid.uuid4()
    writer = target.factory(**env).application_recorder()
    writer.insert_events([stored(aggregate, i + 1, s) for i, s in enumerate(states)])
    for recorder in (writer, target.factory(**env).application_recorder()):
        assert [e.state for e in recorder.select_events(aggregate)] == states
        assert [n.state for n in recorder.select_notifications(None, 100)] == states
        assert [bytes(e.state) for e in recorder.select_events(aggregate, gt=2, lte=4)] == states[2:4]
    raw = target.raw(env["PERHAP_REALM"], "events", str(aggregate))
    assert len(raw) == len(states)
    for event, state in zip(raw, states, strict=True):
        if state in READABLE:  # readable in perhap: the event is that JSON, not base64 text
            assert event.data_json == state and "state" not in event.meta
            assert event.event == json.loads(state)
        elif state in PYTHON_SPELLED:  # readable too: the same value, spelled as perhap spells it
            assert event.meta["state"] == "python-json" and event.event == json.loads(state)
        elif event.meta.get("state") == "base64":
            assert base64.b64decode(event.event) == state


@pytest.mark.parametrize("settings", ["json", "zlib", "aes", "aes+zlib"])
def test_application_state_with_compressor_and_cipher(target: Target, settings: str) -> None:
    env = target.env()
    if "zlib" in settings:
        env["COMPRESSOR_TOPIC"] = "eventsourcing.compressor:ZlibCompressor"
    if "aes" in settings:
        env["CIPHER_TOPIC"] = "eventsourcing.cipher:AESCipher"
        env["CIPHER_KEY"] = AESCipher.create_key(16)
    app = target.app(BankAccounts, **env)
    account = Account("Zoë secret-name")
    for amount in (5, 7, 11):
        account.deposit(amount)
    app.save(account)
    fresh = target.app(BankAccounts, **env)  # a fresh application
    again = fresh.repository.get(account.id)
    assert (again.name, again.balance, again.version) == ("Zoë secret-name", 23, 4)
    raw = target.raw(env["PERHAP_REALM"], "events", str(account.id))
    recorded = app.recorder.select_events(account.id)
    assert len(raw) == len(recorded) == 4
    for event, record in zip(raw, recorded, strict=True):
        if settings == "json":
            assert event.data_json == record.state and "state" not in event.meta
            assert event.type == record.topic and event.event.get("name", "Zoë secret-name") == "Zoë secret-name"
        else:
            assert event.meta["state"] == "base64" and base64.b64decode(event.event) == record.state
            assert b"secret-name" not in event.data_json


# --------------------------------------------------------------------------- 2. originator ids

AWKWARD = ["a/b", "~x", "keys", ".", "..", "é中文🙂", "x" * 200, "x" * 255, "~YS9i", "a b", "tab\there",
           "~tracking~upstream", "%2F", "a%2Fb", "Abc", "abc", unicodedata.normalize("NFC", "é"),
           unicodedata.normalize("NFD", "é"), "12345678-1234-5678-1234-567812345678", " ", "-", "_"]


def test_originator_ids_round_trip_and_never_collide(target: Target) -> None:
    env, ids = target.env(), [uuid.uuid4(), *AWKWARD]
    recorder, fresh = (target.factory(**env).application_recorder() for _ in "ab")
    for i, oid in enumerate(ids):
        recorder.insert_events([stored(oid, 1, b'{"i":%d}' % i), stored(oid, 2, b'{"i":%d}' % i)])
    for i, oid in enumerate(ids):
        for r in (recorder, fresh):
            events = r.select_events(oid)
            assert [(type(e.originator_id), e.originator_id, e.state) for e in events] == \
                   [(type(oid), oid, b'{"i":%d}' % i)] * 2, oid
    notifications = fresh.select_notifications(None, 1000)
    assert [(type(n.originator_id), n.originator_id, n.originator_version) for n in notifications] == \
           [(type(oid), oid, v) for oid in ids for v in (1, 2)]
    live = take(fresh.subscribe(gt=0), len(notifications))
    assert [(n.id, type(n.originator_id), n.originator_id, n.state) for n in live] == \
           [(n.id, type(n.originator_id), n.originator_id, n.state) for n in notifications]
    entities = {e.entity for e in target.raw(env["PERHAP_REALM"], "events")}
    assert len(entities) == len(ids)
    assert "~tracking~upstream" not in entities  # no aggregate lands in a tracking entity


@pytest.mark.parametrize("oid", ["/" * 200, "y" * 256, "é" * 200])
def test_an_id_perhap_cannot_hold_is_a_persistence_error(target: Target, oid: str) -> None:
    recorder = target.factory().application_recorder()
    try:
        recorder.insert_events([stored(oid, 1)])
    except es.DataError:
        assert recorder.select_notifications(None, 10) == []
    else:
        assert recorder.select_events(oid)[0].originator_id == oid


# --------------------------------------------------------------------------- 3. versions


@pytest.mark.parametrize("first", [0, 1, 5])
def test_versions_from_any_start_and_select_bounds(target: Target, first: int) -> None:
    env, oid, expected = target.env(), uuid.uuid4(), list(range(first, first + 8))
    writer, fresh = (target.factory(**env).aggregate_recorder() for _ in "ab")
    writer.insert_events([stored(oid, v, b'{"v":%d}' % v) for v in expected])
    assert versions(fresh.select_events(oid, gt=first + 2, lte=first + 5)) == expected[3:6]  # not yet learned
    for recorder in (writer, fresh):
        for gt in (None, first - 1, first, first + 3, first + 9):
            for lte in (None, first - 1, first + 4):
                for desc in (False, True):
                    for limit in (None, 3):
                        want = [v for v in expected if (gt is None or v > gt) and (lte is None or v <= lte)]
                        want = (want[::-1] if desc else want)[:limit]
                        got = recorder.select_events(oid, gt=gt, lte=lte, desc=desc, limit=limit)
                        assert versions(got) == want, (gt, lte, desc, limit)
                        assert [e.state for e in got] == [b'{"v":%d}' % v for v in want]


def test_aggregates_starting_at_version_0(target: Target) -> None:
    env = target.env()
    app, account = target.app(BankAccounts, **env), Account0("zero")
    app.save(account)
    account.deposit(3)
    app.save(account)
    fresh = target.app(BankAccounts, **env)
    assert fresh.repository.get(account.id).balance == 3 and account.version == 1
    assert fresh.repository.get(account.id, version=0).balance == 0
    assert versions(fresh.recorder.select_events(account.id)) == [0, 1]
    again = fresh.repository.get(account.id)
    again.deposit(4)
    fresh.save(again)
    assert versions(app.recorder.select_events(account.id, gt=0)) == [1, 2]
    assert [e.meta["originator_version"] for e in target.raw(env["PERHAP_REALM"], "events")] == [0, 1, 2]


# --------------------------------------------------------------------------- 4. topics

TOPICS = ["bank:Account.Opened", "a/b:C.Event", "m:" + "T" * 300, "m:" + "U" * 300, "~topic", "é:Ü", "t"]


def test_topics_round_trip_and_filter_exactly(target: Target) -> None:
    env, order = target.env(), [TOPICS[2]] * 5 + TOPICS + [TOPICS[1]] * 2
    recorder = target.factory(**env).application_recorder()
    for i, topic in enumerate(order):
        recorder.insert_events([stored(uuid.uuid4(), 1, b'{"i":%d}' % i, topic)])
    everything = recorder.select_notifications(None, 100)
    assert [n.topic for n in everything] == order
    raw = {e.position: e for e in target.raw(env["PERHAP_REALM"], "events")}
    for n in everything:
        assert raw[n.id].type == (n.topic if n.topic in ("bank:Account.Opened", "é:Ü", "t") else ESCAPED_TOPIC_TYPE)
    for chosen in ([TOPICS[3]], [TOPICS[1], TOPICS[3]], ["~topic"], [TOPICS[0], "t"], ["absent"]):
        want = [n for n in everything if n.topic in chosen]
        assert recorder.select_notifications(None, 100, topics=chosen) == want
        assert recorder.select_notifications(None, 1, topics=chosen) == want[:1]
        if want:
            assert recorder.select_notifications(want[0].id, 100, topics=chosen, inclusive_of_start=False) == want[1:]
    want = [n for n in everything if n.topic in (TOPICS[3], TOPICS[1])]
    assert take(recorder.subscribe(gt=0, topics=[TOPICS[3], TOPICS[1]]), len(want)) == want
    # Any number of topics, as the library takes (a read names at most 100 types: more are read
    # whole and filtered here).
    many = [TOPICS[1], TOPICS[3], "t", *(f"absent.T{i}" for i in range(300))]
    want = [n for n in everything if n.topic in many]
    assert recorder.select_notifications(None, 100, topics=many) == want
    assert recorder.select_notifications(None, 2, topics=many) == want[:2]
    assert take(recorder.subscribe(gt=0, topics=many), len(want)) == want


# --------------------------------------------------------------------------- 5. exceptions


def test_duplicates_gaps_and_fresh_factories(target: Target) -> None:
    env = target.env()
    recorder = target.factory(**env).application_recorder()
    oid = uuid.uuid4()
    recorder.insert_events([stored(oid, 1), stored(oid, 2)])
    for bad in ([stored(oid, 2)], [stored(oid, 1)], [stored(oid, 4)], [stored(oid, 3), stored(oid, 5)],
                [stored(oid, 3), stored(oid, 3)], [stored(oid, 0)]):
        for r in (recorder, target.factory(**env).application_recorder()):
            with pytest.raises(IntegrityError):
                r.insert_events(bad)
    target.factory(**env).application_recorder().insert_events([stored(oid, 3, b'{"by":"fresh"}')])
    with pytest.raises(IntegrityError):  # the first recorder's memory is stale: the store decides
        recorder.insert_events([stored(oid, 3)])
    recorder.insert_events([stored(oid, 4)])
    assert versions(recorder.select_events(oid)) == [1, 2, 3, 4]
    assert recorder.select_events(oid)[2].state == b'{"by":"fresh"}'
    assert [e.version for e in target.raw(env["PERHAP_REALM"], "events", str(oid))] == [0, 1, 2, 3]


def test_racing_writers_one_wins_and_no_gap(target: Target) -> None:
    env = target.env()
    recorders = [target.factory(**env).application_recorder() for _ in range(3)]
    oid = uuid.uuid4()
    for version in range(1, 10):  # version 1: all create it; later, each has learnt it
        outcomes = in_threads(*[lambda r=r, i=i, v=version: r.insert_events([stored(oid, v, b'{"w":%d}' % i)])
                                for i, r in enumerate(recorders)])
        assert sum(o is None for o in outcomes) == 1, outcomes
        assert all(o is None or isinstance(o, IntegrityError) for o in outcomes), outcomes
        winner = outcomes.index(None)
        assert recorders[1].select_events(oid, desc=True, limit=1)[0].state == b'{"w":%d}' % winner
        assert versions(recorders[(winner + 1) % 3].select_events(oid, gt=version - 1)) == [version]
    assert versions(recorders[2].select_events(oid)) == list(range(1, 10))
    assert [e.version for e in target.raw(env["PERHAP_REALM"], "events", str(oid))] == list(range(9))


def test_closed_factory_is_an_interface_error(target: Target) -> None:
    env = target.env()
    still_open = target.factory(**env)  # another factory on the same store stays open
    factory = Factory(Environment("TestApp", env))
    recorder = factory.application_recorder()
    recorder.insert_events([stored(uuid.uuid4(), 1)])
    factory.close()
    for call in (lambda: recorder.insert_events([stored(uuid.uuid4(), 1)]), lambda: recorder.select_events("x"),
                 lambda: recorder.select_notifications(None, 10), recorder.max_notification_id,
                 lambda: take(recorder.subscribe(gt=0), 1, timeout=5)):
        with pytest.raises(es.InterfaceError):
            call()
    assert len(still_open.application_recorder().select_notifications(None, 10)) == 1


def test_a_factory_dropped_without_close_gives_its_store_back(tmp_path: Path) -> None:
    """The library's own test cases drop factories without closing them and delete the database
    file between tests: the next factory for that URL must open the new file, not go on writing
    into the deleted one through a store the dropped factory kept open."""
    path = tmp_path / "reused.db"
    env = {"PERSISTENCE_MODULE": "perhap.eventsourcing", "PERHAP_URL": f"sqlite:///{path}"}
    for _ in range(2):
        recorder = Factory(Environment("TestApp", env)).application_recorder()  # the factory: dropped
        recorder.insert_events([stored(uuid.uuid4(), 1) for _ in range(3)])
        assert recorder.max_notification_id() == 3
        del recorder
        gc.collect()
        path.unlink()
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def test_an_application_collected_in_a_cycle_gives_its_share_back_once(tmp_path: Path) -> None:
    """An application dropped without close() inside a reference cycle was given back twice (its
    factory's finalizer, then the application's __del__ closing it): another application's share
    went with it, so closing that one shut the store under a third, still open."""
    env = {**MODULE, "PERHAP_URL": f"sqlite:///{tmp_path}/cycle.db"}
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        kept, closed = BankAccounts(env=env), BankAccounts(env=env)
        dropped = BankAccounts(env=env)
        dropped.save(Account("x"))
        dropped.cycle = dropped  # type: ignore[attr-defined]
        del dropped
        gc.collect()
        closed.close()
        kept.save(Account("z"))  # it raised OperationalError: the store is closed
        assert len(kept.recorder.select_notifications(None, 10)) == 2
        kept.close()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []  # a KeyError in Application.__del__ before


def test_a_subscription_iterating_when_its_factory_closes_is_an_interface_error(target: Target) -> None:
    """A thread waiting in next() when the factory closes gets InterfaceError at once, over HTTP
    (where it waited for ever) and in process (where it saw the store's closing as unavailable)."""
    factory = Factory(Environment("TestApp", target.env()))
    recorder = factory.application_recorder()
    recorder.insert_events([stored(uuid.uuid4(), 1)])
    subscription = recorder.subscribe(gt=None)
    assert next(subscription).id >= 1  # the one event; now nothing more to come
    [waiter], outcome = _waiting_in_next(subscription, 1)
    factory.close()
    waiter.join(5)
    assert not waiter.is_alive(), "next() still waits after the factory closed"
    assert len(outcome) == 1 and isinstance(outcome[0], es.InterfaceError), outcome
    # Asked again, the same error (as the library's own subscriptions answer), not an end that a
    # caller who caught it would take for the stream's normal end.
    for _ in range(2):
        with pytest.raises(es.InterfaceError):
            next(subscription)


def test_a_subscription_catching_up_holds_a_bounded_backlog(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subscription from the start of a long log read all of it into memory, whatever its
    subscriber took (60,000 events of 2 KB: 150 MB more); now its stream waits while the backlog
    holds the limit, and the subscriber still gets every notification, in order."""
    monkeypatch.setattr(backlog_module, "LIMIT", 200)
    recorder = target.factory(**target.env()).application_recorder()
    originator = uuid.uuid4()
    for first in range(1, 3001, 500):
        recorder.insert_events([stored(originator, v, b'{"pad": "' + b"x" * 500 + b'"}')
                                for v in range(first, first + 500)])
    subscription = recorder.subscribe(gt=None)
    try:
        ids = [next(subscription).id]
        time.sleep(1.0)  # the stream reads on meanwhile, as far as it may
        held = subscription._queue.waiting  # type: ignore[attr-defined]
        assert held <= 200 + 1000, held  # the limit and one batch of the stream (it was all 2,999)
        ids += [next(subscription).id for _ in range(2999)]
    finally:
        subscription.stop()
    # Each once, in order (contiguous on SQLite and PostgreSQL; Cassandra's positions have gaps).
    assert len(ids) == 3000 and ids == sorted(set(ids)), (ids[:3], ids[-3:])


def test_stopping_a_subscription_ends_every_thread_waiting_in_it(target: Target) -> None:
    """stop() woke one of the threads waiting in next(); the others waited for ever."""
    recorder = target.factory(**target.env()).application_recorder()
    subscription = recorder.subscribe(gt=None, topics=["nothing-has-this-topic"])
    waiters, outcome = _waiting_in_next(subscription, 3)
    subscription.stop()
    for waiter in waiters:
        waiter.join(5)
    assert not any(waiter.is_alive() for waiter in waiters), "a thread still waits after stop()"
    assert [type(e) for e in outcome] == [StopIteration] * 3, outcome



def test_an_event_not_written_by_the_module_is_no_notification(target: Target) -> None:
    """An event appended to the application's domain some other way (the UI's form, curl) is not
    the library's: the notification log leaves it out, as it does tracking records (reading it
    was a DataError, so the log could not be read past it: a follower stopped there for good, and
    max_notification_id named an id no select returned); read as an aggregate's event, it is
    eventsourcing's DataError, not a bare ValueError."""
    recorder = target.factory(**target.env()).application_recorder()
    first = stored(uuid.uuid4(), 1)
    recorder.insert_events([first])
    foreign = new_event("comment", {"note": "typed in the UI"})
    recorder.transport.append(recorder.realm, recorder.domain, "note-1", [foreign], None)
    not_a_version = new_event("comment", {}, meta={"originator_version": True})  # (Python's bool is an int)
    recorder.transport.append(recorder.realm, recorder.domain, "note-2", [not_a_version], None)
    assert [n.originator_id for n in recorder.select_notifications(1, 10)] == [first.originator_id]
    last = recorder.max_notification_id()
    assert last == recorder.select_notifications(1, 10)[-1].id
    second = stored(uuid.uuid4(), 1)
    recorder.insert_events([second])
    assert [n.originator_id for n in recorder.select_notifications(1, 10)] == [first.originator_id,
                                                                              second.originator_id]
    assert [n.originator_id for n in recorder.select_notifications(last, 10, inclusive_of_start=False)] == [
        second.originator_id]
    with pytest.raises(es.DataError, match="not written by perhap.eventsourcing"):
        recorder.select_events("note-1")


def test_a_subscription_ends_at_an_event_it_cannot_read_after_those_before_it(target: Target) -> None:
    """An event of the domain that claims to be the library's but holds its state in a form this
    perhap does not know: select_notifications raises DataError at it every time, and so must the
    subscription, once the notifications before it (in the same batch) are taken. It raised once
    and went on with the next batch: the rest of that batch was skipped for good."""
    recorder = target.factory(**target.env()).application_recorder()
    good = [stored(uuid.uuid4(), 1) for _ in range(2)]
    for event in good:  # (one aggregate an insert: Cassandra has no multi-entity appends)
        recorder.insert_events([event])
    odd = new_event("t", {}, meta={"originator_version": 1, "state": "zstd"})
    recorder.transport.append(recorder.realm, recorder.domain, "odd", [odd], None)
    recorder.insert_events([stored(uuid.uuid4(), 1)])
    with pytest.raises(es.DataError, match="zstd"):
        recorder.select_notifications(None, 10)
    subscription = recorder.subscribe(gt=None)  # the four in one batch: what is stored already
    try:
        assert [next(subscription).originator_id for _ in good] == [g.originator_id for g in good]
        recorder.insert_events([stored(uuid.uuid4(), 1)])
        for _ in range(3):
            with pytest.raises(es.DataError, match="zstd"):
                next(subscription)
    finally:
        subscription.stop()


def test_a_forked_child_opens_its_own_store(tmp_path: Path) -> None:
    """A process forked after its parent used a store in process (preload, then fork workers):
    the child's factory opens its own store, on a loop of its own (it waited for ever on the
    parent's loop thread, which a fork does not copy); the parent's file stays the parent's. Run
    in a fresh interpreter: a fork of the test process, with every thread of the suite, would
    test those threads' locks, not perhap."""
    code = f"""
import multiprocessing, sys, uuid
from eventsourcing.persistence import InterfaceError
from eventsourcing.utils import Environment
from perhap.eventsourcing import Factory
from tests.es_helpers import MODULE, stored

def child(url, refused_url, inherited):
    try:  # a recorder made before the fork: refused at once (it waited for ever on the parent's loop)
        inherited.max_notification_id()
    except InterfaceError as exc:
        assert "fork" in str(exc), exc
    else:
        raise AssertionError("the parent's recorder answered in the child")
    factory = Factory(Environment("TestApp", {{**MODULE, "PERHAP_URL": url}}))
    recorder = factory.application_recorder()
    recorder.insert_events([stored(uuid.uuid4(), 1)])
    assert len(recorder.select_notifications(1, 10)) == 1
    factory.close()
    try:  # the parent's file: the parent holds it
        Factory(Environment("TestApp", {{**MODULE, "PERHAP_URL": refused_url}})).application_recorder()
    except Exception as exc:
        assert "in use" in str(exc), exc
    else:
        raise AssertionError("the parent's file was opened by the child")

parent_url = "sqlite:///{tmp_path}/parent.db"
parent = Factory(Environment("TestApp", {{**MODULE, "PERHAP_URL": parent_url}}))
recorder = parent.application_recorder()
recorder.insert_events([stored(uuid.uuid4(), 1)])
proc = multiprocessing.get_context("fork").Process(target=child, args=("sqlite:///{tmp_path}/child.db", parent_url,
                                                                       recorder))
proc.start()
proc.join(60)
if proc.is_alive():
    proc.kill()
parent.close()
print("child", proc.exitcode)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0 and r.stdout.strip() == "child 0", r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("sqlite", "postgres")])
def test_a_script_that_leaves_its_application_open_exits(backend: str, tmp_path: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """A module-level application never closed, as the library's examples have them: its __del__
    closes it while the interpreter tears modules down, when the loop thread of the in-process
    stores is frozen; that close waited for it for ever (the script never ended). Its events stay."""
    url = f"sqlite:///{tmp_path}/left.db" if backend == "sqlite" else get_provider(backend, tmp_path_factory).new_url()
    script = tmp_path / "left_open.py"
    script.write_text(f"""
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate

app = Application(env={{"PERSISTENCE_MODULE": "perhap.eventsourcing", "PERHAP_URL": {url!r}}})
saved = Aggregate()
app.save(saved)
print(saved.id)
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    factory = Factory(Environment("Application", {**MODULE, "PERHAP_URL": url}))  # (its realm is the name)
    try:
        [event] = factory.application_recorder().select_events(uuid.UUID(r.stdout.strip()))
        assert event.originator_version == 1
    finally:
        factory.close()


def test_a_subscription_perhap_refuses_is_an_eventsourcing_error(target: Target) -> None:
    """A start perhap refuses (a negative position): the library's own exception, from subscribe()
    or from the first next(), whichever transport. (More than 100 topics, refused before, are
    taken: see test_topics_round_trip_and_filter_exactly.)"""
    recorder = target.factory(**target.env()).application_recorder()
    recorder.insert_events([stored(uuid.uuid4(), 1)])
    with pytest.raises(es.PersistenceError):
        subscription = recorder.subscribe(gt=-5)
        try:
            next(subscription)
        finally:
            subscription.stop()


def test_too_many_streams_is_an_operational_error() -> None:
    """429 is a passing refusal (the server's streams are full), as a full connection pool is to the
    library's own modules: OperationalError, not ProgrammingError."""
    import httpx

    from perhap.client.errors import error_from_response
    from perhap.eventsourcing.transport import translate

    problem = {"type": "urn:perhap:problem:too-many-streams", "title": "Too Many Requests", "status": 429,
               "detail": "the server has 2 streams open, its limit; retry later"}
    response = httpx.Response(429, json=problem, request=httpx.Request("GET", "http://perhap/r"))
    assert isinstance(translate(error_from_response(response)), OperationalError)


def test_nothing_listening_is_an_operational_error() -> None:
    factory = Factory(Environment("Nobody", {"PERHAP_URL": f"http://127.0.0.1:{free_port()}"}))
    recorder = factory.process_recorder()
    try:
        for call in (lambda: recorder.insert_events([stored(uuid.uuid4(), 1)]), lambda: recorder.select_events("x"),
                     lambda: recorder.select_notifications(None, 10), recorder.max_notification_id,
                     lambda: recorder.max_tracking_id("up")):
            with pytest.raises(OperationalError):
                call()
        with pytest.raises(OperationalError), recorder.subscribe(gt=0) as subscription:
            next(iter(subscription))
    finally:
        factory.close()


def test_server_killed_midway_and_wrong_token(tmp_path: Path) -> None:
    tokens = str(tmp_path / "tokens.json")
    good, _ = add_token(tokens, "shop", "write")
    reader, _ = add_token(tokens, "shop", "read")
    factories: list[Factory] = []
    with ProcessServer(f"sqlite:///{tmp_path}/x.db", None, "--auth", tokens) as server:
        def recorder(token: str) -> PerhapApplicationRecorder:
            factories.append(Factory(Environment("Shop", {"PERHAP_URL": server.url, "PERHAP_TOKEN": token})))
            return factories[-1].application_recorder()
        ok = recorder(good)
        ok.insert_events([stored("a", 1)])
        for token in ("perhap_" + "x" * 43, reader):
            with pytest.raises(OperationalError):
                recorder(token).insert_events([stored("a", 2)])
        with pytest.raises(OperationalError):
            recorder("perhap_" + "y" * 43).select_events("a")
        assert len(take(ok.subscribe(gt=0), 1)) == 1
        live = ok.subscribe(gt=1)
        server.kill()
        for call in (lambda: ok.insert_events([stored("a", 2)]), lambda: ok.select_events("a")):
            with pytest.raises(OperationalError):
                call()
        with pytest.raises(OperationalError):
            next(iter(live))
    for factory in factories:
        factory.close()
    assert [e.entity for e in read_raw(f"sqlite:///{tmp_path}/x.db", "shop")] == ["a"]


# --------------------------------------------------------------------------- 6. process recording


def test_process_recording_is_atomic(multi_target: Target) -> None:
    target = multi_target
    env = target.env()
    recorder = target.factory(**env).process_recorder()
    known, other, new = uuid.uuid4(), "other", uuid.uuid4()
    recorder.insert_events([stored(known, 1), stored(known, 2), stored(other, 1)], tracking=Tracking("up", 5))
    before = recorder.max_notification_id()
    attempts = [([stored(new, 1), stored(known, 2)], 6), ([stored(known, 3), stored(new, 1), stored(other, 1)], 6),
                ([stored(new, 1), stored(known, 3)], 5), ([stored(new, 1)], 4), ([], 5)]
    for events, tracked in attempts:
        for r in (recorder, target.factory(**env).process_recorder()):
            with pytest.raises(IntegrityError):
                r.insert_events(events, tracking=Tracking("up", tracked))
            assert r.max_tracking_id("up") == 5 and r.select_events(new) == []
            assert r.max_notification_id() == before and versions(r.select_events(known)) == [1, 2]
    with pytest.raises(IntegrityError):
        target.factory(**env).tracking_recorder().insert_tracking(Tracking("up", 5))
    recorder.insert_events([], tracking=Tracking("up", 6))
    assert recorder.max_notification_id() == before and recorder.max_tracking_id("up") == 6
    assert [n.originator_id for n in recorder.select_notifications(None, 10)] == [known, known, other]
    racing = [target.factory(**env).process_recorder() for _ in range(3)]
    ids = [uuid.uuid4() for _ in racing]
    outcomes = in_threads(*[lambda r=r, oid=oid: r.insert_events([stored(oid, 1)], tracking=Tracking("up", 7))
                            for r, oid in zip(racing, ids, strict=True)])
    assert sum(o is None for o in outcomes) == 1 and all(o is None or isinstance(o, IntegrityError) for o in outcomes)
    assert [len(recorder.select_events(oid)) for oid in ids] == [int(o is None) for o in outcomes]
    assert recorder.max_tracking_id("up") == 7 and recorder.has_tracking_id("up", 7)


@pytest.mark.parametrize("names", [["a/b", "~x", "keys", "Up Stream", "é"],
                                   ["x" * 300 + "a", "x" * 300 + "b"], ["/" * 200 + "a", "/" * 200 + "b"],
                                   ["é" * 125, "é" * 126, "x" * 255]])
def test_tracking_of_awkward_application_names(target: Target, names: list[str]) -> None:
    env = target.env()
    recorder = target.factory(**env).tracking_recorder()
    for i, name in enumerate(names):
        recorder.insert_tracking(Tracking(name, 10 - i))
    fresh = target.factory(**env).tracking_recorder()
    for i, name in enumerate(names):
        assert fresh.max_tracking_id(name) == 10 - i and fresh.has_tracking_id(name, 10 - i), name
    assert len({e.entity for e in target.raw(env["PERHAP_REALM"], "events")}) == len(names)


def test_saving_several_aggregates_is_all_or_nothing(multi_target: Target) -> None:
    target = multi_target
    env = target.env()
    first, second = target.app(BankAccounts, **env), target.app(BankAccounts, **env)
    account = Account("both")
    first.save(account)
    stale = second.repository.get(account.id)
    account.deposit(1)
    first.save(account)
    stale.deposit(2)
    new = Account("new")
    with pytest.raises(IntegrityError):
        second.save(new, stale)
    assert second.recorder.select_events(new.id) == [] and len(target.raw(env["PERHAP_REALM"], "events")) == 2
    again, new = second.repository.get(account.id), Account("new")  # a failed save spends its aggregates
    again.deposit(3)
    second.save(new, again)
    assert second.repository.get(account.id).balance == 4 and second.repository.get(new.id).name == "new"


@pytest.mark.parametrize("how", [f"{b}-inprocess" for b in BACKENDS if b != "cassandra"] + ["sqlite-server"])
def test_a_crash_never_splits_events_from_their_tracking(how: str, tmp_path: Path,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    if how == "sqlite-server":  # the server is killed; its client must see an OperationalError
        store_url = f"sqlite:///{tmp_path}/crash.db"
        with ProcessServer(store_url) as server:
            last_printed, out = write_until_killed(server.url, server.proc)
        assert "error OperationalError" in out
    else:  # the writer itself is killed
        store_url = get_provider(how.partition("-")[0], tmp_path_factory).new_url()
        last_printed, _ = write_until_killed(store_url, None)
    events = read_raw(store_url, "crash", "events")
    tracked = sorted(json.loads(e.data_json)["notification_id"] for e in events if e.entity == "~tracking~upstream")
    marks = sorted(json.loads(e.data_json)["n"] for e in events if e.entity != "~tracking~upstream")
    assert tracked == list(range(1, len(tracked) + 1))
    assert last_printed <= len(tracked) <= last_printed + 1
    assert marks == sorted(list(range(1, len(tracked) + 1)) * 2)


# --------------------------------------------------------------------------- 7. snapshots


def test_snapshots(target: Target) -> None:
    env = target.env(PERHAP_DOMAIN="ledger")
    app = target.app(Ledger, **env)
    account = Account("snap")
    for amount in range(1, 9):
        account.deposit(amount)  # version v holds sum(1 .. v - 1)
    app.save(account)
    for version in (2, 4, 6):
        app.take_snapshot(account.id, version=version)
    for version in (6, 4, 2):  # duplicates, as in the library's modules
        with pytest.raises(IntegrityError, match=f"at version {version} is recorded already"):
            app.take_snapshot(account.id, version=version)
    for version in (1, 3, 5):  # below the newest and no duplicate: not stored, and no error
        app.take_snapshot(account.id, version=version)
    fresh = target.app(Ledger, **env)
    for version in range(1, 10):
        got = fresh.repository.get(account.id, version=version)
        assert (got.version, got.balance) == (version, sum(range(version)))
    assert fresh.snapshots is not None
    assert [s.originator_version for s in fresh.snapshots.get(account.id, lte=5, desc=True, limit=1)] == [4]
    assert [s.originator_version for s in fresh.snapshots.get(account.id, gt=2)] == [4, 6]
    snaps = target.raw(env["PERHAP_REALM"], "ledger-snapshots", str(account.id))
    assert [e.meta["originator_version"] for e in snaps] == [2, 4, 6]
    assert len(target.raw(env["PERHAP_REALM"], "ledger")) == 9
    fresh.take_snapshot(account.id)
    assert fresh.repository.get(account.id).balance == sum(range(9))


def test_a_save_whose_snapshot_another_writer_passed_succeeds(target: Target) -> None:
    """Two writers of one aggregate, a snapshot at every version: A stores version 2, B stores
    version 3 and its snapshot, then A takes its snapshot at 2. A's save stored its event, so it
    succeeds (it raised IntegrityError, and an application that retries would apply it twice)."""
    a_stored, b_saved = threading.Event(), threading.Event()

    class Every(Ledger):
        snapshotting_intervals = {Account: 1}

        def _take_snapshots(self, processing_event: Any) -> None:
            if threading.current_thread().name == "A":
                a_stored.set()
                b_saved.wait(30)
            super()._take_snapshots(processing_event)

    app = target.app(Every, **target.env(PERHAP_DOMAIN="ledger"))
    account = Account("race")
    app.save(account)
    outcome: list[str] = []

    def writer_a() -> None:
        mine = app.repository.get(account.id)
        mine.deposit(10)
        try:
            app.save(mine)
            outcome.append("saved")
        except IntegrityError as exc:
            outcome.append(f"IntegrityError: {exc}")

    a = threading.Thread(target=writer_a, name="A")
    a.start()
    assert a_stored.wait(30)
    theirs = app.repository.get(account.id)
    theirs.deposit(5)
    app.save(theirs)  # version 3 and its snapshot, before A's snapshot at 2
    b_saved.set()
    a.join(30)
    assert outcome == ["saved"]
    assert app.repository.get(account.id).balance == 15
    assert app.snapshots is not None
    assert [s.originator_version for s in app.snapshots.get(account.id)] == [1, 3]


# --------------------------------------------------------------------------- 8. realm and domain


def test_realm_and_domain_from_the_environment(target: Target) -> None:
    prefix = uuid.uuid4().hex[:8]
    cases = [({}, "bankaccounts", "events"),
             ({"PERHAP_REALM": f"{prefix}-plain", "PERHAP_DOMAIN": "money"}, f"{prefix}-plain", "money"),
             ({"BANKACCOUNTS_PERHAP_REALM": f"{prefix}-mine", "PERHAP_REALM": f"{prefix}-plain",
               "BANKACCOUNTS_PERHAP_DOMAIN": "mine", "PERHAP_DOMAIN": "money"}, f"{prefix}-mine", "mine"),
             ({"BANKACCOUNTS_PERHAP_URL": target.url, "PERHAP_URL": "http://127.0.0.1:1",
               "PERHAP_REALM": f"{prefix}-url"}, f"{prefix}-url", "events")]
    for extra, realm, domain in cases:
        app = target.app(BankAccounts, **{**target.env(realm=None), **extra})
        account = Account(realm)
        app.save(account)
        raw = target.raw(realm, domain, str(account.id))
        assert [e.event["name"] for e in raw] == [realm] and raw[0].realm == realm
    assert len(target.raw(f"{prefix}-plain")) == 1  # the prefixed names won where both were set

    class Ünïcode_Shop(BankAccounts):
        pass

    app = target.app(Ünïcode_Shop, **target.env(realm=None))
    assert app.factory.realm == "n-code_shop"
    with pytest.raises(es.InfrastructureFactoryError):
        Factory(Environment("X", {**target.env(realm=None), "PERHAP_REALM": "a/b"}))
    with pytest.raises(es.InfrastructureFactoryError, match="PERHAP_URL"):
        Factory(Environment("X", {**target.env(realm=None), "PERHAP_URL": "ftp://example.com/store"}))
    for bad in ({"PERHAP_URL": "http://"}, {"PERHAP_URL": "http://127.0.0.1:8787?x=1"},
                {"PERHAP_URL": "http://127.0.0.1:8787", "PERHAP_TOKEN": "secret\n"}):  # the client's refusals
        with pytest.raises(es.InfrastructureFactoryError):
            Factory(Environment("X", {**target.env(realm=None), **bad}))
    for timeout in ("-1", "0", "nan", "inf", "abc"):  # at construction, not a ValueError at the first call
        with pytest.raises(es.InfrastructureFactoryError, match="PERHAP_TIMEOUT|could not convert"):
            Factory(Environment("X", {**target.env(realm=None), "PERHAP_TIMEOUT": timeout}))


# --------------------------------------------------------------------------- 9. Cassandra


def test_cassandra_refuses_what_it_cannot_do(cassandra_target: Target) -> None:
    target = cassandra_target
    env = target.env()
    app = target.app(BankAccounts, **env)
    one, two = Account("one"), Account("two")
    with pytest.raises(es.NotSupportedError):
        app.save(one, two)
    assert target.raw(env["PERHAP_REALM"]) == []
    if target.transport == "inprocess":  # the factory knows its store: refused at once
        with pytest.raises(es.NotSupportedError):
            target.factory(**env).process_recorder()
    else:  # a server's backend shows at the first multi-entity append
        process = target.factory(**env).process_recorder()
        with pytest.raises(es.NotSupportedError):
            process.insert_events([stored(uuid.uuid4(), 1)], tracking=Tracking("up", 1))
        assert process.max_tracking_id("up") is None
    assert target.raw(env["PERHAP_REALM"]) == []
    one = Account("one")  # a failed save spends its aggregates; one aggregate at a time is fine
    app.save(one)
    assert app.repository.get(one.id).name == "one"


# --------------------------------------------------------------------------- 10. costs and limits


class CountingReads:
    """Counts the reads a factory's transport makes (the store and the server are real)."""

    def __init__(self, factory: Factory) -> None:
        self.count, transport = 0, factory.transport
        read = transport.read

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return read(*args, **kwargs)

        transport.read = counted  # type: ignore[method-assign]


def test_a_snapshot_below_the_newest_is_found_by_bisection_not_a_scan(target: Target) -> None:
    env, aggregate = target.env(), uuid.uuid4()
    writer = target.factory(**env).aggregate_recorder("snapshots")
    writer.insert_events([stored(aggregate, v, b'{"v":%d}' % v) for v in range(10, 3010, 10)])  # 300
    factory = target.factory(**env)
    snapshots, reads = factory.aggregate_recorder("snapshots"), CountingReads(factory)
    for lte, want in ((None, 3000), (3000, 3000), (2995, 2990), (1505, 1500), (15, 10), (10, 10), (5, None)):
        reads.count = 0
        found = snapshots.select_events(aggregate, lte=lte, desc=True, limit=1)
        assert [s.originator_version for s in found] == ([] if want is None else [want])
        assert reads.count <= 2 + 9, (lte, reads.count)  # a page, then log2(300) probes; a scan took 100+
    assert versions(snapshots.select_events(aggregate, lte=1505, gt=1470, desc=True)) == [1500, 1490, 1480]


def test_tracking_records_after_the_last_event_cost_a_few_reads(target: Target) -> None:
    env = target.env()
    factory = target.factory(**env)
    application, tracking = factory.application_recorder(), factory.tracking_recorder()
    application.insert_events([stored(uuid.uuid4(), 1)])
    for notification_id in range(1, 601):  # a policy that ignores 600 upstream events
        tracking.insert_tracking(Tracking("Upstream", notification_id))
    reader = target.factory(**env)
    recorder, reads = reader.application_recorder(), CountingReads(reader)
    [first] = [n.id for n in recorder.select_notifications(None, 10)]  # (1, but not on Cassandra)
    reads.count = 0
    assert recorder.max_notification_id() == first
    assert reads.count <= 3  # pages of 20, 200, 2,000: it read 30 pages of 20 before
    reads.count = 0
    assert recorder.select_notifications(first + 1, 10) == []
    assert reads.count <= 6  # the pages grow while they hold only tracking records (60 reads before)


def test_a_snapshot_domain_perhap_refuses_fails_at_construction(target: Target) -> None:
    env = target.env(PERHAP_DOMAIN="d" * 250, IS_SNAPSHOTTING_ENABLED="y")  # "-snapshots" makes it 260
    with pytest.raises(es.InfrastructureFactoryError, match="snapshots"):
        target.app(BankAccounts, **env)


def test_a_state_over_the_servers_body_limit_is_a_data_error(target: Target) -> None:
    """A 413 (body or batch over the server's limits) is a DataError, as a batch perhap refuses in
    process is: the data is what is wrong, not the program."""
    recorder = target.factory().application_recorder()
    if target.transport == "http":
        with pytest.raises(es.DataError):
            recorder.insert_events([stored(uuid.uuid4(), 1, b'"' + b"x" * 1_100_000 + b'"')])
    aggregate = uuid.uuid4()
    with pytest.raises(es.DataError):
        recorder.insert_events([stored(aggregate, v) for v in range(1, 10_002)])


def test_a_subscription_to_a_server_that_stops_answering_is_an_operational_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that still accepts connections but answers nothing (stopped with SIGSTOP): once the
    stream has been silent past its idle timeout, one request with PERHAP_TIMEOUT tells the server
    is gone, instead of reconnecting to it for minutes (five tries of 60 s each by default)."""
    monkeypatch.setattr(stream_module, "STREAM_IDLE_TIMEOUT", 1.0)  # 60 s by default
    with ProcessServer(f"sqlite:///{tmp_path}/x.db") as server:
        factory = Factory(Environment("Shop", {"PERHAP_URL": server.url, "PERHAP_TIMEOUT": "1"}))
        recorder = factory.application_recorder()
        recorder.insert_events([stored("a", 1)])
        subscription = recorder.subscribe(gt=0)
        assert next(subscription).id == 1
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            errors: list[BaseException] = []
            waiter = threading.Thread(target=lambda: errors.extend(in_threads(lambda: next(subscription))))
            started = time.monotonic()
            waiter.start()
            waiter.join(30)
            assert not waiter.is_alive(), "the subscription still waits on a server that answers nothing"
            assert [type(e) for e in errors] == [OperationalError]
            # Idle timeout + one request's timeout, with room to spare; reconnecting five times,
            # each waiting for headers as long as the idle timeout, took over 9 s.
            assert time.monotonic() - started < 6
        finally:
            server.proc.send_signal(signal.SIGCONT)
            subscription.stop()
            factory.close()


def test_without_the_library_the_import_says_what_to_install() -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['eventsourcing'] = None; import perhap.eventsourcing"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "pip install 'eventsourcing>=9.5,<9.6'" in r.stderr and "'.[eventsourcing]'" in r.stderr, r.stderr


def _waiting_in_next(subscription: Any, count: int) -> tuple[list[threading.Thread], list[BaseException]]:
    """``count`` threads each waiting in ``next(subscription)`` (returned once all are in it), and
    the list where each puts what ended its wait."""
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            next(subscription)
        except BaseException as exc:
            outcome.append(exc)

    waiters = [threading.Thread(target=wait, daemon=True) for _ in range(count)]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 30
    while not all(_inside(waiter, "__next__") for waiter in waiters):
        assert time.monotonic() < deadline and all(w.is_alive() for w in waiters), outcome
        time.sleep(0.01)
    return waiters, outcome


def _inside(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is running ``function`` now (somewhere in its stack).

    The garbage collector is off meanwhile: sys._current_frames() builds frame objects while it
    holds the interpreter's lock on its threads, and a collection run from there may call a
    finalizer that waits on another thread, which waits on that lock (the suite hung so, twice)."""
    gc.disable()
    try:
        frames = sys._current_frames()
    finally:
        gc.enable()
    frame = frames.get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False
