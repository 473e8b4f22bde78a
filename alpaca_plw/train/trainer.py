"""The weighted-loss trainer for Hugging Face causal LMs (one process, DDP, or FSDP via torchrun).

Normalisation is exact: an optimizer step's loss is sum(w * loss) / sum(w) over all micro-batches
of all ranks of that step (or / token count with `loss_norm="tokens"`). The denominator is a
property of the data, known before the forward passes, so each micro-batch's backward is scaled by
world / denominator and data-parallel gradient averaging then yields the exact step mean.

`train` reads as its steps: set up the run, then for each optimizer step `_optimizer_step`,
`_log_step` and a checkpoint when due, then `_save_final`. `hooks.RunFeatures` adds evaluation,
trackers, progress events, checkpoint rotation and the model card around them; the model is loaded
and checked in `loading.py`, the run folder held by `run/folder.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alpaca_plw.data.weights_dir.folders import read_weights
from alpaca_plw.errors import ConfigError
from alpaca_plw.train.batching.batches import DataOrder, SequenceStore
from alpaca_plw.train.batching.feed import Feeder, attention_kwargs
from alpaca_plw.train.batching.packing import pack_records
from alpaca_plw.train.checkpoints.checkpoint import (load_checkpoint, restore_weights, save_final,
                                                     unwrap)
from alpaca_plw.train.checkpoints.folders import is_legacy
from alpaca_plw.train.config import TrainConfig, weights_dirs
from alpaca_plw.train.distributed import Dist, setup
from alpaca_plw.train.finite import check_params, check_step
from alpaca_plw.train.hooks import EventCallback, RunFeatures
from alpaca_plw.train.loading import (check_lora_target, check_model_config, check_model_path,
                                      check_tokenizer, load_model)
from alpaca_plw.train.memory import plan_memory
from alpaca_plw.train.modeling import attention
from alpaca_plw.train.modeling.checks import check_speed_paths
from alpaca_plw.train.modeling.lora import load_trainable
from alpaca_plw.train.modeling.model import as_terms
from alpaca_plw.train.modeling.roles import RoleTally
from alpaca_plw.train.modeling.wrap import wrap_model as _wrap
from alpaca_plw.train.optim import make_optimizer
from alpaca_plw.train.plan import Plan, lr_factor, make_plan
from alpaca_plw.train.run import folder as run_folder
from alpaca_plw.train.run.log import LOG_FILE, append_log, trim_log
from alpaca_plw.train.run.model_check import check_model
from alpaca_plw.train.run.record import check_resume
from alpaca_plw.train.schedule import learns_nothing, make_scheduler

__all__ = ["LOG_FILE", "Plan", "lr_factor", "make_plan", "train"]

StepCallback = Callable[[dict], None]


@dataclass
class _Run:
    """Everything one training run holds between steps."""

    cfg: TrainConfig
    d: Dist
    plan: Plan
    store: SequenceStore
    order: DataOrder
    denominators: np.ndarray
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tokenizer: object
    start: int
    log_path: Path
    feeder: Feeder
    upcoming: dict = field(default_factory=dict)  # the next step's micro-batches, once planned


def train(cfg: TrainConfig, on_step: StepCallback | None = None,
          on_plan: Callable[[Plan], None] | None = None,
          on_event: EventCallback | None = None) -> Plan:
    """Train `cfg.model` on `cfg.weights_dir`; returns the plan (also for a dry run).

    `on_step(record)` is called on rank 0 after every optimizer step with the log record;
    `on_plan(plan)` once, on rank 0, before training starts; `on_event(name, info)`: hooks.py.
    """
    _quiet_transformers()
    d = setup(cfg.device, plan_only=cfg.dry_run)  # --dry-run plans a GPU run without one
    features = RunFeatures(cfg, d, on_event)  # LoRA, evaluation, trackers, model card (issue 11)
    run_folder.check_paths(cfg)  # no input overlapped; --force and --resume allowed here
    check_model_path(cfg.model)  # a missing local folder: at once, not after hub lookups
    data = read_weights(weights_dirs(cfg), cfg.allow_partial_shards)  # memory-mapped, in place
    tokenizer_dir = check_tokenizer(cfg, data.meta)
    store = features.split(data.meta, SequenceStore.from_weights(data))
    plan = features.annotate(make_plan(cfg, store, data.meta, d))
    if check_resume(cfg, plan, data):  # a finished or a different run is refused
        return plan  # it had finished; placing its stranded final model completed it
    if cfg.resume and plan.resume_from is None:
        raise ConfigError(f"--resume: no checkpoint-* folder in {cfg.output_dir}")
    if cfg.dry_run:
        check_model_config(cfg)
        check_lora_target(cfg)
        plan.memory = plan_memory(cfg, plan, int(store.lengths.max()))  # per-GPU estimate
    if on_plan and d.is_main:
        on_plan(plan)
    if learns_nothing(plan.warmup_steps, plan.steps, cfg.lr_scheduler_type):
        features.event("warning", message=(
            f"all {plan.steps} optimizer steps run at learning rate 0 ({plan.warmup_steps} warmup "
            f"steps of {plan.steps}): the model will not change. Lower --warmup-ratio or train "
            "more steps"))
    if cfg.dry_run:
        return plan
    check_model(cfg)  # --force: what loading would refuse, before the old run is moved
    with run_folder.claimed(cfg, plan, data, d) as run_json:  # locked; run.json before any step
        features.event("loading_model", model=cfg.model, resume_from=plan.resume_from)
        run = _set_up(cfg, d, plan, store, tokenizer_dir)
        features.start(run)
        for step in range(run.start, plan.steps):
            record = _optimizer_step(run, step)
            features.after_step(run, record)
            _log_step(run, record, on_step)
            features.maybe_checkpoint(run, step + 1)  # every --save-steps; rotation
            run_json.settle()  # --force: the old run goes once this one has a checkpoint
        run.feeder.close()
        _save_final(run)
        features.finish(run)
        run_json.finish()
    return plan


def _set_up(cfg: TrainConfig, d: Dist, plan: Plan, store: SequenceStore, tokenizer_dir) -> _Run:
    """Load tokenizer and model (from the checkpoint when resuming), wrap them for this device and
    process group, build optimizer and schedule, and prepare the log."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(cfg.seed)
    attention.register()  # `torch_varlen` is a valid attn_implementation from here on
    from_rank0 = _sharded_from_rank0(cfg, d)  # other ranks build the model on `meta`
    # resuming a full fine-tune: every rank builds on `meta` and reads its weights from its shard
    shards = plan.resume_from and cfg.lora_r is None and not is_legacy(Path(plan.resume_from))
    loaded = load_trainable(cfg, plan.resume_from, lambda source: load_model(
        cfg, source, int(store.ids.max()), meta=shards or (from_rank0 and not d.is_main)))
    split = cfg.fsdp or cfg.cpu_offload
    if shards and not split:
        restore_weights(Path(plan.resume_from), loaded, d)
    chosen = _choose_attention(cfg, loaded, d, plan)
    model = _wrap(loaded, cfg, d, from_rank0=from_rank0 and not shards)
    if shards and split:
        restore_weights(Path(plan.resume_from), model, d, "cpu" if cfg.cpu_offload else d.device)
    plan.packing = check_speed_paths(  # chunked head and packing verified on this very model
        model, store, d.device, cfg.loss_chunk > 0, plan.packing, cfg.packing is True, d.is_main,
        torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else None,
        fallback="sdpa" if chosen else None)
    plan.attention = attention.current(loaded)
    model.train()
    optimizer = make_optimizer(model.parameters(), cfg.optim, cfg.lr, cfg.weight_decay, d.device)
    scheduler = make_scheduler(optimizer, plan.warmup_steps, plan.steps, cfg.lr_scheduler_type)
    start = load_checkpoint(Path(plan.resume_from), model, optimizer, scheduler, d) \
        if plan.resume_from else 0
    denominators = store.denominators(cfg.loss_norm)
    log_path = cfg.output_dir / LOG_FILE
    if d.is_main:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        trim_log(log_path, start) if start else log_path.unlink(missing_ok=True)
    order = DataOrder(len(store), cfg.seed, cfg.micro_batch_size, plan.grad_accum, d.world)
    feeder = Feeder(store, tokenizer.pad_token_id or 0, plan.packing, d.device)
    return _Run(cfg, d, plan, store, order, denominators, model, optimizer, scheduler, tokenizer,
                start, log_path, feeder)


