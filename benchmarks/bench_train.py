"""Trainer throughput: the common weighted-prompt-loss recipe against alpaca-plw's trainer, side by side.

For each model shape (LLaMA architecture, random init, the same saved model for both sides) and the
same loss-weights data, both sides run the same optimizer steps on the same records:

  (a) baseline, the common recipe (`--baseline`, default auto: TRL where `trl` and `datasets`
      import, the hand loop otherwise; the JSON names the one that ran in `baseline`,
      `baseline_recipe` and `baseline_settings`, and why auto fell back in `baseline_fallback`):
      trl   TRL's `SFTTrainer` with the defaults of the installed trl, fed the same records: the
            saved model loaded by TRL from its path (float32, TRL's default), the records
            pre-tokenized from the same weights store (identical tokens) with labels -100 on the
            prompt, as TRL builds them for prompt-completion data (completion-only loss); TRL's
            collator right-pads each micro-batch; its fused LM head scores the labelled positions
            only, in chunks; the loss is the token mean over the step's completion tokens; AdamW
            (TRL's `adamw_torch_fused`), lr 2e-5, clipping at 1.0, gradient checkpointing ON (TRL's
            default, kept), bf16 autocast on CUDA. Changed from TRL's defaults, because the
            side-by-side contract needs it (`baseline_settings.changed`): the sampler (the common
            order instead of random), the geometry (--micro, --batch/--micro, --steps), the
            schedule (cosine instead of linear), `max_length` None (the records are already cut at
            --max-length; TRL's cut at 1024 would shorten longer ones and drop those it leaves
            without a completion token), bf16 off on CPU, no checkpoint saving, no progress bar
            (nor its log lines on stdout). TRL HAS NO PROMPT LOSS WEIGHT: it optimises PLW 0 (the
            prompt left out), so `loss_baseline` is a completion-only loss; compare it with
            `loss_step1_plw_completion` / `loss_plw_completion`, the trainer's completion loss on
            the same records (the plw side still trains at the weights' PLW).
      hand  a hand loop written to what the Hugging Face `Trainer` does by default with a model
            that computes its own loss: right-padded micro-batches of --micro sequences (the
            collator pads to the longest row), bf16 autocast on CUDA, the full-vocabulary logits
            upcast to fp32 (as `ForCausalLMLoss` does), per-token cross-entropy, AdamW (fused on
            CUDA), a cosine schedule without warm-up, gradient clipping at 1.0, no gradient
            checkpointing unless --gradient-checkpointing (then on both sides). The prompt loss
            weights make it the common PLW recipe: a weighted mean per micro-batch, divided by the
            accumulation steps. It reads its losses once per step.
      The loss normalisation does not change the work done; TRL's gradient checkpointing (a second
      forward) and its LM head over completion positions only do (both are TRL's defaults).
  (b) alpaca-plw: `alpaca_plw.train.trainer.train` (packing by --max-tokens, chunked weighted CE,
      exact step mean; the same optimizer, schedule and clipping; the attention the trainer
      chooses, recorded as `plw_attention`).

Same on both sides, by construction and checked at run time:
  - records per optimizer step: one `DataOrder` (seed 42, --micro x --batch/--micro), so both sides
    see equal real tokens per optimizer step (`tokens_per_step`); the real tokens each baseline
    step fed its model are counted and must equal the order's (`step_real_tokens`);
  - order: the sides alternate (baseline, plw, plw, baseline, ... over --rounds; the first side
    alternates per shape), so warm caches or clock boosts favour neither; `run_order` records it
    and `*_tok_s_rounds` each run, the headline figures being the median per side;
  - throughput: real tokens (padding excluded) of the timed steps / wall time of the timed steps,
    timed from the end of the last warm-up step to the end of the last step (`torch.cuda.synchronize`
    at every step end); the first --warmup steps are excluded on both sides;
  - host reads: one per optimizer step on the trainer and the hand loop (it accumulates its loss
    sums on the device and reads them once, after the run); TRL reads its metrics per micro-batch
    (entropy, token accuracy, token count) and checks each loss for NaN, as it ships;
  - FLOPs: per token 6 N + 12 x layers x hidden x l, where l is the REAL length of the token's own
    record on both sides (the baseline's padding and any cross-record attention are not credited;
    not halved for causality). N = all parameters except the input embedding matrix; the LM head
    (untied in these shapes) IS included. Both sides therefore get the same FLOPs per step, and
    plw MFU / baseline MFU = speedup;
  - MFU against 989 TFLOP/s (H200 dense bf16 spec: `mfu`, `baseline_mfu`) and 790 TFLOP/s (the
    matmul peak measured on this H200: `mfu_measured_peak`, `baseline_mfu_measured_peak`); only on
    CUDA (on CPU the achieved TFLOP/s are reported and the MFU fields are null);
  - peak memory per side (`torch.cuda.max_memory_allocated`, reset before each run; null on CPU);
  - losses per side after the same steps (exact weighted step mean; step 1 runs before any update,
    so its two losses agree up to kernels and chunking: `loss_step1_*`).

Shapes (LLaMA, vocabulary 32,000, untied head; sizes for one H200, 141 GB):
  tiny  hidden 64, 2 layers, 4 heads (head_dim 16): the CPU smoke shape;
  1.1b  TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads, 4 kv heads, MLP 5632 (head_dim 64);
  3b    a 3B shape with head_dim 128 (Llama-3.2-3B's geometry): hidden 3072, 28 layers, 24 heads,
        8 kv heads, MLP 8192;
  7b    Llama-2-7B: hidden 4096, 32 layers, 32 heads, 32 kv heads, MLP 11008 (head_dim 128); fp32
        weights + gradients + AdamW take ~108 GB, so on one H200 run it with
        --gradient-checkpointing (and --micro 4 or less).
Every head_dim is a multiple of 8, so sdpa keeps its flash / memory-efficient kernels in bf16.

Device check (`--device-check`, CPU only, for CI): the run executes on the CPU under
`HostTensorCheck`, which treats the CPU as two devices: tensors made on the host (from numpy,
factories without `device=`, `.cpu()`) stay "host" until `.to(device)` moves them, and an operation
mixing a host tensor (more than 0-dim) with a device tensor raises `DeviceMismatch`, as CUDA would.
Both sides run end to end under it (loading, start-up checks, every micro-batch, the optimizer),
so a tensor left on the host while the model is on the GPU fails on a machine without one.
Not covered: the CUDA-only branches (pinned memory, the trainer's background collation, autocast).
The TRL side runs under it too, but there the inputs are moved by accelerate's data loader and
the loss is TRL's: the check then tests TRL and accelerate, not code of this file, except the
token and loss sums the bench keeps on the device.

Paths are flags (the GPU machine has no ../shared): --data (an Alpaca JSON, made into weights here
with PLW --plw, cut at --max-length) or --weights (a folder written by `alpaca-plw weights`), and
--tokenizer (a LLaMA tokenizer folder, copied into each model folder). Defaults: ../shared beside the
checkout when it exists. `datasets` and `trl` are imported only for the TRL side (the GPU image
has neither: auto falls back to the hand loop and says so). Nothing is downloaded.

GPU:        python benchmarks/bench_train.py --shapes 1.1b,3b --data D/alpaca_data.json --tokenizer D/llama
CPU smoke:  python benchmarks/bench_train.py --shapes tiny --records 256 --steps 4 --warmup 1 --batch 16 --micro 4 --device-check
            (add --baseline hand or --baseline trl to choose the common recipe's side)
Writes JSON (a list, one object per shape, rewritten after every shape) to --out, default
benchmarks/results/train_<cuda|cpu>.json. A shape that fails (out of memory, say) is written as
{"shape", "error"} and the next shape still runs; the exit status is then 1.

From another script (one shape, returns the JSON object; see `run_shape`):
    weights = prepare_weights(data_json, tokenizer_dir, work_dir / "weights", records=2000)
    result = run_shape("1.1b", weights, tokenizer_dir, BenchOptions(steps=6, warmup=2))
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alpaca_plw.data.weights_dir.read import read_weights_dir  # noqa: E402
from alpaca_plw.train.batching.batches import (DataOrder, MicroBatch, SequenceStore,  # noqa: E402
                                               collate)
from alpaca_plw.train.config import ATTN_IMPLEMENTATIONS, TrainConfig  # noqa: E402
from alpaca_plw.train.batching.packing import pack_records  # noqa: E402
from alpaca_plw.train.trainer import train  # noqa: E402

SHARED = REPO.parent / "shared"
PEAK_SPEC, PEAK_MEASURED = 989.0, 790.0  # TFLOP/s: H200 dense bf16 spec; measured bf16 matmul
SEED = 42
SIDES = ("baseline", "plw")
BASELINE_RECIPE = ("hand loop, Hugging Face Trainer defaults (right padding, fp32 logits, bf16 "
                   "autocast on CUDA, AdamW, cosine, clip 1.0), PLW-weighted mean per micro-batch")
TRL_RECIPE = ("TRL SFTTrainer with its defaults (right padding, -100 labels on the prompt: "
              "completion-only loss, i.e. PLW 0; fused chunked LM head; token mean over the step; "
              "gradient checkpointing; AdamW fused; clip 1.0; bf16 on CUDA), fed the common order, "
              "cosine schedule")
BASELINES = ("auto", "trl", "hand")
PACKED_ONLY = ("torch_varlen",)  # the baseline pads; it keeps the model's default for these
SHAPES = {  # see the module docstring for what each one stands for
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128),
    "1.1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, intermediate_size=5632),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, intermediate_size=8192),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=11008),
}


class BenchError(Exception):
    """Bad input or a broken comparison; main prints it as one line."""


@dataclass(frozen=True)
class BenchOptions:
    """How each shape is measured; the CLI flag of each field is named in its error."""

    steps: int = 12
    warmup: int = 2
    batch: int = 128  # sequences per optimizer step
    micro: int = 8  # sequences per micro-batch
    max_length: int = 512  # the packed budget's default is micro x max_length
    max_tokens: int = 0  # alpaca-plw packed budget (0: micro x max_length)
    attn_implementation: str | None = None  # None: each side's default (the trainer picks its own)
    compile: bool = False  # alpaca-plw side only
    gradient_checkpointing: bool = False  # both sides
    rounds: int = 1  # runs per side, alternating
    device_check: bool = False  # CPU run under HostTensorCheck
    baseline: str = "auto"  # the common recipe's side: trl, hand, or auto (trl when importable)

    def __post_init__(self):
        checks = [
            (1 <= self.warmup < self.steps,
             "need 1 <= --warmup < --steps (timing starts at the end of the last warm-up step)"),
            (self.micro >= 1 and self.batch >= 1 and self.batch % self.micro == 0,
             "--batch must be a positive multiple of --micro"),
            (self.max_tokens == 0 or self.max_tokens >= 2, "--max-tokens must be 0 or at least 2"),
            (self.rounds >= 1, "--rounds must be at least 1"),
            (self.attn_implementation in (None, *ATTN_IMPLEMENTATIONS),
             f"--attn-implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}"),
            (not (self.device_check and self.compile), "--device-check cannot run with --compile"),
            (self.baseline in BASELINES, f"--baseline must be one of {', '.join(BASELINES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchError(message)

    @property
    def accum(self) -> int:
        return self.batch // self.micro

    @property
    def budget(self) -> int:
        return self.max_tokens or self.micro * self.max_length


# --- the device check -----------------------------------------------------------------------------

class DeviceMismatch(RuntimeError):
    """A host tensor met a device tensor in one operation (CUDA refuses that)."""


_HOST = "_bench_on_host"
_CROSS = {torch.Tensor.copy_, torch.Tensor.__getitem__, torch.Tensor.__setitem__,
          torch.Tensor.index_put_}  # device self with host indices/values: allowed on CUDA too


def _on_host(t) -> bool:
    return (isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter)
            and t.__dict__.get(_HOST, False))


def _place(out, host: bool) -> None:
    for t in tree_leaves(out):
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter):
            t.__dict__[_HOST] = host


def _describe(tensors) -> str:
    return ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in tensors)


class HostTensorCheck(TorchFunctionMode):
    """A second device on a CPU-only machine, for `--device-check`.

    Host tensors: made from numpy (`torch.from_numpy`, patched while the check is on, as torch
    does not route it through modes) or Python data, by a factory without `device=`, or read back
    with `.cpu()`. `.to(...)`/`.cuda()` with a device puts a copy on the device (a fresh object
    when the CPU would return the same one, so the host original stays host); outputs of an
    operation are host when all its tensor inputs are. Parameters are device tensors (a model is
    moved as a whole). An operation with a device tensor and a host tensor of more than 0
    dimensions raises `DeviceMismatch`, except copies and indexing a device tensor with host
    indices, which CUDA accepts too.

        with HostTensorCheck():
            logits = model(input_ids.to(device)).logits
            F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # targets never moved: raises
    """

    def __enter__(self):
        self._from_numpy = torch.from_numpy  # torch does not route it through modes

        def from_numpy(array):
            out = self._from_numpy(array)
            _place(out, host=True)
            return out

        torch.from_numpy = from_numpy
        return super().__enter__()

    def __exit__(self, *exc):
        torch.from_numpy = self._from_numpy
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cuda) and _names_device(func, args, kwargs):
            return _fresh(out, args[0], host=False)
        if func is torch.Tensor.cpu:
            return _fresh(out, args[0], host=True)
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not tensors:  # a factory: on the host unless told otherwise
            _place(out, host=kwargs.get("device") is None)
            return out
        if func in _CROSS:
            host = _on_host(args[0])
            moved = [t for t in tensors[1:] if not _on_host(t) and t.dim()]
            if host and moved and func is not torch.Tensor.copy_:
                raise DeviceMismatch(f"{_name(func)}: a host tensor indexed by device tensors "
                                     f"({_describe(moved)})")
            _place(out, host)
            return out
        host = [t for t in tensors if _on_host(t)]
        device = [t for t in tensors if not _on_host(t)]
        stray = [t for t in host if t.dim()]
        if device and stray:
            raise DeviceMismatch(f"{_name(func)}: host tensor(s) {_describe(stray)} used with "
                                 f"device tensor(s) {_describe(device[:2])}; move them with "
                                 ".to(device)")
        _place(out, host=not device and kwargs.get("device") is None)
        return out


def _names_device(func, args, kwargs) -> bool:
    if func is torch.Tensor.cuda:
        return True
    return kwargs.get("device") is not None or any(
        isinstance(a, (str, torch.device, torch.Tensor)) for a in args[1:])


def _fresh(out, source, host: bool):
    if out is source:
        out = out.clone()
    _place(out, host)
    return out


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))


# --- models ---------------------------------------------------------------------------------------

def llama_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
                       **SHAPES[shape])


def non_embedding_params(shape: str) -> int:
    """N: every parameter but the input embedding matrix (the untied LM head counts), on meta."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(shape))
    return sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()


