"""The weighted-loss trainer for Hugging Face causal LMs (one process, DDP, or FSDP via torchrun).

Normalisation is exact: an optimizer step's loss is sum(w * loss) / sum(w) over all micro-batches
of all ranks of that step (or / token count with `loss_norm="tokens"`). The denominator is a
property of the data, known before the forward passes, so each micro-batch's backward is scaled by
world / denominator and data-parallel gradient averaging then yields the exact step mean.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from alpaca_plw.batches import DataOrder, SequenceStore, collate
from alpaca_plw.checkpoint import STATE_FILE, latest_checkpoint, save_final, save_pretrained_dir
from alpaca_plw.distributed import Dist, setup
from alpaca_plw.errors import ConfigError, TokenizerError
from alpaca_plw.model import WeightedCausalLM, as_terms
from alpaca_plw.packing import collate_packed, pack_records
from alpaca_plw.train_config import TrainConfig
from alpaca_plw.weights_store import read_weights_dir

LOG_FILE = "log.jsonl"
StepCallback = Callable[[dict], None]


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

    def to_json(self) -> dict:
        return asdict(self)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _check_tokenizer(cfg: TrainConfig, meta: dict) -> str:
    """The tokenizer directory to save with the model, after checking it matches the weights."""
    from alpaca_plw.tokenizer import load_tokenizer

    source = cfg.tokenizer or cfg.model
    try:
        identity = load_tokenizer(source).identity()
    except TokenizerError as exc:
        raise TokenizerError(f"--model {cfg.model}: no usable tokenizer ({exc}); pass --tokenizer DIR") from None
    expected = meta.get("tokenizer", {})
    if identity["vocab_sha256"] != expected.get("vocab_sha256"):
        raise TokenizerError(
            f"tokenizer mismatch: {cfg.weights_dir} was made with {expected.get('name')!r} "
            f"(vocab {expected.get('vocab_sha256')}, {expected.get('vocab_size')} pieces) but "
            f"{source} has {identity['name']!r} (vocab {identity['vocab_sha256']}, "
            f"{identity['vocab_size']} pieces); rebuild the weights with --tokenizer {source}")
    return source


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


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 (the recipe's schedule)."""
    if step < warmup:
        return (step + 1) / (warmup + 1) if warmup else 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _load_model(cfg: TrainConfig, source: str | Path, max_id: int):
    from transformers import AutoModelForCausalLM

    name = str(source)
    path = Path(name).expanduser()
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ConfigError(f"--model {name}: no such directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--model {name}: cannot load a causal LM ({first}). Offline, pass a local directory "
            "written by save_pretrained") from None
    vocab = model.get_input_embeddings().num_embeddings
    if max_id >= vocab:
        raise ConfigError(f"--model {name}: embedding has {vocab} rows but the weights dataset uses "
                          f"token id {max_id}; the data was made for another vocabulary")
    return model


def _wrap(model, cfg: TrainConfig, d: Dist):
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = WeightedCausalLM(model, cfg.loss_chunk or None)
    model.to(d.device)
    if cfg.compile:
        model.model.compile()
    if d.world == 1:
        return model
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in getattr(model.model.get_decoder(), "layers", []):
            fully_shard(layer)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def _state_dicts(model, optimizer, d: Dist):
    """Full (unsharded) state dicts, gathered: the Hugging Face model's (keys as `save_pretrained`
    expects them) and the optimizer's."""
    if d.world == 1:
        model_state, optim_state = model.state_dict(), optimizer.state_dict()
    else:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=opts)
        optim_state = get_optimizer_state_dict(model, optimizer, options=opts)
    prefix = "model."
    model_state = {k.removeprefix("module.").removeprefix("_orig_mod.").removeprefix(prefix): v
                   for k, v in model_state.items()}
    return model_state, optim_state


