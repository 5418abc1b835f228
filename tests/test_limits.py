"""Limits answer with clear problem+json: body, batch, nesting depth, streams, headers; and the
listener's options: header and body timeouts, connections, CORS, TLS."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import json
import logging
import re
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from perhap import Store
from perhap.app import PerhapApp
from perhap.auth import Authenticator, add_token
from perhap.limits import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from perhap.server import _config, limited_protocol
from tests.servers import ProcessServer, ThreadServer, free_port


def problem(r: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["detail"]
    if slug:
        assert body["type"] == f"urn:perhap:problem:{slug}"
    return body  # type: ignore[no-any-return]


async def in_process(app: PerhapApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_body_batch_and_depth_limits(store: Store, realm: str) -> None:
    app = PerhapApp(store, max_body=2000, max_batch=3, max_depth=5)
    async with await in_process(app) as c:
        assert problem(await c.post(f"/{realm}/d/e/t", json={"event": "x" * 3000}), 413)["max_body"] == 2000
        batch = {"events": [{"type": "t", "event": i} for i in range(4)]}
        assert problem(await c.post(f"/{realm}/d/e", json=batch), 413, "batch-too-large")["max_batch"] == 3
        batch["events"] = batch["events"][:3]
        assert (await c.post(f"/{realm}/d/e", json=batch)).status_code == 201
        ok = {"event": {"a": [{"b": [1]}]}}  # depth 5, counting the body object
        assert (await c.post(f"/{realm}/d/e/t", json=ok)).status_code == 201
        deep = {"event": {"a": [{"b": [[1]]}]}}  # depth 6
        assert problem(await c.post(f"/{realm}/d/e/t", json=deep), 400, "too-deep")["max_depth"] == 5
        # brackets inside strings do not count
        assert (await c.post(f"/{realm}/d/e/t", json={"event": "[[[[[[[[{{{{{{"})).status_code == 201
        assert len((await c.get(f"/{realm}/d/e")).json()["events"]) == 5


async def test_an_event_one_append_route_takes_the_others_take_too(store: Store, realm: str) -> None:
    """--max-depth counts an event as a single append's body holds it: the list and item a batch
    puts around each event are not counted. Else an event nested to the limit could not be sent
    in a batch, and ``perhap copy`` (which sends batches) failed between servers of one setting."""
    async with await in_process(PerhapApp(store, max_depth=5)) as c:
        deepest: Any = {"a": [{"b": [1]}]}  # level 5 of a single append's body
        deeper: Any = {"a": [{"b": [[1]]}]}
        for event, taken in ((deepest, True), (deeper, False)):
            answers = [await c.post(f"/{realm}/d/one/t", json={"event": event, "meta": event}),
                       await c.post(f"/{realm}/d/batch", json={"events": [{"type": "t", "event": event,
                                                                            "meta": event}]})]
            if store.supports_multi_entity:
                answers.append(await c.post(f"/{realm}/d", json={"events": [
                    {"entity": "many", "type": "t", "event": event, "meta": event}]}))
            for r in answers:
                if taken:
                    assert r.status_code == 201, r.text
                else:
                    body = problem(r, 400, "too-deep")
                    assert body["max_depth"] == 5 and "limit of 5 levels" in body["detail"]
        assert [e["event"] for e in (await c.get(f"/{realm}/d/batch")).json()["events"]] == [deepest]


async def test_a_body_that_is_not_json_says_why(store: Store, realm: str) -> None:
    """Bytes that are not UTF-8 are named so (the parser calls every bad byte a surrogate), and
    a compressed body is a 415 that says perhap takes none: neither is stored."""
    async with await in_process(PerhapApp(store)) as c:
        for raw in (b'{"event": "caf\xe9"}', b'{"event": "\xc0\xaf"}', '{"event": 1}'.encode("utf-16")):
            detail = problem(await c.post(f"/{realm}/d/e/t", content=raw), 400, "invalid-input")["detail"]
            assert "not valid UTF-8" in detail and "surrogate" not in detail, detail
        lone = b'{"event": "\xed\xa0\x80"}'  # an encoded surrogate: not UTF-8 either
        assert "not valid UTF-8" in problem(await c.post(f"/{realm}/d/e/t", content=lone), 400)["detail"]
        packed = gzip.compress(b'{"event": 1}')
        # A coding named is refused even on bytes that parse as they are (a proxy's label, say).
        for route, headers, body in ((f"/{realm}/d/e/t", {"content-encoding": "gzip"}, packed),
                                     (f"/{realm}/d/e", {"content-encoding": "br"}, packed),
                                     (f"/{realm}/d/e/t", {"content-encoding": "gzip"}, b'{"event": 1}'),
                                     (f"/{realm}/d", {"content-encoding": "Deflate"},
                                      b'{"events": [{"entity": "e", "type": "t", "event": 1}]}')):
            r = await c.post(route, content=body, headers=headers)
            assert "Content-Encoding" in problem(r, 415, "unsupported-media-type")["detail"]
            assert r.headers["accept-encoding"] == "identity"
        # Two header lines are one list (RFC 9110 5.3): the second one's coding was not looked at.
        for lines in ([("content-encoding", "identity"), ("content-encoding", "gzip")],
                      [("content-encoding", "identity, gzip")]):
            r = await c.post(f"/{realm}/d/e/t", content=b'{"event": 1}', headers=lines)
            assert "gzip" in problem(r, 415, "unsupported-media-type")["detail"], lines
        r = await c.post(f"/{realm}/d/e/t", content=b'{"event": 1}', headers={"content-encoding": "identity"})
        assert r.status_code == 201, r.text
        assert problem(await c.post(f"/{realm}/d/e/t", content=b"{nope"), 400)["detail"].startswith(
            "the body is not valid JSON")
        assert [e["event"] for e in (await c.get(f"/{realm}/d/e")).json()["events"]] == [1]  # identity's alone


async def test_default_depth_limit(store: Store, realm: str) -> None:
    async with await in_process(PerhapApp(store)) as c:
        nested: Any = 1
        for _ in range(62):
            nested = [nested]
        assert (await c.post(f"/{realm}/d/e/t", json={"event": nested})).status_code == 201
        body = b'{"event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        problem(await c.post(f"/{realm}/d/e/t", content=body), 400)
        # Valid JSON nested past the parser's own limit (1,024) is too deep, not "not valid JSON",
        # on either parser (the exact one takes bodies with integers beyond 64 bits).
        for leaf in (b"1", b"1" * 30):
            body = b'{"event": ' + b"[" * 2000 + leaf + b"]" * 2000 + b"}"
            assert problem(await c.post(f"/{realm}/d/e/t", content=body), 400, "too-deep")["max_depth"] == 64
    # A server that allows more than the parser takes says so plainly: the parser's limit is not its own.
    async with await in_process(PerhapApp(store, max_depth=5000)) as c:
        body = b'{"event": ' + b"[" * 2000 + b"]" * 2000 + b"}"
        assert "not valid JSON" in problem(await c.post(f"/{realm}/d/e/t", content=body), 400)["detail"]
    async with await in_process(PerhapApp(store)) as c:
        assert (await c.get(f"/{realm}/d/e")).json()["events"][0]["event"] == nested


def test_a_server_takes_bodies_as_deep_as_the_parser_does(tmp_path: Path) -> None:
    """With --max-depth 1024, bodies nested up to the JSON parser's 1,024 levels are taken, on the
    fast parser and the exact one (integers beyond 64 bits): the stdlib's recursed against the
    interpreter's frame limit and refused them from 977 levels as "not valid JSON"."""
    def body(depth: int, leaf: bytes) -> bytes:  # the body object is level 1
        return b'{"event": ' + b"[" * (depth - 1) + leaf + b"]" * (depth - 1) + b"}"

    with ProcessServer(f"sqlite:///{tmp_path}/x.db", None, "--max-depth", "1024") as server:
        for leaf in (b"1", b"1" * 30):
            for depth in (977, 1000, 1024):
                r = httpx.post(f"{server.url}/deep/d/e{depth}/t", content=body(depth, leaf), timeout=30)
                assert r.status_code == 201, (depth, leaf, r.text)
                stored = httpx.get(f"{server.url}/deep/d/e{depth}", timeout=30)
                assert stored.status_code == 200 and stored.content.count(b"[") >= depth - 1, stored.text[:200]
            r = httpx.post(f"{server.url}/deep/d/over/t", content=body(1025, leaf), timeout=30)
            assert r.status_code == 400, r.text  # past the parser's own limit


