#!/usr/bin/env python3
"""Three Cassandra nodes on loopback (127.0.0.1-3), replication factor 3, QUORUM, served by two
`perhap serve` processes: writers append over HTTP through both, readers page every scope through
the other one, and node 3 is SIGKILLed in the middle. Appends must go on, and every acknowledged
event must be stored exactly once, in one order that every reader of a scope sees.

    python scripts/cassandra-three-nodes.py [--dir DIR] [--seconds 60] [--kill-at 20] [--writers 16]

Needs Java 17 and Maven like perhap.testing.cassandra (the jars are shared with its cache), Linux
(all of 127.0.0.0/8 is loopback) and about 3 GB of memory. Writer w appends to entity e{w} through
process w % 2; the realm is paged live through both processes, each domain and each entity through
the process its writers did not use. Afterwards every scope is read to the end through the second
process and checked: each acknowledged (201) event is there once with the version and position it
was acknowledged with; entity versions run from 0 without gaps; each domain's and each entity's
order is the realm's order restricted to it; each live pager saw exactly the final order. Events
answered 503, or never answered, may or may not be stored: the script counts them. Prints figures
per phase (three nodes, two nodes) and exits non-zero on any problem.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perhap.ids import uuid7
from perhap.testing.cassandra import CassandraNode
from perhap.testing.cassandra.process import alive, spawn

ROOT = Path(__file__).resolve().parent.parent
NATIVE, STORAGE = 19142, 17100  # the same ports on each address
TOKENS = (-9223372036854775808, -3074457345618258603, 3074457345618258602)
SHOWN_FAILURES = 12  # failures printed as they happen; the rest are only counted
#: The answers an append may get without a fault of perhap's: stored, unavailable, or no answer.
EXPECTED_OUTCOMES = ("201", "503", "timeout", "transport")


class LoopbackNode(CassandraNode):
    """A harness node on its own loopback address, joining the cluster seeded by 127.0.0.1."""

    def __init__(self, directory: Path, index: int) -> None:
        super().__init__(directory, port=NATIVE)
        self.host = f"127.0.0.{index + 1}"
        self.index = index
        self._state.update(storage_port=STORAGE, ssl_storage_port=STORAGE + 1)

    def _write_config(self) -> None:
        super()._write_config()
        path = self.dir / "cassandra.yaml"
        text = path.read_text()
        text = text.replace("listen_address: 127.0.0.1", f"listen_address: {self.host}")
        text = text.replace("rpc_address: 127.0.0.1", f"rpc_address: {self.host}")
        text += f"auto_bootstrap: false\ninitial_token: {TOKENS[self.index]}\n"
        path.write_text(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`perhap serve` on the cluster in a child process, killed by the kernel if this script dies."""

    def __init__(self, name: str, store_url: str, log_path: Path) -> None:
        self.name, self.store_url, self.log_path = name, store_url, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        """A cluster that has just formed may time out its first schema changes and Paxos rounds,
        and the server then exits at start-up: try again a few times."""
        for attempt in range(5):
            with open(self.log_path, "ab") as log:
                # --idle-timeout above the pagers' pauses: a keep-alive connection closed by the server
                # just as a POST goes out would be an append of unknown outcome for no reason.
                self.proc = spawn([sys.executable, "-m", "perhap", "serve", "--db", self.store_url,
                                   "--port", str(self.port), "--idle-timeout", "60"], detach=False,
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"{self.url}/_health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            self.stop()
            tail = " | ".join(self.log_path.read_text(errors="replace").splitlines()[-3:])
            print(f"server {self.name} did not start (attempt {attempt + 1}): {tail[:300]}")
            time.sleep(2 + attempt * 2)
        raise RuntimeError(f"server {self.name} did not start; log in {self.log_path}")

    def stop(self) -> None:
        """SIGTERM (in-flight requests finish), SIGKILL after 20 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a live process (0 if it is gone)."""
    if pid is None or not alive(pid):
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Attempt:
    """One append as the writer saw it; ``outcome`` is the status, "timeout" or "transport"."""

    writer: int
    seq: int
    started: float  # seconds since the load began
    latency: float
    outcome: str
    result: dict[str, Any] = field(default_factory=dict)  # the 201 body


@dataclass
class Pager:
    """A reader paging one scope with ``following`` while the writers run."""

    name: str
    path: str
    via: int  # index of the server process it reads through
    seen: list[str] = field(default_factory=list)
    pages: int = 0
    unavailable: int = 0  # 503 answers and transport errors, retried
    failed: str = ""  # an answer it could not go on after


@dataclass
class Load:
    realm: str
    writers: int
    domains: int

    def domain_of(self, w: int) -> str:
        # Writers 2k (first process) and 2k+1 (second) share a domain: every domain is written through both.
        return f"d{(w // 2) % self.domains}"


async def run(args: argparse.Namespace, servers: list[ServerProcess], nodes: list[LoopbackNode]) -> int:
    # Ctrl-C or SIGTERM cancel the load as a whole (asyncio.run then cancels every task), rather than
    # raising KeyboardInterrupt inside whichever writer happens to run.
    main_task = asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, main_task.cancel)
    load = Load(f"three{int(time.time())}", args.writers, args.domains)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    clients = [httpx.AsyncClient(base_url=s.url, timeout=args.request_timeout, limits=limits) for s in servers]
    attempts: list[Attempt] = []
    failures_shown = 0
    stop_reading = asyncio.Event()
    warmup_problems: list[str] = []
    running: list[asyncio.Task[None]] = []  # writers and pagers, cancelled before their clients close
    t0 = time.monotonic()

    async def writer(w: int, realm: str, attempts: list[Attempt], stop_writing: asyncio.Event) -> None:
        nonlocal failures_shown
        client, path = clients[w % 2], f"/{realm}/{load.domain_of(w)}/e{w}/t"
        seq = 0
        while not stop_writing.is_set():
            body: dict[str, Any] = {"event": {"w": w, "i": seq}}
            if args.client_ids:
                body["event_id"] = uuid7()
            started = time.monotonic()
            detail = ""
            try:
                response = await client.post(path, json=body)
                outcome = str(response.status_code)
                if response.status_code != 201:
                    detail = response.text
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.TransportError as exc:
                outcome, detail = "transport", repr(exc)
            attempt = Attempt(w, seq, started - t0, time.monotonic() - started, outcome)
            attempts.append(attempt)
            seq += 1
            if outcome == "201":
                attempt.result = response.json()
                continue
            if failures_shown < SHOWN_FAILURES:
                failures_shown += 1
                print(f"  {attempt.started:6.1f}s writer {w} via {servers[w % 2].name}: {outcome} "
                      f"after {attempt.latency:.1f}s {' '.join(detail.split())[:400]}")
            await asyncio.sleep(0.1)

    async def page(pager: Pager) -> None:
        following: str | None = None
        while True:
            finished = stop_reading.is_set()
            params = {"limit": str(args.page_size)}
            if following is not None:
                params["following"] = following
            try:
                response = await clients[pager.via].get(pager.path, params=params)
            except httpx.TransportError:
                pager.unavailable += 1
                await asyncio.sleep(0.2)
                continue
            if response.status_code == 503:
                pager.unavailable += 1
                await asyncio.sleep(0.2)
                continue
            if response.status_code != 200:
                pager.failed = f"HTTP {response.status_code} {' '.join(response.text.split())[:200]}"
                return
            pager.pages += 1
            events = response.json()["events"]
            pager.seen += [e["event_id"] for e in events]
            if events:
                following = events[-1]["event_id"]
            elif finished:
                return
            else:
                await asyncio.sleep(args.poll)

    realm_path = f"/{load.realm}"
    pagers = [Pager(f"realm via {s.name}", realm_path, i) for i, s in enumerate(servers)]
    pagers += [Pager(f"domain d{d}", f"{realm_path}/d{d}", (d + 1) % 2) for d in range(args.domains)]
    pagers += [Pager(f"entity e{w}", f"{realm_path}/{load.domain_of(w)}/e{w}", (w + 1) % 2)
               for w in range(args.writers)]
    watched = [s.proc.pid for s in servers if s.proc] + [n.pid for n in nodes]

    def cpu_sample() -> list[float]:
        """CPU seconds of each server and node, and of this script (the load generator) last."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        return [cpu_seconds(pid) for pid in watched] + [own.ru_utime + own.ru_stime]

    print(f"load: realm {load.realm}, {args.writers} writers (writer w: entity e{{w}} through process w % 2), "
          f"{args.domains} domains, {len(pagers)} live pagers")
    try:
        idle = cpu_sample()
        await asyncio.sleep(5)
        idle = [after - before for before, after in zip(idle, cpu_sample())]
        print(f"idle for 5s: the nodes spent {sum(idle[2:5]):.1f} CPU seconds (gossip, compaction, "
              f"timers: {sum(idle[2:5]) / 5:.2f} core); the servers {sum(idle[:2]):.1f}")
        if args.warmup:
            # A cold JVM runs its first seconds 2-3x slower: without this, the first phase would
            # measure the JIT as much as the three nodes.
            print(f"warming up for {args.warmup:.0f}s (realm {load.realm}-warmup, not checked)")
            warm: list[Attempt] = []
            stop_warmup = asyncio.Event()
            tasks = [asyncio.ensure_future(writer(w, f"{load.realm}-warmup", warm, stop_warmup))
                     for w in range(args.writers)]
            running += tasks
            await asyncio.sleep(args.warmup)
            stop_warmup.set()
            await asyncio.gather(*tasks)
            print(f"warm-up: {sum(a.outcome == '201' for a in warm) / args.warmup:.1f} appends/s")
            if odd := Counter(a.outcome for a in warm if a.outcome not in EXPECTED_OUTCOMES):
                warmup_problems.append(f"warm-up appends answered {dict(odd)}, neither 201 nor 503 (the "
                                       "servers' logs say why)")
            t0 = time.monotonic()
        stop_writing = asyncio.Event()
        cpu_start = cpu_sample()
        tasks = [asyncio.ensure_future(writer(w, load.realm, attempts, stop_writing)) for w in range(args.writers)]
        paging = [asyncio.ensure_future(page(p)) for p in pagers]
        running += tasks + paging
        await asyncio.sleep(args.kill_at)
        cpu_kill = cpu_sample()
        killed_at = time.monotonic() - t0
        print(f"{killed_at:6.1f}s: killing node {nodes[2].host} (SIGKILL)")
        await asyncio.to_thread(nodes[2].kill)
        await asyncio.sleep(max(0.0, args.seconds - killed_at))
        stop_writing.set()
        ended = time.monotonic() - t0
        cpu_end = cpu_sample()
        cpu_end[-2] = cpu_kill[-2]  # node 3 is gone: its CPU ends at the kill
        await asyncio.gather(*tasks)
        print(f"{time.monotonic() - t0:6.1f}s: writers stopped; {args.drain:.0f}s for appends still running "
              "in the servers, then the pagers read to the end")
        await asyncio.sleep(args.drain)
        stop_reading.set()
        await asyncio.gather(*paging)

        print(f"{time.monotonic() - t0:6.1f}s: pagers done; reading every scope through {servers[1].name}")
        final = {realm_path: await read_all(clients[1], realm_path)}
        for p in pagers[2:]:
            final[p.path] = await read_all(clients[1], p.path)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for client in clients:
            await client.aclose()

    print()
    names = [f"server {s.name}" for s in servers] + [f"node {n.host}" for n in nodes] + ["this script"]
    phase(attempts, "three nodes", 0, killed_at, names, cpu_start, cpu_kill)
    phase(attempts, "two nodes  ", killed_at, ended, names, cpu_kill, cpu_end)
    phase(attempts, "  of which the first 5s after the kill", killed_at, killed_at + 5)
    wide = pagers[:2 + args.domains]
    print(f"pagers: {sum(p.pages for p in pagers) / (ended + args.drain):.0f} pages/s in all; "
          + ", ".join(f"{p.name} {len(p.seen)} events/{p.pages} pages" for p in wide)
          + f"; entities {sum(len(p.seen) for p in pagers[len(wide):])} events in all; "
          f"{sum(p.unavailable for p in pagers)} reads answered 503 or not at all, retried")
    problems, notes = check(load, attempts, final, pagers)
    problems += warmup_problems
    for server in servers:
        if server.proc is None or server.proc.poll() is not None:
            problems.append(f"server {server.name} exited during the run (log {server.log_path})")
    for node in nodes[:2]:
        if not node.running():
            problems.append(f"node {node.host} is not running")
    for note in notes:
        print("note:", note)
    for problem in problems:
        print("PROBLEM:", problem)
    print("all checks passed" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


async def read_all(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    """Every event of a scope, oldest first, through every page (503s retried)."""
    events: list[dict[str, Any]] = []
    params = {"limit": "1000"}
    for _ in range(1000):
        try:
            response = await client.get(path, params=params)
        except httpx.TransportError:
            await asyncio.sleep(0.5)
            continue
        if response.status_code == 503:
            await asyncio.sleep(0.5)
            continue
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status_code} {response.text[:200]}")
        body = response.json()
        events += body["events"]
        if body["next"] is None:
            return events
        params["following"] = body["next"]
    raise RuntimeError(f"GET {path}: too many pages or retries")


def phase(attempts: list[Attempt], name: str, start: float, end: float, names: list[str] | None = None,
          cpu_before: list[float] | None = None, cpu_after: list[float] | None = None) -> None:
    """Appends acknowledged per second, their latency, the failures, and the CPU each process spent
    (the pagers' reads included) in one phase."""
    rows = [a for a in attempts if start <= a.started < end]
    ok = sorted(a.latency for a in rows if a.outcome == "201")
    failed = Counter(a.outcome for a in rows if a.outcome != "201")
    failures = ", ".join(f"{n} {kind}" for kind, n in failed.most_common()) or "none"
    if len(ok) < 2:
        print(f"{name}: {len(ok)} acknowledged appends in {end - start:.0f}s; failed: {failures}")
    else:
        q = statistics.quantiles(ok, n=100, method="inclusive")
        print(f"{name}: {len(ok) / (end - start):6.1f} appends/s ({len(ok)} in {end - start:.0f}s), p50 "
              f"{q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {ok[-1] * 1000:.0f} ms; failed: {failures}")
    if names is None or cpu_before is None or cpu_after is None:
        return
    cpu = [after - before for before, after in zip(cpu_before, cpu_after)]
    print(f"  CPU seconds: {', '.join(f'{n} {c:.1f}' for n, c in zip(names, cpu) if c)}; servers and nodes "
          f"{1000 * sum(cpu[:-1]) / max(len(ok), 1):.0f} ms per acknowledged append")


def check(load: Load, attempts: list[Attempt], final: dict[str, list[dict[str, Any]]],
          pagers: list[Pager]) -> tuple[list[str], list[str]]:
    """What must hold after the run (problems), and what may or may not have happened (notes)."""
    problems: list[str] = []
    notes: list[str] = []
    realm = final[f"/{load.realm}"]
    by_id = {e["event_id"]: e for e in realm}
    if len(by_id) != len(realm):
        problems.append(f"the realm read holds {len(realm) - len(by_id)} event ids twice")
    positions = [e["position"] for e in realm]
    if any(a >= b for a, b in zip(positions, positions[1:])):
        problems.append("the realm's positions do not increase along its order")
    # The body (writer, seq) names each attempt, whatever its answer: stored at most once.
    stored = Counter((e["event"]["w"], e["event"]["i"]) for e in realm)
    if twice := [k for k, n in stored.items() if n > 1]:
        problems.append(f"{len(twice)} appends stored more than once, e.g. (writer, seq) {twice[:3]}")
    sent = {(a.writer, a.seq): a for a in attempts}
    if unknown := set(stored) - set(sent):
        problems.append(f"{len(unknown)} stored events were never sent, e.g. {sorted(unknown)[:3]}")
    placed = {(e["event"]["w"], e["event"]["i"]): e for e in realm}
    missing, wrong = 0, 0
    for a in attempts:
        if a.outcome != "201":
            continue
        e = placed.get((a.writer, a.seq))
        if e is None:
            missing += 1
        elif (e["event_id"], e["version"], e["position"], e["entity"], e["domain"]) != (
                a.result["event_id"], a.result["version"], a.result["position"], f"e{a.writer}",
                load.domain_of(a.writer)):
            wrong += 1
    acked = sum(a.outcome == "201" for a in attempts)
    if missing:
        problems.append(f"{missing} of {acked} acknowledged events are missing")
    if wrong:
        problems.append(f"{wrong} acknowledged events are stored with another id, version, position or place")
    unanswered = [a for a in attempts if a.outcome != "201"]
    present = sum((a.writer, a.seq) in placed for a in unanswered)
    notes.append(f"{acked} acknowledged appends, all checked; {len(unanswered)} not acknowledged "
                 f"({dict(Counter(a.outcome for a in unanswered))}), of which {present} stored anyway and "
                 f"{len(unanswered) - present} not stored")
    for w in range(load.writers):
        # A writer waits for each answer, and one process orders its acknowledged appends.
        mine = [a.result["position"] for a in attempts if a.writer == w and a.outcome == "201"]
        if mine != sorted(mine):
            problems.append(f"writer {w}'s acknowledged appends are out of order in the realm")
    for path, events in final.items():
        parts = path.strip("/").split("/")
        if len(parts) == 1:
            continue
        expected = [e["event_id"] for e in realm if e["domain"] == parts[1] and (
            len(parts) == 2 or e["entity"] == parts[2])]
        got = [e["event_id"] for e in events]
        if got != expected:
            problems.append(f"{path} read {len(got)} events, not the realm's {len(expected)} in the realm's order")
        if len(parts) == 3:
            versions = [e["version"] for e in events]
            if versions != list(range(len(versions))):
                problems.append(f"entity {parts[2]} versions are not 0, 1, 2 ...: {versions[:8]} ...")
    if {e["domain"] for e in realm} - {load.domain_of(w) for w in range(load.writers)}:
        problems.append("the realm holds events of a domain nobody wrote to")
    if odd := Counter(a.outcome for a in attempts if a.outcome not in EXPECTED_OUTCOMES):
        problems.append(f"appends answered {dict(odd)}, neither 201 nor 503 (the servers' logs say why)")
    acknowledged = {(a.writer, a.seq) for a in attempts if a.outcome == "201"}
    for p in pagers:
        if p.failed:
            problems.append(f"pager {p.name} stopped: {p.failed}")
            continue
        whole = [e["event_id"] for e in final[p.path]]
        if p.seen == whole:
            continue
        if p.seen == whole[:len(p.seen)] and all(
                (by_id[i]["event"]["w"], by_id[i]["event"]["i"]) not in acknowledged for i in whole[len(p.seen):]):
            notes.append(f"pager {p.name} ended {len(whole) - len(p.seen)} events early, all unacknowledged "
                         "appends that committed after it finished")
        else:
            problems.append(f"pager {p.name} saw {len(p.seen)} events ({len(set(p.seen))} distinct), "
                            f"not the final order of {len(whole)}")
    return problems, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where the nodes and logs live (default: a temporary directory, "
                                                 "removed at the end)")
    parser.add_argument("--seconds", type=float, default=60, help="length of the load (default 60)")
    parser.add_argument("--warmup", type=float, default=15, help="seconds of appends before the measured load, "
                                                                 "elsewhere in the store (default 15)")
    parser.add_argument("--kill-at", type=float, default=20, help="when node 3 is killed (default 20)")
    parser.add_argument("--writers", type=int, default=16, help="concurrent appenders, one entity each (default 16)")
    parser.add_argument("--domains", type=int, default=4, help="domains the entities are spread over (default 4)")
    parser.add_argument("--client-ids", action="store_true", help="send a client-chosen event_id with each append")
    parser.add_argument("--page-size", type=int, default=100, help="limit of the live pagers' reads (default 100)")
    parser.add_argument("--poll", type=float, default=0.2, help="pause of a live pager after an empty page")
    parser.add_argument("--request-timeout", type=float, default=30, help="seconds before a request counts as "
                                                                           "unanswered (default 30)")
    parser.add_argument("--drain", type=float, default=5, help="seconds between the writers' end and the "
                                                                "pagers' last reads (default 5)")
    args = parser.parse_args()
    if not 1 <= args.domains <= args.writers // 2 or not 0 < args.kill_at < args.seconds:
        parser.error("needs 1 <= --domains <= --writers / 2 (two writers a domain, one through each process) "
                     "and 0 < --kill-at < --seconds")
    # SIGTERM as Ctrl-C: the finally below stops the servers and the nodes (the load has its own handlers).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = args.dir or Path(tempfile.mkdtemp(prefix="perhap-3nodes-"))
    root.mkdir(parents=True, exist_ok=True)
    nodes = [LoopbackNode(root / f"node{i + 1}", i) for i in range(3)]
    servers: list[ServerProcess] = []
    try:
        for node in nodes:  # one at a time: each joins through the seed
            started = time.monotonic()
            node.start(timeout=300)
            print(f"node {node.host} up in {time.monotonic() - started:.1f}s")
        hosts = ",".join(n.host for n in nodes)
        url = (f"cassandra://{hosts}:{NATIVE}/perhap3?replication_factor=3&consistency=QUORUM"
               f"&serial_consistency=SERIAL&timeout=5")
        for name in ("A", "B"):  # A creates the keyspace, B finds it
            server = ServerProcess(name, url, root / f"server-{name}.log")
            servers.append(server)
            started = time.monotonic()
            server.start()
            print(f"server {name} ({server.url}) answering in {time.monotonic() - started:.1f}s")
        print(f"store {url}; load for {args.seconds:.0f}s, node {nodes[2].host} killed at {args.kill_at:.0f}s")
        return asyncio.run(run(args, servers, nodes))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: stopping the servers and the nodes")
        return 130
    finally:
        for server in servers:
            server.stop()
        for node in nodes:
            node.stop()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
