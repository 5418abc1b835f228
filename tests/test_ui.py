"""The web UI at /_ui, end to end in a real browser: Playwright driving Debian's Chromium against
`perhap serve` on a temporary SQLite store.

The browser and page fixtures are tests/browser.py's (the system's Chromium; a missing browser
fails the tests with the command that installs it; nothing is skipped).

Screenshots go to tests/artifacts/ (ignored by git). PERHAP_UI_DOCS=1 also rewrites docs/ui.png.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.servers import ProcessServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request

ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS_SHOT = Path(__file__).parent.parent / "docs" / "ui.png"
SERVE_ARGS = ("--log-level", "warning")  # the child's output is a pipe read only at the end

# An event whose numbers JSON.parse alone would change: the UI must show them as stored.
EXACT = '{"carrier": "DHL", "parcels": [{"id": 12345678901234567890, "weight": 1.0}], "note": null, "express": true}'
ODD_NAME = "ada lovelace?#%é"
UNAUTHORIZED = json.dumps({"type": "urn:perhap:problem:unauthorized", "title": "Unauthorized", "status": 401,
                           "detail": "a token is needed"})

pytestmark = pytest.mark.timeout(120)


@functools.cache
def http() -> httpx.Client:
    return httpx.Client(timeout=30)  # one client: making one costs ~40 ms (its TLS context)


def post(url: str, path: str, body: Any) -> dict[str, Any]:
    r = http().post(url + path, content=body if isinstance(body, str) else json.dumps(body))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def seed(url: str) -> None:
    """shop/orders: 250 entities (more than one page of keys); load/big: 100,000 events."""
    def order(n: int) -> None:
        body = {"events": [{"type": "placed", "event": {"order": n, "total": n * 3}}]}
        post(url, f"/shop/orders/order-{n:04d}", body)

    for n in range(250):
        order(n)
    for b in range(10):
        ticks = [{"type": "tick", "event": {"n": b * 10_000 + i}} for i in range(10_000)]
        post(url, f"/load/big/e{b}", {"events": ticks})
    post(url, "/shop/orders/order-0042/paid", {"event": {"amount": 126}})
    post(url, "/shop/orders/order-0042/shipped", '{"event": ' + EXACT + ', "meta": {"by": "ui-test"}}')
    post(url, "/shop/customers/ada%20lovelace%3F%23%25%C3%A9/registered", {"event": {"name": "Ada"}})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    tmp = tmp_path_factory.mktemp("ui")
    # synchronous=normal: no fsync per commit; seeding is quicker and durability is not tested here.
    with ProcessServer(f"sqlite:///{tmp}/ui.db?synchronous=normal", None, *SERVE_ARGS, cwd=tmp) as s:
        seed(s.url)
        yield s


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")  # run-time output only, never committed
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"))


def settle(page: Page, done: Callable[[], bool], timeout: float = 5) -> None:
    """Wait for Playwright's request events, which may trail what the page already shows (they
    are delivered while Playwright waits, hence wait_for_timeout rather than sleep)."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        page.wait_for_timeout(50)


def tail_rows(page: Page) -> list[str]:
    return page.locator("#tail-list li[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)")


# --------------------------------------------------------------------------- tests


