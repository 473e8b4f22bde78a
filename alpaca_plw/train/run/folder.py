"""Runs cannot mix: the run folder, its `.alpaca-plw` marker, and `--force`.

Before any work the folder must be usable as asked: new or empty, `--resume` of an alpaca-plw
run, or `--force` over one. `--force` replaces only a folder holding alpaca-plw's marker of a run:
under the lock, the old run is renamed aside (`.NAME.plw-replaced-*` beside it) and the new run
starts in an empty folder, so no checkpoint of the previous run can be resumed. The old run is
deleted once the new one can stand in its place (its first checkpoint, or its final model); a new
run that fails before that is removed and the old run renamed back, and a killed one is undone the
same way by the next run on the folder. What loading the model would refuse is checked before the
old run is touched (`model_check.py`).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from alpaca_plw.data.outputs.checks import check_overlap, check_shape, marker_kind
from alpaca_plw.data.outputs.publish import MARKER, OLD_TAG, TMP_TAG, write_marker, writing
from alpaca_plw.data.outputs.safety import claim, report
from alpaca_plw.errors import ConfigError, OutputError, OutputExistsError
from alpaca_plw.train.run.record import (KIND, RUN_FILE, inputs, new_record, read_record,
                                         write_record)

REPLACED_TAG = ".plw-replaced-"  # `.NAME.plw-replaced-*`: a run --force set aside, beside NAME


def check_paths(cfg) -> None:
    """Before any work: the run folder overlaps no input, can be a folder, and may be used as
    asked (empty or new; `--resume` of an alpaca-plw run; `--force` over an alpaca-plw run)."""
    out = Path(cfg.output_dir)
    check_overlap([out], inputs(cfg))
    if cfg.resume and cfg.force:
        raise ConfigError("--resume and --force contradict each other: --resume continues the run "
                          f"in {out}, --force replaces it")
    check_shape(out, folder=True)
    if cfg.dry_run:
        return
    if _replaced(out) and os.environ.get("RANK", "0") == "0":  # a killed --force: put the
        # folder right (locked; by one process of a torchrun group) before judging it
        with claim([out], inputs(cfg), True, KIND, exists_ok=True):
            _recover_replaced(out)
    _check_existing(cfg, out)


def _check_existing(cfg, out: Path) -> None:
    """The existence rule: a new or empty folder; `--resume` of an alpaca-plw run; `--force`
    over one. Checked before any work and again under the lock (another run may have written
    into the folder in between)."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    ours = marker_kind(out) == KIND
    if cfg.resume:
        if not ours or not (out / RUN_FILE).is_file():
            raise ConfigError(f"--resume: {out} has no {RUN_FILE} and {MARKER} marker of an "
                              "alpaca-plw run, so nothing shows which run it holds; train into "
                              "a new --output-dir")
        return
    if not cfg.force:
        raise OutputExistsError(f"--output-dir {out}: not empty; pass --resume to continue the "
                                "run in it or --force to replace that run")
    if not ours:
        raise OutputError(f"--output-dir {out}: not empty and not a run folder written by "
                          f"alpaca-plw (no {MARKER} marker); --force replaces only alpaca-plw's "
                          "own runs: remove it yourself or choose another --output-dir")


class RunRecord:
    def __init__(self, out: Path, record: dict | None, aside: Path | None = None):
        self.out, self.record, self.aside = out, record, aside

    def settle(self) -> None:
        """`--force`: delete the run set aside once this one can stand in its place."""
        if self.aside is not None and _can_stand(self.out):
            _remove_run(self.aside)
            self.aside = None

    def finish(self) -> None:
        """Mark the run finished (rank 0); `--resume` then refuses it."""
        if self.record is not None:
            write_record(self.out, {**self.record, "finished": True})
        self.settle()

    def restore(self) -> None:
        """`--force` failed before this run could stand in: remove it, put the old run back."""
        if self.aside is not None:
            _put_back(self.out, self.aside)
            self.aside = None
            _RESTORED.add(str(self.out))


_RESTORED: set[str] = set()  # run folders whose previous run a failed --force put back (this process)


@contextmanager
def claimed(cfg, plan, data, d):
    """Rank 0 holds the run folder for the whole run: locked, checked again under the lock, the
    old run set aside for `--force`, marked, and `run.json` written before any checkpoint;
    leftovers of a killed run are removed."""
    out = Path(cfg.output_dir)
    # Every rank ran check_paths on the folder as it was; none may see rank 0's marker or run.json
    # there (a slow rank would then refuse the folder as "not empty").
    d.barrier()
    if not d.is_main:
        yield RunRecord(out, None)
        return
    with claim([out], inputs(cfg), cfg.force, KIND, exists_ok=True):
        _recover_replaced(out)
        _check_existing(cfg, out)  # again: a run may have written here since check_paths
        aside = _set_aside(out) if cfg.force and out.is_dir() and any(out.iterdir()) else None
        existed = out.exists()
        fresh = not existed or not any(out.iterdir())
        _clean_leftovers(out)
        run = RunRecord(out, None, aside)
        try:
            with writing(out, "create"):
                out.mkdir(parents=True, exist_ok=True)
                if marker_kind(out) != KIND:
                    write_marker(out, KIND)
            run.record = read_record(out) if cfg.resume else new_record(cfg, plan, data)
            if not cfg.resume:
                write_record(out, run.record)
            yield run
        except BaseException:
            if run.aside is not None:
                run.restore()
            elif fresh:  # failed before its first step was logged: leave nothing behind
                _undo(out, remove_folder=not existed)
            raise


