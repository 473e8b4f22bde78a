"""`stats`: the PLW guide, R_g against the mean of ratios, population std, the JSON row, token
counting once per distinct text, the Hugging Face fast fallback and the plot."""

from __future__ import annotations

import itertools
import json
import shutil
import sys

import numpy as np
import pytest
from reference import REF_GUIDE, REF_STARS, comparable, expected_stats, reference_guide, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

STATS_KEYS = {
    "dataset", "records", "instruction", "input", "completion", "prompt", "total_tokens",
    "prompt_tokens", "completion_tokens", "rg", "rg_mean_of_ratios", "rg_median",
    "recommended_plw", "tokenizer",
}

# Three records whose per-record ratios are far apart, so sum/sum and the mean of ratios differ.
HANDMADE = [
    {"instruction": "Say yes.", "input": "",
     "output": "Yes. I am happy to say yes, and I will keep saying yes for as long as you would "
               "like me to, because agreeing is pleasant and costs nothing at all."},
    {"instruction": "Read the following paragraph carefully, think about its tone and its "
                    "structure, and then answer the question about it with a single word.",
     "input": "The rain fell all day.", "output": "Gloomy."},
    {"instruction": "Translate to English.", "input": "Bonjour tout le monde",
     "output": "Hello everyone"},
]


def _stats_json(run_cli, *args) -> list[dict]:
    code, stdout, stderr = run_cli(["stats", "--json", *args])
    assert code == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()]


# --- the guide -------------------------------------------------------------------------------

@pytest.mark.parametrize("row", reference_guide(), ids=[f"rg{r[0]}" for r in REF_GUIDE])
def test_guide_rows_are_reproduced_exactly(row):
    from alpaca_plw.data.guide import recommend

    rec = recommend(row[0])
    assert (rec.all, rec.mc, rec.gen) == row[1:]


def test_guide_midpoint_1_25_interpolates_linearly():
    from alpaca_plw.data.guide import recommend

    rec = recommend(1.25)
    assert rec.all == 0.169  # (0.155 + 0.183) / 2
    assert rec.gen == 0.353  # (0.321 + 0.385) / 2
    assert rec.mc == pytest.approx(0.2305, abs=0.0006)
    assert "interpolated" in rec.note


@pytest.mark.parametrize("lo,hi", list(itertools.pairwise(reference_guide())),
                         ids=[f"{a[0]}-{b[0]}" for a, b in itertools.pairwise(REF_GUIDE)])
def test_guide_every_midpoint_is_the_mean_of_its_rows(lo, hi):
    from alpaca_plw.data.guide import recommend

    rec = recommend((lo[0] + hi[0]) / 2)
    for got, a, b in zip((rec.all, rec.mc, rec.gen), lo[1:], hi[1:]):
        assert got == pytest.approx((a + b) / 2, abs=0.0006)


def test_guide_uses_one_documented_value_where_every_column_is_starred():
    from alpaca_plw.data.guide import FLAT_PLW, recommend

    assert FLAT_PLW == 0.1
    flat_rows = [row[0] for row in REF_GUIDE if row[0] >= 2.5 and all(REF_STARS[row[0]])]
    assert flat_rows == [2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5]
    for rg in [2.5, 3.29, 4.5, 4.75, 6.2, 7.5]:  # the sample sits at 4.5, Alpaca at about 3.3
        rec = recommend(rg)
        assert (rec.all, rec.mc, rec.gen) == (0.1, 0.1, 0.1)
        assert "barely matters" in rec.note and "one documented value, 0.1" in rec.note
    assert recommend(8.0).gen == 0.654  # an unstarred cell keeps the guide's value


@pytest.mark.parametrize("rg", [0.0, 0.042, 0.082, 0.499])
def test_guide_below_0_5_uses_the_0_5_row_and_says_so(rg):
    from alpaca_plw.data.guide import recommend

    rec = recommend(rg)
    assert (rec.all, rec.mc, rec.gen) == (0.155, 0.155, 0.292)
    assert "below" in rec.note and "0.5" in rec.note


