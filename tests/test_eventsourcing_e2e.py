"""End to end: an eventsourcing application and a process application following it, each in a
process of its own, through a `perhap serve` over HTTP; the follower is killed mid-way and restarted.

- The writer (``tests/es_e2e/writer.py``) runs BankAccounts with ``PERSISTENCE_MODULE=perhap.eventsourcing``
  and ``PERHAP_URL=http://...``, in three phases; between phases it waits for a gate file, so the
  test knows the follower cannot have seen everything yet.
- The follower (``tests/es_e2e/follower.py``) runs the Ledger, a ``ProcessApplication``, under
  eventsourcing's ``EventSourcedProjectionRunner``: it constructs BankAccounts for its recorder and
  mapper, subscribes with ``recorder.subscribe(gt=<the Ledger's max_tracking_id>)`` (perhap's SSE
  stream) and calls ``Ledger.process_event`` for each event, which stores the ledger's new event and
  the tracking record in one multi-entity append. The Ledger records exactly one event per upstream
  event, carrying its notification id, so a duplicate or a loss shows in its events.
- The follower is SIGKILLed in the middle of phases 1 and 2 and started again. Before phase 3 the
  perhap server itself is SIGKILLed: the follower's subscription must end in an OperationalError
  (a stopped server is not a hang), and its runner starts over from the tracking records once the
  server is started again on the same database.

Then, from the store: the tracking records are exactly the upstream notification ids, each once and
in order; the ledger events carry exactly those ids, each once; ledger balances equal account
balances. Cassandra is left out: it has no multi-entity appends, so no process recorder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from perhap.client import Client
from tests.conftest import BACKENDS, get_provider
from tests.es_e2e.apps import UPSTREAM, Account, AccountLedger, BankAccounts, Ledger
from tests.servers import ProcessServer, free_port

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 120.0  # seconds for any one thing awaited; generous for a loaded 2-core machine
ACCOUNTS = 8
PER_PHASE = 100
PHASES = 3
TOTAL = ACCOUNTS + PHASES * PER_PHASE
UPSTREAM_REALM, LEDGER_REALM, DOMAIN = "bankaccounts", "ledger", "events"
TRACKING_ENTITY = f"~tracking~{UPSTREAM}"


@pytest.fixture(params=[b for b in BACKENDS if b != "cassandra"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return get_provider(request.param, tmp_path_factory).new_url()


class Processes:
    """The test's child processes, each logging to a file of its own, all killed at the end."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def says(self, proc: subprocess.Popen[bytes], text: str) -> Callable[[], bool]:
        """A condition: the process's log holds the text."""
        return lambda: text in self.log(proc)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class Watch:
    """Polls for a condition until a deadline, failing early (with its log) if a process died."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.must_live: list[subprocess.Popen[bytes]] = []

    def until(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            for proc in self.must_live:
                if proc.poll() is not None:
                    pytest.fail(f"while waiting for {what}: a child exited with {proc.returncode}:\n"
                                f"{self.processes.log(proc)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {DEADLINE:.0f} s")
            time.sleep(0.05)


def tracking_head(client: Client) -> tuple[int, int]:
    """(tracking records stored, the newest one's notification id): (0, 0) before any."""
    page = client.read_page(LEDGER_REALM, DOMAIN, TRACKING_ENTITY, order="desc", limit=1)
    assert page is not None
    events = page[0].events
    if not events:
        return 0, 0
    return events[0].version + 1, int(events[0].event["notification_id"])


def processed(client: Client, count: int) -> Callable[[], bool]:
    """A condition: the follower has stored at least ``count`` tracking records."""
    return lambda: tracking_head(client)[0] >= count


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def starts(log: str) -> list[int | None]:
    """The tracking maximum each run of the follower's runner started after, from its log."""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line["after"] for line in lines if "following" in line]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    port = free_port()
    env = {**os.environ, "PERSISTENCE_MODULE": "perhap.eventsourcing",
           "PERHAP_URL": f"http://127.0.0.1:{port}", "PERHAP_TIMEOUT": "20"}
    procs = Processes(tmp_path, env)
    yield procs
    procs.kill_all()


