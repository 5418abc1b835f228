"""Consumer groups under attack: consumers killed, servers killed and restarted, poison events,
two servers sharing one group. Everything runs for real: `perhap serve` processes, consumer
processes running ``Client.consume``, the backends of tests/conftest.py.

What the contract promises, and so what is checked after each storm:

- at least once: every event appended is handled, and the group ends with lag 0, nothing parked;
- delivery numbers tell the attempts of one event apart: no (event, delivery) is handed out twice,
  so no event goes out twice with delivery 1;
- an acknowledged event is never delivered again: no handling of an event after a delivery whose
  acknowledgement succeeded, and the group's ``acknowledged`` count equals the number of events;
- per-entity order: within what each consumer saw, an entity's versions never go back (a version
  repeats only as a redelivery), and across consumers the last handling of version v started
  before any handling of version v + 1 (one monotonic clock serves every process of the machine).

Run as a module (``python -m tests.test_groups_chaos URL REALM GROUP NAME FILE``) it is one
consumer process: ``Client.consume`` until SIGTERM, writing one JSON line per handling and per
acknowledgement that succeeded, unbuffered, so what it wrote survives a SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from perhap.client import Client
from tests.conftest import BACKENDS
from tests.servers import ProcessServer, ThreadServer

ROOT = Path(__file__).resolve().parent.parent
#: Backends of the storm of three consumer processes (SQLite, the default server, and PostgreSQL).
STORM = [b for b in BACKENDS if b in ("sqlite", "postgres")]
#: Backends several `perhap serve` processes share.
SHARED = [b for b in BACKENDS if b in ("postgres", "cassandra")]
#: Seconds a consumer's handler works on each event: enough that a consumer stopped at a random
#: moment is usually in the middle of a leased batch.
HANDLING = 0.002
#: Generous bounds for slow machines; the loops below end as soon as their condition holds.
DEADLINE = 90.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def group_info(url: str, realm: str, group: str) -> dict[str, Any] | None:
    """The group object, or None while the server does not answer (restarting)."""
    try:
        r = httpx.get(f"{url}/_groups/{realm}/{group}", timeout=10)
    except httpx.TransportError:
        return None
    if r.status_code >= 500:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def create_group(url: str, realm: str, group: str, **settings: Any) -> dict[str, Any]:
    r = httpx.put(f"{url}/_groups/{realm}/{group}", json=settings, timeout=30)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def held_by(info: dict[str, Any], consumer: str) -> int:
    return sum(c["in_flight"] for c in info["consumers"] if c["consumer"] == consumer)


# --------------------------------------------------------------------------- what handlers saw


@dataclass(frozen=True)
class Handling:
    consumer: str
    event_id: str
    entity: str
    version: int
    delivery: int
    at: float  # time.monotonic() when the handler started


def read_records(path: Path, *, killed: bool) -> tuple[list[Handling], list[tuple[str, int]]]:
    """A consumer's handlings, and the (event_id, delivery) pairs whose acknowledgement succeeded."""
    handlings: list[Handling] = []
    acks: list[tuple[str, int]] = []
    lines = path.read_bytes().splitlines()
    for n, line in enumerate(lines):
        try:
            r = orjson.loads(line)
        except orjson.JSONDecodeError:
            # Only the last line of a consumer killed while writing it may be cut short.
            assert killed and n == len(lines) - 1, f"{path}: unreadable line {n}: {line[:200]!r}"
            continue
        if "ack" in r:
            acks += [(i, d) for i, d in r["ack"]]
        else:
            handlings.append(Handling(r["c"], r["id"], r["entity"], r["v"], r["n"], r["t"]))
    return handlings, acks


