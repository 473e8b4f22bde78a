"""`alpaca-plw report`: one self-contained page for a real (tiny) sweep, each section checked
against the command that computes it on its own (`stats`, `fit --json`, `analyze --json`, the runs'
eval.json), escaped, and opened in a real headless browser where Debian's chromium is installed."""

import csv
import json
import shutil
import subprocess

import pytest
from study_helpers import LLAMA, TASKS, save_tiny_llama, small_source

PLWS = ("0", "0.1", "1")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, run_cli_module):
    root = tmp_path_factory.mktemp("report")
    base = save_tiny_llama(root / "base")
    source = small_source(root)
    out = root / "sweep"
    code, _, err = run_cli_module(
        ["sweep", source, "--model", base, "--output-dir", out, "--plw", ",".join(PLWS),
         "--max-length", "96", "--tokenizer", LLAMA, "--batch-size", "4", "--micro-batch-size",
         "4", "--max-steps", "5", "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu"])
    assert code == 0, err
    runs = [out / f"plw-{p}" for p in PLWS]
    code, _, err = run_cli_module(["eval", *runs, "--tasks", "plw_tiny_mc", "--include-path",
                                   TASKS, "--trust-tasks", "--limit", "3", "--device", "cpu"],
                                  cwd=TASKS)
    assert code == 0, err
    scores = root / "more.csv"  # four more benchmarks, so that the paper's fit has something
    with scores.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "model", "plw", "task", "metric", "value"])
        for k, task in enumerate(["bench_a", "bench_b", "bench_c", "<script>alert(1)</script>"]):
            for p in PLWS:
                w = float(p)
                writer.writerow([f"plw-{p}", "tiny", p, task, "acc",
                                 0.3 + 0.05 * k + 0.4 * w - 0.3 * w * w + 0.01 * ((k * 7) % 3)])
    return {"root": root, "out": out, "base": base, "source": source, "runs": runs,
            "scores": scores}


@pytest.fixture(scope="module")
def run_cli_module(llama_dir):
    from cli_invoke import invoke_cli

    return lambda args, cwd=None: invoke_cli(args, cwd, tokenizer=llama_dir)


@pytest.fixture(scope="module")
def page(sweep, run_cli_module):
    html_path = sweep["root"] / "report.html"
    code, _, err = run_cli_module(["report", sweep["out"], "-o", html_path,
                                   "--scores", sweep["scores"]])
    assert code == 0 and f"wrote {html_path}" in err, err
    return html_path


def test_every_section_equals_the_command_that_computes_it(sweep, run_cli_module, tmp_path):
    from alpaca_plw.study.report import build_report

    report = build_report(sweep["out"], [sweep["scores"]]).to_json()
    # data: R_g and the guide as `stats --json` gives them for the same source and tokenizer
    code, stdout, _ = run_cli_module(["stats", sweep["source"], "--json", "--tokenizer", LLAMA])
    stats = json.loads(stdout.splitlines()[0])  # one JSON line per dataset
    assert report["data"]["rg"] == pytest.approx(stats["rg"])
    assert report["data"]["recommended_plw"]["all"] == stats["recommended_plw"]["all"]
    # runs: sweep.json's record of each run
    body = json.loads((sweep["out"] / "sweep.json").read_text())
    assert [(r["folder"], r["plw"], r["steps"]) for r in report["runs"]] == \
        [(r["folder"], r["plw"], r["steps"]) for r in body["runs"]]
    # scores: each run's eval.json value for the local task
    for run in sweep["runs"]:
        task = json.loads((run / "eval.json").read_text())["tasks"]["plw_tiny_mc"]
        sign = 1.0 if task["higher_is_better"] else -1.0  # fit turns lower-is-better around
        mine = [s for s in report["scores"] if s["task"] == "plw_tiny_mc"
                and f"plw-{s['plw']:g}" == run.name]
        assert len(mine) == 1 and mine[0]["score"] == pytest.approx(sign * task["value"])
    # fit and stability: the same numbers `fit --json` and `analyze --json` print
    code, stdout, err = run_cli_module(["fit", *[r / "eval.json" for r in sweep["runs"]],
                                        sweep["scores"], "--json"])
    assert code == 0, err
    fit = json.loads(stdout)
    assert report["fit"]["headline"] == fit["headline"]
    assert report["fit"]["p_value"] == pytest.approx(fit["p_value"])
    code, stdout, err = run_cli_module(["analyze", *sweep["runs"], "--base", sweep["base"],
                                        "--json"])
    assert code == 0, err
    analyzed = [json.loads(line) for line in stdout.splitlines() if line.strip()]  # one per run
    assert [a["stability"] for a in report["stability"]] == \
        pytest.approx([a["stability"] for a in analyzed])
    assert [a["relative_distance"] for a in report["stability"]] == \
        pytest.approx([a["relative_distance"] for a in analyzed])


def test_the_page_is_self_contained_and_escapes_what_it_reads(page):
    text = page.read_text(encoding="utf-8")
    for section in ("data", "runs", "scores", "fit", "stability"):
        assert f"<section id='{section}'>" in text
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count("src='data:image/png;base64,") >= 2  # the curves and the fit
    assert "Content-Security-Policy" in text


def test_report_refuses_a_folder_that_is_not_a_sweep_and_an_existing_page(run_cli_module, sweep,
                                                                          page, tmp_path):
    (tmp_path / "not-a-sweep").mkdir()
    code, _, err = run_cli_module(["report", tmp_path / "not-a-sweep", "-o", tmp_path / "r.html"])
    assert code == 2 and err.startswith("error: ") and "no sweep.json" in err
    assert err.count("\n") == 1 and not (tmp_path / "r.html").exists()
    before = page.read_bytes()
    code, _, err = run_cli_module(["report", sweep["out"], "-o", page])
    assert code == 3 and "--force" in err and page.read_bytes() == before
    code, _, err = run_cli_module(["report", sweep["out"], "-o", sweep["out"] / "sweep.json",
                                   "--force"])
    assert code == 3 and (sweep["out"] / "sweep.json").read_text().startswith("{")


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_headless_browser_opens_the_page_without_errors_and_draws_it(page, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    browser = _chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--user-data-dir=" + str(tmp_path / "profile"), "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in ("data", "runs", "scores", "fit", "stability"):
        assert f'<section id="{section}">' in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    shot = tmp_path / "shot.png"
    done = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2400",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = imread(str(shot))
    assert pixels.shape[0] >= 1000 and float(np.std(pixels[..., :3])) > 0.05  # not a blank page
