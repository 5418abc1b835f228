"""JSON in and out, exactly: what a client sends is what the store keeps and gives back."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from .errors import InvalidInput

# orjson handles integers up to 64 bits; longer digit runs take the (slower, exact) stdlib path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")

EMPTY_OBJECT = b"{}"


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # The stdlib reads 1e400 as infinity, which JSON cannot carry back out (it would be stored as
    # null): refuse it, as orjson does on the fast path.
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the number {text[:40]} is too large to be stored exactly")
    return value


def load_json(raw: bytes) -> Any:
    """Parse JSON exactly: integers of any size stay integers (orjson would make them floats)."""
    if _LONG_DIGITS.search(raw):
        try:
            return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            raise orjson.JSONDecodeError(str(exc), "", 0) from None
    return orjson.loads(raw)


def _stdlib_dumps(value: Any, sort_keys: bool = False) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=sort_keys)
    return text.encode("utf-8")


def dump_json(value: Any, what: str) -> bytes:
    """Serialise a value to store; InvalidInput when it is not JSON."""
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:  # integers beyond 64 bits: stored exactly, as written
        return _stdlib_dumps(value)
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not serialisable as JSON: {exc}") from None


def canonical_json(raw: bytes) -> bytes:
    """A serialisation that compares equal exactly when two JSON values are equal."""
    value = load_json(raw)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _stdlib_dumps(value, sort_keys=True)
