"""`perhap group create|list|stats|parked|replay|delete` through the entry point against a real
`perhap serve` on SQLite: output for people and with --json, one-line errors, usage errors, help
with examples, and the group commands' reference in docs/cli.md generated from the parser.

Regenerate that reference after changing the parser: ``python -m tests.test_groups_cli``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from perhap import Client, InvalidInput
from perhap.client import NotFound
from tests.servers import ProcessServer
from tests.test_cli import one_error_line, render_help, run_cli, subcommands

DOCS = Path(__file__).parent.parent / "docs" / "cli.md"
BEGIN, END = "<!-- BEGIN GENERATED: perhap group --help -->", "<!-- END GENERATED: perhap group --help -->"
ACTIONS = ["create", "list", "stats", "parked", "replay", "delete"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    workdir = tmp_path_factory.mktemp("groups-cli")
    with ProcessServer(f"sqlite:///{workdir / 'groups.db'}", None, cwd=workdir) as s:
        yield s


def ok(*args: str) -> str:
    r = run_cli(*args)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    return r.stdout.decode()


def test_create_list_stats_delete(server: ProcessServer, realm: str) -> None:
    url = ("--url", server.url)
    out = ok("group", "create", realm, "projector", "--domain", "orders", "--type", "placed", "--type", "paid",
             "--ack-timeout", "10", "--max-deliveries", "3", "--max-in-flight", "50", *url)
    assert out == f"group {realm}/projector: {realm}/orders type paid, placed, from the beginning\n"
    # Again with the same settings: the same group, as JSON this time.
    group = orjson.loads(ok("group", "create", realm, "projector", "--domain", "orders", "--type", "paid",
                            "--type", "placed", "--ack-timeout", "10", "--max-deliveries", "3",
                            "--max-in-flight", "50", "--json", *url))
    assert (group["name"], group["domain"], group["ack_timeout"], group["max_deliveries"],
            group["max_in_flight"]) == ("projector", "orders", 10, 3, 50)
    # Other settings: the server's 409, one line, exit 1.
    r = run_cli("group", "create", realm, "projector", "--domain", "orders", *url)
    line = one_error_line(r)
    assert r.returncode == 1 and "409" in line and "types" in line, line
    ok("group", "create", realm, "all", "--start", "end", *url)
    with Client(server.url) as c:
        for i in range(3):
            c.append(realm, "orders", f"o{i}", "placed", {"i": i})
        c.append(realm, "orders", "o0", "shipped", {})
        c.lease(realm, "projector", "w1", max=1)
    table = ok("group", "list", realm, *url).splitlines()
    assert table[0].split() == ["NAME", "SCOPE", "LAG", "IN_FLIGHT", "PARKED"]
    assert table[1].split() == ["all", realm, "4", "0", "0"]
    assert table[2].split() == ["projector", f"{realm}/orders", "type", "paid,", "placed", "3", "1", "0"]
    listed = [orjson.loads(line) for line in ok("group", "list", realm, "--json", *url).splitlines()]
    assert [g["name"] for g in listed] == ["all", "projector"]
    stats = ok("group", "stats", realm, "projector", *url)
    assert f"group        {realm}/projector\n" in stats and "lag          3\n" in stats
    assert "in flight    1\n" in stats and "consumers    1\n" in stats and "w1: 1 in flight" in stats
    assert "ack_timeout 10 s, max_deliveries 3, max_in_flight 50" in stats
    as_json = orjson.loads(ok("group", "stats", realm, "projector", "--json", *url))
    assert as_json["lag"] == 3 and as_json["consumers"][0]["consumer"] == "w1"
    assert ok("group", "delete", realm, "projector", *url) == f"deleted group {realm}/projector\n"
    for command in (["stats"], ["delete"], ["parked"], ["replay"]):
        line = one_error_line(run_cli("group", *command, realm, "projector", *url))
        assert "404" in line, line
    assert ok("group", "list", realm, *url).splitlines()[1].split()[0] == "all"


def test_parked_and_replay(server: ProcessServer, realm: str) -> None:
    url = ("--url", server.url)
    ok("group", "create", realm, "g", *url)
    with Client(server.url) as c:
        ids = [c.append(realm, "d", f"e{i}", "t", {"i": i}).first.event_id for i in range(3)]
        leased = c.lease(realm, "g", "w", max=10)
        c.nack(realm, "g", "w", [d.event_id for d in leased], action="park")
    assert ok("group", "parked", realm, "g", *url) != ""
    parked = [orjson.loads(line) for line in ok("group", "parked", realm, "g", *url).splitlines()]
    assert sorted(p["event_id"] for p in parked) == sorted(ids)
    assert all(p["reason"] == "nack" and p["delivery"] == 1 and p["parked_at"] and "event" in p for p in parked)
    out = ok("group", "replay", realm, "g", "--event-id", ids[0], "--event-id", ids[2], *url)
    assert out == f"replayed 2 parked events of {realm}/g\n"
    remaining = [orjson.loads(line)["event_id"] for line in ok("group", "parked", realm, "g", *url).splitlines()]
    assert remaining == [ids[1]]
    assert ok("group", "replay", realm, "g", *url) == f"replayed 1 parked event of {realm}/g\n"
    assert ok("group", "parked", realm, "g", *url) == ""


def test_bad_arguments_are_usage_errors() -> None:
    for args in (["group"], ["group", "bogus"], ["group", "create", "r"], ["group", "create", "r", "g", "--start", "x"],
                 ["group", "create", "r", "g", "--start", "-1"], ["group", "create", "r", "g", "--ack-timeout", "y"],
                 ["group", "create", "_r", "g"], ["group", "stats", "r", "a/b"], ["group", "list"],
                 ["group", "replay", "r", "g", "--event-id", "nope"], ["group", "list", "r", "--url", "ftp://x"]):
        r = run_cli(*args, "--url", "http://127.0.0.1:9") if "--url" not in args else run_cli(*args)
        one_error_line(r)
        assert r.returncode == 2, args


def test_server_down_is_one_line() -> None:
    r = run_cli("group", "list", "r", "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and "cannot reach" in one_error_line(r)


def test_settings_out_of_range_are_usage_errors_naming_the_option(server: ProcessServer, realm: str) -> None:
    """As the server bounds them, so a bad one exits 2 before anything is sent; nan and inf were
    sent as null (JSON has neither), so the server's answer spoke of a value nobody typed."""
    for option, value in (("--max-deliveries", "0"), ("--max-deliveries", "1001"), ("--max-deliveries", "1.5"),
                          ("--max-in-flight", "0"), ("--max-in-flight", "10001"), ("--ack-timeout", "0"),
                          ("--ack-timeout", "-1"), ("--ack-timeout", "86401"), ("--ack-timeout", "nan"),
                          ("--ack-timeout", "inf")):
        r = run_cli("group", "create", realm, "g", option, value, "--url", server.url)
        line = one_error_line(r)
        assert r.returncode == 2 and option in line, (option, value, line)
    assert run_cli("group", "stats", realm, "g", "--url", server.url).returncode == 1  # none was made
    made = orjson.loads(ok("group", "create", realm, "g", "--ack-timeout", "86400", "--max-deliveries", "1000",
                           "--max-in-flight", "10000", "--json", "--url", server.url))
    assert (made["ack_timeout"], made["max_deliveries"], made["max_in_flight"]) == (86400, 1000, 10000)


