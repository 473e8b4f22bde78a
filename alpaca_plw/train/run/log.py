"""`log.jsonl`: one JSON object per optimizer step, appended by rank 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

LOG_FILE = "log.jsonl"


def append_log(path: Path, record: dict) -> None:
    """One line of strict JSON: a non-finite number is written as null (never NaN)."""
    from alpaca_plw.data.outputs.publish import writing

    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in record.items()}
    with writing(path), path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(finite, sort_keys=True, allow_nan=False) + "\n")


def trim_log(path: Path, last_step: int) -> None:
    """On resume, keep the log lines of the steps the checkpoint contains."""
    from alpaca_plw.data.outputs.publish import writing
    from alpaca_plw.errors import InputError

    if not path.exists():
        return
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
            keep = step <= last_step
        except (ValueError, RecursionError, KeyError, TypeError):
            raise InputError(f"{path}, line {number}: not a log record with a step "
                             f"({line[:60]!r}); the run cannot be resumed from it") from None
        if keep:
            kept.append(line)
    with writing(path):
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
