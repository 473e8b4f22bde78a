"""Independent reference code for the tests: paths, REFERENCE.md's strings and guide, and token
counts straight from `sentencepiece`. Written from REFERENCE.md, never taken from the library.

Test modules import from here (`from reference import ...`), not from a conftest: several folders
have their own conftest.py, and importing one by name would pick whichever pytest loaded last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
LLAMA_DIR = SHARED / "tokenizers" / "llama"
ALPACA_DATA = SHARED / "data" / "alpaca_data.json"
SAMPLE = REPO_ROOT / "data" / "sample.json"

# REFERENCE.md section 2, copied here on purpose: the tests must not take these from the library.
REF_SWAP_NO_INPUT = "Predict the prompt that generated the following AI output."
REF_SWAP_WITH_INPUT = (
    "Predict the prompt that generated the below AI output given the following context. Context: "
)


def reference_swap(record: dict) -> dict:
    """The swapped form of an Alpaca record, written from REFERENCE.md section 2."""
    instruction = REF_SWAP_WITH_INPUT + record["input"] if record["input"] else REF_SWAP_NO_INPUT
    return {"instruction": instruction, "input": record["output"], "output": record["instruction"]}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


class SPCounter:
    """Token counts straight from `sentencepiece` (not through alpaca_plw), cached per distinct text.

    No BOS/EOS, each text on its own: the definition in REFERENCE.md section 1.
    """

    def __init__(self, model_file: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.cache: dict[str, int] = {}

    def counts(self, texts: Sequence[str]) -> list[int]:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            ids = self.sp.encode(new, num_threads=2)
            self.cache.update(zip(new, map(len, ids)))
        return [self.cache[t] for t in texts]

    def count(self, text: str) -> int:
        return self.counts([text])[0]

    def record(self, record: dict) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of one Alpaca record."""
        inst, inp, out = self.counts([record["instruction"], record["input"], record["output"]])
        return inst + inp, out


# REFERENCE.md section 5, the guide table transcribed: (R_g, all, MC, gen).
REF_GUIDE = [
    (0.5, 0.155, 0.155, 0.292), (1.0, 0.155, 0.183, 0.321), (1.5, 0.183, 0.278, 0.385),
    (2.0, 0.239, 1.000, 0.679), (2.5, 1.000, 1.000, 1.000), (3.0, 1.000, 1.000, 1.000),
    (3.5, 1.000, 1.000, 0.000), (4.0, 1.000, 1.000, 0.000), (4.5, 0.000, 1.000, 0.000),
    (5.0, 0.000, 1.000, 0.000), (5.5, 1.000, 1.000, 0.000), (6.0, 1.000, 1.000, 0.000),
    (6.5, 1.000, 1.000, 1.000), (7.0, 1.000, 1.000, 1.000), (7.5, 1.000, 1.000, 1.000),
    (8.0, 1.000, 1.000, 0.654),
]


# The stars of that table: (all, MC, gen) marked "PLW barely matters".
REF_STARS = {0.5: (0, 0, 1), 1.0: (0, 0, 1), 1.5: (0, 0, 1), 2.0: (0, 1, 1), 8.0: (1, 1, 0),
             **{rg: (1, 1, 1) for rg in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5)}}
# README "Choosing a PLW": at R_g >= 2.5 every starred value is replaced by this one value.
REF_FLAT_PLW = 0.1


def reference_guide() -> list[tuple[float, float, float, float]]:
    """REF_GUIDE as `auto` uses it: starred cells of long-completion rows at REF_FLAT_PLW."""
    return [(row[0], *(REF_FLAT_PLW if row[0] >= 2.5 and star else value
                       for value, star in zip(row[1:], REF_STARS[row[0]])))
            for row in REF_GUIDE]


def reference_plw(rg: float) -> tuple[float, float, float]:
    """Linear interpolation in the guide as `auto` uses it, end rows held beyond it, rounded to 3
    decimals."""
    import numpy as np

    guide = reference_guide()
    xs = [row[0] for row in guide]
    at = min(max(rg, xs[0]), xs[-1])
    return tuple(round(float(np.interp(at, xs, [row[c] for row in guide])), 3)
                 for c in (1, 2, 3))


def expected_stats(records: list[dict], counter: SPCounter) -> dict:
    """The `stats --json` row of `records` (less `dataset`, `tokenizer`, the PLW note), computed
    here from sentencepiece counts and the definitions in REFERENCE.md."""
    import numpy as np

    inst = np.array(counter.counts([r["instruction"] for r in records]), dtype=np.int64)
    inp = np.array(counter.counts([r["input"] for r in records]), dtype=np.int64)
    out = np.array(counter.counts([r["output"] for r in records]), dtype=np.int64)
    return stats_from_counts(inst, inp, out)


def stats_from_counts(inst, inp, out) -> dict:
    import numpy as np

    prompt = inst + inp

    def ms(a):
        a = np.asarray(a, dtype=np.float64)
        return {"mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=0)), 4)}

    p_sum, c_sum = int(prompt.sum()), int(out.sum())
    ratios = out[prompt > 0] / prompt[prompt > 0]
    rg = c_sum / p_sum
    plw_all, plw_mc, plw_gen = reference_plw(rg)
    return {
        "records": len(inst), "instruction": ms(inst), "input": ms(inp), "completion": ms(out),
        "prompt": ms(prompt), "total_tokens": p_sum + c_sum, "prompt_tokens": p_sum,
        "completion_tokens": c_sum, "rg": round(rg, 6),
        "rg_mean_of_ratios": round(float(ratios.mean()), 6),
        "rg_median": round(float(np.median(ratios)), 6),
        "recommended_plw": {"all": plw_all, "mc": plw_mc, "gen": plw_gen},
    }


def comparable(row: dict) -> dict:
    """A library stats row with the fields `expected_stats` does not compute removed."""
    row = {k: v for k, v in row.items() if k not in ("dataset", "tokenizer")}
    row["recommended_plw"] = {k: v for k, v in row["recommended_plw"].items() if k != "note"}
    return row
