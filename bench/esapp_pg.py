"""Rows 9e-9g: the eventsourcing application of row 9 on PostgreSQL, against the library's own
PostgreSQL module on the same server.

The same ``Bank`` as row 9 (each save: a new account with its first deposit, 2 events; then a
deposit, 1 event), on ``eventsourcing.postgres`` (the baseline: psycopg, its connection pool, its
table lock for notification ids) and on ``perhap.eventsourcing`` with a ``postgresql://`` store
opened in process, each on a fresh database of the benchmark's private server, in alternating
rounds: 16 threads and 1 thread in one process, and two processes of 8 threads on one database
(what an application run as several processes does; both modules allow it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from .common import Row, ratio, rounds
from .esapp import EVENTS_PER_SAVE, Bank, _run, _workload

#: The runs: (key, processes, threads in each, how the row says it).
RUNS = (("9e", 1, 16, "16 threads, in process"), ("9f", 1, 1, "1 thread, in process"),
        ("9g", 2, 8, "2 processes of 8 threads"))
#: Saves per run by mode and row, over all threads and processes (even: every account is saved twice).
SAVES = {"full": {"9e": 2_000, "9f": 500, "9g": 2_000}, "quick": {"9e": 960, "9f": 200, "9g": 960},
         "tiny": {"9e": 64, "9f": 8, "9g": 64}}
SETUPS = (("eventsourcing", "eventsourcing.postgres"), ("perhap", "perhap.eventsourcing"))


def environment(module: str, url: str) -> dict[str, str]:
    """The application's settings for ``module`` on the database of ``url``."""
    if module == "perhap.eventsourcing":
        return {"PERSISTENCE_MODULE": module, "PERHAP_URL": url}
    parts = urlsplit(url)
    return {"PERSISTENCE_MODULE": module, "POSTGRES_DBNAME": parts.path.lstrip("/"),
            "POSTGRES_HOST": parts.hostname or "127.0.0.1", "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": parts.username or "postgres", "POSTGRES_PASSWORD": parts.password or "",
            "POSTGRES_POOL_SIZE": "16"}


def stored_events(env: dict[str, str]) -> int:
    app = Bank(env=env)
    try:
        return int(app.recorder.max_notification_id() or 0)
    finally:
        app.close()


def _processes(env: dict[str, str], processes: int, threads: int, saves: int) -> float:
    """Saves per second of ``processes`` child processes started together (the sum of their rates),
    once the stored events are counted against the saves (as row 9's ``_run`` does in process)."""
    Bank(env=env).close()  # tables created here: two children creating them at once collide
    start = time.time() + 2.0  # every child has imported and connected by then
    child_env = {**env, "CREATE_TABLE": "no"}  # (eventsourcing.postgres's setting; perhap's has nothing to create)
    argv = [sys.executable, "-m", "bench.esapp_pg", json.dumps(child_env), str(threads), str(saves // processes),
            str(start)]
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        outs = [child.communicate()[0] for child in children]
    finally:  # (a run stopped meanwhile leaves no child saving)
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    if any(child.returncode for child in children):
        raise RuntimeError(f"a child of row 9g failed: {[c.returncode for c in children]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    made, count = sum(r["made"] for r in results), stored_events(env)
    if count != made * EVENTS_PER_SAVE:
        raise AssertionError(f"{made} saves stored {count} events, not {made * EVENTS_PER_SAVE:g}")
    return float(sum(r["rate"] for r in results))


def one_round(new_url: Any, mode: str) -> dict[str, float]:
    """Every setup once, each on a fresh database; saves per second. ``new_url()`` gives a database."""
    out: dict[str, float] = {}
    for key, processes, threads, _ in RUNS:
        saves = SAVES[mode][key]
        for name, module in SETUPS:
            env = environment(module, new_url())
            # Either way every save landed once: the stored events are counted against the saves.
            rate = _processes(env, processes, threads, saves) if processes > 1 else _run(env, threads, saves)
            out[f"{name}_{key}"] = rate
    return out


def measure(new_url: Any, mode: str, repeats: int) -> dict[str, Any]:
    runs = [one_round(new_url, mode) for _ in rounds(repeats, "rows 9e-9g")]
    best = {k: max(r[k] for r in runs) for k in runs[0]}
    return {"best": best, "runs": runs, "saves": SAVES[mode]}


def rows(result: dict[str, Any]) -> list[Row]:
    """Reference rows (no target: the issues set none for PostgreSQL), each against eventsourcing.postgres."""
    best = result["best"]
    out = []
    for key, processes, _, how in RUNS:
        value, base = best[f"perhap_{key}"], best[f"eventsourcing_{key}"]
        note = (f"{EVENTS_PER_SAVE:g} events a save; {result['saves'][key]:,} saves a run; both on the "
                "benchmark's PostgreSQL server, a fresh database each")
        if processes > 1:
            note += "; saves/s summed over the processes, started together"
        out.append(Row(key, f"eventsourcing app saving aggregates, {how}", "postgresql", value, "saves/s",
                       base, "saves/s", "eventsourcing.postgres", ratio(value, base), note=note))
    return out


if __name__ == "__main__":  # a child of row 9g: env (JSON), threads, saves, start time
    settings, threads, saves, at = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    application = Bank(env=settings)
    try:
        time.sleep(max(0.0, at - time.time()))
        rate, made = _workload(application, threads, saves)
    finally:
        application.close()
    print(json.dumps({"rate": rate, "made": made}))