def test_a_killed_follower_processes_every_event_exactly_once(db_url: str, processes: Processes,
                                                              tmp_path: Path) -> None:
    env = processes.env
    port = int(env["PERHAP_URL"].rsplit(":", 1)[1])
    server = ProcessServer(db_url, port).start()
    watch = Watch(processes)
    try:
        client = Client(env["PERHAP_URL"], timeout=20)
        writer = processes.start("writer", "tests.es_e2e.writer", str(tmp_path), "--accounts", str(ACCOUNTS),
                                 "--per-phase", str(PER_PHASE), "--phases", str(PHASES), "--pace", "0.01")
        follower = processes.start("follower-1", "tests.es_e2e.follower")
        followers = [follower]
        watch.must_live = [writer, follower]
        seen_before_kill = []
        stopped_at = -1

        for phase in range(1, PHASES):
            # Kill the follower once it has processed a third of this phase: the writer is still in
            # this phase or waiting at its gate, so the follower has not seen everything.
            threshold = ACCOUNTS + (phase - 1) * PER_PHASE + PER_PHASE // 3
            watch.until(f"the follower past {threshold} events in phase {phase}", processed(client, threshold))
            seen_before_kill.append(tracking_head(client)[1])
            kill(follower)
            follower = processes.start(f"follower-{phase + 1}", "tests.es_e2e.follower")
            followers.append(follower)
            watch.must_live = [writer, follower]

            phase_file = tmp_path / f"phase-{phase}.json"
            watch.until(f"the writer at the end of phase {phase}", phase_file.exists)
            if phase == PHASES - 1:
                # The follower has caught up and waits on its live stream: kill the server under it.
                # Its stream must end in an OperationalError (not hang), its runner start over; once
                # it has said so, start the server again on the same database and port.
                written = json.loads(phase_file.read_text())["events"]
                watch.until("the follower caught up before the server is killed", processed(client, written))
                stopped_at = tracking_head(client)[1]
                server.kill()
                watch.until("the follower's OperationalError", processes.says(follower, "OperationalError"))
                server = ProcessServer(db_url, port).start()
            (tmp_path / f"gate-{phase}").touch()

        done_file = tmp_path / "done.json"
        watch.until("the writer's end", done_file.exists)
        assert writer.wait(DEADLINE) == 0, processes.log(writer)
        done = json.loads(done_file.read_text())
        assert done["events"] == TOTAL
        watch.must_live = [follower]
        watch.until("the follower caught up", processed(client, TOTAL))
        kill(follower)  # nothing moves while the store is examined

        last_id = check_store(client, env, done["balances"])
        client.close()
        code, out = server.terminate()
        assert code == 0 and "Traceback" not in out, out
    finally:
        server.kill()

    # Each follower process began where its tracking records said: the first from nothing, each
    # restart mid-way, after at least what had been processed before the kill and short of the end.
    runs = [starts(processes.log(f)) for f in followers]
    assert runs[0][0] is None, runs
    for before_kill, run in zip(seen_before_kill, runs[1:]):
        assert run and run[0] is not None and before_kill <= run[0] < last_id, (before_kill, run)
    # The last follower's runner also started over after the server came back, where it had stopped.
    assert len(runs[-1]) >= 2 and runs[-1][-1] == stopped_at, runs


def check_store(client: Client, env: dict[str, str], balances: dict[str, int]) -> int:
    """Every upstream event processed exactly once, by the store's own records; the last id."""
    upstream_events = list(client.read(UPSTREAM_REALM, DOMAIN))
    ids = [e.position for e in upstream_events]
    assert len(ids) == TOTAL

    # The tracking records: every upstream notification, each once, in order.
    tracked = [int(e.event["notification_id"]) for e in client.read(LEDGER_REALM, DOMAIN, TRACKING_ENTITY)]
    assert tracked == ids

    # The ledger's own events, read raw: one per upstream notification, carrying its id.
    ledger_events = [e for e in client.read(LEDGER_REALM, DOMAIN) if e.entity != TRACKING_ENTITY]
    carried = Counter(int(e.event["notification_id"]) for e in ledger_events)
    assert [n for n, count in carried.items() if count != 1] == [], "processed more than once"
    assert sorted(carried) == ids

    bank = BankAccounts(env=env)
    ledger = Ledger(env=env)
    try:
        assert bank.recorder.max_notification_id() == ids[-1]
        assert ledger.recorder.max_tracking_id(UPSTREAM) == ids[-1]
        assert all(ledger.recorder.has_tracking_id(UPSTREAM, i) for i in (ids[0], ids[len(ids) // 2], ids[-1]))
        # The same through eventsourcing's notifications and mapper.
        notifications = ledger.recorder.select_notifications(start=None, limit=10 * TOTAL)
        domain_events: list[Any] = [ledger.mapper.to_domain_event(n) for n in notifications]
        assert sorted(e.notification_id for e in domain_events) == ids

        for account_id, balance in balances.items():
            account: Account = bank.repository.get(UUID(account_id))
            account_ledger: AccountLedger = ledger.repository.get(AccountLedger.create_id(account.id))
            assert account.balance == balance
            assert account_ledger.balance == balance
            assert account_ledger.account_versions == list(range(1, account.version + 1))
    finally:
        bank.close()
        ledger.close()
    return ids[-1]


def test_the_worked_example_in_the_docs_runs_as_written(tmp_path: Path) -> None:
    """docs/eventsourcing.md's example, run as a script against a real `perhap serve`; then the
    account is where the docs say it is (realm bankaccounts, domain events), readable as JSON."""
    text = (ROOT / "docs" / "eventsourcing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the docs have one worked example"
    with ProcessServer(f"sqlite:///{tmp_path}/example.db") as server:
        script = tmp_path / "example.py"
        script.write_text(blocks[0].replace("http://127.0.0.1:8787", server.url))
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        with Client(server.url) as client:
            events = list(client.read("bankaccounts", "events"))
    assert [e.type.rpartition(".")[2] for e in events] == ["Opened", "Credited"]
    assert events[0].event["owner"] == "Alice" and events[0].meta == {"originator_version": 1, "uuid": True}