def build_model_dir(shape: str, directory: Path, tokenizer: Path, device: str) -> None:
    """A random-init model saved in bf16 (half the disk and load time); both sides load it
    as fp32."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU when there is one (fast for 3B and 7B)
        model = LlamaForCausalLM(llama_config(shape))
    model.to(torch.bfloat16).save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, directory / name)
    del model


def step_end(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


# --- the two sides --------------------------------------------------------------------------------

def device_tensors(batch: MicroBatch, device: str) -> tuple[torch.Tensor, ...]:
    """What the baseline reads, on `device`: input ids, attention mask, targets, weights [B, T].

    `MicroBatch.to` moves only what the trainer reads (its targets arrive as a host-chosen
    selection), so the dense targets and weights are moved here, explicitly."""
    tensors = (batch.input_ids, batch.attention_mask, batch.targets, batch.weights)
    if device == "cuda":
        tensors = tuple(t.pin_memory() for t in tensors)  # the Trainer's dataloader pins too
    return tuple(t.to(device, non_blocking=True) for t in tensors)


def baseline(model_dir: Path, store: SequenceStore, order: DataOrder, opts: BenchOptions,
             device: str) -> dict:
    """The common recipe. Returns step-end times, exact step-mean losses, real tokens per step and
    the attention implementation it ran."""
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    torch.manual_seed(SEED)
    attn = None if opts.attn_implementation in PACKED_ONLY else opts.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn).to(device)
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0,
                                  fused=device == "cuda")
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, opts.steps)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else None
    ends, sums, tokens = [], [], []
    for step in range(opts.steps):
        real = 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        weight_sum = torch.zeros((), dtype=torch.float64, device=device)
        micro = order.micro_batches(step, 0)
        for indices in micro:
            batch = collate(store, indices)
            input_ids, attention_mask, targets, weights = device_tensors(batch, device)
            with autocast or torch.enable_grad():
                logits = model(input_ids=input_ids, attention_mask=attention_mask,
                               use_cache=False).logits
            per_token = criterion(logits.float().view(-1, logits.size(-1)), targets.view(-1))
            weights = weights.view(-1)
            weighted, total = (per_token * weights).sum(), weights.sum()
            (weighted / total / len(micro)).backward()  # the recipe: mean per micro-batch
            loss_sum += weighted.detach()  # the exact step mean is reported (read once per step)
            weight_sum += total
            real += batch.real_tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(step_end(device))
        sums.append(loss_sum / weight_sum)
        tokens.append(real)
    used = getattr(model.config, "_attn_implementation", attn)
    del model, optimizer
    return {"ends": ends, "losses": [float(s) for s in sums], "tokens": tokens, "attention": used}


def alpaca_plw(model_dir: Path, weights: Path, work: Path, opts: BenchOptions, device: str) -> dict:
    """The trainer on the same data and steps. Returns step-end times, losses, its plan."""
    ends, losses, completion = [], [], []

    def on_step(record: dict) -> None:
        ends.append(step_end(device))  # the trainer synchronises CUDA before returning a step
        losses.append(record["loss"])
        completion.append(record["completion_loss"])  # what TRL's side optimises (PLW 0)

    cfg = TrainConfig(weights_dir=weights, model=str(model_dir), output_dir=work / "run",
                      micro_batch_size=opts.micro, grad_accum=opts.accum, max_steps=opts.steps,
                      lr=2e-5, warmup_ratio=0.0, seed=SEED, packing=True, max_tokens=opts.budget,
                      device=device, attn_implementation=opts.attn_implementation,
                      compile=opts.compile, gradient_checkpointing=opts.gradient_checkpointing)
    try:
        plan = train(cfg, on_step=on_step)
    finally:
        shutil.rmtree(work / "run", ignore_errors=True)
    return {"ends": ends, "losses": losses, "completion_losses": completion, "plan": plan,
            "attention": getattr(plan, "attention", None)}


# --- the TRL side ---------------------------------------------------------------------------------

def trl_missing() -> str | None:
    """Why TRL's side cannot run in this environment (None when it can): `trl` or `datasets`
    (which `SFTTrainer` needs) does not import."""
    try:
        import datasets  # noqa: F401
        from trl import SFTConfig, SFTTrainer  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def trl_obstacle(store: SequenceStore, order: DataOrder, opts: BenchOptions) -> str | None:
    """Why TRL's side cannot take the common records here (None when it can)."""
    missing = trl_missing()
    if missing:
        return missing
    if store.roles is not None:
        return ("conversation weights: TRL's completion-only labels need one prompt per record; "
                "these records interleave roles")
    for step in range(opts.steps):
        sizes = {len(m) for m in order.micro_batches(step, 0)}
        if sizes != {opts.micro}:
            return (f"step {step + 1} crosses the end of an epoch ({len(store)} records, --batch "
                    f"{opts.batch}) and has micro-batches of {sorted(sizes)} records: TRL's "
                    f"sampler batches by --micro {opts.micro}; use fewer --steps")
    return None


