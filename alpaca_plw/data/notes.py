"""Warnings a data command owes its user, as text: the library returns them, the CLI prints them.

`weights` writes every record it can; when most records were cut or left out, the output is not
the dataset the user meant to train on, though nothing failed.
"""

from __future__ import annotations

MAJORITY = 0.5


def count_notes(meta: dict) -> list[str]:
    """Notes for a weights folder's `counts`: a majority of source records skipped or truncated.

    >>> count_notes({"counts": {"source": 10, "written": 2, "skipped": 8, "truncated": 1}})
    ['8 of 10 records (80%) were skipped: their prompt alone fills --max-length; raise --max-length']
    """
    counts = meta.get("counts") or {}
    source = counts.get("source") or 0
    if not source:
        return []
    notes = []
    skipped, truncated = counts.get("skipped", 0), counts.get("truncated", 0)
    if skipped > MAJORITY * source:
        notes.append(f"{skipped:,} of {source:,} records ({_percent(skipped, source)}) were skipped: "
                     "their prompt alone fills --max-length; raise --max-length")
    if truncated > MAJORITY * source:
        notes.append(f"{truncated:,} of {source:,} records ({_percent(truncated, source)}) were cut at "
                     "--max-length (their completions end early); raise --max-length")
    return notes


def _percent(part: int, whole: int) -> str:
    """`part / whole` as a whole percentage; never "100%" while some records are not in `part`."""
    text = f"{part / whole:.0%}"
    return ">99%" if text == "100%" and part < whole else text