def test_navigate_the_hierarchy_and_open_an_event(server: ProcessServer, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(server.url + "/_ui")
    nav = page.get_by_role("navigation", name="Hierarchy")
    expect(page.get_by_role("banner")).to_be_visible()
    expect(page.get_by_role("main")).to_be_visible()
    nav.get_by_role("link", name="shop", exact=True).click()
    expect(page).to_have_url(re.compile(r"/_ui#/shop$"))
    nav.get_by_role("link", name="orders", exact=True).click()
    expect(page).to_have_url(re.compile(r"/_ui#/shop/orders$"))

    # 250 entities: the first page of keys, then "Load more" with `after`.
    keys = nav.locator(".keys li")
    expect(keys).to_have_count(200)
    nav.get_by_role("button", name="Load more").click()
    expect(keys).to_have_count(250)
    expect(nav.get_by_role("button", name="Load more")).to_be_hidden()

    # Keyboard only: '/' to the filter, a prefix (asked of the server), Tab to a name, Enter.
    page.locator("body").press("/")
    expect(page.locator("#key-filter")).to_be_focused()
    page.keyboard.type("order-004")
    expect(keys).to_have_count(10)
    expect(keys.first).to_have_text("order-0040")
    for _ in range(3):
        page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("order-0042")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/shop/orders/order-0042$"))
    rows = page.locator("table.events tbody tr")
    expect(rows).to_have_count(3)
    expect(page.get_by_role("heading", level=1)).to_have_text("order-0042")

    # Event types of the entity, then the events of one type.
    expect(nav.locator(".keys a")).to_have_text(["paid", "placed", "shipped"])
    nav.get_by_role("link", name="shipped").click()
    expect(page).to_have_url(re.compile(r"#/shop/orders/order-0042/shipped$"))
    expect(rows).to_have_count(1)
    expect(page.get_by_role("navigation", name="Breadcrumb").get_by_role("link")).to_have_text(
        ["All realms", "shop", "orders", "order-0042", "shipped"])
    shot(page, "hierarchy")

    # Open it: version, id, and event and meta as JSON, with the stored numbers exactly.
    rows.first.get_by_role("link").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(page).to_have_url(re.compile(r"#/shop/orders/order-0042/shipped\?event=[0-9a-f-]{36}$"))
    event_id = page.url.rsplit("=", 1)[1]
    expect(dialog.get_by_role("heading", level=2)).to_have_text("shipped · version 2")
    event_json = dialog.get_by_role("group", name="Event JSON")
    expect(event_json).to_contain_text('"id": 12345678901234567890')
    expect(event_json).to_contain_text('"weight": 1.0')
    expect(dialog.get_by_role("group", name="Meta JSON")).to_contain_text('"by": "ui-test"')
    # Collapsible: closing the parcels array hides its items.
    parcels = event_json.locator("summary", has_text='"parcels"')
    parcels.click()
    expect(event_json.get_by_text('"weight"')).to_be_hidden()
    parcels.press("Enter")
    expect(event_json.get_by_text('"weight"')).to_be_visible()
    dialog.get_by_role("button", name="Copy event id").click()
    assert page.evaluate("navigator.clipboard.readText()") == event_id
    shot(page, "event")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page).to_have_url(re.compile(r"#/shop/orders/order-0042/shipped$"))

    # Jump to an event by id, from anywhere.
    page.goto(server.url + "/_ui#/")
    page.get_by_role("textbox", name="Go to event").fill(f"shop/orders/{event_id}")
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", level=2)).to_have_text("shipped · version 2")
    page.keyboard.press("Escape")
    expect(page).to_have_url(re.compile(r"#/$"))  # closing went back to where the jump started

    # A bookmarked view opens as it was; names are percent-encoded per segment.
    page.goto(server.url + "/_ui#/shop/customers/ada%20lovelace%3F%23%25%C3%A9")
    expect(page.get_by_role("heading", level=1)).to_have_text(ODD_NAME)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("registered")


def test_a_big_domain_opens_newest_first_one_request_a_page(server: ProcessServer, page: Page) -> None:
    from playwright.sync_api import expect

    reads: list[str] = []
    page.on("request", lambda r: reads.append(r.url) if "/load/big?" in r.url else None)
    started = time.monotonic()
    page.goto(server.url + "/_ui#/load/big")
    rows = page.locator("table.events tbody tr")
    # A domain opens newest first: its last event on top, with its position in the realm.
    expect(rows).to_have_count(100)
    first_page = time.monotonic() - started
    assert first_page < 5, f"the first page of a 100,000-event domain took {first_page:.1f} s"
    expect(rows.first.locator(".c-version")).to_have_text("9999")  # the last batch's last event
    expect(rows.first.locator(".c-position")).to_have_text("100,000")
    expect(page.locator("#events-count")).to_have_text("newest at position 100,000")
    # The live tail starts after the newest event at once: nothing is scanned to find it.
    expect(page.locator(".live .pill")).to_have_text("Live")
    page.get_by_role("button", name="Show older").click()
    expect(rows).to_have_count(200)
    expect(rows.nth(199).locator(".c-version")).to_have_text("9800")
    expect(rows.nth(199).locator(".c-position")).to_have_text("99,801")
    shot(page, "big-domain")

    # Oldest first is the other link; each page is again one request of 100 events.
    page.get_by_role("link", name="Oldest first").click()
    expect(page).to_have_url(re.compile(r"#/load/big\?order=oldest$"))
    expect(rows.first.locator(".c-position")).to_have_text("1")
    expect(rows).to_have_count(100)
    page.get_by_role("button", name="Load more").click()
    expect(rows).to_have_count(200)
    expect(rows.nth(199).locator(".c-version")).to_have_text("199")
    limits = [int(m.group(1)) for u in reads if (m := re.search(r"[?&]limit=(\d+)", u))]
    # Two pages each way and the newest event once (the streams ask for no page at all).
    assert len(limits) <= 6 and max(limits) <= 100, reads


