"""The builders on conversations: single-turn ones swap with REFERENCE.md's strings, multi-turn ones
are kept with their reason, and the short rule matches an independent count."""

from __future__ import annotations

import json
from pathlib import Path

from reference import REF_SWAP_NO_INPUT

CONVERSATIONS = Path(__file__).resolve().parents[1] / "fixtures" / "chat" / "conversations.jsonl"


def test_build_short_swaps_single_turn_conversations_by_the_short_rule(run_cli, tmp_path, sp_counter):
    source = [json.loads(line)["messages"] for line in CONVERSATIONS.read_text(encoding="utf-8").splitlines()]
    code, _, err = run_cli(["build-short", CONVERSATIONS, "-o", tmp_path / "s.jsonl"])
    assert code == 0, err
    built = [json.loads(line)["messages"] for line in (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    manifest = json.loads((tmp_path / "s.manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "conversations" and len(built) == len(source)
    swapped = 0
    for i, (old, new, row) in enumerate(zip(source, built, manifest["provenance"])):
        roles = [m["role"] for m in old]
        if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
            assert new == old and row["reason"] == "multi-turn: not swappable" and row["action"] == "kept"
            continue
        prompt = sum(sp_counter.counts([m["content"] for m in old if m["role"] != "assistant"]))
        completion = sp_counter.count(old[-1]["content"])
        if completion > prompt:
            swapped += 1
            assert row["action"] == "swapped"
            assert new[:-2] == old[:-2]  # the system message stays
            assert new[-2] == {"role": "user", "content": REF_SWAP_NO_INPUT + "\n\n" + old[-1]["content"]}
            assert new[-1] == {"role": "assistant", "content": old[-2]["content"]}
        else:
            assert row["action"] == "kept" and new == old
    assert swapped == manifest["counts"]["swapped"] > 0
    assert manifest["counts"]["not_swappable"] == 1
    assert "1 kept as multi-turn: not swappable" in err


def test_target_build_reports_the_reachable_range(run_cli, tmp_path):
    code, out, err = run_cli(["build-medium", CONVERSATIONS, "-o", tmp_path / "m.json"])
    assert code == 4 and out == "" and "swapping single-turn conversations reaches R_g" in err
    assert not (tmp_path / "m.json").exists()