def choose_baseline(requested: str, store: SequenceStore, order: DataOrder,
                    opts: BenchOptions) -> tuple[str, str | None]:
    """The baseline that runs ("trl" or "hand") and, when auto fell back to the hand loop, why.

    `requested` "hand" runs the hand loop, "trl" TRL's side or BenchError saying why it cannot,
    "auto" TRL's side where it can run, the hand loop otherwise."""
    if requested == "hand":
        return "hand", None
    obstacle = trl_obstacle(store, order, opts)
    if obstacle is None:
        return "trl", None
    if requested == "trl":
        raise BenchError(f"--baseline trl: {obstacle}; pass --baseline hand (or auto)")
    return "hand", f"auto: TRL's side cannot run here ({obstacle}); ran the hand loop"


def trl_dataset(store: SequenceStore):
    """Every record of `store` as a `datasets.Dataset` of `input_ids` and `labels` (int64 lists):
    the same tokens, labels -100 on the prompt, which is what TRL builds from prompt-completion
    data (its default completion-only loss); TRL passes a tokenized dataset with labels as is.

        ids [1, 50, 51, 60, 2], prompt_length 3  ->  labels [-100, -100, -100, 60, 2]
    """
    import datasets
    import pyarrow as pa

    if store.offsets[-1] >= 2**31:
        raise BenchError(f"{store.offsets[-1]:,} tokens: too many for one Arrow list column; "
                         "pass fewer --records")
    start = np.repeat(store.offsets[:-1], store.lengths)
    prompt = np.repeat(store.prompt_length, store.lengths)
    labels = np.where(np.arange(store.ids.size) - start >= prompt, store.ids, -100)
    offsets = pa.array(store.offsets, pa.int32())
    schema = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64()))])
    table = pa.Table.from_arrays(
        [pa.ListArray.from_arrays(offsets, pa.array(store.ids, pa.int64())),
         pa.ListArray.from_arrays(offsets, pa.array(labels, pa.int64()))], schema=schema)
    return datasets.Dataset(table)