def test_filter_by_several_types_newest_first_with_positions(server: ProcessServer, page: Page) -> None:
    from playwright.sync_api import expect

    def api(query: str) -> list[dict[str, Any]]:
        return http().get(f"{server.url}/shop/orders?{query}").json()["events"]  # type: ignore[no-any-return]

    page.goto(server.url + "/_ui#/shop/orders")
    rows = page.locator("table.events tbody tr")
    newest = api("order=desc&limit=1")[0]
    expect(rows.first).to_have_attribute("data-id", newest["event_id"])
    expect(rows.first.locator(".c-position")).to_have_text(f"{newest['position']:,}")

    # Types are added one at a time (any name: nothing is split), and kept in the address.
    field = page.locator("#type-filter")
    field.fill("paid")
    field.press("Enter")
    expect(page).to_have_url(re.compile(r"#/shop/orders\?type=paid$"))
    page.locator("#type-filter").fill("shipped")
    page.locator("#type-filter").press("Enter")
    expect(page).to_have_url(re.compile(r"#/shop/orders\?type=paid&type=shipped$"))
    wanted = api("type=paid&type=shipped&order=desc")
    expect(rows).to_have_count(len(wanted))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == [e["event_id"] for e in wanted]
    expect(page.get_by_role("list", name="Showing events of any of these types").locator(".tag")).to_have_text(
        ["paid", "shipped"])
    shot(page, "types")

    # The live tail follows the same types.
    skipped = post(server.url, "/shop/orders/order-0003/cancelled", {"event": {"why": "test"}})["event_id"]
    shown = post(server.url, "/shop/orders/order-0004/shipped", {"event": {"carrier": "UPS"}})
    expect(page.locator(f'#tail-list li[data-id="{shown["event_id"]}"]')).to_be_visible()
    expect(page.locator(f'#tail-list li[data-id="{shown["event_id"]}"] .pos')).to_have_text(f"#{shown['position']:,}")
    expect(page.locator(f'#tail-list li[data-id="{skipped}"]')).to_have_count(0)

    # A chip's × removes its type; the event dialog shows the position.
    page.get_by_role("link", name="Remove type shipped").click()
    expect(page).to_have_url(re.compile(r"#/shop/orders\?type=paid$"))
    expect(rows).to_have_count(len(api("type=paid")))
    rows.first.get_by_role("link").click()
    dialog = page.get_by_role("dialog")
    paid = api("type=paid&order=desc&limit=1")[0]
    expect(dialog.locator(".facts")).to_contain_text(f"Position{paid['position']} in realm shop")
    page.keyboard.press("Escape")
    # Closing steps back in history, which the browser does asynchronously: wait for it, or the
    # step back could land after the next navigation and undo it.
    expect(dialog).to_have_count(0)
    expect(page).to_have_url(re.compile(r"#/shop/orders\?type=paid$"))

    # An entity reads as its history, oldest first, and counts its events.
    page.goto(server.url + "/_ui#/shop/orders/order-0042")
    expect(rows.first.locator(".c-version")).to_have_text("0")
    history = http().get(f"{server.url}/shop/orders/order-0042").json()["events"]
    expect(page.locator("#events-count")).to_have_text(f"{len(history)} in all")


