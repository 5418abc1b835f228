"""Rows 1 and 2: perhap over HTTP against a raw ASGI hello-world under the same uvicorn settings.

The load comes from wrk (Debian's ``wrk`` package) when it is installed, else from
:mod:`bench.loadgen`; either way it runs in processes of its own. 32 connections, one request in
flight on each. POSTs are durable single-event appends spread over 2,000 entities (each wrk thread
or load-generator connection cycles through its own 1,000).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

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
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
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
    """Requests per second of ``method`` on ``url`` from 32 connections for ``seconds``."""
    if generator() == "wrk":
        script = None
        if method == "POST":
            script = workdir / "post.lua"
            script.write_text(POST_LUA)
        return _wrk(url, seconds, script)
    base, _, path = url.partition("/bench/http")
    return _builtin(url if method == "GET" else base + "/bench/http", method, seconds)


def _prepare_entity(server: Server, count: int = 100) -> tuple[str, int]:
    """The path of a ``count``-event entity, and the size of perhap's answer to a GET of it."""
    path = "/bench/http-read/e100"
    events = [{"type": "happened", "event": {"n": i, "text": "hello from the benchmark"}} for i in range(count)]
    r = httpx.post(server.url + path, json={"events": events}, timeout=30)
    r.raise_for_status()
    answer = httpx.get(server.url + path, timeout=30)
    assert len(answer.json()["events"]) == count, answer.text[:200]
    return path, len(answer.content)


def measure(db_url: str, workdir: Path, seconds: int, repeats: int) -> dict[str, Any]:
    """Best of ``repeats`` alternating runs (raw, perhap, raw, perhap ...) for POST and GET."""
    results: dict[str, list[dict[str, float]]] = {"raw_post": [], "perhap_post": [], "raw_get": [],
                                                  "perhap_get": []}
    with raw_server(workdir / "raw-server.log") as raw, \
            perhap_server(db_url, workdir / "perhap-server.log") as perhap:
        read_path, read_size = _prepare_entity(perhap)
        for _ in range(repeats):
            results["raw_post"].append(load(raw.url + "/bench/http", "POST", seconds, workdir))
            results["perhap_post"].append(load(perhap.url + "/bench/http", "POST", seconds, workdir))
        for _ in range(repeats):
            # The baseline answers a body of the same size: the row compares like with like.
            results["raw_get"].append(load(raw.url + f"/sized/{read_size}", "GET", seconds, workdir))
            results["perhap_get"].append(load(perhap.url + read_path, "GET", seconds, workdir))
        stored = httpx.get(perhap.url + "/bench/http/keys", params={"limit": 10}, timeout=30)
        stored.raise_for_status()
    best = {k: max(v, key=lambda r: r["rps"]) for k, v in results.items()}
    for name, r in best.items():
        if r.get("non2xx") or r.get("errors"):
            raise RuntimeError(f"{name}: {r['non2xx']:.0f} non-2xx responses, {r['errors']:.0f} errors")
    return {"generator": generator(), **best, "read_bytes": read_size, "runs": results}