class FixedOrder(torch.utils.data.Sampler):
    """The record indices of every micro-batch of the run, in order: the trainer's data loader
    batches them by --micro, so micro-batch j of step s holds `order.micro_batches(s, 0)[j]`."""

    def __init__(self, order: DataOrder, steps: int):
        self.indices = np.concatenate(
            [m for s in range(steps) for m in order.micro_batches(s, 0)]).tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# SFTConfig fields set here, and why (everything else is the installed trl's default)
TRL_CHANGED = {
    "train sampler": "the common DataOrder (seed 42) instead of TRL's random sampler",
    "per_device_train_batch_size, gradient_accumulation_steps, max_steps": "--micro, --batch / "
    "--micro, --steps",
    "lr_scheduler_type": "cosine, the common schedule (TRL's default: linear)",
    "max_length": "None (TRL's default: 1024): the records are already cut at --max-length; a "
    "second cut at 1024 would shorten longer records and drop those it leaves without a completion "
    "token, changing what a step holds",
    "bf16": "on CUDA only (TRL's default: on); the CPU run is fp32 on every side",
    "save_strategy": "no: no checkpoint inside the timed steps",
    "disable_tqdm": "true: no progress bar (display only)",
}


def trl_config(run_dir: Path, opts: BenchOptions, device: str):
    """TRL's `SFTConfig` for the common geometry: its defaults but for `TRL_CHANGED`."""
    from trl import SFTConfig

    attn = None if opts.attn_implementation in PACKED_ONLY else opts.attn_implementation
    with warnings.catch_warnings():  # TRL's own default field, renamed in transformers 5.25
        warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)
        return SFTConfig(
            output_dir=str(run_dir), per_device_train_batch_size=opts.micro,
            gradient_accumulation_steps=opts.accum, max_steps=opts.steps,
            lr_scheduler_type="cosine", max_length=None, bf16=device == "cuda",
            save_strategy="no", disable_tqdm=True, seed=SEED,
            model_init_kwargs={"attn_implementation": attn} if attn else None)