def _choose_attention(cfg: TrainConfig, model, d: Dist, plan: Plan) -> str | None:
    """Switch a packed CUDA run to `torch_varlen` when no --attn-implementation was given (see
    modeling/attention.py); refuse `--attn-implementation torch_varlen` on a model it cannot run.
    Returns the implementation the trainer chose itself, or None."""
    if cfg.attn_implementation == attention.NAME:
        why = attention.supported(model.config)
        if why:
            raise ConfigError(f"--attn-implementation {attention.NAME}: {type(model).__name__} "
                              f"cannot use it ({why}); choose sdpa or flash_attention_2")
    chosen = attention.default_for(model, d.device, plan.packing, cfg.attn_implementation)
    if chosen:
        attention.use(model, chosen)
    return chosen


def _optimizer_step(run: _Run, step: int) -> dict:
    """Forward and backward over this rank's micro-batches of `step`, then one optimizer step.
    Returns the step's log record (losses reduced over all ranks)."""
    cfg, d, plan, model = run.cfg, run.d, run.plan, run.model
    began = time.perf_counter()
    denominator = float(run.denominators[run.order.step_records(step)].sum())
    scale = d.world / denominator
    sums = torch.zeros(6, dtype=torch.float64, device=d.device)
    roles = RoleTally(run.store.role_names, d.device)  # conversation weights: a loss per role
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda"
                else nullcontext())
    micro = run.upcoming.pop(step, None) or _micro_batches(run.order, step, d, plan, run.store)
    upcoming = _micro_batches(run.order, step + 1, d, plan, run.store) if step + 1 < plan.steps else []
    run.upcoming[step + 1] = upcoming  # packed once; its first micro-batch is collated ahead
    real_tokens = 0
    for j, batch in enumerate(run.feeder.batches(micro, upcoming[0] if upcoming else None)):
        last = j == len(micro) - 1
        sync = nullcontext()
        if d.world > 1 and not last:
            sync = model.no_sync() if hasattr(model, "no_sync") else nullcontext()
        if d.world > 1 and cfg.fsdp:
            model.set_requires_gradient_sync(last)
        with sync:
            with autocast:
                sel = batch.selection  # chosen on the host: no device sync in this loop
                terms = as_terms(model(batch.input_ids, sel.targets, sel.weights, sel.prompt,
                                       attention_mask=batch.attention_mask,
                                       position_ids=batch.position_ids, index=sel.index,
                                       roles=sel.roles,
                                       **attention_kwargs(unwrap(model), batch)))
            (terms.weighted_sum * scale).backward()
        sums[:5] += torch.stack([terms.weighted_sum.detach(), terms.prompt_loss_sum,
                                 terms.prompt_count, terms.completion_loss_sum,
                                 terms.completion_count]).double()
        real_tokens += batch.real_tokens
        roles.add(terms)
        del terms
    sums[5] = real_tokens
    d.all_reduce_sum(sums)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
    check_step(step + 1, sums[0], denominator, grad_norm, cfg.output_dir)  # finite?
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if d.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - began
    s = sums.tolist()
    return {
        "step": step + 1,
        "loss": s[0] / denominator,
        "prompt_loss": s[1] / s[2] if s[2] else None,
        "completion_loss": s[3] / s[4] if s[4] else None,
        "lr": lr,
        "grad_norm": grad_norm_value(grad_norm),  # before clipping
        "tokens_per_s": round(s[5] / elapsed, 1),
        **roles.log(d),
    }


