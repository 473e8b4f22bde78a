"""Runs cannot mix: the run folder's marker and `run.json`, the `--resume` comparison, and the
checks that stop a diverging run.

`train` writes `OUTPUT_DIR/run.json` when it starts: the resolved options, the weights folder's
digest and metadata, the plan and the package versions. `--resume` recomputes the same record and
refuses any difference that alters the trajectory (data, PLW, batch geometry, learning rate and
schedule length, seed, precision, packing, ...), naming each option; a finished run says so.
`--force` replaces only a folder holding alpaca-plw's `.alpaca-plw` marker of a run. What loading
the model would refuse (its config, its safetensors headers, the attention implementation) is
checked before the old run is touched; then, under the lock, the old run is renamed aside
(`.NAME.plw-replaced-*` beside it) and the new run starts in an empty folder, so no checkpoint of
the previous run can be resumed. The old run is deleted once the new one can stand in its place
(its first checkpoint, or its final model); a new run that fails before that is removed and the
old run renamed back, and a killed one is undone the same way by the next run on the folder.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from alpaca_plw.data.outputs.publish import MARKER, OLD_TAG, TMP_TAG, publish_files, write_marker, writing
from alpaca_plw.data.outputs.safety import check_overlap, check_shape, claim, marker_kind, report
from alpaca_plw.errors import ConfigError, InputError, OutputError, OutputExistsError

RUN_FILE = "run.json"
KIND = "run"
REPLACED_TAG = ".plw-replaced-"  # `.NAME.plw-replaced-*`: a run --force set aside, beside NAME
_HF_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


def inputs(cfg) -> list[tuple[str, object]]:
    from alpaca_plw.train.config import weights_dirs

    return [*(("weights folder", p) for p in weights_dirs(cfg)), ("model", cfg.model),
            ("tokenizer", cfg.tokenizer), ("evaluation weights", getattr(cfg, "eval_weights", None))]


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


def check_model(cfg) -> None:
    """Before the run folder is claimed, refuse what loading the model would refuse later: an
    unreadable config (every run); with `--force`, before the old run is touched, also a truncated
    or corrupt safetensors file (its header and size) and an attention implementation this install
    or this model cannot use."""
    if cfg.dry_run:
        return
    from transformers import AutoConfig

    name = str(cfg.model)
    if not Path(name).expanduser().exists() and (name.startswith((".", "/", "~"))
                                                 or name.count("/") > 1):
        raise ConfigError(f"--model {name}: no such directory")  # a path, not a hub id
    try:
        config = AutoConfig.from_pretrained(cfg.model)
    except Exception as exc:  # noqa: BLE001 - a missing or corrupt config raises many types
        untouched = "; the run in the output folder was not touched" if cfg.force else ""
        raise ConfigError(f"--model {cfg.model}: cannot read its config "
                          f"({_first_line(exc)}){untouched}") from None
    if not cfg.force:
        return
    import torch
    from transformers import AutoModelForCausalLM

    _check_safetensors(Path(str(cfg.model)).expanduser())
    if cfg.attn_implementation in _HF_ATTENTION:
        try:
            with torch.device("meta"):  # no memory: the checks transformers runs when loading
                AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)
        except Exception as exc:  # noqa: BLE001 - ImportError, ValueError from transformers
            raise ConfigError(f"--attn-implementation {cfg.attn_implementation}: cannot be used "
                              f"with --model {cfg.model} here ({_first_line(exc)}); the run in "
                              "the output folder was not touched") from None


def _check_safetensors(model: Path) -> None:
    if not model.is_dir():
        return
    from safetensors import safe_open

    for file in sorted(model.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError
            raise ConfigError(f"--model {model}: {file.name} is not a readable safetensors file "
                              f"({_first_line(exc)}); the run in the output folder was not "
                              "touched") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def weights_digest(data) -> str:
    from alpaca_plw.data.weights_dir.folders import digest  # one folder: its Arrow file's sha256

    return digest(data)


ADDED_LATER = {"--optim": "adamw", "--lr-scheduler-type": "cosine",  # and what runs before them
               "--base-dtype (resolved)": "float32"}                   # trained with


def _base_dtype(cfg) -> str:
    """The dtype the model is loaded in (LoRA's frozen base: --base-dtype, auto resolved)."""
    from alpaca_plw.train.modeling.lora import load_dtype

    return str(load_dtype(cfg)).removeprefix("torch.")


def trajectory(cfg, plan, digest: str) -> dict[str, object]:
    """What decides the sequence of updates, keyed by the option a user would change."""
    values = {
        "weights data (sha256 of the weights folder)": digest,
        "PLW of the weights": plan.plw,
        "--micro-batch-size": cfg.micro_batch_size,
        "--grad-accum": plan.grad_accum,
        "--batch-size": plan.effective_batch,
        "processes": plan.world_size,
        "--lr": cfg.lr,
        "steps (--max-steps / --epochs)": plan.steps,
        "warmup steps (--warmup-ratio)": plan.warmup_steps,
        "--weight-decay": cfg.weight_decay,
        "--max-grad-norm": cfg.max_grad_norm,
        "--optim": cfg.optim,
        "--lr-scheduler-type": cfg.lr_scheduler_type,
        "--base-dtype (resolved)": _base_dtype(cfg),
        "--seed": cfg.seed,
        "--loss-norm": cfg.loss_norm,
        "precision": plan.precision,
        "--packing": plan.packing,
        "--max-tokens": plan.max_tokens,
    }
    for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target", "eval_fraction"):
        if hasattr(cfg, name):
            value = getattr(cfg, name)
            values["--" + name.replace("_", "-")] = list(value) if isinstance(value, tuple) else value
    return values


def _read(out: Path) -> dict:
    path = out / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: cannot read it ({exc}); the run cannot be checked, so it "
                         "cannot be resumed") from None
    if not isinstance(record, dict) or not isinstance(record.get("trajectory"), dict):
        raise InputError(f"{path}: not a run record written by alpaca-plw; cannot resume")
    return record


