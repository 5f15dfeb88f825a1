"""Row factories: how a result row (a list of values) becomes the object ``query`` returns.

A row factory is called once per result with its columns and returns the function that makes
one row. Pass one to :func:`qail_ipc.connect` (``row_factory=dict_row``) or set
``client.row_factory``.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple

__all__ = ["Column", "RowFactory", "tuple_row", "dict_row", "namedtuple_row"]


class Column(NamedTuple):
    """One result column: its name and PostgreSQL type name (``int4``, ``_text``, ...)."""

    name: str
    type: str


RowMaker = Callable[[List[Any]], Any]
RowFactory = Callable[[Sequence[Column]], RowMaker]


def tuple_row(columns: Sequence[Column]) -> Callable[[List[Any]], Tuple[Any, ...]]:
    """Rows as tuples (the default)."""
    return tuple


def dict_row(columns: Sequence[Column]) -> Callable[[List[Any]], Dict[str, Any]]:
    """Rows as dicts keyed by column name (a later duplicate name wins)."""
    names = [c.name for c in columns]
    return lambda row: dict(zip(names, row))


def namedtuple_row(columns: Sequence[Column]) -> RowMaker:
    """Rows as named tuples; names that are not identifiers become ``_0``, ``_1``, ..."""
    cls = namedtuple("Row", [c.name for c in columns], rename=True)  # type: ignore[misc]
    return cls._make
