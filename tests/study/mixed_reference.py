"""An independent maximum-likelihood fit of the Gaussian mixed model that `fit` claims to fit.

Written from the textbook marginal likelihood, with numpy and scipy only (no statsmodels):
for benchmark b with design X_b = [1, w_p, w_p^2], random slopes Z_b = [w_p, w_p^2] with covariance
G = L L', optional base-model intercepts D_b (variance s_m) and residual variance s_e,

    y_b ~ N(X_b beta, V_b),   V_b = Z_b G Z_b' + s_m D_b D_b' + s_e I,

beta is profiled out by generalised least squares and the log-likelihood

    l = -1/2 sum_b [n_b log(2 pi) + log|V_b| + r_b' V_b^-1 r_b]

is maximised over (L, log s_m, log s_e) from several starting points. The Wald covariance of beta is
(sum_b X_b' V_b^-1 X_b)^-1 at the maximum. Used by tests/study/test_fit.py as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize


@dataclass
class RefFit:
    llf: float
    beta: np.ndarray
    cov_beta: np.ndarray
    G: np.ndarray


def _blocks(wp, task, model, y, fixed):
    out = []
    for t in sorted(set(task)):
        idx = np.array([i for i, x in enumerate(task) if x == t])
        w = wp[idx]
        X = np.column_stack([np.ones_like(w), w, w ** 2][: 1 if fixed == "null" else 3])
        Z = np.column_stack([w, w ** 2])
        labels = sorted({model[i] for i in idx})
        D = np.array([[1.0 if model[i] == m else 0.0 for m in labels] for i in idx])
        out.append((X, Z, D, y[idx]))
    return out


def _objective(theta, blocks, with_model):
    try:
        llf = _profile(theta, blocks, with_model)[0]
    except np.linalg.LinAlgError:
        return 1e10
    return -llf if np.isfinite(llf) else 1e10


def _profile(theta, blocks, with_model):
    theta = np.clip(theta, -18.0, 18.0)
    L = np.array([[np.exp(theta[0]), 0.0], [theta[1], np.exp(theta[2])]])
    G = L @ L.T
    s_m = np.exp(theta[3]) if with_model else 0.0
    s_e = np.exp(theta[-1])
    xvx, xvy, parts = 0.0, 0.0, []
    for X, Z, D, y in blocks:
        V = Z @ G @ Z.T + s_m * D @ D.T + s_e * np.eye(len(y))
        if np.linalg.cond(V) > 1e10:  # numerically singular: not a usable point
            raise np.linalg.LinAlgError("ill-conditioned V")
        Vi = np.linalg.inv(V)
        xvx = xvx + X.T @ Vi @ X
        xvy = xvy + X.T @ Vi @ y
        parts.append((X, y, V, Vi))
    beta = np.linalg.solve(xvx, xvy)
    llf = 0.0
    for X, y, V, Vi in parts:
        r = y - X @ beta
        llf -= 0.5 * (len(y) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + r @ Vi @ r)
    return llf, beta, np.linalg.inv(xvx), G


def ml_fit(wp, task, model, y, fixed: str = "full") -> RefFit:
    """ML fit of the model with fixed part `full` (1, w_p, w_p^2) or `null` (1 only)."""
    with_model = len(set(model)) > 1
    blocks = _blocks(np.asarray(wp, float), list(task), list(model), np.asarray(y, float), fixed)
    best = None
    for start in ([-2.0, 0.0, -2.0], [-4.0, 0.0, -4.0], [0.0, -0.5, -1.0]):
        for s_e in (-4.0, -8.0):
            theta0 = start + ([-4.0] if with_model else []) + [s_e]
            res = minimize(lambda th: _objective(th, blocks, with_model), theta0,
                           method="BFGS", options={"gtol": 1e-8, "maxiter": 5000})
            res = minimize(lambda th: _objective(th, blocks, with_model), res.x,
                           method="Nelder-Mead",
                           options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
            if best is None or res.fun < best.fun:
                best = res
    llf, beta, cov, G = _profile(best.x, blocks, with_model)
    return RefFit(llf, beta, cov, G)
