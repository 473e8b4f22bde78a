"""benchmarks/bench_checkpoint.py end to end in its --quick mode (tiny model, 1 and 2 gloo ranks):
every (ranks, path) pair runs and reports, both paths save the same model (so the comparison is
of like with like), and the ratios are computed from the rows. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_checkpoint.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory, llama_dir) -> tuple[dict, Path, str]:
    root = tmp_path_factory.mktemp("bench-checkpoint")
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(root / "out.json"),
         "--keep", str(root / "kept"), "--tokenizer", str(llama_dir)],
        capture_output=True, text=True, timeout=900, cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "out.json").read_text()), root / "kept", result.stdout


@pytest.mark.slow
def test_every_pair_reports_time_and_memory(quick):
    report, _, stdout = quick
    rows = report["rows"]
    assert sorted((r["world"], r["path"]) for r in rows) == [
        (1, "gather-all"), (1, "sharded"), (2, "gather-all"), (2, "sharded")]
    for row in rows:
        for save in ("checkpoint", "final"):
            m = row[save]
            assert m["seconds"] > 0 and m["rank0_peak_rss_mib"] > 0, (row["world"], row["path"])
            assert m["max_extra_mib"] >= m["rank0_extra_mib"] >= 0
    assert "gather-all / sharded" in stdout


@pytest.mark.slow
def test_the_ratios_are_the_rows_divided(quick):
    report, _, _ = quick
    for q in report["ratios"]:
        by = {r["path"]: r for r in report["rows"] if r["world"] == q["world"]}
        for save in ("checkpoint", "final"):
            g, s = by["gather-all"][save], by["sharded"][save]
            if q[f"{save}_seconds"] is not None:
                assert q[f"{save}_seconds"] == pytest.approx(g["seconds"] / s["seconds"], abs=0.01)
            if q[f"{save}_rank0_extra_rss"] is not None:
                assert q[f"{save}_rank0_extra_rss"] == pytest.approx(
                    g["rank0_extra_mib"] / s["rank0_extra_mib"], abs=0.01)
    assert [q["world"] for q in report["ratios"]] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_both_paths_save_the_same_model_and_optimizer_state(quick, world):
    """The final models are equal tensor for tensor, and so are the checkpoints' weights and
    AdamW moments (the sharded checkpoint reassembled by its index's rows)."""
    _, kept, _ = quick
    ours = load_file(str(kept / f"{world}-sharded" / "saved" / "model.safetensors"))
    theirs = load_file(str(kept / f"{world}-gather-all" / "saved" / "final" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    checkpoint = kept / f"{world}-sharded" / "saved" / "checkpoint-1"
    index = json.loads((checkpoint / "trainer_state.json").read_text())
    files = [safe_open(str(checkpoint / f), framework="pt") for f in index["files"]]
    baseline = kept / f"{world}-gather-all" / "saved" / "checkpoint-1"
    legacy = torch.load(baseline / "trainer_state.pt", weights_only=True)
    old = load_file(str(baseline / "model.safetensors"))
    state = legacy["optimizer"]["state"]
    checked = 0
    for key, entry in index["tensors"].items():
        pieces = [files[0].get_tensor(key)] if entry["rows"] is None else \
            [f.get_tensor(key) for f in files]
        value = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        if key.startswith("model/"):
            assert torch.equal(value, old[key[len("model/"):]]), key
            checked += 1
        elif key.startswith("optim/"):
            name, what = key[len("optim/"):].rsplit("/", 1)
            assert torch.equal(value, state["model." + name][what]), key
            checked += 1
    assert checked == len(old) * 4  # weight, then AdamW's step, exp_avg and exp_avg_sq per weight
