"""What a run will do, worked out before any model is loaded: steps, batch geometry, the schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from alpaca_plw.errors import ConfigError
from alpaca_plw.train.batching.batches import DataOrder, SequenceStore
from alpaca_plw.train.checkpoints.folders import latest_checkpoint
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.schedule import lr_factor  # noqa: F401 (the schedule, re-exported)


@dataclass
class Plan:
    """What a run will do; `--dry-run` prints it."""

    records: int
    steps: int
    steps_per_epoch: int
    epochs: float
    micro_batch_size: int
    grad_accum: int
    world_size: int
    effective_batch: int
    tokens_per_epoch: int
    target_tokens_per_epoch: int
    plw: float
    prompt_share_of_weight: float
    loss_norm: str
    warmup_steps: int
    lr: float
    device: str
    precision: str
    packing: bool
    max_tokens: int | None
    loss_chunk: int
    resume_from: str | None
    memory: dict | None = None  # per-GPU estimate in GiB (train.memory), filled in by --dry-run
    eval_records: int = 0  # the evaluation set (issue 11), filled in by train.hooks
    eval_from: str | None = None
    lora: str | None = None
    attention: str | None = None  # the attn_implementation the run used (after the checks)

    def to_json(self) -> dict:
        return asdict(self)


def make_plan(cfg: TrainConfig, store: SequenceStore, meta: dict, d: Dist) -> Plan:
    accum = cfg.accumulation(d.world)
    order = DataOrder(len(store), cfg.seed, cfg.micro_batch_size, accum, d.world)
    steps = cfg.max_steps or math.ceil(cfg.epochs * order.steps_per_epoch)
    target_w = store.target_weight_sums()
    plw = float(meta.get("plw", float("nan")))
    if not 0.0 <= plw <= 1.0:
        raise ConfigError(f"{cfg.weights_dir}: PLW {plw} in its metadata is outside [0, 1]; a weight "
                          "above 1 overweights the prompt and a negative one rewards not predicting "
                          "it. Rebuild it with `alpaca-plw weights --plw W` (0 <= W <= 1)")
    prompt_w = plw * store.target_prompt_counts().sum()
    total_w = float(target_w.sum())
    if total_w <= 0:
        raise ConfigError(f"{cfg.weights_dir}: every target token has weight 0; nothing to learn")
    _check_every_step_has_weight(cfg, store, order, steps)
    last = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    packing = cfg.packing if cfg.packing is not None else d.device.type == "cuda"
    longest = int(store.lengths.max())
    budget = (cfg.max_tokens or cfg.micro_batch_size * longest) if packing else None
    if budget is not None and budget < longest:
        raise ConfigError(f"--max-tokens {budget} is below the longest record ({longest} tokens)")
    return Plan(
        records=len(store), steps=steps, steps_per_epoch=order.steps_per_epoch,
        epochs=round(steps / order.steps_per_epoch, 4), micro_batch_size=cfg.micro_batch_size,
        grad_accum=accum, world_size=d.world, effective_batch=order.global_batch,
        tokens_per_epoch=int(store.lengths.sum()),
        target_tokens_per_epoch=int(store.target_counts().sum()), plw=plw,
        prompt_share_of_weight=round(prompt_w / total_w, 6), loss_norm=cfg.loss_norm,
        warmup_steps=math.ceil(cfg.warmup_ratio * steps), lr=cfg.lr, device=str(d.device),
        precision="bf16 autocast" if d.device.type == "cuda" else "fp32",
        packing=packing, max_tokens=budget, loss_chunk=cfg.loss_chunk,
        resume_from=str(last) if last else None,
    )


def _check_every_step_has_weight(cfg: TrainConfig, store: SequenceStore, order: DataOrder,
                                 steps: int) -> None:
    """Refuse a run with a step whose records carry no loss weight at all (records without a
    completion at PLW 0, say): its weighted mean is 0 / 0 and it has nothing to learn."""
    import numpy as np

    denominators = store.denominators(cfg.loss_norm)
    for step in range(steps):
        if not float(np.sum(denominators[order.step_records(step)])) > 0:
            raise ConfigError(
                f"{cfg.weights_dir}: optimizer step {step + 1} holds only records whose targets "
                "all weigh 0 (records without a completion at PLW 0, say): its loss would be "
                "0 / 0. Leave such records out of the data, or use a larger --batch-size")
