"""The benchmark suite's machinery on tiny sizes, so `python -m bench` cannot rot unnoticed.

Nothing here times anything: performance targets are judged by running the suite itself
(docs/performance.md). These tests only check that every row is measured and reported.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The bench extra (eventsourcing, psutil) is installed by scripts/test: a missing one fails here
# rather than skipping the smoke check.
import eventsourcing  # noqa: F401
import psutil
import pytest

from bench import backends, dataset, loadgen
from bench.__main__ import steal_line
from bench.common import EXTRA_ROUNDS, TINY, Row, StealMeter, cpu_times, markdown_table, rounds, stolen_percent, table
from bench.servers import raw_server
from bench.suite import Options, Suite
from tests.conftest import get_provider
from tests.providers.cassandra import CassandraProvider
from tests.providers.postgres import PostgresProvider

EXPECTED = {"1", "2", "3", "4", "5", "6a", "6b", "6c", "6d", "7a", "7b", "8", "9a", "9b", "9c", "9d",
            "10", "ref1", "ref2", "ref3"}


def test_every_row_is_measured_on_tiny_sizes(tmp_path: Path) -> None:
    suite = Suite(Options(sizes=TINY, repeats=1, cache_dir=str(tmp_path / "cache"),
                          workdir=str(tmp_path / "work")))
    rows = suite.run()
    assert suite.errors == []
    assert {r.key for r in rows} == EXPECTED
    for r in rows:
        assert r.value is not None and (r.value > 0 or r.key == "8"), r  # a p99 may be 0 ms
        assert r.baseline is not None and r.baseline >= 0, r
        if r.key not in ("7a", "7b", "8"):  # absolute targets; the rest are ratios
            assert r.ratio is not None and r.ratio > 0, r
        if r.target:
            assert r.passed in (True, False), r
    stream = next(r for r in rows if r.key == "8")
    assert "0 missing, 0 duplicated" in stream.note
    text = table(rows)
    assert all(f"\n{key} " in "\n" + text for key in EXPECTED)
    assert markdown_table(rows).count("\n") == len(rows) + 1
    # Every step that ran says how much of the machine's CPU time other guests took meanwhile.
    steal = suite.meta["steal_percent"]
    assert "growth (row 6)" in steal and len(steal) >= 8, steal
    assert all(share is not None and 0 <= share <= 100 for share in steal.values()), steal
    # And every round of a comparison, beside its figures (never taken for a figure's best).
    rounds = [*suite.meta["inprocess_runs"]["eventsourcing"], *suite.meta["inprocess_runs"]["sqlite"],
              suite.meta["http"]["raw"]["post"], *suite.meta["http"]["perhap"]["sqlite"].values()]
    assert all(0 <= r["steal_percent"] <= 100 for r in rounds if isinstance(r, dict)), rounds
    growth_runs = suite.meta["growth"]["runs"]
    # One round, or up to EXTRA_ROUNDS more where other guests stole from it (bench.common.rounds).
    assert len(growth_runs["steal_percent_empty"]) == len(growth_runs["append_empty"])
    assert 1 <= len(growth_runs["append_empty"]) <= 1 + EXTRA_ROUNDS, growth_runs
    assert all(0 <= x <= 100 for x in growth_runs["steal_percent_empty"] + growth_runs["steal_percent_big"])


class _SessionPostgres(backends.Backend):
    """The test session's PostgreSQL in the place of the private server the suite would start."""

    name = "postgresql"

    def __init__(self, provider: PostgresProvider) -> None:
        self.provider = provider

    def new_url(self) -> str:
        return self.provider.new_url()


@pytest.mark.postgres
def test_the_http_rows_run_on_postgresql_with_one_and_two_workers(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    provider = get_provider("postgres", tmp_path_factory)
    assert isinstance(provider, PostgresProvider)
    suite = Suite(Options(sizes=TINY, backends=["postgresql"], only={"1", "2"}, repeats=1,
                          cache_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "work")))
    suite.started["postgresql"] = _SessionPostgres(provider)
    rows = suite.run()
    assert suite.errors == []
    labels = {"postgresql", "postgresql, 2 workers"}
    assert {(r.key, r.backend) for r in rows} == {(k, b) for k in ("1", "2") for b in labels}
    for r in rows:
        assert r.value and r.baseline and r.ratio, r
        assert r.extra == {"backend": "postgresql", "workers": 2 if "2 workers" in r.backend else 1}, r
    # One raw ASGI baseline for every server of the run.
    assert len({r.baseline for r in rows if r.key == "1"}) == 1


