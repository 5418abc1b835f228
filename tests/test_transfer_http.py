"""Export, import and copy against a server run with --auth: --token / $PERHAP_TOKEN, a token per
side for copy (--from-token / --to-token), one-line errors that never show a token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perhap import Scope, open_store
from perhap.auth import Authenticator, add_token
from tests.servers import ThreadServer
from tests.test_transfer import fill, strip_positions


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERHAP_") or k.startswith("PERHAP_TEST")}
    return subprocess.run([sys.executable, "-m", "perhap.cli", *args], capture_output=True, timeout=120,
                          env={**clean, **(env or {})})


def ok(r: subprocess.CompletedProcess[bytes]) -> bytes:
    assert r.returncode == 0, r.stderr
    return r.stdout


def one_error_line(r: subprocess.CompletedProcess[bytes], *secrets: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for secret in secrets:
        assert secret not in err and secret not in r.stdout.decode()
    return lines[0]


@pytest.fixture
def tokens(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.json")


async def filled(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path / name}"
    async with open_store(url) as store:
        await fill(store, realms=2, per_realm=25)
    return url


def served(url: str, tokens: str) -> ThreadServer:
    return ThreadServer(url, auth=Authenticator(tokens, recheck=0))


async def test_export_from_a_server_equals_the_export_of_its_store(tmp_path: Path, tokens: str) -> None:
    url = await filled(tmp_path, "a.db")
    direct = ok(run_cli("export", "--db", url))
    reader, _ = add_token(tokens, "*", "read")
    with served(url, tokens) as server:
        assert ok(run_cli("export", "--db", server.url, "--token", reader)) == direct
        assert ok(run_cli("export", "--db", server.url, env={"PERHAP_TOKEN": reader})) == direct
        scoped = ok(run_cli("export", "--db", server.url, "realm1/d0", env={"PERHAP_TOKEN": reader}))
    assert scoped == ok(run_cli("export", "--db", url, "realm1/d0"))


async def test_a_server_url_past_the_servers_root_is_refused_before_anything_moves(tmp_path: Path,
                                                                                 tokens: str) -> None:
    """``http://host/realm1`` was taken as a prefix: the export read realm1's domains as realms (a
    dump out of commit order, exit 0), and a copy wrote them into its destination so."""
    url, other = await filled(tmp_path, "a.db"), await filled(tmp_path, "b.db")
    direct = ok(run_cli("export", "--db", url))
    admin, _ = add_token(tokens, "*", "admin")
    dest = tmp_path / "dest.db"
    with served(url, tokens) as server:
        for source in (f"{server.url}/realm1", f"{server.url}/realm1/", f"{server.url}/a/b"):
            r = run_cli("export", "--db", source, "--token", admin)
            assert r.returncode == 1 and r.stdout == b"", r.stdout[:200]
            assert "past the server's root" in one_error_line(r, admin)
            r = run_cli("copy", "--from", source, "--from-token", admin, "--to", f"sqlite:///{dest}")
            assert r.returncode == 1 and "past the server's root" in one_error_line(r, admin)
        assert not dest.exists()
        r = run_cli("copy", "--from", other, "--to", f"{server.url}/realm1", "--to-token", admin)
        assert r.returncode == 1 and "past the server's root" in one_error_line(r, admin)
        assert ok(run_cli("export", "--db", server.url, "--token", admin)) == direct  # nothing written


async def test_copy_from_a_server_into_a_store_file(tmp_path: Path, tokens: str) -> None:
    url = await filled(tmp_path, "a.db")
    reader, _ = add_token(tokens, "*", "read")
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    with served(url, tokens) as server:
        out = ok(run_cli("copy", "--from", server.url, "--from-token", reader, "--to", copy)).decode()
        assert "copy verified: 2 realms" in out
        # $PERHAP_TOKEN is not sent by copy: one token must not travel to a second server unasked.
        r = run_cli("copy", "--from", server.url, "--to", copy, env={"PERHAP_TOKEN": reader})
        assert "401" in one_error_line(r, reader)
        out = ok(run_cli("copy", "--from", server.url, "--to", copy, env={"PERHAP_FROM_TOKEN": reader})).decode()
        assert "58 events (0 copied now, 58 there already)" in out  # resumed after its newest events
    assert ok(run_cli("export", "--db", copy)) == ok(run_cli("export", "--db", url))


async def test_errors_are_one_line_without_the_token(tmp_path: Path, tokens: str) -> None:
    url = await filled(tmp_path, "a.db")
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(ok(run_cli("export", "--db", url)))
    reader, _ = add_token(tokens, "*", "read")
    other, _ = add_token(tokens, "elsewhere", "admin")
    wrong = "perhap_" + "x" * 43
    with served(url, tokens) as server:
        line = one_error_line(run_cli("export", "--db", server.url))
        assert "401" in line and "--token or PERHAP_TOKEN" in line
        assert "401" in one_error_line(run_cli("export", "--db", server.url, "--token", wrong), wrong)
        assert "401" in one_error_line(run_cli("export", "--db", server.url, env={"PERHAP_TOKEN": wrong}), wrong)
        assert "403" in one_error_line(run_cli("export", "--db", server.url, "realm0", "--token", other), other)
        assert "403" in one_error_line(run_cli("import", "--db", server.url, str(dump), "--token", reader), reader)
        assert "401" in one_error_line(run_cli("import", "--db", server.url, str(dump), "--token", wrong), wrong)
        copy = f"sqlite:///{tmp_path / 'copy.db'}"
        line = one_error_line(run_cli("copy", "--from", server.url, "--to", copy, "--from-token", wrong), wrong)
        assert "401" in line and "--from-token" in line and server.url in line
    # A token for a store URL, or one that is no bearer token: usage errors, the token not shown.
    r = run_cli("export", "--db", url, "--token", reader)
    assert r.returncode == 2 and reader.encode() not in r.stderr and b"--token is for a server" in r.stderr
    r = run_cli("copy", "--from", url, "--to", "http://127.0.0.1:9", "--to-token", "perhap_a b")
    assert r.returncode == 2 and b"perhap_a" not in r.stderr and b"--to-token" in r.stderr


async def test_a_refused_export_writes_no_dump(tmp_path: Path, tokens: str) -> None:
    """A dump with only its header imports as an empty store without a word: an export refused
    (a 401 at its first read) writes nothing, to stdout or to --output, and keeps an older file."""
    url = await filled(tmp_path, "a.db")
    direct = ok(run_cli("export", "--db", url))
    reader, _ = add_token(tokens, "*", "read")
    out = tmp_path / "out.jsonl"
    with served(url, tokens) as server:
        r = run_cli("export", "--db", server.url)
        assert "401" in one_error_line(r) and r.stdout == b""
        assert "401" in one_error_line(run_cli("export", "--db", server.url, "-o", str(out)))
        assert list(tmp_path.glob("out.jsonl*")) == []
        ok(run_cli("export", "--db", server.url, "-o", str(out), "--token", reader))
        whole = out.read_bytes()
        assert whole == direct and list(tmp_path.glob("out.jsonl*")) == [out]
        assert "401" in one_error_line(run_cli("export", "--db", server.url, "-o", str(out)))
        assert out.read_bytes() == whole and list(tmp_path.glob("out.jsonl*")) == [out]
    # An empty store's dump is still its header alone.
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    async with open_store(empty):
        pass
    assert ok(run_cli("export", "--db", empty)).startswith(b'{"format":"perhap-dump"')


async def test_a_whole_store_transfer_with_a_token_of_one_realm_is_refused(tmp_path: Path, tokens: str) -> None:
    """GET /keys lists only a one-realm token's realm: a whole-store export (exit 0) or copy (its
    verification passed) with such a token held that realm alone, every other left out in silence."""
    url = await filled(tmp_path, "a.db")  # realm0 and realm1
    realm1 = ok(run_cli("export", "--db", url, "realm1"))
    one, _ = add_token(tokens, "realm1", "admin")
    out = tmp_path / "out.jsonl"
    with served(url, tokens) as server:
        line = one_error_line(run_cli("export", "--db", server.url, "-o", str(out), "--token", one), one)
        assert "reads one realm ('realm1')" in line and "export that realm by name" in line, line
        assert not out.exists()
        copy = tmp_path / "copy.db"
        line = one_error_line(run_cli("copy", "--from", server.url, "--from-token", one, "--to", f"sqlite:///{copy}"))
        assert "reads one realm ('realm1')" in line and "token for every realm" in line, line
        # The realm by name is exported whole, as from the store itself.
        assert ok(run_cli("export", "--db", server.url, "realm1", "--token", one)) == realm1
    # Refused before the destination was opened: no new, empty store left behind.
    assert not list(tmp_path.glob("copy.db*"))


async def test_a_write_token_may_not_import_and_writes_nothing(tmp_path: Path, tokens: str) -> None:
    """An import keeps each event's own timestamp, which under --auth only an admin token may give
    (a writer does not backdate): a write token's import is a 403, and nothing is stored."""
    source = await filled(tmp_path, "a.db")
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(ok(run_cli("export", "--db", source)))
    writer, _ = add_token(tokens, "*", "write")
    reader, _ = add_token(tokens, "*", "read")
    with served(f"sqlite:///{tmp_path / 'b.db'}", tokens) as server:
        line = one_error_line(run_cli("import", "--db", server.url, str(dump), "--token", writer), writer)
        assert "403" in line and "needs an admin token" in line and "timestamp" in line, line
        exported = ok(run_cli("export", "--db", server.url, "--token", reader))
    assert exported.count(b"\n") == 2  # the header and the end line only


