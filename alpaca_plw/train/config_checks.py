"""The checks `TrainConfig.__post_init__` runs besides its own: numbers that cannot overflow, and
the options of issue 11 (LoRA, evaluation, trackers, checkpoint rotation). Each check reads the
config and names the flag to change (`feature_checks` first splits a comma-separated `report_to` or
`lora_target` given as one string); nothing here imports the loop or the libraries it drives."""

from __future__ import annotations

import math

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module


def parse_report_to(text: str | None) -> tuple[str, ...]:
    """`"tensorboard,wandb"` -> ("tensorboard", "wandb"); "none" or empty -> ()."""
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    return () if names in ([], ["none"]) else tuple(dict.fromkeys(names))


_FLOATS = ("lr", "epochs", "warmup_ratio", "weight_decay", "max_grad_norm", "lora_alpha",
           "lora_dropout", "eval_fraction")
_INTS = ("micro_batch_size", "grad_accum", "batch_size", "max_steps", "save_steps", "max_tokens",
         "loss_chunk", "eval_steps", "save_total_limit", "lora_r")


def option_checks(cfg) -> list[tuple[bool, str]]:
    """`TrainConfig` checks against overflow and nonsense: finite floats, ints that fit, a seed
    the generators accept, a schedule that ends."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    checks = [(not isinstance(getattr(cfg, n, None), float) or math.isfinite(getattr(cfg, n)),
               f"{flag(n)} must be a finite number, got {getattr(cfg, n, None)}") for n in _FLOATS]
    checks += [(getattr(cfg, n, None) is None or abs(getattr(cfg, n)) < 2**31,
                f"{flag(n)} must be below 2**31, got {getattr(cfg, n, None)}") for n in _INTS]
    checks += [(0 <= cfg.seed < 2**63, f"--seed must be in [0, 2**63), got {cfg.seed}"),
               (not math.isfinite(cfg.epochs) or cfg.epochs <= 1e6,
                f"--epochs must be at most 1e6, got {cfg.epochs}"),
               (not (math.isfinite(cfg.lr) and math.isfinite(cfg.weight_decay)) or  # in float32
                max(abs(cfg.lr), abs(cfg.lr * cfg.weight_decay)) <= 3.4e38,
                f"--lr (and --lr x --weight-decay) must be at most 3.4e38, float32's largest; "
                f"got --lr {cfg.lr}, --weight-decay {cfg.weight_decay}")]
    return checks


def feature_checks(cfg) -> list[tuple[bool, str]]:
    """`TrainConfig.__post_init__` checks for the issue-11 options (a comma-separated string given
    for `report_to` or `lora_target` is split first)."""
    if isinstance(cfg.report_to, str):
        object.__setattr__(cfg, "report_to", parse_report_to(cfg.report_to))
    if isinstance(cfg.lora_target, str):
        object.__setattr__(cfg, "lora_target",
                           tuple(t.strip() for t in cfg.lora_target.split(",") if t.strip()) or None)
    unknown = [n for n in cfg.report_to if n not in TRACKERS]
    lora = cfg.lora_r is not None
    return [
        (cfg.lora_r is None or cfg.lora_r >= 1, "--lora-r must be at least 1"),
        (cfg.lora_alpha > 0, "--lora-alpha must be positive"),
        (0 <= cfg.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
        (lora or not cfg.merge_lora, "--merge-lora needs --lora-r"),
        (lora or not cfg.lora_target, "--lora-target needs --lora-r"),
        (cfg.eval_weights is None or cfg.eval_fraction is None,
         "give --eval-weights or --eval-fraction, not both"),
        (cfg.eval_fraction is None or 0 < cfg.eval_fraction < 1, "--eval-fraction must be in (0, 1)"),
        (cfg.eval_steps is None or cfg.eval_steps >= 1, "--eval-steps must be at least 1"),
        (cfg.eval_steps is None or cfg.eval_weights is not None or cfg.eval_fraction is not None,
         "--eval-steps needs --eval-weights or --eval-fraction"),
        (not unknown, f"--report-to: unknown tracker {', '.join(map(repr, unknown))}; choose from "
                      f"none, {', '.join(TRACKERS)}"),
        (cfg.save_total_limit is None or cfg.save_total_limit >= 1,
         "--save-total-limit must be at least 1"),
    ]
