"""`generate`: each finished run's generations for a set of prompts, rendered with the run's own
training template, written to `RUN/generations/NAME.jsonl` (see `generate_store`).

Decoding is Hugging Face `generate` on left-padded batches with an attention mask: greedy, or
sampling with `--temperature` / `--top-p` (no top-k) seeded per batch from `--seed` and the
batch's first prompt, so a resumed run draws what an uninterrupted one drew. Nothing of the
model's own `generation_config.json` applies: every setting is the command's and is recorded.

A generation ends at EOS, at a chat template's end-of-turn token (`<|im_end|>`: the markup that
closes an assistant turn, when it is one token), at that markup's text when it takes several
tokens, or after `--max-new-tokens`. `output` is the generated tokens before the stop, decoded
without special tokens; `output_tokens` counts them; `finish` is "eos" or "length".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.errors import ConfigError

SEED_STRIDE = 1_000_003
RUN = "{run}"  # in --generator: the run folder's name


@dataclass(frozen=True)
class GenerateOptions:
    prompts: str
    n: int | None = None
    seed: int = 42
    max_new_tokens: int = 512
    batch_size: int = 8
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    name: str | None = None
    alpaca_eval: bool = False
    generator: str | None = None
    device: str | None = "auto"
    force: bool = False
    tokenizer: str | None = None
    chat_template: str | None = None
    columns: object | None = None
    split: str = "train"

    def __post_init__(self):
        from alpaca_plw.study.generate_store import check_name

        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"-n must be at least 1, got {self.n}")
        if not self.do_sample and (self.temperature is not None or self.top_p is not None):
            raise ConfigError("--temperature and --top-p apply to sampling: add --do-sample")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"--temperature must be above 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.generator is not None and not self.alpaca_eval:
            raise ConfigError("--generator names the model in the --alpaca-eval file: add --alpaca-eval")
        if self.generator is not None and not self.generator.replace(RUN, "x").strip():
            raise ConfigError(f"--generator {self.generator!r}: expected a name, e.g. 'short-{RUN}'")
        check_name(self.output_name)

    def generator_of(self, run_name: str) -> str:
        """The --alpaca-eval file's generator for a run: --generator with `{run}` replaced by the
        run folder's name, else that name."""
        return run_name if self.generator is None else self.generator.replace(RUN, run_name)

    @property
    def output_name(self) -> str:
        """--name, else the prompts' file stem (a hub id: its last part)."""
        return self.name if self.name is not None else Path(str(self.prompts).rstrip("/")).stem

    def sampling(self, dtype: str, device: str, stop: str | None, stop_id: int | None,
                 eos_id: int | None) -> dict:
        sample = self.do_sample
        return {"do_sample": sample, "max_new_tokens": self.max_new_tokens,
                "temperature": (self.temperature or 1.0) if sample else None,
                "top_p": (self.top_p or 1.0) if sample else None, "top_k": None,
                "batch_size": self.batch_size, "padding": "left", "dtype": dtype,
                "device": device.split(":")[0], "eos_token_id": eos_id,
                "stop_token_id": stop_id, "stop_string": stop}


def batch_seed(seed: int, first_index: int) -> int:
    return (seed * SEED_STRIDE + first_index) % (2 ** 63)


def finish_row(generated: list[int], stop_ids: set[int], stop: str | None, decode):
    """(output, output_tokens, finish) of one row of generated ids (padding after a stop
    included): the tokens before the first stop token; then, when the stop string appears in
    their text, the text before it and the tokens whose text lies wholly before it."""
    cut = next((k for k, t in enumerate(generated) if t in stop_ids), None)
    tokens = generated if cut is None else generated[:cut]
    finish = "length" if cut is None else "eos"
    text = decode(tokens)
    if stop and stop in text:
        at = text.index(stop)
        kept = max(k for k in range(len(tokens) + 1) if len(decode(tokens[:k])) <= at)
        return text[:at], kept, "eos"
    return text, len(tokens), finish


def decoder(tokenizer):
    """Token ids -> text without special tokens, with the run's tokenizer."""
    if tokenizer.backend == "sentencepiece":
        return lambda ids: tokenizer.impl.decode([int(t) for t in ids])
    return lambda ids: tokenizer.impl.decode([int(t) for t in ids], skip_special_tokens=True)


def _reset_generation_config(model) -> None:
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for m in {id(model): model, id(inner): inner}.values():
        if hasattr(m, "generation_config"):
            m.generation_config = GenerationConfig()


def generate_batch(model, prompts, options: GenerateOptions, stop_ids: list[int], pad_id: int,
                   device: str) -> list[list[int]]:
    """The generated ids of each prompt of one batch (left padding, attention mask)."""
    import torch
    from transformers import GenerationConfig

    width = max(len(p.ids) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p.ids)) + p.ids for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts],
                        device=device)
    sampling = {"temperature": options.temperature or 1.0, "top_p": options.top_p or 1.0,
                "top_k": 0} if options.do_sample else {}
    config = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                              num_beams=1, repetition_penalty=1.0, eos_token_id=stop_ids or None,
                              pad_token_id=pad_id, **sampling)
    if options.do_sample:
        torch.manual_seed(batch_seed(options.seed, prompts[0].index))
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, width:].tolist()


def line(prompt, output: str, tokens: int, finish: str) -> dict:
    return {"index": prompt.index, "instruction": prompt.instruction, "input": prompt.input,
            "prompt": prompt.text, "output": output, "output_tokens": tokens, "finish": finish,
            "reference": prompt.reference}
