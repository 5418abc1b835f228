"""A private, throwaway PostgreSQL server for tests.

No system service, no Docker: we run ``initdb`` / ``pg_ctl`` from the local
PostgreSQL installation against a data directory we own, listening only on
127.0.0.1 with trust authentication.

Layout of ``directory``::

    data/          the cluster (PGDATA)
    postgres.log   server log (pg_ctl -l; appended across restarts)

Lifetime: ``pg_ctl`` daemonizes the postmaster (in its own session), so the
server does *not* die with the Python process.  ``start()`` therefore registers
``cleanup()`` with :mod:`atexit`, which runs on a normal interpreter exit,
including pytest finishing or being interrupted with Ctrl-C.  It does not run
on SIGKILL or a hard crash; stop a leftover server with
``python -m perhap.testing.postgres stop --dir DIR``.

CLI::

    python -m perhap.testing.postgres start --dir DIR [--port PORT]
    python -m perhap.testing.postgres stop --dir DIR [--mode fast|immediate]
"""

from __future__ import annotations

import argparse
import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PostgresError", "PostgresServer", "existing_server_url", "find_bin_dir"]

ENV_URL = "PERHAP_TEST_POSTGRES_URL"
# Debian/Ubuntu install each major version side by side here.
PG_GLOB = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = "install them with `apt-get install postgresql`"


class PostgresError(RuntimeError):
    """The harness could not do what was asked; the first line is a summary."""


def existing_server_url() -> str | None:
    """URL of an already running server to use instead of starting one."""
    return os.environ.get(ENV_URL) or None


