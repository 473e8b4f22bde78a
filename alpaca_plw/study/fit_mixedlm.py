"""The default engine of `fit`: the paper's model, Gaussian, in statsmodels `MixedLM`, by ML.

    score ~ w_p + w_p^2 + (0 + w_p + w_p^2 | task) [+ (1 | task:model) with several base models]

Groups are the K benchmarks (tasks); `re_formula` gives each its own correlated slopes on both PLW
terms (the paper's `(0 + poly(w_p, 2) | benchmark)`), and a variance component gives each base model
a random intercept within each benchmark (MixedLM cannot cross a model effect with the benchmark
groups; README lists this deviation). Both the model and the null model (`score ~ 1`, same random
part) are fitted by maximum likelihood.

Tests of the two PLW terms (2 degrees of freedom each):

- Wald chi-square, W = b' V^-1 b with V the ML covariance of (b1, b2): the paper's test;
- likelihood ratio, 2 (llf - llf_null);
- the headline, a small-sample Wald F: F = W (K - 2) / (2 K) on (2, K - 2) degrees of freedom. In a
  balanced design the ML estimate is the mean of the K per-benchmark least-squares slopes and V is
  their covariance with divisor K, so this F is Hotelling's T^2 test of those K slope pairs, exact
  under the model. The chi-square versions treat the K benchmarks as if they were infinitely many and
  reject too often with 8 to 13 (benchmarks/RESULTS.md).

With fewer than 3 benchmarks the slopes' covariance cannot be estimated: ordinary least squares,
its F test as the headline, and a note that says the p-value takes every score as independent.
"""

from __future__ import annotations

import warnings

import numpy as np

from alpaca_plw.errors import InputError
from alpaca_plw.study.fit_engine import EngineResult, Test

TERMS = ["wp", "wp2"]


def _caught(make, label: str):
    """(result or None, warning note lines) of `make()`, every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = make()
        except (np.linalg.LinAlgError, ValueError) as exc:
            result, caught = None, [*caught, warnings.WarningMessage(exc, type(exc), "", 0)]
    lines = []
    for w in caught:
        line = f"statsmodels, {label}: {w.category.__name__}: {' '.join(str(w.message).split())}"
        if line not in lines:
            lines.append(line)
    return result, lines


def _quiet_fit(make, label: str, notes: list[str]):
    """Run `make()`; every warning it raises becomes a note line (deduplicated, in order)."""
    result, lines = _caught(make, label)
    notes.extend(line for line in lines if line not in notes)
    return result


def _ml_fit(model, label: str, notes: list[str]):
    """The ML fit of `model`: statsmodels' default (BFGS, then L-BFGS and CG when one fails) and,
    when it reports any trouble beyond an estimate on the boundary, also Powell polished by
    L-BFGS; the higher likelihood is kept. The default alone stops short of the maximum on some
    designs (tests/study/test_fit.py pins the likelihood against an independent fit); the
    warnings of the fit kept go to the note."""
    first, lines = _caught(lambda: model.fit(reml=False), label)
    clean = (first is not None and getattr(first, "converged", False)
             and all("boundary of the parameter space" in line for line in lines))
    if clean:  # no trouble reported: the second route has never found more here
        notes.extend(line for line in lines if line not in notes)
        return first
    powell, _ = _caught(lambda: model.fit(reml=False, method="powell"), label)
    second, more = (None, []) if powell is None else _caught(
        lambda: model.fit(reml=False, method="lbfgs", start_params=powell.params_object), label)
    good = [(r, w) for r, w in ((first, lines), (second, more))
            if r is not None and np.isfinite(r.llf)]
    if not good:
        notes.extend(line for line in lines if line not in notes)
        raise InputError(f"the mixed model could not be fitted ({label}): "
                         f"{'; '.join(lines) or 'no finite likelihood'}")
    best, kept = max(good, key=lambda rw: float(rw[0].llf))
    if best is second and first is not None and np.isfinite(first.llf):
        kept = [*kept, (f"statsmodels, {label}: its default optimizer stopped at log-likelihood "
                         f"{float(first.llf):.6g}; Powell then L-BFGS reached "
                         f"{float(best.llf):.6g}, the fit kept")]
    notes.extend(line for line in kept if line not in notes)
    return best


def wald(b: np.ndarray, cov: np.ndarray) -> float:
    """The joint Wald statistic b' cov^-1 b (nan when cov is not invertible)."""
    try:
        return float(b @ np.linalg.solve(cov, b))
    except np.linalg.LinAlgError:
        return float("nan")