def trl_baseline(model_dir: Path, store: SequenceStore, order: DataOrder, opts: BenchOptions,
                 device: str, work: Path) -> dict:
    """TRL's `SFTTrainer` on the common order. Returns step-end times, its own loss per step (the
    completion-only token mean), the real tokens each step fed the model, the attention it ran and
    its effective settings (`baseline_settings`)."""
    import trl
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer

    if device == "cuda" and torch.cuda.device_count() > 1:
        raise BenchError("the TRL side runs on one GPU: set CUDA_VISIBLE_DEVICES to one device")
    ends: list[float] = []
    sums = torch.zeros(opts.steps, 2, dtype=torch.float64, device=device)  # loss, real tokens

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(step_end(device))  # after the optimizer step, as on the other sides

    class OrderedSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return FixedOrder(order, opts.steps)

        def training_step(self, model, inputs, num_items_in_batch=None):
            tokens = inputs["attention_mask"].sum()  # what reaches the model; read after the run
            loss = super().training_step(model, inputs, num_items_in_batch)
            sums[self.state.global_step] += torch.stack([loss.double(), tokens.double()])
            return loss

    run_dir = work / "trl-run"
    try:  # TRL seeds itself (`set_seed(args.seed)`, 42)
        trainer = OrderedSFTTrainer(model=str(model_dir), args=trl_config(run_dir, opts, device),
                                    train_dataset=trl_dataset(store), callbacks=[StepEnds()])
        trainer.remove_callback(PrinterCallback)  # its logs would go to stdout, the table's
        trainer.train()
        settings = _trl_settings(trainer, trl.__version__)
        del trainer
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    losses, tokens = zip(*sums.tolist())  # the one read of the run
    return {"ends": ends, "losses": list(losses), "tokens": [int(t) for t in tokens],
            "attention": settings["attn_implementation"], "settings": settings}


def _trl_settings(trainer, version: str) -> dict:
    """The settings TRL's side ran with, read back from the trainer (not restated)."""
    a, model = trainer.args, trainer.model
    value = lambda v: getattr(v, "value", v)  # noqa: E731 - enums as their strings
    checkpointing = bool(model.is_activation_checkpointing  # transformers >= 5.25's name
                         if hasattr(type(model), "is_activation_checkpointing")
                         else model.is_gradient_checkpointing)
    return {
        "trl_version": version,
        "per_device_train_batch_size": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps, "max_steps": a.max_steps,
        "learning_rate": a.learning_rate, "lr_scheduler_type": value(a.lr_scheduler_type),
        "warmup_steps": a.warmup_steps, "optim": value(a.optim), "weight_decay": a.weight_decay,
        "max_grad_norm": a.max_grad_norm, "bf16": a.bf16,
        "gradient_checkpointing": checkpointing,
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "max_length": a.max_length, "packing": a.packing, "padding_free": trainer.padding_free,
        "pad_to_multiple_of": a.pad_to_multiple_of, "loss_type": a.loss_type,
        "completion_only_loss": "labels -100 on the prompt (TRL's default for prompt-completion "
                                "data): PLW 0, the prompt is not trained",
        "loss": "sum of completion-token NLL / completion tokens of the whole step (TRL's fused "
                "LM head over the labelled positions, in chunks)",
        "use_liger_kernel": a.use_liger_kernel, "activation_offloading": a.activation_offloading,
        "dataloader_pin_memory": a.dataloader_pin_memory, "logging_steps": a.logging_steps,
        "seed": a.seed, "changed": TRL_CHANGED,
    }


