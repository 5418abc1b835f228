"""The web UI recovers rather than losing an answer or showing the wrong scope (Playwright driving
Debian's Chromium against `perhap serve`, as in tests/test_ui.py):

- an append that waited for the token dialog shows its answer in the form on the page;
- a live tail whose start failed because the store was unavailable starts once it is back;
- an address naming `.` or `..` is refused in plain words, never read as another scope;
- a type filter keeps a type's name exactly, spaces at its ends included;
- a tail that waited for a token goes on after the last event it showed;
- closing an event reached by Back stays in the app, on the list under it;
- an event card on a phone keeps its type and link beside a long entity name;
- a tail whose last event is not in the store the server came back with stops and says why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from tests.servers import ProcessServer
from tests.test_ui import SERVE_ARGS, post, shot, tail_rows

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.timeout(120)

UNAVAILABLE = json.dumps({"type": "urn:perhap:problem:unavailable", "title": "Service Unavailable", "status": 503,
                          "detail": "the database does not answer"})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    tmp = tmp_path_factory.mktemp("ui-recovery")
    with ProcessServer(f"sqlite:///{tmp}/ui.db?synchronous=normal", None, *SERVE_ARGS, cwd=tmp) as s:
        post(s.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 61}})
        yield s


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessServer, str]]:
    from perhap.auth import add_token

    tmp = tmp_path_factory.mktemp("ui-recovery-auth")
    tokens = str(tmp / "tokens.json")
    token = add_token(tokens, "plant", "write")[0]
    with ProcessServer(f"sqlite:///{tmp}/auth.db?synchronous=normal", None, "--auth", tokens, *SERVE_ARGS,
                       cwd=tmp) as s:
        yield s, token


def test_an_append_that_waited_for_the_token_shows_its_answer(
        auth_server: tuple[ProcessServer, str], page: Page) -> None:
    from playwright.sync_api import expect

    server, token = auth_server
    page.goto(server.url + "/_ui#/plant/sensors")
    dialog = page.get_by_role("dialog", name="Access token")
    expect(dialog).to_be_visible()  # the lists' 401: not the request under test
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    page.locator("#append summary").click()
    page.fill("#append-entity", "boiler-2")
    page.fill("#append-type", "reading")
    page.fill("#append-event", '{"celsius": 58}')
    page.locator("#append button[type=submit]").click()
    expect(dialog).to_be_visible()  # the POST's 401
    dialog.get_by_label("Bearer token").fill(token)
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()

    result = page.locator("#append-result")
    expect(result).to_have_text(re.compile(r"^Stored: version 0 of boiler-2, at .+open event"))
    expect(page.locator("#append")).to_have_attribute("open", "")
    expect(page.locator("#append-entity")).to_have_value("boiler-2")  # the form as typed
    expect(page.locator("#append-event")).to_have_value('{"celsius": 58}')
    # The view was drawn again with the token (before the append was sent again): no list is refused.
    expect(page.locator(".nav-status")).not_to_contain_text("needs a token")
    expect(page.locator(".list-status")).not_to_contain_text("needs a token")
    r = httpx.get(server.url + "/plant/sensors/boiler-2", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert [e["event"] for e in r.json()["events"]] == [{"celsius": 58}]
    shot(page, "append-after-token")


def test_a_live_tail_started_while_the_store_is_unavailable_starts_when_it_is_back(
        server: ProcessServer, page: Page) -> None:
    """The store's 503 is played by a route in the browser: every API request is refused until
    the store is "back", then they all reach the real server."""
    from playwright.sync_api import expect

    def unavailable(route: Route) -> None:
        if "/_ui" in route.request.url:
            return route.continue_()
        return route.fulfill(status=503, content_type="application/problem+json", body=UNAVAILABLE)

    page.route("**/*", unavailable)
    page.goto(server.url + "/_ui#/plant/sensors")
    pill = page.locator(".live .pill")
    expect(pill).to_have_text(re.compile(r"^Reconnecting… \(retrying in \d+ s\)$"))
    note = page.locator(".live .tail-note")
    expect(note).to_have_text(re.compile("storage is unavailable"))
    expect(note).not_to_contain_text("nothing was stored")  # a read stores nothing anyway

    page.unroute("**/*", unavailable)  # the store is back
    expect(pill).to_have_text("Live", timeout=15_000)
    expect(note).to_have_text("")
    new = post(server.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 62}})["event_id"]
    expect(page.locator(f'#tail-list li[data-id="{new}"]')).to_be_visible()
    assert tail_rows(page) == [new]


@pytest.mark.parametrize(("address", "sidebar", "problem"), [
    ("#/plant/sensors/..", "/plant/sensors/keys", "entity name cannot be “..”"),
    ("#/plant/sensors/.", "/plant/sensors/keys", "entity name cannot be “.”"),
    ("#/plant/%2E%2E", "/plant/keys", "domain name cannot be “..”"),
    # The event open over a valid view: its id and, in a realm's view, its domain parameter.
    ("#/plant?event=keys2&domain=..", "/plant/keys", "domain name cannot be “..”"),
    ("#/plant/sensors?event=..", "/plant/sensors/keys", "event name cannot be “..”"),
    ("#/plant?event=x&domain=keys", "/plant/keys", "domain name cannot be “keys”"),
])
def test_an_address_naming_a_dot_segment_is_refused(
        server: ProcessServer, page: Page, address: str, sidebar: str, problem: str) -> None:
    """The browser resolves `.` and `..` in a request's URL like a folder path (`%2E%2E` too), so
    such a name would read another scope: the page says the address is not valid instead, and
    asks only for the names of the valid scope above it."""
    from playwright.sync_api import expect

    asked: list[str] = []
    page.on("request", lambda r: asked.append(urlsplit(r.url).path) if "/_ui" not in r.url else None)
    page.goto(server.url + "/_ui" + address)
    expect(page.get_by_role("heading", level=1)).to_have_text("Not a valid address")
    expect(page.locator("#main")).to_contain_text(problem)
    expect(page.locator("#sidebar .keys a").first).to_be_visible()
    page.wait_for_timeout(500)  # anything else the page would ask, it has asked by now
    expect(page.locator("table.events")).to_have_count(0)
    expect(page.locator(".live")).to_have_count(0)
    assert asked == [sidebar]


def test_a_type_named_with_spaces_at_its_ends_is_filtered_exactly(server: ProcessServer, page: Page) -> None:
    """The server keeps any name, " t " too: the filter must ask for it as given, not trimmed."""
    from playwright.sync_api import expect

    post(server.url, "/plant/spaced/e1/%20t%20", {"event": 1})
    post(server.url, "/plant/spaced/e1/t", {"event": 2})
    page.goto(server.url + "/_ui#/plant/spaced/e1?type=%20t%20")
    rows = page.locator("table.events tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(" t ")
    page.goto(server.url + "/_ui#/plant/spaced/e1")
    expect(rows).to_have_count(2)
    page.locator("#type-filter").fill(" t ")
    page.locator("#type-filter").press("Enter")
    expect(page).to_have_url(re.compile(r"type=\+t\+$|type=%20t%20$"))
    expect(rows).to_have_count(1)


def test_a_live_tail_refused_for_too_many_streams_says_why_and_starts_when_a_slot_frees(
        tmp_path: Path, page: Page) -> None:
    """EventSource does not tell an error status from a dropped connection: the tail asks the
    stream's address once more to say why (docs/ui.md: it "says why and tries again")."""
    from playwright.sync_api import expect

    with ProcessServer(f"sqlite:///{tmp_path}/one.db?synchronous=normal", None, "--max-streams", "1",
                       *SERVE_ARGS, cwd=tmp_path) as s:
        post(s.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 61}})
        first = page.context.new_page()
        first.goto(s.url + "/_ui#/plant/sensors")
        expect(first.locator(".live .pill")).to_have_text("Live")
        page.goto(s.url + "/_ui#/plant/sensors")
        pill = page.locator(".live .pill")
        expect(pill).to_have_text(re.compile(r"^Reconnecting… \(Too many open streams \(429\); retrying in \d+ s\)$"))
        first.close()  # its stream's slot is free
        expect(pill).to_have_text("Live", timeout=15_000)
        new = post(s.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 62}})["event_id"]
        expect(page.locator(f'#tail-list li[data-id="{new}"]')).to_be_visible()


