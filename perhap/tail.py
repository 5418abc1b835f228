"""``perhap tail``: follow a scope over SSE, printing one JSON event a line, resuming after drops."""

from __future__ import annotations

import sys
import time
from urllib.parse import quote

import httpx

from .sse import iter_sse


def scope_path(scope: str) -> str:
    parts = [p for p in scope.strip("/").split("/") if p]
    if not 1 <= len(parts) <= 4:
        from .cli import CommandError

        raise CommandError("a scope is REALM[/DOMAIN[/ENTITY[/TYPE]]]", 2)
    return "/" + "/".join(quote(p, safe="") for p in parts)


def tail(base_url: str, scope: str, *, following: str | None = None, type: str | None = None,
         max_retries: int | None = None) -> int:
    from .cli import CommandError

    url = base_url.rstrip("/") + scope_path(scope)
    params = {"type": type} if type else {}
    if following:
        params["following"] = following
    last_id = following
    failures = 0
    with httpx.Client(timeout=httpx.Timeout(10.0, read=60.0)) as http:
        while True:
            headers = {"accept": "text/event-stream"}
            if last_id:
                headers["last-event-id"] = last_id
            try:
                with http.stream("GET", url, params=params, headers=headers) as response:
                    if response.status_code != 200:
                        response.read()
                        detail = response.text
                        try:
                            detail = response.json().get("detail", detail)
                        except ValueError:
                            pass
                        raise CommandError(f"{response.status_code} from {url}: {detail}")
                    failures = 0
                    for message in iter_sse(response.iter_bytes()):
                        if message.data is None:
                            continue
                        sys.stdout.write(message.data + "\n")
                        sys.stdout.flush()
                        if message.id:
                            last_id = message.id
            except httpx.TransportError as exc:
                failures += 1
                if max_retries is not None and failures > max_retries:
                    raise CommandError(f"cannot reach {base_url}: {exc}") from None
                print(f"perhap tail: connection lost ({exc.__class__.__name__}); reconnecting",
                      file=sys.stderr)
                time.sleep(min(0.2 * 2 ** min(failures, 5), 5.0))
