"""Figures of the study: the fit (scaled scores against w_p) and the runs' loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alpaca_plw.data.output import atomic_write
from alpaca_plw.extras import require
from alpaca_plw.study.fit import to_wp
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


def plot_fit(fit, path: Path) -> None:
    """Per-task scaled scores against w_p, the fitted curve (intercept + b1 w_p + b2 w_p^2) and the
    optimum."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    data = fit.data
    wp = to_wp(data.plw)
    for task in sorted(set(data.task)):
        pick = np.array([t == task for t in data.task])
        ax.plot(wp[pick], data.score[pick], "o", alpha=0.7, label=task)
    grid = np.linspace(0, 1, 201)
    c = fit.coef
    ax.plot(grid, c["intercept"] + c["wp"] * grid + c["wp2"] * grid ** 2, "k-", label="fit")
    if fit.wp_opt is not None:
        ax.axvline(fit.wp_opt, color="red", ls="--", label=f"optimum PLW {fit.lam:.3g}")
    ax.set_xlabel("w_p = PLW^0.30103")
    ax.set_ylabel("min-max scaled score")
    ax.set_title(f"p = {fit.p_value:.3g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_runs(run_dirs: list[Path], path: Path) -> None:
    """Training (and eval) loss, prompt loss and completion loss against step; one colour per PLW."""
    plt = _pyplot()
    keys = [("loss", "training loss"), ("prompt_loss", "prompt loss"),
            ("completion_loss", "completion loss")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
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