def check_resume(cfg, plan, data) -> bool:
    """`--resume`: refuse a finished run, and any option or data that differs from run.json.
    True when the run had finished training and this call completed placing its final model
    (then there is nothing to train, and `train` returns)."""
    if not cfg.resume or cfg.dry_run and not (Path(cfg.output_dir) / RUN_FILE).is_file():
        return False
    out = Path(cfg.output_dir)
    if not cfg.dry_run and _complete_final(cfg, out):
        return True
    record = _read(out)
    if record.get("finished"):
        raise ConfigError(f"--resume: the run in {out} is finished ({record.get('steps')} of "
                          f"{record.get('steps')} steps); nothing to resume. To train further, "
                          f"start a new run with --model {out}")
    now = trajectory(cfg, plan, weights_digest(data))
    then = record["trajectory"]
    then = {**ADDED_LATER, **then}  # a run recorded before an option existed ran its default
    diffs = [f"{key} {_show(value)} (the run has {_show(then.get(key))})"
             for key, value in now.items() if _norm(value) != _norm(then.get(key))]
    if diffs:
        raise ConfigError(f"--resume: this would not continue the run in {out}: "
                          + "; ".join(diffs) + ". Give the run's own options (see its "
                          f"{RUN_FILE}), or start over with --force or a new --output-dir")
    if plan.resume_from is not None:  # refused here, before the folder is claimed or a model loads
        from alpaca_plw.train.checkpoints.checkpoint import read_state

        read_state(Path(plan.resume_from), mmap=True)
    return False


def _complete_final(cfg, out: Path) -> bool:
    """A run killed while moving its final model into place (all steps done): finish the move;
    True when it did."""
    from alpaca_plw.train.checkpoints.checkpoint import FINAL_STAGE, complete_final

    if not (out / FINAL_STAGE).is_dir():
        return False
    with claim([out], inputs(cfg), False, KIND, exists_ok=True):
        record = _read(out)  # a folder whose run.json is not ours is refused before any move
        if not complete_final(out):
            return False
        _write(out, {**record, "finished": True})
        report(f"note: {out}: completed placing the final model that an interrupted run left in "
               ".final/ (training had finished; its model card was not written); the run is "
               "finished")
    return True


def _norm(value):
    return json.loads(json.dumps(value))


def _show(value) -> str:
    return "unset" if value is None else str(value)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("alpaca_plw", "torch", "transformers", "numpy", "pyarrow", "peft"):
        module = sys.modules.get(name)
        found[name] = getattr(module, "__version__", None) if module else None
    return found


def _record(cfg, plan, data) -> dict:
    meta = {k: v for k, v in data.meta.items() if k not in ("truncated", "skipped")}
    options = {k: (str(v) if isinstance(v, Path) else
                   [str(x) if isinstance(x, Path) else x for x in v] if isinstance(v, tuple) else v)
               for k, v in vars(cfg).items()}
    folders = {"folders": [str(p) for p in data.folders]} if len(data.folders) > 1 else {}
    return {"tool": "alpaca-plw", "options": options, "plan": plan.to_json(),
            "weights": {"path": str(data.path), **folders, "sha256": weights_digest(data),
                        "meta": meta},
            "trajectory": trajectory(cfg, plan, weights_digest(data)), "versions": _versions(),
            "finished": False, "steps": plan.steps}


def _write(out: Path, record: dict) -> None:
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    publish_files([(out / RUN_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))])


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
            _write(self.out, {**self.record, "finished": True})
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
            run.record = _read(out) if cfg.resume else _record(cfg, plan, data)
            if not cfg.resume:
                _write(out, run.record)
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


