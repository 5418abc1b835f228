"""The ``cassandra://`` URL: hosts, keyspace, credentials and the backend's options."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from cassandra import ConsistencyLevel

from ..options import plain_number

OPTIONS = frozenset({"namespace", "replication_factor", "consistency", "serial_consistency", "settle_ms",
                     "clock_skew_ms", "timeout", "bucket_seconds", "local_dc", "poll_ms",
                     "accept_periodic_commitlog"})
TRUE, FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})
#: Reads and writes at ANY would not be read back; SERIAL levels are for Paxos rounds alone.
# EACH_QUORUM (writes only in Cassandra) is left out too: a store's one level serves its reads.
CONSISTENCY_LEVELS = frozenset(ConsistencyLevel.name_to_value) - {"ANY", "SERIAL", "LOCAL_SERIAL", "EACH_QUORUM"}
SERIAL_LEVELS = frozenset({"SERIAL", "LOCAL_SERIAL"})
#: The settle window's ceiling: every domain and realm read near the head may wait this long.
MAX_SETTLE_MS = 60_000


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


SKEW_BELOW_SETTLE = "clock_skew_ms must be at least 0 and less than settle_ms"


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
        # The driver would take 105963 as 40427 (modulo 65536): refused here, in words.
        if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
            raise ValueError(f"the port of a Cassandra URL must be a whole number from 1 to 65535, not {port_text!r}")
        port = int(port_text)
    hosts = [h for h in hostpart.split(",") if h]
    keyspace = parts.path.strip("/")
    if not hosts:
        raise ValueError("a Cassandra URL needs at least one host")
    if not keyspace.replace("_", "a").isalnum() or not keyspace.isascii() or len(keyspace) > 48 \
            or keyspace[0].isdigit():
        raise ValueError("a Cassandra URL needs a keyspace: 1-48 letters, digits or '_', e.g. /perhap")
    given = parse_qs(parts.query, keep_blank_values=True)
    repeated = sorted(k for k, v in given.items() if len(v) > 1)
    if repeated:  # which one was meant? (the last one won, without a word)
        raise ValueError(f"Cassandra URL option(s) given more than once: {', '.join(repeated)}; give each once")
    query = {k: v[-1] for k, v in given.items()}
    unknown = set(query) - OPTIONS
    if unknown:
        raise ValueError(f"unknown Cassandra URL options: {', '.join(sorted(unknown))}")
    empty = sorted(k for k, v in query.items() if not v)
    if empty:  # `settle_ms=` would otherwise mean the default without a word
        raise ValueError(f"Cassandra URL option(s) without a value: {', '.join(empty)}")
    namespace = query.get("namespace", "")
    if namespace and not (namespace.replace("_", "a").replace("-", "a").isalnum() and namespace.isascii()
                          and len(namespace) <= 64):
        raise ValueError("namespace must be 1-64 letters, digits, '_' or '-'")

    def level(name: str, default: str, allowed: frozenset[str]) -> int:
        text = query.get(name, default).upper()
        if text not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(sorted(allowed))}, not {text!r}")
        return int(ConsistencyLevel.name_to_value[text])

    def number(name: str, default: float, low: float, high: float, *, integer: bool = False) -> float:
        """An option's number within [low, high] (refused before anything is created: a
        bucket_seconds of 0 would make a keyspace no process can open)."""
        text = query.get(name)
        if text is None:
            return default
        value = plain_number(text, integer=integer)
        if value is None or not low <= value <= high:  # (NaN fails every comparison)
            kind = "a whole number" if integer else "a number"
            raise ValueError(f"{name} must be {kind} from {low:g} to {high:g}, not {text!r}")
        return value

    settle_ms = number("settle_ms", 300, 1, MAX_SETTLE_MS)
    skew_ms = number("clock_skew_ms", 50, 0, MAX_SETTLE_MS)
    # clock_skew_ms alone is checked once the store's settle_ms is known (stored with its data).
    if ("settle_ms" in query or "clock_skew_ms" not in query) and not skew_ms < settle_ms:
        raise ValueError(SKEW_BELOW_SETTLE)
    accept = query.get("accept_periodic_commitlog", "false").lower()
    if accept not in TRUE | FALSE:
        raise ValueError(f"accept_periodic_commitlog must be true or false, not {accept!r}")
    return CassandraOptions(
        hosts=hosts, port=port, keyspace=keyspace, namespace=namespace, user=user, password=password,
        replication_factor=int(number("replication_factor", 1, 1, 100, integer=True)),
        consistency=level("consistency", "LOCAL_ONE", CONSISTENCY_LEVELS),
        serial_consistency=level("serial_consistency", "LOCAL_SERIAL", SERIAL_LEVELS),
        settle_us=int(settle_ms * 1000), skew_us=int(skew_ms * 1000),
        timeout=number("timeout", 10, 0.001, 3600),
        bucket_seconds=int(number("bucket_seconds", 60, 1, 86_400, integer=True)),
        local_dc=query.get("local_dc"),
        poll=number("poll_ms", 100, 1, 60_000) / 1000,
        accept_periodic_commitlog=accept in TRUE,
        given=frozenset(query),
    )