def hand_settings(opts: BenchOptions, device: str) -> dict:
    """The hand loop's settings, in the keys of `_trl_settings` where they mean the same."""
    return {
        "per_device_train_batch_size": opts.micro, "gradient_accumulation_steps": opts.accum,
        "max_steps": opts.steps, "learning_rate": 2e-5, "lr_scheduler_type": "cosine",
        "warmup_steps": 0, "optim": "adamw_torch_fused" if device == "cuda" else "adamw_torch",
        "weight_decay": 0.0, "max_grad_norm": 1.0, "bf16": device == "cuda",
        "gradient_checkpointing": opts.gradient_checkpointing, "model_dtype": "float32",
        "padding": "right, to the longest row of each micro-batch",
        "loss": "PLW-weighted cross-entropy over full fp32 logits, mean per micro-batch / "
                "accumulation steps",
    }


# --- one shape ------------------------------------------------------------------------------------

def run_order(first: str, rounds: int) -> list[str]:
    """The sides in run order: `first`, the other, then reversed each round (ABBA...)."""
    if first not in SIDES:
        raise BenchError(f"first side must be one of {', '.join(SIDES)}, not {first!r}")
    pair = [first, SIDES[1 - SIDES.index(first)]]
    return [side for r in range(rounds) for side in (pair if r % 2 == 0 else pair[::-1])]


def run_shape(shape: str, weights: Path, tokenizer: Path, options: BenchOptions | None = None, *,
              device: str | None = None, first: str = "baseline", work: Path | None = None) -> dict:
    """Measure both sides on one model shape; returns the shape's JSON object (see the docstring).

    `shape`: a key of SHAPES; `weights`: an `alpaca-plw weights` folder (`prepare_weights` makes
    one); `tokenizer`: the LLaMA tokenizer folder the weights were made with; `device`: "cuda" or
    "cpu" (default: cuda when available, cpu for `options.device_check`); `first`: the side that
    runs first ("baseline" or "plw"); `work`: a scratch folder for the saved model (default: a
    temporary one, removed after). Raises BenchError on a broken comparison; errors of the run
    itself (out of memory, say) propagate.
    """
    opts = options or BenchOptions()
    device = device or ("cpu" if opts.device_check or not torch.cuda.is_available() else "cuda")
    if shape not in SHAPES:
        raise BenchError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    if opts.device_check and device != "cpu":
        raise BenchError("--device-check runs on the CPU (it stands in for a GPU)")
    sequence = run_order(first, opts.rounds)
    store = SequenceStore.from_weights(read_weights_dir(weights))
    order = DataOrder(len(store), SEED, opts.micro, opts.accum, 1)
    recipe, fallback = choose_baseline(opts.baseline, store, order, opts)
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="bench-train-")) if owned else Path(work)
    model_dir = work / f"model-{shape}"
    runs = {side: [] for side in SIDES}
    try:
        build_model_dir(shape, model_dir, Path(tokenizer), device)
        for side in sequence:
            runs[side].append(_run_side(side if side == "plw" else recipe, model_dir, store,
                                        order, Path(weights), work, opts, device))
    finally:  # a 7B model folder is 13 GB: never left behind
        shutil.rmtree(work if owned else model_dir, ignore_errors=True)
    row = _summarise(shape, store, order, opts, device, runs, sequence)
    settings = runs["baseline"][0].get("settings") or hand_settings(opts, device)
    named = {"shape": row.pop("shape"), "device": row.pop("device"), "baseline": recipe,
             "baseline_requested": opts.baseline, "baseline_fallback": fallback,
             "baseline_recipe": TRL_RECIPE if recipe == "trl" else BASELINE_RECIPE,
             "baseline_settings": settings}
    return {**named, **row}


