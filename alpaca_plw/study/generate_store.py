"""Where `generate` writes, and how a rerun continues: `RUN/generations/NAME.jsonl` (one line per
prompt, appended batch by batch, flushed and fsync'd), `NAME.json` beside it (the settings, written
atomically; `complete` once every prompt has its line) and, on request, `NAME.alpaca_eval.json`.

A rerun with the same settings keeps every complete line (a torn last line, from a kill in the
middle of a write, is cut off) and continues after it. Different settings are refused unless
`force`, which starts over; files that `generate` did not write (no `NAME.json` of ours beside
them) are never replaced, `force` or not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alpaca_plw.errors import ConfigError, InputError, OutputError

GEN_DIR = "generations"
TOOL = "alpaca-plw generate"
COMPARED = ("prompts.sha256", "prompts.records", "n", "seed", "sampling", "template")


def output_paths(run_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """(NAME.jsonl, NAME.json, NAME.alpaca_eval.json) in the run's `generations/`."""
    folder = Path(run_dir) / GEN_DIR
    return folder / f"{name}.jsonl", folder / f"{name}.json", folder / f"{name}.alpaca_eval.json"


def read_header(path: Path) -> dict | None:
    """`NAME.json` as `generate` wrote it; None when absent; an error when it is not ours."""
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise OutputError(f"{path}: exists but cannot be read as JSON ({type(exc).__name__}); "
                          "it is not generate's record: move it away") from None
    if not isinstance(body, dict) or body.get("tool") != TOOL:
        raise OutputError(f"{path}: not written by `{TOOL}` (no \"tool\": \"{TOOL}\"); it is "
                          "never replaced, --force or not: move it away or choose another --name")
    return body


def _get(body: dict, dotted: str):
    for key in dotted.split("."):
        body = body.get(key) if isinstance(body, dict) else None
    return body


def differences(old: dict, new: dict) -> list[str]:
    """The compared settings that differ, as `key: then -> now`."""
    out = []
    for key in COMPARED:
        a, b = _get(old, key), _get(new, key)
        if json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
            if isinstance(a, dict) and isinstance(b, dict):
                out += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                        for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            else:
                out.append(f"{key}: {a!r} -> {b!r}")
    return out


def complete_lines(path: Path, indices: list[int]) -> int:
    """How many lines of `path` are complete and continue `indices` in order; a torn last line
    (no newline) is cut off the file. A complete line that is not what generate wrote is an
    error."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    lines = data[:keep].splitlines()
    if len(lines) > len(indices):
        raise InputError(f"{path}: {len(lines)} lines, more than the {len(indices)} prompts of "
                         "these settings; pass --force to start over")
    for k, line in enumerate(lines):
        try:
            index = json.loads(line)["index"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise InputError(f"{path}: line {k + 1} is not a generation line; pass --force to "
                             "start over") from None
        if index != indices[k]:
            raise InputError(f"{path}: line {k + 1} holds prompt {index}, where these settings "
                             f"put prompt {indices[k]}; pass --force to start over")
    if keep < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            os.fsync(handle.fileno())
    return len(lines)


def read_lines(path: Path) -> list[dict]:
    # split at "\n" only: str.splitlines() also ends a line at U+2028, U+2029 and U+0085, which
    # json.dumps(ensure_ascii=False) leaves raw inside a string
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def header_text(header: dict) -> str:
    return json.dumps(header, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def alpaca_eval_text(rows: list[dict], generator: str) -> str:
    """AlpacaEval's model outputs: a JSON list of {instruction, output, generator}. A record with an
    input is asked as `instruction + "\\n\\n" + input` (AlpacaEval's prompts have no input)."""
    items = [{"instruction": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""),
              "output": r["output"], "generator": generator} for r in rows]
    return json.dumps(items, indent=2, ensure_ascii=False) + "\n"


def check_name(name: str) -> str:
    if not name.strip() or name.startswith(".") or "/" in name or "\\" in name or \
            any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError(f"--name {name!r}: expected a plain file name (no '/', no control "
                          "characters, not blank, not starting with '.')")
    return name