@pytest.mark.postgres
def test_the_eventsourcing_rows_run_on_postgresql_against_its_own_module(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    provider = get_provider("postgres", tmp_path_factory)
    assert isinstance(provider, PostgresProvider)
    suite = Suite(Options(sizes=TINY, backends=["postgresql"], only={"9"}, repeats=1,
                          cache_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "work")))
    suite.started["postgresql"] = _SessionPostgres(provider)
    rows = suite.run()
    assert suite.errors == []
    by_key = {r.key: r for r in rows if r.backend == "postgresql"}
    assert sorted(by_key) == ["9e", "9f", "9g"]
    for r in by_key.values():  # (each run's stored events were counted against its saves)
        assert r.value and r.baseline and r.ratio and r.baseline_name == "eventsourcing.postgres", r
        assert r.passed is None and r.target == "", r  # reference rows: no target
    assert {r.key for r in rows if r.backend == "sqlite"} == {"9a", "9b", "9c", "9d"}


class _SessionCassandra(backends.Backend):
    """The test session's Cassandra node in the place of the one the suite would start."""

    name = "cassandra"

    def __init__(self, provider: CassandraProvider) -> None:
        self.provider = provider

    def new_url(self) -> str:
        return self.provider.new_url()

    def flush(self) -> None:  # as the bench's own node does before a read-back is timed
        if self.provider.node is not None:
            self.provider.node.nodetool("flush")


@pytest.mark.cassandra
def test_the_cassandra_rows_are_judged_against_the_raw_driver_on_the_same_node(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    provider = get_provider("cassandra", tmp_path_factory)
    assert isinstance(provider, CassandraProvider)
    suite = Suite(Options(sizes=TINY, backends=["cassandra"], only={"3", "4", "5", "8"}, repeats=1,
                          cache_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "work")))
    suite.started["cassandra"] = _SessionCassandra(provider)
    rows = suite.run()
    assert suite.errors == []
    by_key = {r.key: r for r in rows if r.backend == "cassandra"}
    assert set(by_key) == {"3", "4", "5", "3c", "4c", "5c", "cref", "cref2", "8c"}
    live = suite.meta["cassandra_live"]
    assert live["delivered"] == live["events"] and live["missing"] == 0 and live["in_order"], live
    assert by_key["8c"].value == live["p99_ms"] and by_key["8c"].baseline == live["settle_ms"]
    # The rows divide by the best of the raw rounds (more than one when steal had a round run again).
    raw_runs = suite.meta["cassandra_raw_runs"]
    assert 1 <= len(raw_runs) <= 1 + EXTRA_ROUNDS, raw_runs
    raw = suite.raw_cassandra
    assert all(raw[k] == max(r[k] for r in raw_runs if k in r) for k in raw), (raw, raw_runs)
    assert all(raw[k] > 0 for k in ("plain", "hot", "conditional", "batch", "read")), raw
    for key, baseline in (("3c", raw["conditional"]), ("4c", raw["batch"]), ("5c", raw["read"])):
        r = by_key[key]
        assert r.baseline == baseline and r.value == by_key[key[0]].value, r
        assert r.ratio == pytest.approx(r.value / baseline) and r.passed in (True, False), r
    # Both sides of row 5c read the same number of rows.
    assert raw["read_count"] == suite.meta["inprocess_runs"]["cassandra"][0]["read_count"]


