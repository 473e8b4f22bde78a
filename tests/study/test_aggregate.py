"""The paper's Figure 1 aggregates (`fit --json`'s figure1, `fit --plot`) by hand."""

import json

import numpy as np
import pytest

from alpaca_plw.study.aggregate import ALL, figure1
from alpaca_plw.study.fit import Scores

PLWS = [0.0, 0.1, 1.0]
# series -> task -> score at PLW 0, 0.1, 1 (benchmark b sits on another scale than a, and series
# B above series A, so normalising over all benchmarks or over all series gives other numbers)
TABLE = {"A": {"a": [0.2, 0.6, 0.4], "b": [0.5, 0.5, 0.9]},
         "B": {"a": [0.8, 1.0, 0.9], "b": [0.1, 0.3, 0.2]}}
# by hand: simple = mean of a and b; relative = mean of (v - min) / (max - min) per task in series
SIMPLE = {"A": [0.35, 0.55, 0.65], "B": [0.45, 0.65, 0.55]}
RELATIVE = {"A": [(0 + 0) / 2, (1 + 0) / 2, (0.5 + 1) / 2],  # a: 0, 1, 0.5; b: 0, 0, 1
            "B": [(0 + 0) / 2, (1 + 1) / 2, (0.5 + 0.5) / 2]}  # a: 0, 1, 0.5; b: 0, 1, 0.5


def scores_of(table, labelled=True, plws=PLWS) -> Scores:
    rows = [(plw, task, value, series) for series, tasks in table.items()
            for task, values in tasks.items() for plw, value in zip(plws, values)
            if value is not None]
    return Scores(np.array([r[0] for r in rows]), [r[1] for r in rows],
                  np.array([r[2] for r in rows]), [r[3] for r in rows] if labelled else None)


def test_simple_and_relative_aggregates_by_hand():
    fig = figure1(scores_of(TABLE))
    assert [s.name for s in fig.series] == ["A", "B"] and fig.tasks == ["a", "b"]
    for s in fig.series:
        assert s.plws == PLWS
        assert s.simple == pytest.approx(SIMPLE[s.name], abs=1e-12)
        assert s.relative == pytest.approx(RELATIVE[s.name], abs=1e-12)
        assert s.scores == {t: pytest.approx(v) for t, v in TABLE[s.name].items()}
    assert fig.notes == []


def test_scores_without_a_model_label_are_one_series():
    fig = figure1(scores_of({"x": TABLE["A"]}, labelled=False))
    assert [s.name for s in fig.series] == [ALL]
    assert fig.series[0].relative == pytest.approx(RELATIVE["A"], abs=1e-12)


def test_several_scores_at_one_plw_are_averaged_first_and_said():
    """Two base models under one dataset label: their mean is the point, then min-max."""
    other = {"A": {"a": [0.4, 0.8, 0.6], "b": [0.7, 0.3, 0.9]}}
    both = scores_of(TABLE)
    extra = scores_of(other)
    merged = Scores(np.concatenate([both.plw, extra.plw]), both.task + extra.task,
                    np.concatenate([both.score, extra.score]), both.model + extra.model)
    series = figure1(merged).series[0]
    # a: (0.3, 0.7, 0.5) -> 0, 1, 0.5; b: (0.6, 0.4, 0.9) -> 0.4, 0, 1
    assert series.scores["a"] == pytest.approx([0.3, 0.7, 0.5])
    assert series.relative == pytest.approx([0.2, 0.5, 0.75], abs=1e-12)
    assert series.simple == pytest.approx([0.45, 0.55, 0.7], abs=1e-12)
    assert any("averaged" in n for n in figure1(merged).notes)


def test_a_flat_benchmark_leaves_the_relative_aggregate_and_a_missing_score_blanks_a_plw():
    table = {"A": {"a": [0.2, 0.6, 0.4], "b": [0.5, 0.5, 0.5], "c": [0.1, None, 0.3]}}
    fig = figure1(scores_of(table))
    s = fig.series[0]
    assert s.relative_tasks == ["a", "c"]
    assert s.simple == pytest.approx([(0.2 + 0.5 + 0.1) / 3, None, (0.4 + 0.5 + 0.3) / 3])
    assert s.relative == pytest.approx([0.0, None, (0.5 + 1.0) / 2])
    assert any("b scores 0.5 at every PLW" in n for n in fig.notes)
    assert any("PLW 0.1 has no score for c" in n for n in fig.notes)


def _csv(path, table):
    lines = ["plw,task,score,model"] + [f"{p!r},{t},{v!r},{m}" for m, tasks in table.items()
                                       for t, values in tasks.items()
                                       for p, v in zip(PLWS, values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_json_carries_the_aggregates_and_the_plot_is_the_figure1_layout(run_cli, tmp_path):
    csv = _csv(tmp_path / "scores.csv", TABLE)
    code, stdout, stderr = run_cli(["fit", csv, "--json", "--plot", tmp_path / "f1.png"])
    assert code == 0, stderr
    body = json.loads(stdout)["figure1"]
    assert body["series_column"] == "model" and body["tasks"] == ["a", "b"]
    for series in body["series"]:
        assert series["simple"] == pytest.approx(SIMPLE[series["name"]], abs=1e-12)
        assert series["relative"] == pytest.approx(RELATIVE[series["name"]], abs=1e-12)
        assert series["wp"] == pytest.approx([0.0, 0.5, 1.0], abs=1e-4)
    png = (tmp_path / "f1.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    code, _, stderr = run_cli(["fit", csv, "--plot", tmp_path / "again.png"])
    assert code == 0, stderr
    assert (tmp_path / "again.png").read_bytes() == png  # same inputs, same bytes
    code, stdout, stderr = run_cli(["fit", csv])
    text = " ".join(stdout.split())
    assert "Figure 1 aggregates" in text and "0.3500" in text and "0.7500" in text


def test_the_figure1_plot_has_a_panel_per_benchmark_two_aggregates_and_the_fit(tmp_path,
                                                                                monkeypatch):
    from alpaca_plw.study import plots
    from alpaca_plw.study.fit import fit_scores

    data = scores_of(TABLE)
    titles = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (titles.extend(
        ax.get_title() for ax in fig.axes if ax.get_visible()), real(fig, path)))
    plots.plot_fit(fit_scores(data), tmp_path / "p.png", figure1(data))
    assert titles[:4] == ["a", "b", "simple aggregate (mean score)",
                          "relative aggregate (mean min-max score)"]
    assert titles[4].startswith("fit: p = ") and len(titles) == 5