def test_append_through_the_form(server: ProcessServer, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(server.url + "/_ui#/shop/orders/order-0007")
    page.locator("#append summary").click()
    expect(page.get_by_label("Realm", exact=True)).to_have_value("shop")
    expect(page.get_by_label("Entity", exact=True)).to_have_value("order-0007")
    page.locator("#append-type").fill("refunded")  # (the event list's type filter is "Type" too)
    body = page.get_by_label("Event (JSON)")
    result = page.locator("#append-result")

    # Invalid JSON is caught before anything is sent.
    body.fill('{"amount": ')
    expect(body).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#append-event-check")).to_contain_text("Not valid JSON")
    page.get_by_role("button", name="Append event").click()
    expect(result).to_contain_text("Not sent: the event is not valid JSON")

    # Valid, at the right expected version: stored, and told so.
    body.fill('{"amount": 12.50, "reason": "damaged"}')
    expect(body).to_have_attribute("aria-invalid", "false")
    page.get_by_label("Expected version").fill("0")
    page.get_by_role("button", name="Append event").click()
    expect(result).to_contain_text("Stored: version 1 of order-0007")
    stored = http().get(f"{server.url}/shop/orders/order-0007/refunded").json()["events"]
    assert [e["event"] for e in stored] == [{"amount": 12.5, "reason": "damaged"}]
    expect(page.locator("#tail-list li[data-id]")).to_have_count(1)  # the live tail saw it too

    # The same expected version again: a 409 problem+json, explained in plain words.
    page.get_by_label("Expected version").fill("0")
    page.keyboard.press("Control+Enter")
    expect(result).to_contain_text("version conflict")
    expect(result).to_contain_text("You expected version 0, but the entity is at version 1")
    expect(result).to_contain_text("use expected version 1")
    result.get_by_text("Server's answer (HTTP 409)").click()
    expect(result.locator("pre")).to_contain_text("urn:perhap:problem:version-conflict")
    shot(page, "append")
    # A version past 2^53 is shown as typed (and as the server answered), not rounded by Number.
    page.get_by_label("Expected version").fill("99999999999999999999")
    page.keyboard.press("Control+Enter")
    expect(result).to_contain_text("You expected version 99999999999999999999, but the entity is at version 1")


def test_live_tail_shows_new_events_and_resumes_after_a_drop(browser: Browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    db = f"sqlite:///{tmp_path}/live.db"
    server = ProcessServer(db, None, *SERVE_ARGS, cwd=tmp_path).start()
    context = browser.new_context(viewport={"width": 1360, "height": 860})
    errors: list[str] = []
    try:
        post(server.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 61.5}})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        streams: list[Request] = []
        page.on("request", lambda r: streams.append(r) if r.resource_type == "eventsource" else None)
        page.goto(server.url + "/_ui#/plant/sensors/boiler-1")
        expect(page.locator("table.events tbody tr")).to_have_count(1)
        pill = page.locator(".live .pill")
        expect(pill).to_have_text("Live")
        log = page.get_by_role("log", name="Live events, newest first")
        expect(log).to_have_attribute("aria-live", "polite")

        # An event appended through the API is on screen within a second.
        first = post(server.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 62.0}})["event_id"]
        expect(page.locator(f'#tail-list li[data-id="{first}"]')).to_be_visible(timeout=1_000)
        expect(page.locator("#tail-count")).to_have_text("1 new")

        # Paused: counted, held back, then shown on top when resumed.
        pause = page.locator("#tail-pause")
        pause.click()
        expect(pause).to_have_attribute("aria-pressed", "true")
        second = post(server.url, "/plant/sensors/boiler-1/alarm", {"event": {"level": "high"}})["event_id"]
        expect(page.locator("#tail-count")).to_have_text("2 new")
        expect(page.locator("#tail-pause")).to_have_text("Resume (1 waiting)")
        assert tail_rows(page) == [first]
        page.locator("#tail-pause").click()
        expect(page.locator("#tail-list li[data-id]")).to_have_count(2)
        assert tail_rows(page) == [second, first]
        expect(page.locator("figure.chart")).to_have_attribute(
            "aria-label", re.compile(r"^Event rate: 2 events in the last 5 minutes"))

        # The server goes away and comes back; events appended meanwhile arrive once each, because
        # the browser reconnects with Last-Event-ID.
        server.terminate()
        expect(pill).to_have_text(re.compile("Reconnecting"))
        server = ProcessServer(db, server.port, *SERVE_ARGS, cwd=tmp_path).start()
        later = [post(server.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 63 + i}})["event_id"]
                 for i in range(3)]
        expect(page.locator("#tail-list li[data-id]")).to_have_count(5, timeout=15_000)
        assert tail_rows(page) == [*reversed(later), second, first]
        expect(pill).to_have_text("Live")
        # It was the browser's own reconnect (EventSource), and it sent Last-Event-ID.
        deadline = time.monotonic() + 5
        while len(streams) < 2 and time.monotonic() < deadline:  # request events may trail the DOM
            page.wait_for_timeout(100)
        assert streams[-1].all_headers().get("last-event-id") == second
        shot(page, "live")

        if os.environ.get("PERHAP_UI_DOCS"):
            docs_screenshot(page, server)

        # Clear while paused: what waited behind Pause goes too, as the counter says 0.
        pause.click()
        post(server.url, "/plant/sensors/boiler-1/reading", {"event": {"celsius": 70}})
        expect(pause).to_have_text("Resume (1 waiting)")
        page.locator(".live").get_by_role("button", name="Clear").click()
        expect(page.locator("#tail-count")).to_have_text("0 new")
        expect(pause).to_have_text("Resume")
        pause.click()
        page.wait_for_timeout(500)  # a held-back row would be drawn within a frame
        expect(page.locator("#tail-list li[data-id]")).to_have_count(0)
    finally:
        context.close()
        server.terminate()
    assert not errors, f"JavaScript errors: {errors}"


def test_token_asked_on_401_kept_for_the_session_and_sent_on_streams(server: ProcessServer, page: Page) -> None:
    """The server here has no auth, so a route in the browser plays one that wants a token."""
    from playwright.sync_api import Route, expect

    seen: list[dict[str, str]] = []

    def guard(route: Route) -> None:
        request = route.request
        if "/_ui" in request.url:
            return route.continue_()
        seen.append(request.headers)
        if request.headers.get("authorization") != "Bearer s3cret":
            return route.fulfill(status=401, headers={"www-authenticate": "Bearer"},
                                 content_type="application/problem+json", body=UNAUTHORIZED)
        return route.continue_()

    page.route("**/*", guard)
    page.goto(server.url + "/_ui#/shop/orders/order-0099")
    dialog = page.get_by_role("dialog", name="Access token")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Bearer token").fill("s3cret")
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    assert page.evaluate("sessionStorage.getItem('perhap.token')") == "s3cret"
    assert page.evaluate("localStorage.length") == 0
    expect(page.locator("#token-button")).to_have_text("Token set")

    # EventSource cannot send the header: with a token the stream is read with fetch().
    expect(page.locator(".live .pill")).to_have_text("Live")
    assert any(h.get("accept") == "text/event-stream" and h.get("authorization") == "Bearer s3cret" for h in seen)
    new = post(server.url, "/shop/orders/order-0099/paid", {"event": {"amount": 297}})["event_id"]
    expect(page.locator(f'#tail-list li[data-id="{new}"]')).to_be_visible(timeout=2_000)

    # Phone-sized: one column, the hierarchy behind a "Browse" button.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.get_by_role("navigation", name="Hierarchy")).to_be_hidden()
    page.get_by_role("button", name="Browse").click()
    expect(page.get_by_role("navigation", name="Hierarchy")).to_be_visible()
    page.get_by_role("button", name="Browse").click()
    shot(page, "phone")



