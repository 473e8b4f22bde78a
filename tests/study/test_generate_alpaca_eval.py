"""`generate --alpaca-eval`: the file is read by AlpacaEval's own loader (`alpaca_eval.utils`,
what `alpaca_eval evaluate --model_outputs` calls), names its generator, pairs with an eval set
shaped like AlpacaEval's (instruction, output, generator, dataset) on `instruction`, and goes
through `alpaca_eval.main.evaluate` itself, judged offline by a stand-in judge that prefers the
longer output, to the win rate counted by hand.

These tests skip where alpaca_eval is not installed (`pip install alpaca-eval`: about 5 s and
40 MB over the `dev` extra, which already has its pandas, datasets, scipy and scikit-learn)."""

import json
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generate_runs import short_records, train_run  # noqa: E402

from alpaca_plw.study.generate import GenerateOptions  # noqa: E402
from alpaca_plw.study.generate_run import generate_runs  # noqa: E402


@pytest.fixture()
def alpaca_eval_utils(monkeypatch):
    """alpaca_eval's utils module. alpaca_eval 0.6.6 imports `pkg_resources`, which setuptools >= 82
    no longer ships; where it is missing, a stand-in with the two functions it uses is put in place
    for this test only (README: its own CLI needs `setuptools<81` beside it)."""
    pytest.importorskip("pandas")
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from importlib.metadata import version

        from packaging.version import parse

        monkeypatch.setitem(sys.modules, "pkg_resources", types.SimpleNamespace(
            parse_version=parse,
            get_distribution=lambda name: types.SimpleNamespace(version=version(name))))
    try:
        from alpaca_eval import utils
    except ImportError as exc:
        pytest.skip(f"alpaca_eval is not installed ({exc}); pip install alpaca_eval")
    return utils


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("ae"))


def _eval_set(tmp_path: Path) -> Path:
    """A few rows shaped like AlpacaEval's eval set (`alpaca_eval.json` of tatsu-lab/alpaca_eval):
    instruction, output (the reference model's), generator, dataset."""
    rows = [{"instruction": "Name three primary colors.", "output": "Red, blue and yellow.",
             "generator": "text_davinci_003", "dataset": "selfinstruct"},
            {"instruction": "What is the capital of France?", "output": "Paris.",
             "generator": "text_davinci_003", "dataset": "helpful_base"}]
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_the_file_loads_through_alpaca_evals_own_loader(run, tmp_path, alpaca_eval_utils):
    eval_set = _eval_set(tmp_path)
    options = GenerateOptions(prompts=str(eval_set), device="cpu", max_new_tokens=4,
                              alpaca_eval=True)
    generate_runs([run], options)
    path = run / "generations" / "alpaca_eval.alpaca_eval.json"
    outputs = alpaca_eval_utils.load_or_convert_to_dataframe(path)
    assert alpaca_eval_utils.get_generator_name(None, outputs) == run.name
    lines = [json.loads(x) for x in (run / "generations" / "alpaca_eval.jsonl").read_text().splitlines()]
    assert list(outputs["output"]) == [x["output"] for x in lines]
    reference = alpaca_eval_utils.load_or_convert_to_dataframe(eval_set)
    merged = reference.merge(outputs, on="instruction", suffixes=("_1", "_2"))
    assert len(merged) == len(reference)  # every prompt pairs with its reference output


def test_an_input_is_joined_to_the_instruction_and_generator_can_be_named(run, tmp_path,
                                                                         alpaca_eval_utils):
    source = short_records(tmp_path)
    options = GenerateOptions(prompts=str(source), device="cpu", max_new_tokens=2,
                              alpaca_eval=True, generator="plw-0.1", name="with-inputs")
    generate_runs([run], options)
    outputs = alpaca_eval_utils.load_or_convert_to_dataframe(
        run / "generations" / "with-inputs.alpaca_eval.json")
    records = json.loads(source.read_text())
    assert list(outputs["instruction"]) == [
        r["instruction"] + ("\n\n" + r["input"] if r["input"] else "") for r in records]
    assert set(outputs["generator"]) == {"plw-0.1"}
    assert list(outputs.columns) == ["instruction", "output", "generator"]


