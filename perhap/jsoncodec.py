"""JSON in and out, exactly: what a client sends is what the store keeps and gives back."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson

from .errors import InvalidInput, sent_text

# orjson handles integers up to 64 bits; longer digit runs take the (slower, exact) stdlib path, and
# so do exponents below -99, where a float may underflow to 0 (orjson reads 1e-400 as 0.0).
_CHECKED_PATH = re.compile(rb"[0-9]{19}|[eE]-0*[1-9][0-9]{2}")
#: A \u escape of a UTF-16 surrogate (D800-DFFF): only a body holding one is checked for halves.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: Python reads at most this many digits as one integer (``sys.get_int_max_str_digits``: more cost
#: quadratic time); a longer integer is refused in words, not as invalid JSON.
MAX_INT_DIGITS = 4300

EMPTY_OBJECT = b"{}"


def _reject_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # The stdlib reads 1e400 as infinity, which JSON cannot carry back out (it would be stored as
    # null): refuse it, as orjson does on the fast path.
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the number {text[:40]} is too large to be stored exactly")
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):  # 1e-400 would be stored as 0
        raise InvalidInput(f"the number {text[:40]} is too small to be stored exactly (it is not 0)")
    return value


def _exact_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise InvalidInput(f"an integer of {digits:,} digits cannot be stored: at most {MAX_INT_DIGITS:,}")
    return int(text)


#: Bytes of JSON from which the stdlib parses it rather than orjson: orjson (through yyjson) sets
#: aside memory for as many values as the text could hold, about 16 times its size while it parses
#: (a 16 MiB page of events: a 260 MiB peak, against 90 MiB and less time for the stdlib).
_LARGE_JSON = 1024 * 1024


def load_json(raw: bytes) -> Any:
    """Parse JSON exactly: long integers stay integers (orjson would make them floats), up to 4,300 digits."""
    if len(raw) > _LARGE_JSON or _CHECKED_PATH.search(raw):
        try:
            # Decoded here as orjson decodes: json.loads(bytes) would take a UTF-8 BOM (and UTF-16
            # or UTF-32), so whether a body was refused would hang on a number inside it.
            value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float,
                               parse_int=_exact_int)
            if _SURROGATE_ESCAPE.search(raw):  # as orjson: half a UTF-16 pair alone is no text
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            return value
        except UnicodeEncodeError:
            raise orjson.JSONDecodeError("a \\u escape gives half of a UTF-16 surrogate pair alone, which is not "
                                         "text", "", 0) from None
        except (ValueError, RecursionError) as exc:
            raise orjson.JSONDecodeError(str(exc), "", 0) from None
    return orjson.loads(raw)


def refuse_duplicate_keys(raw: bytes, value: Any) -> None:
    """InvalidInput when an object in ``raw`` names a key twice: a parser keeps one of the two
    values, so what is stored would not be what was sent (``value`` is ``raw`` as parsed).

    Without a ``\\u`` escape in ``raw``, each string's colons are the same in ``raw`` and in the
    parsed value, and each key of ``raw`` has one colon of its own: so ``raw`` holds more colons
    than ``value`` serialised again exactly when a key was repeated (its colon and its dropped
    value's are lost). Two C-speed counts decide the common case; the rare rest (escapes, integers
    beyond 64 bits, a mismatch to name) is parsed again with every object's keys checked."""
    if b"\\u" not in raw:
        try:
            if orjson.dumps(value).count(b":") == raw.count(b":"):
                return
        except TypeError:  # integers beyond 64 bits: the exact parse below
            pass
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant,
                   parse_float=_finite_float, parse_int=_exact_int)
    except (ValueError, RecursionError):  # raw was parsed once already: not reached in practice
        raise InvalidInput("the body is not valid JSON") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        key = _first_repeated(pairs)
        raise InvalidInput(f"the key {sent_text(key, 60)!r} appears twice in one object: JSON parsers keep one of "
                           "the two values, so it cannot be stored as sent; send each key once")
    return value


