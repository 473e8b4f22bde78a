"""The final folder's model card (`README.md`): what was trained, on what, how, and with what result.

`run_facts` gathers everything the card says in one place, from the run's resolved configuration:
the `TrainConfig`, the plan and the weights folder's metadata, or `run.json` when the run recorded
one (its fields take precedence). `model_card` only formats those facts, so the card cannot say
anything the run did not do.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from importlib import metadata
from pathlib import Path

from alpaca_plw.data.outputs.atomic import atomic_write, text_writer

CARD_FILE = "README.md"
RUN_RECORD = "run.json"
_PACKAGES = ("alpaca-plw", "torch", "transformers", "peft", "numpy", "pyarrow")


def config_dict(cfg) -> dict:
    """The `TrainConfig` as JSON values (paths as strings, tuples as lists)."""
    def plain(value):
        if isinstance(value, Path):
            return str(value)
        return [plain(v) for v in value] if isinstance(value, tuple) else value

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _weights_sha256(cfg) -> str:
    """The Arrow file's sha256; for several folders (shards), `weights_dir.folders.digest`'s."""
    from alpaca_plw.data.weights_dir.folders import expand, folders_digest
    from alpaca_plw.train.config import weights_dirs

    return folders_digest(expand(weights_dirs(cfg)))


def run_facts(cfg, plan, meta: dict, results: dict) -> dict:
    """Everything the card states. `results`: final train loss and step, final eval metrics."""
    tokens = meta.get("tokens", {})
    facts = {
        "config": config_dict(cfg),
        "plan": plan.to_json(),
        "weights": {
            "path": str(cfg.weights_dir),
            "sha256": _weights_sha256(cfg),
            "source": meta.get("source", {}),
            "records": meta.get("counts", {}).get("written"),
            "tokens": tokens,
            "rg": tokens["completion"] / tokens["prompt"] if tokens.get("prompt") else None,
            "plw": meta.get("plw"),
            "plw_choice": meta.get("plw_choice", {}),
            "template": meta.get("template"),
            "max_length": meta.get("max_length"),
            "tokenizer": meta.get("tokenizer", {}),
        },
        "results": results,
        "versions": package_versions(),
    }
    recorded = Path(cfg.output_dir) / RUN_RECORD
    if recorded.is_file():
        try:
            run = json.loads(recorded.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run = {}
        for key in ("config", "weights", "versions"):
            if isinstance(run.get(key), dict):
                facts[key] = {**facts[key], **run[key]}
    return facts


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _plw_text(w: dict) -> str:
    choice = w.get("plw_choice", {})
    if choice.get("mode") == "auto":
        rg = choice.get("rg")
        return (f"{w['plw']:g}, chosen by `--plw auto` from the paper's guide ('all' column) at "
                f"the data's R_g {rg:.3f} (the paper's definition: each field tokenized alone, no "
                f"template)" + (f" ({choice['guide']['note']})" if choice.get("guide") else ""))
    return f"{w['plw']:g}, given with `--plw`"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def model_card(facts: dict) -> str:
    """The card's Markdown text (with Hugging Face front matter) from `run_facts`."""
    c, p, w, r = facts["config"], facts["plan"], facts["weights"], facts["results"]
    lora = c.get("lora_r") is not None
    src = w.get("source", {})
    tags = ["alpaca-plw", "prompt-loss-weight", *(["lora"] if lora else [])]
    lines = ["---", f"base_model: {c['model']}", f"library_name: {'peft' if lora else 'transformers'}",
             "tags:", *(f"- {t}" for t in tags), "---", "",
             f"# {Path(c['output_dir']).name}", "",
             f"`{c['model']}` fine-tuned by alpaca-plw {facts['versions'].get('alpaca-plw', '')} with "
             f"per-token loss weights: each prompt token's loss weighs the PLW, each completion "
             f"token's 1." + (" This folder holds a LoRA adapter; load it with "
                              "`PeftModel.from_pretrained(base, DIR)`." if lora else ""), "",
             "## Data", ""]
    eval_rows = [("evaluation set", p["eval_from"])] \
        if p.get("eval_records") else []
    lines += _table([
        ("weights folder", f"`{w['path']}` (sha256 `{w['sha256']}`)"),
        ("data source", f"`{src.get('path')}` ({src.get('kind')}, {src.get('records')} records, "
                        f"sha256 `{src.get('sha256')}`)"),
        ("records in the weights folder", _fmt(w.get("records"))),
        ("training records", f"{p['records']:,}"), *eval_rows,
        ("template, max length", f"{w.get('template')}, {w.get('max_length')} tokens"),
        ("tokens", f"{w['tokens'].get('total', 0):,} ({w['tokens'].get('prompt', 0):,} prompt, "
                   f"{w['tokens'].get('completion', 0):,} completion)"),
        ("completion / prompt tokens as trained (template included)", _fmt(w.get("rg"), 3)),
        ("PLW", _plw_text(w)),
        ("prompt share of the loss weight", f"{p['prompt_share_of_weight']:.2%}"),
        ("tokenizer", f"{w['tokenizer'].get('name')} (vocab {w['tokenizer'].get('vocab_sha256')})"),
    ])
    norm = ("sum(w x loss) / sum(w) over each optimizer step (exact weighted mean)"
            if p["loss_norm"] == "weight" else "sum(w x loss) / target tokens of each step")
    train_rows = [
        ("loss normalisation", norm),
        ("optimizer steps", f"{p['steps']:,} ({p['epochs']:g} epochs of {p['steps_per_epoch']:,})"),
        ("effective batch", f"{p['effective_batch']} = {p['micro_batch_size']} micro x "
                            f"{p['grad_accum']} accum x {p['world_size']} processes"),
        ("learning rate", f"{c['lr']:g} {c.get('optim', 'adamw')}, {p['warmup_steps']} warmup "
                          f"steps, {c.get('lr_scheduler_type', 'cosine')}"),
        ("weight decay, grad clipping, seed", f"{c['weight_decay']:g}, {c['max_grad_norm']:g}, "
                                              f"{c['seed']}"),
        ("device, precision", f"{p['device']}, {p['precision']}"),
    ]
    if lora:
        target = ", ".join(c["lora_target"]) if c.get("lora_target") else \
            "every linear layer of the decoder"
        train_rows.append(("LoRA", f"r {c['lora_r']}, alpha {c['lora_alpha']:g}, dropout "
                                   f"{c['lora_dropout']:g}, targets: {target}"))
    lines += ["## Training", "", *_table(train_rows), "## Results", ""]
    lines += _table([
        (f"final train loss (step {r.get('step', '-')})", _fmt(r.get("loss"))),
        ("final train prompt / completion loss",
         f"{_fmt(r.get('prompt_loss'))} / {_fmt(r.get('completion_loss'))}"),
        ("final eval loss", _fmt(r.get("eval_loss"))),
        ("final eval prompt / completion loss",
         f"{_fmt(r.get('eval_prompt_loss'))} / {_fmt(r.get('eval_completion_loss'))}"),
        *((f"final eval loss, role {role}", _fmt(value))  # conversation weights
          for role, value in (r.get("eval_role_loss") or {}).items() if value is not None),
    ])
    lines += ["Per-step losses, learning rate and gradient norm are in `log.jsonl`.", "",
              "## Versions", "", *_table(sorted(facts["versions"].items()))]
    return "\n".join(lines)


def write_model_card(directory: Path, facts: dict) -> Path:
    """Write `directory/README.md` atomically."""
    path = Path(directory) / CARD_FILE
    atomic_write(path, text_writer(model_card(facts)))
    return path
