"""The web UI's consumer groups pages (/_ui#/_groups/{realm}[/{group}]).

Without a browser: the page's files are served, every module of the UI parses (node), and the
page asks for exactly the group endpoints of the HTTP API. In a browser (Debian's Chromium driven
by Playwright, as in tests/test_ui.py): real groups of a real `perhap serve --auth` on SQLite,
leased, acknowledged and parked through the API, shown as the API describes them; a parked event
replayed from the page (refused to a read token, done with a write token); event data and
consumer names shown as text, never as markup.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.servers import ProcessServer
from tests.test_ui import SERVE_ARGS, shot

if TYPE_CHECKING:
    from playwright.sync_api import Page

STATIC = Path(__file__).parent.parent / "perhap" / "ui" / "static"
# Event data and a consumer id that would be markup if the page ever parsed them as HTML.
POISON = {"note": '<img src=x onerror="window.pwned = 1">', "total": 3}
HTML_CONSUMER = "<b>w2"

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- the server and its groups


class Api:
    """The HTTP API with one token, for setting up what the page then shows."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, body: Any = None, expect: int = 200, **params: Any) -> Any:
        r = self.http.request(method, path, params=params or None,
                              content=None if body is None else json.dumps(body))
        assert r.status_code == expect, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    def append(self, entity: str, type_: str, event: Any, domain: str = "orders") -> str:
        return self.call("POST", f"/shop/{domain}/{entity}/{type_}", {"event": event}, expect=201)["event_id"]  # type: ignore[no-any-return]

    def group(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/_groups/shop/{name}")  # type: ignore[no-any-return]

    def lease(self, name: str, consumer: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/_groups/shop/{name}/events", consumer=consumer, max=100)["events"]  # type: ignore[no-any-return]


class Seeded:
    def __init__(self, server: ProcessServer, tokens: dict[str, str], held: str) -> None:
        self.url = server.url
        self.tokens = tokens
        self.held = held  # the event leased to HTML_CONSUMER
        self.api = Api(server.url, tokens["write"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """`perhap serve --auth`, with a read and a write token on realm shop and two groups:

    - projector (orders, types placed and paid): one event acknowledged, the poison event parked
      by a nack, one lease held by w1 and one by a consumer whose id looks like markup;
    - auditor (the whole realm): never consumed.
    """
    from perhap.auth import add_token

    where = tmp_path_factory.mktemp("groups-ui")
    tokens_file = str(where / "tokens.json")
    tokens = {permission: add_token(tokens_file, "shop", permission)[0] for permission in ("read", "write")}
    with ProcessServer(f"sqlite:///{where}/groups.db?synchronous=normal", None, "--auth", tokens_file,
                       *SERVE_ARGS, cwd=where) as s:
        api = Api(s.url, tokens["write"])
        poison = api.append("order-1", "placed", POISON)
        api.append("order-2", "placed", {"total": 5})
        api.append("order-3", "placed", {"total": 8})
        api.append("order-1", "paid", {"amount": 3})
        api.append("order-1", "shipped", {"carrier": "DHL"})  # not of the group's types
        api.append("sku-9", "reserved", {"n": 1}, domain="stock")  # not of the group's domain
        api.call("PUT", "/_groups/shop/projector", {"domain": "orders", "types": ["placed", "paid"],
                                                    "ack_timeout": 600, "max_deliveries": 3}, expect=201)
        api.call("PUT", "/_groups/shop/auditor", {}, expect=201)

        first = {e["event_id"]: e for e in api.lease("projector", "w1")}
        assert poison in first
        done = next(i for i, e in first.items() if e["entity"] == "order-2")
        api.call("POST", "/_groups/shop/projector/ack", {"consumer": "w1", "event_ids": [done]})
        api.call("POST", "/_groups/shop/projector/nack", {"consumer": "w1", "event_ids": [poison], "action": "park"})
        # Parked, order-1's first event no longer holds back its next one: the other consumer gets it.
        held = api.lease("projector", HTML_CONSUMER)
        assert [e["type"] for e in held] == ["paid"]
        yield Seeded(s, tokens, held[0]["event_id"])


def with_token(page: Page, token: str) -> None:
    """The token as the token dialog would leave it, before the page's scripts run."""
    page.add_init_script(f"sessionStorage.setItem('perhap.token', {json.dumps(token)})")


# --------------------------------------------------------------------------- without a browser


def test_the_groups_page_is_served_and_wired_into_the_app(server: Seeded) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.get("/_ui/groups.js")  # open, like every file of the UI, even with --auth
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert r.text == (STATIC / "groups.js").read_text()
        app = http.get("/_ui/app.js").text
        assert "from './groups.js'" in app
        # The hash route needs no server route, but a path under /_ui without a dot is the page too.
        assert "<title>perhap</title>" in http.get("/_ui/_groups/shop").text


def test_every_module_parses() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("this test needs Node.js to parse the UI's modules: apt-get install -y nodejs")

    def check(source: str) -> subprocess.CompletedProcess[str]:
        # Read as a module from stdin: `node --check file.js` can pass a file with a syntax error
        # when node guesses the file is a module (seen with Node 20).
        return subprocess.run([node, "--input-type=module", "--check"], input=source, capture_output=True,
                              text=True, timeout=60)

    assert check("import { a } from './b.js';\nexport const x = (;\n").returncode != 0  # the check can fail
    for module in sorted(STATIC.glob("*.js")):
        out = check(module.read_text())
        assert out.returncode == 0, f"{module.name}: {out.stderr}"


def test_the_page_uses_the_group_endpoints_of_the_api() -> None:
    api = (STATIC / "api.js").read_text()
    groups = (STATIC / "groups.js").read_text()
    # One path builder per endpoint, each name a segment of its own (percent-encoded).
    assert "path('_groups', realm)" in api  # GET /_groups/{realm}
    assert "path('_groups', realm, name)" in api  # GET /_groups/{realm}/{group}
    assert "path('_groups', realm, name, 'parked')" in api  # GET …/parked
    assert "path('_groups', realm, name, 'parked', 'replay')" in api  # POST …/parked/replay
    assert re.search(r"method: 'POST', body: eventIds \? JSON\.stringify\(\{ event_ids: eventIds \}\)", api)
    for name in ("groups", "group", "parked", "replayParked"):
        assert re.search(rf"export const {name} = ", api), name
    assert "import { explain, group, groups, parked, replayParked" in groups
    # It shows what the group object holds, by the API's names.
    for field in ("lag", "in_flight", "parked", "checkpoint", "head", "consumers", "last_seen",
                  "parked_at", "reason", "delivery"):
        assert re.search(rf"\.{field}\b", groups), field


# --------------------------------------------------------------------------- in a browser


def test_groups_of_a_realm_a_group_and_a_replay(server: Seeded, page: Page) -> None:
    from playwright.sync_api import expect

    api, tokens = server.api, server.tokens
    asked: list[tuple[str, str]] = []
    page.on("request", lambda r: asked.append((r.method, r.url.split(server.url, 1)[1].split("?")[0]))
            if "/_groups/" in r.url else None)

    # The realm's page, with the read token the dialog asks for, links to its groups.
    page.goto(server.url + "/_ui#/shop")
    dialog = page.get_by_role("dialog", name="Access token")
    dialog.get_by_label("Bearer token").fill(tokens["read"])
    page.keyboard.press("Enter")
    page.get_by_role("link", name="Consumer groups").click()
    expect(page).to_have_url(re.compile(r"#/_groups/shop$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Consumer groups of shop")

    # One row a group, sorted by name, with the figures the API gives.
    names = [g["name"] for g in api.call("GET", "/_groups/shop")["groups"]]
    assert names[:2] == ["auditor", "projector"]  # (a later test adds one)
    rows = page.locator("tr[data-group]")
    expect(rows).to_have_count(len(names))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.group)") == names
    g = api.group("projector")
    # Of the four events of its scope, one is acknowledged and one parked; two are leased.
    assert (g["lag"], g["in_flight"], g["parked"]) == (2, 2, 1), g
    row = page.locator('tr[data-group="projector"]')
    expect(row.locator(".c-scope a")).to_have_text("domain orders")
    expect(row.locator(".c-scope .tag")).to_have_text(["paid", "placed"])
    expect(row.locator(".c-lag")).to_have_text(f"{g['lag']:,}")
    expect(row.locator(".c-in-flight")).to_have_text("2")
    expect(row.locator(".c-parked")).to_have_text("1")
    expect(row.locator(".c-checkpoint")).to_have_text(f"{g['checkpoint']:,} / {g['head']:,}")
    assert sorted(c["consumer"] for c in g["consumers"]) == sorted(["w1", HTML_CONSUMER])
    expect(row.locator(".consumer")).to_have_text([c["consumer"] for c in g["consumers"]])
    auditor = page.locator('tr[data-group="auditor"]')
    expect(auditor.locator(".c-scope")).to_have_text("whole realm · every type")
    expect(auditor.locator(".c-consumers")).to_have_text("none yet")
    assert page.locator("main b").count() == 0  # the consumer id is text
    shot(page, "groups")

    # The group: progress, consumers, and the parked event as text (no element made from it).
    row.get_by_role("link", name="projector").click()
    expect(page).to_have_url(re.compile(r"#/_groups/shop/projector$"))
    stats = page.locator(".stats")
    expect(stats.locator(".stat", has_text="Parked").locator("dd")).to_have_text("1")
    expect(stats.locator(".stat", has_text="Lag").locator("dd")).to_have_text(f"{g['lag']:,}")
    expect(page.locator("tr[data-consumer]")).to_have_count(2)
    parked_rows = page.locator("#parked tbody tr")
    expect(parked_rows).to_have_count(1)
    parked = api.call("GET", "/_groups/shop/projector/parked")["events"]
    assert [(e["entity"], e["reason"], e["delivery"]) for e in parked] == [("order-1", "nack", 1)]
    expect(parked_rows.first).to_have_attribute("data-id", parked[0]["event_id"])
    expect(parked_rows.first.locator(".c-data")).to_contain_text('<img src=x onerror=')
    expect(parked_rows.first.locator(".c-reason")).to_have_text("parked by a consumer")
    assert page.locator("#parked img").count() == 0 and page.evaluate("window.pwned") is None
    shot(page, "group")

    # Replaying is a write: the read token is refused, in plain words, and nothing changes.
    result = page.locator("#replay-result")
    page.get_by_role("checkbox", name=re.compile("Select parked event")).check()
    page.get_by_role("button", name="Replay selected (1)").click()
    expect(result).to_contain_text("not allowed")
    assert api.group("projector")["parked"] == 1

    # With the write token (set with the Token button) it is done, and the page refreshes. (The
    # other consumer finishes order-1's next event first: while it is leased, order-1's replayed
    # event may not be, as an entity has one event in flight at most.)
    api.call("POST", "/_groups/shop/projector/ack", {"consumer": HTML_CONSUMER, "event_ids": [server.held]})
    page.locator("#token-button").click()
    dialog.get_by_label("Bearer token").fill(tokens["write"])
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Replay selected (1)").click()
    expect(result).to_contain_text("Replayed 1 event")
    expect(page.locator("#parked .empty")).to_have_text(re.compile("No parked events"))
    expect(stats.locator(".stat", has_text="Parked").locator("dd")).to_have_text("0")
    again = api.lease("projector", "w3")
    assert [(e["event_id"], e["delivery"]) for e in again] == [(parked[0]["event_id"], 1)]

    # The page keeps itself current: a new event of the scope shows in the lag without a reload.
    api.append("order-4", "placed", {"total": 1})
    lag = api.group("projector")["lag"]
    expect(stats.locator(".stat", has_text="Lag").locator("dd")).to_have_text(f"{lag:,}", timeout=15_000)
    expect(page.locator('tr[data-consumer="w3"]')).to_have_count(1, timeout=15_000)

    used = set(asked)
    assert {("GET", "/_groups/shop"), ("GET", "/_groups/shop/projector"), ("GET", "/_groups/shop/projector/parked"),
            ("POST", "/_groups/shop/projector/parked/replay")} <= used, used


def test_replay_all_and_an_unknown_group(server: Seeded, page: Page) -> None:
    from playwright.sync_api import expect

    api = server.api
    # Park two events of a group of its own, by nacks that retry until max_deliveries.
    api.call("PUT", "/_groups/shop/replayer", {"domain": "stock", "max_deliveries": 1}, expect=201)
    api.append("sku-10", "reserved", {"n": 2}, domain="stock")
    leased = [e["event_id"] for e in api.lease("replayer", "w1")]
    assert len(leased) == 2
    assert api.call("POST", "/_groups/shop/replayer/nack", {"consumer": "w1", "event_ids": leased}) == \
        {"retried": 0, "parked": 2}

    with_token(page, server.tokens["write"])
    page.goto(server.url + "/_ui#/_groups/shop/replayer")
    parked_rows = page.locator("#parked tbody tr")
    expect(parked_rows).to_have_count(2)
    expect(parked_rows.locator(".c-reason")).to_have_text(["max deliveries", "max deliveries"])
    page.get_by_role("button", name="Replay all").click()
    expect(page.locator("#replay-result")).to_contain_text("Replayed 2 events")
    expect(page.locator("#parked .empty")).to_be_visible()
    assert api.group("replayer")["parked"] == 0

    # A group that does not exist: the API's 404, told on the page.
    page.goto(server.url + "/_ui#/_groups/shop/nope")
    expect(page.locator(".refreshed")).to_contain_text("Not found")
    # The breadcrumb leads back to the realm's groups.
    page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Consumer groups").click()
    expect(page.locator("tr[data-group]")).to_have_count(len(api.call("GET", "/_groups/shop")["groups"]))
