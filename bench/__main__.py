"""``python -m bench``: perhap's benchmark suite. One table on stdout, the same as JSON in a file.

    pip install -e '.[bench]'         # eventsourcing (the peer) and psutil; wrk from apt if you can
    python -m bench                   # every row on SQLite and PostgreSQL, under 5 minutes on 2 cores
    python -m bench --backend all     # Cassandra's rows too (a node started and warmed): ~7 minutes
    python -m bench --quick           # smaller sizes, under 60 seconds: CI's smoke check
    python -m bench --backend sqlite,postgresql --only 1,2,3,4,5

Every figure is divided by a baseline measured in the same run on the same machine, because
absolute speeds on shared machines drift; the ratio is what the targets judge.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import backends, dataset, httpbench
from .common import FULL, MODES, QUICK, StealMeter, cpu_times, disk_of, log, machine, table, write_json
from .suite import ROWS, Options, Suite

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (< 60 s)")
    parser.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)  # 'tiny' for tests
    parser.add_argument("--json", type=Path, help="where to write the results "
                        "(default bench/results.json, or bench/results-quick.json with --quick)")
    parser.add_argument("--backend", default="auto",
                        help="backends for rows 1-5: a comma list of "
                             f"{', '.join(backends.NAMES)}; all (every one available); or auto "
                             "(sqlite and postgresql where available; with --quick only sqlite). "
                             "Rows 1-2 measure SQLite and PostgreSQL "
                             "among them (PostgreSQL also with --workers 2); rows 6-10 measure SQLite.")
    parser.add_argument("--only", help=f"comma list of rows to run, from {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=_positive, help="alternating runs per comparison, best kept "
                        "(default 2, 1 with --quick)")
    parser.add_argument("--cache-dir", help="where prepared large stores are kept "
                        "(default $PERHAP_BENCH_CACHE or ~/.cache/perhap-bench; 2.5 GB for the "
                        "full run's 10-million-event store, 280 MB for --quick)")
    parser.add_argument("--workdir", help="scratch directory for stores (default: a new temp dir, "
                        "removed at the end; a directory given here is yours and is left in place, each run "
                        "in a new run-DATE-TIME-* directory inside it)")
    parser.add_argument("--keep", action="store_true", help="keep the new temp dir (its path is printed)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so a stopped run ends its servers and load generators as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)  # (a CI runner's or timeout's stop: servers were left running)
    sizes = MODES[args.mode] if args.mode else QUICK if args.quick else FULL
    quick = sizes is not FULL
    only = set(ROWS) if not args.only else {x.strip() for x in args.only.split(",") if x.strip()}
    bad = only - set(ROWS)
    if bad:
        build_parser().error(f"unknown rows: {', '.join(sorted(bad))}")
    if "ref" in only:
        only |= {"3", "4"}  # the references divide rows 3 and 4: without them they would say nothing
    try:
        dataset.cache_dir(args.cache_dir)  # (made here, so that an unusable one is one line, not a traceback)
    except OSError as exc:
        build_parser().error(f"the cache directory cannot be used: {exc}")
    missing = backends.left_out(args.backend, quick)
    for name, why in missing.items():
        log(f"backend {name} is not measured: {why}")
    options = Options(sizes=sizes, backends=backends.choose(args.backend, quick), only=only,
                      cache_dir=args.cache_dir, workdir=args.workdir, keep=args.keep,
                      repeats=args.repeats if args.repeats is not None else 1 if quick else 2)
    started = time.perf_counter()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = machine().get("load_average")
    log(f"mode {sizes.mode}, backends {', '.join(options.backends)}, rows {','.join(sorted(only))}")
    suite = Suite(options)
    with StealMeter() as steal:
        rows = suite.run()
    elapsed = time.perf_counter() - started
    info = machine()
    scratch = Path(suite.meta["workdir"])
    info["disk"] = disk_of(scratch.parent if not scratch.exists() else scratch)
    info["load_average_at_start"] = load_before
    info["steal_percent"] = steal.percent
    meta = {"mode": sizes.mode, "seconds": round(elapsed, 1), "started": started_at,
            "machine": info, "backends": options.backends, "backends_not_measured": missing,
            "load_generator": httpbench.generator(),
            "cache_dir": str(dataset.cache_dir(args.cache_dir)), "errors": suite.errors,
            "details": {k: v for k, v in suite.meta.items() if k not in ("workdir",)}}
    if quick:
        # Sizes this small say whether every row runs, not how fast perhap is: no verdicts.
        print(f"smoke run ({'--quick' if sizes is QUICK else sizes.mode + ' sizes'}): rows are measured but "
              "not judged; `python -m bench` judges them\n")
    print(table(rows, judged=not quick))
    print(f"\n{sizes.mode} run in {elapsed:.0f}s on {info['nproc']} x {info['cpu']}, {info['disk']}; "
          f"load generator {meta['load_generator']}")
    print(steal_line(info["steal_percent"], suite.meta.get("steal_percent", {})))
    for name, why in missing.items():
        print(f"NOT MEASURED: backend {name} ({why})")
    for error in suite.errors:
        print(f"ERROR {error}")
    path = args.json or HERE / ("results.json" if sizes is FULL else f"results-{sizes.mode}.json")
    # A smoke run's JSON carries no verdicts either (its targets stay, to show what a full run judges).
    write_json(path, [replace(r, passed=None) for r in rows] if quick else rows, {**meta, "judged": not quick})
    print(f"results written to {path}")
    if args.workdir is None and (args.keep or suite.errors):
        print(f"scratch directory kept{' (for the logs the errors name)' if suite.errors else ''}: {scratch}")
    return 1 if suite.errors else 0


def steal_line(run: float | None, by_step: dict[str, float | None]) -> str:
    """One line on the CPU time the hypervisor gave to other guests: the whole run's share, and
    the steps above 1 % (their rows are the ones to doubt)."""
    if run is None:
        known = cpu_times() is not None
        return "CPU steal: not measured (the run took no CPU time to speak of)" if known else \
            "CPU steal: not known on this platform"
    noisy = [f"{name} {share:.1f}%" for name, share in by_step.items() if share is not None and share > 1]
    return (f"CPU steal: {run:.1f}% of the run's CPU time went to other guests"
            + (f"; steps above 1%: {', '.join(noisy)}" if noisy else ""))


if __name__ == "__main__":
    sys.exit(main())
