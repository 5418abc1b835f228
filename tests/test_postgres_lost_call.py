"""PostgreSQL: a group of remembered entities is committed by one call, which commits as it ends,
so a connection lost around it leaves its outcome to be read. The writer reads it on a fresh
connection once the realms' locks show the call is over: an append is answered from what the call
stored, or tried again when it stored nothing, never a 503 while the database is up."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
import pytest

from perhap import AppendResult, Scope, StorageUnavailable, VersionConflict, open_store
from perhap.testing.postgres import PostgresServer
from tests.conftest import get_provider
from tests.helpers import TcpRelay, relayed_postgres

pytestmark = pytest.mark.postgres

#: The server's ReadyForQuery when idle, the last message of its answer to a statement.
READY = b"Z\x00\x00\x00\x05I"


@pytest.fixture
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return get_provider("postgres", tmp_path_factory).new_url()


class _CuttingProxy(TcpRelay):
    """A TCP relay to the real server that cuts the writer's connection (the one that prepared
    ``perhap_write_known``) once, at the next statement it sends: ``before`` the server gets it,
    or ``after`` the server has answered it in full (the answer is never passed on); or ``hold``s
    that statement until ``released`` (a call that reaches the server late)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.cut: str | None = None
        self.cuts = 0
        self.released = asyncio.Event()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        state = {"writer": False, "cutting": False}

        def close() -> None:
            writer.transport.abort()  # a reset, as a network or a killed server gives
            up_writer.close()

        async def to_server() -> None:
            while data := await reader.read(65536):
                state["writer"] = state["writer"] or b"perhap_write_known" in data
                if state["writer"] and self.cut is not None and not state["cutting"]:
                    when, self.cut = self.cut, None
                    self.cuts += 1
                    if when == "before":
                        close()
                        return
                    if when == "hold":
                        await self.released.wait()
                    else:
                        state["cutting"] = True
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            answer = b""
            while data := await up_reader.read(65536):
                if state["cutting"]:
                    answer += data
                    if answer.endswith(READY):  # the call answered in full: committed or not
                        close()
                        return
                    continue
                writer.write(data)
                await writer.drain()

        await asyncio.gather(to_server(), to_client(), return_exceptions=True)
        close()


async def _through_proxy(pg_url: str) -> tuple[_CuttingProxy, str]:
    proxy, user, rest = relayed_postgres(pg_url, _CuttingProxy)
    return proxy, f"postgresql://{user}@127.0.0.1:{await proxy.start()}/{rest}"


def _item(entity: str, event: int, event_id: str | None = None) -> dict[str, object]:
    return {"entity": entity, "type": "t", "event": event, **({"event_id": event_id} if event_id else {})}


