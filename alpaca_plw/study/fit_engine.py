"""What a fitting engine (`fit_mixedlm`, `fit_glmmtmb`) returns to `fit.fit_scores`: coefficients,
the covariance for the optimum's interval, and the joint tests of the two PLW terms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _finite(value: float) -> float | None:
    """`value`, or None where it is not finite (JSON has no NaN)."""
    return value if math.isfinite(value) else None


@dataclass
class Test:
    """One joint test of the two PLW terms: a chi-square (df2 None) or an F statistic."""

    name: str
    statistic: float
    df1: int
    df2: float | None
    p_value: float

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "statistic": _finite(self.statistic), "df": self.df1,
                "df_denominator": self.df2, "p_value": _finite(self.p_value)}


@dataclass
class EngineResult:
    """What an engine returns: coefficients, their covariance for the delta method (already scaled
    to the headline test's small-sample rule) with its t degrees of freedom, and the tests."""

    engine: str
    formula: str
    coef: dict[str, float]
    cov_opt: np.ndarray  # 2x2 covariance of (b1, b2) for the optimum's interval
    df_opt: float  # degrees of freedom of the t quantile for that interval
    tests: dict[str, Test]  # keys: headline, wald_chi2, lrt
    variance: dict[str, object]
    notes: list[str]
