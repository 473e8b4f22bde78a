"""What a sweep will do (`sweep --dry-run`): per PLW its run folder, state, steps and tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.weights_dir.store import WeightsData, to_table
from alpaca_plw.study.fit import to_wp
from alpaca_plw.study.grid import (folder_chat, is_weights_source, read_source, reweight,
                                  run_name)
from alpaca_plw.study.sweep import SweepConfig, _check_folder, run_state, train_config


@dataclass
class PlannedRun:
    plw: float
    wp: float
    folder: str
    state: str
    steps: int
    tokens: int
    prompt_weight_share: float


@dataclass
class SweepPlan:
    runs: list[PlannedRun]
    records: int
    effective_batch: int
    world_size: int

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.runs if r.state != "done")

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.runs if r.state != "done")


def tokenized(source, options, max_length: int, chat=None, allow_partial: bool = False
              ) -> WeightsData:
    """The sweep's tokens without writing anything: a weights folder read, or a dataset tokenized
    in memory at PLW 0 as `weights` would (Alpaca records or conversations; each PLW's weights
    are derived from it, `grid.reweight`)."""
    if is_weights_source(source):
        return read_source(source, allow_partial)
    from alpaca_plw.data.chat.conversations import Conversations
    from alpaca_plw.data.reading.sources import load_records
    from alpaca_plw.data.tokenizer import load_tokenizer
    from alpaca_plw.data.alpaca.weights import build_weights

    tokenizer = load_tokenizer(options.tokenizer)
    records = load_records(source, options.columns, options.split, options.max_record_chars)
    if isinstance(records, Conversations) or (chat is not None and not chat.is_default()):
        from alpaca_plw.data.chat.pipeline import chat_weights

        tw, meta = chat_weights(records, tokenizer, options.tokenizer, 0.0, chat, max_length)
        return WeightsData(Path(str(source)), to_table(tw, meta), meta)
    tw = build_weights(records, tokenizer, 0.0, max_length)
    if tw.source_index.size == 0:
        from alpaca_plw.errors import InputError

        raise InputError(f"{records.source.path}: every record was skipped (prompt fills "
                         f"--max-length {max_length}); nothing to train on")
    meta = {"plw": 0.0, "tokenizer": tokenizer.identity()}
    return WeightsData(Path(str(source)), to_table(tw, meta), meta)


def run_tokens(store, seed: int, micro: int, accum: int, world: int, steps: int) -> int:
    """Tokens a run reads over `steps` optimizer steps (whole epochs read every record once)."""
    from alpaca_plw.train.batching.batches import DataOrder

    order = DataOrder(len(store), seed, micro, accum, world)
    lengths = store.lengths
    full, rest = divmod(steps, order.steps_per_epoch)
    tokens = full * int(lengths.sum())
    for step in range(full * order.steps_per_epoch, full * order.steps_per_epoch + rest):
        tokens += int(lengths[order.step_records(step)].sum())
    return tokens


def plan_sweep(cfg: SweepConfig, data: WeightsData) -> SweepPlan:
    """The plan of every run of `cfg` on `data`; nothing is written."""
    import torch

    from alpaca_plw.train.batching.batches import SequenceStore
    from alpaca_plw.train.distributed import Dist
    from alpaca_plw.train.evaluation import split_eval
    from alpaca_plw.train.plan import make_plan

    _check_folder(cfg)
    chat = folder_chat(data, cfg.chat) if is_weights_source(cfg.source) else cfg.chat
    store = SequenceStore.from_weights(data)
    learned_targets = float((store.target_counts() - store.target_prompt_counts()).sum())
    runs, plan = [], None
    for plw in cfg.plws:
        tc = train_config(cfg, plw, Path(data.path), resume=False, force=False)
        device = tc.device or ("cuda" if torch.cuda.is_available() else "cpu")
        d = Dist(0, cfg.nproc_per_node, 0, torch.device(device))
        trained, _ = split_eval(tc, data.meta, store)  # --eval-fraction leaves records out,
        plan = make_plan(tc, trained, {**data.meta, "plw": plw}, d)  # as the run itself does
        # the targets' weight at this PLW, by the rule the sweep writes (role weights included)
        derived = reweight(data, plw, chat)
        weight = float(SequenceStore.from_weights(
            WeightsData(data.path, derived, data.meta)).target_weight_sums().sum())
        share = round((weight - learned_targets) / weight, 6) if weight else 0.0
        tokens = run_tokens(trained, tc.seed, tc.micro_batch_size, plan.grad_accum, d.world,
                            plan.steps)
        runs.append(PlannedRun(plw, float(to_wp(plw)), run_name(plw),
                               run_state(cfg.output_dir / run_name(plw)), plan.steps, tokens, share))
    return SweepPlan(runs, plan.records, plan.effective_batch, plan.world_size)


__all__ = ["PlannedRun", "SweepPlan", "plan_sweep", "run_tokens", "tokenized"]
