"""One Cassandra node in a child JVM: start, stop, kill, wait until it serves CQL."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from .config import HEAP_MB, JVM17_FLAGS, NODETOOL_LOGBACK, PROFILES, cassandra_yaml, logback_xml
from .jars import DEFAULT_VERSION, CassandraError, resolve_jars
from .process import alive, free_ports, java, port_open, spawn

READY_LINE = "Starting listening for CQL clients"


class CassandraNode:
    """One Cassandra node whose config, data, logs and pid file live in ``directory``.

    Ports are chosen on first use and remembered in ``node.json``, so a stopped
    node restarts on the same directory and ports with its data intact.
    """

    host = "127.0.0.1"

    def __init__(self, directory: str | Path, port: int | None = None, *,
                 version: str = DEFAULT_VERSION, heap_mb: int | None = None, profile: str = "test") -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        self.dir = Path(directory).resolve()
        self.profile = profile  # the sizing (config.PROFILES): "test" small, "throughput" for load runs
        self.version, self.heap_mb = version, heap_mb or HEAP_MB[profile]
        self.log_path = self.dir / "logs" / "system.log"
        self.out_path = self.dir / "logs" / "jvm.out"  # JVM's own stdout/stderr
        self.pid_path = self.dir / "cassandra.pid"
        self._proc: subprocess.Popen[bytes] | None = None
        state_path = self.dir / "node.json"
        state: dict[str, int] = json.loads(state_path.read_text()) if state_path.exists() else {}
        if "storage_port" not in state:
            native, storage, ssl = free_ports(3)
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
        return pid is not None and alive(pid)

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
        jmx_port, = free_ports(1)
        self._state["jmx_port"] = jmx_port  # for nodetool(), also from another process (node.json)
        self._write_config()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.out_path, "wb") as out:  # this run's JVM output only
            proc = self._proc = spawn(self._command(lib, jmx_port), detach=detach,
                                      cwd=self.dir, stdout=out, stderr=subprocess.STDOUT)
        self.pid_path.write_text(f"{proc.pid}\n")
        try:
            self._wait_ready(proc, timeout, log_offset)
        except BaseException:  # includes KeyboardInterrupt: never leave a half-started JVM
            self.kill()
            raise

    def nodetool(self, *args: str, timeout: float = 60) -> str:
        """Run ``nodetool`` against the running node (local JMX) in a child JVM; its output.

        For tests that change the node at run time, e.g. ``nodetool("settimeout", "cascontention",
        "0")`` makes every Paxos round time out at once until it is set back."""
        if not self.running() or "jmx_port" not in self._state:
            raise CassandraError(f"no Cassandra node is running in {self.dir}")
        lib = resolve_jars(self.version)
        command = [java(), *JVM17_FLAGS, f"-Dlogback.configurationFile=file://{self.dir / 'nodetool-logback.xml'}",
                   "-cp", f"{lib}/*", "org.apache.cassandra.tools.NodeTool",
                   "-h", self.host, "-p", str(self._state["jmx_port"]), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
            raise CassandraError(f"nodetool {' '.join(args)} failed (exit {done.returncode})", tail)
        return done.stdout

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (Cassandra drains in its shutdown hook), SIGKILL after timeout."""
        pid = self.pid
        if pid is not None and alive(pid):
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
            if self._proc is not None and self._proc.poll() is not None or not alive(pid):
                return True
            time.sleep(0.1)
        return False

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self._fail(f"Cassandra exited with code {proc.returncode} during startup", log_offset)
            # The log line alone could be a stale one, the port alone someone else's.
            if self._log_since(log_offset).find(READY_LINE) >= 0 and port_open(self.port):
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
            java(), f"-Xms{min(self.heap_mb, 128)}m", f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1",
            "-XX:+PerfDisableSharedMem",  # no hsperfdata mmap file in /tmp
            "-XX:+ExitOnOutOfMemoryError",  # fail loudly rather than limp on with corrupt state
            *JVM17_FLAGS,
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
        # Rewritten on every start (cheap, and picks up a changed --port); the
        # data directories are what carry state between runs.
        (self.dir / "cassandra.yaml").write_text(cassandra_yaml(data, self._state, self.port, self.profile))
        (self.dir / "logback.xml").write_text(logback_xml(self.log_path))
        (self.dir / "nodetool-logback.xml").write_text(NODETOOL_LOGBACK)
