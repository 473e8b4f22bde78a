"""`eval`: lm-eval on a local task and a local model; one loglikelihood checked by hand; offline errors."""

import json

import pytest
import torch
from study_helpers import TASKS, save_tiny_llama

from alpaca_plw.study.evaluate import EvalOptions, evaluate_model, task_manager


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("runs") / "plw-0.5")


def test_one_loglikelihood_equals_the_model_computed_directly(model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(TASKS)  # the task's data_files are relative to the working directory
    options = EvalOptions(tasks=["plw_tiny_mc"], include_path=[TASKS], limit=2, device="cpu",
                          trust_tasks=True)
    raw = evaluate_model(model_dir, options, task_manager(options), log_samples=True)
    sample = raw["samples"]["plw_tiny_mc"][0]
    (context, continuation), = {tuple(a) for a in sample["arguments"][:1]}
    got = sample["resps"][0][0][0]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    whole = tokenizer(context + continuation).input_ids
    n_context = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    expected = sum(float(logprobs[i - 1, whole[i]]) for i in range(n_context, len(whole)))
    assert context.endswith("Answer:") and continuation == " " + sample["doc"]["choices"][0]
    assert got == pytest.approx(expected, abs=1e-4)


def test_eval_json_keeps_the_tasks_of_earlier_calls(tmp_path):
    from alpaca_plw.data.outputs.publish import write_marker
    from alpaca_plw.study.evaluate import _write_eval_json

    write_marker(tmp_path, "run")
    _write_eval_json(tmp_path, 0.5, {"a": {"metric": "acc", "value": 0.25}}, "0.4.13")
    _write_eval_json(tmp_path, 0.5, {"b": {"metric": "acc", "value": 0.5}}, "0.4.13")
    body = json.loads((tmp_path / "eval.json").read_text())
    assert body["tasks"] == {"a": {"metric": "acc", "value": 0.25}, "b": {"metric": "acc", "value": 0.5}}


def test_eval_json_merge_keeps_every_key_of_the_existing_file(tmp_path):
    from alpaca_plw.data.outputs.publish import write_marker
    from alpaca_plw.study.evaluate import _write_eval_json

    write_marker(tmp_path, "run")
    (tmp_path / "eval.json").write_text(json.dumps({"notes": {"by": "me"}, "tasks": {"a": 1}}))
    _write_eval_json(tmp_path, 0.5, {"b": {"metric": "acc", "value": 0.5}}, "0.4.13")
    body = json.loads((tmp_path / "eval.json").read_text())
    assert body["notes"] == {"by": "me"} and set(body["tasks"]) == {"a", "b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".alpaca-plw", "eval.json"]


def test_eval_json_is_written_only_into_a_run_folder(tmp_path):
    from alpaca_plw.data.outputs.safety import set_reporter
    from alpaca_plw.study.evaluate import _write_eval_json

    notes = []
    set_reporter(notes.append)
    try:
        _write_eval_json(tmp_path, 0.5, {"a": {"metric": "acc", "value": 0.25}}, "0.4.13")
    finally:
        set_reporter(None)
    assert list(tmp_path.iterdir()) == []
    assert len(notes) == 1 and "is not a run folder" in notes[0] and "-o FILE" in notes[0]


def test_a_hub_task_offline_fails_with_one_line_naming_the_local_way(run_cli, model_dir):
    code, _, stderr = run_cli(["eval", model_dir, "--tasks", "hellaswag",
                                    "--include-path", TASKS, "--trust-tasks"])
    assert code == 2 and "Traceback" not in stderr
    assert stderr.count("\n") == 1
    assert "Rowan/hellaswag" in stderr and "--include-path" in stderr and "dataset_path: json" in stderr


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "no_such_task_xyz"], "not one of lm-eval's tasks"),
    (["--tasks", "plw_tiny_mc", "--limit", "0"], "--limit must be at least 1"),
])
def test_bad_eval_input_fails_with_one_line(run_cli, model_dir, args, needle):
    code, _, stderr = run_cli(["eval", model_dir, "--include-path", TASKS, "--trust-tasks", *args])
    assert code == 2 and needle in stderr and "Traceback" not in stderr


