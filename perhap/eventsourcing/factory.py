"""The persistence module's infrastructure factory: which store, realm and domain an application uses.

Settings come from the application's environment, where eventsourcing looks for each name with the
application's own prefix first (``BANKACCOUNTS_PERHAP_URL``) and then without it (``PERHAP_URL``).
"""

from __future__ import annotations

import re
from typing import TypeVar

from eventsourcing.persistence import InfrastructureFactory, InfrastructureFactoryError, NotSupportedError
from eventsourcing.utils import Environment, EnvType, resolve_topic

from ..errors import InvalidInput
from ..model import Scope
from .recorders import (
    PerhapAggregateRecorder,
    PerhapApplicationRecorder,
    PerhapProcessRecorder,
    PerhapSnapshotRecorder,
    PerhapTrackingRecorder,
)
from .transport import Transport, connect

R = TypeVar("R")

DEFAULT_URL = "http://127.0.0.1:8787"
DEFAULT_DOMAIN = "events"
DEFAULT_TIMEOUT = 30.0


def default_realm(application_name: str) -> str:
    """The realm named after the application: ``BankAccounts`` -> ``bankaccounts``. Lower case,
    each run of characters other than ``a-z 0-9 _ . -`` as one ``-``, leading ``_ . -`` dropped
    (``Café`` -> ``caf-``); nothing left: ``eventsourcing``. (docs/eventsourcing.md says the same.)"""
    name = re.sub(r"[^0-9a-z_.-]+", "-", application_name.lower()).lstrip("_-.")
    return name or "eventsourcing"


class Factory(InfrastructureFactory[PerhapTrackingRecorder]):
    """``PERSISTENCE_MODULE=perhap.eventsourcing``: an application's events in a perhap store.

    ``PERHAP_URL`` is a server (``http://``, ``https://``, with ``PERHAP_TOKEN``) or a store opened
    in process (``sqlite:///``, ``postgresql://``, ``cassandra://``). The application's events go
    to realm ``PERHAP_REALM`` (default: its name in lower case), domain ``PERHAP_DOMAIN`` (default
    ``events``); its snapshots to the domain ``<domain>-snapshots``.
    """

    PERHAP_URL = "PERHAP_URL"
    PERHAP_TOKEN = "PERHAP_TOKEN"
    PERHAP_REALM = "PERHAP_REALM"
    PERHAP_DOMAIN = "PERHAP_DOMAIN"
    PERHAP_TIMEOUT = "PERHAP_TIMEOUT"

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self.url = self.env.get(self.PERHAP_URL) or DEFAULT_URL
        self.realm = self.env.get(self.PERHAP_REALM) or default_realm(self.env.name)
        self.domain = self.env.get(self.PERHAP_DOMAIN) or DEFAULT_DOMAIN
        try:
            Scope(self.realm, self.domain)
            timeout = float(self.env.get(self.PERHAP_TIMEOUT) or DEFAULT_TIMEOUT)
            if not 0 < timeout < float("inf"):  # (NaN fails it too)
                raise ValueError(f"PERHAP_TIMEOUT must be a number of seconds above 0, not "
                                 f"{self.env.get(self.PERHAP_TIMEOUT)!r}")
        except (InvalidInput, ValueError) as exc:
            raise InfrastructureFactoryError(f"perhap.eventsourcing: {exc}") from None
        try:
            self.transport: Transport = connect(self.url, self.env.get(self.PERHAP_TOKEN), timeout)
        except ValueError as exc:  # a URL no backend takes (the message lists those that exist)
            raise InfrastructureFactoryError(f"perhap.eventsourcing: PERHAP_URL: {exc}") from None
        except InvalidInput as exc:  # a server URL or a token the client refuses (its message says which)
            raise InfrastructureFactoryError(f"perhap.eventsourcing: {exc}") from None

    def aggregate_recorder(self, purpose: str = "events") -> PerhapAggregateRecorder | PerhapSnapshotRecorder:
        if purpose == "events":
            return PerhapAggregateRecorder(self.transport, self.realm, self.domain)
        domain = f"{self.domain}-{purpose}"
        try:
            Scope(self.realm, domain)  # the events' domain passed; this longer one may not
        except InvalidInput as exc:
            raise InfrastructureFactoryError(f"perhap.eventsourcing: the {purpose} domain: {exc}") from None
        return PerhapSnapshotRecorder(self.transport, self.realm, domain)

    def _chosen(self, setting: str, default: type[R]) -> type[R]:
        """The recorder class named by a setting (a topic), else the default; a subclass of it."""
        topic = self.env.get(setting)
        cls = resolve_topic(topic) if topic else default
        assert isinstance(cls, type) and issubclass(cls, default), cls
        return cls

    def application_recorder(self) -> PerhapApplicationRecorder:
        cls = self._chosen(self.APPLICATION_RECORDER_TOPIC, PerhapApplicationRecorder)
        return cls(self.transport, self.realm, self.domain)

    def tracking_recorder(self, tracking_recorder_class: type[PerhapTrackingRecorder] | None = None,
                          ) -> PerhapTrackingRecorder:
        cls = tracking_recorder_class or self._chosen(self.TRACKING_RECORDER_TOPIC, PerhapTrackingRecorder)
        assert issubclass(cls, PerhapTrackingRecorder), cls
        return cls(self.transport, self.realm, self.domain)

    def process_recorder(self) -> PerhapProcessRecorder:
        if not self.transport.supports_multi_entity:
            # Refused here, not at the first event a policy emits: a process application stores
            # its events and its tracking record in one multi-entity append.
            raise NotSupportedError(f"the {self.transport.name} backend has no multi-entity appends, so it "
                                    "cannot record a process application's events with its tracking")
        cls = self._chosen(self.PROCESS_RECORDER_TOPIC, PerhapProcessRecorder)
        return cls(self.transport, self.realm, self.domain)

    def close(self) -> None:
        self.transport.close()
        super().close()
