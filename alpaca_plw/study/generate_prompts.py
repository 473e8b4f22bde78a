"""The prompts `generate` gives a run, rendered and tokenized exactly as its training data was.

Alpaca records: BOS + the Alpaca template (`data.template.format_prompt`, ending right after
`### Response:`), tokenized as `weights` tokenizes the prompt side. Conversations: the conversation
up to its last assistant message (all of it when there is none), rendered with the run's chat
template and its generation prompt, tokenized as `weights` tokenizes rendered text (BOS/EOS
strings in markup become their special tokens); the reference is that last assistant message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpaca_plw.errors import ConfigError, InputError


@dataclass(frozen=True)
class Prompt:
    index: int  # row in the source
    instruction: str
    input: str
    text: str  # exactly what the model is given (after BOS, for Alpaca records)
    ids: list[int]
    reference: str | None


def sample_indices(size: int, n: int | None, seed: int) -> list[int]:
    """Every row when `n` is None or >= `size`; else `n` rows drawn without replacement by
    `numpy.random.default_rng(seed)`, in index order."""
    if n is not None and n < 1:
        raise ConfigError(f"-n must be at least 1, got {n}")
    if n is None or n >= size:
        return list(range(size))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(size, n, replace=False))


def alpaca_prompts(records, indices: list[int], tokenizer) -> list[Prompt]:
    from alpaca_plw.data.alpaca.template import format_prompt

    head = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    texts = [format_prompt(records.instruction[i], records.input[i]) for i in indices]
    encoded = tokenizer.encode_batch(texts)
    return [Prompt(i, records.instruction[i], records.input[i], text, head + list(ids),
                   records.output[i])
            for i, text, ids in zip(indices, texts, encoded)]


def _cut(roles: list[str]) -> int | None:
    """Position of the last assistant message (None when there is none)."""
    found = [k for k, role in enumerate(roles) if role == "assistant"]
    return found[-1] if found else None


def chat_prompts(conv, indices: list[int], tokenizer, template) -> list[Prompt]:
    from alpaca_plw.data.chat.template import MARKUP, trace
    from alpaca_plw.data.chat.tokens import special_texts, tokens_with_chars

    bos, eos = special_texts(tokenizer)
    prompts = []
    for i in indices:
        roles, contents = conv.roles[i], conv.contents[i]
        cut = _cut(roles)
        reference = None if cut is None else contents[cut]
        roles, contents = (roles, contents) if cut is None else (roles[:cut], contents[:cut])
        where = f"{conv.source.path}: record {i}"
        traced = trace(template, roles, contents, bos, eos, where)
        messages = [{"role": r, "content": c} for r, c in zip(roles, contents)]
        text = template.render(messages, bos, eos, where, add_generation_prompt=True)
        if not text.startswith(traced.text):
            raise InputError(f"{where}: the chat template's generation prompt changes the text "
                             "before it; the prompt cannot be tokenized as training tokenized it")
        owner = np.concatenate([traced.owner,
                                np.full(len(text) - len(traced.text), MARKUP, dtype=np.int32)])
        ids, _ = tokens_with_chars(tokenizer, text, owner)
        users = [c for r, c in zip(roles, contents) if r == "user"]
        prompts.append(Prompt(i, users[-1] if users else "", "", text,
                              [int(t) for t in ids], reference))
    return prompts


def chat_stop(tokenizer, template) -> tuple[str | None, int | None]:
    """(stop string, stop token) of a chat template: the markup that closes an assistant turn
    (as `weights` finds it), stripped; its token when it is one token (`<|im_end|>`), None when it
    is only the EOS string (EOS always stops)."""
    from alpaca_plw.data.chat.template import MARKUP, trace
    from alpaca_plw.data.chat.tokens import special_texts, tokens_with_chars

    bos, eos = special_texts(tokenizer)
    traced = trace(template, ["user", "assistant"], ["Hi", "Hello"], bos, eos,
                   f"chat template {template.name}")
    span = traced.closing[1]
    text = traced.text[span[0]:span[1]].strip() if span else ""
    if not text or text == eos:
        return None, None
    ids, _ = tokens_with_chars(tokenizer, text, np.full(len(text), MARKUP, dtype=np.int32))
    return text, int(ids[0]) if len(ids) == 1 else None


def load_prompts(source: str, spec, tokenizer, tokenizer_spec: str, indices_for,
                 chat_template=None, columns=None, split: str = "train"):
    """(source records, prompts, stop string, stop token, template identity) for one run."""
    from alpaca_plw.data.chat.conversations import Conversations
    from alpaca_plw.data.reading.sources import load_records
    from alpaca_plw.data.weights_dir.folders import is_weights_source

    if is_weights_source(source):
        raise InputError(f"--prompts {source}: a weights folder (token ids and loss weights), not "
                         "records to prompt with; pass the dataset it was made from (each run's "
                         "run.json names it: weights.meta.source.path)")
    data = load_records(source, columns, split)
    indices = indices_for(len(data))
    is_chat = isinstance(data, Conversations)
    if is_chat != (spec.template == "chat"):
        kind = "conversations" if is_chat else "Alpaca records"
        raise InputError(f"--prompts {source}: holds {kind}, but the run was trained on "
                         f"{'conversations' if spec.template == 'chat' else 'Alpaca records'}")
    if not is_chat:
        return data, alpaca_prompts(data, indices, tokenizer), None, None, {"name": "alpaca"}
    from alpaca_plw.data.chat.pipeline import tokenizer_dir
    from alpaca_plw.data.chat.template import load_template

    template = load_template(chat_template, tokenizer_dir(tokenizer_spec))
    want = (spec.chat_template or {}).get("sha256")
    if want and template.sha256 != want:
        raise ConfigError(f"chat template {template.name} (sha256 {template.sha256}) is not the "
                          f"one the run was trained with ({spec.chat_template.get('name')}, "
                          f"sha256 {want}); pass --chat-template FILE")
    stop, stop_id = chat_stop(tokenizer, template)
    return (data, chat_prompts(data, indices, tokenizer, template), stop, stop_id,
            {"name": "chat", "chat_template": template.identity()})