def grad_norm_value(norm) -> float:
    """The total gradient norm as a float (FSDP returns it as a DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _log_step(run: _Run, record: dict, on_step: StepCallback | None) -> None:
    if run.d.is_main:
        append_log(run.log_path, record)
        if on_step:
            on_step(record)


def _save_final(run: _Run) -> None:
    check_params(run.model, run.d, "the final model")
    save_final(run.cfg.output_dir, run.model, run.tokenizer, run.d)  # streamed, one tensor a time


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _sharded_from_rank0(cfg: TrainConfig, d: Dist) -> bool:
    """FSDP (or CPU offload) over several processes: only rank 0 reads the weights from disk; the
    others build the model on `meta` and receive their shards from rank 0 (modeling/wrap.py), so a
    machine with 8 GPUs holds one full fp32 copy in host memory, not 8."""
    return d.world > 1 and (cfg.fsdp or cfg.cpu_offload)


def _micro_batches(order: DataOrder, step: int, d: Dist, plan: Plan, store) -> list[np.ndarray]:
    """This rank's micro-batches for `step`: fixed-size slices, or its records packed by token
    budget. Packed counts are padded to the largest rank's (every rank computes every rank's
    packing, so no communication is needed), since FSDP needs the same number of forwards."""
    if not plan.packing:
        return order.micro_batches(step, d.rank)
    per_rank = [np.concatenate(order.micro_batches(step, r)) for r in range(d.world)]
    packed = [pack_records(records, store.lengths, plan.max_tokens) for records in per_rank]
    most = max(1, max(len(p) for p in packed))
    mine = packed[d.rank]
    return mine + [np.zeros(0, dtype=np.int64)] * (most - len(mine))
