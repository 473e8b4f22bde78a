"""`generate --alpaca-eval`: the file is read by AlpacaEval's own loader (`alpaca_eval.utils`,
what `alpaca_eval evaluate --model_outputs` calls), names its generator, and pairs with an eval
set shaped like AlpacaEval's (instruction, output, generator, dataset) on `instruction`, as its
pairwise annotator merges them."""

import json
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generate_runs import short_records, train_run  # noqa: E402

from alpaca_plw.study.generate import GenerateOptions, generate_runs  # noqa: E402


@pytest.fixture()
def alpaca_eval_utils(monkeypatch):
    """alpaca_eval's utils module. alpaca_eval 0.6.6 imports `pkg_resources`, which setuptools >= 81
    no longer ships; where it is missing, a stand-in with the one function it uses is put in place
    for this test only."""
    pytest.importorskip("pandas")
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse

        monkeypatch.setitem(sys.modules, "pkg_resources",
                            types.SimpleNamespace(parse_version=parse))
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
