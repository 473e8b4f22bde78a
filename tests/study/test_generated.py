"""`analyze --memorization / --lengths` (the paper's Figure 2c and 2d) on generations sets made by
hand in `generate`'s format, against sacrebleu's own corpus call, a BLEU written here from its
definition, and lengths counted by hand."""

import json
import math
import sys
from collections import Counter

import pytest
from study_helpers import write_log

from alpaca_plw.study.generated import corpus_bleu, lengths, memorization, read_set

sacrebleu = pytest.importorskip("sacrebleu")

# whitespace-separated lower-case words, no punctuation: sacrebleu's 13a tokenizer splits them
# exactly as str.split does, so the BLEU below can be computed from the definition alone
HYPS = ["the cat sat on the mat today", "a dog ran in the park", "it is raining",
        "we like green tea with milk"]
REFS = ["the cat sat on a mat today at noon", "a dog ran in a big park", "it is raining again",
        "we like green tea with milk and honey"]


def bleu_from_definition(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU (Papineni et al.): clipped n-gram precisions summed over the corpus for n = 1..4,
    their geometric mean, times the brevity penalty exp(1 - r / c) when c < r."""
    matches, totals = [0] * 4, [0] * 4
    c = r = 0
    for hyp, ref in zip(hyps, refs):
        h, g = hyp.split(), ref.split()
        c, r = c + len(h), r + len(g)
        for n in range(1, 5):
            hn = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            gn = Counter(tuple(g[i:i + n]) for i in range(len(g) - n + 1))
            matches[n - 1] += sum(min(k, gn[gram]) for gram, k in hn.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    assert all(matches), "the hand BLEU assumes every precision is above zero (no smoothing)"
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    return 100 * bp * math.exp(log_p)


def write_set(run, name, rows, complete=True, count=None, sha="abc", seed=42):
    folder = run / "generations"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (output, tokens, finish, reference) in enumerate(rows):
        lines.append(json.dumps({"index": i, "instruction": f"q{i}", "input": "", "prompt": f"q{i}",
                                 "output": output, "output_tokens": tokens, "finish": finish,
                                 "reference": reference}))
    (folder / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    meta = {"tool": "alpaca-plw generate", "run": run.name, "model": str(run), "base": None,
            "prompts": {"path": "data.json", "sha256": sha, "records": 100}, "n": len(rows),
            "seed": seed, "sampling": {"greedy": True}, "template": "alpaca",
            "complete": complete, "count": len(rows) if count is None else count}
    (folder / f"{name}.json").write_text(json.dumps(meta))


def mem_rows(hyps, refs):
    return [(h, len(h.split()), "eos", r) for h, r in zip(hyps, refs)]


def test_corpus_bleu_is_sacrebleus_own_corpus_call():
    assert corpus_bleu(HYPS, REFS) == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    # with punctuation and case, where only sacrebleu's tokenizer knows the answer
    hyps = ["Hello, world! It's fine.", "The U.S. economy grew 3.5% in 2023."]
    refs = ["Hello world, it's fine.", "The U.S. economy grew by 3.5% in 2023."]
    assert corpus_bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs]).score


def test_corpus_bleu_is_the_definition_not_averaged_sentence_bleu_nor_swapped():
    expected = bleu_from_definition(HYPS, REFS)
    assert corpus_bleu(HYPS, REFS) == pytest.approx(expected, rel=1e-12)
    # the plausible wrong versions give other numbers on these strings
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)) / 4
    assert abs(sentence_mean - expected) > 1.0
    assert abs(bleu_from_definition(REFS, HYPS) - expected) > 1.0  # references and outputs swapped


def test_the_docstring_example_by_hand():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-12)


def test_lengths_are_mean_and_median_counted_by_hand(tmp_path):
    run = tmp_path / "plw-0"
    write_set(run, "ae", [("a b c", 3, "eos", None), ("x " * 10, 10, "length", None),
                          ("d e f g", 4, "eos", None), ("h " * 7, 7, "eos", "ref")])
    assert lengths(read_set(run, "ae")) == (6.0, 5.5, 1)  # (3+10+4+7)/4; (4+7)/2; one at limit


def test_memorization_reads_the_set_in_index_order(tmp_path):
    run = tmp_path / "plw-0"
    write_set(run, "mem", mem_rows(HYPS, REFS))
    rows = (run / "generations" / "mem.jsonl").read_text().splitlines()
    (run / "generations" / "mem.jsonl").write_text("\n".join(reversed(rows)) + "\n")
    gen = read_set(run, "mem")
    assert [r["index"] for r in gen.records] == [0, 1, 2, 3]
    assert memorization(gen) == pytest.approx(bleu_from_definition(HYPS, REFS), rel=1e-12)


def _two_runs(tmp_path):
    runs = []
    for plw, hyps, toks in ((0.0, HYPS, [5, 9, 2, 30]), (1.0, REFS, [20, 21, 22, 100])):
        run = tmp_path / f"plw-{plw:g}"
        write_log(run, [3.0, 2.0, 1.0])
        write_set(run, "mem", mem_rows(hyps, REFS))
        write_set(run, "ae", [(f"o{i}", t, "length" if t >= 30 else "eos", None)
                              for i, t in enumerate(toks)])
        runs.append(run)
    return runs


def test_analyze_json_gives_each_run_its_own_bleu_and_lengths(run_cli, tmp_path):
    runs = _two_runs(tmp_path)
    code, stdout, stderr = run_cli(["analyze", *runs, "--memorization", "mem", "--lengths", "ae",
                                    "--json"])
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["plw"] for r in rows] == [0.0, 1.0]
    assert rows[0]["memorization"] == pytest.approx(bleu_from_definition(HYPS, REFS), rel=1e-12)
    assert rows[1]["memorization"] == pytest.approx(100.0)  # outputs equal to the references
    assert (rows[0]["length_mean"], rows[0]["length_median"], rows[0]["length_cut"]) == \
        (11.5, 7.0, 1)  # (5+9+2+30)/4, (5+9)/2
    assert (rows[1]["length_mean"], rows[1]["length_median"], rows[1]["length_cut"]) == \
        (40.75, 21.5, 1)  # (20+21+22+100)/4, (21+22)/2
    assert rows[0]["memorization_records"] == 4 and rows[0]["length_records"] == 4
    assert rows[0]["memorization_set"] == "mem" and rows[0]["notes"] == []


def test_analyze_without_the_options_keeps_its_json_keys(run_cli, tmp_path):
    runs = _two_runs(tmp_path)
    code, stdout, stderr = run_cli(["analyze", *runs, "--json"])
    assert code == 0, stderr
    assert not any(k.startswith(("memorization", "length")) or k == "notes"
                   for k in json.loads(stdout.splitlines()[0]))


def test_the_table_shows_bleu_and_lengths_and_the_plot_draws_them(run_cli, tmp_path):
    runs = _two_runs(tmp_path)
    code, stdout, stderr = run_cli(["analyze", *runs, "--memorization", "mem", "--lengths", "ae",
                                    "--plot", tmp_path / "a.png"])
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert f"{bleu_from_definition(HYPS, REFS):.2f}" in text and "100.00" in text
    for needle in ("11.5", "7.0", "40.8", "21.5", "1/4", "Memorization"):
        assert needle in text, needle
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_without_the_set_or_with_an_incomplete_one_gets_a_note_not_a_blank(run_cli,
                                                                                  tmp_path):
    runs = _two_runs(tmp_path)
    (runs[1] / "generations" / "mem.json").unlink()
    write_set(runs[0], "ae", [("o", 3, "eos", None)] * 2, complete=False)
    code, stdout, stderr = run_cli(["analyze", *runs, "--memorization", "mem", "--lengths", "ae",
                                    "--json"])
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert rows[0]["length_mean"] is None and "incomplete" in rows[0]["notes"][0]
    assert rows[1]["memorization"] is None and "no generations set 'mem'" in rows[1]["notes"][0]
    assert rows[0]["memorization"] is not None and rows[1]["length_mean"] == 40.75
    code, stdout, stderr = run_cli(["analyze", *runs, "--memorization", "mem", "--lengths", "ae"])
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert "note: plw-0: --lengths: generations set 'ae' is incomplete" in text
    assert "note: plw-1: --memorization: no generations set 'mem'" in text


def test_a_count_that_disagrees_with_the_records_is_a_note(tmp_path):
    from alpaca_plw.study.analyze import analyze_runs

    runs = _two_runs(tmp_path)
    write_set(runs[1], "ae", [("o", 3, "eos", None)] * 2, count=5)
    result = analyze_runs(runs, lengths="ae")
    assert result[1].length_mean is None and "count 5" in result[1].notes[0]


def test_sets_made_from_other_prompts_are_said_not_to_compare(tmp_path):
    from alpaca_plw.study.analyze import analyze_runs

    runs = _two_runs(tmp_path)
    write_set(runs[1], "mem", mem_rows(REFS, REFS), seed=7)
    result = analyze_runs(runs, memorization="mem")
    assert all("differ in seed, so their values do not compare" in r.notes[-1] for r in result)


def test_an_unfinished_set_ending_in_a_torn_line_is_a_note(tmp_path):
    """`generate` killed mid-write leaves a last line without its end; that set is unfinished,
    not broken."""
    from alpaca_plw.study.analyze import analyze_runs

    runs = _two_runs(tmp_path)
    write_set(runs[0], "ae", [("o", 3, "eos", None)] * 3, complete=False)
    with (runs[0] / "generations" / "ae.jsonl").open("a") as handle:
        handle.write('{"index": 3, "outp')
    result = analyze_runs(runs, lengths="ae")
    assert result[0].length_mean is None
    assert "'ae' is incomplete (3 of 3 records so far" in result[0].notes[0]
    write_set(runs[0], "ae", [("o", 3, "eos", None)] * 3)
    (runs[1] / "generations" / "ae.jsonl").unlink()
    (runs[1] / "generations" / "ae.json").unlink()
    result = analyze_runs(runs, lengths="ae", memorization="mem")
    assert "no generations set 'ae' (generations/ae.json and .jsonl; it has mem)" in \
        result[1].notes[0]


@pytest.mark.parametrize("args,needle", [
    (["--memorization", "nope"], "no run has a usable generations set 'nope'"),
    (["--lengths", "../x"], "not a path"),
])
def test_no_run_with_the_set_or_a_path_for_a_name_is_one_line(run_cli, tmp_path, args, needle):
    runs = _two_runs(tmp_path)
    code, _, stderr = run_cli(["analyze", *runs, *args])
    assert code == 2 and needle in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("edit,needle", [
    (lambda r: {**r, "output_tokens": "7"}, "'output_tokens' '7' is not a count"),
    (lambda r: {**r, "finish": "stop"}, "'finish' 'stop' is neither"),
    (lambda r: {**r, "reference": None}, "have no reference"),
    (lambda r: {**r, "index": 1}, "appears more than once"),
])
def test_a_bad_record_is_one_line_naming_the_file(run_cli, tmp_path, edit, needle):
    runs = _two_runs(tmp_path)
    path = runs[0] / "generations" / "mem.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0] = edit(rows[0])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, stderr = run_cli(["analyze", *runs, "--memorization", "mem"])
    assert code == 2 and needle in stderr and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("hide", ["sys.modules", "find_spec"])
def test_without_sacrebleu_memorization_names_the_extra_in_one_line(run_cli, tmp_path,
                                                                    monkeypatch, hide):
    """sacrebleu hidden (None in sys.modules: `import sacrebleu` raises, find_spec says None; or
    find_spec alone saying None): one `error:` line naming the `study` extra, exit 5, before any
    run is read, and no --plot written; --lengths alone does not need sacrebleu."""
    import importlib.util

    from alpaca_plw import extras

    if hide == "sys.modules":
        for module in [m for m in sys.modules if m == "sacrebleu" or m.startswith("sacrebleu.")]:
            monkeypatch.delitem(sys.modules, module)
        monkeypatch.setitem(sys.modules, "sacrebleu", None)
        with pytest.raises(ImportError):
            import sacrebleu as _  # noqa: F401 - the module really is out of reach
    else:
        real = importlib.util.find_spec
        monkeypatch.setattr(extras.importlib.util, "find_spec",
                            lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    runs = _two_runs(tmp_path)
    plot = tmp_path / "a.png"
    code, stdout, stderr = run_cli(["analyze", *runs, "--memorization", "mem", "--plot", plot])
    assert code == 5 and stdout == "" and not plot.exists()
    assert stderr.strip().splitlines() == [
        "error: alpaca-plw analyze --memorization needs sacrebleu, which is not installed: "
        "pip install 'alpaca-plw[study]'"]
    code, _, stderr = run_cli(["analyze", *runs, "--lengths", "ae", "--json"])
    assert code == 0, stderr


def test_a_set_not_made_from_the_runs_training_data_is_said(tmp_path):
    from alpaca_plw.study.analyze import analyze_runs

    runs = _two_runs(tmp_path)  # their sets say prompts sha256 "abc"
    for run, trained in zip(runs, ("abc", "f00d")):
        (run / "run.json").write_text(json.dumps({"weights": {"meta": {"source": {
            "sha256": trained}}}}))
    result = analyze_runs(runs, memorization="mem")
    assert result[0].notes == []
    assert "made from prompts with sha256 abc..., the run trained on f00d..." in \
        result[1].notes[0]
    assert result[1].memorization == pytest.approx(100.0)  # measured all the same
    assert result[0].memorization_bleu.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|")