def _run_side(side: str, model_dir, store, order, weights, work, opts, device) -> dict:
    """One run of `side`: "hand" or "trl" (the baseline) or "plw"."""
    if device == "cuda":  # the previous side's memory back, and a fresh peak
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    check = HostTensorCheck() if opts.device_check else None
    if check:
        check.__enter__()
    try:
        if side == "plw":
            result = alpaca_plw(model_dir, weights, work, opts, device)
        elif side == "trl":
            result = trl_baseline(model_dir, store, order, opts, device, work)
        else:
            result = baseline(model_dir, store, order, opts, device)
    finally:
        if check:
            check.__exit__(None, None, None)
    result["peak"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return result


def _summarise(shape, store, order, opts, device, runs, sequence) -> dict:
    steps, w = opts.steps, opts.warmup
    records = [order.step_records(s) for s in range(steps)]
    lengths = store.lengths.astype(np.int64)
    step_tokens = [int(lengths[r].sum()) for r in records]
    packed = [len(pack_records(r, lengths, opts.budget)) for r in records]
    padded = [sum(len(m) * int(lengths[m].max()) for m in order.micro_batches(s, 0) if len(m))
              for s in range(steps)]
    for b in runs["baseline"]:
        if b["tokens"] != step_tokens or len(b["ends"]) != steps:
            raise BenchError(f"the baseline saw other records than the common order: real tokens "
                             f"per step {b['tokens']}, the order's {step_tokens}")
    for p in runs["plw"]:
        plan = p["plan"]
        if not (plan.grad_accum == opts.accum and plan.micro_batch_size == opts.micro
                and plan.packing and len(p["ends"]) == steps):
            raise BenchError(f"the trainer ran another geometry than the baseline: {plan}")

    timed_tokens = sum(step_tokens[w:])
    tok_s = {side: [timed_tokens / (r["ends"][-1] - r["ends"][w - 1]) for r in runs[side]]
             for side in SIDES}
    median = {side: float(np.median(tok_s[side])) for side in SIDES}
    n = non_embedding_params(shape)
    layers, hidden = SHAPES[shape]["num_hidden_layers"], SHAPES[shape]["hidden_size"]
    attention = sum(float((lengths[r] ** 2).sum()) for r in records[w:])  # sum over tokens of l
    flops_per_token = (6 * n * timed_tokens + 12 * layers * hidden * attention) / timed_tokens
    tflops = {side: median[side] * flops_per_token / 1e12 for side in SIDES}
    cuda = device == "cuda"
    mfu = lambda side, peak: round(tflops[side] / peak, 4) if cuda else None  # noqa: E731
    peak = lambda side: round(max(r["peak"] for r in runs[side]), 2) if cuda else None  # noqa: E731
    b, p = runs["baseline"][0], runs["plw"][0]
    return {
        "shape": shape, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "baseline_tok_s": round(median["baseline"], 1), "plw_tok_s": round(median["plw"], 1),
        "speedup": round(median["plw"] / median["baseline"], 3),
        "mfu": mfu("plw", PEAK_SPEC), "mfu_measured_peak": mfu("plw", PEAK_MEASURED),
        "baseline_mfu": mfu("baseline", PEAK_SPEC),
        "baseline_mfu_measured_peak": mfu("baseline", PEAK_MEASURED),
        "plw_tflops": round(tflops["plw"], 4), "baseline_tflops": round(tflops["baseline"], 4),
        "baseline_peak_gib": peak("baseline"), "plw_peak_gib": peak("plw"),
        "loss_baseline": round(b["losses"][-1], 5), "loss_plw": round(p["losses"][-1], 5),
        "loss_step1_baseline": round(b["losses"][0], 5), "loss_step1_plw": round(p["losses"][0], 5),
        "loss_step1_plw_completion": _round(p["completion_losses"][0], 5),
        "loss_plw_completion": _round(p["completion_losses"][-1], 5),
        "run_order": sequence,
        "baseline_tok_s_rounds": [round(v, 1) for v in tok_s["baseline"]],
        "plw_tok_s_rounds": [round(v, 1) for v in tok_s["plw"]],
        "steps": steps, "warmup_steps": w, "timed_steps": steps - w,
        "tokens_per_step": round(float(np.mean(step_tokens)), 1),
        "step_real_tokens": step_tokens,
        "sequences_per_step": opts.batch,
        "forwards_per_step": {"baseline": opts.accum, "plw": round(float(np.mean(packed)), 2)},
        "baseline_padded_tokens_per_step": round(float(np.mean(padded)), 1),
        "plw_max_tokens": opts.budget,
        "n_params": n, "n_convention": "non-embedding parameters, LM head included (untied)",
        "attention_term": "12 x layers x hidden x real record length, per token, both sides",
        "flops_per_token": round(flops_per_token),
        "attn_implementation": opts.attn_implementation,
        "baseline_attention": b["attention"], "plw_attention": p["attention"],
        "plw_compile": opts.compile, "gradient_checkpointing": opts.gradient_checkpointing,
        "device_check": opts.device_check,
    }


def _round(value, digits: int):
    return None if value is None else round(value, digits)


def prepare_weights(data: Path, tokenizer: Path, out_dir: Path, records: int = 0,
                    plw: float = 0.1, max_length: int = 512) -> Path:
    """An `alpaca-plw weights` folder at `out_dir` from the Alpaca JSON `data` (its first `records`
    records; 0: all), PLW `plw`, records cut at `max_length` tokens. Returns `out_dir`."""
    from alpaca_plw.data.pipeline import DataOptions, make_weights

    source = Path(data)
    if records:
        source = Path(out_dir).parent / f"{Path(out_dir).name}-subset.json"
        source.write_text(json.dumps(json.loads(Path(data).read_text())[:records]))
    make_weights(str(source), plw, DataOptions(tokenizer=str(tokenizer)), Path(out_dir),
                 max_length=max_length)
    return Path(out_dir)


# --- the command ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise BenchError(message)


def parse_args(argv=None) -> argparse.Namespace:
    shared_data, shared_tok = SHARED / "data" / "alpaca_data.json", SHARED / "tokenizers" / "llama"
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1.1b,3b", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--data", type=Path, default=shared_data if shared_data.exists() else None,
                   help="Alpaca JSON to make weights from [default: ../shared/data/alpaca_data.json]")
    p.add_argument("--weights", type=Path, default=None,
                   help="a prepared `alpaca-plw weights` folder (instead of --data)")
    p.add_argument("--tokenizer", type=Path, default=shared_tok if shared_tok.exists() else None,
                   help="LLaMA tokenizer folder [default: ../shared/tokenizers/llama]")
    p.add_argument("--records", type=int, default=0, help="first N records of --data (0: all)")
    p.add_argument("--plw", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=512, help="cut records at this many tokens")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing (>= 1)")
    p.add_argument("--batch", type=int, default=128, help="sequences per optimizer step")
    p.add_argument("--micro", type=int, default=8, help="sequences per micro-batch")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="alpaca-plw packed budget (0: micro x max-length)")
    p.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default=None,
                   help="both sides (the padded baseline keeps sdpa for packed-only ones) "
                        "[default: each side's own; the trainer picks]")
    p.add_argument("--compile", action="store_true", help="alpaca-plw side: --compile")
    p.add_argument("--gradient-checkpointing", action="store_true", help="both sides (7b needs it)")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs per side, alternating baseline/plw (the medians are reported)")
    p.add_argument("--baseline", choices=BASELINES, default="auto",
                   help="the common recipe's side: TRL's SFTTrainer (trl), the hand loop (hand), "
                        "or auto: trl when trl and datasets import, hand otherwise "
                        "[default: auto]")
    p.add_argument("--device-check", action="store_true",
                   help="CPU run with the model on a stand-in device: a host tensor reaching "
                        "it fails")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    args.shape_list = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shape_list if s not in SHAPES]
    if unknown or not args.shape_list:
        p.error(f"--shapes: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(SHAPES)}")
    if args.tokenizer is None or not (args.tokenizer / "tokenizer.model").exists():
        p.error("--tokenizer: ../shared is not beside this checkout; pass a LLaMA tokenizer folder"
                if args.tokenizer is None else f"--tokenizer {args.tokenizer}: no tokenizer.model there")
    if args.weights is not None and args.records:
        p.error("--records applies to --data, not to a prepared --weights folder")
    if args.weights is None and (args.data is None or not args.data.is_file()):
        p.error(f"--data {args.data}: no such file; pass --data FILE or --weights DIR")
    if args.weights is not None and not args.weights.is_dir():
        p.error(f"--weights {args.weights}: no such folder")
    if args.records < 0 or args.max_length < 2:
        p.error("--records must be >= 0 and --max-length >= 2")
    args.options = BenchOptions(
        steps=args.steps, warmup=args.warmup, batch=args.batch, micro=args.micro,
        max_length=args.max_length, max_tokens=args.max_tokens,
        attn_implementation=args.attn_implementation, compile=args.compile,
        gradient_checkpointing=args.gradient_checkpointing, rounds=args.rounds,
        device_check=args.device_check, baseline=args.baseline)
    if args.baseline == "trl" and (missing := trl_missing()):
        p.error(f"--baseline trl: {missing}; install trl and datasets, or pass --baseline hand "
                "(or auto)")
    return args


