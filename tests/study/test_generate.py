"""`generate`: greedy outputs against a hand argmax loop (full and LoRA runs), prompt text against
REFERENCE.md's template strings, token counts by hand, left padding against batch size 1, the
seeded -n sample, seeded sampling, and the settings rules."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generate_runs import NO_INPUT, WITH_INPUT, hand_greedy, sentencepiece, train_run  # noqa: E402

from alpaca_plw.study.generate import GenerateOptions  # noqa: E402
from alpaca_plw.study.generate_run import generate_runs  # noqa: E402

EOS = 2


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("lora"), lora=True)


@pytest.fixture(scope="module")
def eos_run(full_run, tmp_path_factory):
    """The full run with its weights redrawn wider (so that generations depend on the prompt) and
    its LM head's EOS row set to 1.01 times the row of a token the model picks greedily for one
    prompt, so that some generations end at EOS and others run to the length limit."""
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("eos") / "run"
    shutil.copytree(full_run, run)
    shutil.copy(_prompts(full_run), _prompts(run))
    model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" not in name:
                weight.normal_(0, 0.3)
    sp = sentencepiece()
    record = json.loads((full_run.parent / "prompts.json").read_text())[0]
    ids = [1] + sp.encode(NO_INPUT.format(**record) if not record["input"] else
                          WITH_INPUT.format(**record))
    tokens, _ = hand_greedy(model, ids, 4, EOS)
    with torch.no_grad():
        model.lm_head.weight[EOS] = 1.01 * model.lm_head.weight[tokens[3]]
    model.save_pretrained(run)
    return run


def _prompts(run: Path) -> Path:
    return run.parent / "prompts.json"


def _lines(run: Path, name: str = "prompts") -> list[dict]:
    path = run / "generations" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _generate(run: Path, **kw) -> list[dict]:
    options = GenerateOptions(prompts=str(_prompts(run)), device="cpu", **kw)
    generate_runs([run], options)
    return _lines(run, options.output_name)


def _expected(model, run: Path, max_new: int) -> list[dict]:
    sp = sentencepiece()
    rows = []
    for index, r in enumerate(json.loads(_prompts(run).read_text())):
        text = (WITH_INPUT if r["input"] else NO_INPUT).format(**r)
        tokens, finish = hand_greedy(model, [1] + sp.encode(text), max_new, EOS)
        rows.append({"index": index, "instruction": r["instruction"], "input": r["input"],
                     "prompt": text, "output": sp.decode(tokens), "output_tokens": len(tokens),
                     "finish": finish, "reference": r["output"]})
    return rows


def test_greedy_generations_equal_a_hand_argmax_loop(eos_run):
    from transformers import AutoModelForCausalLM

    got = _generate(eos_run, max_new_tokens=7, batch_size=4, name="hand")
    model = AutoModelForCausalLM.from_pretrained(eos_run, dtype=torch.float32).eval()
    expected = _expected(model, eos_run, 7)
    assert got == expected
    assert {r["finish"] for r in got} == {"eos", "length"}  # both ends are exercised
    assert all(r["output_tokens"] <= 7 for r in got)


def test_a_lora_run_generates_with_its_adapter_on_its_base(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    got = _generate(lora_run, max_new_tokens=5, batch_size=3)
    base = AutoModelForCausalLM.from_pretrained(lora_run.parent / "model", dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, lora_run).merge_and_unload().eval()
    assert got == _expected(merged, lora_run, 5)
    header = json.loads((lora_run / "generations" / "prompts.json").read_text())
    assert header["base"] == str(lora_run.parent / "model") and header["complete"] is True


def test_prompt_text_is_the_alpaca_template_of_reference_md(full_run):
    got = _generate(full_run, max_new_tokens=1, name="template")
    with_input = [r for r in got if r["input"]][0]
    no_input = [r for r in got if not r["input"]][0]
    assert with_input["prompt"] == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{with_input['instruction']}\n\n### Input:\n{with_input['input']}"
        "\n\n### Response:")
    assert no_input["prompt"] == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        f"completes the request.\n\n### Instruction:\n{no_input['instruction']}\n\n### Response:")


def test_left_padded_batches_give_what_batch_size_one_gives(full_run):
    one = _generate(full_run, max_new_tokens=8, batch_size=1, name="b1")
    many = _generate(full_run, max_new_tokens=8, batch_size=6, name="b6")
    lengths = {len(sentencepiece().encode(r["prompt"])) for r in one}
    assert len(lengths) > 1  # the batch really is padded
    assert many == one


def test_n_takes_a_seeded_sample_without_replacement_in_index_order(full_run):
    drawn = np.random.default_rng(0).choice(6, 3, replace=False).tolist()
    assert drawn != sorted(drawn)  # a draw out of order, so that source order is checked
    got = [r["index"] for r in _generate(full_run, max_new_tokens=1, n=3, seed=0, name="n3")]
    assert got == sorted(drawn)
    everything = _generate(full_run, max_new_tokens=1, n=99, name="n99")
    assert [r["index"] for r in everything] == list(range(6))


def test_seeded_sampling_repeats_and_depends_on_the_seed(full_run):
    a = _generate(full_run, max_new_tokens=6, do_sample=True, temperature=1.5, seed=1, name="s1")
    b = _generate(full_run, max_new_tokens=6, do_sample=True, temperature=1.5, seed=1, name="s1b")
    c = _generate(full_run, max_new_tokens=6, do_sample=True, temperature=1.5, seed=2, name="s2")
    greedy = _generate(full_run, max_new_tokens=6, name="g")
    assert a == b
    assert [r["output"] for r in a] != [r["output"] for r in c]
    assert [r["output"] for r in a] != [r["output"] for r in greedy]
    header = json.loads((full_run / "generations" / "s1.json").read_text())
    assert header["sampling"]["temperature"] == 1.5 and header["sampling"]["do_sample"] is True


def test_the_stop_string_cuts_the_text_and_counts_the_tokens_before_it():
    from alpaca_plw.study.generate import finish_row

    pieces = {5: "Hel", 6: "lo", 7: "<|", 8: "end", 9: "|>", 10: " more"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    assert finish_row([5, 6, 7, 8, 9, 10], {2}, "<|end|>", decode) == ("Hello", 2, "eos")
    assert finish_row([5, 6, 2, 2], {2}, "<|end|>", decode) == ("Hello", 2, "eos")
    assert finish_row([5, 6, 10], {2}, "<|end|>", decode) == ("Hello more", 3, "length")
    assert finish_row([5, 9, 6], {9, 2}, None, decode) == ("Hel", 1, "eos")


def test_the_alpaca_eval_file_names_each_run_by_generator_with_run_replaced(full_run):
    """AlpacaEval reports (and caches in its leaderboard) results under the file's `generator`:
    `{run}` in --generator becomes the run folder's name, the default is that name."""
    _generate(full_run, max_new_tokens=1, name="ae-named", alpaca_eval=True,
              generator="short-{run}")
    _generate(full_run, max_new_tokens=1, name="ae-default", alpaca_eval=True)
    folder = full_run / "generations"
    named = json.loads((folder / "ae-named.alpaca_eval.json").read_text(encoding="utf-8"))
    default = json.loads((folder / "ae-default.alpaca_eval.json").read_text(encoding="utf-8"))
    assert {r["generator"] for r in named} == {f"short-{full_run.name}"}
    assert {r["generator"] for r in default} == {full_run.name}
    assert [r["output"] for r in named] == [r["output"] for r in _lines(full_run, "ae-named")]


@pytest.mark.parametrize("generator,runs,needle", [
    ("short", 2, "would name the outputs of all 2 runs alike"),
    ("", 1, "expected a name"),
    (" ", 1, "expected a name"),
])
def test_one_generator_name_for_several_runs_is_refused_before_any_run_is_read(
        tmp_path, generator, runs, needle):
    from alpaca_plw.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        options = GenerateOptions(prompts="p.json", alpaca_eval=True, generator=generator)
        generate_runs([tmp_path / "missing-a", tmp_path / "missing-b"][:runs], options)
