"""The published PLW guide: recommended prompt loss weight by generation ratio R_g.

Values are the paper's fitted-model recommendations (Huerta-Enochian 2024, arXiv 2401.13586);
a star there means predicted scores vary by less than 5% of their range, so PLW barely matters.

In the long-completion region (R_g >= 2.5) the starred values swing between 0 and 1 from row to
row: they are the ends of an almost flat predicted curve, not evidence. There every starred value
is replaced by one documented value, `FLAT_PLW` = 0.1, instead of interpolating that noise. Why
0.1: it is non-zero and small, which all three studies of prompt loss (this paper, Instruction
Modelling, WIT) find often better than masking; it lies inside WIT's best range (0 to 0.6); it is
one of the paper's ten PLW values (w_p = 0.5, the middle of its transformed scale); and the paper
found no significant effect of PLW at these ratios, so no value is better supported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

# (R_g, all, multiple choice, generation); ascending R_g.
GUIDE_ROWS = (
    (0.5, 0.155, 0.155, 0.292),
    (1.0, 0.155, 0.183, 0.321),
    (1.5, 0.183, 0.278, 0.385),
    (2.0, 0.239, 1.000, 0.679),
    (2.5, 1.000, 1.000, 1.000),
    (3.0, 1.000, 1.000, 1.000),
    (3.5, 1.000, 1.000, 0.000),
    (4.0, 1.000, 1.000, 0.000),
    (4.5, 0.000, 1.000, 0.000),
    (5.0, 0.000, 1.000, 0.000),
    (5.5, 1.000, 1.000, 0.000),
    (6.0, 1.000, 1.000, 0.000),
    (6.5, 1.000, 1.000, 1.000),
    (7.0, 1.000, 1.000, 1.000),
    (7.5, 1.000, 1.000, 1.000),
    (8.0, 1.000, 1.000, 0.654),
)
# Starred cells of GUIDE_ROWS (all, MC, gen): "PLW barely matters" at that R_g.
GUIDE_STARS = {
    0.5: (False, False, True), 1.0: (False, False, True), 1.5: (False, False, True),
    2.0: (False, True, True), 8.0: (True, True, False),
    **{rg: (True, True, True) for rg in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5)},
}
LONG_COMPLETION_RG = 2.5
FLAT_PLW = 0.1  # used for every starred cell at R_g >= LONG_COMPLETION_RG (see the module docstring)


def effective_rows() -> np.ndarray:
    """GUIDE_ROWS with the long-completion starred cells set to FLAT_PLW: what `recommend` uses."""
    table = np.array(GUIDE_ROWS)
    for row in table:
        if row[0] >= LONG_COMPLETION_RG:
            for column, starred in enumerate(GUIDE_STARS[float(row[0])], start=1):
                if starred:
                    row[column] = FLAT_PLW
    return table


@dataclass(frozen=True)
class Recommendation:
    """Recommended PLW for all benchmarks, multiple choice and generation, with a note on its use."""

    all: float
    mc: float
    gen: float
    note: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def recommend(rg: float) -> Recommendation:
    """Linear interpolation between the guide's rows (long-completion starred cells at FLAT_PLW);
    the end rows hold beyond the table.

    >>> recommend(1.25).all
    0.169
    >>> recommend(4.5).all
    0.1
    """
    table = effective_rows()
    lo_rg, hi_rg = table[0, 0], table[-1, 0]
    at = min(max(rg, lo_rg), hi_rg)
    values = [round(float(np.interp(at, table[:, 0], table[:, c])), 3) for c in (1, 2, 3)]
    if rg < lo_rg:
        note = f"R_g below the guide's lowest row ({lo_rg}): the {lo_rg} row is used"
    elif rg >= LONG_COMPLETION_RG:
        note = (f"long-completion data (R_g >= {LONG_COMPLETION_RG}): PLW barely matters here, so "
                f"the guide's starred values are replaced by one documented value, {FLAT_PLW:g}")
        if rg > hi_rg:
            note += f"; R_g above the guide's last row, the {hi_rg} row is used"
    else:
        note = "interpolated between the guide's rows"
    return Recommendation(*values, note=note)


def other_studies(rg: float, records: int) -> str:
    """One line on what the two other studies of prompt loss (REFERENCE section 7) suggest here."""
    shape = "as here" if rg < 1.0 else "not the case here"
    size = (f"on small sets of 1k-10k examples (this one: {records:,})" if records <= 10_000 else
            f"hardly at all on large sets with short prompts (this one: {records:,})")
    return (f"Other studies: Instruction Modelling (Shi et al. 2024) gains most when prompts are "
            f"long relative to outputs ({shape}) and {size}; WIT (Chatterjee et al. 2025) found "
            "prompt weights 0-0.6 best in 61 of 75 cases; they disagree with this guide on R_g.")


def choose_plw(plw: float | str,
               measure_rg: Callable[[], float]) -> tuple[float, dict[str, object]]:
    """(PLW, how it was chosen): a given `plw` as is; "auto" takes the guide's "all" column at the
    R_g that `measure_rg()` returns (called only then)."""
    if plw != "auto":
        return float(plw), {"mode": "given"}
    rg = measure_rg()
    rec = recommend(rg)
    return float(rec.all), {"mode": "auto", "rg": rg, "guide": rec.to_json(), "column": "all"}
