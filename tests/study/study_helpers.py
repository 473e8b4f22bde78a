"""Helpers for the study tests: a tiny random LLaMA saved with the shared tokenizer, small data."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import save_tiny_llama  # noqa: F401  (re-exported to the study tests)

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
SAMPLE = REPO / "data" / "sample.json"
TASKS = REPO / "tests" / "fixtures" / "lm_eval_tasks"




def small_source(directory: Path, count: int = 8) -> Path:
    """The first `count` sample records whose prompt and output are short (CPU-fast steps)."""
    records = [r for r in json.loads(SAMPLE.read_text(encoding="utf-8"))
               if len(r["instruction"]) + len(r["input"]) < 120 and len(r["output"]) < 200][:count]
    path = directory / "small.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_log(run_dir: Path, losses: list[float]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": i + 1, "loss": v, "prompt_loss": v + 1, "completion_loss": v - 1})
             for i, v in enumerate(losses)]
    (run_dir / "log.jsonl").write_text("\n".join(lines) + "\n")