@pytest.mark.parametrize("rg", [2.5, 3.28, 4.6, 8.0, 12.0])
def test_guide_at_or_above_2_5_says_plw_barely_matters(rg):
    from alpaca_plw.data.guide import recommend

    assert "barely matters" in recommend(rg).note


@pytest.mark.parametrize("rg", [0.5, 1.0, 1.9, 2.49])
def test_guide_below_2_5_does_not_say_plw_barely_matters(rg):
    from alpaca_plw.data.guide import recommend

    assert "barely matters" not in recommend(rg).note


def test_guide_above_8_uses_the_8_row():
    from alpaca_plw.data.guide import recommend

    rec = recommend(20.0)
    assert (rec.all, rec.mc, rec.gen) == (0.1, 0.1, 0.654)  # starred cells at the flat value


# --- R_g and the row -------------------------------------------------------------------------

def test_rg_is_sum_over_sum_not_mean_of_ratios(tmp_path, run_cli, sp_counter):
    counts = [sp_counter.record(r) for r in HANDMADE]  # (prompt, completion) per record
    rg = sum(c for _, c in counts) / sum(p for p, _ in counts)
    mean_of_ratios = sum(c / p for p, c in counts) / 3
    median = sorted(c / p for p, c in counts)[1]
    assert abs(rg - mean_of_ratios) > 0.5, "the handmade data must separate the two definitions"

    [row] = _stats_json(run_cli, write_json(tmp_path / "three.json", HANDMADE))
    assert row["rg"] == round(rg, 6)
    assert row["rg_mean_of_ratios"] == round(mean_of_ratios, 6)
    assert row["rg_median"] == round(median, 6)
    assert row["prompt_tokens"] == sum(p for p, _ in counts)
    assert row["completion_tokens"] == sum(c for _, c in counts)
    assert row["total_tokens"] == sum(p + c for p, c in counts)


def test_std_is_population_std(tmp_path, run_cli, sp_counter):
    inst = np.array(sp_counter.counts([r["instruction"] for r in HANDMADE]), dtype=float)
    out = np.array(sp_counter.counts([r["output"] for r in HANDMADE]), dtype=float)
    [row] = _stats_json(run_cli, write_json(tmp_path / "three.json", HANDMADE))
    assert row["instruction"] == {"mean": round(inst.mean(), 4), "std": round(inst.std(ddof=0), 4)}
    assert row["completion"]["std"] == round(out.std(ddof=0), 4)
    assert row["completion"]["std"] != round(out.std(ddof=1), 4)


def test_stats_json_has_exactly_the_issue_keys(run_cli, sample_path):
    [row] = _stats_json(run_cli, sample_path)
    assert set(row) == STATS_KEYS
    for name in ("instruction", "input", "completion", "prompt"):
        assert set(row[name]) == {"mean", "std"}
    assert set(row["recommended_plw"]) == {"all", "mc", "gen", "note"}
    assert row["dataset"] == "sample.json"
    assert row["tokenizer"]["backend"] == "sentencepiece"


def test_stats_json_prints_one_line_per_dataset_in_argument_order(tmp_path, run_cli, sample_path):
    other = write_json(tmp_path / "three.json", HANDMADE)
    code, stdout, stderr = run_cli(["stats", "--json", sample_path, other])
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert [json.loads(line)["dataset"] for line in lines] == ["sample.json", "three.json"]
    assert [json.loads(line)["records"] for line in lines] == [128, 3]


def test_sample_stats_equal_an_independent_computation(run_cli, sample_path, sample_records,
                                                        sp_counter):
    [row] = _stats_json(run_cli, sample_path)
    assert comparable(row) == expected_stats(sample_records, sp_counter)


def test_default_source_is_the_sample(run_cli, repo_root, tmp_path):
    rows_default = _stats_json(run_cli)
    rows_explicit = _stats_json(run_cli, repo_root / "data" / "sample.json")
    assert rows_default == rows_explicit


