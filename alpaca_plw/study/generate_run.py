"""`generate` over runs (`generate_runs`, what the command calls) and one run of it: settle the
outputs (new, resumed, refused or started over under `--force`), then generate batch after batch,
appending each to the JSONL before the next begins."""

from __future__ import annotations

import os
from pathlib import Path

from alpaca_plw.errors import ConfigError, OutputError
from alpaca_plw.study.generate import (RUN, GenerateOptions, _reset_generation_config, decoder,
                                       finish_row, generate_batch, line)


def check_runs(run_dirs: list[Path]) -> list[tuple[Path, object]]:
    """Every run checked before any model loads: a finished run, its run.json, a LoRA base."""
    from alpaca_plw.study.evaluate import base_model
    from alpaca_plw.study.generate_model import read_spec
    from alpaca_plw.study.runs import check_run, is_adapter

    checked = []
    for run_dir in run_dirs:
        run_dir = check_run(Path(run_dir))
        spec = read_spec(run_dir)
        if is_adapter(run_dir):
            base_model(run_dir)
        checked.append((run_dir, spec))
    return checked


def _header(run_dir, spec, options, data, indices, sampling, template, tokenizer) -> dict:
    from alpaca_plw.study.evaluate import base_model, model_label
    from alpaca_plw.study.generate_store import TOOL
    from alpaca_plw.study.runs import is_adapter

    source = data.source
    return {"tool": TOOL, "run": run_dir.name, "model": model_label(run_dir),
            "base": base_model(run_dir) if is_adapter(run_dir) else None,
            "prompts": {"path": source.path, "sha256": source.sha256, "records": len(data)},
            "n": options.n, "seed": options.seed, "sampling": sampling,
            "template": {**template, "tokenizer": {k: tokenizer.identity()[k] for k in
                                                   ("backend", "vocab_sha256")},
                         "max_length": spec.max_length},
            "complete": False, "count": 0}


def _settle(paths, header, indices, force) -> tuple[int, str]:
    """(lines already done, state) under the lock; a fresh start ("generated") writes nothing
    yet: `_start` does, once the model has loaded (a failure before it leaves nothing behind)."""
    from alpaca_plw.study.generate_store import complete_lines, differences, read_header

    jsonl, head, ae = paths
    old = read_header(head)
    if old is None:
        for path in (jsonl, ae):
            if path.exists():
                raise OutputError(f"{path}: exists without the {head.name} that `alpaca-plw "
                                  "generate` writes beside its outputs; it is never replaced, "
                                  "--force or not: move it away or choose another --name")
    diffs = differences(old, header) if old is not None else []
    if old is not None and diffs and not force:
        raise ConfigError(f"{jsonl}: written with other settings ({'; '.join(diffs)}); give the "
                          "same settings to continue it, another --name, or --force to start over")
    if old is not None and not force:
        done = complete_lines(jsonl, indices)
        if old.get("complete") and done == len(indices):
            return done, "complete"
        return done, "resumed"
    return 0, "generated"


def _start(paths, header) -> None:
    """The fresh header and an empty NAME.jsonl (replacing ours under --force)."""
    from alpaca_plw.data.outputs.publish import publish_files
    from alpaca_plw.study.generate_store import header_text

    jsonl, head, ae = paths
    ae.unlink(missing_ok=True)  # ours (its NAME.json is): stale once the lines are regenerated
    publish_files([(head, lambda tmp: tmp.write_text(header_text(header), encoding="utf-8")),
                   (jsonl, lambda tmp: tmp.write_bytes(b""))])


def generate_one(run_dir: Path, spec, options, on_run=None, progress=None, note=None) -> dict:
    import json

    from alpaca_plw.data.outputs.publish import kill_point, publish_files
    from alpaca_plw.data.outputs.safety import claim
    from alpaca_plw.study.evaluate import base_model
    from alpaca_plw.study.generate_model import (check_positions, load_run_model, resolve_device,
                                                 run_tokenizer)
    from alpaca_plw.study.generate_prompts import load_prompts, sample_indices
    from alpaca_plw.study.generate_store import (alpaca_eval_text, header_text, output_paths,
                                                 read_lines)
    from alpaca_plw.study.runs import is_adapter

    if on_run:
        on_run(run_dir)
    base = base_model(run_dir) if is_adapter(run_dir) else None
    tokenizer, tok_spec = run_tokenizer(run_dir, spec, options.tokenizer, base, note)
    data, prompts, stop, stop_id, template = load_prompts(
        options.prompts, spec, tokenizer, tok_spec,
        lambda size: sample_indices(size, options.n, options.seed),
        options.chat_template, options.columns, options.split)
    device = resolve_device(options.device)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    sampling = options.sampling(dtype, device, stop, stop_id, tokenizer.eos_id)
    indices = [p.index for p in prompts]
    header = _header(run_dir, spec, options, data, indices, sampling, template, tokenizer)
    paths = output_paths(run_dir, options.output_name)
    jsonl, head, ae = paths
    source = Path(str(options.prompts))
    inputs = [("prompts", source)] if source.exists() else []
    with claim(list(paths), inputs, True, exists_ok=True):
        done, state = _settle(paths, header, indices, options.force)
        if state != "complete":
            stop_ids = [t for t in (tokenizer.eos_id, stop_id) if t is not None]
            decode = decoder(tokenizer)
            model, _ = load_run_model(run_dir, device)
            check_positions(model, prompts[done:], options.max_new_tokens, str(run_dir), note)
            if state == "generated":
                _start(paths, header)
            _reset_generation_config(model)
            pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
            with open(jsonl, "ab") as handle:
                for start in range(done, len(prompts), options.batch_size):
                    batch = prompts[start:start + options.batch_size]
                    rows = generate_batch(model, batch, options, stop_ids, pad, device)
                    text = "".join(json.dumps(line(p, *finish_row(ids, set(stop_ids), stop, decode)),
                                              ensure_ascii=False) + "\n"
                                   for p, ids in zip(batch, rows))
                    handle.write(text.encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())
                    kill_point("generate-batch")
                    if progress:
                        progress(f"generating {run_dir.name}", start + len(batch), len(prompts))
        rows = read_lines(jsonl)
        header = {**header, "complete": True, "count": len(rows)}
        items = [(head, lambda tmp: tmp.write_text(header_text(header), encoding="utf-8"))]
        if options.alpaca_eval:
            text = alpaca_eval_text(rows, options.generator_of(run_dir.name))
            items.append((ae, lambda tmp: tmp.write_text(text, encoding="utf-8")))
        publish_files(items)
    return {"run": str(run_dir), "path": str(jsonl), "count": len(rows), "state": state}


def generate_runs(run_dirs: list[Path], options: GenerateOptions, on_run=None, progress=None,
                  note=None) -> list[dict]:
    """Generate for every run (each checked first: a finished run with a run.json); returns one
    summary per run {run, path, count, state} with state "generated", "resumed" or "complete"."""
    if options.generator is not None and len(run_dirs) > 1 and RUN not in options.generator:
        raise ConfigError(f"--generator {options.generator!r} would name the outputs of all "
                          f"{len(run_dirs)} runs alike, and AlpacaEval keys its results by that "
                          f"name; put {RUN} in it (replaced by each run folder's name), e.g. "
                          f"--generator 'short-{RUN}'")
    runs = check_runs(run_dirs)
    return [generate_one(r, spec, options, on_run, progress, note) for r, spec in runs]
