"""A real single-node Apache Cassandra for tests, without Docker.

Cassandra's jars (``cassandra-all`` and its runtime dependencies) are resolved
from Maven Central with ``mvn`` into a per-version cache, and
``org.apache.cassandra.service.CassandraDaemon`` runs in a child JVM with a
minimal ``cassandra.yaml`` written into the node's directory.

    with CassandraNode(tmp_path) as node:
        cluster = Cluster([node.host], port=node.port)

CLI (``python -m perhap.testing.cassandra``):
    start --dir DIR [--port PORT]   start detached, print host:port when ready
    stop --dir DIR                  stop a node started with ``start``
    resolve                         only download the jars

Environment: PERHAP_CASSANDRA_CACHE (cache root, default ~/.cache/perhap),
PERHAP_CASSANDRA_VERSION (default version), JAVA_HOME (which java to run),
PERHAP_CASSANDRA_JVM_OPTS (extra JVM flags, e.g. for debugging).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_VERSION = os.environ.get("PERHAP_CASSANDRA_VERSION", "5.0.9")
READY_LINE = "Starting listening for CQL clients"
POM = Path(__file__).with_name("cassandra-pom.xml")
_MARKER = ".resolved"

# From Cassandra's conf/jvm17-server.options (plus java.nio): Java 17 module access that
# Cassandra (and jamm, netty, chronicle) need, plus its netty settings.
_JVM17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    *(f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
        "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server", "java.sql/java.sql",
        "java.base/java.lang.ref", "jdk.unsupported/sun.misc",
        "jdk.compiler/com.sun.tools.javac.file", "jdk.attach/sun.tools.attach")),
    *(f"--add-opens={m}=ALL-UNNAMED" for m in (
        "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect", "java.base/jdk.internal.math",
        "java.base/jdk.internal.module", "java.base/jdk.internal.util.jar",
        "jdk.management/com.sun.management.internal", "java.base/sun.nio.ch", "java.base/java.io",
        "java.base/java.lang.reflect", "jdk.compiler/com.sun.tools.javac", "java.base/java.lang",
        "java.base/java.util", "java.base/java.nio")),
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]


class CassandraError(RuntimeError):
    """Resolution or startup failed. args[0] is a one-line summary; str() adds the log tail."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(summary, detail)

    def __str__(self) -> str:
        summary, detail = self.args
        return f"{summary}\n{detail}" if detail else summary


# --------------------------------------------------------------------------- jars

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


# ------------------------------------------------------------------- processes

def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is picked, so the n ports differ.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:  # a zombie (exited, not yet reaped) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """preexec_fn: the kernel SIGKILLs the JVM when its parent goes away."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


# PDEATHSIG fires when the *thread* that forked the child exits, not the
# process. Tied children are therefore forked from one long-lived thread, so a
# node started from a worker thread (asyncio.to_thread) doesn't die with it.
def _new_spawner() -> None:
    global _spawner
    _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cassandra-spawner")


_new_spawner()
os.register_at_fork(after_in_child=_new_spawner)  # a forked child has no spawner thread


def _spawn(argv: list[str], *, detach: bool, **kw) -> subprocess.Popen:
    # Own session either way: a Ctrl-C meant for pytest doesn't hit the JVM
    # directly; the harness stops it in order instead.
    kw.update(start_new_session=True, stdin=subprocess.DEVNULL)
    if detach:  # CLI: the node must outlive this process
        return subprocess.Popen(argv, **kw)
    return _spawner.submit(subprocess.Popen, argv,
                           preexec_fn=lambda p=os.getpid(): _die_with_parent(p), **kw).result()


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise CassandraError("no 'java' found (set JAVA_HOME to a Java 11 or 17 JDK)")
    return java


# ------------------------------------------------------------------------ node

