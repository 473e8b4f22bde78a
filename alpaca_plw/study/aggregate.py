"""The paper's Figure 1: benchmark scores against w_p per dataset, and two aggregates of them.

A *series* is one label of the scores' `model` column (all scores form one series when they carry
no label). To draw one line per dataset, as the paper does, label each dataset's scores (`eval
--model-name`, or the CSV's `model` column); scores of one series at one PLW (several base models
under one label, or seeds) are averaged first, and each average counts as one point.

For each series and PLW value:

- the **simple aggregate** is the mean over benchmarks of the raw scores;
- the **relative aggregate** is the mean over benchmarks of the scores min-max normalised per
  benchmark across that series' PLW values (REFERENCE.md: "min-max scaled per benchmark within one
  dataset's runs"): each benchmark spans [0, 1] over the series' runs, never over other series'
  runs nor over all benchmarks at once. A benchmark whose scores are equal at every PLW has no
  range; it is left out of the relative aggregate and named in the notes.

A PLW value where a series lacks one of its benchmarks gets no aggregate (null) and a note.
Lower-is-better metrics arrive negated (`scores.read_scores`), so every score reads
higher-is-better in both aggregates.

Scores (a, b: benchmarks; one series) at PLW 0, 0.1, 1: a = 0.2, 0.6, 0.4 and b = 0.5, 0.5, 0.9.
Simple: 0.35, 0.55, 0.65. Relative: a -> 0, 1, 0.5 and b -> 0, 0, 1, so 0, 0.5, 0.75.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from alpaca_plw.study.fit import Scores, to_wp

ALL = "all scores"  # the one series of scores without a model label


@dataclass
class Series:
    name: str
    plws: list[float]
    scores: dict[str, list[float | None]]  # benchmark -> score at each PLW (None: not scored)
    simple: list[float | None]
    relative: list[float | None]
    relative_tasks: list[str]  # the benchmarks the relative aggregate averages

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "plw": self.plws, "wp": [float(w) for w in to_wp(self.plws)],
                "scores": self.scores, "simple": self.simple, "relative": self.relative,
                "relative_tasks": self.relative_tasks}


@dataclass
class Figure1:
    tasks: list[str]
    series: list[Series]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"series_column": "model", "tasks": self.tasks,
                "series": [s.to_json() for s in self.series], "notes": self.notes}


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def _series(name: str, cells: dict[tuple[str, float], list[float]], notes: list[str]) -> Series:
    """One series from its (task, plw) -> scores cells."""
    tasks = sorted({t for t, _ in cells})
    plws = sorted({p for _, p in cells})
    scores = {t: [_mean(cells[t, p]) if (t, p) in cells else None for p in plws] for t in tasks}
    if any(len(v) > 1 for v in cells.values()):
        notes.append(f"{name}: several scores at one PLW for a benchmark are averaged")
    ranged = []
    for t in tasks:
        present = [v for v in scores[t] if v is not None]
        if max(present) == min(present):
            notes.append(f"{name}: {t} scores {present[0]:g} at every PLW; left out of the "
                         "relative aggregate (no range to normalise)")
        else:
            ranged.append(t)
    normalised = {}
    for t in ranged:
        present = [v for v in scores[t] if v is not None]
        low, high = min(present), max(present)
        normalised[t] = [None if v is None else (v - low) / (high - low) for v in scores[t]]
    simple, relative = [], []
    for i, plw in enumerate(plws):
        lacking = [t for t in tasks if scores[t][i] is None]
        if lacking:
            notes.append(f"{name}: PLW {plw:g} has no score for {', '.join(lacking)}; no "
                         "aggregate there")
        simple.append(None if lacking else _mean([scores[t][i] for t in tasks]))
        relative.append(None if lacking or not ranged else
                        _mean([normalised[t][i] for t in ranged]))
    return Series(name, plws, scores, simple, relative, ranged)


def figure1(scores: Scores) -> Figure1:
    """Per series (model label): each benchmark's score at each PLW, and the simple and relative
    aggregates (see the module docstring)."""
    labels = scores.model if scores.model is not None else [ALL] * len(scores.task)
    cells: dict[str, dict[tuple[str, float], list[float]]] = defaultdict(lambda: defaultdict(list))
    for label, task, plw, value in zip(labels, scores.task, scores.plw.tolist(),
                                       scores.score.tolist()):
        cells[label][task, float(plw)].append(float(value))
    notes: list[str] = []
    series = [_series(name, cells[name], notes) for name in sorted(cells)]
    if scores.negated:
        notes.append(f"lower is better for {', '.join(scores.negated)}: negated in both aggregates")
    return Figure1(sorted(set(scores.task)), series, notes)


__all__ = ["ALL", "Figure1", "Series", "figure1"]