def _can_stand(out: Path) -> bool:
    """A run that can replace another: it has a complete checkpoint, a complete final model
    staged (`--resume` places it), or it finished."""
    from alpaca_plw.train.checkpoints.checkpoint import FINAL_STAGE
    from alpaca_plw.train.checkpoints.folders import latest_checkpoint

    if latest_checkpoint(out) is not None or (out / FINAL_STAGE).is_dir():
        return True
    try:
        return json.loads((out / RUN_FILE).read_text(encoding="utf-8")).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


def _set_aside(out: Path) -> Path:
    aside = out.parent / f".{out.name}{REPLACED_TAG}{os.getpid()}-{secrets.token_hex(4)}"
    with writing(out, "move aside (--force keeps the old run until the new one can replace it)"):
        os.rename(out, aside)
    return aside


def _remove_run(folder: Path) -> None:
    if marker_kind(folder) == KIND:  # only a run folder alpaca-plw wrote
        shutil.rmtree(folder, ignore_errors=True)


def _put_back(out: Path, aside: Path) -> None:
    """Remove the new run in `out` (created in this output's claim) and rename the old one back."""
    with writing(out, "restore the previous run into"):
        if out.exists():
            if marker_kind(out) != KIND:
                raise OutputError(f"{out}: not an alpaca-plw run folder, so it was not removed; "
                                  f"the previous run is kept in {aside}")
            shutil.rmtree(out)
        os.rename(aside, out)


def _replaced(out: Path) -> list[Path]:
    """The run folders a `--force` on `out` set aside (our name and our marker), oldest first."""
    try:
        return sorted((p for p in out.parent.iterdir()
                       if p.name.startswith(f".{out.name}{REPLACED_TAG}") and p.is_dir()
                       and not p.is_symlink() and marker_kind(p) == KIND),
                      key=lambda p: p.stat().st_mtime_ns)
    except OSError:
        return []


def _recover_replaced(out: Path) -> None:
    """Under the lock: a `--force` run killed while the old run was set aside. If the new run can
    stand in its place the old one goes; else the new one goes and the old one comes back."""
    found = _replaced(out)
    if not found:  # one at most: every claim recovers before it sets a run aside
        return
    aside = found[-1]
    if out.exists() and _can_stand(out):
        _remove_run(aside)
        report(f"note: {out}: removed the run an interrupted --force had set aside "
               f"({aside.name}); the new run had replaced it")
    else:
        _put_back(out, aside)
        report(f"note: {out}: an interrupted --force had saved no checkpoint; restored the "
               f"previous run from {aside.name}")


def _undo(out: Path, remove_folder: bool) -> None:
    from alpaca_plw.train.run.log import LOG_FILE

    log = out / LOG_FILE
    if log.exists() and log.stat().st_size:
        return
    if {p.name for p in out.iterdir()} <= {MARKER, RUN_FILE, LOG_FILE}:
        for name in (MARKER, RUN_FILE, LOG_FILE):
            (out / name).unlink(missing_ok=True)
        if remove_folder:
            out.rmdir()


def _clean_leftovers(out: Path) -> None:
    from alpaca_plw.train.checkpoints.folders import finish_removals

    if not out.is_dir():
        return
    found = sorted(p for p in out.iterdir()
                   if TMP_TAG in p.name or OLD_TAG in p.name)
    for item in found:
        shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
    names = [p.name for p in found] + finish_removals(out)  # a killed checkpoint rotation
    if names:
        report(f"note: {out}: cleaned up after an interrupted run: removed " + ", ".join(names))


def interrupted_message(cfg) -> str:
    """Ctrl-C during `train`: the last checkpoint and the command that continues from it."""
    from alpaca_plw.train.checkpoints.folders import latest_checkpoint

    if str(Path(cfg.output_dir)) in _RESTORED:
        return (f"interrupted before the new run saved a checkpoint; the previous run in "
                f"{cfg.output_dir} was put back as it was")
    last = latest_checkpoint(Path(cfg.output_dir))
    if last is None:
        return f"interrupted; no checkpoint was saved in {cfg.output_dir} (--save-steps N saves some)"
    args = [a for a in sys.argv[1:] if a != "--force"]
    command = shlex.join(["alpaca-plw", *args, *([] if "--resume" in args else ["--resume"])])
    return f"interrupted; last checkpoint: {last}; continue with: {command}"
