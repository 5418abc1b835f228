"""The HTTP baseline: a raw ASGI hello-world served exactly as ``perhap serve`` serves perhap.

``python -m bench.rawapp PORT`` runs it through :func:`perhap.server._config`, the very uvicorn
settings of ``perhap serve`` (uvloop, httptools, no access log), so the only difference between the
two servers is the application. ``GET /sized/N`` answers a JSON body of exactly N bytes (built once
per size), so a read of perhap can be compared with a body of the same size.
"""

from __future__ import annotations

import sys
from typing import Any

HELLO = b'{"hello":"world"}'
_SIZED: dict[int, bytes] = {}


def sized(n: int) -> bytes:
    """A JSON object of exactly ``n`` bytes (at least the 10 of its frame)."""
    body = _SIZED.get(n)
    if body is None:
        body = _SIZED[n] = b'{"pad":"' + b"x" * max(0, n - 10) + b'"}'
    return body
CREATED = b'{"event_id":"00000000-0000-7000-8000-000000000000","version":0,"timestamp":"2026-01-01T00:00:00.000000Z"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        more = True
        while more:  # read the whole body, as perhap does
            message = await receive()
            more = message.get("more_body", False)
        status, body = 201, CREATED
    elif scope["path"].startswith("/sized/"):
        status, body = 200, sized(int(scope["path"][len("/sized/"):]))
    else:
        status, body = 200, HELLO
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    from perhap.server import _config

    port = int(sys.argv[1])
    config = _config(app, "127.0.0.1", port, "warning")  # type: ignore[arg-type]
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
