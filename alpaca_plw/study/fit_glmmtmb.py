"""`fit --engine glmmtmb`: the paper's own model, run in R's glmmTMB through `Rscript`.

    score ~ poly(w_p, 2, raw = TRUE) + (0 + poly(w_p, 2, raw = TRUE) | task) + (1 | model)

with a beta response (logit link), fitted by maximum likelihood (glmmTMB's default). A beta response
needs scores strictly inside (0, 1): the scaled scores y are squeezed to (y (n - 1) + 0.5) / n with
n the number of scores (Smithson and Verkuilen, 2006; the paper does not say what it did). The test
of the two PLW terms is the Wald chi-square of glmmTMB's `car::Anova` for that term (computed in the
script as b' V^-1 b from `fixef` and `vcov`, which is what `Anova` reports for a model with one
term), with the likelihood ratio against `score ~ 1` and the same small-sample Wald F as the default
engine as the headline. The data go to R in a temporary CSV; R's answer comes back as JSON on stdout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from alpaca_plw.errors import MissingExtraError, PLWError
from alpaca_plw.study.fit_engine import EngineResult, Test

INSTALL = "install R and glmmTMB (Debian/Ubuntu: apt-get install r-cran-glmmtmb)"
NO_PACKAGE = 3  # the script's exit status when glmmTMB cannot be loaded
CALIBRATION = ("the paper's model is for reproduction: on simulated null sweeps (8 benchmarks, "
               "benchmarks/RESULTS.md) its tests reject too often at 5% (Wald F 12%, Wald "
               "chi-square 27%); the default engine's p-value holds its level")

SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
if (!requireNamespace("glmmTMB", quietly = TRUE) || !requireNamespace("jsonlite", quietly = TRUE)) {
  quit(status = 3)
}
d <- read.csv(args[1], stringsAsFactors = FALSE)
d$task <- factor(d$task)
d$model <- factor(d$model)
several <- nlevels(d$model) > 1
warns <- character()
fit_one <- function(fixed) {
  f <- paste(fixed, "+ (0 + poly(wp, 2, raw = TRUE) | task)", if (several) "+ (1 | model)" else "")
  withCallingHandlers(
    glmmTMB::glmmTMB(as.formula(f), data = d, family = glmmTMB::beta_family()),
    warning = function(w) {
      warns <<- c(warns, paste0(fixed, ": ", conditionMessage(w)))
      invokeRestart("muffleWarning")
    })
}
full <- fit_one("score ~ poly(wp, 2, raw = TRUE)")
null <- fit_one("score ~ 1")
b <- glmmTMB::fixef(full)$cond
V <- as.matrix(vcov(full)$cond)
W <- drop(t(b[2:3]) %*% solve(V[2:3, 2:3], b[2:3]))
vc <- glmmTMB::VarCorr(full)$cond
out <- list(
  coef = unname(b), cov = unname(V[2:3, 2:3]), wald = W,
  llf = as.numeric(logLik(full)), llf_null = as.numeric(logLik(null)),
  slopes_cov = unname(as.matrix(vc$task)[1:2, 1:2]),
  model_intercept = if (several) unname(as.matrix(vc$model)[1, 1]) else NULL,
  pdhess = isTRUE(full$sdr$pdHess) && isTRUE(null$sdr$pdHess),
  warnings = unique(warns), glmmTMB = as.character(packageVersion("glmmTMB")))
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", na = "null"))
"""


def squeeze(y: np.ndarray) -> np.ndarray:
    """(y (n - 1) + 0.5) / n: scores in [0, 1] moved strictly inside (0, 1) for a beta response."""
    n = len(y)
    return (np.asarray(y, float) * (n - 1) + 0.5) / n


