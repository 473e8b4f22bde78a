"""Publishing outputs atomically: write beside the target, flush, then rename into place.

A folder is swapped with its predecessor in one step (`renameat2(RENAME_EXCHANGE)`), so either the
old or the new output is visible under its name at every instant; where the system lacks it, two
renames are used and the next run's `safety.recover` completes an interrupted swap. Temporary and
backup entries are named `.NAME.plw-tmp-*` and `.NAME.plw-old-*`; while an output is claimed, each
such name is written to its lock file (the journal) before the entry is created, so that recovery
touches only names a killed run of ours generated, never a file that merely looks like one.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alpaca_plw.errors import OutputError, OutputExistsError

MARKER = ".alpaca-plw"
LOCK_SUFFIX = ".alpaca-plw.lock"
TMP_TAG = ".plw-tmp-"
OLD_TAG = ".plw-old-"
KILL_ENV = "ALPACA_PLW_TEST_KILL_AT"  # test hook: SIGKILL this process at the named point
NO_EXCHANGE_ENV = "ALPACA_PLW_TEST_NO_RENAMEAT2"  # test hook: use the two-rename fallback


_JOURNALS: dict[str, int] = {}  # lock file -> its descriptor, for the outputs this process claims


def lock_path(path: Path) -> Path:
    """The lock file (and journal) of output `path`: `.NAME.alpaca-plw.lock` beside it."""
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


def hold_journal(path: Path, fd: int | None) -> None:
    """Register (or, with None, forget) the open lock file of output `path`."""
    if fd is None:
        _JOURNALS.pop(str(lock_path(path)), None)
    else:
        _JOURNALS[str(lock_path(path))] = fd


def _new_name(target: Path, tag: str) -> Path:
    """A fresh `.NAME<tag>*` beside `target`, written to target's journal (when claimed) before
    it exists, so a kill never leaves an entry recovery would not recognise as ours."""
    import secrets

    name = target.parent / f".{target.name}{tag}{os.getpid()}-{secrets.token_hex(4)}"
    fd = _JOURNALS.get(str(lock_path(target)))
    if fd is not None:
        os.write(fd, (name.name + "\n").encode("utf-8", "surrogateescape"))
        os.fsync(fd)
    return name


def kill_point(name: str) -> None:
    """Test hook: die here, as a power cut would, when `ALPACA_PLW_TEST_KILL_AT` names this point."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


@contextmanager
def writing(path: Path, what: str = "write") -> Iterator[None]:
    """Turn an `OSError` while writing `path` into an `OutputError` naming it and the reason."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot {what} it: {reason(exc)}") from None


def write_marker(folder: Path, kind: str) -> None:
    (folder / MARKER).write_text(json.dumps({"kind": kind, "tool": "alpaca-plw"}, sort_keys=True)
                                 + "\n", encoding="utf-8")


# --- publishing -------------------------------------------------------------------------------

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """`renameat2(src, dst, flags)`; False when the system or filesystem does not support it."""
    if os.environ.get(NO_EXCHANGE_ENV):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    if call(-100, os.fsencode(src), -100, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _sync(path: Path) -> None:
    """Flush a written file (or every file in a folder) to disk before it is renamed into place."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _place_new(tmp: Path, target: Path, replace: bool) -> None:
    """Rename `tmp` to `target`: over it when `replace`, else only if `target` does not exist."""
    if replace:
        os.replace(tmp, target)
        return
    if _renameat2(tmp, target, _RENAME_NOREPLACE):
        return
    if tmp.is_dir():
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", str(target))
        os.rename(tmp, target)
    else:
        os.link(tmp, target)
        tmp.unlink()


def publish_files(items: Sequence[tuple[Path, Callable[[Path], None]]], replace: bool = True) -> None:
    """Write every item to a temporary file beside it; rename them into place only when all
    succeeded. Without `replace`, an item that appeared meanwhile is refused (exit 3)."""
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for path, write in items:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                name = _new_name(path, TMP_TAG)
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                temps.append(name)
                write(temps[-1])
                os.chmod(temps[-1], 0o644)
                _sync(temps[-1])
        kill_point("publish")
        for tmp, (path, _) in zip(temps, items):
            try:
                with writing(path):
                    _place_new(tmp, path, replace)
            except FileExistsError:
                raise OutputExistsError(f"{path}: appeared while this run was writing it; "
                                        "nothing was replaced") from None
            placed.append(path)
            kill_point("between-files")
    except BaseException:
        if not replace:
            for path in placed:
                path.unlink(missing_ok=True)
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def publish_dir(target: Path, write: Callable[[Path], None], kind: str | None = None,
                replace: bool = True) -> None:
    """Call `write(tmp)` on a new folder beside `target` (adding the `kind` marker), then swap it
    into place in one step (`renameat2` exchange; elsewhere, two renames that the next run's
    `recover` completes). The previous folder is removed afterwards."""
    with writing(target, "create"):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_name(target, TMP_TAG)
        tmp.mkdir(mode=0o700)
    try:
        with writing(target):
            write(tmp)
            if kind is not None:
                write_marker(tmp, kind)
            os.chmod(tmp, 0o755)
            _sync(tmp)
        kill_point("publish")
        with writing(target):
            if replace and os.path.lexists(target):
                if _renameat2(tmp, target, _RENAME_EXCHANGE):
                    kill_point("swapped")  # tmp now holds the previous folder
                else:
                    old = _new_name(target, OLD_TAG)
                    os.replace(target, old)
                    kill_point("between-renames")
                    os.replace(tmp, target)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                try:
                    _place_new(tmp, target, replace)
                except FileExistsError:
                    raise OutputExistsError(f"{target}: appeared while this run was writing it; "
                                            "nothing was replaced") from None
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
