"""What the paper's Figure 2 looks at, per run: loss stability and the distance from the base model.

Stability (Figure 2a): the relative standard deviation std / mean (population std) of the step
training losses in every window of 5 consecutive steps, averaged over the windows. Losses
[4, 2, 2, 2, 2, 4] have two windows, [4, 2, 2, 2, 2] (mean 2.4, std 0.8, RSD 1/3) and
[2, 2, 2, 2, 4] (the same), so the stability is 1/3.

Distance: the L2 norm of (trained - base) over all parameters, and that divided by the L2 norm of
the base's parameters. A LoRA run is measured on its merged weights.

Memorization (Figure 2c) and generation length (Figure 2d) come from sets `alpaca-plw generate`
wrote in the run folders (`generated.py`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from alpaca_plw.errors import ConfigError, InputError
from alpaca_plw.study.runs import (ADAPTER_CONFIG, check_run, final_losses, is_adapter, read_log,
                                   run_plw, step_records)

WINDOW = 5


def loss_stability(losses, window: int = WINDOW) -> float | None:
    """Mean over every window of `window` consecutive losses of std / mean (population std).

    None when there are fewer than `window` losses.
    """
    values = np.asarray(list(losses), dtype=np.float64)
    if values.size < window:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(values, window)
    return float((windows.std(axis=1, ddof=0) / windows.mean(axis=1)).mean())


@dataclass
class RunAnalysis:
    run: str
    plw: float | None
    steps: int | None
    train_loss: float | None
    prompt_loss: float | None
    completion_loss: float | None
    eval_loss: float | None
    stability: float | None
    token_loss: float | None = None  # unweighted, over every target of the last step (losses.py)
    distance: float | None = None
    relative_distance: float | None = None
    memorization_set: str | None = None  # the generations set asked for, None when not asked
    memorization: float | None = None  # corpus BLEU (0-100), None with a note when unusable
    memorization_records: int | None = None
    memorization_bleu: str | None = None  # sacrebleu's signature of the BLEU settings
    lengths_set: str | None = None
    length_mean: float | None = None
    length_median: float | None = None
    length_records: int | None = None
    length_cut: int | None = None  # outputs that stopped at the token limit, not at EOS
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """Every field; those of a generations set only when it was asked for."""
        body = asdict(self)
        if self.memorization_set is None:
            for key in ("memorization_set", "memorization", "memorization_records",
                        "memorization_bleu"):
                body.pop(key)
        if self.lengths_set is None:
            for key in ("lengths_set", "length_mean", "length_median", "length_records",
                        "length_cut"):
                body.pop(key)
        if self.memorization_set is None and self.lengths_set is None:
            body.pop("notes")
        return body


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """Parameter name -> safetensors file of a save_pretrained folder (single file or sharded)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return {str(name): model_dir / str(file) for name, file in weight_map.items()}
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{index}: not a safetensors index with a 'weight_map' object "
                             f"({type(exc).__name__})") from None
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise InputError(f"{model_dir}: no model.safetensors (a save_pretrained folder is needed "
                         "to measure weight distances)")
    with _opened(single, "np") as handle:
        return {name: single for name in handle.keys()}  # noqa: SIM118 (not a dict)


def _opened(file: Path, framework: str):
    """`safe_open(file)`; a missing, truncated or corrupt file is one InputError naming it."""
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{file}: not a readable safetensors file ({first})") from None


def _getter(files: dict[str, Path]):
    """name -> float64 array, reading each tensor from its safetensors file on demand."""
    handles = {file: _opened(file, "pt") for file in set(files.values())}

    def get(name: str):
        try:
            return handles[files[name]].get_tensor(name).double().numpy()
        except Exception as exc:  # noqa: BLE001 - a tensor whose bytes are cut or corrupt
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{files[name]}: cannot read tensor {name} ({first})") from None

    return get


def _merged_state(run_dir: Path, base: str) -> dict[str, np.ndarray]:
    """A LoRA run's weights merged into the base model (peft), as float64 arrays."""
    from alpaca_plw.extras import require

    require("peft", "alpaca-plw analyze on a LoRA run", "lora")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(run_dir)).merge_and_unload()
    return {k: v.double().numpy() for k, v in merged.state_dict().items()}


def weight_distance(run_dir: Path, base: str) -> tuple[float, float]:
    """(||trained - base||_2, that / ||base||_2) over every parameter of the base model.

    Tensors are read one at a time (float64), so two models need not fit in memory together; a
    LoRA run is merged into the base first (peft), which does need the model in memory.
    """
    base_files = _tensor_files(Path(base))
    get_base = _getter(base_files)
    if is_adapter(run_dir):
        trained = _merged_state(run_dir, base)
        get_run, names = trained.__getitem__, set(trained)
        missing = set(base_files) - names  # a merged state dict also lists tied weights
    else:
        run_files = _tensor_files(Path(run_dir))
        get_run, names = _getter(run_files), set(run_files)
        missing = set(base_files) ^ names
    if missing:
        raise ConfigError(f"--base {base}: its parameters differ from {run_dir}'s (e.g. "
                          f"{sorted(missing)[:3]}); pass the model the run started from")
    diff_sq = base_sq = 0.0
    for name in sorted(base_files):
        b, t = get_base(name), get_run(name)
        if b.shape != t.shape:
            raise ConfigError(f"--base {base}: parameter {name} has shape {b.shape}, the run's "
                              f"{t.shape}; pass the model the run started from")
        diff_sq += float(np.square(t - b).sum())
        base_sq += float(np.square(b).sum())
    return math.sqrt(diff_sq), math.sqrt(diff_sq) / math.sqrt(base_sq) if base_sq else float("nan")


