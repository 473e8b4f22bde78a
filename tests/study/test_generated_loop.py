"""`generate` then `analyze --memorization --lengths` on real run folders: what analyze reports is
sacrebleu's corpus BLEU and the token counts of the very lines generate wrote, read here on their
own; the sets are made from the runs' training data, so no note says otherwise."""

import json
import statistics

import pytest
from cli_invoke import invoke_cli
from study_helpers import save_tiny_llama, small_source

from alpaca_plw.study.generated import training_sha256

sacrebleu = pytest.importorskip("sacrebleu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs (PLW 0 and 1, one step each) on the same 6 short records."""
    root = tmp_path_factory.mktemp("loop")
    model = save_tiny_llama(root / "model")
    source = small_source(root, 6)
    out = []
    for plw in ("0", "1"):
        code, _, err = invoke_cli(["weights", source, "--plw", plw, "-o", root / f"w{plw}",
                                   "--max-length", "128"])
        assert code == 0, err
        run = root / f"plw-{plw}"
        code, _, err = invoke_cli(["train", root / f"w{plw}", "--model", model, "--output-dir",
                                   run, "--max-steps", "1", "--batch-size", "2",
                                   "--micro-batch-size", "2", "--device", "cpu"])
        assert code == 0, err
        out.append(run)
    code, _, err = invoke_cli(["generate", *out, "--prompts", source, "-n", "4", "--seed", "3",
                               "--max-new-tokens", "6", "--name", "mem", "--device", "cpu"])
    assert code == 0, err
    return out


def test_analyze_reports_bleu_and_lengths_of_what_generate_wrote(runs):
    code, stdout, err = invoke_cli(["analyze", *runs, "--memorization", "mem", "--lengths", "mem",
                                    "--json"])
    assert code == 0, err
    rows = {r["run"]: r for r in map(json.loads, stdout.splitlines())}
    for run in runs:
        lines = [json.loads(line) for line in
                 (run / "generations" / "mem.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(lines) == 4 and all(line["reference"] is not None for line in lines)
        row = rows[run.name]
        expected = sacrebleu.corpus_bleu([line["output"] for line in lines],
                                         [[line["reference"] for line in lines]]).score
        assert row["memorization"] == pytest.approx(expected, rel=1e-12)
        tokens = [line["output_tokens"] for line in lines]
        assert row["length_mean"] == pytest.approx(sum(tokens) / 4)
        assert row["length_median"] == pytest.approx(statistics.median(tokens))
        assert row["length_cut"] == sum(line["finish"] == "length" for line in lines)
        assert row["notes"] == [], row["notes"]  # same prompts, and the runs' training data
        meta = json.loads((run / "generations" / "mem.json").read_text(encoding="utf-8"))
        assert training_sha256(run) == meta["prompts"]["sha256"] is not None
