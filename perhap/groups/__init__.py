"""Consumer groups: server-kept subscriptions shared by competing consumers (docs/groups.md).

``settings`` checks what a group is asked to be, ``state`` holds what it has delivered and how
its leases stand (pure, no I/O), ``service`` runs each operation as a compare-and-set of that
state in the store's :class:`~perhap.store.states.StateTable`, the same on every backend;
``ahead`` reads the events a lease looks for before its compare-and-set, where processes share it.
"""

from .service import Groups
from .settings import GroupSettings, check_group_name

__all__ = ["GroupSettings", "Groups", "check_group_name"]