def analyze_run(run_dir: Path, base: str | None = None) -> RunAnalysis:
    """One run's PLW, final losses, Figure-2a stability and (with `base`) weight distance."""
    run_dir = Path(run_dir)
    if base is not None:
        check_run(run_dir)
    elif not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    log = read_log(run_dir)
    if not log:
        raise InputError(f"{run_dir}: no log.jsonl; not a folder written by `alpaca-plw train`")
    losses = final_losses(log)
    stability = loss_stability(r["loss"] for r in step_records(log))
    from alpaca_plw.study.losses import final_token_loss

    result = RunAnalysis(run=run_dir.name, plw=run_plw(run_dir), stability=stability,
                         token_loss=final_token_loss(run_dir, losses), **losses)
    if base is not None:
        result.distance, result.relative_distance = weight_distance(run_dir, base)
    return result


def _generation_values(result: RunAnalysis, run_dir: Path, memorization: str | None,
                       lengths: str | None) -> dict[str, tuple]:
    """Fill `result`'s memorization and length fields from the run's sets; a missing or unfinished
    set leaves them None with a note. Returns each used set's comparison key by option."""
    from alpaca_plw.study import generated

    keys = {}
    for option, name in (("--memorization", memorization), ("--lengths", lengths)):
        if name is None:
            continue
        try:
            gen = generated.read_set(run_dir, name)
        except generated.Unusable as exc:
            result.notes.append(f"{option}: {exc}")
            continue
        keys[option] = gen.key
        if option == "--memorization":
            note = generated.not_training_note(run_dir, gen)
            if note:
                result.notes.append(f"{option}: {note}")
            result.memorization = generated.memorization(gen)
            result.memorization_bleu = generated.bleu_signature()
            result.memorization_records = len(gen.records)
        else:
            result.length_mean, result.length_median, result.length_cut = generated.lengths(gen)
            result.length_records = len(gen.records)
    return keys


def _compare_sets(results: list[RunAnalysis], keys: list[dict], option: str, name: str) -> None:
    """Refuse a set no run has; note on every run when the runs' sets differ in prompts or
    sampling (their values then do not compare across PLW)."""
    from alpaca_plw.study import generated

    used = [k[option] for k in keys if option in k]
    if not used:
        why = next(n for n in results[0].notes if n.startswith(option)).split(": ", 1)[1]
        raise InputError(f"{option} {name}: no run has a usable generations set {name!r} "
                         f"({results[0].run}: {why})")
    differ = generated.differing(used)
    if differ:
        for r in results:
            r.notes.append(f"{option}: the runs' sets {name!r} differ in {', '.join(differ)}, so "
                           "their values do not compare across PLW")


def analyze_runs(run_dirs: list[Path], base: str | None = None, memorization: str | None = None,
                 lengths: str | None = None) -> list[RunAnalysis]:
    """`analyze_run` for each folder, sorted by PLW (unknown PLW last, then by name); with
    `memorization` / `lengths`, each run's generations set of that name is measured too."""
    for option, name in (("--memorization", memorization), ("--lengths", lengths)):
        if name is not None and (not name or any(c in name for c in "/\\") or name[0] == "."):
            raise ConfigError(f"{option} {name!r}: expected the name of a generations set "
                              "(generations/NAME.jsonl in each run), not a path")
    if memorization is not None:  # before any run is read or any distance measured
        from alpaca_plw.extras import require

        require("sacrebleu", "alpaca-plw analyze --memorization", "study")
    if base is not None and not Path(base).is_dir():
        raise ConfigError(f"--base {base}: no such directory (a save_pretrained folder)")
    if base is not None:  # safetensors reads bf16/fp16 tensors through torch
        from alpaca_plw.extras import require

        require("torch", "alpaca-plw analyze --base")
    results, keys = [], []
    for run in run_dirs:
        result = analyze_run(Path(run), base)
        result.memorization_set, result.lengths_set = memorization, lengths
        keys.append(_generation_values(result, Path(run), memorization, lengths))
        results.append(result)
    for option, name in (("--memorization", memorization), ("--lengths", lengths)):
        if name is not None:
            _compare_sets(results, keys, option, name)
    return sorted(results, key=lambda a: (a.plw is None, a.plw or 0.0, a.run))


__all__ = ["ADAPTER_CONFIG", "RunAnalysis", "analyze_run", "analyze_runs", "loss_stability",
           "weight_distance"]
