"""`fit`: the paper's quadratic in w_p, its optimum and lambda, the scaling and the CLI contract."""

import json

import numpy as np
import pytest

from alpaca_plw.study.fit import Scores, fit_scores, optimum, scale, to_plw, to_wp
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


def test_scores_are_min_max_scaled_per_task_and_model():
    s = Scores(np.array([0.0, 0.1, 1.0, 0.0, 0.1, 1.0, 0.0, 0.5]),
               ["a", "a", "a", "a", "a", "a", "b", "b"],
               np.array([1.0, 3.0, 2.0, 10.0, 30.0, 20.0, 5.0, 5.0]),
               ["m1", "m1", "m1", "m2", "m2", "m2", "m1", "m1"])
    scaled = scale(s)
    assert scaled.score.tolist() == [0.0, 1.0, 0.5, 0.0, 1.0, 0.5]
    assert scaled.dropped == ["b / m1: all 2 scores equal"]


def _synthetic(seed: int, wp_star: float = 0.652, noise: float = 0.03):
    """Five tasks, each its own offset and scale of one negative quadratic in w_p, plus noise."""
    rng = np.random.default_rng(seed)
    plw, task, score = [], [], []
    for t, (offset, size) in enumerate([(0.3, 0.1), (0.6, 0.02), (0.1, 0.3), (50, 5), (0.45, 0.05)]):
        for p in PAPER_PLWS:
            for _ in range(2):  # two replicate runs per PLW
                curve = 1 - (to_wp(p) - wp_star) ** 2
                plw.append(p)
                task.append(f"t{t}")
                score.append(offset + size * (curve + rng.normal(0, noise)))
    return Scores(np.array(plw), task, np.array(score))


def test_data_from_a_known_quadratic_recovers_its_optimum():
    fit = fit_scores(_synthetic(0))
    assert fit.n == 100
    assert fit.wp_opt == pytest.approx(0.652, abs=0.03)
    assert fit.lam == pytest.approx(0.242, abs=0.04)
    assert fit.coef["wp2"] < 0 and fit.p_value < 1e-6


def test_flat_data_gives_a_large_p_value():
    rng = np.random.default_rng(1)
    s = _synthetic(2)
    s.score = rng.normal(0, 1, s.score.size) + np.repeat(np.arange(5) * 3.0, 20)
    assert fit_scores(s).p_value > 0.01


def test_model_column_adds_a_fixed_effect_and_still_recovers_the_optimum():
    a, b = _synthetic(3), _synthetic(4)
    both = Scores(np.concatenate([a.plw, b.plw]), a.task + b.task,
                  np.concatenate([a.score, b.score * 2 + 1]), ["m1"] * 100 + ["m2"] * 100)
    fit = fit_scores(both)
    assert fit.n == 200
    assert fit.wp_opt == pytest.approx(0.652, abs=0.03)


def test_fit_json_has_exactly_the_documented_keys(run_cli, tmp_path):
    s = _synthetic(5)
    csv = tmp_path / "scores.csv"
    csv.write_text("plw,task,score\n" + "".join(
        f"{float(p)!r},{t},{float(v)!r}\n" for p, t, v in zip(s.plw, s.task, s.score)))
    code, stdout, stderr = run_cli(["fit", csv, "--json"])
    assert code == 0, stderr
    body = json.loads(stdout)
    assert set(body) == {"n", "coef", "p_value", "wp_opt", "lambda", "note"}
    assert set(body["coef"]) == {"intercept", "wp", "wp2"}
    assert body["lambda"] == pytest.approx(0.242, abs=0.04)


def test_fit_reads_the_eval_csv_and_draws_the_plot(run_cli, tmp_path):
    s = _synthetic(6)
    csv = tmp_path / "scores.csv"
    csv.write_text("run,plw,task,metric,value\n" + "".join(
        f"r,{float(p)!r},{t},acc,{float(v)!r}\n" for p, t, v in zip(s.plw, s.task, s.score)))
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
    from alpaca_plw.study.fit import read_scores

    s = _synthetic(7)
    csv = tmp_path / "scores.csv"
    csv.write_text("run,plw,task,metric,value\n" + "".join(
        f"r,{float(p)!r},{t},brier_score,{-float(v)!r}\n" for p, t, v in zip(s.plw, s.task, s.score)))
    fit = fit_scores(read_scores(csv))
    assert fit.wp_opt == pytest.approx(fit_scores(s).wp_opt, abs=1e-6)
    assert "lower is better for brier_score" in fit.note