def test_table_output_names_population_std_and_ratio_columns(run_cli, sample_path, sample_records,
                                                            sp_counter):
    code, stdout, stderr = run_cli(["stats", sample_path])
    assert code == 0, stderr
    assert "population std" in stdout
    assert "R_g" in stdout and "Mean ratio" in stdout and "Median ratio" in stdout
    rg = expected_stats(sample_records, sp_counter)["rg"]
    assert f"{rg:.3f}" in stdout
    assert "barely matters" in stdout  # the sample is long-completion data
    text = " ".join(stdout.split())  # the line may wrap on a narrow console
    assert "Other studies: Instruction Modelling (Shi et al. 2024)" in text
    assert "WIT (Chatterjee et al. 2025)" in text and "disagree" in text


# --- token counting --------------------------------------------------------------------------

class CountingTokenizer:
    """Delegates to sentencepiece and remembers every text it was asked to encode."""

    def __init__(self, sp):
        self.sp = sp
        self.seen: list[str] = []

    def encode_batch(self, texts):
        self.seen.extend(texts)
        return self.sp.encode(list(texts))


def test_length_cache_tokenizes_each_distinct_text_once(sp_counter):
    from alpaca_plw.data.lengths import LengthCache

    tok = CountingTokenizer(sp_counter.sp)
    cache = LengthCache(tok)
    first = cache.lengths(["one two", "", "three", "one two", "three", "one two"])
    second = cache.lengths(["three", "four five six", "one two", "four five six"])
    assert sorted(tok.seen) == sorted(["one two", "three", "four five six"])
    assert first.tolist() == sp_counter.counts(["one two", "", "three", "one two", "three", "one two"])
    assert second.tolist() == sp_counter.counts(["three", "four five six", "one two", "four five six"])


def test_builder_measures_only_new_swapped_texts(sample_path, sample_records, sp_counter):
    from alpaca_plw.data.alpaca.build import MEDIUM, SHORT, build
    from alpaca_plw.data.lengths import LengthCache, measure
    from alpaca_plw.data.reading.sources import load_records

    tok = CountingTokenizer(sp_counter.sp)
    cache = LengthCache(tok)
    records = load_records(sample_path)
    lengths = measure(records, cache)
    source_texts = {r[f] for r in sample_records for f in ("instruction", "input", "output")} - {""}
    assert sorted(tok.seen) == sorted(source_texts)
    tok.seen.clear()
    build(records, lengths, SHORT, cache)
    build(records, lengths, MEDIUM, cache)
    assert len(tok.seen) == len(set(tok.seen)), "a text was tokenized twice"
    assert not set(tok.seen) & source_texts, "a source text was tokenized again"
    assert all(t.startswith("Predict the prompt that generated") for t in tok.seen)


def test_pipeline_tokenizes_each_distinct_text_once_per_run(tmp_path, monkeypatch, llama_dir):
    from alpaca_plw.data import pipeline
    from alpaca_plw.data.alpaca.build import TINY
    from alpaca_plw.data.tokenizer import load_tokenizer

    seen: list[str] = []

    def counting_loader(spec=None, threads=None):
        tok = load_tokenizer(spec, threads)
        real = tok.encode_batch
        tok.encode_batch = lambda texts: (seen.extend(texts), real(texts))[1]
        return tok

    monkeypatch.setattr(pipeline, "load_tokenizer", counting_loader)
    pipeline.build_dataset(None, TINY, pipeline.DataOptions(tokenizer=str(llama_dir)),
                           out=tmp_path / "tiny.json")
    assert seen and len(seen) == len(set(seen))


# --- tokenizer backends ----------------------------------------------------------------------

@pytest.fixture()
def hf_only_dir(tmp_path, llama_dir):
    folder = tmp_path / "llama-hf"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_dir / name, folder / name)
    return folder


