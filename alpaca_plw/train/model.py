"""The trained module: a Hugging Face causal LM whose forward returns the weighted loss sums.

Wrapping the model this way lets DDP and FSDP see one forward that ends in the loss, which is what
allows the chunked LM head + cross-entropy (no full-vocabulary logits) to run under both.
"""

from __future__ import annotations

import torch

from alpaca_plw.train.loss import LossTerms, chunked_loss_terms, loss_terms


def supports_chunked_loss(model) -> bool:
    """True when logits are a plain linear map of the decoder output (no scaling or soft-capping)."""
    config = model.config
    plain_head = isinstance(model.get_output_embeddings(), torch.nn.Linear)
    extras = any(getattr(config, name, None) not in (None, 1.0)
                 for name in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"))
    return plain_head and not extras and hasattr(model, "get_decoder")


class WeightedCausalLM(torch.nn.Module):
    """`forward(...)` returns the `LossTerms` fields as a tuple (DDP-friendly)."""

    def __init__(self, model, chunk_size: int | None = 4096):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size if chunk_size and supports_chunked_loss(model) else None

    def forward(self, input_ids, targets, weights, prompt_mask, attention_mask=None,
                position_ids=None) -> tuple[torch.Tensor, ...]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": position_ids, "use_cache": False}
        if self.chunk_size is None:
            logits = self.model(**inputs).logits
            terms = loss_terms(logits, targets, weights, prompt_mask)
        else:
            hidden = self.model.get_decoder()(**inputs).last_hidden_state
            terms = chunked_loss_terms(hidden, self.model.get_output_embeddings(), targets, weights,
                                       prompt_mask, self.chunk_size)
        return (terms.weighted_sum, terms.weight_sum, terms.prompt_loss_sum, terms.prompt_count,
                terms.completion_loss_sum, terms.completion_count)


def as_terms(values: tuple[torch.Tensor, ...]) -> LossTerms:
    return LossTerms(*values)
