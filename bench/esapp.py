"""Row 9: an eventsourcing application saving aggregates, on perhap and on the library's own SQLite.

The same application (a bank with ``Account`` aggregates) runs on three persistence setups in
one run, in alternating rounds: ``eventsourcing.sqlite`` (the baseline: its own SQLite module,
WAL, its default pool), ``perhap.eventsourcing`` with a SQLite store opened in process, and
``perhap.eventsourcing`` over HTTP to a ``perhap serve`` on a SQLite file. Each thread opens an
account with a first deposit and saves it (2 events, a new aggregate), deposits again and saves
(1 event, an aggregate the recorder has seen), until the run's fixed number of saves is made.
Everything above the recorder (aggregates, the transcoder, ``Application.save``) is the same on
every setup, so the ratio is the persistence module's.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from .common import Row, ratio, remove_sqlite, rounds
from .servers import perhap_server

#: Saves per run by mode, over all threads (even: every account is saved twice).
SAVES = {"full": {16: 6_000, 1: 1_000}, "quick": {16: 960, 1: 120}, "tiny": {16: 64, 1: 8}}
#: Events per save on average: a new account holds 2, each further deposit 1.
EVENTS_PER_SAVE = 1.5


class Account(Aggregate):
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


class Bank(Application[Any]):
    pass


def _workload(app: Bank, threads: int, saves: int) -> tuple[float, int]:
    """Saves per second: ``threads`` threads sharing the application make ``saves`` saves in all."""
    per_thread = max(2, saves // threads // 2 * 2)
    gate = threading.Barrier(threads + 1)
    failures: list[BaseException] = []

    def work(index: int) -> None:
        gate.wait()
        try:
            for n in range(per_thread // 2):
                account = Account(f"t{index}-{n}")
                account.deposit(100)
                app.save(account)
                account.deposit(5)
                app.save(account)
        except BaseException as exc:  # reported after the join
            failures.append(exc)

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return per_thread * threads / elapsed, per_thread * threads


def _run(env: dict[str, str], threads: int, saves: int) -> float:
    app = Bank(env=env)
    try:
        rate, made = _workload(app, threads, saves)
        # Every save landed once: notification ids count the events on a fresh database.
        count = app.recorder.max_notification_id()
        if count != made * EVENTS_PER_SAVE:
            raise AssertionError(f"{made} saves stored {count} events, not {made * EVENTS_PER_SAVE:g}")
        return rate
    finally:
        app.close()


def one_round(workdir: Path, mode: str, index: int) -> dict[str, float]:
    """One run of every setup and thread count, each on a fresh database; saves per second."""
    out: dict[str, float] = {}
    for threads, saves in SAVES[mode].items():
        es_db = workdir / f"esapp-es-{index}-{threads}.db"
        out[f"eventsourcing_{threads}"] = _run(
            {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(es_db)}, threads, saves)
        remove_sqlite(es_db)
        db = workdir / f"esapp-perhap-{index}-{threads}.db"
        out[f"perhap_{threads}"] = _run(
            {"PERSISTENCE_MODULE": "perhap.eventsourcing", "PERHAP_URL": f"sqlite:///{db}"}, threads, saves)
        remove_sqlite(db)
        db = workdir / f"esapp-http-{index}-{threads}.db"
        with perhap_server(f"sqlite:///{db}", workdir / "esapp-server.log") as server:
            out[f"perhap_http_{threads}"] = _run(
                {"PERSISTENCE_MODULE": "perhap.eventsourcing", "PERHAP_URL": server.url}, threads, saves)
        remove_sqlite(db)
    return out


def measure(workdir: Path, mode: str, repeats: int) -> dict[str, Any]:
    """Alternating rounds; the best of each setup is kept, every round is in ``runs``."""
    runs = [one_round(workdir, mode, i) for i in rounds(repeats, "row 9")]
    best = {k: max(r[k] for r in runs) for k in runs[0]}
    return {"best": best, "runs": runs, "saves": SAVES[mode], "events_per_save": EVENTS_PER_SAVE}


def rows(result: dict[str, Any]) -> list[Row]:
    """Rows 9a-9d: in process and over HTTP, 16 threads and 1, each divided by eventsourcing.sqlite."""
    best, out = result["best"], []
    for key, threads, setup, how in (("9a", 16, "perhap", "in process"), ("9b", 16, "perhap_http", "over HTTP"),
                                     ("9c", 1, "perhap", "in process"), ("9d", 1, "perhap_http", "over HTTP")):
        value, base = best[f"{setup}_{threads}"], best[f"eventsourcing_{threads}"]
        row = Row(key, f"eventsourcing app saving aggregates, {threads} thread{'s' * (threads > 1)}, {how}",
                  "sqlite", value, "saves/s", base, "saves/s", "eventsourcing.sqlite", ratio(value, base),
                  note=f"{EVENTS_PER_SAVE:g} events a save: {value * EVENTS_PER_SAVE:,.0f} vs "
                       f"{base * EVENTS_PER_SAVE:,.0f} events/s; {result['saves'][threads]:,} saves a run")
        if setup == "perhap":
            row.judge(">=", 0.8)
        else:
            row.note += "; reported, no target: the client (httpx) and the server share the machine's cores"
        out.append(row)
    return out


if __name__ == "__main__":  # a quick look: python -m bench.esapp [mode] [repeats]
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="perhap-esapp-") as tmp:
        result = measure(Path(tmp), sys.argv[1] if len(sys.argv) > 1 else "quick",
                         int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    for key, value in sorted(result["best"].items()):
        print(f"{key:22} {value:10,.0f} saves/s")