async def test_import_into_a_server_with_an_admin_token(tmp_path: Path, tokens: str) -> None:
    source = await filled(tmp_path, "a.db")
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(ok(run_cli("export", "--db", source)))
    writer, _ = add_token(tokens, "*", "admin")
    with served(f"sqlite:///{tmp_path / 'b.db'}", tokens) as server:
        out = ok(run_cli("import", "--db", server.url, str(dump), "--token", writer))
        assert out.startswith(b"imported 58 events into 2 realms")
        again = ok(run_cli("import", "--db", server.url, str(dump), env={"PERHAP_TOKEN": writer}))
        assert b"(58 were there already)" in again
        exported = ok(run_cli("export", "--db", server.url, "--token", writer))
    assert strip_positions(exported) == strip_positions(dump.read_bytes())


async def test_copy_between_servers_with_a_token_per_side(tmp_path: Path, tokens: str) -> None:
    source = await filled(tmp_path, "a.db")
    other = await filled(tmp_path, "c.db")
    reader, _ = add_token(tokens, "*", "read")
    writer, _ = add_token(tokens, "*", "admin")
    with served(source, tokens) as a, served(f"sqlite:///{tmp_path / 'b.db'}", tokens) as b:
        out = ok(run_cli("copy", "--from", a.url, "--from-token", reader, "--to", b.url, "--to-token", writer))
        assert b"copy verified: 2 realms, 58 events" in out
        # A store file into a server: the same realms again, so the copy stops (not a copy of it).
        r = run_cli("copy", "--from", other, "--to", b.url, env={"PERHAP_TO_TOKEN": writer})
        assert "not a copy of this source" in one_error_line(r, writer)


