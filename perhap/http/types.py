"""The ASGI types the HTTP layer speaks (as Starlette's ``types.py``); imports nothing from perhap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

#: The connection scope: type, method, path, headers ... (an ASGI boundary: values are Any).
Scope = MutableMapping[str, Any]
#: One event to or from the server: {"type": "http.response.start", ...}.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI application, or a middleware wrapping one.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Response headers as ASGI carries them.
Headers = list[tuple[bytes, bytes]]
