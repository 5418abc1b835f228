"""What the backends' URLs share: a number option read as it is written, and nothing else."""

from __future__ import annotations

import re

_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def plain_number(text: str, *, integer: bool) -> int | float | None:
    """``text`` as a whole or decimal number written with ASCII digits (and a point), else None:
    Python's int() and float() also take '_', spaces, signs, exponents, 'nan' and any Unicode
    digit, so that a URL option could mean a number its writer never typed."""
    if integer:
        return int(text) if _WHOLE.fullmatch(text) else None
    return float(text) if _DECIMAL.fullmatch(text) else None
