"""What the Python client holds while it reads: one page, not every page it has read.

Found while bounding pages by bytes (tests/test_page_bytes.py): a client reading 600 events of
900 KB in 16 MiB pages still peaked at 377 MiB. Two causes, each tested here: httpx binds a response
and its stream to each other, so each page lived until the cyclic collector ran; and orjson parses
a large text with about 16 times its size set aside.
"""

from __future__ import annotations

import gc
import json
import tracemalloc

import orjson

from perhap.client import Client
from perhap.jsoncodec import load_json
from tests.servers import ThreadServer


def test_the_client_lets_each_page_go_as_it_reads_the_next(sqlite_url: str) -> None:
    """httpx binds each response and its stream to each other (a reference cycle), so a page's
    body lived until the cyclic collector ran, which large pages hardly prompt: the client grew by a
    page per page read. With the collector off, what the read holds must stay one page or two."""
    pad = "z" * 200_000
    with ThreadServer(sqlite_url, max_page_bytes=1_000_000) as server, Client(server.url) as client:
        for n in range(60):
            client.append("big", "d", "e", "t", {"n": n, "pad": pad})
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            held = []
            for event in client.read("big", "d", "e", page_size=1000):  # twelve pages of 1 MB
                held.append(tracemalloc.get_traced_memory()[0])
                del event
        finally:
            tracemalloc.stop()
            gc.enable()
    assert len(held) == 60
    assert max(held) - held[0] < 5_000_000, [h // 1_000_000 for h in held[::5]]


def test_large_json_is_parsed_in_a_few_times_its_size() -> None:
    """orjson (yyjson) sets aside room for as many values as a text could hold, about 16 times its
    size while it parses; from 1 MiB on, the stdlib parses (the same values, and as fast)."""
    raw = json.dumps({"events": [{"n": n, "f": n / 7, "s": "é" * 300} for n in range(5000)]},
                     ensure_ascii=False).encode()
    assert len(raw) > 1024 * 1024
    tracemalloc.start()
    try:
        value = load_json(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value == orjson.loads(raw)
    assert peak < 6 * len(raw), peak / len(raw)
