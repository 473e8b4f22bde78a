"""`log.jsonl`: one JSON object per optimizer step, appended by rank 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

LOG_FILE = "log.jsonl"


def append_log(path: Path, record: dict) -> None:
    """One line of strict JSON: a non-finite number is written as null (never NaN)."""
    from alpaca_plw.data.publish import writing

    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in record.items()}
    with writing(path), path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(finite, sort_keys=True, allow_nan=False) + "\n")


def trim_log(path: Path, last_step: int) -> None:
    """On resume, keep the log lines of the steps the checkpoint contains."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in lines))