def test_the_builtin_load_generator_counts_requests(tmp_path: Path) -> None:
    with raw_server(tmp_path / "raw.log") as server:
        got = loadgen.run(server.url + "/bench/http", "POST", connections=4, seconds=0.5)
        assert got["requests"] > 0 and got["non2xx"] == 0 and got["errors"] == 0
        # Row 1 is judged on its p99 too: without wrk, the built-in generator must give one.
        assert 0 < got["p50_ms"] <= got["p99_ms"]
        got = loadgen.run(server.url + "/", "GET", connections=2, seconds=0.3, processes=2)
        assert got["requests"] > 0 and got["non2xx"] == 0 and got["p99_ms"] > 0


def test_the_builtin_load_generator_posts_to_2000_entities_as_the_wrk_script_does() -> None:
    share = loadgen.ENTITIES // 32
    paths = {loadgen.post_request("h", "/bench/http", worker, n, share).split(b" ")[1]
             for worker in range(32) for n in range(1000)}
    assert 1900 <= len(paths) <= loadgen.ENTITIES


def test_a_smaller_read_back_is_named_and_divided_by_the_peer_reading_as_many(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    import bench.suite

    # No time to fill: the backend reads back the least entity (10,000) of the 20,000 asked for.
    monkeypatch.setitem(bench.suite.FILL_SECONDS, "tiny", 0)
    suite = Suite(Options(sizes=replace(TINY, readback=20_000, peer_events=20_000), only={"5"}, repeats=1,
                          cache_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "work")))
    rows = suite.run()
    assert suite.errors == []
    row = next(r for r in rows if r.key == "5")
    assert row.name == "read back one 10,000-event entity" and "10,000-event entity" in row.note
    peer = suite.meta["inprocess_runs"]["eventsourcing"][0]
    assert row.baseline == peer["select_10000"] and "select" in peer


def test_a_prepared_store_is_a_valid_perhap_store_and_restored_after_appends(tmp_path: Path) -> None:
    import asyncio

    from perhap.backends import open_store
    from perhap.backends.sqlite.store import SQLiteStore
    from perhap.model import Scope

    data = dataset.prepared(2_000, tmp_path)

    async def check() -> None:
        async with open_store(data.url) as store:
            page = await store.read(Scope(*data.entity(3)), limit=1000)
            assert [e.version for e in page.events] == list(range(100))
            cursor = (await store.read(Scope("bench", "d0"), limit=10_000)).events[-1].cursor
            assert isinstance(cursor, int) and cursor <= data.events  # SQLite's commit order is an integer
            await store.append("bench", "d0", "new", "happened", {"n": 1})
            await store.append("bench", "d0", "e0", "happened", {"n": 2})

    asyncio.run(check())
    dataset.restore(data)
    again = dataset.prepared(2_000, tmp_path)  # reused, not rebuilt
    assert again == data

    async def count() -> int:
        async with open_store(data.url) as store:
            assert isinstance(store, SQLiteStore)  # counting every event is a backend extra, not the API
            return await store.count()

    assert asyncio.run(count()) == 2_000


def test_the_command_line_writes_one_table_and_its_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--mode", "tiny", "--only", "ref,3,4,5", "--json", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "append, 64 concurrent" in proc.stdout and "results written to" in proc.stdout
    # A smoke run (anything but the full sizes) measures every row and judges none.
    assert "smoke run" in proc.stdout and "not judged" in proc.stdout
    assert "PASS" not in proc.stdout and "FAIL" not in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["mode"] == "tiny" and doc["errors"] == [] and doc["machine"]["nproc"] >= 1
    assert {r["key"] for r in doc["rows"]} == {"3", "4", "5", "ref1", "ref2", "ref3"}
    assert all(Row(**r).value for r in doc["rows"])
    share = doc["machine"]["steal_percent"]
    assert 0 <= share <= 100 and f"CPU steal: {share:.1f}% of the run's CPU time" in proc.stdout
    steps = {"raw SQLite floor", "eventsourcing and perhap in process (rows 3-5)"}
    assert set(doc["details"]["steal_percent"]) == steps


