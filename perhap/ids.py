"""Event ids (UUIDv7) and timestamps (RFC 3339, UTC, microseconds)."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from .errors import InvalidInput, sent_text

_last_ms = 0
_last_seq = 0
# Callers on several threads (append_blocking) share the counter: without the lock two of them
# could take the same millisecond and sequence number.
_lock = threading.Lock()
# A random byte with its top two bits made the variant, 0b10.
_VARIANT = bytes(0x80 | (b & 0x3F) for b in range(256))
# Random bytes read ahead, so an id costs no system call: os.urandom lets go of the GIL, and
# taking it back waits for whichever thread holds it (the SQLite writer), up to the switch interval.
_POOL_SIZE = 4096
_pool = b""
_pool_at = 0


def _random_bytes(n: int) -> bytes:
    """``n`` bytes from os.urandom, by way of the pool for small requests (call with _lock held)."""
    global _pool, _pool_at
    if n > _POOL_SIZE // 8:
        return os.urandom(n)
    if _pool_at + n > len(_pool):
        _pool, _pool_at = os.urandom(_POOL_SIZE), 0
    _pool_at += n
    return _pool[_pool_at - n:_pool_at]


def _forget_pool() -> None:
    # A child process must not make the ids its parent will make; and the lock, which another
    # thread of the parent may have held at the fork, is the child's own (else held for ever).
    global _pool, _pool_at, _lock
    _pool, _pool_at, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7), monotonic within this process."""
    global _last_ms, _last_seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same (or earlier) millisecond: count up in rand_a so ids stay strictly increasing.
            _last_seq += 1
            if _last_seq > 0xFFF:
                _last_ms += 1
                _last_seq = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _last_seq = int.from_bytes(_random_bytes(2), "big") & 0x3FF
        seq = _last_seq
        rand_b = int.from_bytes(_random_bytes(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_many(count: int) -> list[str]:
    """``count`` ids as :func:`uuid7` would give them one after another (strictly increasing),
    made together: one clock reading and one read of random bytes for the lot."""
    global _last_ms, _last_seq
    if count <= 0:
        return []
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms, seq = _last_ms, _last_seq
        else:
            # A new millisecond starts at a random sequence number, as uuid7 does; one less, as
            # the loop below counts up before each id.
            seq = (int.from_bytes(_random_bytes(2), "big") & 0x3FF) - 1
        runs: list[tuple[int, int, int]] = []  # (ms, first seq, how many)
        left = count
        while left:
            if seq >= 0xFFF:  # this millisecond's numbers are used up: borrow the next one
                ms, seq = ms + 1, -1
            take = min(left, 0xFFF - seq)
            runs.append((ms, seq + 1, take))
            seq += take
            left -= take
        _last_ms, _last_seq = ms, seq
        # 64 random bits an id, of which the top two become the variant (0b10): rand_b keeps 62.
        random = bytearray(_random_bytes(8 * count))
    random[0::8] = random[0::8].translate(_VARIANT)
    random_hex = random.hex().encode()
    ids: list[str] = []
    at = 0
    for run_ms, first, size in runs:
        ids += _format(run_ms, first, size, random_hex[at:at + 16 * size])
        at += 16 * size
    return ids


# The three hex digits of every sequence number, one after another.
_SEQ_HEX = "".join(f"{seq:03x}" for seq in range(0x1000)).encode()


def _format(ms: int, first: int, size: int, random_hex: bytes) -> list[str]:
    """The ids of one millisecond, sequence numbers ``first`` on, with 16 random hex digits each.

    Many ids are written column by column into one buffer (each of the 36 characters of every id
    in one slice assignment), so the work per id is one slice of the text: a third of the cost of
    formatting each id.
    """
    h = f"{ms:012x}"
    head = f"{h[:8]}-{h[8:]}-7"
    if size < 32:  # (the columns cost more than they save)
        return [f"{head}{seq:03x}-{random_hex[a:a + 4].decode()}-{random_hex[a + 4:a + 16].decode()}"
                for seq, a in zip(range(first, first + size), range(0, 16 * size, 16))]
    out = bytearray(36 * size)
    for j, c in enumerate(head.encode()):  # 8-4-1 characters: time, then the version
        out[j::36] = bytes((c,)) * size
    for k in range(3):  # the sequence number
        out[15 + k::36] = _SEQ_HEX[3 * first + k:3 * (first + size):3]
    out[18::36] = out[23::36] = b"-" * size
    for k in range(4):  # variant and random bits
        out[19 + k::36] = random_hex[k::16]
    for k in range(12):
        out[24 + k::36] = random_hex[4 + k::16]
    text = out.decode()
    return [text[i:i + 36] for i in range(0, 36 * size, 36)]


#: The id as perhap writes it; and the spellings of a UUID taken besides (any case, no hyphens,
#: in braces, or as a ``urn:uuid:`` URN). ``uuid.UUID`` alone takes far more: hyphens anywhere,
#: ``0x``, ``+``, ``_``, spaces and non-ASCII digits, so that a string that is no UUID was stored
#: under an id its client never sent.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_SPELLING = re.compile(
    r"(?:urn:uuid:)?([0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})"
    r"|\{([0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})\}", re.IGNORECASE | re.ASCII)


def check_event_id(value: Any, what: str = "event_id") -> str:
    """Return the canonical (lower-case, hyphenated) form of a UUID string."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(f"{what} must be a UUID string")
    if _CANONICAL_ID.fullmatch(value):
        return value
    match = _UUID_SPELLING.fullmatch(value)
    if match is None:
        raise InvalidInput(f"{what} must be a UUID, got {sent_text(value, 64)!r}")
    digits = match[1] or match[2]
    if digits.count("-") not in (0, 4):  # hyphens in every place, or in none
        raise InvalidInput(f"{what} must be a UUID, got {sent_text(value, 64)!r}")
    return str(uuid.UUID(digits))


#: RFC 3339 takes "t" and "z" as well as "T" and "Z" (section 5.6).
#: An offset's hour is 00-23 and its minute 00-59 (Python's datetime alone took "+00:60").
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.(\d+))?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
                      re.ASCII)


def check_timestamp(value: Any) -> str:
    """An RFC 3339 date-time in perhap's own form: UTC, microseconds, 'Z' (as utc_timestamp writes).

    Offsets are converted to UTC, so every backend stores and returns one canonical string (or the
    microseconds it stands for); precision beyond the microsecond is refused, as it could not be kept.
    """
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(f"timestamp must be an RFC 3339 date-time, got {sent_text(value, 40)!r}")
    fraction = match.group(1) or ""
    if fraction[6:].strip("0"):
        raise InvalidInput(f"timestamp {sent_text(value, 40)!r} is finer than a microsecond, which cannot be kept")
    text = value[:10] + "T" + value[11:]
    text = text.replace(f".{fraction}", f".{fraction[:6]}") if fraction else text
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(f"timestamp is not a valid date and time: {value!r}") from None
    return parsed.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utc_timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-26T09:34:31.123456Z."""
    dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
