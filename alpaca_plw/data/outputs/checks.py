"""The checks of an output that write nothing (`safety.claim` runs them first; `precheck` runs them
alone): an output never overlaps an input (by resolved path and by device/inode, in both
directions), it can be what is written (a file or a folder), and an existing one is replaced only
with `force` and, for a folder, only when it holds alpaca-plw's `.alpaca-plw` marker."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.outputs.publish import MARKER
from alpaca_plw.errors import OutputError, OutputExistsError


@dataclass(frozen=True)
class _Node:
    path: Path  # resolved
    dev: int
    ino: int
    is_dir: bool


def _node(path: Path) -> _Node | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return _Node(Path(os.path.realpath(path)), st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))


def _same(a: _Node, b: _Node) -> bool:
    return (a.dev, a.ino) == (b.dev, b.ino)


def _ancestors(path: Path) -> list[_Node]:
    """The existing folders above `path` (resolved), nearest first."""
    found = []
    for parent in Path(os.path.realpath(path)).parents:
        node = _node(parent)
        if node is not None:
            found.append(node)
    return found


def check_overlap(outputs: Sequence[Path], inputs: Sequence[tuple[str, object]]) -> None:
    """Refuse an output that is, lies inside, or contains an input (symlinks and hard links
    resolved). `inputs` are (label, path or hub id or None); names that are not local paths are
    skipped."""
    nodes = []
    for label, value in inputs:
        if value is None:
            continue
        node = _node(Path(str(value)).expanduser())
        if node is not None:
            nodes.append((label, value, node))
    for out in outputs:
        out_node = _node(out)
        out_real = Path(os.path.realpath(out))
        out_above = _ancestors(out)
        for label, value, node in nodes:
            how = None
            if out_real == node.path or (out_node is not None and _same(out_node, node)):
                how = "is"
            elif node.is_dir and (node.path in out_real.parents or any(_same(a, node) for a in out_above)):
                how = "is inside"
            elif out_real in node.path.parents or (
                    out_node is not None and out_node.is_dir
                    and any(_same(a, out_node) for a in _ancestors(node.path))):
                how = "contains"
            elif out_node is not None and out_node.is_dir and not node.is_dir \
                    and _holds_inode(out, node):
                how = "holds a hard link to"
            if how:
                raise OutputError(f"{out}: {how} the {label} {value}; inputs are never "
                                  "overwritten, with or without --force; choose another output")


def _holds_inode(folder: Path, node: _Node) -> bool:
    """True when a file below `folder` is a hard link to `node` (walked only for marked folders,
    which are small and ours)."""
    if not (folder / MARKER).is_file():
        return False
    for root, _, files in os.walk(folder):
        for name in files:
            other = _node(Path(root) / name)
            if other is not None and _same(other, node):
                return True
    return False


def marker_kind(folder: Path) -> str | None:
    """The kind recorded in `folder/.alpaca-plw` ("weights", "run"), or None."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def check_shape(path: Path, folder: bool) -> None:
    """Refuse an output path that cannot be what we write (a file where a folder goes, a folder or
    device where a file goes, a file among its parents)."""
    if os.path.lexists(path):
        st = os.stat(path) if os.path.exists(path) else os.lstat(path)
        if folder and not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: exists and is not a directory")
        if not folder and stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{path}: is a directory; give a file name")
        if not folder and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise OutputError(f"{path}: is not a regular file (a device, FIFO or socket); "
                              "give a file name")
    for parent in Path(path).parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot create it, {parent} is not a directory")
            break


def check_replaceable(path: Path, force: bool, kind: str | None) -> None:
    """An existing output: refused without `force`; a folder also needs alpaca-plw's marker."""
    if not os.path.lexists(path):
        return
    if not force:
        raise OutputExistsError(f"{path}: already exists; pass --force to overwrite it")
    if kind is not None and marker_kind(path) != kind:
        raise OutputError(
            f"{path}: exists and was not written by alpaca-plw (no {MARKER} marker of a {kind} "
            "folder); --force replaces only alpaca-plw's own outputs: remove it yourself or "
            "choose another output")


def is_regular_or_dir(path: Path) -> str | None:
    """None when `path` is a regular file or folder (following symlinks), else what it is."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def precheck(outputs: Sequence[Path], inputs: Sequence[tuple[str, object]], force: bool,
             kind: str | None = None, exists_ok: bool = False) -> list[Path]:
    """The checks of `claim` that write nothing: overlap, shape and (unless `exists_ok`) the
    existence rule. Returns `outputs` as paths."""
    outputs = [Path(p) for p in outputs]
    check_overlap(outputs, inputs)
    for out in outputs:
        check_shape(out, kind is not None)
        if not exists_ok:
            check_replaceable(out, force, kind)
    return outputs
