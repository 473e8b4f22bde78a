"""The paper's analysis of a PLW sweep: scaled scores, a quadratic in w_p, the optimum PLW.

Steps (REFERENCE.md section 5):

1. scores are min-max scaled per task (per task and model when a `model` column is given), so every
   benchmark spans [0, 1] across the runs;
2. PLW is transformed to w_p = PLW ** 0.30103 (PLW 0.1 maps to 0.5);
3. a linear mixed model `score ~ w_p + w_p^2` with a random intercept per task (a `model` column
   adds a fixed effect per model) is fitted by maximum likelihood, and so is the same model without
   the w_p terms; the likelihood-ratio test of the two gives the p-value (2 degrees of freedom);
4. when b2 < 0 the curve has a maximum at w_p* = -b1 / (2 b2), and lambda = w_p* ** (1 / 0.30103).

With the paper's own coefficients (w_p 5.590, w_p^2 -4.284), w_p* = 0.652 and lambda = 0.242.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alpaca_plw.errors import ConfigError, InputError
from alpaca_plw.extras import require

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


def read_scores(path: Path) -> Scores:
    """Read a CSV with columns `plw`, `task`, `score` (or `value`, as `eval -o` writes), `model`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such scores file")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0]) if rows else set()
    score_col = "score" if "score" in columns else "value" if "value" in columns else None
    missing = [c for c in ("plw", "task") if c not in columns] + ([] if score_col else ["score"])
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found "
                         f"{', '.join(sorted(columns)) or 'no header'} (expected plw, task, score "
                         "and optionally model)")
    plw, score = [], []
    for i, row in enumerate(rows, start=2):
        try:
            plw.append(float(row["plw"]))
            score.append(float(row[score_col]))
        except (TypeError, ValueError):
            raise InputError(f"{path}, line {i}: plw {row['plw']!r} and {score_col} "
                             f"{row[score_col]!r} must be numbers") from None
        if not 0.0 <= plw[-1] <= 1.0:
            raise InputError(f"{path}, line {i}: plw {plw[-1]:g} lies outside [0, 1]")
    model = [row["model"] for row in rows] if "model" in columns else None
    negated = []
    if "metric" in columns:
        for i, row in enumerate(rows):
            if row["metric"] in LOWER_IS_BETTER:
                score[i] = -score[i]
                negated.append(row["metric"])
    return Scores(np.array(plw), [row["task"] for row in rows], np.array(score), model,
                  negated=sorted(set(negated)))


def scale(scores: Scores) -> Scores:
    """Min-max scale each task's scores (each task and model's) to [0, 1].

    A group whose scores are all equal says nothing about PLW; it is left out and named in `dropped`.
    """
    keys = [(t, m) for t, m in zip(scores.task, scores.model or [None] * len(scores.task))]
    keep = np.zeros(len(keys), dtype=bool)
    scaled = np.zeros(len(keys))
    dropped = []
    for key in sorted(set(keys), key=str):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        values = scores.score[idx]
        low, high = values.min(), values.max()
        name = key[0] if key[1] is None else f"{key[0]} / {key[1]}"
        if high == low:
            dropped.append(f"{name}: all {len(idx)} scores equal")
            continue
        scaled[idx] = (values - low) / (high - low)
        keep[idx] = True
    pick = np.flatnonzero(keep)
    return Scores(scores.plw[pick], [scores.task[i] for i in pick], scaled[pick],
                  None if scores.model is None else [scores.model[i] for i in pick], dropped,
                  scores.negated)


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

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "coef": self.coef, "p_value": self.p_value, "wp_opt": self.wp_opt,
                "lambda": self.lam, "note": self.note}


def fit_scores(scores: Scores) -> Fit:
    """Scale, transform and fit; see the module docstring."""
    require("statsmodels", "alpaca-plw fit", "study")
    import pandas as pd
    import statsmodels.formula.api as smf
    from scipy.stats import chi2

    data = scale(scores)
    if len(data.score) == 0:
        raise InputError("no task has scores that differ between runs; nothing to fit")
    if len(set(data.plw.tolist())) < 3:
        raise ConfigError(f"a quadratic in w_p needs at least 3 distinct PLW values; the scores "
                          f"hold {len(set(data.plw.tolist()))}")
    wp = to_wp(data.plw)
    frame = pd.DataFrame({"score": data.score, "wp": wp, "wp2": wp ** 2, "task": data.task})
    fixed = ""
    if data.model is not None and len(set(data.model)) > 1:
        frame["model"] = data.model
        fixed = " + C(model)"
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if len(set(data.task)) > 1:
            full = smf.mixedlm("score ~ wp + wp2" + fixed, frame, groups=frame["task"]).fit(reml=False)
            null = smf.mixedlm("score ~ 1" + fixed, frame, groups=frame["task"]).fit(reml=False)
        else:
            notes.append("one task: no random intercept (ordinary least squares)")
            full = smf.ols("score ~ wp + wp2" + fixed, frame).fit()
            null = smf.ols("score ~ 1" + fixed, frame).fit()
    if any("converge" in str(w.message) for w in caught):
        notes.append("the optimizer reported convergence trouble")
    statistic = max(0.0, 2.0 * (float(full.llf) - float(null.llf)))
    p_value = float(chi2.sf(statistic, 2))
    b0, b1, b2 = (float(full.params[k]) for k in ("Intercept", "wp", "wp2"))
    wp_opt, lam, note = optimum(b1, b2)
    if data.negated:
        notes.append(f"lower is better for {', '.join(data.negated)}: negated before scaling")
    if data.dropped:
        notes.append("left out (no variation): " + "; ".join(data.dropped))
    if not math.isfinite(p_value):
        raise InputError("the fit did not produce a finite likelihood; check the scores")
    return Fit(n=len(frame), coef={"intercept": b0, "wp": b1, "wp2": b2}, p_value=p_value,
               wp_opt=wp_opt, lam=lam, note="; ".join([note, *notes]), data=data)