async def test_open_stream_limits(store_url: str, tmp_path: Path, realm: str) -> None:
    tokens = str(tmp_path / "tokens.json")
    a, _ = add_token(tokens, "*", "read")
    b, _ = add_token(tokens, "*", "read")
    with ThreadServer(store_url, heartbeat=0.2, max_streams=3, max_streams_per_token=2,
                      auth=Authenticator(tokens, recheck=0)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            def headers(t: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {t}", "Accept": "text/event-stream"}

            async def hold(t: str, opened: asyncio.Event, stop: asyncio.Event) -> None:
                async with c.stream("GET", f"/{realm}", headers=headers(t)) as s:
                    assert s.status_code == 200
                    opened.set()
                    await stop.wait()

            async def counted(n: int) -> None:
                """Until the server counts ``n`` open streams (it does just after the client sees 200)."""
                for _ in range(200):
                    if server.app.open_streams == n:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"the server counts {server.app.open_streams} open streams, not {n}")

            stop = asyncio.Event()
            holders = []
            for t in (a, a, b):
                opened = asyncio.Event()
                holders.append(asyncio.ensure_future(hold(t, opened, stop)))
                await asyncio.wait_for(opened.wait(), 10)
                await counted(len(holders))
            # a holds 2 (its limit); the server holds 3 (its limit)
            body = problem(await c.get(f"/{realm}", headers=headers(a)), 429, "too-many-streams")
            assert "max_streams" in body or "max_streams_per_token" in body
            problem(await c.get(f"/{realm}", headers=headers(b)), 429, "too-many-streams")
            assert (await c.get(f"/{realm}", headers={"Authorization": f"Bearer {b}"})).status_code == 200
            stop.set()
            await asyncio.gather(*holders)
            await counted(0)
            assert server.app.stream_limits.by_token == {}


def _raw(port: int, request: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(request)
        conn.settimeout(timeout)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_huge_headers_are_431_and_slow_headers_are_cut(sqlite_url: str) -> None:
    server = ThreadServer(sqlite_url)
    server.server.config.http = limited_protocol(max_header=8192, header_timeout=1.0)
    with server:
        big = b"GET /_health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        reply = _raw(server.port, big)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431") and b"application/problem+json" in head
        assert b'"status":431' in body
        long_url = b"GET /" + b"r" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert _raw(server.port, long_url).startswith(b"HTTP/1.1 431")
        ok = _raw(server.port, b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert _raw(server.port, b"GET /_health HTTP/1.1\r\nHost: x\r\n", timeout=10) == b""
        assert time.monotonic() - start < 5  # closed by the 1 s header deadline


def test_a_content_length_past_64_bits_is_413(sqlite_url: str) -> None:
    """The parser refuses a Content-Length it cannot hold: that is a body over the limit (413
    problem+json, with ``max_body`` like every 413 of the body's size), not a malformed request;
    a malformed length is still a 400."""
    server = ThreadServer(sqlite_url)
    server.server.config.http = _config(server.app, "127.0.0.1", server.port, "warning").http  # as serve sets it
    with server:
        huge = b"POST /r/d/e/t HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}"
        head, _, body = _raw(server.port, huge).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"application/problem+json" in head, head
        assert b'"status":413' in body and b"--max-body" in body
        assert json.loads(body)["max_body"] == server.app.max_body
        bad = b"POST /r/d/e/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n{}"
        assert _raw(server.port, bad).startswith(b"HTTP/1.1 400")


def test_an_http_1_0_stream_runs_to_the_close_without_chunked_encoding(sqlite_url: str) -> None:
    """HTTP/1.0 has no chunked encoding, and a server must not send Transfer-Encoding to a 1.0
    request; uvicorn chunked every answer of no known length whatever the version, so an HTTP/1.0
    client (curl --http1.0, a proxy speaking 1.0 upstream) read chunk sizes inside a stream's
    events. Its stream now runs to the close; answers with a length and 1.1 streams are as before."""
    server = ThreadServer(sqlite_url, heartbeat=0.5)
    server.server.config.http = _config(server.app, "127.0.0.1", server.port, "warning").http  # as serve sets it
    with server:
        first = httpx.post(f"{server.url}/v/d/e/t", json={"event": {"n": 1}}).json()["event_id"]
        old = _until(server.port, b"GET /v/d/e HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n", b"\n\n", 2)
        head, _, body = old.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower(), head
        assert b"connection: close" in head.lower()
        assert body.startswith(b": stream open\n\nid: " + first.encode() + b"\n"), body[:200]
        assert b"\r\n" not in body  # no chunk sizes
        plain = _raw(server.port, b"GET /v/d/e HTTP/1.0\r\n\r\n", timeout=1.5)
        assert b"content-length: " in plain.lower() and json.loads(plain.partition(b"\r\n\r\n")[2])["events"]
        new = _until(server.port, b"GET /v/d/e HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
                     b": stream open")
        assert b"transfer-encoding: chunked" in new.partition(b"\r\n\r\n")[0].lower()


def _until(port: int, request: bytes, mark: bytes, count: int = 1) -> bytes:
    """A connection's answer up to ``count`` times ``mark`` in its body (a stream never ends by
    itself), or what came in 10 s."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(request)
        conn.settimeout(10)
        got = b""
        while True:
            _, head_ended, body = got.partition(b"\r\n\r\n")
            if head_ended and body.count(mark) >= count:
                return got
            chunk = conn.recv(65536)
            if not chunk:
                return got
            got += chunk


def test_the_header_limit_is_the_whole_head_to_the_byte(sqlite_url: str) -> None:
    """--max-header counts the request line and headers as sent, blank line included: a head of
    exactly the limit is served, one byte more is a 431 (GET and POST alike)."""
    server = ThreadServer(sqlite_url)
    server.server.config.http = limited_protocol(max_header=2000)
    with server:
        for method, tail in ((b"GET /_health", b""), (b"POST /_nowhere", b"")):
            def head(size: int, method: bytes = method) -> bytes:
                start = method + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
                return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
            assert len(head(2000)) == 2000
            assert not _raw(server.port, head(2000) + tail).startswith(b"HTTP/1.1 431"), method
            assert _raw(server.port, head(2001) + tail).startswith(b"HTTP/1.1 431"), method



def test_what_the_parser_drops_counts_towards_the_header_limit(sqlite_url: str) -> None:
    """Blank lines before a request and the spaces around a header's value are head too: the
    parser drops them before its callbacks count, so a client could send megabytes of them under
    --max-header. A read that ends inside a head counts whole."""
    server = ThreadServer(sqlite_url)
    server.server.config.http = limited_protocol(max_header=8192)
    with server:
        for first, rest in ((b"GET /_health HTTP/1.1\r\nHost: x\r\nX-Pad:" + b" " * 20_000, b"a\r\n\r\n"),
                            (b"GET /_health HTTP/1.1\r\nHost: x\r\nX-Pad:" + b"\t" * 20_000, b"a\r\n\r\n"),
                            (b"\r\n" * 10_000, b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")):
            with socket.create_connection(("127.0.0.1", server.port)) as conn:
                conn.sendall(first)  # a read then ends inside the head: the answer comes before the rest
                conn.settimeout(5)
                try:
                    reply = conn.recv(65536)
                except TimeoutError:  # (the head not refused yet: its end, then whatever comes)
                    conn.sendall(rest)
                    reply = conn.recv(65536)
                assert reply.startswith(b"HTTP/1.1 431"), (first[:40], reply[:40])
        # A head under the limit is served, whatever its reads.
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(b"\r\n" * 100 + b"GET /_health HTTP/1.1\r\nHost: x\r\nX-Pad:" + b" " * 4000)
            time.sleep(0.2)
            conn.sendall(b"a\r\nConnection: close\r\n\r\n")
            conn.settimeout(5)
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")


def test_spaces_the_parser_drops_count_when_the_head_ends_in_the_same_read(sqlite_url: str) -> None:
    """The leading spaces of a header's value, sent with the end of the head in one read (one
    write, or the last of several), count to the byte: exactly the limit is served, one more is
    a 431, however few of the bytes the parser's callbacks see."""
    server = ThreadServer(sqlite_url)
    server.server.config.http = limited_protocol(max_header=4096)

    def head(size: int, blank_lines: bytes = b"") -> bytes:
        start = blank_lines + b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
        return start + b" " * (size - len(start) - 5) + b"a\r\n\r\n"

    with server:
        assert len(head(4096)) == 4096
        assert _raw(server.port, head(4096)).startswith(b"HTTP/1.1 200")
        assert _raw(server.port, head(4097)).startswith(b"HTTP/1.1 431")
        assert _raw(server.port, head(60_000)).startswith(b"HTTP/1.1 431")
        assert _raw(server.port, head(60_000, b"\r\n" * 3)).startswith(b"HTTP/1.1 431")
        for cut in (100, 4094, 4095):  # in two reads, the blank line that ends it split or not
            with socket.create_connection(("127.0.0.1", server.port)) as conn:
                whole = head(4097)
                conn.sendall(whole[:cut])
                time.sleep(0.2)
                conn.sendall(whole[cut:])
                conn.settimeout(5)
                assert conn.recv(65536).startswith(b"HTTP/1.1 431"), cut
            assert _raw(server.port, head(4096)).startswith(b"HTTP/1.1 200")


def test_blank_lines_between_requests_do_not_hold_a_connection(sqlite_url: str) -> None:
    """Any byte cancels uvicorn's keep-alive timer, and blank lines begin no request: the header
    deadline runs from them, so a client trickling them closes as an idle one does."""
    server = ThreadServer(sqlite_url)
    server.server.config.http = limited_protocol(header_timeout=1.0)
    with server, socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.settimeout(5)
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        conn.settimeout(0.3)
        closed = False
        deadline = time.monotonic() + 20  # a generous bound: the header deadline is 1 s
        while not closed and time.monotonic() < deadline:
            try:
                conn.sendall(b"\r\n")
                closed = conn.recv(100) == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
        assert closed


def test_a_request_that_is_not_http_is_a_400_problem(sqlite_url: str) -> None:
    """What the HTTP parser itself refuses (an unknown method, a Content-Length that is not a
    number, bytes that are no request line) is answered like any error of the API: 400
    problem+json, and the connection is closed."""
    server = ThreadServer(sqlite_url)
    server.server.config.http = limited_protocol()
    with server:
        for request in (b"FOO /_health HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"POST /r/d/e/t HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
                        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n"):
            head, _, body = _raw(server.port, request).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head, (request, head)
            assert b'"status":400' in body and b"not valid HTTP" in body, body
        # A path typed with a non-ASCII letter (curl sends it as typed) is told what to send.
        head, _, body = _raw(server.port, "POST /café/d/e/t HTTP/1.1\r\nHost: x\r\n\r\n".encode()).partition(
            b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"must be percent-encoded" in body, body


def test_a_pipelined_request_that_is_not_http_leaves_the_answers_owed_before_it(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A valid append, then bytes that are no request, in one packet: the parser's refusal was
    written at once and the connection closed, so the append was stored and its client read a 400
    (a client retrying without an id stores it twice), and the access log said 201. Now the 201
    (and any answer owed before the bad request) goes out, then the bad request's own refusal
    (it went unsent for a while: the client never learnt why the connection closed), then the
    connection closes."""
    caplog.set_level(logging.INFO, "perhap.access")
    server = ThreadServer(sqlite_url, access_log=True)
    server.server.config.http = limited_protocol()
    post = b'POST /pipe/d/e/t HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{"event": 1}'
    health = b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n"
    with server:
        for request, answers in ((post + b"GARBAGE\r\n\r\n", [b"HTTP/1.1 201", b"HTTP/1.1 400"]),
                                 (health + health + b"GET /x HTTP/1.1\r\nContent-Length: zz\r\n\r\n" + health,
                                  [b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 400"]),
                                 (post + b"X" * 70_000,  # (no method: not HTTP)
                                  [b"HTTP/1.1 201", b"HTTP/1.1 400"]),
                                 (post + b"GET /" + b"a" * 70_000,  # (a head over --max-header)
                                  [b"HTTP/1.1 201", b"HTTP/1.1 431"])):
            reply = _raw(server.port, request)
            statuses = re.findall(rb"HTTP/1\.1 \d{3}", reply)
            assert statuses == answers, reply
            assert reply.endswith(b"}\n") and b"application/problem+json" in reply.rpartition(b"HTTP/1.1 ")[2], reply
        # A body that is not HTTP (a bad chunk size): its 400 is what went out, and what is logged.
        chunked = b"POST /pipe/d/e/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n"
        assert _raw(server.port, chunked).startswith(b"HTTP/1.1 400")
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if getattr(r, "access", {}).get("status") == 400]:
            assert time.monotonic() < deadline, "the refused body was not logged"
            time.sleep(0.05)
        stored = httpx.get(f"http://127.0.0.1:{server.port}/pipe/d/e").json()["events"]
    assert len(stored) == 3  # the three appends answered 201, and nothing else
    logged = [r.access["status"] for r in caplog.records if hasattr(r, "access")]  # type: ignore[attr-defined]
    assert sorted(s for s in logged if s != 200) == [201, 201, 201, 400], logged


def test_a_client_that_half_closes_after_pipelined_appends_gets_no_500(tmp_path: Path) -> None:
    """Five appends in one packet, then shutdown(SHUT_WR), as `perhap serve` runs (uvloop): uvicorn
    closes the connection at the EOF, before the requests running learn of it, and the append
    running wrote to the closed transport. uvloop raised, which was logged as a bug with its
    traceback and counted a 500 for an event that was stored. Now its answer goes nowhere, as for
    any client that left: no error in the log, and the append is logged with its own status."""
    body = b'{"event": 1}'
    post = b"POST /hc/d/e/t HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with ProcessServer(f"sqlite:///{tmp_path}/x.db", None, "--log-format", "json") as server:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", server.port)) as conn:
                conn.sendall(post * 5)
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(5)
                while conn.recv(65536):
                    pass
        stored = httpx.get(f"{server.url}/hc/d/e").json()["events"]
        code, out = server.terminate()
    assert stored and code == 0
    assert "Traceback" not in out and '"status":500' not in out and '"level":"ERROR"' not in out, out
    assert '"status":201' in out, out


def _write_locked(path: Path, seconds: float) -> threading.Timer:
    """Hold the SQLite file's write lock from outside for ``seconds`` (a slow disk, a busy store):
    the server's appends wait for it meanwhile."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(seconds, lambda: (db.execute("COMMIT"), db.close()))
    timer.start()
    return timer


def test_pipelined_answers_owed_when_the_client_resets_or_stalls_go_nowhere_or_first(tmp_path: Path) -> None:
    """Two appends pipelined, the first slow to store: (1) the client resets the connection meanwhile.
    uvicorn told only the last request parsed, so the first one's 201 was written to the closed
    transport: a traceback in the log and a 500 counted for a stored event. (2) The second's body
    never ends: its 408 was written at once, ahead of the first's 201, and the connection closed
    (a client matching answers in order took the 408 for its append's, and a retry without an id
    stores it twice). Now the first's answer goes nowhere in (1), and comes first in (2). (3) The
    same with a head that never ends (the header timeout): the 201 goes out, then the close."""
    db = tmp_path / "x.db"
    with ProcessServer(f"sqlite:///{db}", None, "--log-format", "json", "--body-timeout", "1",
                       "--header-timeout", "1") as server:
        def append(entity: str) -> bytes:
            return b'POST /p/d/%s/t HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{"event": 1}' % entity.encode()

        httpx.post(f"{server.url}/p/d/warm/t", json={"event": 0})
        _write_locked(db, 1.0)
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(append("reset") * 2)
            time.sleep(0.3)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(1.5)
        for entity, tail in (("stall", append("stall")[:-4]), ("head", b"POST /p/d/head/t HTTP/1.1\r\nHo")):
            _write_locked(db, 2.0)  # (past both timeouts)
            reply = _raw(server.port, append(entity) + tail, timeout=10)
            statuses = re.findall(rb"HTTP/1\.1 \d{3}", reply)
            assert statuses == ([b"HTTP/1.1 201", b"HTTP/1.1 408"] if entity == "stall" else [b"HTTP/1.1 201"]), reply
        # (4) Two answers owed before the stalled one, and its body's end arriving late with another
        # append behind it: the first answer out let uvicorn read on, and the late requests ran
        # before the 408 (201 201 201 408: a 201 in the stalled one's place, the last one stored).
        _write_locked(db, 3.0)
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(append("first"))
            time.sleep(0.1)
            conn.sendall(append("second") + append("late")[:-6])
            time.sleep(1.5)
            conn.sendall(append("late")[-6:] + append("after"))
            conn.settimeout(10)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        assert re.findall(rb"HTTP/1\.1 \d{3}", reply) == [b"HTTP/1.1 201", b"HTTP/1.1 201", b"HTTP/1.1 408"], reply
        time.sleep(0.5)
        entities = ("reset", "stall", "head", "first", "second", "late", "after")
        stored = {e: len(httpx.get(f"{server.url}/p/d/{e}").json()["events"]) for e in entities}
        code, out = server.terminate()
    # (the reset's second never started; nothing after a refused request runs)
    assert stored == {"reset": 1, "stall": 1, "head": 1, "first": 1, "second": 1, "late": 0, "after": 0}, stored
    assert code == 0 and "Traceback" not in out and '"status":500' not in out and '"level":"ERROR"' not in out, out


def test_a_websocket_upgrade_is_a_plain_request(tmp_path: Path) -> None:
    """perhap has no WebSocket route. uvicorn took an upgrade request for a handshake the app never
    answered: a plain-text 500 and an error in the log, before any token was checked (and a bad
    handshake a plain-text 400), none of it in the access log. Now it is an HTTP request as any:
    its token is checked first, and the route answers."""
    upgrade = (b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    auth = tmp_path / "tokens.json"
    add_token(str(auth), "shop", "read")
    with ProcessServer(f"sqlite:///{tmp_path}/x.db", None, "--auth", str(auth), "--log-format", "json") as server:
        for path, status in ((b"/_health", b"200"), (b"/shop/d", b"401"), (b"/_health/x", b"401")):
            with socket.create_connection(("127.0.0.1", server.port)) as conn:
                conn.sendall(b"GET " + path + b" HTTP/1.1\r\n" + upgrade)
                conn.settimeout(30)  # (a connection kept open would raise TimeoutError here)
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 " + status), reply
            assert b"application/" in reply.split(b"\r\n\r\n", 1)[0], reply  # JSON or problem+json
            # ... and the connection closed after it (the parser reads nothing after such a head):
            # the server ended the reads above, and said so
            assert b"connection: close" in reply.lower(), reply
        # With a body (curl --http2 on http:// sends Upgrade: h2c): refused in words, at once. The app
        # waited for a body the parser never passed on, then said the body was empty.
        body = b'{"event": 1}'
        h2c = (b"POST /_health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = _raw(server.port, h2c, timeout=10)
        assert reply.startswith(b"HTTP/1.1 400") and b"switch protocols (Upgrade)" in reply, reply
        code, out = server.terminate()
    assert code == 0 and '"level":"ERROR"' not in out and "Traceback" not in out, out
    assert "Unsupported upgrade" not in out and "WebSocket library" not in out, out  # (uvicorn's warnings)


def test_a_body_too_slow_is_408(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Headers in time, then a body that trickles or stops: 408 problem+json within the body
    timeout (plus a margin), and the connection is closed; timely bodies are untouched. The
    access log gives the 408 and the size of its body, not the app's answer that never went out."""
    caplog.set_level(logging.INFO, "perhap.access")
    server = ThreadServer(sqlite_url, access_log=True)
    server.server.config.http = _config(server.app, "127.0.0.1", server.port, "warning",
                                        {"body_timeout": 1.0}).http
    with server:
        head = b"POST /r/d/e/t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        ok = _raw(server.port, head + b"Content-Length: 12\r\nConnection: close\r\n\r\n{\"event\": 1}")
        assert ok.startswith(b"HTTP/1.1 201"), ok
        for sent in (b"", b'{"event": '):  # no body at all, and half a body
            start = time.monotonic()
            reply = _raw(server.port, head + b"Content-Length: 100\r\n\r\n" + sent, timeout=20)
            assert time.monotonic() - start < 1.0 + 5
            status, _, body = reply.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 408") and b"connection: close" in status, reply
            problem = httpx.Response(408, headers={"content-type": "application/problem+json"}, content=body)
            assert problem.json()["type"] == "urn:perhap:problem:body-timeout"
            assert problem.json()["body_timeout"] == 1.0
        # A body trickled a byte at a time is cut at the deadline too, however steady the trickle.
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(head + b"Content-Length: 1000\r\n\r\n")
            conn.settimeout(0.2)
            start, reply = time.monotonic(), b""
            while not reply and time.monotonic() - start < 1.0 + 5:
                try:
                    conn.sendall(b" ")
                    reply = conn.recv(65536)
                except TimeoutError:
                    pass
            assert reply.startswith(b"HTTP/1.1 408"), reply
        # The app saw the request end as the listener answered it.
        deadline = time.monotonic() + 10
        while b'perhap_limit_refusals_total{status="408"} 3.0' not in _raw(
                server.port, b"GET /_metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
            assert time.monotonic() < deadline, "the 408s were not counted"
            time.sleep(0.05)
    logged = [r.access for r in caplog.records if hasattr(r, "access")]  # type: ignore[attr-defined]
    assert [a["bytes"] for a in logged if a["status"] == 408] == [len(body)] * 3


def test_listener_defaults() -> None:
    """The body timeout and the connection limit have defaults, used when an option is None."""
    app = PerhapApp(store_url="sqlite:///unused.db")
    for net in ({}, {"max_connections": None, "body_timeout": None}):
        config = _config(app, "127.0.0.1", 1, "warning", net)
        assert config.limit_concurrency == DEFAULT_MAX_CONNECTIONS + 1
    assert _config(app, "127.0.0.1", 1, "warning", {"max_connections": 7}).limit_concurrency == 8  # (see _config)
    assert DEFAULT_BODY_TIMEOUT == 30 and DEFAULT_MAX_CONNECTIONS > 1000  # above the stream limit


async def test_ui_refuses_a_nul_in_a_file_name(store: Store) -> None:
    async with await in_process(PerhapApp(store)) as c:
        for path in ("/_ui/%00", "/_ui/a%00.js", "/_ui/assets/%00x"):
            problem(await c.get(path), 404)
        assert (await c.get("/_ui/")).status_code == 200


async def test_cors(store: Store, realm: str, tmp_path: Path) -> None:
    tokens = str(tmp_path / "tokens.json")
    token, _ = add_token(tokens, realm, "write")
    app = PerhapApp(store, cors_origins=["https://app.example"], auth=tokens)
    async with await in_process(app) as c:
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        r = await c.options(f"/{realm}/d/e/t", headers=pre)  # no token: preflights never carry one
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"]
        # The whole API: consumer groups' PUT and DELETE, conditional GET's header and tag.
        methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
        assert {"GET", "HEAD", "POST", "PUT", "DELETE"} <= methods
        assert "if-none-match" in r.headers["access-control-allow-headers"]
        # Another origin's preflight is a request like any other: the token first (it was a 204).
        r = await c.options(f"/{realm}/d/e/t", headers={**pre, "Origin": "https://evil.example"})
        assert r.status_code == 401 and "access-control-allow-origin" not in r.headers
        r = await c.post(f"/{realm}/d/e/t", json={"event": 1},
                         headers={"Origin": "https://app.example", "Authorization": f"Bearer {token}"})
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "etag" in r.headers["access-control-expose-headers"]
        r = await c.get(f"/{realm}", headers={"Origin": "https://app.example"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = await c.get(f"/{realm}", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    async with await in_process(PerhapApp(store)) as c:  # none by default
        r = await c.get(f"/{realm}", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _tls_server(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, ssl.SSLContext]:
    """`perhap serve --tls-cert ...` (with ``extra`` options) once it answers over HTTPS: the
    process, its port, and a context that trusts its certificate. The caller terminates it."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "perhap.cli", "serve", "--db", f"sqlite:///{tmp_path}/x.db",
                             "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"https://127.0.0.1:{port}/_health", verify=context, timeout=2).status_code == 200:
                return proc, port, context
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
        time.sleep(0.1)


def test_tls(tmp_path: Path) -> None:
    proc, port, context = _tls_server(tmp_path)
    try:
        assert httpx.post(f"https://127.0.0.1:{port}/r/d/e/t", json={"event": 1}, verify=context).status_code == 201
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/_health", timeout=2).raise_for_status()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"https://127.0.0.1:{port}".encode() in out



def test_a_tls_connection_cut_by_the_body_deadline_gives_its_slot_back(tmp_path: Path) -> None:
    """Over TLS, closing waits for the client's close_notify (asyncio allows 30 s): a client that
    trickles a body and never answers kept its --max-connections slot that long after its 408.
    The listener cuts such a connection a second after closing it."""
    proc, port, context = _tls_server(tmp_path, "--body-timeout", "1", "--max-connections", "1")
    held = None
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        held = context.wrap_socket(raw, server_hostname="127.0.0.1")
        held.sendall(b"POST /r/d/e/t HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        assert held.recv(65536).startswith(b"HTTP/1.1 408")  # and from here on this client does nothing
        served_at = None
        started = time.monotonic()
        while served_at is None and time.monotonic() - started < 25:
            try:
                if httpx.get(f"https://127.0.0.1:{port}/_health", verify=context, timeout=5).status_code == 200:
                    served_at = time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert served_at is not None and served_at < 10, served_at  # (it was about 30 s)
    finally:
        if held is not None:
            held.close()
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_tls_client_that_never_starts_its_handshake_is_cut_at_the_header_deadline(tmp_path: Path) -> None:
    """asyncio gives a TLS handshake 60 s, before the listener's header deadline can start: a
    client that connected and sent nothing kept its socket that long. --header-timeout bounds it."""
    proc, port, _ = _tls_server(tmp_path, "--header-timeout", "1")
    try:
        silent = socket.create_connection(("127.0.0.1", port), timeout=30)
        started = time.monotonic()
        try:
            assert silent.recv(1) == b""  # closed by the server
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 10  # (60 s before)
        silent.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_tls_options_must_come_together(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "perhap.cli", "serve", "--tls-cert", str(tmp_path / "c.pem")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--tls-key" in r.stderr


def test_max_connections_serves_n_connections_and_refuses_the_one_beyond(tmp_path: Path) -> None:
    """--max-connections N: N open connections are served, the N+1th is the 503 ("beyond"; it
    was the Nth, as uvicorn counts the new connection in)."""
    import socket
    with ProcessServer(f"sqlite:///{tmp_path}/c.db", None, "--max-connections", "3") as server:
        host, port = server.url.removeprefix("http://").split(":")
        request = f"GET /_health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        held = []
        try:
            for n in range(4):
                conn = socket.create_connection((host, int(port)), timeout=10)
                held.append(conn)  # kept open: each counts while it lives
                conn.sendall(request)
                answer = conn.recv(4096)
                status = answer.split(b"\r\n", 1)[0]
                assert status.startswith(b"HTTP/1.1 503" if n == 3 else b"HTTP/1.1 200"), (n, status)
            # A problem like every limit's (it was uvicorn's plain "Service Unavailable"), and the
            # connection closed after it.
            while chunk := held[-1].recv(4096):
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"content-type: application/problem+json" in head.lower() and b"retry-after: 1" in head.lower()
            problem = json.loads(body)
            assert problem["type"].endswith("too-many-connections") and problem["max_connections"] == 3
        finally:
            for conn in held:
                conn.close()


def test_n_connections_at_once_are_served_for_every_request_they_make(tmp_path: Path) -> None:
    """--max-connections N with N keep-alive connections each making requests one after another:
    every request is served. uvicorn counts a request until its task's done callback runs, which
    can come after the connection's next request: 200 connections at a limit of 200 had over half
    of their second and third requests refused."""
    connections, requests = 100, 4

    async def client(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = []
        try:
            for _ in range(requests):
                writer.write(b"GET /keys HTTP/1.1\r\nHost: t\r\n\r\n")
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: *([0-9]+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                statuses.append(head.split(b"\r\n", 1)[0])
        finally:
            writer.close()
        return statuses

    async def all_at_once(port: int) -> list[bytes]:
        answers = await asyncio.gather(*(client(port) for _ in range(connections)))
        return [status for statuses in answers for status in statuses]

    with ProcessServer(f"sqlite:///{tmp_path}/n.db", None, "--max-connections", str(connections)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        for _ in range(3):
            statuses = asyncio.run(all_at_once(port))
            assert statuses == [b"HTTP/1.1 200 OK"] * (connections * requests), \
                {s: statuses.count(s) for s in set(statuses)}


def test_beyond_max_connections_the_connections_served_go_on_being_served(tmp_path: Path) -> None:
    """3N connections at once at --max-connections N: N of them are served for every request they
    make, and each other one is refused at its first request (503, then closed). uvicorn refused
    every request while the count was over the limit, so such a flood left no one served."""
    limit, connections, requests = 20, 60, 3

    async def client(port: int, start: asyncio.Event) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses: list[bytes] = []
        await start.wait()  # all connected before any asks
        try:
            for _ in range(requests):
                writer.write(b"GET /keys HTTP/1.1\r\nHost: t\r\n\r\n")
                await writer.drain()
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    statuses.append(b"closed")
                    break
                length = int(re.search(rb"content-length: *([0-9]+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                statuses.append(head.split(b"\r\n", 1)[0])
                await asyncio.sleep(0.05)  # each connection stays open a while, with others waiting
        finally:
            writer.close()
        return statuses

    async def flood(port: int) -> list[list[bytes]]:
        start = asyncio.Event()
        clients = [asyncio.ensure_future(client(port, start)) for _ in range(connections)]
        await asyncio.sleep(0.5)
        start.set()
        return await asyncio.gather(*clients)

    with ProcessServer(f"sqlite:///{tmp_path}/f.db", None, "--max-connections", str(limit)) as server:
        answers = asyncio.run(flood(int(server.url.rsplit(":", 1)[1])))
    ok, refused = b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable"
    served = [a for a in answers if a == [ok] * requests]
    turned_away = [a for a in answers if a[:1] == [refused] and set(a[1:]) <= {b"closed"}]
    assert len(served) + len(turned_away) == connections, answers  # none refused after being served
    assert len(served) >= limit, (len(served), len(turned_away))


def test_a_client_that_reads_a_large_answer_slowly_keeps_its_connection(tmp_path: Path) -> None:
    """--write-timeout is for a client that stopped reading. One that reads a 13 MB page steadily
    (more than the kernel's send buffer, up to 4 MiB, takes), slower than that in the timeout,
    gets all of it: the connection was closed once the transport had waited that long to write,
    with the client reading all the while."""
    server = ThreadServer(f"sqlite:///{tmp_path}/slow.db?synchronous=normal", write_timeout=2.0)
    server.server.config.http = limited_protocol(write_timeout=2.0)  # as `perhap serve` sets it
    with server:
        big = "x" * 1200
        for b in range(20):
            events = [{"type": "t", "event": {"n": b * 500 + i, "pad": big}} for i in range(500)]
            assert httpx.post(f"{server.url}/r/d/e", json={"events": events}, timeout=60).status_code == 201
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            # (kept alive: with Connection: close the server closes once all is handed over, and
            # a transport closing was never dropped)
            conn.sendall(b"GET /r/d/e?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
            received, rate, began = b"", 2_000_000, time.monotonic()  # bytes a second
            head, length = b"", None
            while length is None or len(received) < length:
                chunk = conn.recv(16384)
                assert chunk, "the connection was closed"
                received += chunk
                if length is None and b"\r\n\r\n" in received:
                    head, _, received = received.partition(b"\r\n\r\n")
                    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
                ahead = len(received) / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        assert len(json.loads(received)["events"]) == 10_000


def test_a_client_that_never_reads_a_large_answer_loses_its_connection(tmp_path: Path) -> None:
    """A plain (not streamed) answer left unread for --write-timeout ends its connection, as a
    stream's does: three clients asking for a 12 MB page and reading nothing held every one of
    --max-connections 3 for ever, and every new client got the 503."""
    import socket
    url = f"sqlite:///{tmp_path}/w.db?synchronous=normal"
    with ProcessServer(url, None, "--max-connections", "3", "--write-timeout", "1") as server:
        big = "x" * 1200
        for b in range(20):  # batches under the 1 MiB body limit
            events = [{"type": "t", "event": {"n": b * 500 + i, "pad": big}} for i in range(500)]
            assert httpx.post(f"{server.url}/r/d/e", json={"events": events}, timeout=60).status_code == 201
        host, port = server.url.removeprefix("http://").split(":")
        held = []
        try:
            for _ in range(3):
                conn = socket.create_connection((host, int(port)), timeout=10)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room to hide bytes in
                conn.sendall(f"GET /r/d/e?limit=10000 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                held.append(conn)
            deadline = time.monotonic() + 20
            while True:  # a new client is served once the stalled ones are dropped (about 1 s)
                r = httpx.get(f"{server.url}/_health", timeout=10)
                if r.status_code == 200:
                    break
                assert r.status_code == 503 and time.monotonic() < deadline, "the unread answers held every slot"
                time.sleep(0.2)
        finally:
            for conn in held:
                conn.close()
