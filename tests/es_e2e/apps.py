"""The applications of the end-to-end test: bank accounts upstream, a ledger that follows them.

The ledger records exactly one event of its own for every upstream event it processes, carrying
that event's notification id, so processing an upstream event twice (or never) shows in its events.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.system import ProcessApplication

UPSTREAM = "BankAccounts"


class Account(Aggregate):
    class Opened(Aggregate.Created):
        owner: str

    class Credited(Aggregate.Event):
        amount: int

    class Debited(Aggregate.Event):
        amount: int

    @event(Opened)
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event(Credited)
    def credit(self, amount: int) -> None:
        self.balance += amount

    @event(Debited)
    def debit(self, amount: int) -> None:
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount


class BankAccounts(Application[UUID]):
    """The upstream application, written by the writer process."""

    name = UPSTREAM

    def open_account(self, owner: str) -> UUID:
        account = Account(owner)
        self.save(account)
        return account.id

    def deposit(self, account_id: UUID, amount: int) -> None:
        account: Account = self.repository.get(account_id)
        account.credit(amount)
        self.save(account)

    def withdraw(self, account_id: UUID, amount: int) -> None:
        account: Account = self.repository.get(account_id)
        account.debit(amount)
        self.save(account)

    def balance(self, account_id: UUID) -> int:
        account: Account = self.repository.get(account_id)
        return account.balance


class AccountLedger(Aggregate):
    """One per account: an entry for every event of the account, with its notification id."""

    @staticmethod
    def create_id(account_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/ledgers/{account_id}")

    @event("Started")
    def __init__(self, account_id: UUID, notification_id: int) -> None:
        self.account_id = account_id
        self.notification_ids = [notification_id]
        self.account_versions = [1]
        self.balance = 0

    @event("Entered")
    def enter(self, notification_id: int, account_version: int, amount: int) -> None:
        self.notification_ids.append(notification_id)
        self.account_versions.append(account_version)
        self.balance += amount


class Ledger(ProcessApplication[UUID]):
    """Follows BankAccounts: each account event becomes one ledger event, stored with its tracking
    record in one atomic append by the process recorder."""

    name = "Ledger"

    @singledispatchmethod
    def policy(self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]) -> None:
        raise TypeError(f"the ledger does not know {type(domain_event).__qualname__}")

    @policy.register(Account.Opened)
    def _(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        assert processing_event.tracking is not None
        processing_event.collect_events(AccountLedger(domain_event.originator_id,
                                                      processing_event.tracking.notification_id))

    @policy.register(Account.Credited)
    def _(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        self._enter(domain_event, domain_event.amount, processing_event)

    @policy.register(Account.Debited)
    def _(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        self._enter(domain_event, -domain_event.amount, processing_event)

    def _enter(self, domain_event: Any, amount: int, processing_event: ProcessingEvent[UUID]) -> None:
        assert processing_event.tracking is not None
        ledger: AccountLedger = self.repository.get(AccountLedger.create_id(domain_event.originator_id))
        ledger.enter(processing_event.tracking.notification_id, domain_event.originator_version, amount)
        processing_event.collect_events(ledger)