def test_a_ratio_whose_runs_lost_cpu_time_to_steal_says_so_in_its_note() -> None:
    from bench.suite import _best, _steal_note

    assert _steal_note({"rps": 9.0, "steal_percent": 0.4}, {"rps": 20.0, "steal_percent": 0.2}) == ""
    assert _steal_note({"rps": 9.0}, {"rps": 20.0, "steal_percent": 5.0}) == ""  # one side unknown
    assert (_steal_note({"rps": 9.0, "steal_percent": 0.4}, {"rps": 20.0, "steal_percent": 2.5})
            == "; CPU steal in the runs compared: perhap 0.4%, baseline 2.5%")
    # A round's steal rides along in the JSON but is no figure: the best of rounds leaves it out.
    assert _best([{"single": 5.0, "steal_percent": 9.0}, {"single": 7.0, "steal_percent": 1.0}]) == {"single": 7.0}


def test_a_bad_answer_in_any_round_fails_the_http_row_not_only_in_the_best() -> None:
    """Only the best round was checked for non-2xx answers: a round that had 500 of them (at half
    the rate, so never the best) left the row measured and judged as usual."""
    from bench.httpbench import _bad

    clean, hurt = {"rps": 9768.0, "non2xx": 0.0, "errors": 0.0}, {"rps": 4895.5, "non2xx": 500.0, "errors": 0.0}
    assert _bad([clean, clean]) == ""
    assert _bad([hurt, clean]) == "500 non-2xx responses, 0 errors in 2 rounds"


def test_stolen_cpu_time_is_the_steal_share_of_all_cpu_time_between_two_readings() -> None:
    now = cpu_times()
    assert now is not None and set(now) >= {"user", "system", "idle", "steal"}  # Linux: /proc/stat
    assert all(ticks >= 0 for ticks in now.values())
    before = dict.fromkeys(now, 0) | {"user": 100, "idle": 100, "steal": 10}
    after = before | {"user": 160, "idle": 120, "steal": 30}  # 100 ticks passed, 20 of them stolen
    assert stolen_percent(before, after) == pytest.approx(20.0)
    assert stolen_percent(before, before) is None  # no time passed
    assert stolen_percent(None, after) is None and stolen_percent(before, None) is None
    # None: no /proc/stat, or a run too short for a CPU tick (on Linux: not "not known").
    assert steal_line(None, {}) == ("CPU steal: not measured (the run took no CPU time to speak of)"
                                    if cpu_times() is not None else "CPU steal: not known on this platform")
    line = steal_line(3.3, {"row 1": 0.5, "rows 3-5": 7.0, "row 6": None})
    assert line == "CPU steal: 3.3% of the run's CPU time went to other guests; steps above 1%: rows 3-5 7.0%"


class _Stolen(StealMeter):
    """A meter that reads the next share from a list instead of the machine (the real one is
    tested above): the rounds' rule is tested on known steal."""

    def __init__(self, shares: list[float | None]) -> None:
        self.shares = shares

    def __enter__(self) -> _Stolen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.percent = self.shares.pop(0)


def _rounds_run(repeats: int, shares: list[float | None], extra: int = 2) -> list[int]:
    return list(rounds(repeats, "test", noisy=3.0, extra=extra, meter=lambda: _Stolen(shares)))


def test_a_round_that_lost_cpu_time_to_steal_is_run_again_up_to_a_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert _rounds_run(2, [0.0, 2.9]) == [0, 1]  # under the threshold: the rounds asked for
    assert _rounds_run(2, [None, None]) == [0, 1]  # steal unknown: no extra round
    assert _rounds_run(2, [3.0, 0.1, 0.2]) == [0, 1, 2]  # the first stolen from: one more
    logged = capsys.readouterr().err
    assert "test: round 1 lost 3.0% of the CPU time to steal; one round more (1 of at most 2)" in logged
    assert _rounds_run(1, [9.0, 0.0]) == [0, 1]
    assert _rounds_run(2, [5.0, 5.0, 5.0, 5.0]) == [0, 1, 2, 3]  # two extra at most, then it stops
    assert _rounds_run(2, [5.0, 5.0, 5.0], extra=1) == [0, 1, 2]
    assert _rounds_run(0, []) == []


