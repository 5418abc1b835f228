"""What every benchmark module shares: sizes per mode, the result row, timing and table output."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """How long and how big each measurement is; ``full``, ``quick`` and ``tiny`` (the smoke test)."""

    mode: str
    seconds: float  # length of one timed throughput phase
    http_seconds: int  # length of one wrk / load-generator run
    batch_count: int  # 1,000-event batches appended (row 4)
    readback: int  # events in the entity read back (row 5)
    growth_n: int  # events already stored (row 6)
    growth_small: int  # the small store of the read-latency ratio (row 6b)
    growth_reads: int  # entities read per store for the latency ratio
    memory_domain: int  # events in the domain read through the server (row 7)
    stream_subscribers: int
    stream_rate: int  # appends per second while subscribers listen (row 8)
    stream_seconds: float
    peer_events: int  # events of the peer's read-back entity (row 5 baseline)

    @property
    def entities_per_domain(self) -> int:
        return max(1, self.growth_n // 10 // 100)


FULL = Sizes("full", seconds=4.0, http_seconds=4, batch_count=60, readback=100_000,
             growth_n=10_000_000, growth_small=10_000, growth_reads=400, memory_domain=1_000_000,
             stream_subscribers=100, stream_rate=1000, stream_seconds=10.0, peer_events=100_000)
QUICK = Sizes("quick", seconds=1.5, http_seconds=2, batch_count=20, readback=100_000,
              growth_n=1_000_000, growth_small=10_000, growth_reads=200, memory_domain=100_000,
              stream_subscribers=100, stream_rate=1000, stream_seconds=3.0, peer_events=100_000)
TINY = Sizes("tiny", seconds=0.2, http_seconds=1, batch_count=2, readback=2_000,
             growth_n=20_000, growth_small=2_000, growth_reads=10, memory_domain=2_000,
             stream_subscribers=5, stream_rate=100, stream_seconds=0.5, peer_events=2_000)
MODES = {s.mode: s for s in (FULL, QUICK, TINY)}


@dataclass
class Row:
    """One line of the table: perhap's figure, the baseline it is divided by, and the target."""

    key: str  # the row number, e.g. "3" or "6b"
    name: str
    backend: str
    value: float | None = None
    unit: str = ""
    baseline: float | None = None
    baseline_unit: str = ""
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""  # e.g. ">= 0.5", "<= 1.5", "< 150 MiB", "" for reference rows
    passed: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def judge(self, op: str, bound: float, subject: float | None = None) -> Row:
        """Set ``target`` and ``passed`` from the ratio (or ``subject``) and a comparison."""
        x = self.ratio if subject is None else subject
        self.target = self.target or f"{op} {bound:g}"
        if x is None or math.isnan(x):
            self.passed = None
        else:
            self.passed = {">=": x >= bound, "<=": x <= bound, "<": x < bound, ">": x > bound}[op]
        return self


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def rate_of(workers: int, seconds: float, step: Callable[[int, int], Awaitable[object]]) -> float:
    """Operations per second: ``workers`` tasks, task ``i`` awaiting ``step(i, n)`` for n = 0, 1, ...
    one at a time, until ``seconds`` have passed (every step started is finished and counted)."""
    done = 0
    stop = False

    async def work(index: int) -> None:
        nonlocal done
        for n in itertools.count():
            if stop:
                return
            await step(index, n)
            done += 1

    tasks = [asyncio.ensure_future(work(i)) for i in range(workers)]
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    return done / (time.perf_counter() - start)


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def remove_sqlite(path: Path | str) -> None:
    """Delete a SQLite database file and its WAL and shared-memory files, if there."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "platform": platform.platform(), "sqlite": __import__("sqlite3").sqlite_version,
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 1024**3, 1)
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except Exception:
        pass
    return info


#: The fields of /proc/stat's "cpu" line, in order (proc(5)); guest time is counted in user already.
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, int] | None:
    """The machine's CPU time so far, in clock ticks summed over its CPUs (/proc/stat's "cpu"
    line), or None where there is no such file."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    return dict(zip(_CPU_FIELDS, map(int, first[1:1 + len(_CPU_FIELDS)]), strict=False))


