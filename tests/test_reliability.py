"""Regression tests for what the adversarial review found (issue 13), on every backend it concerns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from perhap.backends import parse_store_url, redact
from perhap.errors import InvalidInput, NotFound
from perhap.ids import check_timestamp
from perhap.jsoncodec import dump_json, load_json
from perhap.model import Scope, check_name
from perhap.store import Store

# ------------------------------------------------------------------ 1: numbers that cannot be kept


@pytest.mark.parametrize("raw", [
    b"1e400", b"-1e400", b"[1e400]", b'{"a": 1e999}',
    b'[1e400, -1e400, "1234567890123456789"]',  # a 19-digit run takes the stdlib path
    b'{"e": 1e400, "n": 1234567890123456789}',
])
def test_infinite_numbers_are_refused_on_every_parsing_path(raw: bytes) -> None:
    with pytest.raises((InvalidInput, ValueError)):
        load_json(raw)


def test_integers_beyond_64_bits_are_kept_exactly() -> None:
    assert load_json(b"[123456789012345678901234567890, -18446744073709551617]") == [
        123456789012345678901234567890, -18446744073709551617]


async def test_infinite_numbers_are_a_400_and_store_nothing(client: httpx.AsyncClient, realm: str) -> None:
    for body in (b'{"event":[1e400,-1e400,"1234567890123456789"]}',
                 b'{"event":1e400,"meta":{"n":1234567890123456789}}',
                 b'{"event":1e400}'):
        r = await client.post(f"/{realm}/d/e/t", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
    big = b'{"event":[123456789012345678901234567890,1.5]}'
    r = await client.post(f"/{realm}/d/e/t", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 201
    page = (await client.get(f"/{realm}/d/e")).content
    assert b"[123456789012345678901234567890,1.5]" in page
    assert (await client.get(f"/{realm}/d/e")).json()["events"][0]["version"] == 0



@pytest.mark.parametrize("raw", [b"[1e-400]", b'{"a":-2.5E-999}', b'[1e-400, "1234567890123456789"]', b"[1e-0400]"])
def test_numbers_that_would_underflow_to_zero_are_refused(raw: bytes) -> None:
    """1e-400 would be stored as 0.0: a number that cannot be stored exactly (orjson reads it as
    0.0, so an exponent below -99 takes the checked path)."""
    with pytest.raises(InvalidInput, match="too small"):
        load_json(raw)
    assert load_json(b"[0e-400, 0.0E-500, 5e-324, 1e-99]") == [0.0, 0.0, 5e-324, 1e-99]


def test_integers_are_kept_up_to_4300_digits_and_refused_in_words_beyond() -> None:
    assert load_json(b"[" + b"9" * 4300 + b", -" + b"8" * 4300 + b"]") == [int("9" * 4300), -int("8" * 4300)]
    with pytest.raises(InvalidInput, match="4,301 digits"):
        load_json(b'{"n":' + b"9" * 4301 + b"}")


def test_an_integer_no_read_would_take_back_is_never_written() -> None:
    """With Python's own digit limit raised in the process, a value holding a longer integer
    would serialise; what reads stored JSON stops at 4,300 digits, so it is refused here too."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(10_000)
    try:
        assert dump_json([10**4300 - 1, -(10**4300 - 1)], "the event")  # 4,300 digits: kept
        for value in (10**4300, {"a": [-(10**5000)]}):
            with pytest.raises(InvalidInput, match="more than 4,300 digits"):
                dump_json(value, "the event")
    finally:
        sys.set_int_max_str_digits(limit)


@pytest.mark.parametrize("event, meta", [
    (float("inf"), None), ([float("nan"), 1], None), ({"x": [1, -float("inf")]}, None), (1, {"x": float("nan")}),
])
async def test_nan_and_infinities_given_as_values_are_refused_not_stored_as_null(
        store: Store, realm: str, event: object, meta: dict[str, object] | None) -> None:
    """In process (and through the Python client), values are serialised, not parsed: orjson
    writes NaN and infinities as null, which would store another value than the one given."""
    with pytest.raises(InvalidInput, match="NaN or an infinity"):
        await store.append(realm, "d", "e", "t", event, meta=meta)
    with pytest.raises(InvalidInput, match="NaN or an infinity"):
        await store.append_batch(realm, "d", "e", [{"type": "t", "event": event, "meta": meta}])
    with pytest.raises(InvalidInput, match="NaN or an infinity"):
        await store.append_many(realm, "d", [{"entity": "e", "type": "t", "event": event, "meta": meta}])
    assert (await store.read(Scope(realm, "d", "e"))).events == []
    await store.append(realm, "d", "e", "t", [None, 1.5])  # a null given is a null stored
    assert [e.event for e in (await store.read(Scope(realm, "d", "e"))).events] == [[None, 1.5]]