@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessServer, str]]:
    """`perhap serve --auth` with one write token on every realm, and three events in shop/orders."""
    from perhap.auth import add_token

    tmp = tmp_path_factory.mktemp("ui-auth")
    tokens = str(tmp / "tokens.json")
    token = add_token(tokens, "*", "write")[0]
    with ProcessServer(f"sqlite:///{tmp}/auth.db?synchronous=normal", None, "--auth", tokens, *SERVE_ARGS,
                       cwd=tmp) as s:
        for n in range(3):
            authorized_post(s.url, token, f"/shop/orders/order-{n}/placed", {"event": {"n": n}})
        yield s, token


def authorized_post(url: str, token: str, path: str, body: Any) -> dict[str, Any]:
    r = http().post(url + path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_token_given_after_a_cancelled_prompt_draws_the_view_again(
        auth_server: tuple[ProcessServer, str], page: Page) -> None:
    """A real server with --auth: the prompt cancelled, everything says why; a token then given
    with the Token button (or at the next prompt) reloads the lists and restarts the live tail."""
    from playwright.sync_api import expect

    server, token = auth_server
    streams: list[Request] = []
    page.on("request", lambda r: streams.append(r) if r.headers.get("accept") == "text/event-stream" else None)
    page.goto(server.url + "/_ui#/shop/orders")
    dialog = page.get_by_role("dialog", name="Access token")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    refused = "The server needs a token: set one with the Token button."
    events_status = page.locator("section[aria-labelledby=events-title] .list-status")
    expect(events_status).to_have_text(refused)
    expect(page.locator(".nav-status")).to_have_text(refused)
    expect(page.locator(".live .pill")).to_have_text(re.compile("^Stopped"))
    expect(dialog).to_be_hidden()  # one prompt for all the refused requests, not one each

    # The Token button: the view is drawn again with it, without a reload.
    page.locator("#token-button").click()
    dialog.get_by_label("Bearer token").fill(token)
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator("table.events tbody tr")).to_have_count(3)
    expect(page.locator("#sidebar .keys a")).to_have_text(["order-0", "order-1", "order-2"])
    expect(page.locator(".live .pill")).to_have_text("Live")
    new = authorized_post(server.url, token, "/shop/orders/order-1/paid", {"event": {"amount": 3}})["event_id"]
    expect(page.locator(f'#tail-list li[data-id="{new}"]')).to_be_visible()

    # The prompt: cancelled on one view; the next view asks again, and the token given there
    # brings back what the first refusal left behind too (the same sidebar, which no new view
    # would ask again).
    page.evaluate("sessionStorage.clear(); history.replaceState(null, '', '#/shop/orders?type=placed')")
    page.reload()
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator(".nav-status")).to_have_text(refused)
    expect(events_status).to_have_text(refused)
    expect(dialog).to_be_hidden()
    page.get_by_role("link", name="All types").click()
    expect(dialog).to_be_visible()
    dialog.get_by_label("Bearer token").fill(token)
    page.keyboard.press("Enter")
    expect(page.locator("table.events tbody tr")).to_have_count(4)
    expect(page.locator("#sidebar .keys a")).to_have_text(["order-0", "order-1", "order-2"])
    expect(page.locator(".live .pill")).to_have_text("Live")

    # With a token the stream is read with fetch(); a typed one starts at the scope's head too.
    page.locator("#type-filter").fill("placed")
    page.locator("#type-filter").press("Enter")
    expect(page).to_have_url(re.compile(r"#/shop/orders\?type=placed$"))
    expect(page.locator(".live .pill")).to_have_text("Live")
    settle(page, lambda: "type=placed" in streams[-1].url)
    query = parse_qs(urlsplit(streams[-1].url).query)
    assert query == {"type": ["placed"], "after_position": ["4"]}, streams[-1].url
    assert streams[-1].all_headers().get("authorization") == f"Bearer {token}"
    authorized_post(server.url, token, "/shop/orders/order-2/paid", {"event": {"amount": 9}})
    placed = authorized_post(server.url, token, "/shop/orders/order-3/placed", {"event": {"n": 3}})["event_id"]
    expect(page.locator("#tail-list li[data-id]")).to_have_count(1)
    assert tail_rows(page) == [placed]


