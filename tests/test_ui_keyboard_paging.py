"""The web UI's paging buttons by keyboard, the Go to event box given the UI's own event links, and
an entity named like an event id: Playwright driving Debian's Chromium against `perhap serve` on a
temporary SQLite store, as in tests/test_ui.py (the browser and page fixtures are tests/browser.py's).

- "Load more" / "Show older" (events) and the sidebar's "Load more" (keys) keep the keyboard focus
  while a page loads, so Enter again loads the next one; after the last page the focus goes to the
  first row or name it loaded. A page in flight makes the button busy, and presses are ignored.
- The link "Copy link" gives (http://host/_ui#/shop/orders?event=<id>), pasted into "Go to event",
  opens that event; the forms that worked before still do.
- GET /{realm}/{domain}/{name} answers the event when the name is an event id of that domain: the
  entity's page says so in plain words and offers the event, never "HTTP undefined".
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.servers import ProcessServer
from tests.test_ui import SERVE_ARGS, post

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = pytest.mark.timeout(120)

BIG = 250  # events of shop/orders/order-big: three pages of 100
TYPES = 450  # event types of shop/types/ent: three pages of 200 keys
DOMAINS = 210  # domains of realm many: two pages of 200 keys


class Seeded:
    def __init__(self, server: ProcessServer) -> None:
        self.url = server.url
        self.big: list[str] = []  # event ids of order-big, oldest first
        self.made = ""  # the first event of shop/uu/first, and the name of entity shop/uu/<made>


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("ui-paging")
    with ProcessServer(f"sqlite:///{tmp}/ui.db?synchronous=normal", None, *SERVE_ARGS, cwd=tmp) as s:
        seeded = Seeded(s)
        placed = [{"type": "placed", "event": {"n": n}} for n in range(BIG)]
        got = post(s.url, "/shop/orders/order-big", {"events": placed})
        seeded.big = [e["event_id"] for e in got["events"]]
        post(s.url, "/shop/types/ent", {"events": [{"type": f"type-{n:03d}", "event": n} for n in range(TYPES)]})
        for n in range(DOMAINS):
            post(s.url, f"/many/dom-{n:03d}/e/t", {"event": n})
        seeded.made = post(s.url, "/shop/uu/first/made", {"event": 1})["event_id"]
        post(s.url, f"/shop/uu/{seeded.made}/made", {"event": 2})
        yield seeded


class Held:
    """Requests of the page matching a pattern wait (in .routes) until released, once armed.

    The route is set when the test starts and armed just before the press that should be held:
    a route set only then was, once in CI on a loaded machine, not in force for the request the
    press made (it went through unheld and nothing was ever routed)."""

    def __init__(self, page: Page, pattern: str) -> None:
        self.page = page
        self.pattern = re.compile(pattern)
        self.routes: list[Route] = []
        self.armed = False
        page.route(self.pattern, self._hold)

    def _hold(self, route: Route) -> None:
        if self.armed:
            self.routes.append(route)
        else:
            route.continue_()

    def urls(self) -> list[str]:
        return [r.request.url for r in self.routes]

    def settled(self) -> list[str]:
        """The held requests once the first has been routed (a condition with a deadline: the
        route callback runs when Playwright dispatches it, later on a loaded machine), and a
        moment more for a second one that should not come."""
        deadline = time.monotonic() + 30
        while not self.routes and time.monotonic() < deadline:
            self.page.wait_for_timeout(20)
        self.page.wait_for_timeout(200)
        return self.urls()

    def release(self) -> None:
        for r in self.routes:
            r.continue_()
        self.page.unroute(self.pattern)


@pytest.mark.parametrize(("address", "label"), [
    ("#/shop/orders/order-big", "Load more"),  # an entity: oldest first
    ("#/shop/orders", "Show older"),  # a domain: newest first
])
def test_events_paging_keeps_the_focus_and_enter_loads_the_next_page(
        shop: Seeded, page: Page, address: str, label: str) -> None:
    from playwright.sync_api import expect

    held = Held(page, r"/shop/orders.*following=")
    page.goto(shop.url + "/_ui" + address)
    rows = page.locator("table.events tbody tr")
    expect(rows).to_have_count(100)
    more = page.locator("section .list-foot button.more")
    expect(more).to_have_text(label)

    # Enter: the next page, and the focus stays on the button (not <body>), visible.
    more.focus()
    page.keyboard.press("Enter")
    expect(rows).to_have_count(200)
    expect(page.locator(".list-status")).to_have_text("200 events shown, more to load")
    expect(more).to_be_visible()
    expect(more).to_be_focused()
    assert page.evaluate("document.activeElement.matches(':focus-visible')")

    # Enter again: the last page. While it is on its way the button is busy and keeps the focus,
    # and a third Enter does not ask for it again; then the button goes, and the focus moves to the
    # first row it loaded.
    held.armed = True
    page.keyboard.press("Enter")
    expect(more).to_have_attribute("aria-busy", "true")
    expect(more).to_be_focused()
    page.keyboard.press("Enter")
    assert len(held.settled()) == 1, held.urls()
    held.release()
    expect(rows).to_have_count(BIG)
    expect(more).to_be_hidden()
    expect(more).not_to_have_attribute("aria-busy", "true")
    expect(rows.nth(200).get_by_role("link")).to_be_focused()
    page.wait_for_timeout(200)
    expect(rows).to_have_count(BIG)


def test_sidebar_load_more_keeps_the_focus_and_enter_loads_the_next_page(shop: Seeded, page: Page) -> None:
    from playwright.sync_api import expect

    keys = page.locator("#sidebar .keys li")
    more = page.locator("#sidebar button.more")

    # An entity's 450 event types: 200, 400, then 450.
    page.goto(shop.url + "/_ui#/shop/types/ent")
    expect(keys).to_have_count(200)
    more.focus()
    page.keyboard.press("Enter")
    expect(keys).to_have_count(400)
    expect(more).to_be_focused()
    page.keyboard.press("Enter")
    expect(keys).to_have_count(TYPES)
    expect(more).to_be_hidden()
    expect(keys.nth(400).get_by_role("link")).to_be_focused()
    expect(keys.nth(400)).to_have_text("type-400")

    # A realm's 210 domains: the second page is the last, and the focus lands on its first name.
    held = Held(page, r"/many/keys\?after=")
    page.goto(shop.url + "/_ui#/many")
    expect(keys).to_have_count(200)
    held.armed = True
    more.focus()
    page.keyboard.press("Enter")
    expect(more).to_be_focused()
    expect(more).to_have_attribute("aria-busy", "true")
    page.keyboard.press("Enter")  # ignored: a page is on its way
    assert len(held.settled()) == 1, held.urls()
    held.release()
    expect(keys).to_have_count(DOMAINS)
    expect(more).to_be_hidden()
    expect(keys.nth(200).get_by_role("link")).to_be_focused()
    expect(keys.nth(200)).to_have_text("dom-200")


def test_go_to_event_takes_the_uis_own_event_link(shop: Seeded, page: Page) -> None:
    from playwright.sync_api import expect

    event_id = shop.big[7]
    dialog = page.locator("#event-dialog")
    title = page.locator("#event-title")
    box = page.locator("#jump-input")
    status = page.locator("#jump-status")

    # The link "Copy link" gives.
    page.goto(shop.url + f"/_ui#/shop/orders?event={event_id}")
    expect(title).to_have_text("placed · version 7")
    dialog.get_by_role("button", name=re.compile("link to this event", re.I)).click()
    link = page.evaluate("navigator.clipboard.readText()")
    assert link == f"{shop.url}/_ui#/shop/orders?event={event_id}"

    def go(text: str, version: int, where: str) -> None:
        page.goto(shop.url + "/_ui#/")  # no realm in view
        expect(page.get_by_role("heading", level=1)).to_have_text("Event store")
        box.fill(text)
        box.press("Enter")
        expect(status).to_have_text("")
        expect(title).to_have_text(f"placed · version {version}")
        assert page.url.split("#", 1)[1] == f"/{where}?event={shop.big[version]}", (text, page.url)

    go(link, 7, "shop/orders")
    go(f"/_ui#/shop/orders?event={event_id}", 7, "shop/orders")  # without the host
    # Other views' addresses with an event open: an entity's, a realm's (with and without domain).
    go(f"{shop.url}/_ui#/shop/orders/order-big?order=oldest&event={shop.big[3]}", 3, "shop/orders")
    go(f"{shop.url}/_ui#/shop?event={shop.big[4]}&domain=orders", 4, "shop/orders")
    go(f"{shop.url}/_ui#/shop?event={shop.big[5]}", 5, "shop")  # looked up in the realm

    # What worked before still does: realm/domain/id, the API URL (or Location path), a bare id.
    go(f"shop/orders/{shop.big[1]}", 1, "shop/orders")
    go(f"{shop.url}/shop/orders/{shop.big[2]}", 2, "shop/orders")
    go(f"/shop/orders/{shop.big[6]}", 6, "shop/orders")
    page.goto(shop.url + "/_ui#/shop/orders")
    box.fill(shop.big[8])
    box.press("Enter")
    expect(title).to_have_text("placed · version 8")

    # Nothing to go on: told what to type.
    page.goto(shop.url + "/_ui#/")
    box.fill(f"{shop.url}/_ui#/?event={event_id}")
    box.press("Enter")
    expect(status).to_contain_text("Type realm/domain/event-id")
    expect(dialog).to_be_hidden()


def test_an_entity_named_like_an_event_id_says_so_in_plain_words(shop: Seeded, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(shop.url + f"/_ui#/shop/uu/{shop.made}")
    expect(page.get_by_role("heading", level=1)).to_have_text(shop.made)
    status = page.locator(".list-status")
    expect(status).to_contain_text(f"“{shop.made}” is also the id of an event in domain uu")
    expect(status).to_contain_text("the API answers that one event")
    expect(page.locator(".tail-note")).to_contain_text("is also the id of an event")
    assert "undefined" not in page.locator("#main").inner_text()

    # The event it answers opens from the status line.
    status.get_by_role("link", name="Open that event").click()
    expect(page.locator("#event-title")).to_have_text("made · version 0")
    assert page.url.endswith(f"#/shop/uu/{shop.made}?event={shop.made}")
    expect(page.get_by_role("dialog").get_by_role("navigation", name="Where this event is")).to_contain_text("first")
