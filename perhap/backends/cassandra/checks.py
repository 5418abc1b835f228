"""Start-up checks: what the cluster must be like for the guarantees in docs/backends/cassandra.md.

- The consistency levels against the keyspace's replication (``check_levels``): every read must
  meet every acknowledged write (Lemma 1) and every reader's fence every writer's commit (Lemma 2).
- The commit log (``commitlog_modes``, ``commitlog_verdict``): ``periodic`` acknowledges a write
  before it is on disk, so a 201 would not be durable.
- The clock (``clock_offsets``, ``skew_warnings``): positions and horizons come from the processes'
  clocks, assumed within ``clock_skew_ms`` of each other.

The functions that decide are pure (tests call them with made-up clusters); the ones that look
run blocking driver calls, at start-up only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cassandra import ConsistencyLevel as CL
from cassandra.query import SimpleStatement

from . import clock
from .driver import DRIVER_ERRORS

ANY_DC = "*"  # SimpleStrategy's replicas: wherever the ring puts them, whatever the datacentre
LOCAL_LEVELS = frozenset({CL.LOCAL_ONE, CL.LOCAL_QUORUM})
GLOBAL_LEVELS = frozenset({CL.ONE, CL.TWO, CL.THREE, CL.QUORUM, CL.ALL})
SAFE_COMMITLOG = frozenset({"group", "batch"})
COMMITLOG_QUERIES = (
    "SELECT value FROM system_views.settings WHERE name = 'commitlog_sync'",  # Cassandra 4.0+
    "SELECT value FROM system.config WHERE name = 'commitlog_sync'",  # ScyllaDB
)
NOW_QUERY = "SELECT toUnixTimestamp(now()) FROM system.local"
CHECK_TIMEOUT = 5.0  # seconds, per start-up query


def level_name(level: int) -> str:
    return str(CL.value_to_name.get(level, level))


@dataclass(frozen=True, slots=True)
class Replication:
    """Where a keyspace keeps its replicas: how many per datacentre (``ANY_DC`` for SimpleStrategy),
    and the datacentres the cluster's nodes are in."""

    factors: dict[str, int]
    datacentres: frozenset[str]

    @property
    def multi_dc(self) -> bool:
        """Replicas in more than one datacentre: a LOCAL_ level then counts only some of them."""
        if ANY_DC in self.factors:
            return len(self.datacentres) > 1
        return sum(1 for rf in self.factors.values() if rf > 0) > 1


def parse_replication(replication: dict[str, str], datacentres: frozenset[str]) -> Replication | None:
    """A keyspace's replication map (``system_schema.keyspaces``); None for a strategy not known here."""
    strategy = replication.get("class", "").rsplit(".", 1)[-1]

    def factor(text: str) -> int:  # "3", or "3/1" with transient replicas: all of them count
        return int(str(text).split("/")[0])

    if strategy == "SimpleStrategy":
        return Replication({ANY_DC: factor(replication["replication_factor"])}, datacentres)
    if strategy == "NetworkTopologyStrategy":
        return Replication({dc: factor(rf) for dc, rf in replication.items() if dc != "class"}, datacentres)
    return None