def _first_repeated(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    return next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]


def _stdlib_dumps(value: Any, sort_keys: bool = False) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=sort_keys)
    return text.encode("utf-8")


def right_sized(out: bytes) -> bytes:
    """orjson's output in a buffer of its own length, for output that is kept.

    orjson (3.12 on) hands back the buffer it wrote into: at least 4 KiB, rounded up to a power of
    two, never shrunk (``sys.getsizeof`` shows only the length). Sent at once, that costs nothing;
    kept (an event's stored JSON until its commit, in the ring and in a client's pages; a cached
    page) it holds 4 KiB for a 45-byte event: 200,000 kept outputs took 798 MiB of RSS against 29
    MiB copied, and keeping them cost 0.91 µs each against 0.18 µs for serialising and copying
    (docs/performance.md, section 23).
    """
    return memoryview(out).tobytes()


def dump_json(value: Any, what: str) -> bytes:
    """Serialise a value to store (in a buffer of its own size: see right_sized); InvalidInput
    when it is not JSON."""
    try:
        out = orjson.dumps(value)
    except TypeError:
        pass
    else:  # orjson writes NaN and infinities as null: the value would not be what was given
        if b"null" not in out or not _non_finite(value):
            return memoryview(out).tobytes()  # (right_sized, inline: once per event appended)
        raise InvalidInput(f"{what} holds a number JSON cannot carry (NaN or an infinity)")
    try:  # integers beyond 64 bits: stored exactly, as written
        out = _stdlib_dumps(value)
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not serialisable as JSON: {exc}") from None
    # A process that raised Python's own digit limit (sys.set_int_max_str_digits) could write an
    # integer no read would take back (they stop at MAX_INT_DIGITS): refused here as when parsed.
    if _has_long_int(value):
        raise InvalidInput(f"{what} holds an integer of more than {MAX_INT_DIGITS:,} digits: it cannot be stored")
    # Keys that are not strings (1, True, None, 1.5) are written as their JSON text, so two keys of
    # one dict can become one ({1: "a", "1": "b"}): the stored object would name it twice, which
    # no reader gets back as given (and an HTTP append of that JSON is refused). Checked only here,
    # on the path such dicts take (orjson refuses keys that are not strings).
    try:
        json.loads(out, object_pairs_hook=_pairs_once, parse_int=int)
    except _Repeated as exc:
        raise InvalidInput(f"{what} has two keys that are one key in JSON, {sent_text(exc.key, 60)!r} (a key that is "
                           "not a string is written as its JSON text): give each key once") from None
    return out


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _Repeated(_first_repeated(pairs))
    return value


_INT_BOUND = 10**MAX_INT_DIGITS  # the smallest integer of MAX_INT_DIGITS + 1 digits


def not_json_reason(raw: bytes, exc: Exception) -> str:
    """Why ``raw`` did not parse, in a reader's terms: bytes that are not UTF-8 (which orjson
    calls surrogates, whatever they are), or else the parser's own words."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (at byte {bad.start}: {bad.reason}); JSON text is UTF-8"
    return f"not valid JSON ({exc})"


def made_null(out: bytes, value: Any) -> bool:
    """Whether orjson's ``out`` for ``value`` wrote a NaN or an infinity of it as ``null``."""
    return b"null" in out and _non_finite(value)


def _non_finite(value: Any) -> bool:
    return _any_number(value, lambda n: isinstance(n, float) and not math.isfinite(n))


def _has_long_int(value: Any) -> bool:
    return _any_number(value, lambda n: isinstance(n, int) and abs(n) >= _INT_BOUND)


def _any_number(value: Any, test: Callable[[float | int], bool]) -> bool:
    """Whether any number in a JSON value (dicts, lists, tuples) passes ``test``; no recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int | float):
            if test(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def canonical_json(raw: bytes) -> bytes:
    """A serialisation that compares equal exactly when two JSON values are equal."""
    value = load_json(raw)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _stdlib_dumps(value, sort_keys=True)
