"""The upstream process: opens accounts and moves money, in phases separated by gates.

``python -m tests.es_e2e.writer WORKDIR --accounts N --per-phase M --phases P --pace S``: opens N
accounts, then makes M transactions per phase. After each phase but the last it writes
``WORKDIR/phase-<k>.json`` (how many events so far) and waits for ``WORKDIR/gate-<k>`` before
going on, so a test can act on the follower while it is known not to have seen everything.
At the end it writes ``WORKDIR/done.json``: every account's id and balance.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from tests.es_e2e.apps import BankAccounts

GATE_TIMEOUT = 300.0


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.rename(path)  # the test never sees half a file


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"writer: no {path.name} within {GATE_TIMEOUT:.0f} s")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--accounts", type=int, default=8)
    parser.add_argument("--per-phase", type=int, default=100)
    parser.add_argument("--phases", type=int, default=3)
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between transactions")
    args = parser.parse_args()

    rng = random.Random(16)
    app = BankAccounts()
    try:
        accounts = [app.open_account(f"owner-{i}") for i in range(args.accounts)]
        balances = dict.fromkeys(accounts, 0)
        events = len(accounts)
        for phase in range(1, args.phases + 1):
            for _ in range(args.per_phase):
                account = rng.choice(accounts)
                amount = rng.randint(1, 100)
                if balances[account] >= amount and rng.random() < 0.4:
                    app.withdraw(account, amount)
                    balances[account] -= amount
                else:
                    app.deposit(account, amount)
                    balances[account] += amount
                events += 1
                time.sleep(args.pace)
            if phase < args.phases:
                _write_json(args.workdir / f"phase-{phase}.json", {"events": events})
                _wait_for(args.workdir / f"gate-{phase}")
        _write_json(args.workdir / "done.json",
                    {"events": events, "balances": {str(a): b for a, b in balances.items()}})
    finally:
        app.close()


if __name__ == "__main__":
    main()
