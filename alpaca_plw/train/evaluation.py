"""Validation: the exact weighted loss over a whole evaluation set.

The evaluation set is another weights folder (`--eval-weights DIR`, made with the same tokenizer) or
a deterministic share of the training records (`--eval-fraction F`, drawn from the seed and left
out of training). `eval_loss` is sum(w * loss) / sum(w) over every target token of the whole set
(`/ target tokens` with `--loss-norm tokens`), the normalisation training uses, not a mean of
per-batch means; `eval_prompt_loss` and `eval_completion_loss` are the plain mean token losses over
prompt and completion targets (for conversation weights: non-assistant and learned-assistant
targets, as in training), and conversation weights add `eval_role_loss` {role: mean token loss over
that role's weighted targets}, the training log's `role_loss` definition (modeling/roles.py). Every
rank evaluates its share; the sums are reduced over ranks.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from alpaca_plw.data.weights_dir.folders import read_weights
from alpaca_plw.errors import ConfigError, TokenizerError
from alpaca_plw.train.batching.batches import SequenceStore, collate
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.modeling.model import as_terms
from alpaca_plw.train.modeling.roles import RoleTally

_SPLIT_STREAM = 0x65766C  # a fixed second seed word: the split never shares the data-order stream


@dataclass
class EvalSet:
    store: SequenceStore
    source: str  # how the set was chosen, for the plan and the model card


def subset(store: SequenceStore, indices: np.ndarray) -> SequenceStore:
    """The records `indices` of `store`, in that order, as a new store."""
    lengths = store.lengths[indices]
    offsets = np.zeros(len(indices) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gather = np.repeat(store.offsets[indices] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return SequenceStore(ids=store.ids[gather], weights=store.weights[gather], offsets=offsets,
                         prompt_length=store.prompt_length[indices],
                         roles=None if store.roles is None else store.roles[gather],
                         role_names=store.role_names)


def split_indices(records: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, evaluation) record indices, each ascending: round(fraction x records) records
    (at least 1) drawn from (seed, a fixed stream), the rest for training (at least 1)."""
    count = min(max(1, round(fraction * records)), records - 1)
    if records < 2 or count < 1:
        raise ConfigError(f"--eval-fraction {fraction}: {records} training record(s) cannot be split; "
                          "give an evaluation set with --eval-weights")
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(records)
    return np.sort(order[count:]), np.sort(order[:count])


def split_eval(cfg: TrainConfig, meta: dict, store: SequenceStore) -> tuple[SequenceStore, EvalSet | None]:
    """The training store and the evaluation set (None without --eval-weights / --eval-fraction)."""
    if cfg.eval_weights is not None:
        data = read_weights(cfg.eval_weights)
        mine, theirs = meta.get("tokenizer", {}), data.meta.get("tokenizer", {})
        if mine.get("vocab_sha256") != theirs.get("vocab_sha256"):
            raise TokenizerError(
                f"--eval-weights {cfg.eval_weights}: made with tokenizer {theirs.get('name')!r} "
                f"(vocab {theirs.get('vocab_sha256')}) but {cfg.weights_dir} with {mine.get('name')!r} "
                f"(vocab {mine.get('vocab_sha256')}); make both with the same --tokenizer")
        return store, EvalSet(SequenceStore.from_weights(data),
                              f"--eval-weights {cfg.eval_weights}: {len(data)} records, PLW {data.meta.get('plw')}")
    if cfg.eval_fraction is not None:
        train_idx, eval_idx = split_indices(len(store), cfg.eval_fraction, cfg.seed)
        return subset(store, train_idx), EvalSet(
            subset(store, eval_idx),
            f"--eval-fraction {cfg.eval_fraction:g}: {len(eval_idx)} of {len(store)} training "
            f"records, drawn with seed {cfg.seed}")
    return store, None


def eval_due(cfg: TrainConfig, done: int, total: int) -> bool:
    """Evaluate after step `done`: every --eval-steps steps and after the last one."""
    return done == total or bool(cfg.eval_steps and done % cfg.eval_steps == 0)


def _rank_batches(n: int, micro: int, d: Dist) -> list[np.ndarray]:
    """This rank's micro-batches (records rank, rank + world, ...), padded with empty ones to the
    largest rank's count so that every rank runs the same number of forwards (FSDP needs it)."""
    mine = np.arange(d.rank, n, d.world)
    per_rank = -(-n // d.world)
    most = -(-per_rank // micro)
    return [mine[i * micro : (i + 1) * micro] for i in range(most)]


@torch.no_grad()
def evaluate(model, eval_set: EvalSet, cfg: TrainConfig, d: Dist, pad_id: int) -> dict:
    """`eval_loss`, `eval_prompt_loss`, `eval_completion_loss` (and `eval_role_loss` for
    conversation weights) of `model` on the whole set."""
    store = eval_set.store
    inner = getattr(model, "module", model)  # DDP's module; FSDP and one process: the model itself
    was_training = inner.training
    inner.eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda"
                else nullcontext())
    sums = torch.zeros(5, dtype=torch.float64, device=d.device)
    roles = RoleTally(store.role_names, d.device)  # conversation weights: a loss per role
    for indices in _rank_batches(len(store), cfg.micro_batch_size, d):
        batch = collate(store, indices, pad_id).to(d.device)
        sel = batch.selection  # the positions training would select, with their roles
        with autocast:
            t = as_terms(inner(batch.input_ids, sel.targets, sel.weights, sel.prompt,
                               attention_mask=batch.attention_mask, index=sel.index,
                               roles=sel.roles))
        sums += torch.stack([x.detach().double() for x in (
            t.weighted_sum, t.prompt_loss_sum, t.prompt_count, t.completion_loss_sum,
            t.completion_count)])
        roles.add(t)
    _reshard(inner)
    d.all_reduce_sum(sums)
    per_role = roles.log(d)  # reduced over ranks; {} for Alpaca weights
    inner.train(was_training)
    denominator = store.denominators(cfg.loss_norm).sum()
    s = sums.tolist()
    return {"eval_loss": s[0] / float(denominator) if denominator else None,
            "eval_prompt_loss": s[1] / s[2] if s[2] else None,
            "eval_completion_loss": s[3] / s[4] if s[4] else None,
            **({"eval_role_loss": per_role["role_loss"]} if per_role else {})}


def _reshard(model) -> None:
    """Put FSDP2's shards back in place after forwards with no backward: the root module (which
    does not reshard after its forward) otherwise keeps its unsharded parameters registered, and
    a checkpoint taken next would not find the parameters the optimizer holds."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()