def test_every_transfer_command_offers_a_token() -> None:
    for command, options in (("export", ["--token"]), ("import", ["--token"]),
                             ("copy", ["--from-token", "--to-token"])):
        text = ok(run_cli(command, "--help")).decode()
        for option in options:
            assert option in text, (command, option)


async def test_a_batch_item_keeps_its_timestamp_given_by_an_admin_token(tmp_path: Path, tokens: str) -> None:
    """The HTTP side of an import: a batch (or multi-entity) item may carry its own timestamp, kept
    instead of the commit time; under --auth only an admin token may give one."""
    import httpx
    writer, _ = add_token(tokens, "*", "write")
    admin, _ = add_token(tokens, "*", "admin")
    item = {"type": "t", "event": 1, "timestamp": "2020-01-02T03:04:05.678901+01:00"}
    with served(f"sqlite:///{tmp_path / 'b.db'}", tokens) as server, httpx.Client(base_url=server.url) as http:
        def post(path: str, body: object, token: str) -> httpx.Response:
            return http.post(path, json=body, headers={"authorization": f"Bearer {token}"})
        assert post("/r/d/e", {"events": [item]}, writer).status_code == 403
        assert post("/r/d", {"events": [{**item, "entity": "e"}]}, writer).status_code == 403
        assert post("/r/d/e", {"events": [{"type": "t", "event": 0}]}, writer).status_code == 201  # no timestamp
        r = post("/r/d/e", {"events": [item]}, admin)
        assert r.status_code == 201 and r.json()["events"][0]["timestamp"] == "2020-01-02T02:04:05.678901Z"
        r = post("/r/d", {"events": [{**item, "entity": "f"}]}, admin)
        assert r.status_code == 201 and r.json()["events"][0]["timestamp"] == "2020-01-02T02:04:05.678901Z"
        assert post("/r/d/e", {"events": [{**item, "timestamp": "yesterday"}]}, admin).status_code == 400
        events = http.get("/r/d/e", headers={"authorization": f"Bearer {admin}"}).json()["events"]
    assert [e["timestamp"] for e in events][1:] == ["2020-01-02T02:04:05.678901Z"]


