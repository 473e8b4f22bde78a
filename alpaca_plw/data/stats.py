"""Dataset length statistics in the paper's layout, with R_g and the guide's recommended PLW."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpaca_plw.data.guide import Recommendation, recommend
from alpaca_plw.data.lengths import FieldLengths

STATS_KEYS = (
    "dataset", "records", "instruction", "input", "completion", "prompt", "total_tokens",
    "prompt_tokens", "completion_tokens", "rg", "rg_mean_of_ratios", "rg_median",
    "recommended_plw", "tokenizer",
)


def _mean_std(values: np.ndarray) -> dict[str, float]:
    """Mean and population standard deviation (ddof=0), rounded to 4 decimals."""
    values = values.astype(np.float64)
    return {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)}


@dataclass(frozen=True)
class DatasetStats:
    """One dataset's row: what `stats --json` prints and what manifests record."""

    dataset: str
    records: int
    instruction: dict[str, float]
    input: dict[str, float]
    completion: dict[str, float]
    prompt: dict[str, float]
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    rg: float
    rg_mean_of_ratios: float
    rg_median: float
    recommended_plw: Recommendation
    tokenizer: dict[str, object]

    def to_json(self) -> dict[str, object]:
        out = {key: getattr(self, key) for key in STATS_KEYS}
        out["recommended_plw"] = self.recommended_plw.to_json()
        return out


def compute_stats(name: str, lengths: FieldLengths, tokenizer: dict[str, object]) -> DatasetStats:
    """Statistics of one dataset from its field lengths.

    R_g = sum(completion tokens) / sum(prompt tokens) (the paper's definition). The mean and median
    of per-record ratios are reported under their own names; records whose prompt has no token
    are left out of those two (they have no ratio).
    """
    prompt_tokens = int(lengths.prompt.sum(dtype=np.int64))
    completion_tokens = int(lengths.completion.sum(dtype=np.int64))
    rg = completion_tokens / prompt_tokens if prompt_tokens else float("inf")
    ratios = lengths.ratios()
    ratios = ratios[np.isfinite(ratios)]
    return DatasetStats(
        dataset=name,
        records=int(lengths.instruction.size),
        instruction=_mean_std(lengths.instruction),
        input=_mean_std(lengths.input),
        completion=_mean_std(lengths.completion),
        prompt=_mean_std(lengths.prompt),
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        rg=round(rg, 6),
        rg_mean_of_ratios=round(float(ratios.mean()), 6) if ratios.size else 0.0,
        rg_median=round(float(np.median(ratios)), 6) if ratios.size else 0.0,
        recommended_plw=recommend(rg),
        tokenizer=tokenizer,
    )
