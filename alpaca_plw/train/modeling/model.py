"""The trained module: a Hugging Face causal LM whose forward returns the weighted loss sums.

Wrapping the model this way lets DDP and FSDP see one forward that ends in the loss, which is what
allows the chunked LM head + cross-entropy (no full-vocabulary logits) to run under both.
"""

from __future__ import annotations

import torch

from alpaca_plw.train.modeling.head import chunkable, logit_transform
from alpaca_plw.train.modeling.loss import (LossTerms, device_selection, head_token_losses,
                                   logits_token_losses, selected_terms)
from alpaca_plw.train.modeling.roles import role_sums


def supports_chunked_loss(model) -> bool:
    """True when the chunked head can run on `model` (its logit post-processing, if any, is one
    `alpaca_plw.train.modeling.head.logit_transform` knows; the trainer also checks the result)."""
    return chunkable(model) is None


class WeightedCausalLM(torch.nn.Module):
    """`forward(...)` returns the `LossTerms` fields as a tuple (DDP-friendly)."""

    def __init__(self, model, chunk_size: int | None = 4096):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size if chunk_size and supports_chunked_loss(model) else None
        self.transform = logit_transform(model.config)

    def forward(self, input_ids, targets, weights, prompt_mask, attention_mask=None,
                position_ids=None, index=None, probe=None, roles=None,
                **attention) -> tuple[torch.Tensor, ...]:
        """Loss sums of one micro-batch.

        With `index` [K] (the host-side `Selection`), `targets`, `weights` and `prompt_mask` are the
        K selected positions; without it they are [B, T] and the selection happens here.
        `attention` holds extra attention kwargs (flash varlen `cu_seq_lens_*`, `max_length_*`).
        `roles` [K] (conversation weights) adds per-role loss sums (`train.roles.role_sums`).
        `probe="logits"` / `probe="head"` return [B, T, V] logits from the model's own forward /
        from the chunked head, for the start-up checks (run under no_grad).
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": position_ids, "use_cache": False, **attention}
        if probe == "logits":
            return self.model(**inputs).logits
        if index is None:
            index, targets, weights, prompt_mask = device_selection(targets, weights, prompt_mask)
        if probe == "head" or self.chunk_size is not None:
            hidden = self.model.get_decoder()(**inputs).last_hidden_state
            head = self.model.get_output_embeddings()
            if probe == "head":
                logits = torch.nn.functional.linear(hidden, head.weight, head.bias).float()
                return logits if self.transform is None else self.transform(logits)
            rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
            token_loss = head_token_losses(rows, head, targets, self.chunk_size, self.transform)
        else:
            logits = self.model(**inputs).logits
            rows = logits.reshape(-1, logits.shape[-1]).index_select(0, index)
            token_loss = logits_token_losses(rows, targets)
        terms = selected_terms(token_loss, weights.float(), prompt_mask)
        sums = (terms.weighted_sum, terms.weight_sum, terms.prompt_loss_sum, terms.prompt_count,
                terms.completion_loss_sum, terms.completion_count)
        return sums if roles is None else (*sums, role_sums(token_loss, roles, weights > 0))


def as_terms(values: tuple[torch.Tensor, ...]) -> LossTerms:
    return LossTerms(*values)
