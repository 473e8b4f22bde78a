"""Path safety: outputs never touch inputs, `--force` replaces only alpaca-plw's own folders, outputs
are claimed exclusively and published atomically, and leftovers of killed runs are cleaned up.
The checks that write nothing (steps 1 and 2 below) are `checks.py`; the claim is here.

Every writing command goes through `claim(...)`:

1. each output is compared with each input (source files and folders, `--model`, the weights folder,
   `--tokenizer`), by resolved path and by device/inode, in both directions (equal, inside,
   containing): an overlap is an `OutputError` (exit 3), `--force` or not;
2. an existing output is refused without `force`; a folder output is replaced with `force` only
   when it holds the `.alpaca-plw` marker that alpaca-plw writes into its weights and run folders;
3. a lock (`flock` on `.NAME.alpaca-plw.lock` beside the output, released by the kernel if the
   process dies) makes the claim exclusive: of two runs racing for one output, one stops here;
4. temporary and backup entries a killed run left beside the output (`.NAME.plw-tmp-*`,
   `.NAME.plw-old-*`) are removed, or restored when they hold the only copy, and reported; only
   names that run wrote to the output's lock file (its journal) are touched, so a file that merely
   looks like a leftover is left alone.

Publishing then writes into a temporary file or folder beside the target and renames it into
place: `renameat2(RENAME_EXCHANGE)` swaps a folder with its predecessor in one step, so either the
old or the new output is visible under its name at every instant. The library never prints: the
one-line recovery report goes to the callback set with `set_reporter`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_plw.data.outputs.checks import check_replaceable, precheck
from alpaca_plw.data.outputs.publish import (LOCK_SUFFIX, OLD_TAG, TMP_TAG, hold_journal, lock_path,
                                             publish_dir, publish_files, writing)
from alpaca_plw.errors import OutputError

__all__ = ["LOCK_SUFFIX", "claim", "recover", "report", "set_reporter"]


_reporter: Callable[[str], None] | None = None


def set_reporter(callback: Callable[[str], None] | None) -> None:
    """Where one-line notices (recovered leftovers) go; the CLI prints them on stderr."""
    global _reporter
    _reporter = callback


def report(message: str) -> None:
    if _reporter is not None:
        _reporter(message)


def _acquire(path: Path) -> tuple[int, Path]:
    import fcntl

    lock = lock_path(path)
    while True:
        with writing(lock, "create a lock file beside"):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(f"{path}: another alpaca-plw run is writing it (lock {lock}); "
                              "wait for it to finish") from None
        try:  # the holder before us may have removed the file after we opened it: retry
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                return fd, lock
        except FileNotFoundError:
            pass
        os.close(fd)


def _release(fd: int, lock: Path) -> None:
    try:
        lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _take_journal(fd: int) -> set[str]:
    """The names a previous holder of this lock generated (a run killed before it released it);
    the journal is emptied for this run's own names."""
    size = os.fstat(fd).st_size
    text = os.pread(fd, min(size, 1 << 20), 0).decode("utf-8", "surrogateescape") if size else ""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return {line for line in text.split("\n") if line}


def _leftovers(path: Path, journaled: set[str]) -> list[Path]:
    prefixes = (f".{path.name}{TMP_TAG}", f".{path.name}{OLD_TAG}")
    try:
        return sorted(p for p in path.parent.iterdir()
                      if p.name.startswith(prefixes) and p.name in journaled)
    except OSError:
        return []


def recover(path: Path, journaled: set[str] = frozenset()) -> None:
    """Under the lock: of the entries beside `path` that a killed run journaled (`journaled`),
    restore a backup that holds the only copy of `path`, remove the rest, and report what was
    done in one line. Anything else is left alone."""
    found = _leftovers(path, set(journaled))
    if not found:
        return
    restored = None
    if not os.path.lexists(path):
        backups = [p for p in found if OLD_TAG in p.name]
        if backups:
            restored = backups[-1]
            os.replace(restored, path)
            found.remove(restored)
    for item in found:
        _remove(item)
    names = ", ".join(p.name for p in found)
    what = f"removed {names}" if found else ""
    if restored is not None:
        what = f"restored {path.name} from {restored.name}" + (f" and {what}" if what else "")
    report(f"note: {path}: cleaned up after an interrupted run: {what}")


def _remove(item: Path) -> None:
    if item.is_dir() and not item.is_symlink():
        shutil.rmtree(item, ignore_errors=True)
    else:
        item.unlink(missing_ok=True)


@dataclass
class Claim:
    """Outputs held exclusively until the `claim` block ends."""

    outputs: list[Path]
    force: bool
    kind: str | None
    created: list[Path] = field(default_factory=list)
    published: bool = False

    def publish_files(self, items: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
        publish_files(items, replace=self.force)
        self.published = True

    def publish_dir(self, target: Path, write: Callable[[Path], None]) -> None:
        publish_dir(target, write, self.kind, replace=self.force)
        self.published = True


@contextmanager
def claim(outputs: Sequence[Path], inputs: Sequence[tuple[str, object]], force: bool,
          kind: str | None = None, exists_ok: bool = False) -> Iterator[Claim]:
    """Check, lock and clean the outputs (see the module doc); yields a `Claim` to publish with.

    `kind` is the marker kind for folder outputs (None: file outputs). `exists_ok` skips the
    existence rule (the caller applies its own, e.g. `train --resume`)."""
    outputs = precheck(outputs, inputs, force, kind, exists_ok)
    held: list[tuple[int, Path, Path]] = []
    journals: dict[Path, set[str]] = {}
    result = Claim(outputs, force, kind)
    try:
        for out in sorted(set(outputs)):
            _make_parents(out, result.created)
            fd, lock = _acquire(out)
            held.append((fd, lock, out))
            with writing(lock, "read and reset the journal in"):
                journals[out] = _take_journal(fd)
            hold_journal(out, fd)
        for out in outputs:
            recover(out, journals.get(out, set()))
            if not exists_ok:
                check_replaceable(out, force, kind)
        yield result
    finally:
        for fd, lock, out in reversed(held):
            hold_journal(out, None)
            _release(fd, lock)
        if not result.published:
            for folder in reversed(result.created):
                try:
                    folder.rmdir()
                except OSError:
                    break


def _make_parents(path: Path, created: list[Path]) -> None:
    missing = []
    for parent in path.parents:
        if os.path.lexists(parent):
            break
        missing.append(parent)
    for parent in reversed(missing):
        with writing(parent, "create"):
            parent.mkdir()
        created.append(parent)
