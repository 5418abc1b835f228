"""Hostile inputs, on every backend: each is stored literally or refused with a 4xx, and nothing
else is disturbed (a sentinel realm stays as it was, the store stays healthy)."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

NAMES = [
    "'", "''", "\"", "`", "\\", "\\'", "';--", "'; DROP TABLE events; --", "\"; DROP TABLE events; --",
    "1' OR '1'='1", "a;b", ";", "%", "%%", "a%", "%a%", "_", "__", "a_b", "a_", "[a-z]", "*", "?", ".x", "..x",
    "$$", "$1", "{}", "${x}", "\\x00", "NULL", "null", "None", "true", "-1", "0x1F", "SELECT", "keys ", " keys",
    "ALLOW FILTERING", "token(x)", "a\u200bb", "\u202etxt", "Ω≈ç√∫", "名前", "🎉" * 60, "é" * 127, "x" * 255,
    "ü" * 100 + "'%_;",
]
TOO_LONG = ["x" * 256, "é" * 128, "🎉" * 64]
REFUSED = ["keys", "a/b", "\x00", "a\x00b", "\n", "\x7f", "\u0085"]


def no_5xx(r: httpx.Response) -> httpx.Response:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json"
    return r


def path(*names: str) -> str:
    return "/" + "/".join(quote(n, safe="") for n in names)


@pytest.fixture
async def sentinel(client: httpx.AsyncClient, realm: str) -> Any:
    """An event in a realm of its own; checked unchanged after each hostile test."""
    r = await client.post(f"/{realm}s/d/e/t", json={"event": {"keep": "me"}})
    assert r.status_code == 201
    yield
    page = (await client.get(f"/{realm}s")).json()["events"]
    assert [(e["entity"], e["event"]) for e in page] == [("e", {"keep": "me"})]
    assert (await client.get("/_health")).status_code == 200


async def test_hostile_names_are_stored_literally(client: httpx.AsyncClient, realm: str, sentinel: Any) -> None:
    stored = []
    for i, name in enumerate(NAMES):
        r = no_5xx(await client.post(path(realm, name, name, name), json={"event": {"i": i, "name": name}}))
        assert r.status_code == 201, (name, r.text)
        stored.append(name)
        events = no_5xx(await client.get(path(realm, name, name))).json()["events"]
        assert [(e["domain"], e["entity"], e["type"], e["event"]["name"]) for e in events] == [(name, name, name, name)]
        assert no_5xx(await client.get(path(realm, name, name, "keys"))).json()["keys"] == [name]
    domains = no_5xx(await client.get(path(realm, "keys"), params={"limit": 10000})).json()["keys"]
    assert sorted(domains) == sorted(set(stored))
    # LIKE-style names match only themselves
    for pattern in ("%", "_", "a_", "a%", "__"):
        events = no_5xx(await client.get(path(realm, pattern))).json()["events"]
        assert {e["domain"] for e in events} == {pattern}
    everything = no_5xx(await client.get(path(realm), params={"limit": 10000})).json()["events"]
    assert len(everything) == len(NAMES)
    # keys paging with hostile `after` values
    for after in ("'", "%", "_", "\\", "🎉"):
        page = no_5xx(await client.get(path(realm, "keys"), params={"after": after, "limit": 10000})).json()
        assert page["keys"] == [n for n in sorted(set(stored)) if n > after]


async def test_bad_names_are_refused(client: httpx.AsyncClient, realm: str, sentinel: Any) -> None:
    for name in TOO_LONG + REFUSED:
        for target in (path(realm, name, "e", "t"), path(realm, "d", name, "t"), path(realm, "d", "e", name)):
            r = no_5xx(await client.post(target, json={"event": 1}))
            assert 400 <= r.status_code < 500, (name, r.status_code)
        no_5xx(await client.get(path(name)))
    for raw in ("/%FF/d/e/t", "/r/%C3%28/e/t", "/r/d/%ED%A0%80/t", "/_realm/d/e/t"):
        assert 400 <= no_5xx(await client.post(raw, json={"event": 1})).status_code < 500
    assert (await client.get(path(realm))).json()["events"] == []


async def test_half_a_surrogate_pair_is_a_400_on_the_exact_parsers_path_too(client: httpx.AsyncClient,
                                                                              realm: str) -> None:
    """A 19-digit run or a tiny exponent anywhere in a body takes it to the exact (stdlib) parser,
    which took a lone surrogate escape that orjson refuses; in an unknown key, its message then
    could not be written as JSON: a bare 500 with a traceback in the log."""
    routes = {f"/{realm}/d/e/t": b'{"event": %s, %s}', f"/{realm}/d/e": b'{"events": [{"type": "t", "event": %s, %s}]}',
              f"/{realm}/d": b'{"events": [{"entity": "e", "type": "t", "event": %s, %s}]}'}
    for route, shape in routes.items():
        for number in (b'"1234567890123456789"', b"1e-100", b"1"):
            for member in (b'"\\ud800": 1', b'"k": "\\udc00"', b'"meta": {"\\ud83d": 1}'):
                body = shape % (number, member)
                r = no_5xx(await client.post(route, content=body))
                assert r.status_code == 400, (route, body, r.status_code)
                assert "surrogate" in r.json()["detail"] or "unknown keys" in r.json()["detail"], r.text
    assert (await client.get(f"/{realm}")).json()["events"] == []
    # A batch item's unknown keys are shown as the body's are: a few, cut short (all were echoed).
    many = {f"{'k' * 500}{i}": 1 for i in range(1000)}
    for route, item in ((f"/{realm}/d/e", {"type": "t", "event": 1, **many}),
                        (f"/{realm}/d", {"entity": "e", "type": "t", "event": 1, **many})):
        r = no_5xx(await client.post(route, json={"events": [item]}))
        assert r.status_code == 400 and len(r.content) < 1000 and "and 990 more" in r.json()["detail"], r.text[:300]
    # A pair, on either path, is one character, stored and read back as sent.
    for number in (b'"1234567890123456789"', b"1"):
        body = b'{"event": {"\\ud83c\\udf89": %s}}' % number
        r = no_5xx(await client.post(f"/{realm}/d/e/t", content=body))
        assert r.status_code == 201
        got = (await client.get(f"/{realm}/d/{r.json()['event_id']}")).json()["event"]
        assert list(got) == ["\U0001f389"], got


async def test_hostile_json(client: httpx.AsyncClient, realm: str, sentinel: Any) -> None:
    url = f"/{realm}/d/e/t"
    refused = [b'{"event": NaN}', b'{"event": Infinity}', b'{"event": -Infinity}', b'{"event": 1e400}',
               b'{"event": "\xff\xfe"}', b'{"event": "\xed\xa0\x80"}', b'\xef\xbb\xbf{"event": 1}',
               b'{"event": ' + b"[" * 100 + b"]" * 100 + b"}", b'{"event": ' + b"[" * 5000 + b"]" * 5000 + b"}",
               b'{"event": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}", b'{"event": 1', b"[]", b"null",
               b'{"event": "\\ud800"}', b'{"event": 1}garbage', b"", b'{"event": 1, "meta": []}',
               # A BOM, whatever the numbers after it (those of the exact parser's path were taken).
               b'\xef\xbb\xbf{"event": 1234567890123456789}', b'\xef\xbb\xbf{"event": 1e-100}',
               b'\xef\xbb\xbf{"event": 1, "meta": {"n": 12345678901234567890123}}',
               b'{"event": "\xed\xa0\x80", "n": 12345678901234567890123}']
    for body in refused:
        r = no_5xx(await client.post(url, content=body, headers={"content-type": "application/json"}))
        assert 400 <= r.status_code < 500, (body[:40], r.status_code)
    kept: list[Any] = [2**63 - 1, -(2**63), 1.7976931348623157e308, 5e-324, 0.1, -0.0, 12345678901234567890,
                       "\u0000 nul inside a string", "'; DROP TABLE events; --", {"%": "_", "'": '"'},
                       [[[[[["deep enough"]]]]]], "🎉" * 1000]
    for value in kept:
        r = no_5xx(await client.post(url, json={"event": value}))
        if r.status_code >= 400:  # refusing a number beyond 64 bits is allowed; storing it wrongly is not
            assert isinstance(value, int) and abs(value) >= 2**63, value
            continue
        assert r.status_code == 201
        got = (await client.get(f"/{realm}/d/{r.json()['event_id']}")).json()["event"]
        if isinstance(value, float):
            assert math.copysign(1, got) == math.copysign(1, value) and got == value
        else:
            assert got == value
    # Duplicate keys: a parser would keep one of the two values, so the event could not be stored
    # as sent: a 400 naming the key, at any depth, on every append route, and nothing stored.
    before = (await client.get(f"/{realm}")).json()["events"]
    for route, body in [(url, b'{"event": {"a": 1, "a": 2}}'), (url, b'{"event": {"a": 1}, "event": {"b": 3}}'),
                        (url, b'{"event": {"x": "1:2", "y": [{"k": "a:b", "k": 1}]}}'),
                        (url, b'{"event": {"a": "\\u003a", "a": 1}}'),
                        (url, b'{"event": {"a": 123456789012345678901234567890, "a": 1}}'),
                        (url, b'{"event": 1, "meta": {"by": 1, "by": 2}}'),
                        (f"/{realm}/d/e", b'{"events": [{"type": "t", "event": {"n": 1, "n": 1}}]}'),
                        (f"/{realm}/d", b'{"events": [{"entity": "e", "entity": "f", "type": "t", "event": 1}]}')]:
        r = no_5xx(await client.post(route, content=body))
        assert r.status_code == 400 and "appears twice" in r.json()["detail"], (body, r.text)
    assert (await client.get(f"/{realm}")).json()["events"] == before
    # Keys alike in other objects, colons and escapes in strings are no duplicates.
    for body in [b'{"event": [{"a": 1}, {"a": 2}], "meta": {"a": "x:y"}}',
                 b'{"event": {"a": "\\u003a:", "b": {"a": 1}}}', b'{"event": {"q": "x\\":y", "a" : 1}}']:
        r = no_5xx(await client.post(url, content=body))
        assert r.status_code == 201, (body, r.text)
        stored = (await client.get(f"/{realm}/d/{r.json()['event_id']}")).json()
        assert stored["event"] == json.loads(body)["event"]


async def test_a_flood_of_entities(client: httpx.AsyncClient, realm: str, sentinel: Any) -> None:
    n = 300
    for i in range(n):
        batch = {"events": [{"type": "t", "event": i}]}
        assert (await client.post(f"/{realm}/d/e{i:05d}%25_'", json=batch)).status_code == 201
    names: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 64, **({"after": after} if after else {})}
        page = no_5xx(await client.get(f"/{realm}/d/keys", params=params)).json()
        names += page["keys"]
        if page["next"] is None:
            break
        after = page["next"]
    assert names == [f"e{i:05d}%_'" for i in range(n)]
    assert len((await client.get(f"/{realm}/d", params={"limit": 10000})).json()["events"]) == n
    r = await client.get(f"/{realm}/d/e00007%25_'")
    assert [e["event"] for e in r.json()["events"]] == [7]


async def test_huge_query_and_header_values(client: httpx.AsyncClient, realm: str, sentinel: Any) -> None:
    for query in ({"following": "'" * 5000}, {"type": "%" * 300}, {"limit": "9" * 100}):
        no_5xx(await client.get(f"/{realm}", params=query))
    assert no_5xx(await client.get(f"/{realm}/keys", params={"after": "x" * 20000})).json()["keys"] == []
    headers = {"Last-Event-ID": "' OR 1=1 --", "Accept": "text/event-stream"}
    assert 400 <= no_5xx(await client.get(f"/{realm}", headers=headers)).status_code < 500
    assert orjson.loads((await client.get(f"/{realm}")).content)["events"] == []


async def test_hostile_query_strings(client: httpx.AsyncClient, realm: str, sentinel: Any) -> None:
    # Unknown, repeated, odd and huge parameter names: a 400 that names them (shortened), never a 5xx.
    for raw in ("x" * 20000 + "=1", "%00=1", "'%3B--=1", "limit=1&" * 2000, "a=1&" * 2000, "=1", "%FF=1",
                "limit", "+=+", "order=asc&order=asc", "type=a&" * 2000, "%E2%80%AE=1"):
        r = no_5xx(await client.get(f"/{realm}?{raw}"))
        assert r.status_code == 400, (raw[:40], r.text)
        assert len(r.content) < 1000
    r = no_5xx(await client.post(f"/{realm}/d/e/t?{'expected_version=0&' * 100}", json={"event": 1}))
    assert r.status_code == 400
    assert (await client.get(f"/{realm}")).json()["events"] == []