def test_bad_settings_the_cli_cannot_check_are_the_servers_400(server: ProcessServer, realm: str) -> None:
    r = run_cli("group", "create", realm, "g", "--start", str(2**63), "--url", server.url)
    line = one_error_line(r)
    assert r.returncode == 1 and "400" in line and "start" in line, line


def test_the_client_refuses_numbers_json_cannot_carry(server: ProcessServer, realm: str) -> None:
    with Client(server.url) as client:
        for value in (float("nan"), float("inf")):
            with pytest.raises(InvalidInput, match="NaN or an infinity"):
                client.create_group(realm, "g", ack_timeout=value)
        with pytest.raises(NotFound):
            client.group(realm, "g")


def test_every_group_command_has_help_with_an_example() -> None:
    for action in [[], *[[a] for a in ACTIONS]]:
        out = ok("group", *action, "--help")
        assert "usage: perhap group" in out and "\n  perhap group " in out, action
    assert "group" in ok("--help")


# --------------------------------------------------------------------------- docs/cli.md


def render_reference() -> str:
    """The group commands' --help (docs/cli.md's second generated reference)."""
    def sections(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
        group = subcommands(parser)["group"]
        return [("perhap group --help", group.format_help())] + [
            (f"perhap group {name} --help", subcommands(group)[name].format_help()) for name in ACTIONS]

    return render_help(sections)


def test_docs_match_the_group_help_output() -> None:
    text = DOCS.read_text()
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert generated == render_reference() + "\n", "docs/cli.md is stale: run python -m tests.test_groups_cli"


if __name__ == "__main__":
    text = DOCS.read_text()
    head, rest = text.split(BEGIN, 1)
    tail_text = rest.split(END, 1)[1]
    DOCS.write_text(head + BEGIN + render_reference() + "\n" + END + tail_text)
    print(f"updated {DOCS}")
