"""Row 7: the server's peak memory while a client reads a large domain, by paging and by a stream.

Each way gets a fresh ``perhap serve`` process on the prepared store. Its resident set is sampled
every 20 ms while the client reads; the peak is the kernel's high-water mark (``VmHWM``), which
catches peaks between samples. "Flat" means the peak does not grow with the events read: the note
gives the resident set after the first tenth and at the end of the read.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .common import MiB
from .dataset import Dataset
from .servers import perhap_server


def _hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MiB
    return float("nan")


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float, int]] = []  # (time, rss MiB, events read)
        self.progress = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                rss = self.proc.memory_info().rss / MiB
            except Exception:
                return
            self.samples.append((time.monotonic(), rss, self.progress))
            self.done.wait(0.02)


def _read_paging(url: str, path: str, expected: int, sampler: Sampler) -> int:
    total = 0
    following = None
    with httpx.Client(base_url=url, timeout=120) as client:
        while True:
            params: dict[str, Any] = {"limit": 10_000}
            if following:
                params["following"] = following
            r = client.get(path, params=params)
            r.raise_for_status()
            body = r.json()
            total += len(body["events"])
            sampler.progress = total
            following = body["next"]
            if following is None or total >= expected:
                return total


def _read_stream(url: str, path: str, expected: int, sampler: Sampler) -> int:
    total = 0
    tail = b""
    with httpx.Client(base_url=url, timeout=120) as client, \
            client.stream("GET", path, headers={"accept": "text/event-stream"}) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            data = tail + chunk
            total += data.count(b"\ndata: ")
            tail = data[-6:]
            sampler.progress = total
            if total >= expected:
                return total
    return total


def measure(data: Dataset, workdir: Path, how: str) -> dict[str, Any]:
    """Peak and idle resident set (MiB) of a server while one client reads domain d0 fully."""
    expected = data.domain_events()
    with perhap_server(data.url, workdir / f"memory-{how}.log") as server:
        httpx.get(server.url + "/bench/d0", params={"limit": 1}).raise_for_status()
        time.sleep(0.2)
        sampler = Sampler(server.pid)
        idle = sampler.proc.memory_info().rss / MiB
        sampler.start()
        start = time.perf_counter()
        read = (_read_paging if how == "paging" else _read_stream)(server.url, "/bench/d0", expected, sampler)
        elapsed = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
        peak = _hwm(server.pid)
    if read < expected:
        raise RuntimeError(f"{how}: read {read} of {expected} events")
    samples = sampler.samples
    early = [rss for _, rss, n in samples if n <= expected / 10] or [idle]
    return {"idle_mib": idle, "peak_mib": max(peak, max(s[1] for s in samples)),
            "rss_at_10pct_mib": max(early), "rss_at_end_mib": samples[-1][1] if samples else idle,
            "events": read, "events_per_s": read / elapsed}
