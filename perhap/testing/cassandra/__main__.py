"""``python -m perhap.testing.cassandra start|stop|resolve``: a test node from the shell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import PROFILES
from .jars import DEFAULT_VERSION, CassandraError, resolve_jars
from .node import CassandraNode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perhap.testing.cassandra",
                                     description="Run a single-node Cassandra for tests (no Docker).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start a node in the background; returns when it is ready")
    p_start.add_argument("--dir", required=True, type=Path, help="node directory (config, data, logs)")
    p_start.add_argument("--port", type=int, help="native CQL port (default: a free one, then kept)")
    p_start.add_argument("--profile", choices=PROFILES, default="test",
                         help="sizing: test (small footprint, the default) or throughput (load runs)")
    p_start.add_argument("--heap-mb", type=int, help="JVM heap (default: 512 for test, 2048 for throughput)")
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
            node = CassandraNode(args.dir, args.port, version=args.cassandra_version, heap_mb=args.heap_mb,
                                  profile=args.profile)
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
