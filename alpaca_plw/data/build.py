"""Short-completion builders: swap prompt and completion toward a target generation ratio.

Rules (documented in README.md, "How the builders choose"):
- short: swap exactly the records whose completion has more tokens than their prompt.
- target R_g: order records by descending per-record ratio (ties by source index) and swap the
  prefix of that order whose dataset R_g, measured on the swapped records' own token counts, is
  closest to the target. If the target lies below what swapping can reach, and dropping is allowed,
  leave out the records with the highest post-swap ratio until R_g is closest to the target.
  A result further than the tolerance from the target is a `TargetError` giving the reachable range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpaca_plw.errors import ConfigError, TargetError
from alpaca_plw.data.lengths import FieldLengths, LengthCache
from alpaca_plw.data.records import Records, Source
from alpaca_plw.data.swap import swapped_instruction

KEPT, SWAPPED, DROPPED = 0, 1, 2
ACTION_NAMES = ("kept", "swapped", "dropped")


@dataclass(frozen=True)
class BuildRule:
    """What to build. `target_rg=None` is the Short rule; otherwise the target-ratio rule."""

    name: str
    target_rg: float | None = None
    allow_drop: bool = False
    tolerance: float = 0.02

    def __post_init__(self):
        if self.target_rg is not None and not (self.target_rg > 0 and np.isfinite(self.target_rg)):
            raise ConfigError(f"--target-rg must be a positive number, got {self.target_rg}")
        if not 0 <= self.tolerance < 1:
            raise ConfigError(f"tolerance must be in [0, 1), got {self.tolerance}")

    def to_json(self) -> dict[str, object]:
        if self.target_rg is None:
            return {"name": self.name, "rule": "swap records whose completion tokens > prompt tokens"}
        return {
            "name": self.name,
            "rule": "swap the prefix of records by descending per-record ratio (ties by source "
            "index) whose R_g is closest to the target; then, if allowed and needed, leave out "
            "records with the highest post-swap ratio",
            "target_rg": self.target_rg,
            "tolerance": self.tolerance,
            "allow_drop": self.allow_drop,
        }


SHORT = BuildRule("short")
MEDIUM = BuildRule("medium", target_rg=1.0)
TINY = BuildRule("tiny", target_rg=0.042, allow_drop=True)


def target_rule(target_rg: float, allow_drop: bool = False) -> BuildRule:
    if not 0 < target_rg < float("inf"):  # also refuses nan
        raise ConfigError(f"--target-rg must be a finite number > 0, got {target_rg}")
    return BuildRule(f"rg{target_rg:g}", target_rg=target_rg, allow_drop=allow_drop)


@dataclass
class BuildResult:
    """The built dataset, its lengths, and what happened to every source record."""

    records: Records
    lengths: FieldLengths
    action: np.ndarray  # int8 per source record: KEPT, SWAPPED or DROPPED
    reasons: list[str]
    summary: dict[str, object]

    def counts(self) -> dict[str, int]:
        tally = np.bincount(self.action, minlength=3)
        return {"source": int(self.action.size), "kept": int(self.action.size - tally[DROPPED]),
                "swapped": int(tally[SWAPPED]), "dropped": int(tally[DROPPED])}


def _descending(values: np.ndarray) -> np.ndarray:
    """Indices by descending value, ties by ascending index (a stable, documented order)."""
    return np.lexsort((np.arange(values.size), -values))


def _prefix_rg(base_p, base_c, delta_p, delta_c) -> np.ndarray:
    """R_g after applying the first k changes in order, for k = 0..len(delta)."""
    p = base_p + np.concatenate(([0], np.cumsum(delta_p, dtype=np.int64)))
    c = base_c + np.concatenate(([0], np.cumsum(delta_c, dtype=np.int64)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return c / p


def _closest(rgs: np.ndarray, target: float) -> int:
    return int(np.argmin(np.abs(rgs - target)))


def _swap_lengths(records: Records, lengths: FieldLengths, which: np.ndarray, cache: LengthCache):
    """Prompt and completion token counts of the swapped form of the records in `which`."""
    new_instructions = [swapped_instruction(records.input[i]) for i in which]
    inst = cache.lengths(new_instructions, "tokenizing swapped instructions")
    return inst, inst + lengths.output[which], lengths.instruction[which].copy()


def build(records: Records, lengths: FieldLengths, rule: BuildRule, cache: LengthCache) -> BuildResult:
    """Apply `rule` to `records` (with their `lengths`); nothing is written here."""
    n = len(records)
    p, c = lengths.prompt.astype(np.int64), lengths.completion.astype(np.int64)
    action = np.zeros(n, dtype=np.int8)
    summary: dict[str, object] = {}
    if rule.target_rg is None:
        chosen = np.flatnonzero(c > p)
        new_inst, sw_p, sw_c = _swap_lengths(records, lengths, chosen, cache)
        action[chosen] = SWAPPED
        reasons = [f"completion {ci} {'>' if ci > pi else '<='} prompt {pi} tokens"
                   for pi, ci in zip(p.tolist(), c.tolist())]
    else:
        ratios = lengths.ratios()
        order = _descending(ratios)
        new_inst, sw_p, sw_c = _swap_lengths(records, lengths, order, cache)
        rgs = _prefix_rg(p.sum(), c.sum(), sw_p - p[order], sw_c - c[order])
        k = _closest(rgs, rule.target_rg)
        floor, ceiling = float(np.nanmin(rgs)), float(np.nanmax(rgs))
        chosen, new_inst, sw_p, sw_c = order[:k], new_inst[:k], sw_p[:k], sw_c[:k]
        action[chosen] = SWAPPED
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(1, n + 1)
        reasons = [
            f"ratio {r:.4g} ranks {q} of {n}; the top {k} are swapped" if q <= k
            else f"ratio {r:.4g} ranks {q} of {n}; only the top {k} are swapped"
            for r, q in zip(ratios.tolist(), rank.tolist())
        ]
        summary.update(swapped_prefix=k, swap_floor_rg=round(floor, 6),
                       swap_ceiling_rg=round(ceiling, 6))
    out_p, out_c = p.copy(), c.copy()
    out_p[chosen], out_c[chosen] = sw_p, sw_c
    if rule.target_rg is not None:
        achieved = out_c.sum() / out_p.sum()
        target = rule.target_rg
        if achieved - target > rule.tolerance * target and rule.allow_drop:
            post = out_c / np.maximum(out_p, 1)
            order2 = _descending(post)[: n - 1]  # keep at least one record
            rgs = _prefix_rg(out_p.sum(), out_c.sum(), -out_p[order2], -out_c[order2])
            m = _closest(rgs, target)
            dropped = order2[:m]
            for q, i in enumerate(dropped.tolist(), start=1):
                reasons[i] = ("swapped, then left out: " if action[i] == SWAPPED else "left out: ") + (
                              f"post-swap ratio {post[i]:.4g} ranks {q} of {n}; the {m} highest go "
                              f"because target R_g {target:g} is below the swap floor "
                              f"{summary['swap_floor_rg']:g}")
            action[dropped] = DROPPED
            summary["dropped_for_target"] = m
            achieved = rgs[m]
        summary["achieved_rg"] = round(float(achieved), 6)
        if abs(achieved - target) > rule.tolerance * target:
            hint = "" if rule.allow_drop or target > summary["swap_floor_rg"] else (
                "; --allow-drop leaves out the highest-ratio records to go lower")
            raise TargetError(
                f"target R_g {target:g} cannot be met within {rule.tolerance:.0%}: swapping reaches "
                f"R_g {summary['swap_floor_rg']:g} to {summary['swap_ceiling_rg']:g} on "
                f"{records.source.name}{hint} (closest: {achieved:.4g})"
            )
    return _assemble(records, lengths, rule, action, chosen, new_inst, reasons, summary)


def _assemble(records, lengths, rule, action, chosen, new_inst, reasons, summary) -> BuildResult:
    instruction, input_, output = list(records.instruction), list(records.input), list(records.output)
    inst_len, input_len, output_len = (lengths.instruction.copy(), lengths.input.copy(),
                                       lengths.output.copy())
    for i in chosen.tolist():
        instruction[i], input_[i], output[i] = swapped_instruction(records.input[i]), records.output[i], records.instruction[i]
    inst_len[chosen], input_len[chosen], output_len[chosen] = (
        new_inst, lengths.output[chosen], lengths.instruction[chosen])
    keep = np.flatnonzero(action != DROPPED)
    if keep.size != len(records):
        keep_list = keep.tolist()
        instruction = [instruction[i] for i in keep_list]
        input_ = [input_[i] for i in keep_list]
        output = [output[i] for i in keep_list]
    src = records.source
    built = Records(Source(name=f"{src.name} ({rule.name})", path=src.path, kind=src.kind,
                           sha256=src.sha256), instruction, input_, output)
    out_lengths = FieldLengths(inst_len[keep], input_len[keep], output_len[keep])
    return BuildResult(built, out_lengths, action, reasons, summary)
