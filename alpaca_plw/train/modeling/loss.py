"""The weighted token loss: a small pure function over one micro-batch.

Targets are already shifted (see `train.batching.batches`): position t of `targets` is the token the
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
    role_sums: torch.Tensor | None = None  # [2 * roles.SLOTS] for conversation weights


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
    computed, so at PLW 0 the prompt sums are 0 over 0 tokens. (This form selects the positions on
    the device; the trainer passes a host-side `Selection` to `selected_terms` instead.)
    """
    index, t, w, p = device_selection(targets, weights, prompt_mask)
    rows = logits.reshape(-1, logits.shape[-1]).index_select(0, index)
    return selected_terms(logits_token_losses(rows, t), w, p)


def device_selection(targets, weights, prompt_mask):
    """(index, targets, weights, prompt) [K] of the weighted positions, chosen on the device (one
    sync); like `train.batching.selection.select_targets`, one zero-weight position when none."""
    flat_w = weights.reshape(-1)
    index = (flat_w > 0).nonzero().squeeze(1)
    if index.numel() == 0:
        index = torch.zeros(1, dtype=torch.long, device=weights.device)
    w = flat_w.index_select(0, index).float()
    return (index, targets.reshape(-1).index_select(0, index), w.clamp(min=0),
            prompt_mask.reshape(-1).index_select(0, index))


def selected_terms(token_loss: torch.Tensor, w: torch.Tensor, is_prompt: torch.Tensor) -> LossTerms:
    """LossTerms from the per-token losses of the selected positions (all [K]).

    No boolean indexing and no data-dependent shape, so nothing here waits for the device. A
    position of weight 0 (the placeholder of an empty micro-batch) adds 0 to every sum but keeps the
    graph through the LM head, so every rank runs the same backward.
    """
    plain = token_loss.detach()
    live = w > 0
    prompt = (is_prompt & live).to(plain.dtype)
    completion = (~is_prompt & live).to(plain.dtype)
    return LossTerms(
        weighted_sum=(token_loss * w).sum(),
        weight_sum=w.sum(),
        prompt_loss_sum=(plain * prompt).sum(),
        prompt_count=prompt.sum(),
        completion_loss_sum=(plain * completion).sum(),
        completion_count=completion.sum(),
    )


def logits_token_losses(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 cross-entropy per row: rows [K, V] logits, targets [K]."""
    return F.cross_entropy(rows.float(), targets, reduction="none")


def _chunk_losses(hidden, head_weight, head_bias, targets, transform):
    logits = F.linear(hidden, head_weight, head_bias).float()
    if transform is not None:
        logits = transform(logits)
    return F.cross_entropy(logits, targets, reduction="none")


def head_token_losses(rows: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor,
                      chunk_size: int = 4096, transform=None) -> torch.Tensor:
    """Per-row cross-entropy of `transform(lm_head(rows))` without holding full-vocabulary logits.

    rows [K, H] (selected decoder outputs), targets [K]. The rows go through the head `chunk_size`
    at a time; each chunk's logits (fp32) are freed after its loss and recomputed in backward
    (activation checkpointing), so peak logit memory is chunk_size x V x 4 bytes instead of
    B x T x V x 4. `transform` is the model's own logit post-processing (see `train.head`).
    """
    from torch.utils.checkpoint import checkpoint

    pieces = [
        checkpoint(_chunk_losses, rows[i : i + chunk_size], lm_head.weight, lm_head.bias,
                   targets[i : i + chunk_size], transform, use_reentrant=False)
        for i in range(0, rows.shape[0], chunk_size)
    ]
    return torch.cat(pieces)


def chunked_loss_terms(
    hidden: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor, weights: torch.Tensor,
    prompt_mask: torch.Tensor, chunk_size: int = 4096, transform=None,
) -> LossTerms:
    """`loss_terms` computed from final hidden states [B, T, H], never holding full logits."""
    index, t, w, p = device_selection(targets, weights, prompt_mask)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    return selected_terms(head_token_losses(rows, lm_head, t, chunk_size, transform), w, p)
