"""Fast constructors for the frozen, slotted dataclasses built on hot paths (Event, NewEvent, Appended).

A frozen dataclass's ``__init__`` stores each field through ``object.__setattr__`` (its own
``__setattr__`` refuses): for a read of 100 events that cost more than fetching their rows, and
for a batch of 1,000 more than serialising it. :func:`fast_constructor` makes a twin class with
the same ``__slots__`` whose plain ``__init__`` stores the fields in order, then gives the object
the dataclass as its class. Both classes have the same memory layout (the same slots, in the same
order, over ``object``), so the result is a genuine instance of the dataclass: equal, hashable and
frozen like one built the usual way (tests/test_hotpath_batch.py checks each of them).

Every field must be passed, positionally. Should the dataclass ever gain a ``__post_init__``, or
fields that are not exactly its slots, the dataclass itself is returned and nothing changes but
speed. ``checked=True`` skips a ``__post_init__`` that only validates: for callers that have made
the same checks already (the HTTP layer builds the Scope of a read from names it has checked).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def fast_constructor(cls: type[T], *, checked: bool = False) -> Callable[..., T]:
    """A constructor of ``cls`` (a frozen, slotted dataclass) taking every field positionally;
    with ``checked``, for values that already pass its ``__post_init__`` (which is not run)."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type,unused-ignore]
    if getattr(cls, "__slots__", None) != names or (hasattr(cls, "__post_init__") and not checked):
        return cls
    # The same code a dataclass generates for a plain __init__, plus the change of class at the end.
    source = (f"def __init__(self, {', '.join(names)}):\n"
              + "".join(f"    self.{name} = {name}\n" for name in names)
              + "    self.__class__ = cls\n")
    namespace: dict[str, Any] = {"cls": cls}
    exec(source, namespace)
    twin = type(f"_Fast{cls.__name__}", (), {"__slots__": names, "__init__": namespace["__init__"]})
    return twin
