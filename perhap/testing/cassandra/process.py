"""Ports and child JVMs: free ports, liveness, and children that die with their parent."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .jars import CassandraError


def free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is picked, so the n ports differ.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
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


_spawner: ThreadPoolExecutor
_new_spawner()
os.register_at_fork(after_in_child=_new_spawner)  # a forked child has no spawner thread


def spawn(argv: list[str], *, detach: bool, **kw: Any) -> subprocess.Popen[bytes]:
    # Own session either way: a Ctrl-C meant for pytest doesn't hit the JVM
    # directly; the harness stops it in order instead.
    kw.update(start_new_session=True, stdin=subprocess.DEVNULL)
    if detach:  # CLI: the node must outlive this process
        return subprocess.Popen(argv, **kw)
    preexec = functools.partial(_die_with_parent, os.getpid())
    return _spawner.submit(lambda: subprocess.Popen(argv, preexec_fn=preexec, **kw)).result()


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        raise CassandraError("no 'java' found (set JAVA_HOME to a Java 11 or 17 JDK)")
    return found