class CassandraNode:
    """One Cassandra node whose config, data, logs and pid file live in ``directory``.

    Ports are chosen on first use and remembered in ``node.json``, so a stopped
    node restarts on the same directory and ports with its data intact.
    """

    host = "127.0.0.1"

    def __init__(self, directory: str | Path, port: int | None = None, *,
                 version: str = DEFAULT_VERSION, heap_mb: int = 512) -> None:
        self.dir = Path(directory).resolve()
        self.version, self.heap_mb = version, heap_mb
        self.log_path = self.dir / "logs" / "system.log"
        self.out_path = self.dir / "logs" / "jvm.out"  # JVM's own stdout/stderr
        self.pid_path = self.dir / "cassandra.pid"
        self._proc: subprocess.Popen | None = None
        state_path = self.dir / "node.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if "storage_port" not in state:
            native, storage, ssl = _free_ports(3)
            state = {"port": native, "storage_port": storage, "ssl_storage_port": ssl}
        if port is not None:
            if not 0 < port < 65536:
                raise ValueError(f"port must be in 1..65535, not {port}")
            state["port"] = port
        self.port: int = state["port"]
        self._state = state

    # -- public API
    def url(self, keyspace: str) -> str:
        return f"cassandra://{self.host}:{self.port}/{keyspace}"

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            # Once reaped, the pid may belong to someone else: never signal it.
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        # Guard against a recycled pid: it must be a Cassandra of this directory.
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"CassandraDaemon" in cmd and str(self.dir).encode() in cmd:
                return pid
        return None

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and _alive(pid)

    def start(self, timeout: float = 180, *, detach: bool = False) -> None:
        """Start the node and wait until it accepts CQL connections.

        ``detach=True`` (used by the CLI) lets the JVM outlive this process;
        otherwise it is killed by the kernel when this process dies.
        """
        if self.running():
            if self._proc is not None:
                return
            raise CassandraError(f"a Cassandra node is already running in {self.dir} (pid {self.pid})")
        lib = resolve_jars(self.version)
        self._write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        jmx_port, = _free_ports(1)
        with open(self.out_path, "wb") as out:  # this run's JVM output only
            self._proc = _spawn(self._command(lib, jmx_port), detach=detach,
                                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT)
        self.pid_path.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(timeout, log_offset)
        except BaseException:  # includes KeyboardInterrupt: never leave a half-started JVM
            self.kill()
            raise

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (Cassandra drains in its shutdown hook), SIGKILL after timeout."""
        pid = self.pid
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                self.kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL, as in a crash. Data written with a synced commit log survives."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 30)
        self._forget()

    def __enter__(self) -> CassandraNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals
    def _forget(self) -> None:
        if self._proc is not None:
            self._proc.poll()  # reap
        self._proc = None
        self.pid_path.unlink(missing_ok=True)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None or not _alive(pid):
                return True
            time.sleep(0.1)
        return False

    def _wait_ready(self, timeout: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._fail(f"Cassandra exited with code {self._proc.returncode} during startup", log_offset)
            # The log line alone could be a stale one, the port alone someone else's.
            if self._log_since(log_offset).find(READY_LINE) >= 0 and _port_open(self.port):
                return
            if time.monotonic() > deadline:
                self._fail(f"Cassandra did not accept CQL on port {self.port} within {timeout:.0f}s",
                           log_offset)
            time.sleep(0.25)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _fail(self, summary: str, log_offset: int) -> None:
        lines = self._log_since(log_offset).splitlines()
        tail = lines[-40:]
        # Put the cause in the one-line summary: the first ERROR and, when a
        # stack trace follows, its exception message.
        for i, line in enumerate(lines):
            if line.startswith("ERROR"):
                cause = line.split(" - ", 1)[-1]
                if i + 1 < len(lines) and "Exception" in lines[i + 1]:
                    cause += ": " + lines[i + 1]
                summary += f": {cause}"
                break
        out = self.out_path.read_text(errors="replace").splitlines()[-15:] if self.out_path.exists() else []
        raise CassandraError(f"{summary} (logs in {self.log_path.parent})",
                             "--- system.log ---\n" + "\n".join(tail) + "\n--- jvm.out ---\n" + "\n".join(out))

    def _command(self, lib: Path, jmx_port: int) -> list[str]:
        jamm = sorted(lib.glob("jamm-*.jar"))
        if not jamm:
            raise CassandraError(f"no jamm jar in {lib}; delete that directory and resolve again")
        return [
            # A small initial heap that grows on demand: an idle node then stays
            # ~300 MB smaller in RSS than with -Xms == -Xmx.
            _java(), f"-Xms{min(self.heap_mb, 128)}m", f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1",
            "-XX:+PerfDisableSharedMem",  # no hsperfdata mmap file in /tmp
            "-XX:+ExitOnOutOfMemoryError",  # fail loudly rather than limp on with corrupt state
            *_JVM17_FLAGS,
            f"-javaagent:{jamm[0]}",
            "-Djava.net.preferIPv4Stack=true",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{self.dir / 'cassandra.yaml'}",
            f"-Dcassandra.storagedir={self.dir / 'data'}",
            f"-Dcassandra.logdir={self.log_path.parent}",
            f"-Dcassandra.triggers_dir={self.dir / 'data' / 'triggers'}",
            f"-Dlogback.configurationFile=file://{self.dir / 'logback.xml'}",
            # Local-only JMX (for nodetool) on a port of its own, so nodes never clash.
            f"-Dcassandra.jmx.local.port={jmx_port}",
            # Single node: nothing to gossip with, so skip the waits meant for clusters.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=100",
            "-Dcassandra.superuser_setup_delay_ms=0",
            *shlex.split(os.environ.get("PERHAP_CASSANDRA_JVM_OPTS", "")),  # for debugging
            "-cp", f"{lib}/*", "org.apache.cassandra.service.CassandraDaemon",
        ]

    def _write_config(self) -> None:
        data = self.dir / "data"
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "triggers"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        (self.dir / "node.json").write_text(json.dumps({**self._state, "port": self.port}) + "\n")
        s = self._state
        # Rewritten on every start (cheap, and picks up a changed --port); the
        # data directories are what carry state between runs.
        (self.dir / "cassandra.yaml").write_text(f"""\
