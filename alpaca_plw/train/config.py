"""Training options. Defaults follow the Stanford Alpaca recipe (REFERENCE.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.errors import ConfigError
from alpaca_plw.train.config_checks import feature_checks, option_checks

LOSS_NORMS = ("weight", "tokens")
# --optim: torch's AdamW (fused on CUDA, foreach elsewhere), either form forced, transformers'
# Adafactor (fixed learning rate, as the Hugging Face Trainer's "adafactor"), torch's SGD
OPTIMIZERS = ("adamw", "adamw_torch", "adamw_torch_fused", "adafactor", "sgd")
# --lr-scheduler-type: transformers' scheduler names (transformers.get_scheduler), warmup first
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                 "polynomial", "inverse_sqrt")
BASE_DTYPES = ("auto", "float32", "bfloat16")  # --base-dtype, LoRA's frozen base
ATTN_IMPLEMENTATIONS = ("torch_varlen", "sdpa", "eager", "flex_attention", "flash_attention_2",
                        "flash_attention_3")


class WeightsDirs(tuple):
    """Several weights folders (the shards of one dataset), shown as `a, b, c` in messages."""

    def __str__(self) -> str:
        return ", ".join(map(str, self))


def weights_dirs(cfg) -> tuple[Path, ...]:
    """`cfg.weights_dir` as a tuple of folders (one, or the several given)."""
    value = cfg.weights_dir
    return tuple(value) if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `alpaca-plw train` needs. Errors name the CLI flag to change."""

    # one weights folder (or a folder holding shard folders), or several: the shards of one
    # dataset (`data/weights_dir/folders.py`); a list of one is stored as its folder
    weights_dir: Path | WeightsDirs
    model: str
    output_dir: Path
    tokenizer: str | None = None
    batch_size: int | None = None  # effective batch in sequences; 128 unless --grad-accum says
    micro_batch_size: int = 4
    grad_accum: int | None = None
    lr: float = 2e-5
    epochs: float = 3.0
    max_steps: int | None = None
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw"
    lr_scheduler_type: str = "cosine"
    seed: int = 42
    loss_norm: str = "weight"
    save_steps: int | None = None
    resume: bool = False
    fsdp: bool = False
    packing: bool | None = None  # None: packed on GPU, padded on CPU
    max_tokens: int | None = None  # packed micro-batch budget; None: micro x longest record
    loss_chunk: int = 4096  # positions per LM-head + loss chunk; 0: full logits
    gradient_checkpointing: bool = False
    compile: bool = False
    device: str | None = None  # None: cuda when available, else cpu
    dry_run: bool = False
    gpu_memory: float | None = None  # GiB per GPU the --dry-run estimate is checked against
    force: bool = False
    attn_implementation: str | None = None  # None: torch_varlen for packed CUDA runs, else the model's
    cpu_offload: bool = False  # FSDP CPU offload of shards, gradients, optimizer (also 1 process)
    # LoRA (issue 11): on when lora_r is set; lora_target None = every linear layer of the decoder
    lora_r: int | None = None
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target: tuple[str, ...] | None = None
    base_dtype: str = "auto"  # LoRA's frozen base: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16
    merge_lora: bool = False
    # validation, tracking, checkpoint rotation (issue 11)
    eval_weights: Path | None = None
    eval_fraction: float | None = None
    eval_steps: int | None = None
    report_to: tuple[str, ...] = ()
    save_total_limit: int | None = None
    allow_partial_shards: bool = False  # train on an incomplete set of shards, on purpose

    def __post_init__(self):
        if isinstance(self.weights_dir, (list, tuple)):
            if not self.weights_dir:
                raise ConfigError("no weights folder given")
            dirs = [Path(p) for p in self.weights_dir]
            object.__setattr__(self, "weights_dir", dirs[0] if len(dirs) == 1 else WeightsDirs(dirs))
        checks = [
            (self.micro_batch_size >= 1, "--micro-batch-size must be at least 1"),
            (self.grad_accum is None or self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.epochs > 0, "--epochs must be positive"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.max_grad_norm >= 0, "--max-grad-norm must be >= 0 (0 turns clipping off)"),
            (self.loss_norm in LOSS_NORMS, f"--loss-norm must be one of {', '.join(LOSS_NORMS)}"),
            (self.optim in OPTIMIZERS, f"--optim must be one of {', '.join(OPTIMIZERS)}"),
            (self.lr_scheduler_type in LR_SCHEDULERS,
             f"--lr-scheduler-type must be one of {', '.join(LR_SCHEDULERS)}"),
            (self.lr_scheduler_type != "polynomial" or self.lr > 1e-7,
             "--lr-scheduler-type polynomial decays to transformers' lr_end 1e-7: --lr must be "
             "above it"),
            (not (self.optim == "adafactor" and (self.fsdp or self.cpu_offload)),
             "--optim adafactor cannot step sharded parameters (--fsdp / --cpu-offload); use "
             "adamw or sgd"),
            (self.device != "meta" or self.dry_run,
             "--device meta holds no data: it only plans (--dry-run); train on cuda or cpu"),
            (self.save_steps is None or self.save_steps >= 1, "--save-steps must be at least 1"),
            (self.max_tokens is None or self.max_tokens >= 2, "--max-tokens must be at least 2"),
            (self.loss_chunk >= 0, "--loss-chunk must be >= 0 (0: full logits)"),
            (self.gpu_memory is None or self.gpu_memory > 0, "--gpu-memory must be positive (GiB)"),
            (self.gpu_memory is None or self.dry_run, "--gpu-memory needs --dry-run"),
            (self.base_dtype in BASE_DTYPES,
             f"--base-dtype must be one of {', '.join(BASE_DTYPES)}, got {self.base_dtype!r}"),
            (self.base_dtype == "auto" or self.lora_r is not None,
             "--base-dtype needs --lora-r (a full fine-tune keeps float32 weights)"),
            (self.attn_implementation in (None, *ATTN_IMPLEMENTATIONS),
             f"--attn-implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}"),
        ]
        for ok, message in option_checks(self) + checks + feature_checks(self):
            if not ok:
                raise ConfigError(message)

    def accumulation(self, world: int) -> int:
        """Micro-batches per rank per optimizer step, so that micro x accum x world = batch."""
        per_pass = self.micro_batch_size * world
        if self.grad_accum is not None:
            if self.batch_size is not None and self.batch_size != per_pass * self.grad_accum:
                raise ConfigError(
                    f"--batch-size {self.batch_size} differs from --micro-batch-size "
                    f"{self.micro_batch_size} x --grad-accum {self.grad_accum} x {world} processes; "
                    "give two of them")
            return self.grad_accum
        batch = self.batch_size or 128
        if batch % per_pass:
            raise ConfigError(
                f"effective batch {batch} is not a multiple of --micro-batch-size "
                f"{self.micro_batch_size} x {world} processes; set --batch-size or --grad-accum")
        return batch // per_pass
