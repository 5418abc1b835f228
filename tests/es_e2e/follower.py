"""The downstream process: the Ledger process application following BankAccounts live.

``python -m tests.es_e2e.follower``: eventsourcing's ``EventSourcedProjectionRunner`` constructs
BankAccounts (only its recorder and mapper are used: ``recorder.subscribe(gt=...)``, perhap's live
stream) and the Ledger, subscribes after the Ledger's ``max_tracking_id("BankAccounts")``, and calls
``Ledger.process_event`` for each event. It prints one JSON line when it starts following, and runs
until killed. When perhap is unreachable (OperationalError), or the process recorder refuses a
notification already tracked (IntegrityError), it starts over from the tracking records, as a
supervisor restarting it would.
"""

from __future__ import annotations

import json
import sys
import time

from eventsourcing.persistence import IntegrityError, OperationalError
from eventsourcing.projection import EventSourcedProjectionRunner

from tests.es_e2e.apps import UPSTREAM, BankAccounts, Ledger

RESTART_DELAY = 0.5


def run_once() -> None:
    ledger = Ledger()
    try:
        after = ledger.recorder.max_tracking_id(UPSTREAM)
    finally:
        ledger.close()
    # The runner reads the same maximum to subscribe after it (only a write still in flight when a
    # previous follower was killed could move it in between; the process recorder refuses any
    # tracking id at or below the maximum, and that IntegrityError restarts the runner).
    print(json.dumps({"following": UPSTREAM, "after": after}), flush=True)
    with EventSourcedProjectionRunner(application_class=BankAccounts, projection_class=Ledger) as runner:
        runner.run_forever()


def main() -> None:
    while True:
        try:
            run_once()
        except (OperationalError, IntegrityError) as exc:
            print(json.dumps({"restarting": f"{type(exc).__name__}: {exc}"}), flush=True)
            time.sleep(RESTART_DELAY)
        else:
            sys.exit("follower: the runner stopped without an error")


if __name__ == "__main__":
    main()