def test_forgetting_the_token_stops_what_was_read_with_it(auth_server: tuple[ProcessServer, str], page: Page) -> None:
    """After "Forget token", the view is read again without it: the live tail that streamed with
    the token stops showing new events, and the server asks for a token again."""
    from playwright.sync_api import expect

    server, token = auth_server
    headers = {"Authorization": f"Bearer {token}"}
    page.goto(server.url + "/_ui#/plant/sensors")
    dialog = page.get_by_role("dialog", name="Access token")
    dialog.get_by_label("Bearer token").fill(token)
    page.keyboard.press("Enter")
    expect(page.locator(".live .pill")).to_have_text("Live")
    seen = httpx.post(server.url + "/plant/sensors/boiler-3/reading", json={"event": 1}, headers=headers,
                      timeout=30).json()["event_id"]
    expect(page.locator(f'#tail-list li[data-id="{seen}"]')).to_be_visible()

    page.locator("#token-button").click()
    dialog.get_by_role("button", name="Forget token").click()
    expect(dialog).to_be_visible()  # the view, read again without a token, needs one
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator(".live .pill")).to_have_text(re.compile("^Stopped"))
    after = httpx.post(server.url + "/plant/sensors/boiler-3/reading", json={"event": 2}, headers=headers,
                       timeout=30).json()["event_id"]
    page.wait_for_timeout(1000)  # a stream still open with the token would have shown it by now
    expect(page.locator(f'#tail-list li[data-id="{after}"]')).to_have_count(0)