def check_handlings(stored: Sequence[tuple[str, str, int]], handlings: list[Handling],
                    acks: list[tuple[str, int]]) -> None:
    """The contract's promises over what the handlers recorded (see the module's docstring);
    ``stored`` is every event of the group's scope as (event_id, entity, version)."""
    by_event: dict[str, list[Handling]] = {}
    for h in handlings:
        by_event.setdefault(h.event_id, []).append(h)
    ids = {event_id for event_id, _, _ in stored}
    missing = ids - set(by_event)
    assert not missing, f"{len(missing)} events never handled, e.g. {sorted(missing)[:3]}"
    assert set(by_event) <= ids, "a handler saw an event that is not in the scope"
    for event_id, hs in by_event.items():
        deliveries = [h.delivery for h in hs]
        assert len(set(deliveries)) == len(deliveries), \
            f"event {event_id}: one delivery number handed out twice: {sorted(deliveries)}"
    acked: dict[str, int] = {}
    for event_id, delivery in acks:
        assert event_id not in acked, f"event {event_id} acknowledged twice"
        acked[event_id] = delivery
    for event_id, delivery in acked.items():
        later = [h for h in by_event[event_id] if h.delivery > delivery]
        assert not later, f"event {event_id} was acknowledged (delivery {delivery}) and delivered again: {later}"
    # Per-entity order, within what each consumer saw.
    seen: dict[tuple[str, str], Handling] = {}
    for h in handlings:  # each consumer's handlings in the order it made them
        before = seen.get((h.consumer, h.entity))
        if before is not None:
            assert h.version > before.version or (h.version == before.version and h.delivery > before.delivery), \
                f"{h.consumer} saw {h.entity} out of order: {before} then {h}"
        seen[(h.consumer, h.entity)] = h
    # Per-entity order across consumers: the last handling of a version (the one acknowledged)
    # started before any handling of the next version.
    versions: dict[str, dict[int, list[Handling]]] = {}
    for h in handlings:
        versions.setdefault(h.entity, {}).setdefault(h.version, []).append(h)
    for entity, by_version in versions.items():
        for version, hs in by_version.items():
            after = by_version.get(version + 1)
            if after:
                last = max(hs, key=lambda h: h.delivery)
                first_next = min(after, key=lambda h: h.at)
                assert last.at < first_next.at, f"{entity}: version {version + 1} handled before " \
                                                f"version {version} was done: {last} / {first_next}"


# --------------------------------------------------------------------------- the consumer process


