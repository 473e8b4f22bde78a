"""The checkpoint folders of a run folder: `checkpoint-<step>` names, which are complete, the
latest, and their rotation under `--save-total-limit` (with what a killed rotation left)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from alpaca_plw.train.checkpoints.legacy import LEGACY_FILE
from alpaca_plw.train.checkpoints.state import INDEX_FILE

_NAME = re.compile(r"^checkpoint-(\d+)$")


_REMOVING = re.compile(r"^\.checkpoint-\d+\.removing\.[A-Za-z0-9_]+$")


def finish_removals(output_dir: Path) -> list[str]:
    """Delete what a killed checkpoint rotation left: `.checkpoint-N.removing.*` folders (the name
    rotation generates) holding nothing but `checkpoint-*` folders. Returns the names removed."""
    import shutil

    removed = []
    try:
        found = sorted(p for p in Path(output_dir).iterdir() if _REMOVING.match(p.name))
    except OSError:
        return removed
    for doomed in found:
        if doomed.is_symlink() or not doomed.is_dir():
            continue
        if all(_NAME.match(p.name) and p.is_dir() and not p.is_symlink() for p in doomed.iterdir()):
            shutil.rmtree(doomed)
            removed.append(doomed.name)
    return removed


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    if not output_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := _NAME.match(p.name)) and is_complete(p)]
    return max(found)[1] if found else None


def is_complete(path: Path) -> bool:
    """A checkpoint folder with its index (or, written before issue 24, its `trainer_state.pt`)."""
    return (path / INDEX_FILE).is_file() or (path / LEGACY_FILE).is_file()


def is_legacy(path: Path) -> bool:
    """A checkpoint written before issue 24: `from_pretrained` files and `trainer_state.pt`."""
    return not (path / INDEX_FILE).is_file() and (path / LEGACY_FILE).is_file()


def rotate_checkpoints(output_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` complete `checkpoint-<step>` folders; returns the removed.
    Each is renamed to a hidden name first, so no half-deleted checkpoint is ever visible; what a
    killed rotation left under such a name is deleted first."""
    finish_removals(output_dir)
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir()
                   if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and is_complete(p))
    removed = []
    for _, path in found[: max(0, len(found) - keep)]:
        doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.removing.", dir=output_dir))
        os.replace(path, doomed / path.name)
        shutil.rmtree(doomed)
        removed.append(path)
    return removed