@pytest.mark.parametrize("event, meta", [
    ({1: "a", "1": "b"}, None), ({True: "a", "true": "b"}, None), ({"x": [{None: 1, "null": 2}]}, None),
    (1, {1.5: "a", "1.5": "b"}),
])
async def test_keys_that_become_one_json_key_are_refused_not_stored_twice(
        store: Store, realm: str, event: object, meta: dict[object, object] | None) -> None:
    """In process, a dict's keys that are not strings are written as their JSON text: two keys of
    one dict that become one would store an object naming a key twice, which an HTTP append
    refuses and no reader gets back as given (it keeps one of the two values)."""
    with pytest.raises(InvalidInput, match="two keys that are one key in JSON"):
        await store.append(realm, "d", "e", "t", event, meta=meta)
    with pytest.raises(InvalidInput, match="two keys that are one key in JSON"):
        await store.append_batch(realm, "d", "e", [{"type": "t", "event": event, "meta": meta}])
    with pytest.raises(InvalidInput, match="two keys that are one key in JSON"):
        await store.append_many(realm, "d", [{"entity": "e", "type": "t", "event": event, "meta": meta}])
    assert (await store.read(Scope(realm, "d", "e"))).events == []
    await store.append(realm, "d", "e", "t", {1: "a", "2": "b"})  # keys that stay distinct are kept
    assert [e.event for e in (await store.read(Scope(realm, "d", "e"))).events] == [{"1": "a", "2": "b"}]


async def test_the_client_refuses_nan_before_sending(app: object) -> None:
    from perhap.client import AsyncClient
    async with AsyncClient("http://perhap.test", transport=httpx.ASGITransport(app=app)) as client:
        with pytest.raises(InvalidInput, match="NaN or an infinity"):
            await client.append("r", "d", "e", "t", float("inf"))

# ------------------------------------------------------------------ 3: following of another type


async def test_following_an_event_of_another_type_is_404(store: Store, client: httpx.AsyncClient,
                                                         realm: str) -> None:
    a = (await store.append(realm, "d", "e", "a", 1)).first.event_id
    await store.append(realm, "d", "e", "b", 2)
    for path in (f"/{realm}/d/e", f"/{realm}/d", f"/{realm}"):
        r = await client.get(path, params={"type": "b", "following": a})
        assert r.status_code == 404, (path, r.text)
        assert (await client.get(path, params={"type": "a", "following": a})).status_code == 200
        r = await client.get(path, params={"type": "b"}, headers={"accept": "text/event-stream",
                                                                  "last-event-id": a})
        assert r.status_code == 404, (path, r.text)
    with pytest.raises(NotFound):
        await store.read(Scope(realm, "d", "e", "b"), following=a)
    with pytest.raises(NotFound):
        await store.subscription(Scope(realm, "d", None, "b"), following=a)


# ------------------------------------------------------------------ 13: '.' and '..' as names


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name, "entity")


def test_the_openapi_name_patterns_refuse_what_the_server_refuses() -> None:
    """A fuzzer generating names from /_openapi.json gets none the server answers 400 for."""
    import re

    from perhap.http.openapi import NAME, REALM
    for schema, refused, taken in ((NAME, [".", "..", "keys", "a/b", "t\tb"], ["...", ".a", "_x", "é"]),
                                   (REALM, [".", "..", "keys", "_x"], ["...", ".a", "é"])):
        assert [n for n in refused if re.search(str(schema["pattern"]), n)] == []
        assert [n for n in taken if not re.search(str(schema["pattern"]), n)] == []
        for name in taken:
            check_name(name, "realm" if schema is REALM else "entity", realm=schema is REALM)


async def test_dot_names_are_a_400(client: httpx.AsyncClient, realm: str) -> None:
    for path in (f"/{realm}/%2E%2E/e/t", f"/{realm}/d/%2E/t", f"/{realm}/d/e/%2E%2E", "/%2E%2E/d/e/t"):
        r = await client.post(path, json={"event": 1})
        assert r.status_code == 400, (path, r.text)
    assert (await client.get(f"/{realm}/%2E%2E")).status_code == 400


@pytest.mark.parametrize("name", ["...", ".x", "x.", "a b", "ü/".rstrip("/"), "%2E", "?", "#"])
async def test_location_of_odd_names_points_back_at_the_event(client: httpx.AsyncClient, realm: str,
                                                              name: str) -> None:
    from urllib.parse import quote

    segment = quote(name, safe="")
    r = await client.post(f"/{realm}/{segment}/e/t", json={"event": 1})
    assert r.status_code == 201, r.text
    location = r.headers["location"]
    resolved = httpx.URL("http://perhap.test/").join(location)
    got = await client.get(resolved.raw_path.decode())
    assert got.status_code == 200 and got.json()["domain"] == name


# ------------------------------------------------------------------ 14: credentials in start-up lines