def run_r(frame, rscript: str | None = None, timeout: float = 600.0) -> dict:
    """Run the script on `frame` (columns score, wp, task, model); R's JSON answer as a dict."""
    rscript = rscript or shutil.which("Rscript")
    if rscript is None:
        raise MissingExtraError(f"fit --engine glmmtmb: Rscript not found on PATH; {INSTALL}")
    with tempfile.TemporaryDirectory(prefix="alpaca-plw-fit-") as tmp:
        data, script = Path(tmp) / "scores.csv", Path(tmp) / "fit.R"
        frame[["score", "wp", "task", "model"]].to_csv(data, index=False, float_format="%.17g")
        script.write_text(SCRIPT, encoding="utf-8")
        try:
            proc = subprocess.run([rscript, "--vanilla", str(script), str(data)], text=True,
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PLWError(f"fit --engine glmmtmb: R did not finish in {timeout:g} s") from None
    if proc.returncode == NO_PACKAGE:
        raise MissingExtraError(f"fit --engine glmmtmb: the R packages glmmTMB and jsonlite are "
                                f"not installed for {rscript}; {INSTALL}")
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines()
                 if line.strip() and line.strip() != "Execution halted"]
        errors = [line for line in lines if line.startswith("Error")]
        last = (errors or lines or [f"exit status {proc.returncode}"])[-1]
        raise PLWError(f"fit --engine glmmtmb: R failed: {last}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise PLWError("fit --engine glmmtmb: R printed no JSON answer: "
                       f"{proc.stdout.strip()[-200:]!r}") from None


def _numbers(value) -> np.ndarray:
    """R's numbers from JSON, its NA (null) as nan."""
    return np.array(np.nan if value is None else
                    [_numbers(v) for v in value] if isinstance(value, list) else value, float)


def fit_glmmtmb(frame) -> EngineResult:
    """The paper's beta GLMM; coefficients on the logit scale (the optimum is the same: the link is
    monotone)."""
    from scipy.stats import chi2, f

    k = int(frame["task"].nunique())
    if k < 3:
        raise PLWError(f"fit --engine glmmtmb: {k} benchmark(s); random slopes per benchmark need "
                       "3 or more (the default engine falls back to least squares)")
    frame = frame.copy()
    frame["score"] = squeeze(frame["score"].to_numpy())
    out = run_r(frame)
    several = frame["model"].nunique() > 1
    b = _numbers(out["coef"])
    cov = _numbers(out["cov"])
    w, llf, llf_null = (float(_numbers(out[k])) for k in ("wald", "llf", "llf_null"))
    lr = max(0.0, 2.0 * (llf - llf_null)) if np.isfinite(llf - llf_null) else float("nan")
    fstat = w * (k - 2) / (2.0 * k)
    notes = [f"glmmTMB: {m}" for m in out["warnings"]] + [CALIBRATION]
    if not out["pdhess"]:
        notes.append("glmmTMB: the Hessian is not positive definite (sdreport pdHess FALSE)")
    tests = {
        "headline": Test("Wald F, small-sample (Hotelling)", fstat, 2, k - 2,
                         float(f.sf(fstat, 2, k - 2))),
        "wald_chi2": Test("Wald chi-square (the paper's test)", w, 2, None, float(chi2.sf(w, 2))),
        "lrt": Test("likelihood ratio (ML)", lr, 2, None, float(chi2.sf(lr, 2))),
    }
    formula = ("score ~ poly(wp, 2, raw = TRUE) + (0 + poly(wp, 2, raw = TRUE) | task)"
               + (" + (1 | model)" if several else "") + ", beta family (logit)")
    if not np.isfinite(llf) or not np.isfinite(llf_null):
        notes.append("glmmTMB: a log-likelihood is NA (the fit did not converge)")
    variance = {"groups": k, "slopes_cov": out["slopes_cov"],
                "model_intercept": out.get("model_intercept"),
                "llf": llf if np.isfinite(llf) else None,
                "llf_null": llf_null if np.isfinite(llf_null) else None, "glmmTMB": out["glmmTMB"]}
    return EngineResult("glmmtmb", formula,
                        {"intercept": float(b[0]), "wp": float(b[1]), "wp2": float(b[2])},
                        cov * k / (k - 2), k - 2, tests, variance, notes)