def consumer_main(url: str, realm: str, group: str, name: str, path: str) -> None:
    """One consumer: ``Client.consume`` until SIGTERM, recording handlings and acknowledgements."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = open(path, "ab", buffering=0)  # noqa: SIM115 (lives as long as the process)
    last_delivery: dict[str, int] = {}

    def record(item: dict[str, Any]) -> None:
        out.write(orjson.dumps(item) + b"\n")  # one write each: what returned survives a SIGKILL

    class RecordingClient(Client):
        """The real client; its acknowledgements that succeeded are written down."""

        def ack(self, realm: str, group: str, consumer: str, event_ids: Sequence[str]) -> int:
            count = super().ack(realm, group, consumer, event_ids)
            record({"ack": [[i, last_delivery[i]] for i in event_ids]})
            return count

    def handler(e: Any) -> None:
        record({"c": name, "id": e.event_id, "entity": e.entity, "v": e.version, "n": e.delivery,
                "t": time.monotonic()})
        last_delivery[e.event_id] = e.delivery
        time.sleep(HANDLING)

    with RecordingClient(url) as client:
        client.consume(realm, group, handler, consumer=name, max=20, wait=1.0, stop=stop)


def start_consumer(url: str, realm: str, group: str, name: str, workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 (the child holds it)
    with log:
        return subprocess.Popen([sys.executable, "-m", "tests.test_groups_chaos", url, realm, group, name,
                                 str(workdir / f"{name}.jsonl")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop_consumer(proc: subprocess.Popen[bytes], name: str, workdir: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"{name} did not stop on SIGTERM") from None
    log = (workdir / f"{name}.log").read_text(errors="replace")
    assert code == 0 and "Traceback" not in log, f"{name} ended with {code}:\n{log[-3000:]}"


# --------------------------------------------------------------------------- a. the storm


class Appender(threading.Thread):
    """Appends ``batches`` batches of 5 events, entity after entity, through HTTP, retrying each
    (same event ids: idempotent) while the server is down."""

    def __init__(self, url: str, realm: str, entities: int, batches: int) -> None:
        super().__init__(daemon=True)
        self.url, self.realm, self.entities, self.batches = url, realm, entities, batches
        self.appended = 0
        self.error: str | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            for k in range(self.batches):
                batch = [{"type": "t", "event": {"k": k, "i": i}, "event_id": str(uuid.uuid4())} for i in range(5)]
                while True:
                    try:
                        r = http.post(f"/{self.realm}/d/e{k % self.entities}", json={"events": batch})
                    except httpx.TransportError:
                        r = None
                    if r is not None and r.status_code in (200, 201):
                        break
                    if r is not None and r.status_code < 500:
                        self.error = f"append refused: {r.status_code} {r.text}"
                        return
                    time.sleep(0.05)
                self.appended += 5
                time.sleep(0.01)  # spread the flood over the storm


@pytest.mark.parametrize("backend", STORM, indirect=True)
def test_three_consumers_through_a_kill_and_a_server_restart(backend: Any, store_url: str, realm: str,
                                                              tmp_path: Path) -> None:
    """1,500 events to 30 entities appended while three consumer processes work; one consumer is
    SIGKILLed holding leases, and the server is stopped (SIGKILL on SQLite, SIGTERM on PostgreSQL)
    and started again on the same store and port while everyone keeps going."""
    group, names = "projector", ["c0", "c1", "c2"]
    server = ProcessServer(store_url, cwd=tmp_path).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    appender = Appender(server.url, realm, entities=30, batches=300)
    try:
        create_group(server.url, realm, group, ack_timeout=2, max_deliveries=10)
        procs = {name: start_consumer(server.url, realm, group, name, tmp_path) for name in names}
        appender.start()

        # c0 dies holding leases: stopped (SIGSTOP) when the group says it holds some, then killed.
        def handled(name: str) -> int:
            path = tmp_path / f"{name}.jsonl"
            return path.read_bytes().count(b'"c":') if path.exists() else 0

        wait_for(lambda: appender.appended >= 300 and handled("c0") >= 20, "c0 at work")
        held = 0
        deadline = time.monotonic() + DEADLINE
        while not held:
            assert time.monotonic() < deadline, "c0 never seen holding leases"
            os.kill(procs["c0"].pid, signal.SIGSTOP)
            info = group_info(server.url, realm, group)
            assert info is not None
            held = held_by(info, "c0")
            if not held:
                os.kill(procs["c0"].pid, signal.SIGCONT)
                time.sleep(0.02)
        procs["c0"].kill()
        procs["c0"].wait(10)

        # The server goes down among leases and acknowledgements, and comes back.
        wait_for(lambda: appender.appended >= 900, "900 events appended")
        if backend.name == "sqlite":
            server.kill()
        else:
            code, output = server.terminate()
            assert code == 0 and "Traceback" not in output, output[-3000:]
        server = ProcessServer(store_url, server.port, cwd=tmp_path).start()

        appender.join(DEADLINE)
        assert not appender.is_alive() and appender.error is None, appender.error
        final: dict[str, Any] = {}

        def drained() -> bool:
            info = group_info(server.url, realm, group)
            if info is None or info["lag"] or info["head"] == 0:
                return False
            final.update(info)
            return True

        wait_for(drained, "the group's lag back to 0", every=0.2)
        for name in names[1:]:
            stop_consumer(procs[name], name, tmp_path)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        server.kill()

    with ProcessServer(store_url, cwd=tmp_path) as again, Client(again.url) as client:
        events = list(client.read(realm))
        after = group_info(again.url, realm, group)
    stored = [(e.event_id, e.entity, e.version) for e in events]
    assert len(stored) == 1500
    handlings: list[Handling] = []
    acks: list[tuple[str, int]] = []
    for name in names:
        h, a = read_records(tmp_path / f"{name}.jsonl", killed=name == "c0")
        assert h, f"{name} handled nothing"
        handlings += h
        acks += a
    check_handlings(stored, handlings, acks)
    assert final["parked"] == 0 and final["in_flight"] == 0, final
    assert final["head"] == final["checkpoint"] == max(e.position for e in events), final
    assert final["acknowledged"] == 1500, final  # each event acknowledged once: never delivered after it
    assert final["delivered"] - final["redeliveries"] == 1500, final  # one first delivery each
    assert final["delivered"] >= len(handlings)
    assert final["redeliveries"] >= held, final  # c0's leases, at least, went out again
    assert all(c["in_flight"] == 0 for c in final["consumers"]), final["consumers"]
    assert after is not None and after["lag"] == 0 and after["acknowledged"] == 1500  # and it stays so


# --------------------------------------------------------------------------- b. a poison event


def test_a_poison_event_is_retried_parked_listed_and_replayed(store_url: str, realm: str) -> None:
    """max_deliveries=3: the handler fails on one event three times, the group parks it without
    holding back the rest of its entity; replayed once the handler is fixed, it ends acknowledged."""
    with ThreadServer(store_url) as server, Client(server.url) as client:
        create_group(server.url, realm, "mailer", ack_timeout=30, max_deliveries=3)
        appended = {(entity, n): client.append(realm, "d", entity, "t", {"n": n}).first.event_id
                    for n in range(5) for entity in ("a", "b")}
        poison = appended[("a", 1)]
        seen: list[tuple[str, str, int, int]] = []
        healed = threading.Event()
        stop = threading.Event()

        def handler(e: Any) -> None:
            seen.append((e.event_id, e.entity, e.version, e.delivery))
            if e.event_id == poison and not healed.is_set():
                raise RuntimeError("poison")

        worker = threading.Thread(target=client.consume, args=(realm, "mailer", handler),
                                  kwargs={"consumer": "w1", "max": 10, "wait": 0.5, "stop": stop}, daemon=True)
        worker.start()
        try:
            # lag counts neither acknowledged nor parked events: 0 with one parked means the rest
            # of entity a went on without it.
            wait_for(lambda: (i := group_info(server.url, realm, "mailer")) is not None
                     and i["lag"] == 0 and i["parked"] == 1, "the poison parked and the rest acknowledged")
            tries = [d for i, _, _, d in seen if i == poison]
            assert tries == [1, 2, 3]
            later = [(v, n) for i, entity, v, n in seen if entity == "a" and v > 1]
            assert sorted(later) == [(2, 1), (3, 1), (4, 1)]  # not held back, each once
            third = seen.index((poison, "a", 1, 3))
            assert all(seen.index((i, "a", v, 1)) > third for i, entity, v, _ in seen if entity == "a" and v > 1)

            parked = httpx.get(f"{server.url}/_groups/{realm}/mailer/parked", timeout=10).json()["events"]
            assert [(p["event_id"], p["delivery"], p["reason"]) for p in parked] == [(poison, 3, "max_deliveries")]
            assert parked[0]["entity"] == "a" and parked[0]["version"] == 1 and parked[0]["event"] == {"n": 1}
            assert parked[0]["parked_at"].endswith("Z")

            healed.set()
            r = httpx.post(f"{server.url}/_groups/{realm}/mailer/parked/replay", timeout=10)
            assert r.status_code == 200 and r.json() == {"replayed": 1}
            wait_for(lambda: (i := group_info(server.url, realm, "mailer")) is not None
                     and i["lag"] == 0 and i["parked"] == 0 and i["acknowledged"] == 10, "the replay acknowledged")
            assert [d for i, _, _, d in seen if i == poison] == [1, 2, 3, 1]  # the count restarted
            assert httpx.get(f"{server.url}/_groups/{realm}/mailer/parked", timeout=10).json() == {"events": []}
            assert sorted((i, n) for i, _, _, n in seen if i != poison) == sorted(
                (i, 1) for i in appended.values() if i != poison)  # every other event once
        finally:
            stop.set()
            worker.join(30)
        assert not worker.is_alive()


# --------------------------------------------------------------------------- c. two servers


@dataclass
class Lease:
    consumer: str
    server: int
    event_id: str
    entity: str
    version: int
    delivery: int
    got: float  # monotonic, when the lease's answer arrived
    acking: float = 0.0  # when its acknowledgement was sent
    acked: float = 0.0  # when the acknowledgement's 200 arrived


#: Events a consumer of the two-server test takes at once: its three consumers per server then hold
#: at most 15 of the 20 entities, so the other server's consumers always find work. With 10, one
#: server's consumers could hold every entity, and as an acknowledgement wakes the consumers waiting
#: in its own process first, they would take the freed entities again and again.
PER_POLL = 5


async def _consume(url: str, server: int, consumer: str, realm: str, group: str, leases: list[Lease],
                   done: asyncio.Event) -> None:
    """Long polls and acknowledgements by plain HTTP; a 503 (the group's state written by the other
    server at the same moment too often) is tried again."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while not done.is_set():
            r = await http.get(f"/_groups/{realm}/{group}/events",
                               params={"consumer": consumer, "max": PER_POLL, "wait": 1})
            if r.status_code == 503:
                continue
            assert r.status_code == 200, r.text
            got = time.monotonic()
            mine = [Lease(consumer, server, e["event_id"], e["entity"], e["version"], e["delivery"], got)
                    for e in r.json()["events"]]
            if not mine:
                continue
            leases += mine
            await asyncio.sleep(0.005 * len(mine))  # the work
            while True:
                acking = time.monotonic()
                r = await http.post(f"/_groups/{realm}/{group}/ack",
                                    json={"consumer": consumer, "event_ids": [x.event_id for x in mine]})
                if r.status_code != 503:
                    break
            assert r.status_code == 200 and r.json() == {"acknowledged": len(mine)}, r.text
            for x in mine:
                x.acking, x.acked = acking, time.monotonic()