async def test_events_nested_to_the_limit_copy_and_an_event_the_destination_refuses_is_named(
        tmp_path: Path) -> None:
    """An event as deep as --max-depth lets a single append store it copies to a server of the
    same setting (batches were refused: the batch's list and item counted). One that a server of a
    lower setting refuses stops the copy naming it, with every event before it copied."""
    deep: object = 1
    for _ in range(62):
        deep = [deep]  # level 64 of a single append's body {"event": ...}: the default limit
    source = f"sqlite:///{tmp_path / 'deep.db'}"
    async with open_store(source) as store:
        for v in range(5):
            await store.append("dp", "d", "e", "t", {"v": v})
        await store.append("dp", "d", "e", "t", deep)
        await store.append("dp", "d", "e", "t", {"v": 6})
    with ThreadServer(f"sqlite:///{tmp_path / 'same.db'}") as server:
        copied = ok(run_cli("copy", "--from", source, "--to", server.url))
        assert b"copy verified: 1 realm, 7 events" in copied, copied
    with ThreadServer(f"sqlite:///{tmp_path / 'lower.db'}", max_depth=32) as server:
        r = run_cli("copy", "--from", source, "--to", server.url)
        line = one_error_line(r)
        assert r.returncode == 1 and "dp/d/e" in line and "refused by the destination" in line, line
        async with open_store(f"sqlite:///{tmp_path / 'lower.db'}") as store:
            held = (await store.read(Scope("dp", "d", "e"))).events
        assert [e.event for e in held] == [{"v": v} for v in range(5)]


async def test_an_entity_larger_than_the_servers_body_limit_is_imported_in_smaller_batches(
        tmp_path: Path, tokens: str) -> None:
    """A batch the server refuses as too large (413: --max-body, --max-batch) goes again in halves,
    each at its own versions: what a server took one event at a time can be moved to one like it.
    An event larger than the server takes stops the import, in words."""
    source = f"sqlite:///{tmp_path / 'big.db'}"
    async with open_store(source) as store:
        for v in range(60):
            await store.append("bg", "d", "e", "t", {"v": v, "pad": "x" * 5000})
        await store.append("bg", "d", "other", "t", {"small": True})
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(ok(run_cli("export", "--db", source)))
    admin, _ = add_token(tokens, "*", "admin")
    dest = f"sqlite:///{tmp_path / 'dest.db'}"
    # 60 events of 5 kB in one run of the entity: about 300 kB, past the 100 kB the server takes.
    with ThreadServer(dest, auth=Authenticator(tokens, recheck=0), max_body=100_000, max_batch=25) as server:
        out = ok(run_cli("import", "--db", server.url, str(dump), "--token", admin))
        assert out.startswith(b"imported 61 events into 1 realm")
        exported = ok(run_cli("export", "--db", server.url, "--token", admin))
        assert strip_positions(exported) == strip_positions(dump.read_bytes())
    with ThreadServer(f"sqlite:///{tmp_path / 'dest2.db'}", auth=Authenticator(tokens, recheck=0),
                      max_body=100_000, max_batch=25) as server:
        copied = ok(run_cli("copy", "--from", source, "--to", server.url, "--to-token", admin))
        assert b"copy verified: 1 realm, 61 events" in copied, copied
    huge = tmp_path / "huge.jsonl"
    async with open_store(f"sqlite:///{tmp_path / 'huge.db'}") as store:
        await store.append("hg", "d", "e", "t", {"pad": "x" * 200_000})
    huge.write_bytes(ok(run_cli("export", "--db", f"sqlite:///{tmp_path / 'huge.db'}")))
    with ThreadServer(f"sqlite:///{tmp_path / 'small.db'}", max_body=100_000) as server:
        r = run_cli("import", "--db", server.url, str(huge))
        assert "is larger than the destination takes" in one_error_line(r)