def test_alpaca_evals_evaluate_judges_the_file_to_the_win_rate_counted_by_hand(
        run, tmp_path, alpaca_eval_utils, monkeypatch):
    """`alpaca_eval.main.evaluate` (what `alpaca_eval evaluate` runs) on the file, against the eval
    set's reference outputs, with a judge config of AlpacaEval's own format whose completion
    function is a stand-in (no API): it prefers the longer output. Every prompt is judged once,
    against its own reference, and the win rate is the share of prompts whose output is longer."""
    import re

    from alpaca_eval import main
    from alpaca_eval.annotators import base

    eval_set = tmp_path / "eval_set.json"  # references far shorter and far longer than 6 tokens
    eval_set.write_text(json.dumps([
        {"instruction": "Name three primary colors.", "output": "Red, blue and yellow. " * 20,
         "generator": "text_davinci_003", "dataset": "selfinstruct"},
        {"instruction": "What is the capital of France?", "output": "P",
         "generator": "text_davinci_003", "dataset": "helpful_base"},
        {"instruction": "Write a haiku about rain.", "output": "Rain falls on the roof. " * 20,
         "generator": "text_davinci_003", "dataset": "oasst"}]), encoding="utf-8")
    generate_runs([run], GenerateOptions(prompts=str(eval_set), device="cpu", max_new_tokens=6,
                                         alpaca_eval=True, name="judged"))
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "prompt.txt").write_text("<i>{instruction}</i>\n<a>{output_1}</a>\n<b>{output_2}</b>",
                                      encoding="utf-8")
    (judge / "configs.yaml").write_text(
        "longer_judge:\n"
        f"  prompt_template: {json.dumps(str(judge / 'prompt.txt'))}\n"
        "  fn_completions: plw_longer_judge\n"
        "  completions_kwargs: {}\n"
        "  completion_parser_kwargs:\n"
        "    outputs_to_match:\n"
        "      1: '^Output \\(a\\)'\n"
        "      2: '^Output \\(b\\)'\n"
        "  batch_size: 1\n", encoding="utf-8")
    seen = []

    def longer(prompts, **_):
        pairs = [(re.search(r"<i>(.*)</i>", p, re.S)[1], re.search(r"<a>(.*)</a>", p, re.S)[1],
                  re.search(r"<b>(.*)</b>", p, re.S)[1]) for p in prompts]
        seen.extend(pairs)
        answers = ["Output (a)" if len(a) > len(b) else "Output (b)" for _, a, b in pairs]
        return {"completions": answers, "price_per_example": [0.0] * len(answers),
                "time_per_example": [0.0] * len(answers)}

    real = base.get_fn_completions
    monkeypatch.setattr(base, "get_fn_completions",
                        lambda name: longer if name == "plw_longer_judge" else real(name))
    board, annotations = main.evaluate(
        model_outputs=str(run / "generations" / "judged.alpaca_eval.json"),
        reference_outputs=str(eval_set), annotators_config=str(judge / "configs.yaml"),
        output_path=str(tmp_path / "results"), is_return_instead_of_print=True,
        fn_metric="get_winrate", sort_by="win_rate", precomputed_leaderboard=None,
        is_cache_leaderboard=False)
    references = {r["instruction"]: r["output"] for r in json.loads(eval_set.read_text())}
    lines = (run / "generations" / "judged.jsonl").read_text(encoding="utf-8").splitlines()
    outputs = {r["instruction"]: r["output"] for r in map(json.loads, lines)}
    assert all(len(outputs[i]) != len(references[i]) for i in references)  # no ties to break
    assert sorted(i for i, _, _ in seen) == sorted(references)  # each prompt judged once
    for instruction, a, b in seen:  # against its own reference, in either order
        assert {a, b} == {outputs[instruction], references[instruction]}
    wins = sum(len(outputs[i]) > len(references[i]) for i in references)
    assert 0 < wins < len(references)  # the judge's verdicts differ between prompts
    row = board.loc[run.name]
    assert row["n_total"] == len(references) and row["n_wins"] == wins
    assert row["win_rate"] == pytest.approx(100 * wins / len(references))
    assert {a["generator_2"] for a in annotations} == {run.name}
