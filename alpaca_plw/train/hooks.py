"""What a run adds around the optimizer steps (issue 11): validation, trackers, progress events,
checkpoints when due and their rotation, the merged LoRA model and the model card. Their options
are checked with the config (`config_checks.py`); the rotation itself is `checkpoints/folders.py`.

The trainer calls a `RunFeatures` at fixed points: `split` (the evaluation set) and `annotate`
(the plan) before the model loads, `start` once the model is ready, `after_step` after every
optimizer step (epoch, time, evaluation, trackers), `maybe_checkpoint` (save when due, rotate),
`finish` after the final save. Nothing here prints: a progress display gets `on_event(name, info)`
on rank 0 only, with these names and info keys:

    loading_model {model, resume_from}      model_loaded {parameters, trainable}
    evaluated {step, eval_loss, eval_prompt_loss, eval_completion_loss}
    checkpoint_saved {path, step}           checkpoint_removed {path}   (--save-total-limit)
    final_saved {path, what}                merging {path}    merged_saved {path}   (--merge-lora)
    card_written {path}                 warning {message}   (e.g. every step at lr 0)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from alpaca_plw.extras import require

EventCallback = Callable[[str, dict], None]


def seed_step(seed: int, step: int) -> None:
    """Seed torch's generators for optimizer step `step` (0-based) from (seed, step) alone, so
    dropout (LoRA's, or the model's own) draws the same masks whether or not the run was resumed."""
    import numpy as np
    import torch

    torch.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def _last_logged_time(log_path: Path) -> float:
    if not log_path.is_file():
        return 0.0
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    return float(json.loads(lines[-1]).get("time", 0.0)) if lines else 0.0


class RunFeatures:
    def __init__(self, cfg, d, on_event: EventCallback | None = None):
        from alpaca_plw.train.tracking import check_trackers

        self.cfg, self.d, self.on_event = cfg, d, on_event
        if cfg.lora_r is not None:
            require("peft", "--lora-r", "lora")
        check_trackers(cfg.report_to)
        self.eval_set = None
        self.meta: dict = {}
        self.trackers = None
        self.last: dict = {}
        self.began, self.offset = time.perf_counter(), 0.0

    def event(self, name: str, **info) -> None:
        if self.d.is_main and self.on_event:
            self.on_event(name, info)

    def split(self, meta: dict, store):
        """The training store, after setting the evaluation set aside."""
        from alpaca_plw.train.evaluation import split_eval

        self.meta = meta
        store, self.eval_set = split_eval(self.cfg, meta, store)
        return store

    def annotate(self, plan):
        cfg = self.cfg
        if self.eval_set is not None:
            plan.eval_records = len(self.eval_set.store)
            plan.eval_from = self.eval_set.source
        if cfg.lora_r is not None:
            target = ",".join(cfg.lora_target) if cfg.lora_target else "all linear layers of the decoder"
            plan.lora = (f"r {cfg.lora_r}, alpha {cfg.lora_alpha:g}, dropout {cfg.lora_dropout:g}, "
                         f"{target}" + (", merged copy too" if cfg.merge_lora else ""))
        return plan

    def start(self, run) -> None:
        """The model is ready: open trackers, note the clock (continuing a resumed run's)."""
        from alpaca_plw.train.run.card import config_dict
        from alpaca_plw.train.tracking import Trackers

        params = list(run.model.parameters())
        self.event("model_loaded", parameters=sum(p.numel() for p in params),
                   trainable=sum(p.numel() for p in params if p.requires_grad))
        if self.d.is_main:
            self.offset = _last_logged_time(run.log_path) if run.start else 0.0
            if self.cfg.report_to:
                config = {"config": config_dict(self.cfg), "plan": run.plan.to_json()}
                self.trackers = Trackers(self.cfg.report_to, self.cfg.output_dir, config, run.start)
        seed_step(self.cfg.seed, run.start)
        self.began = time.perf_counter()

    def after_step(self, run, record: dict) -> None:
        """Add epoch and time to the step's record; evaluate when due; log to the trackers."""
        from alpaca_plw.train.evaluation import eval_due, evaluate

        done = record["step"]
        record["epoch"] = round(done / run.plan.steps_per_epoch, 4)
        if self.eval_set is not None and eval_due(self.cfg, done, run.plan.steps):
            metrics = evaluate(run.model, self.eval_set, self.cfg, self.d,
                               run.tokenizer.pad_token_id or 0)
            record.update(metrics)
            self.event("evaluated", step=done, **metrics)
        record["time"] = round(self.offset + time.perf_counter() - self.began, 3)
        self.last = {**self.last, **record}
        if self.trackers is not None:
            self.trackers.log(record)
        seed_step(self.cfg.seed, done)

    def maybe_checkpoint(self, run, done: int) -> None:
        """Every --save-steps steps (not after the last one): `checkpoint-<done>`, then rotation."""
        from alpaca_plw.train.checkpoints.checkpoint import save_checkpoint
        from alpaca_plw.train.checkpoints.folders import rotate_checkpoints

        every = self.cfg.save_steps
        if not (every and done % every == 0 and done < run.plan.steps):
            return
        path = self.cfg.output_dir / f"checkpoint-{done}"
        save_checkpoint(path, run.model, run.optimizer, run.scheduler, run.tokenizer, done, self.d)
        self.event("checkpoint_saved", path=str(path), step=done)
        if self.d.is_main and self.cfg.save_total_limit:
            for removed in rotate_checkpoints(self.cfg.output_dir, self.cfg.save_total_limit):
                self.event("checkpoint_removed", path=str(removed))

    def finish(self, run) -> None:
        """After the final save: the merged model (--merge-lora), the model card, trackers closed."""
        from alpaca_plw.train.run.card import run_facts, write_model_card

        cfg = self.cfg
        if self.d.is_main:
            lora = cfg.lora_r is not None
            self.event("final_saved", path=str(cfg.output_dir),
                       what="LoRA adapter and tokenizer" if lora else "model and tokenizer")
            if cfg.merge_lora:
                from alpaca_plw.train.modeling.lora import write_merged

                self.event("merging", path=str(cfg.output_dir))
                merged = write_merged(cfg, cfg.output_dir, run.tokenizer)
                self.event("merged_saved", path=str(merged))
            keys = ("step", "loss", "prompt_loss", "completion_loss", "eval_loss",
                    "eval_prompt_loss", "eval_completion_loss", "eval_role_loss")
            results = {k: self.last.get(k) for k in keys}
            card = write_model_card(cfg.output_dir, run_facts(cfg, run.plan, self.meta, results))
            self.event("card_written", path=str(card))
            self.close()
        self.d.barrier()

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