def test_a_folder_without_a_final_model_is_refused(run_cli, tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    code, _, stderr = run_cli(["eval", tmp_path, "--tasks", "plw_tiny_mc", "--include-path", TASKS,
                               "--trust-tasks"])
    assert code == 2 and "no final model" in stderr and "did not finish" in stderr


def test_a_lora_run_is_evaluated_as_its_adapter_merged_into_the_base(model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(3)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    run = tmp_path / "plw-0.1"
    peft_model.save_pretrained(run)
    merged = peft_model.merge_and_unload().eval()

    monkeypatch.chdir(TASKS)
    options = EvalOptions(tasks=["plw_tiny_mc"], include_path=[TASKS], limit=1, device="cpu",
                          trust_tasks=True)
    raw = evaluate_model(run, options, task_manager(options), log_samples=True)
    sample = raw["samples"]["plw_tiny_mc"][0]
    context, continuation = sample["arguments"][0]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    whole = tokenizer(context + continuation).input_ids
    n_context = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logprobs = torch.log_softmax(merged(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
    expected = sum(float(logprobs[i - 1, whole[i]]) for i in range(n_context, len(whole)))
    assert sample["resps"][0][0][0] == pytest.approx(expected, abs=1e-4)


def _code_task(folder, marker):
    """A task folder whose YAML names a Python function (`!function`): importing it creates `marker`."""
    folder.mkdir()
    (folder / "utils.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                     "def process(dataset):\n    return dataset\n")
    text = (TASKS / "plw_tiny_mc.yaml").read_text().replace("task: plw_tiny_mc", "task: plw_code_task")
    (folder / "plw_code_task.yaml").write_text(text + "process_docs: !function utils.process\n")
    (folder / "plw_tiny_mc.jsonl").write_bytes((TASKS / "plw_tiny_mc.jsonl").read_bytes())
    return folder


def test_an_include_path_folder_runs_only_with_trust_tasks(run_cli, model_dir, tmp_path):
    marker = tmp_path / "RAN"
    tasks = _code_task(tmp_path / "tasks", marker)
    code, stdout, stderr = run_cli(["eval", model_dir, "--tasks", "plw_code_task", "--include-path",
                                    tasks, "--limit", "1", "--device", "cpu"], cwd=tasks)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith(f"error: --include-path {tasks}: a task folder is code")
    assert "--trust-tasks" in lines[0]
    assert not marker.exists() and not (model_dir / "eval.json").exists()
    # the acknowledgement runs it: the folder's Python code is imported (what the flag admits)
    code, _, stderr = run_cli(["eval", model_dir, "--tasks", "plw_code_task", "--include-path",
                               tasks, "--trust-tasks", "--limit", "1", "--device", "cpu"], cwd=tasks)
    assert marker.exists(), stderr
    (model_dir / "eval.json").unlink(missing_ok=True)


def test_eval_help_says_a_task_folder_is_code(run_cli):
    code, stdout, _ = run_cli(["eval", "--help"])
    text = " ".join(stdout.replace("│", " ").split())
    assert code == 0 and "A task folder is code" in text and "--trust-tasks" in text


def test_evaluating_outside_a_git_checkout_prints_nothing_from_git(model_dir, tmp_path,
                                                                   monkeypatch, capfd):
    """lm-eval looks up the working directory's git commit; outside a checkout git's "fatal: not
    a git repository" went straight to the terminal (file descriptor 2)."""
    import shutil
    import subprocess

    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS, tasks)
    monkeypatch.chdir(tasks)
    outside = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True)
    if shutil.which("git") is None or outside.returncode == 0:
        pytest.skip("needs git and a temporary folder outside any checkout")
    options = EvalOptions(tasks=["plw_tiny_mc"], include_path=[tasks], limit=1, device="cpu",
                          trust_tasks=True)
    capfd.readouterr()
    raw = evaluate_model(model_dir, options, task_manager(options))
    assert "plw_tiny_mc" in raw["results"]
    assert "not a git repository" not in capfd.readouterr().err