def fit_mixedlm(frame) -> EngineResult:
    """Fit the model and the null model by ML; see the module docstring."""
    import statsmodels.formula.api as smf
    from scipy.stats import chi2, f

    k = int(frame["task"].nunique())
    several = frame["model"].nunique() > 1
    notes: list[str] = []
    if k < 3:
        return _fit_ols(frame, k, several, notes)
    vc = {"model": "0 + C(model)"} if several else None
    formula = ("score ~ wp + wp2 + (0 + wp + wp2 | task)"
               + (" + (1 | task:model)" if several else ""))

    # The random slopes are fitted on an orthonormal basis (z1, z2) of the span of (w_p, w_p^2):
    # the same model (an unstructured covariance is only re-expressed), but an optimizer that
    # does not creep along the near-collinear raw pair. B maps it back: G_raw = B G_z B'.
    frame = frame.copy()
    raw = frame[["wp", "wp2"]].to_numpy(dtype=float)
    q, r = np.linalg.qr(raw)
    scale_z = np.sqrt(len(raw))
    frame["z1"], frame["z2"] = q[:, 0] * scale_z, q[:, 1] * scale_z
    back = np.linalg.inv(r) * scale_z  # raw @ back = z

    def model(fixed: str):
        return smf.mixedlm(fixed, frame, groups=frame["task"], re_formula="0 + z1 + z2",
                           vc_formula=vc)

    full = _ml_fit(model("score ~ wp + wp2"), "model", notes)
    null = _ml_fit(model("score ~ 1"), "null model", notes)
    for label, res in (("model", full), ("null model", null)):
        if not getattr(res, "converged", True):
            notes.append(f"statsmodels, {label}: the optimizer did not converge")
    cov_re = back @ np.asarray(full.cov_re, dtype=float) @ back.T
    eig = np.linalg.eigvalsh(cov_re) if np.all(np.isfinite(cov_re)) else np.array([np.nan])
    if not eig.min() > 1e-6 * max(float(np.trace(cov_re)), 1e-12):
        notes.append("the random-slope covariance is singular at the estimate (a slope variance or "
                     "their correlation at its boundary): the slopes vary less between benchmarks "
                     "than the noise can resolve")
    b = np.array([float(full.fe_params[t]) for t in TERMS])
    cov = np.asarray(full.cov_params().loc[TERMS, TERMS], dtype=float)
    w = wald(b, cov)
    lr = max(0.0, 2.0 * (float(full.llf) - float(null.llf)))
    fstat = w * (k - 2) / (2.0 * k)
    tests = {
        "headline": Test("Wald F, small-sample (Hotelling)", fstat, 2, k - 2,
                         float(f.sf(fstat, 2, k - 2))),
        "wald_chi2": Test("Wald chi-square (the paper's test)", w, 2, None, float(chi2.sf(w, 2))),
        "lrt": Test("likelihood ratio (ML)", lr, 2, None, float(chi2.sf(lr, 2))),
    }
    variance = {"groups": k, "slopes_cov": cov_re.tolist(), "residual": float(full.scale),
                "model_intercept": float(full.vcomp[0]) if several else None,
                "llf": float(full.llf), "llf_null": float(null.llf)}
    coef = {"intercept": float(full.fe_params["Intercept"]), "wp": b[0], "wp2": b[1]}
    return EngineResult("mixedlm", formula, {k_: float(v) for k_, v in coef.items()},
                        cov * k / (k - 2), k - 2, tests, variance, notes)


def _fit_ols(frame, k: int, several: bool, notes: list[str]) -> EngineResult:
    import statsmodels.formula.api as smf
    from scipy.stats import chi2

    extra = " + C(model)" if several else ""
    notes.append(f"{k} benchmark(s): too few for random slopes (3 or more needed); ordinary least "
                 "squares" + (" with a fixed effect per model" if several else "") +
                 ", so the p-value takes every score as independent evidence of one curve")
    full = _quiet_fit(lambda: smf.ols("score ~ wp + wp2" + extra, frame).fit(), "model", notes)
    null = _quiet_fit(lambda: smf.ols("score ~ 1" + extra, frame).fit(), "null model", notes)
    b = np.array([float(full.params[t]) for t in TERMS])
    cov = np.asarray(full.cov_params().loc[TERMS, TERMS], dtype=float)
    w = wald(b, cov)
    lr = max(0.0, 2.0 * (float(full.llf) - float(null.llf)))
    fstat, p_f, _ = full.compare_f_test(null)
    tests = {
        "headline": Test("F test (ordinary least squares)", float(fstat), 2, float(full.df_resid),
                         float(p_f)),
        "wald_chi2": Test("Wald chi-square", w, 2, None, float(chi2.sf(w, 2))),
        "lrt": Test("likelihood ratio", lr, 2, None, float(chi2.sf(lr, 2))),
    }
    coef = {"intercept": float(full.params["Intercept"]), "wp": b[0], "wp2": b[1]}
    return EngineResult("mixedlm", "score ~ wp + wp2" + extra + " (OLS)", coef, cov,
                        float(full.df_resid), tests,
                        {"groups": k, "residual": float(full.scale), "llf": float(full.llf),
                         "llf_null": float(null.llf)}, notes)
