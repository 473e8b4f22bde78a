"""Real run folders for the `generate` tests: a tiny random Llama trained one step by the real
`weights` and `train` commands (full weights, or a LoRA adapter), and an independent greedy loop
(argmax token by token over the whole sequence, no `generate()`, no cache)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_invoke import LLAMA, invoke_cli
from tiny_models import save_tiny_llama

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample.json"

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def short_records(directory: Path, count: int = 6) -> Path:
    """`count` short sample records (both templates among them), as a JSON file."""
    records = [r for r in json.loads(SAMPLE.read_text(encoding="utf-8"))
               if len(r["instruction"]) + len(r["input"]) < 120 and len(r["output"]) < 200][:count]
    assert any(r["input"] for r in records) and any(not r["input"] for r in records)
    path = directory / "prompts.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def train_run(root: Path, lora: bool = False) -> Path:
    """A finished run folder `root/run` trained one step on the short records by the CLI."""
    root.mkdir(parents=True, exist_ok=True)
    model = save_tiny_llama(root / "model")
    source = short_records(root)
    code, _, err = invoke_cli(["weights", source, "--plw", "0.1", "-o", root / "w",
                               "--max-length", "128"])
    assert code == 0, err
    extra = ["--lora-r", "4"] if lora else []
    code, _, err = invoke_cli(["train", root / "w", "--model", model, "--output-dir", root / "run",
                               "--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "2",
                               "--device", "cpu", *extra])
    assert code == 0, err
    return root / "run"


def hand_greedy(model, ids: list[int], max_new: int, eos: int) -> tuple[list[int], str]:
    """Greedy decoding by hand: the whole sequence through the model at every step, argmax of the
    last position; (generated ids before EOS, "eos" | "length")."""
    import torch

    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if token == eos:
                return out, "eos"
            out.append(token)
            seq.append(token)
    return out, "length"


def sentencepiece():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(LLAMA / "tokenizer.model"))