def check_levels(consistency: int, serial: int, replication: Replication, local_dc: str | None) -> str:
    """Refuse (ValueError) the consistency levels the proof does not cover; else return the quorum
    scope every process of the store must share: ``ANY_DC`` (levels over all replicas) or the name
    of the one datacentre whose replicas the LOCAL_ levels count.

    The rule: reads and writes use one level, so each must reach a majority of the replicas it
    counts (then any read meets any write: two majorities of one set intersect), and the Paxos
    rounds of all processes must be majorities of one and the same set of replicas.
    """
    if consistency not in LOCAL_LEVELS | GLOBAL_LEVELS:
        raise ValueError(f"consistency={level_name(consistency)} cannot serve both reads and writes here; "
                         "use QUORUM or LOCAL_QUORUM (ONE or LOCAL_ONE with one replica)")
    if serial not in (CL.SERIAL, CL.LOCAL_SERIAL):
        raise ValueError(f"serial_consistency must be SERIAL or LOCAL_SERIAL, not {level_name(serial)}")
    local, local_serial = consistency in LOCAL_LEVELS, serial == CL.LOCAL_SERIAL
    scope, replicas = ANY_DC, sum(replication.factors.values())
    if replication.multi_dc and (local or local_serial):
        if local != local_serial:
            raise ValueError(
                f"consistency={level_name(consistency)} with serial_consistency={level_name(serial)} on a keyspace "
                "replicated to several datacentres: a majority of one datacentre's replicas need not meet a "
                "majority of all of them; use LOCAL_QUORUM with LOCAL_SERIAL, or QUORUM with SERIAL")
        if ANY_DC in replication.factors:
            raise ValueError("LOCAL_ levels on a SimpleStrategy keyspace spread over several datacentres do not "
                             "count a fixed set of replicas; use NetworkTopologyStrategy, or QUORUM with SERIAL")
        replicas = replication.factors.get(local_dc or "", 0)
        if not replicas:
            raise ValueError(f"this process's datacentre {local_dc!r} holds no replica of the keyspace; "
                             "use QUORUM with SERIAL, or set local_dc")
        scope = local_dc or ""
    acks = {CL.ONE: 1, CL.LOCAL_ONE: 1, CL.TWO: 2, CL.THREE: 3, CL.ALL: replicas}.get(consistency,
                                                                                     replicas // 2 + 1)
    if acks > replicas:
        raise ValueError(
            f"consistency={level_name(consistency)} needs {acks} replicas to answer and the keyspace has "
            f"{replicas}: no write could ever be acknowledged; use {'LOCAL_QUORUM' if local else 'QUORUM'}")
    if 2 * acks <= replicas:
        raise ValueError(
            f"consistency={level_name(consistency)} with {replicas} replicas: a read of {acks} replica(s) can miss "
            f"a write acknowledged by {acks} other(s), and readers would skip events; use "
            f"{'LOCAL_QUORUM' if local else 'QUORUM'}")
    return scope


def up_hosts(session: Any) -> list[Any]:
    return [h for h in session.cluster.metadata.all_hosts() if h.is_up is not False]


def replication_of(session: Any, keyspace: str, replication_factor: int) -> tuple[Replication | None, bool]:
    """The keyspace's replication, or the one it will be created with (SimpleStrategy), and whether
    the keyspace exists.

    Asked at ONE: system_schema is each node's own (LocalStrategy), so the URL's level (TWO, say,
    on one node) would fail the look-up before the check could say what is wrong with it. The
    name is looked up as CQL stores it: perhap's names are unquoted, so folded to lower case."""
    datacentres = frozenset(str(h.datacenter) for h in session.cluster.metadata.all_hosts() if h.datacenter)
    query = SimpleStatement("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                            consistency_level=CL.ONE)
    row = session.execute(query, (keyspace.lower(),), timeout=CHECK_TIMEOUT).one()
    if row is None:
        return Replication({ANY_DC: replication_factor}, datacentres), False
    return parse_replication(dict(row[0]), datacentres), True


def factor_warning(replication: Replication | None, replication_factor: int) -> str | None:
    """A warning when the URL names a replication_factor the existing keyspace does not have (the
    factor is used only to create one: the stored replication is what the checks judge)."""
    if replication is None or set(replication.factors) != {ANY_DC}:
        return "the keyspace exists with its own replication: the URL's replication_factor is not used"
    stored = replication.factors[ANY_DC]
    if stored == replication_factor:
        return None
    return (f"the keyspace exists with replication_factor {stored}: the URL's replication_factor="
            f"{replication_factor} is not used (it applies only when perhap creates the keyspace; change "
            "an existing one with ALTER KEYSPACE and a repair)")


def local_datacentre(session: Any, configured: str | None) -> str | None:
    """The datacentre this process's requests go to (the driver sends them to the local one)."""
    if configured:
        return configured
    row = session.execute("SELECT data_center FROM system.local").one()
    return None if row is None else str(row[0])


# ----------------------------------------------------------------------------- the commit log


def commitlog_modes(session: Any, tries: int = 3) -> dict[str, str | None]:
    """Each reachable node's ``commitlog_sync`` (None where it cannot be read). A node asked
    right after connecting may not have its connection pool yet (seen on a three-node cluster):
    the nodes that gave nothing are asked again, up to ``tries`` times, half a second apart."""
    # Every known node is listed, a node down at start-up too (None: not read), so that the
    # verdict warns about it rather than passing over it in silence.
    modes: dict[str, str | None] = {str(host.address): None for host in session.cluster.metadata.all_hosts()}
    for attempt in range(tries):
        if attempt:
            time.sleep(0.5)
        unread = [host for host in up_hosts(session) if modes.get(str(host.address)) is None]
        if not unread:
            break
        for host in unread:
            modes[str(host.address)] = _commitlog_mode(session, host)
    return modes


def _commitlog_mode(session: Any, host: Any) -> str | None:
    for query in COMMITLOG_QUERIES:
        try:
            row = session.execute(query, host=host, timeout=CHECK_TIMEOUT).one()
        except DRIVER_ERRORS:
            continue  # no such table on this kind of node, or no right to read it (yet)
        if row is not None and row[0]:
            return str(row[0]).strip().strip('"').lower()
    return None


def commitlog_verdict(modes: dict[str, str | None], accept_periodic: bool) -> list[str]:
    """Refuse (ValueError) a node that acknowledges writes before they are on disk, unless the URL
    accepts it; return the warnings to log."""
    periodic = sorted(h for h, m in modes.items() if m == "periodic")
    unknown = sorted(h for h, m in modes.items() if m not in SAFE_COMMITLOG and m != "periodic")
    nodes = ", ".join(periodic)
    if periodic and not accept_periodic:
        raise ValueError(
            f"Cassandra node(s) {nodes} run commitlog_sync: periodic: they acknowledge a write before it is on "
            "disk (the commit log is synced every commitlog_sync_period, 10 s by default), so a 201 could be "
            "lost with the machine. Set commitlog_sync: group (with commitlog_sync_group_window: 2ms) or batch "
            "in cassandra.yaml, or add accept_periodic_commitlog=true to the store URL to accept that risk")
    warnings = []
    if periodic:
        warnings.append(f"Cassandra node(s) {nodes} run commitlog_sync: periodic (accepted by the URL): a 201 "
                        "is in the replicas' memory, not on their disks, until the next periodic sync")
    if unknown:
        found = ", ".join(f"{h}: {modes[h] or 'down or not readable'}" for h in unknown)
        warnings.append(
            f"could not read commitlog_sync of Cassandra node(s) {', '.join(unknown)} ({found}): make sure it "
            "is group or batch, since with periodic a 201 is not on disk")
    return warnings


# ----------------------------------------------------------------------------- the clock


def clock_offsets(session: Any, samples: int = 3) -> dict[str, tuple[int, int]]:
    """Each reachable node's clock minus ours, in microseconds, and the uncertainty of that figure:
    half the round trip of the quickest of a few ``now()`` queries, plus half of the millisecond
    the node reports it in."""
    offsets: dict[str, tuple[int, int]] = {}
    for host in up_hosts(session):
        best: tuple[int, int] | None = None
        for _ in range(samples):
            sent = clock.now_us()
            try:
                row = session.execute(NOW_QUERY, host=host, timeout=CHECK_TIMEOUT).one()
            except DRIVER_ERRORS:
                break
            came = clock.now_us()
            node = int(row[0]) * 1000 + 500  # somewhere in that millisecond
            measured = (node - (sent + came) // 2, (came - sent) // 2 + 500)
            if best is None or measured[1] < best[1]:
                best = measured
        if best is not None:
            offsets[str(host.address)] = best
    return offsets


def skew_warnings(offsets: dict[str, tuple[int, int]], skew_us: int) -> list[str]:
    """Warnings for nodes whose clock is surely more than half of ``clock_skew_ms`` from ours: any
    two processes within half the bound of the cluster's clocks are within the bound of each other,
    and one that is not may break the settle window's guarantee for its writes."""
    warnings = []
    for host, (offset, uncertainty) in sorted(offsets.items()):
        if abs(offset) - uncertainty > skew_us / 2:
            # Behind, its events get positions below other readers' horizons; ahead, its own reads'
            # horizons pass other processes' events still settling (docs/backends/cassandra.md).
            risk = ("readers may skip this process's events" if offset > 0
                    else "this process's reads may skip other processes' events")
            warnings.append(
                f"this process's clock is {abs(offset) / 1000:.1f} ms (± {uncertainty / 1000:.1f}) "
                f"{'behind' if offset > 0 else 'ahead of'} Cassandra node {host}'s, more than half of "
                f"clock_skew_ms={skew_us / 1000:g}: {risk}. Synchronise the clocks (NTP), or raise "
                "clock_skew_ms and settle_ms")
    return warnings