def test_the_append_form_refuses_names_the_server_refuses(server: ProcessServer, page: Page) -> None:
    """"." and ".." above all: the browser would resolve them in the URL, and the POST would go to
    another address (/shop/orders/../t is /shop/t)."""
    from playwright.sync_api import expect

    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(server.url + "/_ui#/")
    page.locator("#append summary").click()
    field = {level: page.get_by_label(level.capitalize(), exact=True) for level in ("realm", "domain", "entity")}
    field["realm"].fill("forms")
    field["domain"].fill("notes")
    page.locator("#append-type").fill("noted")
    page.get_by_label("Event (JSON)").fill('{"n": 1}')
    result = page.locator("#append-result")
    send = page.get_by_role("button", name="Append event")

    for name in ("..", "."):
        field["entity"].fill(name)
        send.click()
        expect(result).to_contain_text(f"Not sent: entity cannot be “{name}”: in a web address it means")
        expect(field["entity"]).to_have_attribute("aria-invalid", "true")
        expect(field["entity"]).to_be_focused()
    page.locator("#append-type").fill("..")
    send.click()
    expect(result).to_contain_text("entity cannot be “.”")
    expect(result).to_contain_text("type cannot be “..”")

    # The server's other rules for names, checked the same way before anything is sent.
    page.locator("#append-type").fill("noted")
    field["entity"].fill("x" * 256)
    send.click()
    expect(result).to_contain_text("Not sent: entity is too long: at most 255 bytes of UTF-8, this one has 256.")
    field["entity"].fill("tab\there")
    field["realm"].fill("_private")
    send.click()
    expect(result).to_contain_text("realm cannot start with “_”")
    expect(result).to_contain_text("entity cannot contain control characters")
    page.wait_for_timeout(300)
    assert posts == []

    # Dots inside a name are fine, and "é" counts its two bytes: 127 of them are 254.
    field["realm"].fill("forms")
    for name in ("..hidden", "é" * 127):
        field["entity"].fill(name)
        send.click()
        expect(result).to_contain_text(f"Stored: version 0 of {name}")
    assert http().get(f"{server.url}/forms/notes/..hidden").json()["events"][0]["entity"] == "..hidden"


def test_keyboard_navigation_lands_on_the_new_views_heading(server: ProcessServer, page: Page) -> None:
    """The link that was pressed goes with the old view: focus moves to the new view's heading
    (not to <body>, the top of the page), so keyboard and screen reader users start there."""
    from playwright.sync_api import expect

    page.goto(server.url + "/_ui#/shop")
    expect(page.locator("#sidebar .keys a")).to_have_text(["customers", "orders"])
    page.locator("body").press("/")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("customers")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/shop/customers$"))
    heading = page.get_by_role("main").get_by_role("heading", level=1)
    expect(heading).to_have_text("customers")
    expect(heading).to_be_focused()
    expect(heading).to_have_attribute("tabindex", "-1")  # focusable by script, not a Tab stop

    # A breadcrumb link, then the consumer groups link.
    page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="shop").press("Enter")
    expect(page).to_have_url(re.compile(r"#/shop$"))
    expect(heading).to_have_text("shop")
    expect(heading).to_be_focused()
    page.locator("#groups-link").press("Enter")
    expect(heading).to_have_text("Consumer groups of shop")
    expect(heading).to_be_focused()

    # The back button too; then the types filter, drawn again with the view, keeps the focus (to
    # add another type).
    page.go_back()
    expect(heading).to_have_text("shop")
    expect(heading).to_be_focused()
    page.get_by_role("navigation", name="Hierarchy").get_by_role("link", name="orders").press("Enter")
    expect(heading).to_have_text("orders")
    expect(heading).to_be_focused()
    page.locator("#type-filter").fill("paid")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/shop/orders\?type=paid$"))
    expect(page.locator("#type-filter")).to_be_focused()

    # A link inside the event dialog: the dialog closes, and the new view's heading has the focus.
    # (The filtered page first: order-0042's one paid event, not its shipped one beside it.)
    paid_row = page.locator("table.events tbody tr", has_text="order-0042")
    expect(paid_row).to_have_count(1)
    paid_row.get_by_role("link").press("Enter")
    dialog = page.get_by_role("dialog")
    where = dialog.get_by_role("navigation", name="Where this event is").get_by_role("link", name="order-0042")
    where.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page).to_have_url(re.compile(r"#/shop/orders/order-0042$"))
    expect(heading).to_have_text("order-0042")
    expect(heading).to_be_focused()

    # The first view of a page load leaves the focus alone.
    page.reload()
    expect(heading).to_have_text("order-0042")
    expect(page.locator("body")).to_be_focused()


