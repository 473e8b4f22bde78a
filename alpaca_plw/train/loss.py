"""The weighted token loss: a small pure function over one micro-batch.

Targets are already shifted (see `alpaca_plw.train.batches`): position t of `targets` is the token the
model must predict from position t of its input, and `weights[t]` is that target token's loss weight
(0 for padding, for the position after a record's last token, and for masked prompt tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossTerms:
    """Sums over one micro-batch. `weighted_sum` carries the graph; the rest are detached floats
    (tensors) for normalisation and logging."""

    weighted_sum: torch.Tensor
    weight_sum: torch.Tensor
    prompt_loss_sum: torch.Tensor
    prompt_count: torch.Tensor
    completion_loss_sum: torch.Tensor
    completion_count: torch.Tensor


def weighted_token_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of w * token loss, sum of w) for a micro-batch.

    Shapes: logits [B, T, V] (any float dtype; the loss is computed in fp32), targets [B, T] int64,
    weights [B, T] float. Positions with weight 0 are skipped entirely: their logits are never fed
    to the loss. The mean the trainer optimises is sum(w * loss) / sum(w) over a whole optimizer step.

    Worked example: two target tokens, uniform logits over V = 4 (loss ln 4 = 1.3863 each), weights
    [0.1, 1.0]: returns (1.1 * 1.3863 = 1.5249, 1.1), whose ratio is ln 4.

    >>> loss_sum, weight_sum = weighted_token_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]),
    ...                                            torch.tensor([[0.1, 1.0]]))
    >>> round(loss_sum.item(), 4), round(weight_sum.item(), 4)
    (1.5249, 1.1)
    """
    terms = loss_terms(logits, targets, weights, torch.zeros_like(targets, dtype=torch.bool))
    return terms.weighted_sum, terms.weight_sum


def loss_terms(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, prompt_mask: torch.Tensor
) -> LossTerms:
    """All loss sums of a micro-batch in one cross-entropy pass over the weighted positions.

    `prompt_mask` [B, T] bool marks targets that are prompt tokens; it splits the plain (unweighted)
    per-token losses into prompt and completion sums for logging. Prompt tokens of weight 0 are not
    computed, so at PLW 0 the prompt sums are 0 over 0 tokens.
    """
    selected = weights > 0
    if not bool(selected.any()):
        return _no_terms(logits)
    token_loss = F.cross_entropy(logits[selected].float(), targets[selected], reduction="none")
    return _terms(token_loss, weights[selected].float(), prompt_mask[selected])


def _no_terms(source: torch.Tensor) -> LossTerms:
    """All sums 0; the zero loss stays attached to the graph so every rank still runs backward."""
    nothing = torch.zeros((), device=source.device)
    return LossTerms(source.sum() * 0.0, nothing, nothing, nothing, nothing, nothing)


def _terms(token_loss: torch.Tensor, w: torch.Tensor, is_prompt: torch.Tensor) -> LossTerms:
    plain = token_loss.detach()
    return LossTerms(
        weighted_sum=(token_loss * w).sum(),
        weight_sum=w.sum(),
        prompt_loss_sum=plain[is_prompt].sum(),
        prompt_count=is_prompt.sum().float(),
        completion_loss_sum=plain[~is_prompt].sum(),
        completion_count=(~is_prompt).sum().float(),
    )


def _chunk_losses(hidden: torch.Tensor, head_weight: torch.Tensor, head_bias, targets: torch.Tensor):
    logits = F.linear(hidden, head_weight, head_bias).float()
    return F.cross_entropy(logits, targets, reduction="none")


def chunked_loss_terms(
    hidden: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor, weights: torch.Tensor,
    prompt_mask: torch.Tensor, chunk_size: int = 4096,
) -> LossTerms:
    """`loss_terms` computed from final hidden states, without ever holding full-vocabulary logits.

    hidden [B, T, H] (the decoder's output), targets / weights / prompt_mask [B, T]. Only positions
    of weight > 0 reach the LM head; they go through it `chunk_size` at a time, each chunk's logits
    (fp32) are freed after its loss and recomputed in backward (activation checkpointing), so peak
    logit memory is chunk_size x V x 4 bytes instead of B x T x V x 4.
    """
    from torch.utils.checkpoint import checkpoint

    selected = weights > 0
    if not bool(selected.any()):
        return _no_terms(hidden)
    h = hidden[selected]
    t = targets[selected]
    pieces = [
        checkpoint(_chunk_losses, h[i : i + chunk_size], lm_head.weight, lm_head.bias,
                   t[i : i + chunk_size], use_reentrant=False)
        for i in range(0, h.shape[0], chunk_size)
    ]
    return _terms(torch.cat(pieces), weights[selected].float(), prompt_mask[selected])
