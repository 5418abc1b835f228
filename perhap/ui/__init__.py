"""The web UI: static files shipped in this package, served at /_ui by the HTTP app (no build step)."""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from pathlib import Path

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json",
         ".png": "image/png", ".ico": "image/x-icon"}


@lru_cache(maxsize=64)
def _load(relative: str) -> tuple[bytes, str] | None:
    try:
        path = (STATIC / relative).resolve()
        # Only files inside the static folder: no '..' or symlink escapes.
        if STATIC.resolve() not in path.parents or not path.is_file():
            return None
    except (OSError, ValueError):  # a name the file system refuses (too long, NUL ...) is no file
        return None
    kind = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.read_bytes(), kind


def ui_file(parts: list[str]) -> tuple[bytes, str] | None:
    """The file at /_ui/<parts> and its content type; /_ui itself (and any unknown page path) is
    the single-page app. None when there is no such file."""
    if any("\x00" in p for p in parts):
        return None  # no file name holds a NUL (the file system refuses them)
    relative = "/".join(parts) if parts else "index.html"
    found = _load(relative) if all(p not in ("", ".", "..") for p in parts) else None
    if found is None and (not parts or "." not in parts[-1]):
        found = _load("index.html")  # client-side routes all load the app
    return found