def test_names_of_255_bytes_do_not_widen_the_page_past_a_phone(server: ProcessServer, page: Page) -> None:
    """Readable on a phone: a long name breaks in the breadcrumb, the heading and the sidebar
    rather than make the whole page scroll sideways (tables scroll inside their own box)."""
    from urllib.parse import quote

    from playwright.sync_api import expect

    domain, entity = "x" * 255, "é" * 127
    post(server.url, f"/plant/{domain}/{quote(entity)}/reading", {"event": 1})
    phone = page.context.browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        small = phone.new_page()
        at_entity = f"#/plant/{domain}/{quote(entity)}"
        for address in (f"#/plant/{domain}", at_entity, f"{at_entity}/reading"):
            small.goto(server.url + "/_ui" + address)
            expect(small.locator("table.events tbody tr")).to_have_count(1)
            widths = small.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert widths[0] <= widths[1], (address[:20], widths)
    finally:
        phone.close()


def test_a_list_read_empty_is_read_again_once_the_scope_has_an_event(server: ProcessServer, page: Page) -> None:
    """An entity opened before its first event said "No events here yet" beside "1 in all" once an
    append (through the form on that page, or elsewhere) went in: the list is read again."""
    from playwright.sync_api import expect

    page.goto(server.url + "/_ui#/plant/fresh/boiler-9")
    expect(page.locator("p.empty")).to_have_text("No events here yet.")
    expect(page.locator(".live .pill")).to_have_text("Live")
    post(server.url, "/plant/fresh/boiler-9/reading", {"event": {"celsius": 40}})
    expect(page.locator("#events-count")).to_have_text("1 in all")
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    expect(page.locator("p.empty")).to_be_hidden()


def test_closing_an_event_reached_by_back_stays_on_the_list_under_it(server: ProcessServer, page: Page) -> None:
    """Esc steps back in the history when the entry before is where the dialog was opened. After
    a shared link to an event, a link out of its dialog, then Back into the dialog, the entry
    before it was the page before the app: Esc left the app. It now stays on the list under the
    dialog; opened from a list, Esc still steps back to it."""
    from playwright.sync_api import expect

    event_id = post(server.url, "/plant/sensors/boiler-9/reading", {"event": {"celsius": 70}})["event_id"]
    page.goto("data:text/html,<h1>elsewhere</h1>")
    page.goto(server.url + f"/_ui#/plant/sensors?event={event_id}")
    dialog = page.locator("#event-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("navigation", name="Where this event is").get_by_role("link", name="boiler-9").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("boiler-9")
    page.go_back()
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("heading", level=1)).to_have_text("sensors")
    expect(page).to_have_url(re.compile(re.escape(server.url) + r"/_ui#/plant/sensors$"))  # (set as the dialog closes)
    page.locator(f'table.events a[aria-label^="Open event {event_id}"]').click()
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")  # opened from the list: a step back to it
    expect(page).to_have_url(re.compile(r"#/plant/sensors$"))
    page.go_forward()
    expect(dialog).to_be_visible()