@pytest.mark.parametrize("client_ids, runtime_role", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("when", ["before", "after"])
async def test_an_append_whose_call_lost_its_connection_is_answered_from_the_database(
        pg_url: str, when: str, client_ids: bool, runtime_role: bool) -> None:
    """The call cut before it reached the server (an idle connection the server or a firewall had
    closed) stores nothing and is tried again; cut after the server answered, it is answered from
    the rows it stored (ids the server chose are no one else's), or, when the client chose every
    id, by the retry's look-up (a replay). Either way each append is stored once and its answer is
    what is stored. Also for a runtime role that may only read ``perhap_meta`` (the look-up's
    durable write was an update of it: every lost call a 503)."""
    def new_id() -> str | None:
        return str(uuid.uuid4()) if client_ids else None

    role = f"perhap_run_{uuid.uuid4().hex[:8]}"
    if runtime_role:
        async with open_store(pg_url):  # the schema, made by its owner
            pass
        admin = await asyncpg.connect(pg_url, timeout=10)
        try:
            for statement in (f"CREATE ROLE {role} LOGIN",
                              f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                              f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
                              f"REVOKE INSERT, UPDATE, DELETE ON perhap_meta FROM {role}"):
                await admin.execute(statement)
        finally:
            await admin.close()
        pg_url = re.sub(r"postgresql://[^@]+@", f"postgresql://{role}@", pg_url)
    proxy, url = await _through_proxy(pg_url)
    try:
        async with open_store(url) as store:
            for entity in ("e", "f", "g"):
                await store.append("r", "d", entity, "t", 0)  # remembered: the next goes by the call
            await store.append_many("r", "d", [_item("e", 1), _item("f", 1)])
            proxy.cut = when
            results = await asyncio.gather(  # one group: accepted, refused and multi-entity jobs
                store.append("r", "d", "e", "t", 2, expected_version=1, event_id=new_id()),
                store.append("r", "d", "f", "t", 2, expected_version=0, event_id=new_id()),
                store.append_many("r", "d", [_item("f", 2, new_id()), _item("g", 1, new_id())]),
                return_exceptions=True)
            assert proxy.cuts == 1
            first, refused, many = results
            created = not (client_ids and when == "after")  # else the retry finds them stored: a replay
            assert isinstance(first, AppendResult) and first.created == created, first
            assert isinstance(refused, VersionConflict), refused
            assert isinstance(many, AppendResult) and many.created == created, many
            stored = {e.event_id: e for e in (await store.read(Scope("r"))).events}
            assert len(stored) == 8  # 3 + 2 before, 1 + 2 now: nothing twice, nothing lost
            for appended in [*first.events, *many.events]:
                event = stored[appended.event_id]
                assert (appended.version, appended.position, appended.timestamp) == (
                    event.version, event.position, event.timestamp)
            assert [(a.entity, a.version) for a in many.events] == [("f", 2), ("g", 1)]
            assert first.events[0].entity is None and first.events[0].version == 2
            assert [e.event for e in (await store.read(Scope("r", "d", "f"))).events] == [0, 1, 2]
    finally:
        proxy.close()


async def test_a_lost_call_committed_on_the_primary_alone_is_not_acknowledged(tmp_path_factory: pytest.TempPathFactory
                                                                              ) -> None:
    """With a synchronous standby that never answers, a call waits for it; an operator ends its
    session (committed on the primary, "might not have been replicated"). The look-up finds its
    rows, and its own commit waits for the standby as well: the append is a 503, never a 201."""
    server = PostgresServer(tmp_path_factory.mktemp("syncrep"))
    server.start()
    try:
        url = server.create_database("syncrep")
        admin = await asyncpg.connect(server.url(), timeout=10)
        try:
            async with open_store(f"{url}?timeout=2") as store:
                await store.append("r", "d", "e", "t", 0)  # remembered: the next goes by the call
                await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nowhere'")
                await admin.execute("SELECT pg_reload_conf()")
                await asyncio.sleep(0.3)
                append = asyncio.ensure_future(store.append("r", "d", "e", "t", 1))
                waiting: list[asyncpg.Record] = []
                for _ in range(100):
                    waiting = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                    if waiting:
                        break
                    await asyncio.sleep(0.05)
                assert waiting, "the call never waited for the standby"
                await admin.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
                with pytest.raises(StorageUnavailable, match="outcome of the commit is unknown"):
                    await append
        finally:
            await admin.close()
    finally:
        server.cleanup()


async def test_a_call_that_times_out_is_an_unknown_outcome(pg_url: str) -> None:
    """A call that timed out may not have reached the server yet (held in a queue, retransmitted):
    a look-up behind the realms' locks could run before it and miss it, and a retry would then
    answer a 409 for an event the late call stores. So a timeout is a 503, as before."""
    proxy, url = await _through_proxy(pg_url)
    try:
        async with open_store(f"{url}?timeout=1") as store:
            for n in range(2):  # the second by the call, which is prepared then: the next sends it alone
                await store.append("r", "d", "e", "t", n)
            proxy.cut = "hold"
            with pytest.raises(StorageUnavailable, match="outcome of the commit is unknown"):
                await store.append("r", "d", "e", "t", 2, expected_version=1)
            proxy.released.set()  # the call reaches the server, late, and commits
            for _ in range(100):
                if len((await store.read(Scope("r", "d", "e"))).events) == 3:
                    break
                await asyncio.sleep(0.05)
            assert [e.event for e in (await store.read(Scope("r", "d", "e"))).events] == [0, 1, 2]
    finally:
        proxy.released.set()
        proxy.close()
