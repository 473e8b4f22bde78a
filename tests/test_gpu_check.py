"""benchmarks/gpu_check.py in its reduced CPU mode: every stage runs end to end (the H200 run uses
the same code with the real shapes), and what it reports is right where the CPU can judge it."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reduced_gpu_check_runs_every_stage_and_reports_exact_cpu_paths(tmp_path):
    gpu_check = _script()
    stages = "env,attention_work,kernels,equivalence,bench,memory,smoke,seven_b"
    report = gpu_check.main(["--reduced", "--out", str(tmp_path), "--stages", stages,
                             "--data", str(SHARED / "data" / "alpaca_data.json"),
                             "--tokenizer", str(SHARED / "tokenizers" / "llama")])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["stages"].keys() == report["stages"].keys()
    s = report["stages"]
    assert all("error" not in s[name] for name in s), {k: v.get("error") for k, v in s.items()}
    assert s["seven_b"] == {"skipped": "needs CUDA"}
    work = s["attention_work"]
    assert work["dense_mask"] > 4 * work["varlen_tiles"] >= 4  # the dense mask wastes most pairs
    for shape in ("1.1b", "7b", "head_dim_100"):
        assert max(v for k, v in s["kernels"][shape].items() if k.endswith("_rel_err")) < 1e-5
    for impl in ("sdpa", "eager", "torch_varlen"):
        assert s["equivalence"][impl]["packed_vs_separate"] < 1e-5, impl
    assert s["equivalence"]["packed_varlen_chunked"]["grad_rel_diff"] < 1e-5
    bench = s["bench"]["results"][0]
    # the hand loop optimises the PLW-weighted loss; TRL (where installed) the completion-only one
    plw_side = "loss_step1_plw_completion" if bench.get("baseline") == "trl" else "loss_step1_plw"
    assert bench["loss_step1_baseline"] == pytest.approx(bench[plw_side], abs=1e-4)
    for group in ("memory", "smoke"):
        for name, run in s[group].items():
            if name == "seconds":
                continue
            assert run["ok"] and len(run["losses"]) == 3, (group, name, run)


def test_an_out_folder_holding_results_is_not_overwritten_without_force(tmp_path):
    gpu_check = _script()
    (tmp_path / "gpu_check.json").write_text('{"kept": true}')
    args = ["--reduced", "--out", str(tmp_path), "--stages", "env",
            "--data", str(SHARED / "data" / "alpaca_data.json"),
            "--tokenizer", str(SHARED / "tokenizers" / "llama")]
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(args)
    assert stopped.value.code == 2
    assert (tmp_path / "gpu_check.json").read_text() == '{"kept": true}'
    report = gpu_check.main(args + ["--force"])
    assert report["stages"]["env"]["torch"]
