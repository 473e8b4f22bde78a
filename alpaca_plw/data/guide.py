"""The published PLW guide: recommended prompt loss weight by generation ratio R_g.

Values are the paper's fitted-model recommendations (Huerta-Enochian 2024, arXiv 2401.13586);
a star there means predicted scores vary by less than 5% of their range, so PLW barely matters.
"""

from __future__ import annotations

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
LONG_COMPLETION_RG = 2.5


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
    """Linear interpolation between the guide's rows; the end rows hold beyond the table.

    >>> recommend(1.25).all
    0.169
    """
    table = np.array(GUIDE_ROWS)
    lo_rg, hi_rg = table[0, 0], table[-1, 0]
    at = min(max(rg, lo_rg), hi_rg)
    values = [round(float(np.interp(at, table[:, 0], table[:, c])), 3) for c in (1, 2, 3)]
    if rg < lo_rg:
        note = f"R_g below the guide's lowest row ({lo_rg}): the {lo_rg} row is used"
    elif rg >= LONG_COMPLETION_RG:
        note = f"long-completion data (R_g >= {LONG_COMPLETION_RG}): PLW barely matters here"
        if rg > hi_rg:
            note += f"; R_g above the guide's last row, the {hi_rg} row is used"
    else:
        note = "interpolated between the guide's rows"
    return Recommendation(*values, note=note)
