"""Bearer tokens per realm: every route and method without a token, with a wrong one, another
realm's, read against write; the CLI; no token in logs or bodies; revocation without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from perhap import Store
from perhap.app import PerhapApp
from perhap.auth import Authenticator, AuthFileError, add_token, load_grants, revoke_token
from perhap.errors import InvalidInput
from tests.servers import ProcessServer, ThreadServer, free_port

ROUTES = ["/keys", "/{r}", "/{r}/keys", "/{r}/d", "/{r}/d/keys", "/{r}/d/e", "/{r}/d/e/keys", "/{r}/d/e/t"]
#: The token is checked before anything else: without one, a bad path or query is a 401 too.
MALFORMED = ["/%ff", "/{r}/%ff", "/_groups/%ff", "/{r}?x=%ff", "/_groups/{r}/g", "/{r}/d/e/t/x/y",
             # below an open route's name, no open route: no route at all, a 401 like any path
             "/_health/x", "/_openapi.json/x", "/%5Fhealth/x"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@pytest.fixture
def tokens(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.json")


@pytest.fixture
async def auth_client(store: Store, tokens: str) -> AsyncIterator[httpx.AsyncClient]:
    app = PerhapApp(store, heartbeat=0.2, auth=Authenticator(tokens, recheck=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perhap.test") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()  # type: ignore[no-any-return]


async def test_every_route_and_method_needs_a_token(auth_client: httpx.AsyncClient, tokens: str, realm: str) -> None:
    good, _ = add_token(tokens, "*", "admin")
    body = {"event": 1}
    wrong = "perhap_" + "x" * 43
    for route in [*ROUTES, *MALFORMED]:
        path = route.format(r=realm)
        for method in METHODS:
            for headers in ({}, bearer(wrong), {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}):
                r = await auth_client.request(method, path, json=body if method == "POST" else None, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer")
                if method != "HEAD":
                    assert wrong not in r.text and problem(r, 401)["status"] == 401
    r = await auth_client.post(f"/{realm}/d/e/t", json=body, headers=bearer(good))
    assert r.status_code == 201
    # Two Authorization headers, a good one among them: the first was taken, whichever it was (a
    # proxy in front may have checked the other). RFC 9110 allows one: the request has no token.
    for twice in ([("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {wrong}")],
                  [("Authorization", f"Bearer {good}")] * 2):
        r = await auth_client.get(f"/{realm}/d/e", headers=twice)
        assert problem(r, 401)["status"] == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "must be one 'Bearer TOKEN'" in r.json()["detail"]  # not "unknown or revoked"
    r = await auth_client.get(f"/{realm}/d/e", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert "must be one 'Bearer TOKEN'" in problem(r, 401)["detail"]
    assert "unknown or revoked" in problem(await auth_client.get(f"/{realm}/d/e", headers=bearer(wrong)), 401)["detail"]
    # A good token with a character added is another token, whitespace or not in Unicode (NEL and
    # NO-BREAK SPACE were stripped from the latin-1 header, and the token passed); HTTP's own
    # spaces and tabs around it are no part of it.
    for value in (f"Bearer {good}\xa0", f"Bearer {good}\x85", f"Bearer \xa0{good}", f"\xa0Bearer {good}"):
        r = await auth_client.get(f"/{realm}/d/e", headers=[("Authorization", value.encode("latin-1"))])
        assert r.status_code == 401, value
    r = await auth_client.get(f"/{realm}/d/e", headers=[("Authorization", f"Bearer \t{good} ".encode())])
    assert r.status_code == 200
    for path in ("/_health", "/_openapi.json", "/_ui/", "/"):
        assert (await auth_client.get(path)).status_code == 200, path


async def test_realm_and_permission(auth_client: httpx.AsyncClient, tokens: str, realm: str) -> None:
    other = realm + "x"
    read, _ = add_token(tokens, realm, "read")
    write, _ = add_token(tokens, realm, "write")
    admin, _ = add_token(tokens, realm, "admin")
    foreign, _ = add_token(tokens, other, "admin")
    for token in (write, admin):
        r = await auth_client.post(f"/{realm}/d/e/t", json={"event": 1}, headers=bearer(token))
        assert r.status_code == 201
        r = await auth_client.post(f"/{realm}/d/e", json={"events": [{"type": "t", "event": 2}]}, headers=bearer(token))
        assert r.status_code == 201
    for path in (f"/{realm}/d/e/t", f"/{realm}/d/e"):
        body = {"event": 1} if path.endswith("/t") else {"events": [{"type": "t", "event": 1}]}
        detail = problem(await auth_client.post(path, json=body, headers=bearer(read)), 403)["detail"]
        assert read not in detail
        problem(await auth_client.post(path, json=body, headers=bearer(foreign)), 403)
    for route in ROUTES[1:]:
        path = route.format(r=realm)
        for token in (read, write, admin):  # write implies read, admin implies write
            assert (await auth_client.get(path, headers=bearer(token))).status_code == 200, path
        problem(await auth_client.get(path, headers=bearer(foreign)), 403)
    events = (await auth_client.get(f"/{realm}", headers=bearer(read))).json()["events"]
    assert len(events) == 4
    event_id = events[0]["event_id"]
    assert (await auth_client.get(f"/{realm}/d/{event_id}", headers=bearer(read))).status_code == 200
    problem(await auth_client.get(f"/{realm}/d/{event_id}", headers=bearer(foreign)), 403)
    # the wrong method is still a 405 for a token that may use the realm
    problem(await auth_client.delete(f"/{realm}/d/e/t", headers=bearer(write)), 405)
    # ... whatever its permission: a POST a route does not take is a 405 (no route: 404) for a read
    # token as for a write token, not a 403 "may not write" (nothing could be written there)
    for token in (read, write):
        for path in (f"/{realm}", f"/{realm}/keys", f"/{realm}/d/keys", f"/{realm}/d/e/keys"):
            problem(await auth_client.post(path, json={"event": 1}, headers=bearer(token)), 405)
        problem(await auth_client.post(f"/{realm}/d/e/t/x", json={"event": 1}, headers=bearer(token)), 404)
    problem(await auth_client.post(f"/{realm}/keys", json={}, headers=bearer(foreign)), 403)  # the realm first
    # A path below a realm's consumer groups that no route answers: the realm's 403 before the 404.
    problem(await auth_client.get(f"/_groups/{realm}/g/nowhere", headers=bearer(foreign)), 403)
    problem(await auth_client.get(f"/_groups/{realm}/g/nowhere", headers=bearer(read)), 404)


async def test_keys_lists_only_readable_realms(auth_client: httpx.AsyncClient, tokens: str, realm: str) -> None:
    everything, _ = add_token(tokens, "*", "write")
    for r in (realm + "a", realm + "b", realm + "c"):
        assert (await auth_client.post(f"/{r}/d/e/t", json={"event": 1}, headers=bearer(everything))).status_code == 201
    mine, _ = add_token(tokens, realm + "b", "read")
    empty, _ = add_token(tokens, realm + "zzz", "write")  # a realm with no events yet
    keys = (await auth_client.get("/keys", headers=bearer(mine))).json()
    assert keys == {"keys": [realm + "b"], "next": None}
    assert (await auth_client.get("/keys", params={"after": realm + "b"}, headers=bearer(mine))).json()["keys"] == []
    assert (await auth_client.get("/keys", headers=bearer(empty))).json()["keys"] == []
    all_keys = await auth_client.get("/keys", headers=bearer(everything), params={"limit": 10000})
    assert {realm + "a", realm + "b", realm + "c"} <= set(all_keys.json()["keys"])
    # A one-realm token's list says it is limited (a whole-store export stops on it); a list of
    # every realm does not, nor a realm's own list.
    assert "perhap-keys-limited" not in all_keys.headers
    for token in (mine, empty):
        assert (await auth_client.get("/keys", headers=bearer(token))).headers["perhap-keys-limited"] == "by-token"
    assert "perhap-keys-limited" not in (await auth_client.get(f"/{realm}b/keys", headers=bearer(mine))).headers


async def test_metrics_need_an_admin_token(auth_client: httpx.AsyncClient, tokens: str) -> None:
    problem(await auth_client.get("/_metrics"), 401)
    reader, _ = add_token(tokens, "*", "write")
    problem(await auth_client.get("/_metrics", headers=bearer(reader)), 403)
    admin, _ = add_token(tokens, "*", "admin")
    r = await auth_client.get("/_metrics", headers=bearer(admin))
    assert r.status_code == 200 and "perhap_http_requests_total" in r.text


async def test_revoked_token_stops_working_without_restart(store: Store, tokens: str, realm: str) -> None:
    app = PerhapApp(store, heartbeat=0.2, auth=tokens)  # the default: the file is checked once a second
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        token, grant = add_token(tokens, realm, "write")
        # Within a few seconds of each change (one recheck interval and then some), never longer.
        r = await answer_within(5, 201, lambda: c.post(f"/{realm}/d/e/t", json={"event": 1}, headers=bearer(token)))
        assert r.status_code == 201, r.text
        revoke_token(tokens, grant.id)
        problem(await answer_within(5, 401, lambda: c.get(f"/{realm}", headers=bearer(token))), 401)


async def answer_within(seconds: float, status: int,
                        request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Repeat ``request`` until it answers ``status`` or ``seconds`` pass; the last response."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        r = await request()
        if r.status_code == status or loop.time() > deadline:
            return r
        await asyncio.sleep(0.05)


async def test_streams_respect_realms_and_revocation(store_url: str, tokens: str, realm: str) -> None:
    writer, _ = add_token(tokens, "*", "write")
    reader, grant = add_token(tokens, realm, "read")
    with ThreadServer(store_url, heartbeat=0.2, auth=Authenticator(tokens, recheck=0)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            stream_headers = {**bearer(reader), "Accept": "text/event-stream"}
            problem(await c.get(f"/{realm}x", headers=stream_headers), 403)
            problem(await c.get(f"/{realm}", headers={"Accept": "text/event-stream"}), 401)
            await c.post(f"/{realm}/d/e/t", json={"event": 1}, headers=bearer(writer))
            await c.post(f"/{realm}x/d/e/t", json={"event": 1}, headers=bearer(writer))
            seen: list[str] = []

            async def follow() -> None:
                async with c.stream("GET", f"/{realm}", headers=stream_headers) as s:
                    assert s.status_code == 200
                    async for line in s.aiter_lines():
                        if line.startswith("data:"):
                            seen.append(line)

            task = asyncio.ensure_future(follow())
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert len(seen) == 1 and realm + "x" not in seen[0]
            revoke_token(tokens, grant.id)
            await c.post(f"/{realm}/d/e/t", json={"event": 2}, headers=bearer(writer))
            await asyncio.wait_for(task, 10)  # the stream ends instead of carrying the new event
            assert len(seen) == 1


async def test_a_revoked_tokens_stream_carries_no_event_committed_after(store_url: str, tokens: str,
                                                                        realm: str) -> None:
    """With the default recheck (a request may rely on a look at the token file up to a second
    old), a stream looks again before each send: revoked, it ends before carrying the next event
    (it carried events for up to a second after the revocation)."""
    writer, _ = add_token(tokens, "*", "write")
    reader, grant = add_token(tokens, realm, "read")
    with ThreadServer(store_url, heartbeat=5, auth=Authenticator(tokens)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            seen: list[str] = []

            async def follow() -> None:
                headers = {**bearer(reader), "Accept": "text/event-stream"}
                async with c.stream("GET", f"/{realm}", headers=headers) as s:
                    async for line in s.aiter_lines():
                        if line.startswith("data:"):
                            seen.append(line)

            task = asyncio.ensure_future(follow())
            await c.post(f"/{realm}/d/e/t", json={"event": 1}, headers=bearer(writer))
            deadline = time.monotonic() + 30  # a condition, not a time: a loaded machine is slow
            while not seen and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.02)
            assert len(seen) == 1, (seen, task.done() and task.exception())
            revoke_token(tokens, grant.id)
            for n in range(2, 6):  # the server's look at the file is younger than a second here
                await c.post(f"/{realm}/d/e/t", json={"event": n}, headers=bearer(writer))
            await asyncio.wait_for(task, 10)
            assert len(seen) == 1, seen


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perhap.cli", *args], capture_output=True, text=True, timeout=60)


def test_token_cli(tmp_path: Path) -> None:
    path = str(tmp_path / "t.json")
    r = run_cli("token", "add", "--auth", path, "--realm", "shop", "--permission", "write")
    assert r.returncode == 0, r.stderr
    token = r.stdout.splitlines()[0]
    assert token.strip() == token and " " not in token and len(token) > 30
    assert token not in Path(path).read_text()
    assert (Path(path).stat().st_mode & 0o077) == 0
    [grant] = load_grants(path)
    assert grant.realm == "shop" and grant.permission == "write"
    listed = run_cli("token", "list", "--auth", path)
    assert listed.returncode == 0 and grant.id in listed.stdout and token not in listed.stdout
    for bad in (["--realm", "_sys", "--permission", "read"], ["--realm", "shop", "--permission", "owner"]):
        r = run_cli("token", "add", "--auth", path, *bad)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert run_cli("token", "revoke", "--auth", path, grant.id).returncode == 0
    assert load_grants(path) == []
    r = run_cli("token", "revoke", "--auth", path, grant.id)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    # A token is never echoed: not one that matches nothing, nor one given where none is taken.
    r = run_cli("token", "revoke", "--auth", path, token)
    assert r.returncode == 1 and token not in r.stderr and token[7:20] not in r.stderr, r.stderr
    for args in (["--token", token], [f"--token={token}"], [token]):
        r = run_cli("copy", "--from", f"sqlite:///{tmp_path}/a.db", "--to", f"sqlite:///{tmp_path}/b.db", *args)
        assert r.returncode == 2 and token[7:20] not in r.stderr and "not shown" in r.stderr, r.stderr


def test_a_token_that_could_not_be_printed_is_not_added(tmp_path: Path) -> None:
    """stdout on a full disk: the add said "could not write the output" and kept the grant, an
    admin token valid that nobody had seen."""
    path = str(tmp_path / "t.json")
    assert run_cli("token", "add", "--auth", path, "--realm", "shop", "--permission", "read").returncode == 0
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "perhap.cli", "token", "add", "--auth", path, "--realm", "shop",
                            "--permission", "admin"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: could not write the new token") \
        and "it was not added" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert [g.permission for g in load_grants(path)] == ["read"]


def test_non_loopback_needs_auth_or_insecure(tmp_path: Path) -> None:
    r = run_cli("serve", "--db", f"sqlite:///{tmp_path}/x.db", "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2 and "--auth" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with ProcessServer(f"sqlite:///{tmp_path}/x.db", None, "--host", "0.0.0.0", "--insecure") as server:
        code, out = server.terminate()
    assert "WARNING" in out and "insecure" in out


def test_tokens_never_in_logs(tmp_path: Path) -> None:
    path = str(tmp_path / "tokens.json")
    token, _ = add_token(path, "shop", "write")
    wrong = "perhap_" + uuid.uuid4().hex * 2
    with ProcessServer(f"sqlite:///{tmp_path}/x.db", None, "--auth", path, "--log-format", "json",
                       "--log-level", "debug") as server:
        for t in (token, wrong):
            for method, url in (("POST", "/shop/d/e/t"), ("GET", "/shop"), ("GET", "/other"), ("GET", "/keys"),
                                ("GET", "/_metrics"), ("POST", "/shop/d/e/t?x=1"), ("GET", "/_groups/shop/g")):
                r = httpx.request(method, server.url + url, json={"event": {"secret-body": 1}},
                                  headers=bearer(t), timeout=10)
                assert t not in r.text and r.status_code < 500
        code, out = server.terminate()
    assert token not in out and wrong not in out and token[7:20] not in out
    assert "secret-body" not in out
    access = [json.loads(line) for line in out.splitlines() if '"status"' in line]
    assert len(access) >= 12
    first = next(a for a in access if a["method"] == "POST")
    assert {"method", "path", "status", "duration", "duration_ms", "realm", "bytes"} <= set(first)
    for a in access:  # the duration in seconds, as the metric has it, and in milliseconds
        assert isinstance(a["duration"], float) and 0 <= a["duration"] < 60, a
        assert abs(a["duration"] * 1000 - a["duration_ms"]) < 0.01, a
    assert first["realm"] == "shop" and first["status"] == 201
    # A consumer group's route names its realm too.
    assert {a["realm"] for a in access if a["path"] == "/_groups/shop/g"} == {"shop"}
    assert {a["realm"] for a in access if a["path"] in ("/keys", "/_metrics")} == {None}


def test_a_token_sent_where_no_token_goes_is_not_echoed(tmp_path: Path) -> None:
    """A token pasted in the wrong place (a query parameter, `following`, an event_id, a body key,
    a realm's name) gets the error it earns, with the token hidden in the answer and the log."""
    path = str(tmp_path / "tokens.json")
    token, _ = add_token(path, "shop", "write")
    with ProcessServer(f"sqlite:///{tmp_path}/x.db", None, "--auth", path, "--log-format", "json") as server:
        auth = bearer(token)
        answers = [
            httpx.get(f"{server.url}/shop?{token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/shop?following={token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/shop/d/e?after_version={token}", headers=auth, timeout=10),
            httpx.post(f"{server.url}/shop/d/e/t", json={"event": {}, "event_id": token}, headers=auth, timeout=10),
            httpx.post(f"{server.url}/shop/d/e/t", json={"event": {}, token: 1}, headers=auth, timeout=10),
            httpx.get(f"{server.url}/{token}", headers=auth, timeout=10),
            # Values quoted cut short: the cut must not leave a piece of the token.
            httpx.get(f"{server.url}/shop?limit={token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/shop/d/keys?limit={token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/_groups/shop/g/events?consumer=c&max={token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/_groups/shop/g/events?consumer=c&wait={token}", headers=auth, timeout=10),
            # ... and cut where the token is past the start of what is quoted, so that the cut
            # falls inside the token: the token is hidden first, then the text is cut.
            httpx.get(f"{server.url}/shop?limit=xxxxxxxxx{token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/shop?{'a' * 30}{token}=1", headers=auth, timeout=10),
            httpx.get(f"{server.url}/shop?following={'a' * 30}{token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/shop/d/e?after_version=xxxxxxxxx{token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/shop?order=xxxxxxxxx{token}", headers=auth, timeout=10),
            httpx.get(f"{server.url}/_groups/shop/g/events?consumer=c&max=xxxxxxxxxx{token}", headers=auth,
                      timeout=10),
            httpx.post(f"{server.url}/shop/d/e", headers=auth, timeout=10,
                       json={"events": [{"type": "t", "event": 1, "timestamp": f"2020{token}"}]}),
            httpx.post(f"{server.url}/shop/d/e/t", headers={**auth, "content-type": "application/json"}, timeout=10,
                       content=f'{{"event": {{"{"a" * 30}{token}": 1, "{"a" * 30}{token}": 2}}}}'.encode()),
            httpx.post(f"{server.url}/shop/d", headers=auth, timeout=10,
                       json={"events": [{"entity": "e", "type": "t", "event": 1}],
                             "expected_versions": {f"{'a' * 30}{token}": "x"}}),
        ]
        code, out = server.terminate()
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        assert "not shown" in r.text or "perhap_" not in r.text, r.text  # quoted hidden, or not quoted
        assert token not in r.text and token[7:17] not in r.text, r.text
        assert token[-40:-30] not in r.text, r.text  # nor a piece of it
    assert token not in out and token[7:17] not in out


async def test_a_token_beside_a_lone_surrogate_is_hidden_not_a_crash(store: Store) -> None:
    """In process a str may hold what no JSON body can (a lone surrogate): quoting it with a
    token hidden was a UnicodeEncodeError instead of the refusal."""
    token = "perhap_" + "a" * 40
    with pytest.raises(InvalidInput) as caught:
        await store.append("shop", "d", "e", "t", {}, event_id="\ud800" + token)
    assert "not shown" in caught.value.detail and token[7:17] not in caught.value.detail


def test_a_stream_sees_a_revocation_made_before_what_it_sends_however_soon(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The look at the token file that a stream's send relies on must come after the read that
    found the events it sends: a look from before the revocation, however recent (it was 5 ms of
    cache), let an event committed just after the revocation through (seen in CI)."""
    import types

    from perhap import auth as auth_module

    clock = [100.0]
    monkeypatch.setattr(auth_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    path = str(tmp_path / "tokens.json")
    _, grant = add_token(path, "shop", "read")
    authenticator = Authenticator(path)
    assert authenticator.still_valid(grant, since=99.9)  # a look at 100.0
    revoke_token(path, grant.id)
    clock[0] = 100.001  # one millisecond later, the event committed after the revocation is read
    assert not authenticator.still_valid(grant, since=100.0005)
    # Streams sending what one read found share one look: no stat for the next one.
    looks = []
    real = authenticator._stat
    monkeypatch.setattr(authenticator, "_stat", lambda: looks.append(clock[0]) or real())
    clock[0] = 100.002
    assert not authenticator.still_valid(grant, since=100.0005) and looks == []
    assert not authenticator.still_valid(grant, since=100.0015) and looks == [100.002]  # a later read


def test_an_edit_that_keeps_the_size_and_the_mtime_tick_is_seen(tmp_path: Path) -> None:
    """A token file edited in place twice within one tick of the file system's clock keeps its
    inode, size and mtime: the stamp alone cannot see the second edit (it kept a revoked token)."""
    path = str(tmp_path / "tokens.json")
    _, grant = add_token(path, "shop", "read")
    authenticator = Authenticator(path, recheck=0)
    assert authenticator.still_valid(grant, since=time.monotonic())
    before = os.stat(path)
    text = Path(path).read_text()
    edited = text.replace(grant.hash, "0" * len(grant.hash))  # the token is another one now
    assert edited != text and len(edited) == len(text)
    with open(path, "r+") as f:  # in place: same inode and size
        f.write(edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same clock tick
    assert os.stat(path).st_ino == before.st_ino and os.stat(path).st_size == before.st_size
    assert not authenticator.still_valid(grant, since=time.monotonic())


def bad_token_files(good: dict[str, str]) -> dict[str, bytes]:
    """Files that are not token files, each but the first few built from a good entry."""
    def one(entry: object) -> bytes:
        return json.dumps({"tokens": [entry]}).encode()

    without_realm = {k: v for k, v in good.items() if k != "realm"}
    return {
        "null entry": b'{"tokens":[null]}', "tokens an object": b'{"tokens":{"a":1}}',
        "string entry": b'{"tokens":["x"]}', "list entry": b'{"tokens":[[]]}', "a list": b"[]",
        "no tokens": b'{"other":[]}', "not JSON": b"{{{", "not UTF-8": b'\xff\xfe{"tokens":[]}',
        "no realm": one(without_realm), "extra key": one({**good, "extra": 1}),
        "realm a number": one({**good, "realm": 5}), "id null": one({**good, "id": None}),
        "created a list": one({**good, "created": []}), "permission READ": one({**good, "permission": "READ"}),
        "short hash": one({**good, "hash": good["hash"][:40]}), "hash not hex": one({**good, "hash": "z" * 64}),
        "good and bad": json.dumps({"tokens": [good, None]}).encode(),
        # The server took the last of two, and `token revoke` removed the first and said it had.
        "an id twice": json.dumps({"tokens": [good, {**good, "hash": "0" * 64}]}).encode(),
        "a token twice": json.dumps({"tokens": [good, {**good, "id": "other"}]}).encode(),
        "a key twice": one(good)[:-2] + b', "permission": "admin"}]}',
    }


def replace_file(path: str, content: bytes) -> None:
    """As an editor or a deployment would: write beside it, then rename over it."""
    with open(path + ".new", "wb") as f:
        f.write(content)
    os.replace(path + ".new", path)


def test_a_malformed_token_file_is_an_auth_file_error(tmp_path: Path, tokens: str) -> None:
    add_token(tokens, "shop", "read")
    good = json.loads(Path(tokens).read_bytes())["tokens"][0]
    for name, content in bad_token_files(good).items():
        replace_file(tokens, content)
        try:
            load_grants(tokens)
        except AuthFileError as exc:
            assert tokens in str(exc) and "\n" not in str(exc), (name, exc)
            continue
        pytest.fail(f"{name}: loaded as a token file")
    # serve refuses to start on one, with one line and no traceback
    r = run_cli("serve", "--db", f"sqlite:///{tmp_path}/x.db", "--port", str(free_port()), "--auth", tokens)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "token file" in r.stderr, r.stderr


async def test_a_token_file_gone_bad_refuses_every_token_until_fixed(tmp_path: Path, tokens: str) -> None:
    """Whatever replaces the file, if it is not a token file no token works (401, never a 500 nor
    the tokens of the file before), and a good file brings them back."""
    reader, _ = add_token(tokens, "shop", "read")
    writer, _ = add_token(tokens, "shop", "write")
    good_file = Path(tokens).read_bytes()
    bad = bad_token_files(json.loads(good_file)["tokens"][0])
    with ThreadServer(f"sqlite:///{tmp_path}/x.db", auth=Authenticator(tokens, recheck=0)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            for name, content in bad.items():
                replace_file(tokens, content)
                for _ in range(2):
                    r = await c.get("/shop", headers=bearer(reader))
                    assert r.status_code == 401, (name, r.status_code, r.text)
                    r = await c.post("/shop/d/e/t", json={"event": 1}, headers=bearer(writer))
                    assert r.status_code == 401, (name, r.status_code, r.text)
                replace_file(tokens, good_file)
                assert (await c.get("/shop", headers=bearer(reader))).status_code == 200, name
                assert (await c.post("/shop/d/e/t", json={"event": 1}, headers=bearer(writer))).status_code == 201


def test_a_token_file_behind_a_symbolic_link_is_written_through_it(tmp_path: Path) -> None:
    """token add through a link replaced the link with a file of its own: the file it named, which
    a server read, kept the old tokens."""
    real = tmp_path / "tokens.json"
    first, _ = add_token(str(real), "shop", "read")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    second, _ = add_token(str(link), "shop", "write")
    assert link.is_symlink()
    assert {g.hash for g in load_grants(str(real))} == {hashlib.sha256(t.encode()).hexdigest() for t in (first, second)}


def test_concurrent_token_adds_and_revokes_lose_nothing(tmp_path: Path) -> None:
    """Each ``token add`` and ``revoke`` reads, changes and replaces the file: run at once, none
    may work from a read that another's write made stale (a lost token, a revoked one back)."""
    path = str(tmp_path / "tokens.json")
    revoked = [add_token(path, "shop", "write")[0] for _ in range(2)]
    kept, _ = add_token(path, "shop", "admin")
    cli = [sys.executable, "-m", "perhap.cli", "token"]
    adds = [subprocess.Popen([*cli, "add", "--auth", path, "--realm", "shop", "--permission", "read"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(14)]
    revokes = [subprocess.Popen([*cli, "revoke", "--auth", path, token], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for token in revoked]
    added = []
    for proc in adds + revokes:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        if proc in adds:
            added.append(out.splitlines()[0])
    hashes = {g.hash for g in load_grants(path)}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in [kept, *added]}
    assert (os.stat(path).st_mode & 0o077) == 0 and (os.stat(path + ".lock").st_mode & 0o077) == 0
