"""`--compile`: compile the decoder layers, the modules that run on every path.

The loss path calls the decoder directly (`model.get_decoder()(...)`, then the chunked head), so
compiling the top-level module would compile nothing that runs. Each decoder layer is compiled
instead (all layers share one graph), with dynamic shapes: a packed micro-batch has a different
length at almost every step, and a static graph would recompile for each new length. Mask
construction and the chunked head stay eager; they are cheap next to the layers.

With `--gradient-checkpointing` the Hugging Face checkpointing cannot be used: its checkpoint runs
inside the compiled frame, where a context-variable write in transformers breaks the graph and
nothing is compiled at all (transformers 5.25, silently). The layers are then checkpointed from
outside instead: each layer's forward is `checkpoint(compiled forward)`, non-reentrant, so the
forward keeps only the layer's inputs and the backward recomputes the layer with the compiled code.
"""

from __future__ import annotations

import torch

LAYER_LISTS = ("layers", "h", "blocks")  # Llama/Qwen/Gemma/OPT/NeoX, Falcon/Bloom/GPT-2, others


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face causal LM's decoder (empty when none is found)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for holder in (decoder, getattr(decoder, "decoder", None), model):
        for name in LAYER_LISTS:
            layers = getattr(holder, name, None)
            if isinstance(layers, torch.nn.ModuleList) and len(layers):
                return list(layers)
    return []


def compile_decoder(model, backend: str = "inductor", checkpointing: bool = False) -> int:
    """Compile every decoder layer of `model` in place (state-dict keys unchanged) with dynamic
    shapes, each under activation checkpointing when `checkpointing`; returns how many were
    compiled (0: none found, nothing compiled)."""
    layers = decoder_layers(model)
    for layer in layers:
        if checkpointing:
            _checkpoint_compiled(layer, backend)
        else:
            layer.compile(backend=backend, dynamic=True)
    return len(layers)


def _checkpoint_compiled(layer: torch.nn.Module, backend: str) -> None:
    from torch.utils.checkpoint import checkpoint

    compiled = torch.compile(layer.forward, backend=backend, dynamic=True)

    def forward(*args, **kwargs):
        return checkpoint(compiled, *args, use_reentrant=False, **kwargs)

    layer.forward = forward  # an instance attribute: parameters and their names are untouched
