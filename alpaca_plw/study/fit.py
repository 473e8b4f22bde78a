"""The paper's analysis of a PLW sweep: scaled scores, a quadratic in w_p, the optimum PLW.

Steps (REFERENCE.md section 5; README "Running the study" lists every deviation from the paper):

1. scores are min-max scaled per benchmark (task) over all base models together, so every
   benchmark spans [0, 1] across the runs (a model's level is left to its random intercept);
2. PLW is transformed to w_p = PLW ** 0.30103 (PLW 0.1 maps to 0.5);
3. a mixed model with fixed effects `w_p + w_p^2` (raw terms), correlated random slopes on both
   per benchmark and, with several base models, a random intercept per base model is fitted by
   maximum likelihood (`fit_mixedlm.py`; or the paper's beta GLMM in R, `fit_glmmtmb.py`);
4. the two PLW terms are tested jointly: Wald chi-square (the paper's test), likelihood ratio and the
   small-sample Wald F that is the headline p-value (calibrated by benchmarks/bench_fit_calibration.py);
5. when b2 < 0 the curve has a maximum at w_p* = -b1 / (2 b2), lambda = w_p* ** (1 / 0.30103), with
   a delta-method confidence interval.

With the paper's own coefficients (w_p 5.590, w_p^2 -4.284), w_p* = 0.652 and lambda = 0.242.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from alpaca_plw.errors import ConfigError, InputError
from alpaca_plw.extras import require
from alpaca_plw.study.fit_engine import Test

EXPONENT = 0.30103  # log10(2): the paper's transform, w_p = PLW ** EXPONENT
# lm-eval metrics where lower is better: with a `metric` column, their scores are negated so that
# "higher is better" holds for every score the fit sees (and a maximum is the best PLW).
LOWER_IS_BETTER = ("brier_score", "perplexity", "word_perplexity", "byte_perplexity",
                   "bits_per_byte", "ter")


def to_wp(plw):
    """w_p = PLW ** 0.30103 (works on floats and arrays)."""
    return np.power(plw, EXPONENT)


def to_plw(wp: float) -> float:
    """The inverse transform: PLW = w_p ** (1 / 0.30103)."""
    return float(wp) ** (1.0 / EXPONENT)


def optimum(b1: float, b2: float) -> tuple[float | None, float | None, str]:
    """(w_p*, lambda, note) of the fitted quadratic b1 w_p + b2 w_p^2.

    >>> round(optimum(5.590, -4.284)[1], 3)
    0.242
    """
    if not b2 < 0:
        return None, None, (f"no optimum: the w_p^2 coefficient is {b2:.4g} (>= 0), so the fitted "
                            "curve has no maximum; the best PLW lies at an end of the range swept")
    wp = -b1 / (2.0 * b2)
    if wp < 0.0 or wp > 1.0:
        clamped = min(max(wp, 0.0), 1.0)
        return clamped, to_plw(clamped), (
            f"the fitted maximum lies at w_p {wp:.4g}, outside [0, 1]; clamped to w_p {clamped:g} "
            f"(PLW {to_plw(clamped):g})")
    return wp, to_plw(wp), "maximum of the fitted quadratic"


@dataclass
class Scores:
    """Long-format scores: one row per (run, task), with an optional model label."""

    plw: np.ndarray
    task: list[str]
    score: np.ndarray
    model: list[str] | None = None
    dropped: list[str] = field(default_factory=list)  # groups left out, with the reason
    negated: list[str] = field(default_factory=list)  # lower-is-better metrics turned around


def scale(scores: Scores) -> Scores:
    """Min-max scale each task's scores to [0, 1], over all base models together (the paper's
    scaling: a model's overall level stays in the data, for its random intercept).

    A task whose scores are all equal says nothing about PLW; it is left out and named in `dropped`.
    """
    keep = np.zeros(len(scores.task), dtype=bool)
    scaled = np.zeros(len(scores.task))
    dropped = []
    tasks = np.array(scores.task, dtype=object)
    for task in sorted(set(scores.task)):
        idx = np.flatnonzero(tasks == task)
        values = scores.score[idx]
        low, high = values.min(), values.max()
        if high == low:
            dropped.append(f"{task}: all {len(idx)} scores equal")
            continue
        scaled[idx] = (values - low) / (high - low)
        keep[idx] = True
    pick = np.flatnonzero(keep)
    return Scores(scores.plw[pick], [scores.task[i] for i in pick], scaled[pick],
                  None if scores.model is None else [scores.model[i] for i in pick], dropped,
                  scores.negated)


def _pair(value: tuple[float, float] | None) -> list[float] | None:
    return None if value is None else [value[0], value[1]]


@dataclass
class Fit:
    """The result `fit --json` prints (`to_json`), plus the scaled data for the plot."""

    n: int
    coef: dict[str, float]
    p_value: float
    wp_opt: float | None
    lam: float | None
    note: str
    data: Scores
    test: str = ""
    tests: dict[str, Test] = field(default_factory=dict)
    wp_ci: tuple[float, float] | None = None
    lam_ci: tuple[float, float] | None = None
    engine: str = "mixedlm"
    formula: str = ""
    variance: dict[str, object] = field(default_factory=dict)
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)

    @property
    def headline(self) -> str:
        """One sentence: the answer, or that there is none at this level."""
        ci = ("" if self.lam_ci is None else
              f" (95% CI {self.lam_ci[0]:.3g} to {self.lam_ci[1]:.3g})")
        p = f"p = {self.p_value:.3g}, {self.tests['headline'].name}" if self.tests else \
            f"p = {self.p_value:.3g}"
        if not self.significant:
            estimate = ("no optimum either" if self.lam is None else
                        f"the fitted optimum PLW {self.lam:.3g}{ci} is an unsupported estimate, "
                        "not a recommendation")
            return f"no significant PLW effect ({p} >= {self.alpha:g}); {estimate}"
        if self.lam is None:
            return f"significant PLW effect ({p}) but no interior maximum: see the note"
        return f"optimum PLW {self.lam:.3g}{ci}, w_p* {self.wp_opt:.3f} ({p})"

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "coef": self.coef, "p_value": self.p_value, "wp_opt": self.wp_opt,
                "lambda": self.lam, "note": self.note, "test": self.test,
                "tests": {k: t.to_json() for k, t in self.tests.items()},
                "wp_ci": _pair(self.wp_ci), "lambda_ci": _pair(self.lam_ci),
                "significant": self.significant, "headline": self.headline,
                "engine": self.engine, "formula": self.formula, "variance": self.variance}


def optimum_interval(b1: float, b2: float, cov: np.ndarray, df: float,
                     level: float = 0.95) -> tuple[float, float] | None:
    """Delta-method interval for w_p* = -b1 / (2 b2), clamped to [0, 1]; None without a maximum.

    The gradient of w_p* in (b1, b2) is (-1 / (2 b2), b1 / (2 b2^2)); the half-width is the
    t quantile (df) times the square root of g' cov g.
    """
    from scipy.stats import t

    if not b2 < 0 or not np.all(np.isfinite(cov)):
        return None
    grad = np.array([-1.0 / (2.0 * b2), b1 / (2.0 * b2 ** 2)])
    var = float(grad @ cov @ grad)
    if not var >= 0.0 or not math.isfinite(var):
        return None
    half = float(t.ppf(0.5 + level / 2.0, df)) * math.sqrt(var)
    centre = -b1 / (2.0 * b2)
    return max(0.0, centre - half), min(1.0, centre + half)


def frame_of(data: Scores):
    """The data frame the engines fit: score, wp, wp2, task and model (one label when absent)."""
    import pandas as pd

    wp = to_wp(data.plw)
    return pd.DataFrame({"score": data.score, "wp": wp, "wp2": wp ** 2, "task": data.task,
                         "model": data.model if data.model is not None else ["-"] * len(wp)})


ENGINES = ("mixedlm", "glmmtmb")


def fit_scores(scores: Scores, engine: str = "mixedlm") -> Fit:
    """Scale, transform and fit with `engine` (mixedlm: statsmodels, Gaussian; glmmtmb: R, beta)."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "mixedlm":
        require("statsmodels", "alpaca-plw fit", "study")
    data = scale(scores)
    if len(data.score) == 0:
        raise InputError("no task has scores that differ between runs; nothing to fit")
    if len(set(data.plw.tolist())) < 3:
        raise ConfigError(f"a quadratic in w_p needs at least 3 distinct PLW values; the scores "
                          f"hold {len(set(data.plw.tolist()))}")
    frame = frame_of(data)
    if engine == "mixedlm":
        from alpaca_plw.study.fit_mixedlm import fit_mixedlm as run
    else:
        from alpaca_plw.study.fit_glmmtmb import fit_glmmtmb as run
    res = run(frame)
    head = res.tests["headline"]
    if not math.isfinite(head.p_value):
        raise InputError("the fit did not produce a finite test statistic; check the scores "
                         f"({'; '.join(res.notes) or 'no warning'})")
    b1, b2 = res.coef["wp"], res.coef["wp2"]
    wp_opt, lam, note = optimum(b1, b2)
    wp_ci = optimum_interval(b1, b2, res.cov_opt, res.df_opt)
    notes = list(res.notes)
    if data.negated:
        notes.append(f"lower is better for {', '.join(data.negated)}: negated before scaling")
    if data.dropped:
        notes.append("left out (no variation): " + "; ".join(data.dropped))
    return Fit(n=len(frame), coef=res.coef, p_value=head.p_value, wp_opt=wp_opt, lam=lam,
               note="; ".join([note, *notes]), data=data, test=head.name, tests=res.tests,
               wp_ci=wp_ci, lam_ci=None if wp_ci is None else (to_plw(wp_ci[0]), to_plw(wp_ci[1])),
               engine=res.engine, formula=res.formula, variance=res.variance)
