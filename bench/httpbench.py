"""Rows 1 and 2: perhap over HTTP against a raw ASGI hello-world under the same uvicorn settings.

Each :class:`Target` is one ``perhap serve`` (SQLite; PostgreSQL with one process and with
``--workers 2``); all of a run's targets share one raw ASGI baseline, measured in turn with them.

The load comes from wrk (Debian's ``wrk`` package) when it is installed, else from
:mod:`bench.loadgen`; either way it runs in processes of its own. 32 connections, one request in
flight on each. POSTs are durable single-event appends spread over 2,000 entities (each of wrk's
two threads cycles through its own 1,000, each load-generator connection through its own 62), and
both report the latencies' p99 that row 1 is judged on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .common import StealMeter, rounds
from .servers import Server, perhap_server, raw_server

CONNECTIONS = 32

POST_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  local path = "/bench/http/t" .. tid .. "-" .. (n % 1000) .. "/happened"
  return wrk.format(nil, path, nil, '{"event":{"n":' .. n .. ',"text":"hello from the benchmark"}}')
end
"""


def generator() -> str:
    return "wrk" if shutil.which("wrk") else "builtin"


def _wrk(url: str, seconds: int, script: Path | None) -> dict[str, float]:
    argv = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60)
    out = proc.stdout
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk gave no rate (exit {proc.returncode}): {(out + proc.stderr).strip()[-300:]}")
    rps = float(found.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    errors = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    result = {"rps": rps, "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
              "errors": float(sum(int(x) for x in errors.groups())) if errors else 0.0}
    if p99:
        result["p99_ms"] = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return result


def _builtin(url: str, method: str, seconds: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.loadgen", url, "--method", method,
            "--connections", str(CONNECTIONS), "--seconds", str(seconds), "--processes", "2"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def load(url: str, method: str, seconds: int, workdir: Path) -> dict[str, float]:
    """Requests per second of ``method`` on ``url`` from 32 connections for ``seconds``, with the
    CPU steal of the run (under ``STEAL``; the best run's is the one the table's ratio used)."""
    with StealMeter() as steal:
        if generator() == "wrk":
            script = None
            if method == "POST":
                script = workdir / "post.lua"
                script.write_text(POST_LUA)
            figures = _wrk(url, seconds, script)
        else:
            base, _, path = url.partition("/bench/http")
            figures = _builtin(url if method == "GET" else base + "/bench/http", method, seconds)
    return steal.beside(figures)


def _prepare_entity(server: Server, count: int = 100) -> tuple[str, int]:
    """The path of a ``count``-event entity, and the size of perhap's answer to a GET of it."""
    path = "/bench/http-read/e100"
    events = [{"type": "happened", "event": {"n": i, "text": "hello from the benchmark"}} for i in range(count)]
    r = httpx.post(server.url + path, json={"events": events}, timeout=30)
    r.raise_for_status()
    answer = httpx.get(server.url + path, timeout=30)
    assert len(answer.json()["events"]) == count, answer.text[:200]
    return path, len(answer.content)


@dataclass(frozen=True)
class Target:
    """One ``perhap serve`` to measure: its label in the table, its store and its processes."""

    label: str  # the table's backend column: "sqlite", "postgresql", "postgresql, 2 workers"
    backend: str  # one of bench.backends.NAMES
    db_url: str
    workers: int = 1


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    return max(runs, key=lambda r: r["rps"])


def _bad(runs: list[dict[str, float]]) -> str:
    """What went wrong in any of ``runs`` (every round counts, not only the best one kept)."""
    non2xx, errors = sum(r.get("non2xx", 0) for r in runs), sum(r.get("errors", 0) for r in runs)
    if non2xx or errors:
        return f"{non2xx:.0f} non-2xx responses, {errors:.0f} errors in {len(runs)} rounds"
    return ""


def measure(targets: list[Target], workdir: Path, seconds: int, repeats: int,
            methods: tuple[str, ...] = ("POST", "GET")) -> dict[str, Any]:
    """Best of ``repeats`` alternating runs (raw, each target, raw, each target ...) per method, and
    a round more for each round stolen from (:func:`~bench.common.rounds`).

    One raw ASGI baseline serves every target of the run. A target whose server does not start,
    or whose load sees a non-2xx answer or a socket error, is left out and named in ``failed``;
    the others are still measured.
    """
    failed: dict[str, str] = {}
    raw_runs: dict[str, list[dict[str, float]]] = {"post": []}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {t.label: {"post": [], "get": []} for t in targets}
    reads: dict[str, tuple[str, int]] = {}
    with ExitStack() as stack:
        raw = stack.enter_context(raw_server(workdir / "raw-server.log"))
        servers: dict[str, Server] = {}
        for t in targets:
            log_path = workdir / f"perhap-server-{t.label.replace(', ', '-').replace(' ', '-')}.log"
            extra = ("--workers", str(t.workers)) if t.workers > 1 else ()
            try:
                server = stack.enter_context(perhap_server(t.db_url, log_path, *extra))
                if t.workers > 1:
                    server.wait_for_workers(t.workers)
                reads[t.label] = _prepare_entity(server)
            except Exception as exc:
                failed[t.label] = f"server: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                continue
            servers[t.label] = server

        def each_target(method: str) -> None:
            for label, server in list(servers.items()):
                path = "/bench/http" if method == "POST" else reads[label][0]
                try:
                    runs[label][method.lower()].append(load(server.url + path, method, seconds, workdir))
                except Exception as exc:  # this server's rows are lost, not the others'
                    failed[label] = f"{method}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    del servers[label]

        if "POST" in methods:
            for _ in rounds(repeats, "rows 1 (POST)"):
                raw_runs["post"].append(load(raw.url + "/bench/http", "POST", seconds, workdir))
                each_target("POST")
        if "GET" in methods:
            # The baseline answers a body of the same size as each target's (like with like).
            sizes = sorted({reads[label][1] for label in servers})
            for size in sizes:
                raw_runs[f"get_{size}"] = []
            for _ in rounds(repeats, "row 2 (GET)"):
                for size in sizes:
                    raw_runs[f"get_{size}"].append(load(raw.url + f"/sized/{size}", "GET", seconds, workdir))
                each_target("GET")
        for label, server in list(servers.items()):  # still answering after the load
            try:
                httpx.get(server.url + "/bench/http/keys", params={"limit": 10}, timeout=30).raise_for_status()
            except httpx.HTTPError as exc:
                failed[label] = f"after the load: {type(exc).__name__}: {exc}"
    raw_best = {k: _best(v) for k, v in raw_runs.items() if v}
    for name, kept in raw_runs.items():
        if _bad(kept):
            raise RuntimeError(f"raw ASGI {name}: {_bad(kept)}")
    perhap: dict[str, dict[str, Any]] = {}
    for t in targets:
        if t.label in failed:
            continue
        best = {k: _best(v) for k, v in runs[t.label].items() if v}
        bad = "; ".join(f"{k}: {_bad(v)}" for k, v in runs[t.label].items() if _bad(v))
        if bad:
            failed[t.label] = bad
            continue
        perhap[t.label] = {**best, "read_bytes": reads[t.label][1], "workers": t.workers,
                           "backend": t.backend}
    return {"generator": generator(), "raw": raw_best, "perhap": perhap, "failed": failed,
            "runs": {"raw": raw_runs, **runs}}