@pytest.mark.parametrize("url, secret", [
    ("postgresql://u:s3cret@h/db", "s3cret"),
    ("postgresql://u@h/db?password=s3cret", "s3cret"),
    ("postgresql://h/db?sslmode=require&password=s3cret&x=1", "s3cret"),
    ("postgresql://h/db?sslpassword=s3cret", "s3cret"),
    ("cassandra://user:s3cret@h1,h2:9042/ks", "s3cret"),
    ("cassandra://h/ks?password=s3cret", "s3cret"),
    ("postgresql://u:p%40ss@h/db", "p%40ss"),
    # Option names are percent-decoded by the backends: so they are when redacting.
    ("postgresql://postgres@h/db?%70assword=s3cret", "s3cret"),
    ("postgresql://h/db?x=1;pass%77ord=s3cret", "s3cret"),
    ("postgresql://h/db?ssl%50assword=s3cret&password=s3cret", "s3cret"),
    # libpq's key=value form is no store URL, but an error message quotes what it was given.
    ("host=127.0.0.1 password=s3cret dbname=x", "s3cret"),
    ("host=h password='s3 cret' user=u", "s3 cret"),
    ("sslpassword = s3cret host=h", "s3cret"),
])
def test_redact_hides_every_credential_form(url: str, secret: str) -> None:
    shown = redact(url)
    assert secret not in shown
    assert "***" in shown


def test_an_unknown_scheme_is_named_without_its_credentials() -> None:
    with pytest.raises(ValueError, match="unknown store URL scheme 'mysql'") as refused:
        parse_store_url("mysql://u:s3cret@h/db?password=s3cret")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ValueError, match="unknown store URL scheme") as refused:
        parse_store_url("host=127.0.0.1 password=s3cret")
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("query, refused", [
    ("sync=off", "unknown SQLite URL option 'sync'"),
    ("synchronous=normal&journal=delete", "unknown SQLite URL option 'journal'"),
    ("synchronous=full&synchronous=off", "synchronous is given more than once"),
])
def test_a_sqlite_url_option_that_would_be_ignored_is_refused(tmp_path: Path, query: str, refused: str) -> None:
    """A misspelt option must not open the store with another durability than the one asked for."""
    url = f"sqlite:///{tmp_path}/o.db?{query}"
    with pytest.raises(ValueError, match=refused):
        parse_store_url(url)
    proc = subprocess.run([sys.executable, "-m", "perhap", "serve", "--db", url, "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and refused in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.db").exists()
    assert parse_store_url(f"sqlite:///{tmp_path}/o.db?synchronous=normal")[1]["synchronous"] == "normal"


def test_redact_leaves_plain_urls_alone() -> None:
    assert redact("sqlite:///./perhap.db") == "sqlite:///./perhap.db"
    assert redact("sqlite:///./p.db?token=s3cret&x=1#f") == "sqlite:///./p.db?token=***&x=1#f"
    assert redact("postgresql://u:s3cret@h:1/db") == "postgresql://u:***@h:1/db"  # no stray '?'
    assert redact("postgresql://u:s3cret@h:1/db#x") == "postgresql://u:***@h:1/db#x"
    assert redact("postgresql://u@h:5432/db?sslmode=require") == "postgresql://u@h:5432/db?sslmode=require"


@pytest.mark.parametrize("given, kept", [
    ("2026-11-26t09:40:51.630610z", "2026-11-26T09:40:51.630610Z"),  # RFC 3339 5.6: "t" and "z" too
    ("2026-11-26T09:40:51.630610Z", "2026-11-26T09:40:51.630610Z"),
    ("2026-11-26t10:40:51+01:00", "2026-11-26T09:40:51.000000Z"),
    ("2026-11-26T09:40:51.6306100Z", "2026-11-26T09:40:51.630610Z"),
    ("2020-01-01T00:00:00.5000000000000Z", "2020-01-01T00:00:00.500000Z"),  # any number of digits (5.6)
    ("2020-01-01T00:00:00-23:59", "2020-01-01T23:59:00.000000Z"),
])
def test_an_imported_timestamp_is_any_rfc_3339_date_time_kept_in_perhaps_form(given: str, kept: str) -> None:
    assert check_timestamp(given) == kept


@pytest.mark.parametrize("given", ["2026-11-26 09:40:51Z", "2026-11-26T09:40:51", "2026-11-26T09:40:51.1234567Z",
                                   "2026-11-26T09:40:51.1234560000001Z", "2026-11-26T09:40:51.Z",
                                   "2026-13-26T09:40:51Z", "2020-01-01T00:00:00+00:60", "2020-01-01T00:00:00-24:00",
                                   "2020-01-01T00:00:00+\u0661\u0662:00"])
def test_a_timestamp_that_is_not_rfc_3339_or_finer_than_a_microsecond_is_refused(given: str) -> None:
    with pytest.raises(InvalidInput):
        check_timestamp(given)