def test_the_one_command_leaves_cassandra_to_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m bench` (auto) stays within issue 6's five minutes: SQLite and PostgreSQL; `all`
    adds Cassandra (a JVM to start and warm); a quick run is SQLite alone."""
    monkeypatch.setattr(backends, "available", lambda name: (True, ""))
    assert backends.choose("auto", quick=False) == ["sqlite", "postgresql"]
    assert backends.choose("all", quick=False) == ["sqlite", "postgresql", "cassandra"]
    assert backends.choose("auto", quick=True) == ["sqlite"]
    assert backends.left_out("all", quick=False) == {}
    monkeypatch.setattr(backends, "available", lambda name: (name == "sqlite", "not installed"))
    assert backends.choose("auto", quick=False) == ["sqlite"]
    # What `all` or `auto` leaves out is named (the table alone read as the whole picture).
    assert backends.left_out("all", quick=False) == {"postgresql": "not installed", "cassandra": "not installed"}
    assert backends.left_out("auto", quick=False) == {"postgresql": "not installed"}
    assert backends.left_out("auto", quick=True) == {} and backends.left_out("sqlite", quick=False) == {}


@pytest.mark.parametrize("at_tenth, at_end, passed", [(50.0, 52.0, True), (50.0, 70.0, False), (50.0, 200.0, False)])
def test_row_7_judges_flatness_as_well_as_the_peak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   at_tenth: float, at_end: float, passed: bool) -> None:
    """Under 150 MiB is not enough: memory that grows with the events read fails the row."""
    from bench import memory

    figures = {"peak_mib": max(at_tenth, at_end), "idle_mib": 40.0, "rss_at_10pct_mib": at_tenth,
               "rss_at_end_mib": at_end, "events_per_s": 1.0}
    monkeypatch.setattr(memory, "measure", lambda data, workdir, how: figures)
    suite = Suite(Options(sizes=TINY, repeats=1, cache_dir=str(tmp_path / "cache"), workdir=str(tmp_path / "w")))

    class Data:
        def domain_events(self) -> int:
            return 1_000_000

    suite.work = tmp_path  # (set by run(); the measurement itself is replaced above)
    suite._memory(Data())  # type: ignore[arg-type]
    assert [r.passed for r in suite.rows] == [passed and figures["peak_mib"] < 150] * 2


@pytest.mark.parametrize("repeats", ["0", "-1", "two"])
def test_repeats_below_one_is_a_usage_error_not_the_default_or_a_crash(repeats: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--repeats", repeats, "--only", "3"],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2 and "--repeats: must be a whole number of at least 1" in proc.stderr, proc.stderr


def test_an_unusable_cache_directory_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "3", "--cache-dir",
                           str(tmp_path / "a-file" / "cache"), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2 and "the cache directory cannot be used" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()


def _build_in_a_child(directory: str, start: Any) -> None:
    start.wait()
    assert dataset.prepared(2_000, Path(directory)).events == 2_000


def test_two_runs_sharing_a_cache_build_its_store_once_and_both_use_it(tmp_path: Path) -> None:
    # Both built into one temporary file, and the second rename failed: one run of two crashed.
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    children = [context.Process(target=_build_in_a_child, args=(str(tmp_path), start)) for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("build-lock")) == [
        f"store-2000-v{dataset.DATASET_VERSION}-s{dataset.SCHEMA_VERSION}.{ext}" for ext in ("db", "json")]


def _listening(process: psutil.Process) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN for c in process.net_connections("tcp"))
    except psutil.Error:
        return False


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_a_run_stopped_by_sigterm_stops_its_servers(tmp_path: Path, when: str) -> None:
    # A CI runner or `timeout` stops a job with SIGTERM: the run's servers were left running
    # (Ctrl-C reaches the whole process group; SIGTERM only the run).
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--mode", "tiny", "--only", "1", "--json", str(tmp_path / "r.json"),
         "--cache-dir", str(tmp_path / "cache"), "--workdir", str(tmp_path / "work")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        servers: list[psutil.Process] = []
        while time.monotonic() < deadline and proc.poll() is None:
            servers = [c for c in me.children(recursive=True)
                       if "serve" in c.cmdline() or "bench.rawapp" in c.cmdline()]
            if servers and (when == "starting" or any(_listening(s) for s in servers)):
                break
            time.sleep(0.02)
        assert servers, "the run started no server"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(servers, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