# Written by perhap.testing.cassandra: a small single-node test cluster.
cluster_name: perhap-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{s['storage_port']}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {s['storage_port']}
ssl_storage_port: {s['ssl_storage_port']}
native_transport_port: {self.port}
start_native_transport: true
data_file_directories: [{data / 'data'}]
commitlog_directory: {data / 'commitlog'}
saved_caches_directory: {data / 'saved_caches'}
hints_directory: {data / 'hints'}
cdc_raw_directory: {data / 'cdc_raw'}
# An event store answers 201 only for durable writes: fsync the commit log
# before acknowledging (group commit batches concurrent writes per 2 ms window),
# so a SIGKILLed node loses nothing it acknowledged.
commitlog_sync: group
commitlog_sync_group_window: 2ms
auto_snapshot: false
snapshot_on_duplicate_row_detection: false
hinted_handoff_enabled: false
dynamic_snitch: false
cdc_enabled: false
# Keep the footprint small: few threads and tiny caches.
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 2
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
native_transport_max_threads: 16
key_cache_size: 8MiB
row_cache_size: 0MiB
counter_cache_size: 0MiB
file_cache_size: 32MiB
networking_cache_size: 16MiB
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
commitlog_total_space: 1024MiB
""")
        (self.dir / "logback.xml").write_text(f"""\
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{self.log_path}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %logger{{0}} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
""")


# ------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perhap.testing.cassandra",
                                     description="Run a single-node Cassandra for tests (no Docker).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start a node in the background; returns when it is ready")
    p_start.add_argument("--dir", required=True, type=Path, help="node directory (config, data, logs)")
    p_start.add_argument("--port", type=int, help="native CQL port (default: a free one, then kept)")
    p_start.add_argument("--heap-mb", type=int, default=512)
    p_start.add_argument("--timeout", type=float, default=180)
    p_stop = sub.add_parser("stop", help="stop a node started with 'start'")
    p_stop.add_argument("--dir", required=True, type=Path)
    p_stop.add_argument("--timeout", type=float, default=60)
    p_resolve = sub.add_parser("resolve", help="download Cassandra's jars into the cache only")
    for p in (p_start, p_stop, p_resolve):
        p.add_argument("--cassandra-version", default=DEFAULT_VERSION, metavar="VERSION")
    args = parser.parse_args(argv)
    try:
        if args.command == "resolve":
            print(resolve_jars(args.cassandra_version))
        elif args.command == "start":
            node = CassandraNode(args.dir, args.port, version=args.cassandra_version, heap_mb=args.heap_mb)
            node.start(args.timeout, detach=True)
            print(f"{node.host}:{node.port}")
        else:
            if not (args.dir / "node.json").exists():
                raise CassandraError(f"{args.dir} is not a Cassandra node directory")
            node = CassandraNode(args.dir, version=args.cassandra_version)
            if not node.running():
                raise CassandraError(f"no Cassandra node is running in {args.dir}")
            node.stop(args.timeout)
    except CassandraError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
