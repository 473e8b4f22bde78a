"""The index of a checkpoint's training state (`trainer_state.json`, see `state.py`), read and
checked before resume relies on it: its format and version, the step its folder names, and for
every tensor a global shape, a dtype and rows that match the world size it was written by."""

from __future__ import annotations

import json
from pathlib import Path

from alpaca_plw.train.checkpoints.shards import NAMES, rows
from alpaca_plw.train.checkpoints.state import FORMAT, INDEX_FILE, VERSION


def read_index(path: Path) -> dict:
    """`path/trainer_state.json`, checked (the JSON fields resume relies on); an InputError names
    what is wrong."""
    from alpaca_plw.errors import InputError

    file = path / INDEX_FILE
    hint = f"remove {path.name} to resume from an earlier checkpoint"
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{file}: cannot read the checkpoint ({type(exc).__name__}: "
                         f"{first_line(exc)}); {hint}") from None
    problem = _index_problem(index)
    if not problem and path.name.startswith("checkpoint-") and \
            path.name.removeprefix("checkpoint-") != str(index["step"]):
        problem = f"its step {index['step']} is not the step its folder names, " \
                  f"{path.name.removeprefix('checkpoint-')}"
    if problem:
        raise InputError(f"{file}: not a trainer state written by alpaca-plw ({problem}); {hint}")
    return index


def _index_problem(index) -> str | None:
    if not isinstance(index, dict):
        return f"expected a JSON object, found {type(index).__name__}"
    if index.get("format") != FORMAT:
        return f"its format is {index.get('format')!r:.60}, not {FORMAT!r}"
    if index.get("version") != VERSION:
        return f"version {index.get('version')!r:.20}: written by another alpaca-plw version " \
               f"(this one reads version {VERSION})"
    missing = [k for k in ("step", "world_size", "sharded", "files", "tensors", "param_groups",
                           "scheduler") if k not in index]
    if missing:
        return "missing " + ", ".join(repr(k) for k in missing)
    step = index["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' must be an integer >= 0, found {step!r:.40}"
    files = index["files"]
    if not isinstance(files, list) or not files or not all(
            isinstance(f, str) and "/" not in f and "\\" not in f and not f.startswith(".")
            for f in files):
        return "'files' must name the state files in this folder"
    if not isinstance(index["tensors"], dict) or not isinstance(index["param_groups"], list) \
            or not isinstance(index["scheduler"], dict):
        return "'tensors', 'param_groups' or 'scheduler' has the wrong type"
    world, split = index["world_size"], index["sharded"]
    if isinstance(world, bool) or not isinstance(world, int) or world < 1 \
            or not isinstance(split, bool):
        return "'world_size' must be an integer >= 1 and 'sharded' true or false"
    if len(files) != (world if split else 1):
        return f"'files' lists {len(files)} files for {world if split else 1} writers"
    for key, entry in index["tensors"].items():
        problem = _entry_problem(entry, world if split else None)
        if problem:
            return f"tensor {key!r:.80}: {problem}"
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list)
               and all(isinstance(n, str) for n in g["params"]) for g in index["param_groups"]):
        return "'param_groups' must be objects that list their parameters' names"
    return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry, world: int | None) -> str | None:
    """What is wrong with one tensor's index entry (None: fine); `world` None: not sharded, else
    the rows must be FSDP's split of dim 0 over `world` processes."""
    if not isinstance(entry, dict):
        return f"expected an object, found {type(entry).__name__}"
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        return "'shape' must be a list of sizes"
    if entry.get("dtype") not in NAMES:
        return f"'dtype' {entry.get('dtype')!r:.20} is not one of {', '.join(NAMES)}"
    spans = entry.get("rows")
    if spans is None:
        return None
    if world is None:
        return "'rows' given in an unsharded checkpoint"
    if not shape or spans != [list(rows(shape[0], world, r)) for r in range(world)]:
        return f"'rows' {spans!r:.60} are not dim 0 of {shape} split over {world} processes"
    return None


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else "corrupt"