def find_bin_dir() -> Path:
    """Directory holding initdb and pg_ctl: newest Debian version, else PATH."""
    def version(d: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(d).parent.name))

    candidates = sorted(glob.glob(PG_GLOB), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:  # resolve symlinks so siblings (initdb, psql) are found too
        candidates.append(str(Path(on_path).resolve().parent))
    for d in candidates:
        if all(os.access(Path(d, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(d)
    raise PostgresError(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found under {PG_GLOB} "
        f"or on PATH; {INSTALL_HINT}"
    )


def _free_port() -> int:
    # Racy by nature (someone may grab it before postgres binds), but the
    # window is small and a failure shows "could not bind" in the log tail.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    host = "127.0.0.1"

    def __init__(self, directory: str | Path | None = None, port: int | None = None) -> None:
        self.bin_dir = find_bin_dir()
        # initdb/pg_ctl refuse to run as root: drop to the Debian 'postgres' user.
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresError(
                    "running as root needs the unprivileged 'postgres' user; "
                    f"{INSTALL_HINT} creates it"
                ) from None
        self._owns_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="perhap-pg-") if directory is None else directory).absolute()
        self.data_dir = self.directory / "data"
        self.log_file = self.directory / "postgres.log"
        self._conf = self.data_dir / "perhap.conf"
        # Reuse the port of an existing cluster so `start --dir` after `stop --dir` behaves.
        self.port = port or self._configured_port() or _free_port()

    # -- public API -------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def start(self, timeout: float = 60) -> None:
        atexit.unregister(self.cleanup)  # no duplicates across restarts
        atexit.register(self.cleanup)
        self._prepare_directory()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [self.bin_dir / "initdb", "-D", self.data_dir, "-U", "postgres",
                 # --no-locale: C collation, identical on every machine.
                 "--auth=trust", "-E", "UTF8", "--no-locale"],
                timeout, "initdb failed",
            )
            with open(self.data_dir / "postgresql.conf", "a") as f:
                f.write("\ninclude_if_exists = 'perhap.conf'\n")
        if self.running():
            if self._configured_port() != self.port:
                raise PostgresError(f"server in {self.data_dir} is already running "
                                    f"on port {self._configured_port()}")
            return
        self._write_conf()  # every start, so a changed port takes effect
        self._run(
            [self.bin_dir / "pg_ctl", "start", "-w", "-t", str(max(1, int(timeout))),
             "-D", self.data_dir, "-l", self.log_file],
            timeout + 10, f"server did not start on {self.host}:{self.port}",
        )

    def stop(self, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"bad stop mode {mode!r}")
        if self.running():
            self._run([self.bin_dir / "pg_ctl", "stop", "-w", "-m", mode, "-D", self.data_dir],
                      120, "pg_ctl stop failed")

    def running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        # pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
        return self._run([self.bin_dir / "pg_ctl", "status", "-D", self.data_dir],
                         30, "", check=False).returncode == 0

    def create_database(self, name: str) -> str:
        psql = self.bin_dir / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or psql)
        quoted = '"' + name.replace('"', '""') + '"'
        # psql is only a client, so it can run as whoever we are.
        proc = subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
             "-U", "postgres", "-d", "postgres", "-c", f"CREATE DATABASE {quoted}"],
            capture_output=True, text=True, timeout=60, env=self._env(),
        )
        if proc.returncode != 0:
            raise PostgresError(f"CREATE DATABASE {quoted} failed: {proc.stderr.strip()}")
        return self.url(name)

    def cleanup(self) -> None:
        atexit.unregister(self.cleanup)
        try:
            self.stop("fast")
        except PostgresError:
            self.stop("immediate")
        finally:
            if self._owns_dir:
                shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "".join(self.log_file.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return "(no server log)"

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- internals --------------------------------------------------------

    def _configured_port(self) -> int | None:
        try:
            m = re.search(r"^port = (\d+)", self._conf.read_text(), re.M)
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def _write_conf(self) -> None:
        text = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            # No unix socket: avoids /var/run/postgresql permissions and the
            # 107-byte socket path limit for deep test directories.
            "unix_socket_directories = ''\n"
            "max_connections = 200\n"
            "shared_buffers = 128MB\n"
            "fsync = on\n"
        )
        self._conf.write_text(text)
        self._chown(self._conf)

    def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._user is None:
            return
        self._chown(self.directory)
        # The postgres user must be able to reach the directory.  pytest's
        # tmp_path lives under a 0700 root-owned /tmp/pytest-of-root, so grant
        # search (not read) permission on such ancestors.
        for parent in self.directory.parents:
            st = parent.stat()
            if not st.st_mode & stat.S_IXOTH and not (
                st.st_uid == self._user.pw_uid and st.st_mode & stat.S_IXUSR
            ) and not (st.st_gid == self._user.pw_gid and st.st_mode & stat.S_IXGRP):
                os.chmod(parent, st.st_mode | stat.S_IXOTH)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _env(self) -> dict[str, str]:
        # Ambient PG* variables (PGDATA, PGPORT, PGOPTIONS...) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._user is not None:
            env.update(HOME=self._user.pw_dir, USER="postgres", LOGNAME="postgres")
        return env

    def _run(self, cmd: Sequence[str | Path], timeout: float, what: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        # As the postgres user when we are root (initdb and pg_ctl refuse to run as root).
        uid = gid = None
        if self._user is not None:
            uid, gid = self._user.pw_uid, self._user.pw_gid
        try:
            proc = subprocess.run(
                [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                env=self._env(), cwd=self.directory, stdin=subprocess.DEVNULL,
                user=uid, group=gid, extra_groups=None if uid is None else [],
            )
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{what}: timed out after {timeout:.0f}s (log: {self.log_file})\n"
                                f"{self.log_tail()}") from None
        if check and proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            raise PostgresError(f"{what} (exit {proc.returncode}; log: {self.log_file})\n"
                                f"{out}\n--- server log tail ---\n{self.log_tail()}")
        return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perhap.testing.postgres",
                                     description="Run a private PostgreSQL server for tests.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="initdb if needed, start, print the URL")
    p_start.add_argument("--dir", required=True, type=Path)
    p_start.add_argument("--port", type=int)
    p_start.add_argument("--timeout", type=float, default=60)
    p_stop = sub.add_parser("stop", help="stop the server (data is kept)")
    p_stop.add_argument("--dir", required=True, type=Path)
    p_stop.add_argument("--mode", choices=("smart", "fast", "immediate"), default="fast")
    args = parser.parse_args(argv)
    try:
        server = PostgresServer(args.dir, getattr(args, "port", None))
        if args.command == "stop" and not (server.data_dir / "PG_VERSION").exists():
            raise PostgresError(f"no PostgreSQL cluster in {server.data_dir}")
        if args.command == "start":
            server.start(args.timeout)
            atexit.unregister(server.cleanup)  # the server must outlive this CLI
            print(server.url())
        else:
            server.stop(args.mode)
    except (PostgresError, OSError, subprocess.SubprocessError) as e:
        print(f"error: {(str(e) or repr(e)).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
