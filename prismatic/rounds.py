"""Round keys: `r` and at least three digits, `r000` (the seed round), `r001`, …, `r999`, `r1000`.

Every table partition, Dagster partition, journal and lock is named by a round key. This module is
the one place that parses, formats and orders them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prismatic.errors import PrismError

SEED_ROUND = "r000"
"""The seed round: its verified samples are the seeds, all kept; they form the first pool."""

ROUND_RE = re.compile(r"^r\d{3,}$")


def is_round(text: object) -> bool:
    """Whether `text` is a round key."""
    return isinstance(text, str) and ROUND_RE.fullmatch(text) is not None


def check_round(key: str) -> str:
    """`key` unchanged, or a `PrismError` when it is not a round key."""
    if not is_round(key):
        raise PrismError(f"invalid round key {key!r}: expected 'r' and at least 3 digits, e.g. 'r001'")
    return key


def round_number(key: str) -> int:
    """`r012` → 12."""
    return int(check_round(key)[1:])


def round_key(number: int) -> str:
    """12 → `r012`: zero-padded to three digits, so up to r999 lexical order is round order."""
    return f"r{number:03d}"


def previous_round(key: str) -> str:
    """The round before `key` (`r001` → `r000`); the seed round has none."""
    if key == SEED_ROUND:
        raise ValueError("the seed round has no previous round")
    return round_key(round_number(key) - 1)


def round_sort_key(key: str) -> tuple[int, str]:
    """Numeric order (r999 before r1000)."""
    return round_number(key), key


def sort_rounds(keys: Iterable[str]) -> list[str]:
    """`keys` in round order."""
    return sorted(keys, key=round_sort_key)
