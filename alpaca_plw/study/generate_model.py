"""What `generate` needs from a finished run: how it was trained (its `run.json`), the tokenizer
that tokenized its data, and its model (a LoRA run: the adapter on its base, resolved as `eval`
resolves it).

The tokenizer is the one the run's weights were made with, checked by the vocabulary digest
`run.json` records: `--tokenizer` when given, else the first of train's `--tokenizer`, the run
folder, a LoRA run's base and `$ALPACA_PLW_TOKENIZER` whose digest and backend both match (a
SentencePiece folder is preferred when the data was tokenized with SentencePiece, as `weights`
does), else the first whose digest matches, with a note that the backends differ.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.errors import ConfigError, InputError, PLWError, TokenizerError

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunSpec:
    """How a run was trained, as far as prompting it goes."""

    template: str  # "alpaca" or "chat"
    max_length: int | None
    tokenizer: dict  # the identity `weights` recorded (name, backend, vocab_size, vocab_sha256)
    chat_template: dict | None  # {"name", "sha256"} for chat runs
    model: str | None  # train's --model
    tokenizer_option: str | None  # train's --tokenizer


def read_spec(run_dir: Path) -> RunSpec:
    """The run's `run.json`, reduced to what generation needs; InputError when it cannot say."""
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        meta = record["weights"]["meta"]
        options = record.get("options", {})
        template = meta.get("template", "alpaca")
        spec = RunSpec(template=template, max_length=meta.get("max_length"),
                       tokenizer=dict(meta["tokenizer"]), chat_template=meta.get("chat_template"),
                       model=options.get("model"), tokenizer_option=options.get("tokenizer"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; generate needs the record `alpaca-plw train` writes "
                         "to know the run's prompt template and tokenizer") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InputError(f"{path}: not a run record written by alpaca-plw train "
                         f"({type(exc).__name__}: {str(exc)[:80]})") from None
    if spec.template not in ("alpaca", "chat"):
        raise InputError(f"{path}: unknown prompt template {spec.template!r} (expected alpaca or chat)")
    return spec


def _candidates(run_dir: Path, spec: RunSpec, base: str | None) -> list[str]:
    from alpaca_plw.data.tokenizer import ENV_TOKENIZER

    found = [spec.tokenizer_option, str(run_dir), base, os.environ.get(ENV_TOKENIZER)]
    seen, out = set(), []
    for item in found:
        if item and item not in seen and Path(item).expanduser().exists():
            seen.add(item)
            out.append(item)
    return out


def run_tokenizer(run_dir: Path, spec: RunSpec, given: str | None, base: str | None = None,
                  note=None):
    """(tokenizer, the spec it was loaded from) for `run_dir` (see the module doc)."""
    from alpaca_plw.data.tokenizer import load_tokenizer

    want = spec.tokenizer.get("vocab_sha256")
    if given is not None:
        tok = load_tokenizer(given)
        if tok.identity()["vocab_sha256"] != want:
            raise TokenizerError(f"--tokenizer {given}: its vocabulary (digest "
                                 f"{tok.identity()['vocab_sha256']}) is not the one {run_dir} was "
                                 f"trained on ({spec.tokenizer.get('name')}, digest {want})")
        return tok, given
    matching = []
    for candidate in _candidates(run_dir, spec, base):
        try:
            tok = load_tokenizer(candidate)
        except PLWError:
            continue
        if tok.identity()["vocab_sha256"] != want:
            continue
        if tok.backend == spec.tokenizer.get("backend"):
            return tok, candidate
        matching.append((tok, candidate))
    if not matching:
        raise TokenizerError(f"{run_dir}: no tokenizer with the vocabulary it was trained on "
                             f"({spec.tokenizer.get('name')}, digest {want}) in the run folder, "
                             "its base or $ALPACA_PLW_TOKENIZER; pass --tokenizer DIR")
    tok, candidate = matching[0]
    if note:
        note(f"note: {run_dir}: its data was tokenized with {spec.tokenizer.get('backend')}, the "
             f"tokenizer found ({candidate}) is {tok.backend}; they split a few texts differently. "
             "Pass --tokenizer DIR (a folder with tokenizer.model) for the exact prompts")
    return tok, candidate


def resolve_device(device: str | None) -> str:
    """`auto`/None: cuda when available, else cpu; otherwise the device as given (checked)."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device}: not a device (auto, cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here")
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: generate runs on cpu or cuda")
    return device


def load_run_model(run_dir: Path, device: str):
    """The run's final model in eval mode on `device` (bfloat16 on CUDA, float32 on CPU); a LoRA
    run is its adapter on its base (`evaluate.base_model`). Weights load from safetensors only."""
    import torch
    from transformers import AutoModelForCausalLM

    from alpaca_plw.extras import require
    from alpaca_plw.study.evaluate import base_model
    from alpaca_plw.study.runs import is_adapter

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        if is_adapter(run_dir):
            require("peft", "alpaca-plw generate on a LoRA run", "lora")
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(base_model(run_dir), dtype=dtype,
                                                        use_safetensors=True)
            model = PeftModel.from_pretrained(base, str(run_dir))
        else:
            model = AutoModelForCausalLM.from_pretrained(str(run_dir), dtype=dtype,
                                                         use_safetensors=True)
    except PLWError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or truncated model raises many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{run_dir}: cannot load its model ({type(exc).__name__}: "
                         f"{first[:200]})") from None
    return model.to(device).eval(), str(dtype).removeprefix("torch.")


def check_positions(model, prompts, max_new_tokens: int, where: str, note=None) -> None:
    """Refuse prompts the model has no positions for, before anything is written: a prompt longer
    than its positions, or, with learned absolute positions (`n_positions`, GPT-2 style, which
    fail with an index error past them), a prompt plus --max-new-tokens longer. Rotary models can
    run past their trained length: a note says how many prompts may."""
    from alpaca_plw.errors import InputError

    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not prompts or isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return
    absolute = isinstance(getattr(config, "n_positions", None), int)
    longest = max(prompts, key=lambda p: len(p.ids))
    room = limit - (max_new_tokens if absolute else 0)
    if len(longest.ids) > room:
        what = f"{len(longest.ids)} tokens" + (f" + --max-new-tokens {max_new_tokens}" if absolute
                                               else "")
        raise InputError(f"{where}: the prompt of source row {longest.index}: {what} exceed the "
                         f"model's {limit} positions; shorten it, leave it out, or lower "
                         "--max-new-tokens")
    over = sum(len(p.ids) + max_new_tokens > limit for p in prompts)
    if over and note is not None:
        note(f"note: {where}: {over:,} of {len(prompts):,} prompts may run past the model's {limit} "
             f"positions with --max-new-tokens {max_new_tokens} (beyond what it was trained on)")