def test_a_typed_live_tail_starts_at_the_scopes_head(server: ProcessServer, page: Page) -> None:
    """No event of the type yet in 100,000: the stream starts after the whole scope's newest
    position (read without the type, one probe) rather than replaying the scope from the start."""
    from playwright.sync_api import expect

    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.resource_type == "eventsource" else None)
    reads: list[str] = []
    page.on("request", lambda r: reads.append(r.url) if r.resource_type == "fetch" else None)
    page.goto(server.url + "/_ui#/load/big?type=nosuch")
    expect(page.locator(".live .pill")).to_have_text("Live")
    settle(page, lambda: len(streams) == 1)
    expect(page.locator("p.empty")).to_have_text("No events of type “nosuch” here.")
    assert [parse_qs(urlsplit(u).query) for u in streams] == [{"after_position": ["100000"], "type": ["nosuch"]}]
    # The head it starts after: one event, newest first, without the type.
    assert f"{server.url}/load/big?limit=1&order=desc" in reads, reads

    # The realm, and an event of the type appended after the page opened: it shows, and only it.
    page.goto(server.url + "/_ui#/load?type=nosuch")
    expect(page.locator(".live .pill")).to_have_text("Live")
    settle(page, lambda: len(streams) == 2)
    assert parse_qs(urlsplit(streams[-1]).query) == {"after_position": ["100000"], "type": ["nosuch"]}
    post(server.url, "/load/other/x/tick", {"event": {"n": -1}})
    found = post(server.url, "/load/other/x/nosuch", {"event": {"n": -2}})
    expect(page.locator("#tail-list li[data-id]")).to_have_count(1)
    assert tail_rows(page) == [found["event_id"]]
    expect(page.locator("#tail-list li .pos")).to_have_text(f"#{found['position']:,}")

GIFTS = "gift cards?#%"  # a domain name that must be encoded in the address's query


def realm_across_domains(url: str, realm: str) -> list[dict[str, Any]]:
    """A new realm with events of two domains, one of them with an odd name: placed (orders), issued
    (the odd one), paid (orders), in that order."""
    post(url, f"/{realm}/orders/o-1/placed", {"event": {"total": 30}})
    post(url, f"/{realm}/gift%20cards%3F%23%25/card-9/issued", '{"event": {"amount": 12345678901234567890}}')
    post(url, f"/{realm}/orders/o-1/paid", {"event": {"amount": 30}})
    return http().get(f"{url}/{realm}").json()["events"]  # type: ignore[no-any-return]


def test_an_event_opens_over_a_realms_view_and_again_after_a_reload(server: ProcessServer, page: Page) -> None:
    """A realm's view lists the events of all its domains: a row opens its event there too (it only
    changed the address before), the address says the event's domain, and a reload opens it again."""
    from playwright.sync_api import expect

    placed, issued, paid = realm_across_domains(server.url, "mall")
    page.goto(server.url + "/_ui#/mall")
    rows = page.locator("table.events tbody tr")
    expect(rows).to_have_count(3)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == [e["event_id"] for e in (paid, issued, placed)]
    dialog = page.get_by_role("dialog")
    title = dialog.get_by_role("heading", level=2)
    facts = dialog.locator(".facts")
    event_json = dialog.get_by_role("group", name="Event JSON")

    # A click anywhere on a row: the event of the domain with the odd name.
    rows.nth(1).locator(".c-data").click()
    expect(dialog).to_be_visible()
    expect(page).to_have_url(re.compile(rf"#/mall\?event={issued['event_id']}&domain=gift\+cards%3F%23%25$"))
    expect(title).to_have_text("issued · version 0")
    expect(facts).to_contain_text(f"Event id{issued['event_id']}")
    expect(facts).to_contain_text("Version0 of entity card-9")
    expect(dialog.get_by_role("navigation", name="Where this event is").get_by_role("link")).to_have_text(
        ["mall", GIFTS, "card-9", "issued"])
    expect(event_json).to_contain_text('"amount": 12345678901234567890')
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page).to_have_url(re.compile(r"#/mall$"))

    # The keyboard: Enter on a row's link, Escape, and the focus is back on that link.
    link = rows.nth(2).get_by_role("link")
    link.focus()
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    expect(page).to_have_url(re.compile(rf"#/mall\?event={placed['event_id']}&domain=orders$"))
    expect(title).to_have_text("placed · version 0")
    expect(facts).to_contain_text(f"Event id{placed['event_id']}")
    expect(event_json).to_contain_text('"total": 30')
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page).to_have_url(re.compile(r"#/mall$"))
    expect(link).to_be_focused()
    expect(rows).to_have_count(3)  # the list underneath was not drawn again

    # Open again, then reload: the address alone opens it, over the realm's view.
    page.keyboard.press("Enter")
    expect(title).to_have_text("placed · version 0")
    page.reload()
    expect(dialog).to_be_visible()
    expect(title).to_have_text("placed · version 0")
    expect(facts).to_contain_text(f"Event id{placed['event_id']}")
    expect(event_json).to_contain_text('"total": 30')
    expect(page.get_by_role("main").get_by_role("heading", level=1)).to_have_text("mall")
    expect(rows).to_have_count(3)
    shot(page, "realm-event")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page).to_have_url(re.compile(r"#/mall$"))
    rows.nth(0).get_by_role("link").press("Enter")  # the view still works: the next event opens
    expect(title).to_have_text("paid · version 1")
    page.keyboard.press("Escape")
    expect(rows.nth(0).get_by_role("link")).to_be_focused()