def test_a_live_tail_stopped_for_a_token_goes_on_after_its_last_event_once_given(tmp_path: Path,
                                                                                 page: Page) -> None:
    """A tail whose token was revoked asks for another; given one, the view is drawn again and the
    tail started after the scope's newest event then, so what was committed while it waited never
    showed. It now starts after the last event it showed."""
    from playwright.sync_api import expect

    from perhap.auth import add_token, revoke_token

    tokens = str(tmp_path / "tokens.json")
    first, writer = add_token(tokens, "plant", "read")[0], add_token(tokens, "plant", "write")[0]
    with ProcessServer(f"sqlite:///{tmp_path}/t.db?synchronous=normal", None, "--auth", tokens, *SERVE_ARGS,
                       cwd=tmp_path) as s:
        def append(value: int) -> str:
            r = httpx.post(s.url + "/plant/sensors/boiler-1/reading", json={"event": value},
                           headers={"Authorization": f"Bearer {writer}"}, timeout=30)
            return str(r.json()["event_id"])

        append(0)
        page.goto(s.url + "/_ui#/plant/sensors")
        dialog = page.get_by_role("dialog", name="Access token")
        dialog.get_by_label("Bearer token").fill(first)
        page.keyboard.press("Enter")
        expect(page.locator(".live .pill")).to_have_text("Live")
        seen = append(1)
        expect(page.locator(f'#tail-list li[data-id="{seen}"]')).to_be_visible()
        revoke_token(tokens, first)
        missed = [append(2)]  # the revoked token's stream ends before it carries this one
        expect(dialog).to_be_visible()  # and its reconnect was a 401
        missed.append(append(3))
        dialog.get_by_label("Bearer token").fill(writer)
        page.keyboard.press("Enter")
        for event_id in missed:
            expect(page.locator(f'#tail-list li[data-id="{event_id}"]')).to_be_visible()
        after = append(4)
        expect(page.locator(f'#tail-list li[data-id="{after}"]')).to_be_visible()
        assert tail_rows(page) == [after, *reversed(missed)]  # nothing shown twice


def test_an_event_card_on_a_phone_keeps_its_type_and_id_beside_a_long_entity_name(server: ProcessServer,
                                                                                 page: Page) -> None:
    """An entity named by 40 hex digits (a hash, a UUID without dashes) widened the card's first
    columns until the type and the event id link (the keyboard's way in) had no width at all."""
    from playwright.sync_api import expect

    entity = "3f" * 20
    post(server.url, f"/plant/hashed/{entity}/OrderPlaced", {"event": 1})
    phone = page.context.browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        small = phone.new_page()
        small.goto(server.url + "/_ui#/plant/hashed")
        row = small.locator("table.events tbody tr")
        expect(row).to_have_count(1)
        for cell in ("td.c-type", "td.c-id a"):
            box = row.locator(cell).bounding_box()
            assert box is not None and box["width"] >= 40 and box["x"] + box["width"] <= 375, (cell, box)
    finally:
        phone.close()


def test_a_tail_whose_last_event_is_gone_from_the_store_stops_and_says_why(tmp_path: Path, page: Page) -> None:
    """The server came back on another store (the one the page streamed from replaced): the tail's
    Last-Event-ID is in no scope there, a 404 that asking again never changes, and it retried it
    for ever ("Reconnecting…"). It now stops, saying why."""
    from playwright.sync_api import expect

    first = ProcessServer(f"sqlite:///{tmp_path}/a.db?synchronous=normal", None, *SERVE_ARGS, cwd=tmp_path)
    with first:
        post(first.url, "/plant/sensors/boiler-1/reading", {"event": 1})
        page.goto(first.url + "/_ui#/plant/sensors")
        expect(page.locator(".live .pill")).to_have_text("Live")
        seen = post(first.url, "/plant/sensors/boiler-1/reading", {"event": 2})["event_id"]
        expect(page.locator(f'#tail-list li[data-id="{seen}"]')).to_be_visible()
    with ProcessServer(f"sqlite:///{tmp_path}/b.db?synchronous=normal", first.port, *SERVE_ARGS,
                       cwd=tmp_path) as second:
        post(second.url, "/plant/sensors/boiler-1/reading", {"event": 3})
        expect(page.locator(".live .pill")).to_have_text(re.compile(r"^Stopped \(Not found \(404\)"),
                                                         timeout=20_000)
