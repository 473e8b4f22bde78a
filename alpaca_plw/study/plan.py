"""What a sweep will do (`sweep --dry-run`): per PLW its run folder, state, steps and tokens."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.weights_dir.read import WeightsData
from alpaca_plw.study.fit import to_wp
from alpaca_plw.study.grid import (folder_chat, is_weights_source, read_source, reweighted,
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


@contextmanager
def tokenized(source, options, max_length: int, chat=None, allow_partial: bool = False,
              progress=None) -> Iterator[WeightsData]:
    """The sweep's tokens, for the span of the `with`: a weights folder read, or a dataset
    tokenized at PLW 0 by `weights`' own streamed path (batches on `options.num_proc`
    processes, memory that does not grow with the records) into a temporary folder that is read
    memory-mapped and removed afterwards; nothing is written where the user looks. Each PLW's
    weights are derived from it (`grid.reweight`)."""
    if is_weights_source(source):
        yield read_source(source, allow_partial)
        return
    from alpaca_plw.data.pipeline import make_weights

    with tempfile.TemporaryDirectory(prefix="alpaca-plw-sweep-plan-") as folder:
        out = Path(folder) / "weights"
        make_weights(source, 0.0, options, out, max_length, False, progress, chat)
        yield read_source(out)


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


def _target_weight(data: WeightsData, plw: float, chat) -> float:
    """The weight of every target (each record's tokens but its first) at `plw`, by the rule the
    sweep writes (role weights included): per record as `SequenceStore.target_weight_sums`
    (float32 sums, float64 difference), batch by batch, summed once."""
    import numpy as np

    _, batches = reweighted(data, plw, chat)
    per_record = []
    for batch in batches():
        column = batch.column(batch.schema.names.index("loss_weight"))
        weights = column.flatten().to_numpy()
        starts = column.offsets.to_numpy()[:-1].astype(np.int64) - int(column.offsets[0].as_py())
        sums = np.add.reduceat(weights, starts) if starts.size else np.zeros(0)
        per_record.append(sums.astype(np.float64) - weights[starts])
    return float(np.concatenate(per_record).sum()) if per_record else 0.0


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
        weight = _target_weight(data, plw, chat)
        share = round((weight - learned_targets) / weight, 6) if weight else 0.0
        tokens = run_tokens(trained, tc.seed, tc.micro_batch_size, plan.grad_accum, d.world,
                            plan.steps)
        runs.append(PlannedRun(plw, float(to_wp(plw)), run_name(plw),
                               run_state(cfg.output_dir / run_name(plw)), plan.steps, tokens, share))
    return SweepPlan(runs, plan.records, plan.effective_batch, plan.world_size)


__all__ = ["PlannedRun", "SweepPlan", "plan_sweep", "run_tokens", "tokenized"]
