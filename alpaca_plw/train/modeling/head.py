"""The LM head as the chunked loss applies it: the output projection plus the model's own logit
post-processing, checked against the model's own logits before training.

Causal LMs differ after the last linear layer: Granite divides the logits by `logits_scaling`,
Gemma 2 and 3 soft-cap them (`cap * tanh(logits / cap)`), Cohere multiplies by `logit_scale`.
`logit_transform` knows these; anything else is caught by `head_mismatch`, which compares
`transform(lm_head(decoder(x)))` with `model(x).logits` on a few tokens, and the trainer then
falls back to full logits (the model's own forward) with a message.
"""

from __future__ import annotations

import functools

import torch


def _divide(logits, by):
    return logits / by


def _multiply(logits, by):
    return logits * by


def _soft_cap(logits, cap):
    return torch.tanh(logits / cap) * cap


def _chain(logits, steps):
    for step in steps:
        logits = step(logits)
    return logits


def logit_transform(config):
    """The post-processing the model applies to `lm_head(hidden)`, as a picklable callable, or
    None for plain logits. Known: Granite `logits_scaling`, Gemma 2/3 `final_logit_softcapping`,
    Cohere `logit_scale`."""
    steps = []
    scaling = getattr(config, "logits_scaling", None)
    if scaling not in (None, 1, 1.0):
        steps.append(functools.partial(_divide, by=float(scaling)))
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        steps.append(functools.partial(_multiply, by=float(scale)))
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        steps.append(functools.partial(_soft_cap, cap=float(cap)))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else functools.partial(_chain, steps=steps)


def chunkable(model) -> str | None:
    """None when the chunked loss can run on `model`; else why not (for the message)."""
    if not hasattr(model, "get_decoder") or model.get_decoder() is None:
        return "the model exposes no decoder (get_decoder)"
    if not isinstance(model.get_output_embeddings(), torch.nn.Linear):
        return "its output layer is not a plain linear layer"
    return None


def head_mismatch(own_logits: torch.Tensor, head_logits: torch.Tensor) -> float:
    """Largest |difference| between the model's own logits and the chunked head's, relative to
    the logits' scale (1 + max |logit|)."""
    own, mine = own_logits.float(), head_logits.float()
    return float((own - mine).abs().max() / (1.0 + own.abs().max()))


def tolerance(dtype: torch.dtype) -> float:
    """Relative agreement expected between two computations of the same logits in `dtype`."""
    return 1e-4 if dtype == torch.float32 else 3e-2
