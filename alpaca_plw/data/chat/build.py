"""The short-completion builders on conversations.

A single-turn conversation (an optional system message, one user, one assistant message) swaps
like an Alpaca record whose user content is the instruction and whose input is empty (REFERENCE.md
section 2): the new user message is `SWAP_NO_INPUT`, a blank line, then the old assistant content;
the new assistant message is the old user content; a system message stays. Multi-turn
conversations are kept unchanged, with the reason "multi-turn: not swappable". The rules (short,
target R_g, leaving out with `--allow-drop`) are those of `build.py`, applied to the swappable
conversations, with R_g always measured over the whole dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alpaca_plw.data.alpaca.build import (ACTION_NAMES, DROPPED, KEPT, SWAPPED, _closest, _descending,
                                          _prefix_rg)
from alpaca_plw.data.alpaca.swap import SWAP_NO_INPUT
from alpaca_plw.data.chat.conversations import KIND, ROLES
from alpaca_plw.data.chat.stats import ChatLengths, compute_chat_stats
from alpaca_plw.data.outputs.atomic import manifest_json, text_writer
from alpaca_plw.errors import TargetError
from alpaca_plw.version import __version__

NOT_SWAPPABLE = "multi-turn: not swappable"


def swapped_messages(roles: list[str], contents: list[str]) -> list[dict[str, str]]:
    """The swapped form of a single-turn conversation.

    >>> swapped_messages(["user", "assistant"], ["Name a colour.", "Blue."])
    [{'role': 'user', 'content': 'Predict the prompt that generated the following AI output.\\n\\nBlue.'}, {'role': 'assistant', 'content': 'Name a colour.'}]
    """
    head = [{"role": "system", "content": contents[0]}] if roles[0] == "system" else []
    user, assistant = contents[-2], contents[-1]
    return head + [{"role": "user", "content": f"{SWAP_NO_INPUT}\n\n{assistant}"},
                   {"role": "assistant", "content": user}]


def _plan(conv, lengths: ChatLengths, rule, cache):
    """Actions, reasons, the swapped conversations and their (prompt, completion) tokens."""
    n = len(conv)
    p, c = lengths.prompt.astype(np.int64), lengths.completion.astype(np.int64)
    single = np.array([conv.is_single_turn(i) for i in range(n)], dtype=bool)
    cand = np.flatnonzero(single)
    new = {int(i): swapped_messages(conv.roles[i], conv.contents[i]) for i in cand}
    user_new = cache.lengths([new[int(i)][-2]["content"] for i in cand], "tokenizing swapped prompts")
    sw_c = lengths.tokens[lengths.offsets[cand + 1] - 2].astype(np.int64)  # the old user content
    sw_p = p[cand] - sw_c + user_new  # system + new user
    action = np.full(n, KEPT, dtype=np.int8)
    reasons = [NOT_SWAPPABLE] * n
    summary: dict[str, object] = {"not_swappable": int(n - cand.size)}
    if rule.target_rg is None:
        chosen = cand[c[cand] > p[cand]]
        for i in cand.tolist():
            reasons[i] = f"completion {c[i]} {'>' if c[i] > p[i] else '<='} prompt {p[i]} tokens"
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = c[cand] / p[cand]
        order = _descending(ratios)
        rgs = _prefix_rg(p.sum(), c.sum(), (sw_p - p[cand])[order], (sw_c - c[cand])[order])
        k = _closest(rgs, rule.target_rg)
        chosen = cand[order[:k]]
        for q, j in enumerate(order.tolist(), start=1):
            reasons[int(cand[j])] = (f"ratio {ratios[j]:.4g} ranks {q} of {cand.size} swappable; "
                                     f"{'the' if q <= k else 'only the'} top {k} are swapped")
        summary.update(swapped_prefix=k, swap_floor_rg=round(float(np.nanmin(rgs)), 6),
                       swap_ceiling_rg=round(float(np.nanmax(rgs)), 6))
    action[chosen] = SWAPPED
    at = np.searchsorted(cand, chosen)  # `cand` is sorted: where each chosen one sits in it
    out_p, out_c = p.copy(), c.copy()
    out_p[chosen], out_c[chosen] = sw_p[at], sw_c[at]
    return action, reasons, new, out_p, out_c, summary


def _apply_target(rule, action, reasons, out_p, out_c, summary, name) -> None:
    if rule.target_rg is None:
        return
    target, n = rule.target_rg, action.size
    achieved = out_c.sum() / out_p.sum()
    if achieved - target > rule.tolerance * target and rule.allow_drop:
        post = out_c / np.maximum(out_p, 1)
        order = _descending(post)[: n - 1]
        rgs = _prefix_rg(out_p.sum(), out_c.sum(), -out_p[order], -out_c[order])
        m = _closest(rgs, target)
        for q, i in enumerate(order[:m].tolist(), start=1):
            reasons[i] = (f"{'swapped, then ' if action[i] == SWAPPED else ''}left out: post-swap ratio "
                          f"{post[i]:.4g} ranks {q} of {n}; the {m} highest go to reach target R_g {target:g}")
        action[order[:m]] = DROPPED
        summary["dropped_for_target"] = m
        achieved = rgs[m]
    summary["achieved_rg"] = round(float(achieved), 6)
    if abs(achieved - target) > rule.tolerance * target:
        raise TargetError(f"target R_g {target:g} cannot be met within {rule.tolerance:.0%} on {name}: "
                          f"swapping single-turn conversations reaches R_g {summary['swap_floor_rg']:g} "
                          f"to {summary['swap_ceiling_rg']:g} (closest: {achieved:.4g})"
                          + ("" if rule.allow_drop or target > summary["swap_floor_rg"] else
                             "; --allow-drop leaves out the highest-ratio ones"))


def _writer(conversations: list[list[dict]], fmt: str):
    if fmt == "parquet":
        def write(tmp: Path) -> None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            message = pa.struct([("role", pa.string()), ("content", pa.string())])
            schema = pa.schema([("messages", pa.list_(message))])
            pq.write_table(pa.table([pa.array(conversations, pa.list_(message))], schema=schema), tmp)
        return write
    rows = [json.dumps({"messages": c}, ensure_ascii=False) for c in conversations]
    if fmt == "jsonl":
        return text_writer("".join(r + "\n" for r in rows))
    return text_writer("[\n" + ",\n".join("  " + r for r in rows) + "\n]\n")


def build_chat_dataset(measured, rule, options, cache, identity, out, fmt, held):
    """Build a variant of a conversation dataset under `rule`; write it and its manifest through
    `held`, the claim `pipeline.build_dataset` holds on them."""
    from alpaca_plw.data.built import Built, manifest_path

    conv, lengths = measured.records, measured.lengths
    action, reasons, new, out_p, out_c, summary = _plan(conv, lengths, rule, cache)
    _apply_target(rule, action, reasons, out_p, out_c, summary, conv.source.name)
    keep = np.flatnonzero(action != DROPPED)
    result = [new[i] if action[i] == SWAPPED else conv.messages(i) for i in keep.tolist()]
    flat = [m for c in result for m in c]
    tokens = cache.lengths([m["content"] for m in flat], "tokenizing the output")
    role = np.array([ROLES.index(m["role"]) for m in flat], dtype=np.int8)
    offsets = np.concatenate(([0], np.cumsum([len(c) for c in result]))).astype(np.int64)
    stats = compute_chat_stats(out.name, ChatLengths(tokens, role, offsets), identity)
    output_index = (action != DROPPED).cumsum() - 1
    counts = {"source": int(action.size), "kept": int(keep.size),
              "swapped": int((action == SWAPPED).sum()), "dropped": int((action == DROPPED).sum()),
              "not_swappable": summary["not_swappable"]}
    src = conv.source
    manifest = {
        "tool": f"alpaca-plw {__version__}", "kind": KIND,
        "source": {"path": src.path, "kind": src.kind, "sha256": src.sha256, "records": len(conv),
                   "split": options.split if src.kind in ("hub", "arrow-dir") else None,
                   "columns": {"messages": options.columns.messages}},
        "tokenizer": identity, "rule": {**rule.to_json(), **summary},
        "output": {"file": out.name, "format": fmt}, "stats": stats.to_json(), "counts": counts,
        "provenance": [{"source_index": i, "action": ACTION_NAMES[a], "reason": r,
                        "output_index": None if a == DROPPED else int(j)}
                       for i, (a, r, j) in enumerate(zip(action.tolist(), reasons, output_index.tolist()))],
    }
    held.publish_files([(out, _writer(result, fmt)),
                        (manifest_path(out), text_writer(manifest_json(manifest)))])
    return Built(out, manifest_path(out), stats, counts, summary)