def _load_states(model, optimizer, state: dict, d: Dist) -> None:
    if d.world == 1:
        optimizer.load_state_dict(state["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state["optimizer"],
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def _unwrap(model):
    """The Hugging Face model inside the DDP and WeightedCausalLM wrappers."""
    return getattr(model, "module", model).model


def _append_log(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _trim_log(path: Path, last_step: int) -> None:
    """On resume, keep the log lines of the steps the checkpoint contains."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in lines))


def train(cfg: TrainConfig, on_step: StepCallback | None = None,
          on_plan: Callable[[Plan], None] | None = None) -> Plan:
    """Train `cfg.model` on `cfg.weights_dir`; returns the plan (also for a dry run).

    `on_step(record)` is called on rank 0 after every optimizer step with the log record.
    """
    _quiet_transformers()
    d = setup(cfg.device)
    data = read_weights_dir(cfg.weights_dir)
    tokenizer_dir = _check_tokenizer(cfg, data.meta)
    if cfg.output_dir.exists() and not cfg.resume and not cfg.dry_run and not cfg.force \
            and any(cfg.output_dir.iterdir()):
        raise ConfigError(f"--output-dir {cfg.output_dir}: not empty; pass --resume to continue "
                          "from its last checkpoint or --force to train into it anyway")
    store = SequenceStore.from_weights(data)
    plan = make_plan(cfg, store, data.meta, d)
    if cfg.resume and plan.resume_from is None:
        raise ConfigError(f"--resume: no checkpoint-* folder in {cfg.output_dir}")
    if on_plan and d.is_main:
        on_plan(plan)
    if cfg.dry_run:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(cfg.model)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--model {cfg.model}: cannot read its config ({exc})") from None
        return plan
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(cfg.seed)
    source = plan.resume_from or cfg.model
    model = _wrap(_load_model(cfg, source, int(store.ids.max())), cfg, d)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=d.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, plan.warmup_steps, plan.steps))
    start = 0
    if plan.resume_from:
        state = torch.load(Path(plan.resume_from) / STATE_FILE, weights_only=False)
        _load_states(model, optimizer, state, d)
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
    order = DataOrder(len(store), cfg.seed, cfg.micro_batch_size, plan.grad_accum, d.world)
    denominators = store.target_weight_sums() if cfg.loss_norm == "weight" else \
        store.target_counts().astype(np.float64)
    log_path = cfg.output_dir / LOG_FILE
    if d.is_main:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        _trim_log(log_path, start) if start else log_path.unlink(missing_ok=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda"
                else nullcontext())
    pad_id = hf_tokenizer.pad_token_id or 0
    for step in range(start, plan.steps):
        began = time.perf_counter()
        denominator = float(denominators[order.step_records(step)].sum())
        scale = d.world / denominator
        sums = torch.zeros(6, dtype=torch.float64, device=d.device)
        micro = _micro_batches(order, step, d, plan, store)
        for j, indices in enumerate(micro):
            batch = (collate_packed if plan.packing else collate)(store, indices, pad_id).to(d.device)
            last = j == len(micro) - 1
            sync = nullcontext()
            if d.world > 1 and not last:
                sync = model.no_sync() if hasattr(model, "no_sync") else nullcontext()
            if d.world > 1 and cfg.fsdp:
                model.set_requires_gradient_sync(last)
            with sync:
                with autocast:
                    terms = as_terms(model(batch.input_ids, batch.targets, batch.weights,
                                           batch.prompt_mask, attention_mask=batch.attention_mask,
                                           position_ids=batch.position_ids))
                (terms.weighted_sum * scale).backward()
            sums += torch.stack([terms.weighted_sum.detach().double(), terms.prompt_loss_sum.double(),
                                 terms.prompt_count.double(), terms.completion_loss_sum.double(),
                                 terms.completion_count.double(),
                                 torch.tensor(float(batch.real_tokens), device=d.device,
                                              dtype=torch.float64)])
            del terms
        d.all_reduce_sum(sums)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - began
        s = sums.tolist()
        record = {
            "step": step + 1,
            "loss": s[0] / denominator,
            "prompt_loss": s[1] / s[2] if s[2] else None,
            "completion_loss": s[3] / s[4] if s[4] else None,
            "lr": lr,
            "tokens_per_s": round(s[5] / elapsed, 1),
        }
        if d.is_main:
            _append_log(log_path, record)
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < plan.steps:
            _save(cfg.output_dir / f"checkpoint-{step + 1}", model, optimizer, scheduler,
                  hf_tokenizer, step + 1, d)
        if on_step and d.is_main:
            on_step(record)
    model_state, _ = _state_dicts(model, optimizer, d)
    if d.is_main:
        save_final(cfg.output_dir, _unwrap(model), model_state, hf_tokenizer)
    d.barrier()
    return plan


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


def _save(target: Path, model, optimizer, scheduler, tokenizer, step: int, d: Dist) -> None:
    model_state, optim_state = _state_dicts(model, optimizer, d)
    if d.is_main:
        extra = {"step": step, "optimizer": optim_state, "scheduler": scheduler.state_dict()}
        save_pretrained_dir(target, _unwrap(model), model_state, tokenizer, extra)
    d.barrier()
