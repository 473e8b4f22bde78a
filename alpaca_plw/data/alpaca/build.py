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

from alpaca_plw.data.alpaca.swap import swapped_instruction
from alpaca_plw.data.lengths import FieldLengths, LengthCache
from alpaca_plw.data.reading.records import Records, Source
from alpaca_plw.errors import ConfigError, TargetError

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


class Reasons:
    """Why each record got its action, made on demand: `reasons(lo, hi)` is the list of the
    records lo..hi-1, so a writer can stream them (compact NumPy columns, no string per record
    held)."""

    def __init__(self, p, c, target=None):
        self.p, self.c, self.target = p, c, target

    def __call__(self, lo: int, hi: int) -> list[str]:
        if self.target is None:
            return [f"completion {ci} {'>' if ci > pi else '<='} prompt {pi} tokens"
                    for pi, ci in zip(self.p[lo:hi].tolist(), self.c[lo:hi].tolist())]
        t = self.target
        n, k = t["n"], t["k"]
        out = [f"ratio {r:.4g} ranks {q} of {n}; the top {k} are swapped" if q <= k
               else f"ratio {r:.4g} ranks {q} of {n}; only the top {k} are swapped"
               for r, q in zip(t["ratios"][lo:hi].tolist(), t["rank"][lo:hi].tolist())]
        drop = t.get("drop_rank")
        if drop is not None:
            m = t["m"]
            for j in np.flatnonzero(drop[lo:hi]).tolist():
                i = lo + j
                out[j] = ("swapped, then left out: " if t["rank"][i] <= k else "left out: ") + (
                          f"post-swap ratio {t['post'][i]:.4g} ranks {drop[i]} of {n}; the {m} "
                          f"highest go because target R_g {t['target']:g} is below the swap "
                          f"floor {t['floor']:g}")
        return out


@dataclass
class SwapPlan:
    """What to do with every record, decided from token lengths alone (see `plan_swaps`)."""

    action: np.ndarray  # int8 per source record: KEPT, SWAPPED or DROPPED
    chosen: np.ndarray  # the swapped records' indices
    new_inst: np.ndarray | None  # their new instructions' token counts (None: not measured yet)
    reasons: Reasons
    summary: dict[str, object]


def plan_swaps(lengths: FieldLengths, rule: BuildRule, swap_lengths, name: str) -> SwapPlan:
    """Decide the swaps (and drops) of `rule` from `lengths` (see the module docstring).

    `swap_lengths(which)` gives the token counts of the swapped instructions of the records
    `which` (int32, in that order); only target rules call it (for every record). For the Short
    rule `new_inst` is None: the caller measures the chosen records' new instructions.
    `name` is the dataset's name in a `TargetError`.
    """
    n = lengths.instruction.size
    p, c = lengths.prompt.astype(np.int64), lengths.completion.astype(np.int64)
    action = np.zeros(n, dtype=np.int8)
    summary: dict[str, object] = {}
    if rule.target_rg is None:
        chosen = np.flatnonzero(c > p)
        action[chosen] = SWAPPED
        return SwapPlan(action, chosen, None, Reasons(p, c), summary)
    ratios = lengths.ratios()
    order = _descending(ratios)
    new_inst = np.asarray(swap_lengths(order))
    sw_p, sw_c = new_inst + lengths.output[order], lengths.instruction[order].copy()
    rgs = _prefix_rg(p.sum(), c.sum(), sw_p - p[order], sw_c - c[order])
    k = _closest(rgs, rule.target_rg)
    floor, ceiling = float(np.nanmin(rgs)), float(np.nanmax(rgs))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    chosen, new_inst, sw_p, sw_c = order[:k], new_inst[:k], sw_p[:k], sw_c[:k]
    action[chosen] = SWAPPED
    summary.update(swapped_prefix=k, swap_floor_rg=round(floor, 6),
                   swap_ceiling_rg=round(ceiling, 6))
    why = {"n": n, "k": k, "ratios": ratios, "rank": rank}
    out_p, out_c = p.copy(), c.copy()
    out_p[chosen], out_c[chosen] = sw_p, sw_c
    achieved = out_c.sum() / out_p.sum()
    target = rule.target_rg
    if achieved - target > rule.tolerance * target and rule.allow_drop:
        post = out_c / np.maximum(out_p, 1)
        order2 = _descending(post)[: n - 1]  # keep at least one record
        rgs = _prefix_rg(out_p.sum(), out_c.sum(), -out_p[order2], -out_c[order2])
        m = _closest(rgs, target)
        dropped = order2[:m]
        drop_rank = np.zeros(n, dtype=np.int64)
        drop_rank[dropped] = np.arange(1, m + 1)
        why.update(drop_rank=drop_rank, m=m, post=post, target=target,
                   floor=summary["swap_floor_rg"])
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
            f"{name}{hint} (closest: {achieved:.4g})"
        )
    return SwapPlan(action, chosen, new_inst, Reasons(p, c, why), summary)


def build(records: Records, lengths: FieldLengths, rule: BuildRule, cache: LengthCache) -> BuildResult:
    """Apply `rule` to `records` (with their `lengths`); nothing is written here."""
    plan = plan_swaps(lengths, rule,
                      lambda which: _swap_lengths(records, lengths, which, cache)[0],
                      records.source.name)
    new_inst = plan.new_inst
    if new_inst is None:
        new_inst = _swap_lengths(records, lengths, plan.chosen, cache)[0]
    reasons = plan.reasons(0, len(records))
    return _assemble(records, lengths, rule, plan.action, plan.chosen, new_inst, reasons,
                     plan.summary)


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