def test_every_list_across_domains_opens_its_events(server: ProcessServer, page: Page) -> None:
    """Beside the realm's list: its live tail, a typed realm view, an address without the domain
    (looked up in the realm), the id alone in the Go to event box, and a group's parked events."""
    from playwright.sync_api import expect

    placed, issued, paid = realm_across_domains(server.url, "arcade")
    dialog = page.get_by_role("dialog")
    title = dialog.get_by_role("heading", level=2)

    def closes_back_to(address: str) -> None:
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)
        expect(page).to_have_url(re.compile(re.escape(address) + "$"))

    # A typed realm view, then its live tail: an event appended after the page opened.
    page.goto(server.url + "/_ui#/arcade?type=issued&type=refunded")
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    page.locator("table.events tbody tr").get_by_role("link").click()
    expect(page).to_have_url(re.compile(
        rf"#/arcade\?type=issued&type=refunded&event={issued['event_id']}&domain=gift\+cards%3F%23%25$"))
    expect(title).to_have_text("issued · version 0")
    closes_back_to("#/arcade?type=issued&type=refunded")
    expect(page.locator(".live .pill")).to_have_text("Live")
    refund = post(server.url, "/arcade/orders/o-1/refunded", {"event": {"amount": 30}})
    page.locator(f'#tail-list li[data-id="{refund["event_id"]}"] a').click()
    expect(page).to_have_url(re.compile(rf"event={refund['event_id']}&domain=orders$"))
    expect(title).to_have_text("refunded · version 2")
    closes_back_to("#/arcade?type=issued&type=refunded")

    # An address that does not say the domain (as the realm's rows wrote before): looked up.
    page.goto(server.url + "/_ui#/arcade")
    page.goto(server.url + f"/_ui#/arcade?event={paid['event_id']}")
    expect(title).to_have_text("paid · version 1")
    expect(dialog.get_by_role("group", name="Event JSON")).to_contain_text('"amount": 30')
    closes_back_to("#/arcade")
    page.goto(server.url + "/_ui#/arcade?event=00000000-0000-7000-8000-000000000000")
    expect(dialog.get_by_role("alert")).to_contain_text("Not found")
    closes_back_to("#/arcade")
    # The id alone in the Go to event box, over the realm's view.
    page.get_by_role("textbox", name="Go to event").fill(issued["event_id"])
    page.keyboard.press("Enter")
    expect(title).to_have_text("issued · version 0")
    closes_back_to("#/arcade")

    # A group's parked events open over the group's page, which keeps its ticked boxes.
    http().put(f"{server.url}/_groups/arcade/auditor", json={}).raise_for_status()
    leased = http().get(f"{server.url}/_groups/arcade/auditor/events", params={"consumer": "w1", "max": 1}).json()
    first = leased["events"][0]["event_id"]
    http().post(f"{server.url}/_groups/arcade/auditor/nack",
                json={"consumer": "w1", "event_ids": [first], "action": "park"}).raise_for_status()
    page.goto(server.url + "/_ui#/_groups/arcade/auditor")
    parked_row = page.locator(f'#parked tr[data-id="{first}"]')
    parked_row.get_by_role("checkbox").check()
    parked_row.get_by_role("link").press("Enter")
    expect(page).to_have_url(re.compile(rf"#/_groups/arcade/auditor\?event={first}&domain=orders$"))
    expect(title).to_have_text("placed · version 0")
    expect(dialog.locator(".facts")).to_contain_text(f"Event id{placed['event_id']}")
    closes_back_to("#/_groups/arcade/auditor")
    expect(parked_row.get_by_role("checkbox")).to_be_checked()
    expect(parked_row.get_by_role("link")).to_be_focused()


def docs_screenshot(page: Page, server: ProcessServer) -> None:
    """The picture in docs/ui.md: a small plant's sensors domain, newest first, after ~25 s of
    events at a varying rate (so the chart has something to show)."""
    from playwright.sync_api import expect

    entities = ["boiler-1", "boiler-2", "pump-3", "chiller-4"]

    def reading(n: int) -> None:
        kind = "alarm" if n % 11 == 5 else "reading"
        body = {"event": {"celsius": round(55 + (n * 37 % 150) / 10, 1), "pump": "on" if n % 3 else "off"},
                "meta": {"source": f"plc-{n % 4 + 1}"}}
        if kind == "alarm":
            body["event"] = {"level": "high", "threshold": 70}
        post(server.url, f"/plant/sensors/{entities[n % 4]}/{kind}", body)

    for n in range(40):
        reading(n)
    page.goto(server.url + "/_ui#/plant/sensors?order=newest")
    expect(page.locator(".live .pill")).to_have_text("Live")
    n = 40
    for second in range(25):
        for _ in range(1 + (second * 7) % 5):
            reading(n)
            n += 1
        time.sleep(0.9)
    page.wait_for_timeout(2_500)
    page.mouse.move(0, 0)
    page.screenshot(path=str(DOCS_SHOT))
