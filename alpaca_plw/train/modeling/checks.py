"""Start-up checks of the speed paths on the model actually being trained.

Two shortcuts depend on model code the trainer does not control, so each is verified once, on a
few tokens of the training data, through the wrapped model (any of one process, DDP, FSDP; every
rank runs the same forwards), before the first step:

- chunked loss: `transform(lm_head(decoder(x)))` must equal the model's own `model(x).logits`
  (Granite's logit scaling, Gemma 2's soft-capping, tied embeddings...). If not, the run falls
  back to full logits and says so.
- packing: two records packed in one row must give the same logits as each record alone. Llama,
  Qwen2, GPT-NeoX, Falcon, Gemma 2 or Granite confine attention from the restarting position ids
  (tiny models, transformers 5.24); models whose mask code ignores position ids (OPT with sdpa or
  eager there; Falcon and Bloom were reported to in other versions) let packed records attend to
  each other. Then packing is refused (`--packing` given) or switched off
  (packing was only the GPU default), with the measured difference in the message.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch

from alpaca_plw.errors import ConfigError
from alpaca_plw.train.batching.batches import SequenceStore, collate
from alpaca_plw.train.batching.feed import attention_kwargs
from alpaca_plw.train.batching.packing import collate_packed
from alpaca_plw.train.modeling import attention
from alpaca_plw.train.modeling.head import head_mismatch, tolerance

log = logging.getLogger("alpaca_plw")
PROBE_TOKENS = 12  # tokens per probe record


def probe_store(store: SequenceStore, count: int = 2) -> SequenceStore:
    """The first `count` records with at least 2 tokens, cut to PROBE_TOKENS tokens each."""
    chosen = [i for i in range(len(store)) if store.lengths[i] >= 2][:count]
    pieces = [store.ids[store.offsets[i] : store.offsets[i] + min(PROBE_TOKENS, store.lengths[i])]
              for i in chosen]
    lengths = np.array([len(p) for p in pieces])
    return SequenceStore(ids=np.concatenate(pieces), weights=np.ones(int(lengths.sum()), np.float32),
                         offsets=np.concatenate(([0], np.cumsum(lengths))),
                         prompt_length=np.zeros(len(pieces), dtype=np.int64))


def _logits(model, batch, device, probe: str) -> torch.Tensor:
    """The probe's logits in the dtype the model computed them in (bf16 under FSDP's policy)."""
    batch = batch.to(device)
    sel = batch.selection
    return model(batch.input_ids, sel.targets, sel.weights, sel.prompt,
                 attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                 index=sel.index, probe=probe,
                 **attention_kwargs(_inner(model).model, batch))


def _inner(model):
    return getattr(model, "module", model)  # DDP keeps the WeightedCausalLM in .module


@torch.no_grad()
def head_difference(model, store: SequenceStore, device) -> tuple[float, torch.dtype]:
    """Relative max |own logits - chunked-head logits| on one probe record, and the logits dtype."""
    batch = collate(probe_store(store, 1), np.array([0]))
    own = _logits(model, batch, device, "logits")
    mine = _logits(model, batch, device, "head")
    return head_mismatch(own, mine), own.dtype  # the coarser of the two: the model's own


@torch.no_grad()
def packing_difference(model, store: SequenceStore, device) -> tuple[float, torch.dtype]:
    """Relative max |packed - separate| logits over two probe records packed in one row."""
    probe = probe_store(store, 2)
    packed = _logits(model, collate_packed(probe, np.arange(len(probe))), device, "logits")[0]
    alone = torch.cat([_logits(model, collate(probe, np.array([i])), device, "logits")[0]
                       for i in range(len(probe))])
    return head_mismatch(alone, packed), packed.dtype


def _leak(model, store: SequenceStore, device) -> str | None:
    """None when packed records do not see each other; else what was measured."""
    diff, dtype = packing_difference(model, store, device)
    if diff <= tolerance(dtype):
        return None
    name = type(_inner(model).model).__name__
    impl = attention.current(_inner(model).model)
    return (f"{name} with attn_implementation={impl} lets packed records attend to each other "
            f"(packed vs separate logits differ by {diff:.3g} relative)")


def check_speed_paths(model, store: SequenceStore, device, chunked: bool, packing: bool,
                      packing_requested: bool, is_main: bool, autocast=None,
                      fallback: str | None = None) -> bool:
    """Run the checks above on the wrapped `model`; switch the chunked loss off when it does not
    reproduce the model's logits. Returns whether packing stays on (raises ConfigError when
    `--packing` was asked for and the model leaks attention across packed records).

    The head check runs under the training `autocast`; the packing check in fp32 (no autocast), so
    that a small leak across records is not lost in bf16 rounding. `fallback` names the attention
    to switch to when the packing check fails on an attention the trainer chose itself (the
    `torch_varlen` default): the check then runs again on the fallback, as it does when a probe
    through the chosen attention raises (a model it does not reproduce)."""
    was_training = model.training
    model.eval()  # no dropout: the two computations must be comparable
    try:
        try:
            return _check(model, store, device, chunked, packing, packing_requested, is_main,
                          autocast, fallback)
        except (AttributeError, NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
            if fallback is None or isinstance(exc, torch.OutOfMemoryError):
                raise
            if is_main:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("note: attn_implementation=%s failed on this model (%s: %s); using "
                            "attn_implementation=%s instead",
                            attention.current(_inner(model).model), type(exc).__name__, first,
                            fallback)
            attention.use(_inner(model).model, fallback)
            return _check(model, store, device, chunked, packing, packing_requested, is_main,
                          autocast, None)
    finally:
        model.train(was_training)
        _reshard(model)


def _check(model, store, device, chunked, packing, packing_requested, is_main, autocast,
           fallback) -> bool:
    """`check_speed_paths` on a model in eval mode."""
    if chunked and _inner(model).chunk_size is not None:
        with autocast or nullcontext():
            diff, dtype = head_difference(model, store, device)
        if diff > tolerance(dtype):
            _inner(model).chunk_size = None
            if is_main:
                log.warning("note: the chunked loss does not reproduce this model's own "
                            "logits (relative difference %.3g); training with full logits "
                            "(--loss-chunk 0)", diff)
    if not packing:
        return packing
    why = _leak(model, store, device)
    if why is not None and fallback is not None:
        if is_main:
            log.warning("note: %s; using attn_implementation=%s instead", why, fallback)
        attention.use(_inner(model).model, fallback)
        why = _leak(model, store, device)
    if why is None:
        return packing
    if packing_requested:
        raise ConfigError(f"--packing: {why}; train with --no-packing, or another "
                          "--attn-implementation")
    if is_main:
        log.warning("note: %s; training with right-padded micro-batches", why)
    return False


def _reshard(model) -> None:
    """FSDP2 keeps the root's parameters gathered after a forward without backward; put every
    module back to its sharded parameters, which the optimizer must be built on."""
    for module in model.modules():
        if hasattr(module, "reshard") and hasattr(module, "unshard"):  # an FSDPModule
            module.reshard()
