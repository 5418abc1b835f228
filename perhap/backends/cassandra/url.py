"""The ``cassandra://`` URL: hosts, keyspace, credentials and the backend's options."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from cassandra import ConsistencyLevel

OPTIONS = frozenset({"namespace", "replication_factor", "consistency", "serial_consistency", "settle_ms",
                     "clock_skew_ms", "timeout", "bucket_seconds", "local_dc", "poll_ms",
                     "accept_periodic_commitlog"})
TRUE, FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class CassandraOptions:
    """Everything a ``cassandra://`` URL says, checked and converted."""

    hosts: list[str]
    port: int
    keyspace: str
    namespace: str  # several stores in one keyspace, each its own namespace ('' for none)
    user: str | None
    password: str | None
    replication_factor: int
    consistency: int  # a cassandra.ConsistencyLevel value
    serial_consistency: int
    settle_us: int  # the settle window W
    skew_us: int  # the largest clock difference between two processes, δ < W
    timeout: float  # seconds
    bucket_seconds: int
    local_dc: str | None
    poll: float  # seconds between subscribers' polls
    accept_periodic_commitlog: bool  # serve even when a node acknowledges writes before they are on disk
    given: frozenset[str]  # the options the URL names (the others are defaults)


def parse_cassandra_url(url: str) -> CassandraOptions:
    """``cassandra://[user:pass@]host1,host2[:port]/keyspace?option=value...`` -> options."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "cassandra":
        raise ValueError(f"not a cassandra:// URL: {url!r}")
    netloc = parts.netloc.rsplit("@", 1)
    user = password = None
    if len(netloc) == 2:
        user, _, password = (unquote(p) for p in netloc[0].partition(":"))
    hostpart, port = netloc[-1], 9042
    if ":" in hostpart.rsplit(",", 1)[-1]:
        hostpart, port_text = hostpart.rsplit(":", 1)
        port = int(port_text)
    hosts = [h for h in hostpart.split(",") if h]
    keyspace = parts.path.strip("/")
    if not hosts:
        raise ValueError("a Cassandra URL needs at least one host")
    if not keyspace.replace("_", "a").isalnum() or not keyspace.isascii() or len(keyspace) > 48 \
            or keyspace[0].isdigit():
        raise ValueError("a Cassandra URL needs a keyspace: 1-48 letters, digits or '_', e.g. /perhap")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - OPTIONS
    if unknown:
        raise ValueError(f"unknown Cassandra URL options: {', '.join(sorted(unknown))}")
    namespace = query.get("namespace", "")
    if namespace and not (namespace.replace("_", "a").replace("-", "a").isalnum() and namespace.isascii()
                          and len(namespace) <= 64):
        raise ValueError("namespace must be 1-64 letters, digits, '_' or '-'")

    def level(name: str, default: str) -> int:
        text = query.get(name, default).upper()
        if text not in ConsistencyLevel.name_to_value:
            raise ValueError(f"{name} must be a consistency level such as LOCAL_QUORUM, not {text!r}")
        return int(ConsistencyLevel.name_to_value[text])

    settle_ms = float(query.get("settle_ms", 300))
    skew_ms = float(query.get("clock_skew_ms", 50))
    if not 0 <= skew_ms < settle_ms:
        raise ValueError("clock_skew_ms must be at least 0 and less than settle_ms")
    accept = query.get("accept_periodic_commitlog", "false").lower()
    if accept not in TRUE | FALSE:
        raise ValueError(f"accept_periodic_commitlog must be true or false, not {accept!r}")
    return CassandraOptions(
        hosts=hosts, port=port, keyspace=keyspace, namespace=namespace, user=user, password=password,
        replication_factor=int(query.get("replication_factor", 1)),
        consistency=level("consistency", "LOCAL_ONE"),
        serial_consistency=level("serial_consistency", "LOCAL_SERIAL"),
        settle_us=int(settle_ms * 1000), skew_us=int(skew_ms * 1000),
        timeout=float(query.get("timeout", 10)),
        bucket_seconds=int(query.get("bucket_seconds", 60)),
        local_dc=query.get("local_dc"),
        poll=float(query.get("poll_ms", 100)) / 1000,
        accept_periodic_commitlog=accept in TRUE,
        given=frozenset(query),
    )
