"""`eval`'s tasks through lm-eval's registry: groups, tags, the paper's preset, offline hub tasks named
in one line before any model loads; per-task shots and metric; the model column; a LoRA run's
missing base; OSErrors while reading are input errors."""

import csv
import json

import pytest
from study_helpers import TASKS, save_tiny_llama

from alpaca_plw.errors import ConfigError
from alpaca_plw.study.tasks import PAPER_TASKS, task_plan

LOCAL = ["--include-path", TASKS, "--trust-tasks"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny model in a run folder (marker, run.json naming its base model, as train writes)."""
    from alpaca_plw.data.outputs.publish import write_marker

    run = save_tiny_llama(tmp_path_factory.mktemp("runs") / "plw-0.1")
    write_marker(run, "run")
    (run / "run.json").write_text(json.dumps({"options": {"model": "/models/llama-7b"}}))
    return run


def test_the_paper_preset_holds_its_shots_and_metrics_and_options_override_them():
    plan = task_plan("paper")
    assert plan.tasks == list(PAPER_TASKS) and len(plan.tasks) == 11
    assert (plan.shots["arc_challenge"], plan.metrics["arc_challenge"]) == (25, "acc_norm")
    assert plan.shots["winogrande"] == 5 and plan.shots["truthfulqa_mc2"] == 0
    assert sum(t.startswith("wmt") for t in plan.tasks) == 6
    plan = task_plan("paper", "arc_challenge=10", "winogrande=acc")
    assert plan.shots["arc_challenge"] == 10 and plan.metrics["arc_challenge"] == "acc_norm"
    plan = task_plan(["a", "b", "c"], "5,b=0", "acc,c=bleu")
    assert plan.shots == {"a": 5, "b": 0, "c": 5}
    assert plan.metrics == {"a": "acc", "b": "acc", "c": "bleu"}
    assert plan.by_shots() == [(5, ["a", "c"]), (0, ["b"])]


@pytest.mark.parametrize("shots,metric,needle", [
    ("x=3", None, "'x' is not one of --tasks"), ("a=two", None, "not valid"),
    ("1,2", None, "two values"), ("a=-1", None, ">= 0"), (None, "a=acc,a=bleu", "given twice")])
def test_bad_per_task_options_are_refused(shots, metric, needle):
    with pytest.raises(ConfigError, match=needle):
        task_plan("a,b", shots, metric)


def test_offline_the_papers_benchmarks_are_resolved_and_each_hub_task_named_in_one_line(
        run_cli, run_dir):
    # winogrande and the WMT tasks are not files named <task>.yaml: a lookup by file name calls
    # them unknown; lm-eval's registry knows them
    code, _, stderr = run_cli(["eval", run_dir, "--tasks", "paper"])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    for task in PAPER_TASKS:
        assert f"{task} (" in lines[0], task
    assert "winogrande (allenai/winogrande)" in lines[0] and "wmt16-ro-en-paper (wmt/wmt16)" in lines[0]
    assert "--include-path DIR --trust-tasks" in lines[0] and "dataset_path: json" in lines[0]
    assert not (run_dir / "eval.json").exists()


def test_a_group_and_a_tag_are_expanded_to_their_hub_tasks(run_cli, run_dir):
    code, _, stderr = run_cli(["eval", run_dir, "--tasks", "mmlu,ai2_arc"])
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "mmlu: 57 of its 57 tasks (cais/mmlu)" in stderr
    assert "ai2_arc: 2 of its 2 tasks (allenai/ai2_arc)" in stderr


def test_a_metric_the_task_does_not_report_is_refused_before_any_model_loads(run_cli, tmp_path):
    empty = tmp_path / "run"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"not a model")  # would fail to load
    code, _, stderr = run_cli(["eval", empty, "--tasks", "plw_tiny_mc", *LOCAL,
                               "--metric", "plw_tiny_mc=acc_norm"])
    assert code == 2 and "plw_tiny_mc reports brier_score, acc" in stderr, stderr


def test_per_task_shots_and_metric_and_the_model_column(run_cli, run_dir, tmp_path):
    scores = tmp_path / "scores.csv"
    code, stdout, stderr = run_cli(["eval", run_dir, "--tasks", "plw_tiny_mc,plw_tiny_mc2", *LOCAL,
                                    "--num-fewshot", "0,plw_tiny_mc2=1", "--metric",
                                    "plw_tiny_mc2=acc", "--limit", "2", "--device", "cpu",
                                    "-o", scores], cwd=TASKS)
    assert code == 0, stderr
    body = json.loads((run_dir / "eval.json").read_text())
    assert body["tasks"]["plw_tiny_mc"]["num_fewshot"] == 0
    assert body["tasks"]["plw_tiny_mc2"]["num_fewshot"] == 1
    assert body["tasks"]["plw_tiny_mc"]["metric"] == "brier_score"
    assert body["tasks"]["plw_tiny_mc2"]["metric"] == "acc"
    rows = list(csv.DictReader(scores.open()))
    assert list(rows[0]) == ["run", "model", "plw", "task", "metric", "value"]
    assert {r["model"] for r in rows} == {"/models/llama-7b"} and rows[1]["metric"] == "acc"
    code, _, stderr = run_cli(["eval", run_dir, "--tasks", "plw_tiny_mc", *LOCAL, "--limit", "1",
                               "--device", "cpu", "--model-name", "llama-2-7b", "-o", scores,
                               "--force"], cwd=TASKS)
    assert code == 0, stderr
    assert {r["model"] for r in csv.DictReader(scores.open())} == {"llama-2-7b"}
    (run_dir / "eval.json").unlink()


def test_a_lora_run_whose_base_is_not_there_fails_at_once_naming_it(run_cli, tmp_path):
    run = tmp_path / "plw-0.1"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "./base"}))
    (run / "adapter_model.safetensors").write_bytes(b"")
    code, _, stderr = run_cli(["eval", run, "--tasks", "plw_tiny_mc", *LOCAL], cwd=tmp_path)
    assert code == 2 and "its base model ./base is not a folder from here" in stderr, stderr


def test_an_oserror_while_reading_is_not_called_an_output_error(run_cli, run_dir, monkeypatch):
    import alpaca_plw.study.evaluate as evaluate

    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/task.jsonl")

    monkeypatch.setattr(evaluate, "evaluate_runs", broken)
    code, _, stderr = run_cli(["eval", run_dir, "--tasks", "plw_tiny_mc", *LOCAL])
    assert code == 2 and "/data/task.jsonl: cannot read it (permission denied)" in stderr
    assert "output" not in stderr


def test_a_hub_that_does_not_answer_counts_as_offline_without_the_env_flags(monkeypatch):
    from alpaca_plw.study.tasks import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    assert hub_reachable(timeout=1.0) is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False


def test_a_local_group_is_scored_by_its_aggregate(run_cli, run_dir, tmp_path):
    import shutil

    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS, tasks)
    (tasks / "plw_tiny_group.yaml").write_text(
        "group: plw_tiny_group\ntask:\n  - plw_tiny_mc\n  - plw_tiny_mc2\n"
        "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n"
        "  version: 1.0\n")
    code, _, stderr = run_cli(["eval", run_dir, "--tasks", "plw_tiny_group", "--include-path",
                               tasks, "--trust-tasks", "--limit", "2", "--device", "cpu",
                               "--metric", "plw_tiny_group=acc"], cwd=tasks)
    assert code == 0, stderr
    body = json.loads((run_dir / "eval.json").read_text())
    entry = body["tasks"]["plw_tiny_group"]
    assert entry["metric"] == "acc" and 0.0 <= entry["value"] <= 1.0
    (run_dir / "eval.json").unlink()


def test_the_paper_wmt_variants_ask_in_the_papers_words_on_lmevals_data():
    """The six packaged `-paper` tasks resolve without --include-path or --trust-tasks, read the
    same dataset and split as lm-eval's own WMT task, and render the paper's instruction."""
    from lm_eval.utils import apply_template

    from alpaca_plw.study.tasks import PACKAGED_TASKS, PAPER_TASKS, _manager

    manager = _manager((str(PACKAGED_TASKS),), False)
    wmt = [t for t in PAPER_TASKS if t.startswith("wmt")]
    assert len(wmt) == 6 and all(t in manager.task_index for t in wmt)
    assert not list(PACKAGED_TASKS.glob("*.py"))  # plain YAML: nothing to trust
    cfg = manager.task_index["wmt16-de-en-paper"].cfg
    assert (cfg["dataset_path"], cfg["dataset_name"], cfg["test_split"]) == ("wmt/wmt16", "de-en",
                                                                             "test")
    doc = {"translation": {"de": "Guten Morgen.", "en": "Good morning."}}
    assert apply_template(cfg["doc_to_text"], doc) == \
        "Translate the following from German to English:\nGuten Morgen.\nEnglish:"
    assert apply_template(cfg["doc_to_target"], doc) == " Good morning."
    ro = manager.task_index["wmt16-en-ro-paper"].cfg
    assert apply_template(ro["doc_to_text"], {"translation": {"en": "Hi.", "ro": "Salut."}}) == \
        "Translate the following from English to Romanian:\nHi.\nRomanian:"
