"""Figures of the study: the paper's Figure 1 with the fit, and the runs' curves (Figure 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alpaca_plw.data.outputs.atomic import atomic_write
from alpaca_plw.extras import require
from alpaca_plw.study.fit import EXPONENT, to_wp
from alpaca_plw.study.runs import read_log, run_plw, step_records


def _pyplot():
    require("matplotlib", "--plot", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                      metadata={"Software": None}))


def _plw_axis(ax, plws) -> None:
    """x is w_p = PLW^0.30103 (the paper's log-like axis); ticks name the PLW values swept."""
    plws = sorted(set(float(p) for p in plws))
    ax.set_xticks([float(w) for w in to_wp(plws)])
    ax.set_xticklabels([f"{p:g}" for p in plws], rotation=60, fontsize=6)
    ax.set_xlabel(f"PLW (axis: w_p = PLW^{EXPONENT})", fontsize=7)


def _figure1_panels(axes, figure, plws) -> None:
    """One panel per benchmark (raw score against w_p, one line per series), then the simple and
    the relative aggregate."""
    names = figure.tasks + ["simple aggregate (mean score)",
                            "relative aggregate (mean min-max score)"]
    for ax, name in zip(axes, names):
        for s in figure.series:
            if name in s.scores:
                values = s.scores[name]
            else:
                values = s.simple if name.startswith("simple") else s.relative
            points = [(float(to_wp(p)), v) for p, v in zip(s.plws, values) if v is not None]
            if points:
                ax.plot(*zip(*points), "o-", markersize=3, label=s.name)
        ax.set_title(name, fontsize=8)
        _plw_axis(ax, plws)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=6)


def plot_fit(fit, path: Path, figure=None) -> None:
    """The paper's Figure 1 layout when `figure` (aggregate.Figure1) is given: a panel per
    benchmark, the simple and relative aggregates; then the fit: per-task scaled scores against
    w_p, the fitted curve (intercept + b1 w_p + b2 w_p^2) and the optimum."""
    plt = _pyplot()
    panels = 1 if figure is None else len(figure.tasks) + 3
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    if figure is not None:
        _figure1_panels(axes, figure, fit.data.plw.tolist() +
                        [p for s in figure.series for p in s.plws])
    ax = axes[panels - 1]
    data = fit.data
    wp = to_wp(data.plw)
    for task in sorted(set(data.task)):
        pick = np.array([t == task for t in data.task])
        ax.plot(wp[pick], data.score[pick], "o", alpha=0.7, label=task)
    xs = np.linspace(0, 1, 201)
    c = fit.coef
    ax.plot(xs, c["intercept"] + c["wp"] * xs + c["wp2"] * xs ** 2, "k-", label="fit")
    if fit.wp_opt is not None:
        ax.axvline(fit.wp_opt, color="red", ls="--", label=f"optimum PLW {fit.lam:.3g}")
    _plw_axis(ax, data.plw.tolist())
    ax.set_ylabel("min-max scaled score", fontsize=7)
    ax.set_title(f"fit: p = {fit.p_value:.3g}", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _generation_panels(axes, results) -> None:
    """Memorization (BLEU) and generation length (mean, median) against PLW, one point per run."""
    known = [r for r in results if r.plw is not None]
    bleu = [(r.plw, r.memorization) for r in known if r.memorization is not None]
    mean = [(r.plw, r.length_mean) for r in known if r.length_mean is not None]
    median = [(r.plw, r.length_median) for r in known if r.length_median is not None]
    for ax, series, title in ((axes[0], [(bleu, "corpus BLEU")], "memorization"),
                              (axes[1], [(mean, "mean"), (median, "median")],
                               "generation length (tokens)")):
        for points, label in series:
            if points:
                ax.plot([float(to_wp(p)) for p, _ in points], [v for _, v in points], "o-",
                        label=label)
        ax.set_title(title)
        _plw_axis(ax, [r.plw for r in known])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)


def plot_runs(run_dirs: list[Path], path: Path, results=None) -> None:
    """Training (and eval) loss, prompt loss and completion loss against step; one colour per PLW.
    With `results` (analyze's) holding memorization or lengths, a second row draws them against
    PLW."""
    plt = _pyplot()
    keys = [("loss", "training loss"), ("prompt_loss", "prompt loss"),
            ("completion_loss", "completion loss")]
    more = [r for r in results or [] if r.memorization_set or r.lengths_set]
    fig, grid = plt.subplots(2 if more else 1, 3, figsize=(13, 8 if more else 4), squeeze=False)
    axes = grid[0]
    if more:
        _generation_panels(grid[1], more)
        grid[1][2].set_visible(False)
    runs = sorted(run_dirs, key=lambda r: (run_plw(Path(r)) is None, run_plw(Path(r)) or 0.0))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(1, len(runs))))
    for colour, run in zip(colours, runs):
        log = read_log(Path(run))
        steps = step_records(log)
        plw = run_plw(Path(run))
        label = Path(run).name if plw is None else f"PLW {plw:g}"
        for ax, (key, _) in zip(axes, keys):
            points = [(r["step"], r[key]) for r in steps if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), color=colour, label=label)
        evals = [(r["step"], r["eval_loss"]) for r in log if r.get("eval_loss") is not None]
        if evals:
            axes[0].plot(*zip(*evals), "o--", color=colour, markersize=3)
    for ax, (_, title) in zip(axes, keys):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
