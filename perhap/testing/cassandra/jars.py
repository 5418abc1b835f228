"""Cassandra's jars, resolved with Maven into a per-version cache."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DEFAULT_VERSION = os.environ.get("PERHAP_CASSANDRA_VERSION", "5.0.9")
POM = Path(__file__).resolve().parent.parent / "cassandra-pom.xml"
_MARKER = ".resolved"


class CassandraError(RuntimeError):
    """Resolution or startup failed. args[0] is a one-line summary; str() adds the log tail."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(summary, detail)

    def __str__(self) -> str:
        summary, detail = self.args
        return f"{summary}\n{detail}" if detail else str(summary)


def cache_root() -> Path:
    return Path(os.environ.get("PERHAP_CASSANDRA_CACHE") or Path.home() / ".cache" / "perhap")


def resolve_jars(version: str = DEFAULT_VERSION) -> Path:
    """Return a directory holding cassandra-all-<version> and its runtime jars.

    Idempotent: the lib dir gets a marker only after a complete copy, and a
    file lock keeps concurrent test workers from resolving at the same time.
    """
    lib = cache_root() / f"cassandra-{version}" / "lib"
    if (lib / _MARKER).exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lib / _MARKER).exists():  # another process finished while we waited
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise CassandraError("Maven ('mvn') is needed to fetch Cassandra's jars but is not on PATH")
        # Copy into a scratch dir and rename, so a half-copied lib never looks complete.
        tmp = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
        cmd = [mvn, "-q", "-B", "-f", str(POM), f"-Dcassandra.version={version}",
               "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0 or not list(tmp.glob(f"cassandra-all-{version}.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            out = (done.stdout + done.stderr).strip().splitlines()
            raise CassandraError(f"could not resolve cassandra-all {version} with Maven "
                                 f"(exit {done.returncode})", "\n".join(out[-30:]))
        (tmp / _MARKER).write_text(version + "\n")
        shutil.rmtree(lib, ignore_errors=True)
        tmp.rename(lib)
    return lib
