"""`fit`: the paper's quadratic in w_p, its optimum and lambda, the scaling, the statistics (pinned
against an independent ML fit, a closed form and, where R is installed, glmmTMB) and the CLI contract."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mixed_reference import ml_fit
from scipy.stats import chi2, f, t

from alpaca_plw.study.fit import Scores, fit_scores, optimum, optimum_interval, scale, to_plw, to_wp
from alpaca_plw.study.grid import PAPER_PLWS


def test_lambda_from_the_papers_glmm_coefficients_is_0_242():
    wp, lam, _ = optimum(5.590, -4.284)
    assert round(wp, 3) == 0.652
    assert round(lam, 3) == 0.242


def test_the_papers_first_lmm_coefficients_give_the_same_optimum():
    wp, lam, _ = optimum(0.5414, -0.4148)
    assert round(wp, 3) == 0.653  # -0.5414 / (2 * -0.4148) = 0.6526
    assert round(lam, 2) == 0.24


def test_transform_maps_plw_0_1_to_w_p_0_5_and_back():
    assert to_wp(0.1) == pytest.approx(0.5, abs=1e-5)
    assert to_plw(0.5) == pytest.approx(0.1, rel=1e-4)


def test_convex_fit_has_no_optimum_and_says_why():
    wp, lam, note = optimum(-1.0, 2.0)
    assert wp is None and lam is None and "no maximum" in note


@pytest.mark.parametrize("b1,b2,edge", [(3.0, -1.0, 1.0), (-1.0, -1.0, 0.0)])
def test_optimum_outside_0_1_is_clamped_with_a_note(b1, b2, edge):
    wp, lam, note = optimum(b1, b2)
    assert wp == edge and lam == edge ** (1 / 0.30103)
    assert "clamped" in note


def test_scores_are_min_max_scaled_per_task_over_all_models():
    s = Scores(np.array([0.0, 0.1, 1.0, 0.0, 0.1, 1.0, 0.0, 0.5]),
               ["a", "a", "a", "a", "a", "a", "b", "b"],
               np.array([1.0, 3.0, 2.0, 10.0, 30.0, 20.0, 5.0, 5.0]),
               ["m1", "m1", "m1", "m2", "m2", "m2", "m1", "m1"])
    scaled = scale(s)
    # task a spans 1..30 over both models together (per model it would be 0, 1, 0.5 twice)
    assert scaled.score.tolist() == pytest.approx([0.0, 2 / 29, 1 / 29, 9 / 29, 1.0, 19 / 29])
    assert scaled.dropped == ["b: all 2 scores equal"]


def _synthetic(seed: int, wp_star: float = 0.652, noise: float = 0.03):
    """Five tasks, each its own offset and scale of one negative quadratic in w_p, plus noise."""
    rng = np.random.default_rng(seed)
    plw, task, score = [], [], []
    for t_, (offset, size) in enumerate([(0.3, 0.1), (0.6, 0.02), (0.1, 0.3), (50, 5), (0.45, 0.05)]):
        for p in PAPER_PLWS:
            for _ in range(2):  # two replicate runs per PLW
                curve = 1 - (to_wp(p) - wp_star) ** 2
                plw.append(p)
                task.append(f"t{t_}")
                score.append(offset + size * (curve + rng.normal(0, noise)))
    return Scores(np.array(plw), task, np.array(score))


def _benchmarks(seed: int, k: int = 5, models: int = 2, common: float = 0.0, spread: float = 1.0):
    """k benchmarks x `models` base models x the paper's grid. Each benchmark has its own random
    quadratic (slope spread `spread`), plus `common` times the paper's curve (optimum w_p 0.652),
    a model offset per (benchmark, model) and noise. common = 0 is the null: no shared curve."""
    rng = np.random.default_rng(seed)
    plw, task, model, score = [], [], [], []
    for b in range(k):
        c, v, level = rng.normal(0, 1), rng.uniform(0, 1), rng.normal(0.5, 0.1)
        for m in range(models):
            offset = rng.normal(0, 0.05)
            for p in PAPER_PLWS:
                w = to_wp(p)
                plw.append(p)
                task.append(f"b{b}")
                model.append(f"m{m}")
                score.append(level + offset + spread * 0.05 * c * (w - v) ** 2
                             - common * (w - 0.652) ** 2 + rng.normal(0, 0.01))
    return Scores(np.array(plw), task, np.array(score), model)


def _by_hand_scaled(s: Scores) -> np.ndarray:
    """Min-max per task over all models, written out without `scale`."""
    out = np.empty_like(s.score)
    for task in set(s.task):
        idx = [i for i, x in enumerate(s.task) if x == task]
        low, high = s.score[idx].min(), s.score[idx].max()
        out[idx] = (s.score[idx] - low) / (high - low)
    return out


@pytest.fixture(scope="module")
def pinned():
    """One balanced design (5 benchmarks, 2 models), fitted by `fit` and by the reference."""
    s = _benchmarks(11, common=0.02)
    y = _by_hand_scaled(s)
    wp = to_wp(s.plw)
    return s, fit_scores(s), ml_fit(wp, s.task, s.model, y), ml_fit(wp, s.task, s.model, y, "null")


def test_fit_is_the_ml_fit_of_the_papers_gaussian_model(pinned):
    """Same log-likelihoods (model and null), coefficients and random-slope covariance as an
    independent numpy/scipy ML fit: REML, a missing random effect or other scaling would differ."""
    s, fit, ref, ref_null = pinned
    assert fit.n == 100 and fit.engine == "mixedlm"
    assert fit.formula == "score ~ wp + wp2 + (0 + wp + wp2 | task) + (1 | task:model)"
    assert fit.variance["llf"] == pytest.approx(ref.llf, abs=1e-4)
    assert fit.variance["llf_null"] == pytest.approx(ref_null.llf, abs=1e-4)
    assert [fit.coef[k] for k in ("intercept", "wp", "wp2")] == pytest.approx(ref.beta, abs=1e-5)
    assert np.allclose(fit.variance["slopes_cov"], ref.G, atol=1e-3, rtol=1e-2)
    assert fit.data.score == pytest.approx(_by_hand_scaled(s))


def test_the_three_tests_are_2_df_tests_of_the_reference_statistics(pinned):
    """Wald chi2(2), LR chi2(2) and the headline F(2, K - 2) = W (K - 2) / (2 K), each recomputed
    from the reference fit: a wrong df or a halved statistic moves them."""
    _, fit, ref, ref_null = pinned
    k = 5
    wald = ref.beta[1:] @ np.linalg.solve(ref.cov_beta[1:, 1:], ref.beta[1:])
    lr = 2 * (ref.llf - ref_null.llf)
    tests = fit.tests
    assert [tests[n].df1 for n in ("headline", "wald_chi2", "lrt")] == [2, 2, 2]
    assert tests["headline"].df2 == k - 2
    assert tests["wald_chi2"].statistic == pytest.approx(wald, rel=1e-3)
    assert tests["wald_chi2"].p_value == pytest.approx(chi2.sf(wald, 2), rel=1e-3)
    assert tests["lrt"].statistic == pytest.approx(lr, rel=1e-4)
    assert tests["lrt"].p_value == pytest.approx(chi2.sf(lr, 2), rel=1e-4)
    fstat = wald * (k - 2) / (2 * k)
    assert tests["headline"].statistic == pytest.approx(fstat, rel=1e-3)
    assert fit.p_value == tests["headline"].p_value == pytest.approx(f.sf(fstat, 2, k - 2), rel=1e-3)
    assert fit.test == "Wald F, small-sample (Hotelling)"


def test_balanced_fixed_effects_are_the_mean_of_per_benchmark_least_squares_slopes():
    """Closed form: with every benchmark on the same design, the GLS estimate of (b1, b2) is the
    mean over benchmarks of each one's least-squares slopes (intercept per model), whatever the
    random-effect covariance."""
    s = _benchmarks(12, k=6, common=0.03)
    y, wp = _by_hand_scaled(s), to_wp(s.plw)
    slopes = []
    for b in sorted(set(s.task)):
        idx = [i for i, x in enumerate(s.task) if x == b]
        X = np.column_stack([[1.0 * (s.model[i] == m) for i in idx] for m in ("m0", "m1")]
                            + [wp[idx], wp[idx] ** 2])
        slopes.append(np.linalg.lstsq(X, y[idx], rcond=None)[0][2:])
    fit = fit_scores(s)
    assert [fit.coef["wp"], fit.coef["wp2"]] == pytest.approx(np.mean(slopes, axis=0), abs=1e-6)


def test_one_base_model_fits_slopes_only_as_the_reference():
    s = _benchmarks(13, k=4, models=1, common=0.02)
    s.model = None
    fit = fit_scores(s)
    ref = ml_fit(to_wp(s.plw), s.task, ["-"] * len(s.task), _by_hand_scaled(s))
    assert fit.formula == "score ~ wp + wp2 + (0 + wp + wp2 | task)"
    assert fit.variance["llf"] == pytest.approx(ref.llf, abs=1e-4)
    assert [fit.coef[k] for k in ("intercept", "wp", "wp2")] == pytest.approx(ref.beta, abs=1e-5)


def test_null_data_with_a_curve_per_benchmark_rejects_near_the_nominal_rate():
    """A small, deterministic calibration (benchmarks/bench_fit_calibration.py is the full one):
    30 datasets, 8 benchmarks with their own random quadratics and no common curve. At 5% the
    headline test rejects 1.5 of them on average; a fit without random slopes rejects about a third."""
    p = np.array([fit_scores(_benchmarks(1000 + i, k=8)).p_value for i in range(30)])
    assert (p < 0.05).sum() <= 4


def test_data_from_a_known_quadratic_recovers_its_optimum():
    fit = fit_scores(_synthetic(0))
    assert fit.n == 100
    assert fit.wp_opt == pytest.approx(0.652, abs=0.03)
    assert fit.lam == pytest.approx(0.242, abs=0.04)
    assert fit.coef["wp2"] < 0 and fit.p_value < 1e-3 and fit.significant
    lo, hi = fit.lam_ci
    assert lo < 0.242 < hi and hi - lo < 0.2
    assert fit.headline.startswith(f"optimum PLW {fit.lam:.3g} (95% CI")


def test_the_optimum_interval_is_the_delta_method_by_hand():
    b1, b2, df = 1.2, -0.9, 6
    cov = np.array([[0.04, -0.03], [-0.03, 0.05]])
    g1, g2 = -1 / (2 * b2), b1 / (2 * b2 ** 2)
    se = np.sqrt(g1 * g1 * 0.04 + 2 * g1 * g2 * -0.03 + g2 * g2 * 0.05)
    centre = -b1 / (2 * b2)
    lo, hi = optimum_interval(b1, b2, cov, df)
    assert (lo, hi) == pytest.approx((centre - t.ppf(0.975, df) * se, centre + t.ppf(0.975, df) * se))
    assert optimum_interval(1.0, 0.5, cov, df) is None


def test_flat_data_gives_a_large_p_value_and_no_recommendation():
    rng = np.random.default_rng(1)
    s = _synthetic(2)
    s.score = rng.normal(0, 1, s.score.size) + np.repeat(np.arange(5) * 3.0, 20)
    fit = fit_scores(s)
    assert fit.p_value > 0.05 and not fit.significant
    assert fit.headline.startswith("no significant PLW effect (p = ")
    assert fit.lam is None or "unsupported estimate" in fit.headline


def test_every_statsmodels_warning_reaches_the_note(monkeypatch):
    import warnings

    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    real = MixedLM.fit

    def noisy(self, *args, **kwargs):
        warnings.warn("The Hessian matrix at the estimated parameter values is not positive "
                      "definite.", ConvergenceWarning)
        warnings.warn("a warning of another kind", UserWarning)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MixedLM, "fit", noisy)
    note = fit_scores(_benchmarks(14)).note
    assert ("statsmodels, model: ConvergenceWarning: The Hessian matrix at the estimated parameter "
            "values is not positive definite.") in note
    assert "statsmodels, null model: UserWarning: a warning of another kind" in note


def test_a_common_curve_without_slope_variation_notes_the_singular_covariance():
    fit = fit_scores(_synthetic(3))  # one curve for all: the slope covariance collapses
    assert "random-slope covariance is singular" in fit.note or "boundary" in fit.note


def test_fewer_than_3_benchmarks_fall_back_to_least_squares_and_say_so():
    s = _benchmarks(15, k=2, common=0.05)
    fit = fit_scores(s)
    assert fit.formula == "score ~ wp + wp2 + C(model) (OLS)"
    assert "too few for random slopes" in fit.note and fit.tests["headline"].df1 == 2


def test_model_column_still_recovers_the_optimum():
    a, b = _synthetic(3), _synthetic(4)
    both = Scores(np.concatenate([a.plw, b.plw]), a.task + b.task,
                  np.concatenate([a.score, b.score * 2 + 1]), ["m1"] * 100 + ["m2"] * 100)
    fit = fit_scores(both)
    assert fit.n == 200
    assert fit.wp_opt == pytest.approx(0.652, abs=0.03)


def _write(path: Path, s: Scores, header: str = "plw,task,score") -> Path:
    rows = zip(s.plw, s.task, s.score, s.model or [""] * len(s.task))
    with_model = header.endswith("model")
    path.write_text(header + "\n" + "".join(
        f"{float(p)!r},{t_},{float(v)!r}" + (f",{m}" if with_model else "") + "\n"
        for p, t_, v, m in rows))
    return path


JSON_KEYS = {"n", "coef", "p_value", "wp_opt", "lambda", "note", "test", "tests", "wp_ci",
             "lambda_ci", "significant", "headline", "engine", "formula", "variance",
             "figure1"}  # figure1: the Figure 1 aggregates (tests/study/test_aggregate.py)


def test_fit_json_has_exactly_the_documented_keys(run_cli, tmp_path):
    csv = _write(tmp_path / "scores.csv", _synthetic(5))
    code, stdout, stderr = run_cli(["fit", csv, "--json"])
    assert code == 0, stderr
    body = json.loads(stdout)
    assert set(body) == JSON_KEYS
    assert set(body["coef"]) == {"intercept", "wp", "wp2"}
    assert set(body["tests"]) == {"headline", "wald_chi2", "lrt"}
    assert set(body["tests"]["lrt"]) == {"name", "statistic", "df", "df_denominator", "p_value"}
    assert body["lambda"] == pytest.approx(0.242, abs=0.04) and body["significant"] is True
    assert body["p_value"] == body["tests"]["headline"]["p_value"]


def test_fit_table_headlines_no_significant_effect_and_marks_the_estimate(run_cli, tmp_path):
    csv = _write(tmp_path / "scores.csv", _benchmarks(16, k=8), "plw,task,score,model")
    code, stdout, stderr = run_cli(["fit", csv])
    assert code == 0, stderr
    assert stdout.startswith("no significant PLW effect (p = ")
    assert "optimum PLW (lambda) (unsupported estimate)" in stdout
    assert "Wald chi-square (the paper's test)" in stdout and "likelihood ratio (ML)" in stdout


def test_fit_reads_the_eval_csv_and_draws_the_plot(run_cli, tmp_path):
    s = _synthetic(6)
    csv = tmp_path / "scores.csv"
    csv.write_text("run,plw,task,metric,value\n" + "".join(
        f"r,{float(p)!r},{t_},acc,{float(v)!r}\n" for p, t_, v in zip(s.plw, s.task, s.score)))
    code, stdout, stderr = run_cli(["fit", csv, "--plot", tmp_path / "fit.png"])
    assert code == 0, stderr
    assert "optimum PLW" in stdout
    assert (tmp_path / "fit.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("text,needle", [("plw,score\n0,1\n", "missing column(s) task"),
                                         ("plw,task,score\nx,a,1\n", "must be numbers"),
                                         ("plw,task,score\n2,a,1\n", "outside [0, 1]")])
def test_bad_scores_fail_with_one_line(run_cli, tmp_path, text, needle):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    code, stdout, stderr = run_cli(["fit", csv])
    assert code == 2 and needle in stderr and "Traceback" not in stderr and stdout == ""
    assert stderr.count("\n") == 1


def test_lower_is_better_metrics_are_turned_around_before_the_fit(tmp_path):
    from alpaca_plw.study.scores import read_scores

    s = _synthetic(7)
    csv = tmp_path / "scores.csv"
    csv.write_text("run,plw,task,metric,value\n" + "".join(
        f"r,{float(p)!r},{t_},brier_score,{-float(v)!r}\n" for p, t_, v in zip(s.plw, s.task, s.score)))
    fit = fit_scores(read_scores(csv))
    assert fit.wp_opt == pytest.approx(fit_scores(s).wp_opt, abs=1e-6)
    assert "lower is better for brier_score" in fit.note


# --- the glmmTMB engine ------------------------------------------------------------------------

def _has_glmmtmb() -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(["Rscript", "-e", ("quit(status = !(requireNamespace('glmmTMB', "
                            "quietly = TRUE) && requireNamespace('jsonlite', quietly = TRUE)))")],
                           capture_output=True, check=False)
    return probe.returncode == 0


needs_r = pytest.mark.skipif(not _has_glmmtmb(), reason="R with glmmTMB is not installed "
                             "(apt-get install r-cran-glmmtmb)")


def _r(code: str, csv: Path) -> list[float]:
    """Run R `code` on data frame `d` read from `csv`; it must cat() numbers separated by spaces."""
    proc = subprocess.run(["Rscript", "--vanilla", "-e",
                           (f"d <- read.csv('{csv}'); d$task <- factor(d$task); "
                            f"d$model <- factor(d$model); {code}")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return [float(x) for x in proc.stdout.split()]


@needs_r
def test_gaussian_engine_matches_glmmtmb_on_the_same_model(tmp_path):
    s = _benchmarks(17, k=5, common=0.02)
    fit = fit_scores(s)
    csv = tmp_path / "d.csv"
    frame = fit.data
    wp = to_wp(frame.plw)
    csv.write_text("score,wp,task,model\n" + "".join(
        f"{float(y)!r},{float(w)!r},{t_},{m}\n" for y, w, t_, m in zip(frame.score, wp, frame.task, frame.model)))
    got = _r("m <- glmmTMB::glmmTMB(score ~ wp + I(wp^2) + (0 + wp + I(wp^2) | task) + "
             "(1 | task:model), data = d, REML = FALSE); "
             "cat(glmmTMB::fixef(m)$cond, as.numeric(logLik(m)))", csv)
    assert [fit.coef["intercept"], fit.coef["wp"], fit.coef["wp2"]] == pytest.approx(got[:3], abs=1e-4)
    assert fit.variance["llf"] == pytest.approx(got[3], abs=1e-3)


@needs_r
def test_glmmtmb_engine_matches_a_direct_r_call(tmp_path):
    from alpaca_plw.study.fit_glmmtmb import squeeze

    s = _benchmarks(18, k=6, common=0.03)
    fit = fit_scores(s, engine="glmmtmb")
    y = squeeze(_by_hand_scaled(s))
    assert y.min() > 0 and y.max() < 1
    csv = tmp_path / "d.csv"
    csv.write_text("y,w,task,model\n" + "".join(
        f"{float(v)!r},{float(w)!r},{t_},{m}\n" for v, w, t_, m in zip(y, to_wp(s.plw), s.task, s.model)))
    got = _r("m <- glmmTMB::glmmTMB(y ~ w + I(w^2) + (0 + w + I(w^2) | task) + (1 | model), "
             "data = d, family = glmmTMB::beta_family()); b <- glmmTMB::fixef(m)$cond; "
             "V <- vcov(m)$cond[2:3, 2:3]; cat(b, t(b[2:3]) %*% solve(V) %*% b[2:3])", csv)
    assert [fit.coef["intercept"], fit.coef["wp"], fit.coef["wp2"]] == pytest.approx(got[:3], rel=1e-4)
    assert fit.tests["wald_chi2"].statistic == pytest.approx(got[3], rel=1e-3)
    assert fit.tests["wald_chi2"].p_value == pytest.approx(chi2.sf(got[3], 2), rel=1e-3)
    assert fit.engine == "glmmtmb" and "beta family" in fit.formula


def test_glmmtmb_engine_without_rscript_is_one_line_exit_5(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    csv = _write(tmp_path / "s.csv", _benchmarks(19), "plw,task,score,model")
    code, stdout, stderr = run_cli(["fit", csv, "--engine", "glmmtmb"])
    assert code == 5 and stdout == "" and stderr.count("\n") == 1
    assert "Rscript not found on PATH" in stderr and "r-cran-glmmtmb" in stderr


def test_glmmtmb_engine_without_the_r_package_is_one_line_exit_5(run_cli, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "Rscript"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 3\n")  # what the script does when glmmTMB will not load
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    csv = _write(tmp_path / "s.csv", _benchmarks(19), "plw,task,score,model")
    code, stdout, stderr = run_cli(["fit", csv, "--engine", "glmmtmb"])
    assert code == 5 and stdout == "" and stderr.count("\n") == 1
    assert "glmmTMB and jsonlite are not installed" in stderr


def test_unknown_engine_is_refused(run_cli, tmp_path):
    csv = _write(tmp_path / "s.csv", _synthetic(8))
    code, _, stderr = run_cli(["fit", csv, "--engine", "lme4"])
    assert code == 2 and "--engine 'lme4'" in stderr


def test_glmmtmb_engine_reads_rs_answer_and_passes_its_warnings_and_nas_on(run_cli, tmp_path,
                                                                          monkeypatch):
    """R's JSON (here from a stand-in Rscript) becomes the result: NA log-likelihoods stay NaN
    with a note, every glmmTMB warning reaches the note, the headline F uses W and K."""
    answer = {"coef": [-1.0, 5.59, -4.284], "cov": [[0.4, -0.3], [-0.3, 0.3]], "wald": 120.0,
              "llf": None, "llf_null": -50.0, "slopes_cov": [[1, 0], [0, 1]],
              "model_intercept": 0.1, "pdhess": False, "glmmTMB": "1.1.8",
              "warnings": ["score ~ 1: Model convergence problem; singular convergence (7)."]}
    fake = tmp_path / "bin" / "Rscript"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ncat <<'JSON'\n{json.dumps(answer)}\nJSON\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    csv = _write(tmp_path / "s.csv", _benchmarks(20, k=8), "plw,task,score,model")
    code, stdout, stderr = run_cli(["fit", csv, "--engine", "glmmtmb", "--json"])
    assert code == 0, stderr
    body = json.loads(stdout)
    assert body["coef"] == {"intercept": -1.0, "wp": 5.59, "wp2": -4.284}
    assert round(body["lambda"], 3) == 0.242
    assert body["tests"]["wald_chi2"]["p_value"] == pytest.approx(chi2.sf(120.0, 2))
    assert body["tests"]["headline"]["statistic"] == pytest.approx(120.0 * 6 / 16)
    assert body["tests"]["lrt"]["p_value"] is None  # NaN is not JSON
    assert "NaN" not in stdout
    assert "glmmTMB: score ~ 1: Model convergence problem; singular convergence (7)." in body["note"]
    assert "log-likelihood is NA" in body["note"] and "pdHess FALSE" in body["note"]


def test_an_r_error_is_one_line_naming_rs_error(run_cli, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "Rscript"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error in optim(): non-finite value' >&2\n"
                    "echo 'Execution halted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    csv = _write(tmp_path / "s.csv", _benchmarks(21), "plw,task,score,model")
    code, stdout, stderr = run_cli(["fit", csv, "--engine", "glmmtmb"])
    assert code == 1 and stdout == "" and stderr.count("\n") == 1
    assert "R failed: Error in optim(): non-finite value" in stderr
