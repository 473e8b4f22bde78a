"""README's and RESULTS.md's H200 figures are the recorded run's (benchmarks/results/), not typed
by hand: a re-run that changes the JSON fails here until the prose follows."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_and_results_quote_the_recorded_h200_run():
    one_b, seven_b = json.loads((REPO / "benchmarks" / "results" / "train_h200.json").read_text())
    readme = (REPO / "README.md").read_text()
    results = (REPO / "benchmarks" / "RESULTS.md").read_text()
    assert one_b["shape"] == "1.1b" and seven_b["shape"] == "7b" and seven_b["fits"]
    speedup, mfu = f"{one_b['speedup']:.2f}", f"{one_b['mfu']:.1%}"
    assert f"{speedup} times" in readme and f"{mfu} MFU" in readme
    assert f"{round(seven_b['plw_peak_gib'], 1)} GiB" in readme
    assert f"{one_b['plw_tok_s']:,.0f}" in readme and f"{one_b['plw_peak_gib']:.2f} GiB" in readme
    row = (f"| {one_b['baseline_tok_s']:,.0f} | {one_b['plw_tok_s']:,.0f} | **{speedup}** | "
           f"**{mfu}** | {one_b['mfu_measured_peak']:.1%} | {one_b['baseline_mfu']:.1%} | "
           f"{one_b['baseline_peak_gib']:.2f} | **{one_b['plw_peak_gib']:.2f}** | "
           f"{one_b['loss_baseline']:.4f} | {one_b['loss_plw']:.4f} |")
    assert row in results
    assert f"{seven_b['plw_peak_gib']:.2f} GiB" in results
    assert one_b["speedup"] >= 2.5 and one_b["plw_peak_gib"] <= one_b["baseline_peak_gib"]
