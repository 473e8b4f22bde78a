"""Calibration of `alpaca-plw fit`: type-I error on null data and recovery of a known optimum.

Simulated sweeps on the paper's PLW grid (10 values), 2 base models, K benchmarks (8 and 13 by
default). Per benchmark b, base model m and PLW (w = PLW ** 0.30103):

    score = level_b + u_m + a_bm + amp * c_b * (w - v_b)^2 - effect * (w - w*)^2 + noise

with c_b ~ N(0, 1) and v_b ~ U(0, 1): every benchmark has its own random quadratic (curvature of
either sign, vertex anywhere), u_m ~ N(0, 0.05) a model effect shared by all benchmarks,
a_bm ~ N(0, 0.02), noise ~ N(0, 0.01), amp = 0.05, level_b ~ N(0.5, 0.1).

- Null (effect = 0): no common curve. At nominal 5% the default test (the headline p-value) should
  reject in at most 7% of datasets. The paper's Wald chi-square and the likelihood-ratio test,
  computed on the same fits, and the old fit (a random intercept per task only, what `fit` did
  before issue 18) are measured on the same datasets as the baseline.
- Known optimum (effect = 0.1, w* = 0.652, i.e. lambda = 0.242): how often the test rejects, the
  median estimate of lambda and how often the 95% interval covers 0.242.

Prints one line per measure and a PASS/FAIL line per goal; exit 0 when every goal passes.

    python benchmarks/bench_fit_calibration.py --datasets 200 --jobs 2 --json /tmp/calib.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from multiprocessing import Pool

LAMBDA = 0.242
ALPHA = 0.05
GOAL = 0.07


def simulate(seed: int, k: int, models: int, effect: float):
    import numpy as np

    from alpaca_plw.study.fit import Scores, to_wp
    from alpaca_plw.study.grid import PAPER_PLWS

    rng = np.random.default_rng(seed)
    wp_star = to_wp(LAMBDA)
    u = rng.normal(0, 0.05, models)
    plw, task, model, score = [], [], [], []
    for b in range(k):
        c, v, level = rng.normal(0, 1), rng.uniform(0, 1), rng.normal(0.5, 0.1)
        for m in range(models):
            a = rng.normal(0, 0.02)
            for p in PAPER_PLWS:
                w = to_wp(p)
                plw.append(p)
                task.append(f"b{b}")
                model.append(f"m{m}")
                score.append(level + u[m] + a + 0.05 * c * (w - v) ** 2
                             - effect * (w - wp_star) ** 2 + rng.normal(0, 0.01))
    return Scores(np.array(plw), task, np.array(score), model)


def old_fit_p(scores) -> float:
    """The fit before issue 18: scaling per (task, model), a fixed effect per model, a random
    intercept per task only, LRT on 2 df. The baseline the default test is compared with."""
    import warnings

    import numpy as np
    import pandas as pd
    import statsmodels.formula.api as smf
    from scipy.stats import chi2

    from alpaca_plw.study.fit import to_wp

    y = np.empty_like(scores.score)
    keys = list(zip(scores.task, scores.model))
    for key in set(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        lo, hi = scores.score[idx].min(), scores.score[idx].max()
        y[idx] = (scores.score[idx] - lo) / (hi - lo)
    wp = to_wp(scores.plw)
    frame = pd.DataFrame({"score": y, "wp": wp, "wp2": wp ** 2, "task": scores.task,
                          "model": scores.model})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = smf.mixedlm("score ~ wp + wp2 + C(model)", frame, groups=frame["task"]).fit(reml=False)
        null = smf.mixedlm("score ~ 1 + C(model)", frame, groups=frame["task"]).fit(reml=False)
    return float(chi2.sf(max(0.0, 2 * (full.llf - null.llf)), 2))


def one(job: tuple[int, int, int, float, str, bool]) -> dict:
    seed, k, models, effect, engine, baseline = job
    from alpaca_plw.study.fit import fit_scores

    from alpaca_plw.errors import PLWError

    scores = simulate(seed, k, models, effect)
    try:
        fit = fit_scores(scores, engine=engine)
    except PLWError as exc:  # counted as "no rejection" and reported
        nan = float("nan")
        return {"k": k, "effect": effect, "p": nan, "p_wald": nan, "p_lrt": nan, "lam": None,
                "ci": None, "boundary": False, "failed": str(exc)}
    out = {"k": k, "effect": effect, "p": fit.p_value, "p_wald": fit.tests["wald_chi2"].p_value,
           "p_lrt": fit.tests["lrt"].p_value, "lam": fit.lam, "ci": fit.lam_ci,
           "boundary": "singular" in fit.note}
    if effect == 0.0 and baseline:
        out["p_old"] = old_fit_p(scores)
    return out


def rate(ps: list[float]) -> tuple[float, float]:
    """Rejection rate at ALPHA and its Monte Carlo standard error."""
    r = sum(p < ALPHA for p in ps) / len(ps)
    return r, math.sqrt(r * (1 - r) / len(ps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=int, default=200, help="null datasets per K")
    parser.add_argument("--optimum-datasets", type=int, default=100,
                        help="datasets with a known optimum per K")
    parser.add_argument("--benchmarks", default="8,13", help="K values, comma-separated")
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--effect", type=float, default=0.1, help="common curve's depth")
    parser.add_argument("--engine", default="mixedlm", choices=["mixedlm", "glmmtmb"],
                        help="fit's engine (glmmtmb needs R; about 2 s a dataset)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the old fit")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.benchmarks.split(",")]
    jobs = []
    for k in ks:
        base = args.seed * 1_000_000 + k * 10_000
        extra = (args.engine, not args.no_baseline)
        jobs += [(base + i, k, args.models, 0.0, *extra) for i in range(args.datasets)]
        jobs += [(base + 5_000 + i, k, args.models, args.effect, *extra)
                 for i in range(args.optimum_datasets)]
    start = time.perf_counter()
    with Pool(args.jobs) as pool:
        results = pool.map(one, jobs, chunksize=4)
    wall = time.perf_counter() - start
    figures, ok = {"command": " ".join(["python", "benchmarks/bench_fit_calibration.py",
                                        *(argv if argv is not None else sys.argv[1:])]),
                   "wall_s": round(wall, 1), "per_k": {}}, True
    print(f"{len(jobs)} datasets, engine {args.engine}, in {wall:.0f} s on {args.jobs} "
          f"process(es); nominal {ALPHA:.0%}, "
          f"goal <= {GOAL:.0%} type-I error")
    for k in ks:
        null = [r for r in results if r["k"] == k and r["effect"] == 0.0]
        alt = [r for r in results if r["k"] == k and r["effect"] != 0.0]
        row = {}
        for key, label in (("p", "default (Wald F, small-sample)"), ("p_wald", "Wald chi2 (paper)"),
                           ("p_lrt", "likelihood ratio"), ("p_old", "old fit (baseline)")):
            if key not in null[0]:
                continue
            r, se = rate([x[key] for x in null])
            row[key] = {"rate": r, "mc_se": se}
            print(f"K={k:2d} null, {label:32s} rejects {r:6.1%} +- {se:.1%} "
                  f"(ratio to nominal {r / ALPHA:.2f})")
        failed = sum("failed" in x for x in null + alt)
        if failed:
            print(f"K={k:2d} {failed} fit(s) failed (counted as not rejecting); first: "
                  f"{next(x['failed'] for x in null + alt if 'failed' in x)}")
        lams = sorted(x["lam"] for x in alt if x["lam"] is not None)
        median = lams[len(lams) // 2] if lams else float("nan")
        covered = [x["ci"] is not None and x["ci"][0] <= LAMBDA <= x["ci"][1] for x in alt]
        power, _ = rate([x["p"] for x in alt])
        row.update({"power": power, "lambda_median": median,
                    "lambda_iqr": [lams[len(lams) // 4], lams[(3 * len(lams)) // 4]] if lams else None,
                    "ci_coverage": sum(covered) / len(alt), "boundary_share":
                    sum(x["boundary"] for x in null) / len(null), "null": len(null), "alt": len(alt), "failed": failed})
        print(f"K={k:2d} known optimum (lambda {LAMBDA}): power {power:.1%}, median lambda "
              f"{median:.3f} (IQR {row['lambda_iqr'][0]:.3f} to {row['lambda_iqr'][1]:.3f}), "
              f"95% CI covers {LAMBDA} in {row['ci_coverage']:.1%}")
        passed = row["p"]["rate"] <= GOAL
        recovered = abs(median - LAMBDA) <= 0.05
        ok = ok and passed and recovered
        print(f"K={k:2d} type-I ratio {row['p']['rate'] / ALPHA:.2f} (goal <= {GOAL / ALPHA:.2f}): "
              f"{'PASS' if passed else 'FAIL'}; lambda recovered within 0.05: "
              f"{'PASS' if recovered else 'FAIL'}")
        figures["per_k"][str(k)] = row
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1, sort_keys=True)
    return 0 if ok else 1


if __name__ == "__main__":
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    sys.exit(main())
