"""`fit` reads scores where the study leaves them: eval -o CSVs (a byte-order mark too), run and
sweep folders' eval.json, lm-eval results JSON; with a model column; lower-is-better turned round."""

import json
import zlib

import numpy as np
import pytest

from alpaca_plw.errors import InputError
from alpaca_plw.study.scores import read_scores

PLWS = (0.0, 0.01, 0.1, 0.5, 1.0)
TASKS = ("arc_challenge", "plw_tiny_mc", "winogrande")
METRIC = {"arc_challenge": "acc_norm", "plw_tiny_mc": "brier_score", "winogrande": "acc"}


def _score(model: str, plw: float, task: str) -> float:
    rng = np.random.default_rng(zlib.crc32(f"{model} {plw} {task}".encode()))
    wp = plw ** 0.30103
    base = 0.55 + 0.1 * wp - 0.08 * wp * wp + (0.05 if model == "llama-2" else 0.0)
    return float(base + rng.normal(0, 0.01) if task != "plw_tiny_mc" else 1 - base)


def _sweep(root, model):
    """A sweep folder with one eval.json per run, as `eval` writes them."""
    for plw in PLWS:
        run = root / f"plw-{plw:g}"
        run.mkdir(parents=True)
        tasks = {t: {"metric": METRIC[t], "value": _score(model, plw, t),
                     "higher_is_better": t != "plw_tiny_mc"} for t in TASKS}
        (run / "eval.json").write_text(json.dumps({"run": run.name, "plw": plw, "model": model,
                                                   "tasks": tasks}))
    return root


def _csv(path, models, bom=False):
    lines = ["run,model,plw,task,metric,value"]
    for model in models:
        for plw in sorted(PLWS, key=lambda p: f"plw-{p:g}"):  # the order folders are read in
            for task in TASKS:
                lines.append(f"plw-{plw:g},{model},{plw!r},{task},{METRIC[task]},"
                             f"{_score(model, plw, task)!r}")
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_csv_with_a_byte_order_mark_reads_as_without(tmp_path):
    plain = read_scores(_csv(tmp_path / "a.csv", ["llama"]))
    marked = read_scores(_csv(tmp_path / "b.csv", ["llama"], bom=True))
    assert marked.task == plain.task and marked.model == plain.model == ["llama"] * 15
    assert np.array_equal(marked.score, plain.score) and np.array_equal(marked.plw, plain.plw)
    assert marked.negated == ["brier_score"]


def test_sweep_folders_read_as_their_eval_csv(tmp_path):
    folders = [_sweep(tmp_path / "s1", "llama"), _sweep(tmp_path / "s2", "llama-2")]
    from_runs = read_scores(folders)
    from_csv = read_scores(_csv(tmp_path / "all.csv", ["llama", "llama-2"]))
    assert from_runs.task == from_csv.task and from_runs.model == from_csv.model
    assert np.array_equal(from_runs.score, from_csv.score)
    assert np.array_equal(from_runs.plw, from_csv.plw)
    one = read_scores(tmp_path / "s1" / "plw-0.1")  # one run folder
    assert one.task == list(TASKS) and set(one.plw) == {0.1}


def test_fit_gives_the_same_answer_from_sweep_folders_and_from_a_bom_csv(run_cli, tmp_path):
    folders = [_sweep(tmp_path / "s1", "llama"), _sweep(tmp_path / "s2", "llama-2")]
    code, from_runs, stderr = run_cli(["fit", *folders, "--json"])
    assert code == 0, stderr
    code, from_csv, stderr = run_cli(["fit", _csv(tmp_path / "s.csv", ["llama", "llama-2"], True),
                                      "--json"])
    assert code == 0, stderr
    assert json.loads(from_runs) == json.loads(from_csv)
    assert json.loads(from_runs)["n"] == 30


def _lm_eval_results(model_dir):
    """The shape of lm-eval's results file (`lm_eval --output_path`), abridged."""
    return {
        "results": {"arc_challenge": {"alias": "arc_challenge", "acc,none": 0.41,
                                      "acc_stderr,none": 0.01, "acc_norm,none": 0.44},
                    "plw_tiny_mc": {"alias": "plw_tiny_mc", "brier_score,none": 0.5}},
        "configs": {"arc_challenge": {"metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
                    "plw_tiny_mc": {"metric_list": [{"metric": "brier_score"}]}},
        "higher_is_better": {"arc_challenge": {"acc": True, "acc_norm": True},
                             "plw_tiny_mc": {"brier_score": False}},
        "config": {"model": "hf", "model_args": f"pretrained={model_dir},dtype=float32"},
        "lm_eval_version": "0.4.13",
    }


def test_an_lm_eval_results_json_gives_its_primary_metrics_at_the_models_plw(tmp_path):
    run = tmp_path / "sweep" / "plw-0.25"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"options": {"model": "/models/llama-7b"}}))
    path = tmp_path / "results_2024.json"
    path.write_text(json.dumps(_lm_eval_results(run)))
    scores = read_scores(path)
    assert scores.task == ["arc_challenge", "plw_tiny_mc"] and list(scores.plw) == [0.25, 0.25]
    assert list(scores.score) == [0.41, -0.5] and scores.negated == ["brier_score"]
    assert scores.model == ["/models/llama-7b"] * 2
    # a group is one benchmark (its aggregate), not its subtasks too
    body = _lm_eval_results(run)
    body["results"].update({"mmlu": {"acc,none": 0.3}, "mmlu_stem": {"acc,none": 0.2}})
    body["group_subtasks"] = {"mmlu": ["mmlu_stem"], "arc_challenge": [], "plw_tiny_mc": []}
    path.write_text(json.dumps(body))
    assert read_scores(path).task == ["arc_challenge", "mmlu", "plw_tiny_mc"]
    # the PLW of a folder above the file, when the model path says none
    nested = tmp_path / "plw-0.5" / "hf_model"
    nested.mkdir(parents=True)
    (nested / "results.json").write_text(json.dumps(_lm_eval_results("org/model")))
    assert set(read_scores(nested / "results.json").plw) == {0.5}


@pytest.mark.parametrize("name,body,needle", [
    ("r.json", {"results": {"a": {"acc,none": 1}}, "config": {"model_args": "pretrained=x/y"}},
     "cannot tell its PLW"),
    ("r.json", [1, 2], "a JSON list, expected an object"),
    ("eval.json", {"tasks": {}}, "no 'tasks' object with scores"),
])
def test_unreadable_sources_are_one_error_naming_the_file(tmp_path, name, body, needle):
    path = tmp_path / name
    path.write_text(json.dumps(body))
    with pytest.raises(InputError, match=needle):
        read_scores(path)


def test_sources_with_and_without_a_model_are_not_mixed(tmp_path):
    labelled = _csv(tmp_path / "a.csv", ["llama"])
    bare = tmp_path / "b.csv"
    bare.write_text("plw,task,score\n0,x,1\n")
    with pytest.raises(InputError, match="some scores name their base model"):
        read_scores([labelled, bare])
    assert read_scores([bare], model="m").model == ["m"]


def test_a_folder_without_scores_says_to_run_eval(run_cli, tmp_path):
    code, _, stderr = run_cli(["fit", tmp_path])
    assert code == 2 and "run `alpaca-plw eval`" in stderr and stderr.count("\n") == 1