def test_folder_without_tokenizer_model_falls_back_to_hf_fast_with_same_vocab(hf_only_dir,
                                                                             llama_dir):
    from alpaca_plw.data.tokenizer import load_tokenizer

    hf = load_tokenizer(str(hf_only_dir))
    sp = load_tokenizer(str(llama_dir))
    assert hf.backend == "hf-fast"
    assert sp.backend == "sentencepiece"
    assert hf.identity()["vocab_size"] == sp.identity()["vocab_size"] == 32000
    assert hf.identity()["vocab_sha256"] == sp.identity()["vocab_sha256"]
    assert (hf.bos_id, hf.eos_id) == (sp.bos_id, sp.eos_id) == (1, 2)


def test_hf_fast_counts_match_sentencepiece_on_single_spaced_text(hf_only_dir, run_cli, tmp_path,
                                                                  sp_counter):
    [row] = _stats_json(run_cli, write_json(tmp_path / "three.json", HANDMADE),
                        "--tokenizer", hf_only_dir)
    assert row["tokenizer"]["backend"] == "hf-fast"
    assert row["tokenizer"]["name"] == "llama-hf"
    assert comparable(row) == expected_stats(HANDMADE, sp_counter)


def test_sentencepiece_model_file_can_be_given_directly(run_cli, llama_dir, sample_path):
    [by_file] = _stats_json(run_cli, sample_path, "--tokenizer", llama_dir / "tokenizer.model")
    [by_dir] = _stats_json(run_cli, sample_path, "--tokenizer", llama_dir)
    assert by_file == by_dir


def test_tokenizer_option_overrides_environment(run_cli, llama_dir, sample_path, tmp_path):
    code, stdout, stderr = run_cli(["stats", "--json", sample_path, "--tokenizer", llama_dir],
                                   env={"ALPACA_PLW_TOKENIZER": str(tmp_path / "nowhere")})
    assert code == 0, stderr
    assert json.loads(stdout)["tokenizer"]["backend"] == "sentencepiece"


# --- the plot --------------------------------------------------------------------------------

def test_plot_writes_a_png(tmp_path, run_cli, sample_path):
    pytest.importorskip("matplotlib")
    other = write_json(tmp_path / "three.json", HANDMADE)
    target = tmp_path / "figs" / "lengths.png"
    code, stdout, stderr = run_cli(["stats", sample_path, other, "--json", "--plot", target])
    assert code == 0, stderr
    assert target.read_bytes()[:8] == PNG_MAGIC
    assert len(stdout.splitlines()) == 2  # the JSON rows are still printed, and only them
    assert str(target) in stderr
    assert sorted(p.name for p in target.parent.iterdir()) == ["lengths.png"]


def test_plot_with_non_png_name_is_a_clear_error(tmp_path, run_cli, sample_path):
    target = tmp_path / "lengths.pdf"
    code, _stdout, stderr = run_cli(["stats", sample_path, "--plot", target])
    assert code != 0
    assert "Traceback" not in stderr
    assert "--plot" in stderr and ".png" in stderr and "lengths.pdf" in stderr
    assert list(tmp_path.iterdir()) == []


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, run_cli, sample_path,
                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, stderr = run_cli(["stats", sample_path, "--plot", tmp_path / "lengths.png"])
    assert code != 0
    assert "Traceback" not in stderr
    assert "--plot needs matplotlib" in stderr and "pip install matplotlib" in stderr
    assert list(tmp_path.iterdir()) == []


def test_plot_without_matplotlib_names_the_plot_extra(tmp_path, run_cli, sample_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, stderr = run_cli(["stats", sample_path, "--plot", tmp_path / "lengths.png"])
    assert code != 0
    assert "pip install 'alpaca-plw[plot]'" in stderr


def test_error_message_quotes_bad_value_verbatim(tmp_path, run_cli):
    source = write_json(tmp_path / "tagged.json",
                        [{"instruction": "Hi", "input": "", "output": {"note": "[bold]x"}}])
    code, _, stderr = run_cli(["stats", source])
    assert code != 0
    assert "[bold]x" in stderr
