"""The run's record: `OUTPUT_DIR/run.json`, written when a run starts, holds the resolved options,
the weights folder's digest and metadata, the plan and the package versions. `--resume` recomputes
the record and refuses any difference that alters the trajectory (data, PLW, batch geometry,
learning rate and schedule length, seed, precision, packing, ...), naming each option; a finished
run says so. The folder that holds it (claimed, replaced under `--force`) is `folder.py`.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from alpaca_plw.data.outputs.publish import publish_files
from alpaca_plw.data.outputs.safety import claim, report
from alpaca_plw.errors import ConfigError, InputError

RUN_FILE = "run.json"
KIND = "run"


def inputs(cfg) -> list[tuple[str, object]]:
    from alpaca_plw.train.config import weights_dirs

    return [*(("weights folder", p) for p in weights_dirs(cfg)), ("model", cfg.model),
            ("tokenizer", cfg.tokenizer), ("evaluation weights", getattr(cfg, "eval_weights", None))]


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


def read_record(out: Path) -> dict:
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
    record = read_record(out)
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
        record = read_record(out)  # a folder whose run.json is not ours is refused before any move
        if not complete_final(out):
            return False
        write_record(out, {**record, "finished": True})
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


def new_record(cfg, plan, data) -> dict:
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


def write_record(out: Path, record: dict) -> None:
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    publish_files([(out / RUN_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))])
