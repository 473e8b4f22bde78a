"""Duplicate keys in a JSON object: `json` keeps the last one silently; alpaca-plw refuses them.

`unique` is the fast `object_pairs_hook` used on every load; only after it fired is the text parsed
again into `Pairs` to name the record and the key.
"""

from __future__ import annotations

from alpaca_plw.errors import InputError


class DuplicateKey(ValueError):
    pass


class Pairs(list):
    """An object's (key, value) pairs, kept as parsed: to find a duplicated key."""


def unique(pairs: list) -> dict:
    """`object_pairs_hook`: a dict, refusing a key that appears twice in one object."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise DuplicateKey
    return found


def first_repeat(names):
    """The first name that repeats an earlier one, or None."""
    seen = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def duplicate(value) -> str | None:
    """The first key that appears twice in one object within `value` (parsed into `Pairs`)."""
    if isinstance(value, Pairs):
        twice = first_repeat(k for k, _ in value)
        if twice is not None:
            return twice
        value = [v for _, v in value]
    if not isinstance(value, list):
        return None
    return next((d for v in value if (d := duplicate(v)) is not None), None)


def duplicate_error(shown: str, where: str, key: str | None) -> InputError:
    return InputError(f"{shown}: {where}: the key {key!r} appears twice in one object (JSON keeps "
                      "only the last, silently); remove one")
