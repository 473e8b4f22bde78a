"""Small text forms that several renderers share: a mean with its standard deviation, and the PLW
`weights` used with how it was chosen."""

from __future__ import annotations


def mean_std(field: dict[str, float]) -> str:
    return f"{field['mean']:.1f} ({field['std']:.1f})"


def plw_text(meta: dict) -> str:
    """The PLW that `weights` used, with how `--plw auto` chose it."""
    choice = meta["plw_choice"]
    text = f"{meta['plw']:g}"
    if choice["mode"] == "auto":
        text += f" (auto: guide 'all' column at R_g {choice['rg']:.3f}; {choice['guide']['note']})"
    return text
