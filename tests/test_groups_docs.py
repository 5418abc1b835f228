"""docs/groups.md's worked example, run as written: its worker script, three times, against a real
`perhap serve`, with the group made by the command the docs give and the events they append."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from perhap import Client
from tests.servers import ProcessServer

ROOT = Path(__file__).resolve().parent.parent


def test_the_three_worker_example_runs_as_written(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "groups.md").read_text()
    example = text[text.index("## Worked example"):]
    [worker] = re.findall(r"```python\n(.*?)```", example, re.S)
    [create] = re.findall(r"^perhap group create .*$", example, re.M)
    with ProcessServer(f"sqlite:///{tmp_path}/example.db") as server:
        script = tmp_path / "worker.py"
        script.write_text(worker.replace("http://127.0.0.1:8787", server.url))
        made = subprocess.run([sys.executable, "-m", "perhap.cli", *shlex.split(create)[1:], "--url", server.url],
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        logs = [tmp_path / f"w{i}.log" for i in (1, 2, 3)]
        workers = [subprocess.Popen([sys.executable, str(script), log.stem], cwd=tmp_path,
                                    stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
        try:
            with Client(server.url, timeout=30) as client:
                # The events of the docs: 300 over 20 orders, appended as one batch.
                events = [{"entity": f"order-{n % 20}", "type": "item-added", "event": {"price": n}}
                          for n in range(1, 301)]
                client.append_many("shop", "orders", events)
                deadline = time.monotonic() + 120
                while (stats := client.group("shop", "totals"))["lag"] and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert stats["lag"] == 0 and stats["acknowledged"] == 300, json.dumps(stats)
        finally:
            # The graceful stops the docs describe: Ctrl-C (it was a KeyboardInterrupt out of the
            # handler, a traceback and no "stopped after" line) and kill.
            for w, sig in zip(workers, (signal.SIGINT, signal.SIGTERM, signal.SIGTERM)):
                w.send_signal(sig)
            codes = [w.wait(timeout=60) for w in workers]
    assert codes == [0, 0, 0]
    handled: dict[str, list[int]] = {}
    counts = []
    for log in logs:
        seen_here: dict[str, list[int]] = {}
        lines = log.read_text().splitlines()
        mine = [line for line in lines if re.match(r"w\d: order-\d+ v\d+ ", line)]
        counts.append(len(mine))
        assert re.search(rf"{log.stem}: stopped after {len(mine)} events", log.read_text()), log.read_text()
        for line in mine:
            order, version = re.match(r"w\d: (order-\d+) v(\d+) ", line).groups()  # type: ignore[union-attr]
            handled.setdefault(order, []).append(int(version))
            seen_here.setdefault(order, []).append(int(version))
        # What one worker saw of an order is in version order.
        assert all(v == sorted(v) for v in seen_here.values()), log.read_text()
    assert sum(counts) == 300 and all(counts), counts  # each worker took a share
    assert sorted(handled) == sorted(f"order-{i}" for i in range(20))
    first = min(min(v) for v in handled.values())  # the first version of an entity
    for versions in handled.values():  # every event handled once: no worker failed
        assert sorted(versions) == list(range(first, first + 15))