def _write(results: list[dict], out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, out_path)


def _table(results: list[dict]) -> None:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{'shape':>6} {'base tok/s':>11} {'plw tok/s':>10} {'speedup':>8} {'MFU':>6} "
          f"{'MFU@790':>8} {'base MFU':>9} {'base GiB':>9} {'plw GiB':>8} {'loss base':>10} "
          f"{'loss plw':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['shape']:>6} failed: {r['error']}")
            continue
        print(f"{r['shape']:>6} {r['baseline_tok_s']:>11,.0f} {r['plw_tok_s']:>10,.0f} "
              f"{r['speedup']:>8.2f} {fmt(r['mfu'], '.1%'):>6} "
              f"{fmt(r['mfu_measured_peak'], '.1%'):>8} {fmt(r['baseline_mfu'], '.1%'):>9} "
              f"{fmt(r['baseline_peak_gib'], '.1f'):>9} {fmt(r['plw_peak_gib'], '.1f'):>8} "
              f"{r['loss_baseline']:>10.4f} {r['loss_plw']:>9.4f}")
    for r in results:
        if "baseline" in r:
            note = f" ({r['baseline_fallback']})" if r.get("baseline_fallback") else ""
            print(f"{r['shape']:>6} baseline: {r['baseline']}{note}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def main(argv=None) -> int:
    """The command: 0 when every shape ran, 1 when one failed, 2 on bad input (one line each)."""
    try:
        args = parse_args(argv)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = "cpu" if args.device_check or not torch.cuda.is_available() else "cuda"
    out_path = args.out or REPO / "benchmarks" / "results" / f"train_{device}.json"
    if out_path.exists() and not args.force:
        print(f"error: {out_path} exists; pass --force to replace it or --out elsewhere",
              file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    results, failed = [], False
    try:
        try:
            weights = args.weights or prepare_weights(args.data, args.tokenizer, work / "weights",
                                                      args.records, args.plw, args.max_length)
            SequenceStore.from_weights(read_weights_dir(weights))  # readable before any shape
        except Exception as exc:  # noqa: BLE001 - any unreadable input ends in one line
            print(f"error: reading the weights: {_one_line(exc)}", file=sys.stderr)
            return 2
        for i, shape in enumerate(args.shape_list):
            try:
                results.append(run_shape(shape, weights, args.tokenizer, args.options,
                                         device=device, first=SIDES[i % 2], work=work))
            except Exception as exc:  # noqa: BLE001 - one shape's OOM must not lose the rest
                failed = True
                print(f"error: shape {shape}: {_one_line(exc)}", file=sys.stderr)
                results.append({"shape": shape, "error": _one_line(exc)})
            if failed and device == "cuda":  # outside `except`: its traceback held the model
                gc.collect()
                torch.cuda.empty_cache()
            _write(results, out_path)  # after every shape: a timeout keeps what finished
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _table(results)
    print(f"wrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