def stolen_percent(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    """The share of the machine's CPU time that the hypervisor gave to other guests between two
    :func:`cpu_times` readings, in percent (None if either is missing or no time passed).

    On a shared virtual machine this is the noise no ratio can cancel when it comes in bursts: a
    burst that falls on perhap's run and not on its baseline's (or the other way round) moves the
    ratio. A quiet machine shows about 0.
    """
    if before is None or after is None:
        return None
    total = sum(after.get(k, 0) - before.get(k, 0) for k in _CPU_FIELDS)
    if total <= 0:
        return None
    return 100.0 * (after.get("steal", 0) - before.get("steal", 0)) / total


#: A round's CPU steal, kept beside its figures in the JSON: not a figure to take the best of.
STEAL = "steal_percent"


class StealMeter:
    """``with StealMeter() as m: ...`` then ``m.percent``: :func:`stolen_percent` over the block,
    for one round of a comparison or one step of the suite (None where unknown)."""

    percent: float | None = None

    def __enter__(self) -> StealMeter:
        self._before = cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        stolen = stolen_percent(self._before, cpu_times())
        self.percent = None if stolen is None else round(stolen, 2)

    def beside(self, figures: dict[str, float]) -> dict[str, float]:
        """A round's figures with its steal under :data:`STEAL`, when known."""
        return figures if self.percent is None else {**figures, STEAL: self.percent}


#: A round of a comparison that lost this share of the machine's CPU time to steal, or more, does
#: not count towards the comparison's rounds: another round is run, up to :data:`EXTRA_ROUNDS`.
NOISY_STEAL = 3.0
EXTRA_ROUNDS = 2


def rounds(repeats: int, what: str, *, noisy: float = NOISY_STEAL, extra: int = EXTRA_ROUNDS,
           meter: Callable[[], StealMeter] = StealMeter) -> Iterator[int]:
    """The round numbers of one comparison of alternating runs (``for i in rounds(2, "row 3")``).

    Each round's steal is measured from one round number to the next. A round that lost ``noisy``
    percent or more is run again, up to ``extra`` more rounds in all: ``repeats`` counts rounds
    that were not stolen from, as far as the machine allows. Its figures are still kept (a best of
    rounds may take them); the extra rounds only give the comparison more chances at a fair pair.
    """
    done = added = 0
    index = 0
    while done < repeats:
        with meter() as steal:
            yield index
        index += 1
        lost = steal.percent
        if lost is not None and lost >= noisy and added < extra:
            added += 1
            log(f"{what}: round {index} lost {lost:.1f}% of the CPU time to steal; one round more "
                f"({added} of at most {extra})")
        else:
            done += 1


def disk_of(path: Path) -> str:
    """The filesystem and device a path lives on, e.g. 'ext4 on /dev/vda (rotational=0)'."""
    try:
        out = subprocess.run(["df", "--output=source,fstype", str(path)], capture_output=True,
                             text=True, timeout=5).stdout.splitlines()[-1].split()
        device, fstype = out[0], out[1]
        name = Path(device).name.rstrip("0123456789") if device.startswith("/dev/") else ""
        rot = Path(f"/sys/block/{name}/queue/rotational")
        suffix = f" (rotational={rot.read_text().strip()})" if name and rot.exists() else ""
        return f"{fstype} on {device}{suffix}"
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- output


def _num(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if unit in ("ms", "MiB", "µs"):
        text = f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"
    elif abs(x) >= 100:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}"
    return f"{text} {unit}".strip()


def table(rows: Sequence[Row], *, judged: bool = True) -> str:
    """The one table the suite prints; a smoke run (``judged=False``) gives no verdicts."""
    head = ["#", "measure", "backend", "perhap", "baseline", "ratio", "target",
            "result" if judged else "result (smoke run: not judged)"]
    lines = []
    for r in rows:
        base = _num(r.baseline, r.baseline_unit)
        if r.baseline_name:
            base = f"{base} ({r.baseline_name})"
        result = {True: "PASS", False: "FAIL", None: "-" if not r.target else "n/a"}[r.passed]
        if not judged:
            result = "-"
        lines.append([r.key, r.name, r.backend, _num(r.value, r.unit), base,
                      "-" if r.ratio is None else f"{r.ratio:.2f}", r.target or "-", result])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    notes = [f"  {r.key} [{r.backend}] {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def markdown_table(rows: Sequence[Row]) -> str:
    out = ["| # | measure | backend | perhap | baseline | ratio | target | result |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = _num(r.baseline, r.baseline_unit)
        if r.baseline_name:
            base = f"{base} ({r.baseline_name})"
        result = {True: "PASS", False: "**FAIL**", None: "-"}[r.passed]
        out.append(f"| {r.key} | {r.name} | {r.backend} | {_num(r.value, r.unit)} | {base} | "
                   f"{'-' if r.ratio is None else f'{r.ratio:.2f}'} | {r.target or '-'} | {result} |")
    return "\n".join(out)


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def rows_from_json(path: Path) -> list[Row]:
    doc = json.loads(path.read_text())
    return [Row(**r) for r in doc["rows"]]


__all__ = ["EXTRA_ROUNDS", "FULL", "MODES", "NOISY_STEAL", "QUICK", "STEAL", "TINY", "MiB", "Row", "Sizes",
           "StealMeter", "Stopwatch", "cpu_times", "disk_of", "log", "machine", "markdown_table", "median",
           "percentile", "ratio", "rate_of", "replace", "rounds", "stolen_percent", "table", "write_json"]
