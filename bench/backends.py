"""Backends to measure: each hands out fresh, empty store URLs for the in-process rows.

SQLite always exists. PostgreSQL and Cassandra join when their perhap backend module imports and
the harness can start a private server (``perhap.testing.postgres`` / ``perhap.testing.cassandra``).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
from pathlib import Path

NAMES = ("sqlite", "postgresql", "cassandra")


class Backend:
    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.counter = itertools.count()

    def start(self) -> None:
        pass

    def new_url(self) -> str:
        return f"sqlite:///{self.workdir}/store-{next(self.counter)}.db"

    def stop(self) -> None:
        pass


class PostgresBackend(Backend):
    name = "postgresql"

    def start(self) -> None:
        from perhap.testing.postgres import PostgresServer

        self.server = PostgresServer(self.workdir / "pg")
        self.server.start()

    def new_url(self) -> str:
        return self.server.create_database(f"bench_{os.getpid()}_{next(self.counter)}")

    def stop(self) -> None:
        self.server.cleanup()


class CassandraBackend(Backend):
    name = "cassandra"

    def start(self) -> None:
        from perhap.testing.cassandra import CassandraNode

        # Sized for load, not for a test suite's footprint (issue 19: the engine's own ceiling).
        self.node = CassandraNode(self.workdir / "node", profile="throughput")
        self.node.start()

    def new_url(self) -> str:
        return self.node.url(f"bench_{os.getpid()}_{next(self.counter)}")

    def flush(self) -> None:
        """Write every memtable to SSTables (nodetool flush): before a read-back is timed, so that
        perhap's and the raw driver's reads both come from disk-backed tables."""
        self.node.nodetool("flush")

    def stop(self) -> None:
        self.node.stop()


CLASSES = {"sqlite": Backend, "postgresql": PostgresBackend, "cassandra": CassandraBackend}


def available(name: str) -> tuple[bool, str]:
    """Whether a backend can be measured here, and why not."""
    if name == "sqlite":
        return True, ""
    module = {"postgresql": "perhap.backends.postgres", "cassandra": "perhap.backends.cassandra"}[name]
    if importlib.util.find_spec(module) is None:
        return False, f"{module} does not exist yet"
    if name == "postgresql":
        if importlib.util.find_spec("asyncpg") is None:
            return False, "asyncpg is not installed"
        try:
            from perhap.testing.postgres import find_bin_dir

            find_bin_dir()
        except Exception as exc:
            return False, str(exc).splitlines()[0]
    if name == "cassandra":
        if importlib.util.find_spec("cassandra") is None:
            return False, "cassandra-driver is not installed"
        if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
            return False, "no java to run Cassandra"
    return True, ""


#: What ``auto`` measures in a full run: the backends whose servers start in seconds, so that the
#: one command finishes within issue 6's five minutes. Cassandra's rows (a JVM, its warm-up and
#: its raw-driver baselines: about a minute and a half more) are asked for by name or ``all``.
AUTO_FULL = ("sqlite", "postgresql")


def left_out(spec: str, quick: bool) -> dict[str, str]:
    """The backends ``all`` or ``auto`` would measure but cannot here, each with why: named in the
    run's output and JSON, so that a table without them does not read as the whole picture."""
    wanted = NAMES if spec == "all" else AUTO_FULL if spec == "auto" and not quick else ()
    return {n: why for n in wanted for ok, why in [available(n)] if not ok}


def choose(spec: str, quick: bool) -> list[str]:
    """Backends named by ``--backend``: a comma list; ``all`` (every available one); or ``auto``
    (quick: SQLite; else SQLite and PostgreSQL where available)."""
    if spec == "auto":
        if quick:
            return ["sqlite"]
        return [n for n in AUTO_FULL if available(n)[0]]
    if spec == "all":
        return [n for n in NAMES if available(n)[0]]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    names = ["postgresql" if n in ("postgres", "pg") else n for n in names]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise SystemExit(f"unknown backend(s): {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    for n in names:
        ok, why = available(n)
        if not ok:
            raise SystemExit(f"backend {n} is not available: {why}")
    return names