async def _append(url: str, realm: str, entities: int, batches: int, offset: int) -> list[str]:
    ids = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for k in range(batches):
            r = await http.post(f"/{realm}/d/e{(k + offset) % entities}",
                                json={"events": [{"type": "t", "event": {"k": k, "i": i}} for i in range(4)]})
            assert r.status_code == 201, r.text
            ids += [e["event_id"] for e in r.json()["events"]]
    return ids


@pytest.mark.parametrize("backend", SHARED, indirect=True)
async def test_two_servers_never_lease_one_event_twice(backend: Any, store_url: str, realm: str,
                                                       tmp_path: Path) -> None:
    """Three consumers on each of two `perhap serve` processes of one store, one group, while
    events are appended through both: every event leased exactly once (the leases outlast the
    test, so a second delivery would be two consumers holding it at once), entity by entity one
    at a time, and the lag back to 0 on both servers."""
    group = "split"
    with ProcessServer(store_url, cwd=tmp_path) as a, ProcessServer(store_url, cwd=tmp_path) as b:
        create_group(a.url, realm, group, ack_timeout=600, max_deliveries=5)
        leases: list[Lease] = []
        done = asyncio.Event()
        consumers = [asyncio.ensure_future(_consume(s.url, n, f"s{n}-w{i}", realm, group, leases, done))
                     for n, s in enumerate((a, b)) for i in range(3)]
        try:
            appended = await asyncio.gather(_append(a.url, realm, 20, 50, 0), _append(b.url, realm, 20, 50, 10))
            ids = {i for part in appended for i in part}
            deadline = time.monotonic() + DEADLINE
            while sum(1 for x in leases if x.acked) < len(ids):
                assert time.monotonic() < deadline, "not every event was acknowledged in time"
                for c in consumers:
                    if c.done():
                        c.result()  # a consumer that failed fails the test
                await asyncio.sleep(0.05)
        finally:
            done.set()
            await asyncio.gather(*consumers, return_exceptions=True)
        for c in consumers:
            c.result()
        async with httpx.AsyncClient(timeout=30) as http:
            infos = [(await http.get(f"{s.url}/_groups/{realm}/{group}")).json() for s in (a, b)]
            stored = (await http.get(f"{a.url}/{realm}", params={"limit": 1000})).json()["events"]

    assert len(ids) == 400 and {e["event_id"] for e in stored} == ids
    by_id: dict[str, list[Lease]] = {}
    for x in leases:
        by_id.setdefault(x.event_id, []).append(x)
    twice = {i: xs for i, xs in by_id.items() if len(xs) > 1}
    assert not twice, f"{len(twice)} events leased twice, e.g. {next(iter(twice.values()))}"
    assert set(by_id) == ids and all(x.delivery == 1 for x in leases)
    assert {x.server for x in leases} == {0, 1}, "one server's consumers got nothing: nothing was shared"
    # An entity's next event went out only after the previous one's acknowledgement was sent.
    by_entity: dict[str, list[Lease]] = {}
    for x in leases:
        by_entity.setdefault(x.entity, []).append(x)
    for entity, xs in by_entity.items():
        xs.sort(key=lambda x: x.version)
        assert [x.version for x in xs] == list(range(len(xs))), entity
        for prev, nxt in zip(xs, xs[1:], strict=False):
            assert nxt.got > prev.acking, f"{entity}: {nxt} leased while {prev} was in flight"
    for info in infos:
        assert info["lag"] == 0 and info["in_flight"] == 0 and info["parked"] == 0, info
        assert info["acknowledged"] == 400 and info["redeliveries"] == 0, info


if __name__ == "__main__":
    consumer_main(*sys.argv[1:6])
