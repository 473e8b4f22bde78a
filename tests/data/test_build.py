"""Builders: the swap strings, the Short rule, the target-ratio rule (checked against a brute force
over every prefix), dropping, output names and formats, refusal to overwrite, determinism and the
manifest."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from reference import (
    REF_SWAP_NO_INPUT,
    REF_SWAP_WITH_INPUT,
    comparable,
    expected_stats,
    reference_swap,
    sha256_of,
    stats_from_counts,
    write_json,
)

MANIFEST_KEYS = {"tool", "source", "tokenizer", "rule", "output", "stats", "counts", "provenance"}


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _manifest(out: Path) -> dict:
    return json.loads(out.with_suffix(".manifest.json").read_text(encoding="utf-8"))


def _ok(run_cli, args, cwd=None):
    code, stdout, stderr = run_cli(args, cwd=cwd)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    return stdout, stderr


# --- an independent model of the rules -------------------------------------------------------

class Plan:
    """What a rule should do to `records`, computed here by brute force from sentencepiece counts."""

    def __init__(self, records: list[dict], counter):
        self.records = records
        self.counter = counter
        self.p = [counter.record(r)[0] for r in records]
        self.c = [counter.record(r)[1] for r in records]
        swapped = [reference_swap(r) for r in records]
        self.sp = [counter.record(s)[0] for s in swapped]
        self.sc = [counter.record(s)[1] for s in swapped]

    def lengths(self, swapped: set[int]):
        return ([self.sp[i] if i in swapped else self.p[i] for i in range(len(self.p))],
                [self.sc[i] if i in swapped else self.c[i] for i in range(len(self.c))])

    def short(self) -> set[int]:
        return {i for i, (p, c) in enumerate(zip(self.p, self.c)) if c > p}

    def prefixes(self):
        """R_g after swapping each prefix k = 0..n of the order by descending ratio, ties by index."""
        n = len(self.p)
        order = sorted(range(n), key=lambda i: (-Fraction(self.c[i], self.p[i]), i))
        rgs = []
        for k in range(n + 1):
            p, c = self.lengths(set(order[:k]))
            rgs.append(sum(c) / sum(p))
        return order, rgs

    def target(self, target: float, allow_drop: bool) -> tuple[set[int], set[int], float]:
        """(swapped, dropped, achieved R_g) under the target rule."""
        order, rgs = self.prefixes()
        k = min(range(len(rgs)), key=lambda j: (abs(rgs[j] - target), j))
        swapped, achieved = set(order[:k]), rgs[k]
        dropped: set[int] = set()
        if allow_drop and achieved - target > 0.02 * target:
            p, c = self.lengths(swapped)
            n = len(p)
            by_post = sorted(range(n), key=lambda i: (-Fraction(c[i], max(p[i], 1)), i))[: n - 1]
            options = []
            for m in range(n):
                gone = set(by_post[:m])
                options.append(sum(c[i] for i in range(n) if i not in gone)
                               / sum(p[i] for i in range(n) if i not in gone))
            m = min(range(len(options)), key=lambda j: (abs(options[j] - target), j))
            dropped, achieved = set(by_post[:m]), options[m]
        return swapped, dropped, achieved

    def output(self, swapped: set[int], dropped: set[int] = frozenset()) -> list[dict]:
        return [reference_swap(r) if i in swapped else r
                for i, r in enumerate(self.records) if i not in dropped]


@pytest.fixture(scope="module")
def plan(sample_records, sp_counter) -> Plan:
    return Plan(sample_records, sp_counter)


# --- swap strings ----------------------------------------------------------------------------

def test_swap_strings_are_exactly_the_reference_strings():
    from alpaca_plw.data.alpaca import swap

    assert swap.SWAP_NO_INPUT == "Predict the prompt that generated the following AI output."
    assert swap.SWAP_WITH_INPUT == ("Predict the prompt that generated the below AI output given "
                                    "the following context. Context: ")
    assert swap.SWAP_NO_INPUT == REF_SWAP_NO_INPUT and swap.SWAP_WITH_INPUT == REF_SWAP_WITH_INPUT


def test_swap_without_input_moves_output_to_input_and_instruction_to_output():
    from alpaca_plw.data.alpaca.swap import swap

    assert swap("Name a colour.", "", "Blue.") == (
        "Predict the prompt that generated the following AI output.", "Blue.", "Name a colour.")


def test_swap_with_input_appends_input_verbatim_after_one_space():
    from alpaca_plw.data.alpaca.swap import swap

    assert swap("Summarise.", "  Text\nwith lines ", "Short.") == (
        ("Predict the prompt that generated the below AI output given the following context. "
        "Context:   Text\nwith lines "), "Short.", "Summarise.")


# --- Short -----------------------------------------------------------------------------------

def test_short_swaps_exactly_records_whose_completion_exceeds_prompt(tmp_path, run_cli,
                                                                     sample_path, plan):
    out = tmp_path / "short.json"
    _ok(run_cli, ["build-short", sample_path, "-o", out])
    assert _load(out) == plan.output(plan.short())
    counts = _manifest(out)["counts"]
    assert counts == {"source": 128, "kept": 128, "swapped": len(plan.short()), "dropped": 0}
    assert 0 < len(plan.short()) < 128


def test_short_keeps_a_record_whose_completion_equals_its_prompt(tmp_path, run_cli, sp_counter):
    records = [
        {"instruction": "Repeat after me: the cat sat.", "input": "",
         "output": "Repeat after me: the cat sat."},  # completion == prompt: kept
        {"instruction": "Add one.", "input": "41", "output": "The answer is forty-two (42)."},
        {"instruction": "Describe the sea in a long sentence, please, with many words.",
         "input": "", "output": "Blue."},
    ]
    counts = [sp_counter.record(r) for r in records]
    assert counts[0][0] == counts[0][1] and counts[1][1] > counts[1][0] and counts[2][1] < counts[2][0]
    out = tmp_path / "s.json"
    _ok(run_cli, ["build-short", write_json(tmp_path / "three.json", records), "-o", out])
    assert _load(out) == [records[0], reference_swap(records[1]), records[2]]


# --- the target rule -------------------------------------------------------------------------

@pytest.mark.parametrize("args,target", [
    (["build-medium"], 1.0),
    (["build", "--target-rg", "0.5"], 0.5),
    (["build", "--target-rg", "2"], 2.0),
    (["build", "--target-rg", "0.2"], 0.2),
])
def test_target_rule_swaps_the_prefix_closest_to_target(args, target, tmp_path, run_cli,
                                                        sample_path, plan):
    swapped, dropped, achieved = plan.target(target, allow_drop=False)
    assert not dropped
    out = tmp_path / "out.json"
    _ok(run_cli, [*args, sample_path, "-o", out])
    assert _load(out) == plan.output(swapped)
    manifest = _manifest(out)
    assert manifest["rule"]["target_rg"] == target
    assert manifest["rule"]["swapped_prefix"] == len(swapped)
    assert manifest["rule"]["achieved_rg"] == round(achieved, 6)
    assert manifest["counts"]["swapped"] == len(swapped)
    assert abs(achieved - target) <= 0.02 * target


def test_target_rule_breaks_ratio_ties_by_source_index(tmp_path, run_cli, sp_counter):
    poem = {"instruction": "Write a poem.", "input": "",
            "output": "Leaves fall slowly down, the river carries them away to the grey sea, "
                      "and the evening light grows thin and cold above the quiet town."}
    middle = {"instruction": "Explain gravity to a child in two short sentences.", "input": "",
              "output": "Gravity pulls things toward each other. It keeps us on the ground."}
    low = {"instruction": "Classify the sentiment of this review as positive or negative.",
           "input": "The food was cold, the staff were rude and we waited an hour.",
           "output": "Negative"}
    records = [poem, middle, dict(poem), low]  # records 0 and 2 tie on ratio
    plan = Plan(records, sp_counter)
    order, rgs = plan.prefixes()
    assert order[:2] == [0, 2]
    target = rgs[1]  # exactly one of the tied pair is swapped: it must be record 0
    out = tmp_path / "tie.json"
    _ok(run_cli, ["build", "--target-rg", repr(target), write_json(tmp_path / "tie-src.json", records),
                  "-o", out])
    assert _load(out) == [reference_swap(poem), middle, poem, low]


def test_unreachable_target_without_allow_drop_fails_with_reachable_range(tmp_path, run_cli,
                                                                           sample_path, plan):
    _, rgs = plan.prefixes()
    floor, ceiling = min(rgs), max(rgs)
    out_dir = tmp_path / "out"
    code, stdout, stderr = run_cli(["build", "--target-rg", "0.01", sample_path, "-o",
                                    out_dir / "x.json"], cwd=tmp_path)
    assert code != 0
    assert "Traceback" not in stderr and stdout == ""
    assert f"{round(floor, 6):g}" in stderr and f"{round(ceiling, 6):g}" in stderr
    assert "--allow-drop" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_target_above_swap_ceiling_fails_even_with_allow_drop(tmp_path, run_cli, sample_path, plan):
    _, rgs = plan.prefixes()
    code, _, stderr = run_cli(["build", "--target-rg", "50", "--allow-drop", sample_path, "-o",
                               tmp_path / "x.json"])
    assert code != 0 and "Traceback" not in stderr
    assert f"{round(max(rgs), 6):g}" in stderr
    assert list(tmp_path.iterdir()) == []


def test_tiny_without_drop_fails_on_the_sample(tmp_path, run_cli, sample_path):
    code, _, stderr = run_cli(["build-tiny", "--no-allow-drop", sample_path, "-o",
                               tmp_path / "x.json"])
    assert code != 0 and "Traceback" not in stderr
    assert "0.042" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,target", [
    (["build", "--target-rg", "0.05", "--allow-drop"], 0.05),
    (["build-tiny"], 0.042),
])
def test_allow_drop_leaves_out_highest_post_swap_ratio_records_and_reports_them(
        args, target, tmp_path, run_cli, sample_path, plan):
    swapped, dropped, achieved = plan.target(target, allow_drop=True)
    assert dropped, "the sample needs dropping for this target"
    out = tmp_path / "out.json"
    _, stderr = _ok(run_cli, [*args, sample_path, "-o", out])
    assert _load(out) == plan.output(swapped, dropped)
    assert abs(achieved - target) <= 0.02 * target
    manifest = _manifest(out)
    assert manifest["counts"] == {"source": 128, "kept": 128 - len(dropped),
                                  "swapped": len(swapped - dropped), "dropped": len(dropped)}
    assert manifest["rule"]["dropped_for_target"] == len(dropped)
    rows = {row["source_index"]: row for row in manifest["provenance"]}
    assert {i for i, row in rows.items() if row["action"] == "dropped"} == dropped
    for i in dropped:
        assert rows[i]["output_index"] is None and "left out" in rows[i]["reason"]
    assert f"{len(dropped)} left out" in stderr


# --- outputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args,name", [
    (["build-short"], "sample-short"),
    (["build-medium"], "sample-medium"),
    (["build-tiny"], "sample-tiny"),
    (["build", "--target-rg", "0.5"], "sample-rg0.5"),
])
def test_default_output_is_source_stem_with_variant_in_cwd(args, name, tmp_path, run_cli,
                                                           sample_path):
    _ok(run_cli, [*args, str(sample_path.resolve())], cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json", f"{name}.manifest.json"]
    assert _manifest(tmp_path / f"{name}.json")["output"] == {"file": f"{name}.json",
                                                              "format": "json"}


def test_default_output_follows_format_suffix(tmp_path, run_cli, sample_path):
    _ok(run_cli, ["build-short", sample_path, "--format", "jsonl"], cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample-short.jsonl",
                                                          "sample-short.manifest.json"]


def test_jsonl_and_parquet_outputs_hold_the_same_records_as_json(tmp_path, run_cli, sample_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for fmt in ("json", "jsonl", "parquet"):
        _ok(run_cli, ["build-short", sample_path, "--format", fmt, "-o", tmp_path / fmt / f"s.{fmt}"])
    as_json = _load(tmp_path / "json" / "s.json")
    as_jsonl = [json.loads(line) for line in
                (tmp_path / "jsonl" / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    table = pq.read_table(tmp_path / "parquet" / "s.parquet")
    assert table.schema.remove_metadata() == pa.schema(
        [("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())])
    assert as_jsonl == as_json
    assert table.to_pylist() == as_json
    manifests = {fmt: json.loads((tmp_path / fmt / "s.manifest.json").read_text())
                 for fmt in ("json", "jsonl", "parquet")}
    assert manifests["json"]["counts"] == manifests["jsonl"]["counts"] == manifests["parquet"]["counts"]
    assert [m["output"]["format"] for m in manifests.values()] == ["json", "jsonl", "parquet"]


def test_output_is_utf8_with_non_ascii_text_kept(tmp_path, run_cli, sample_path, sample_records):
    out = tmp_path / "s.json"
    _ok(run_cli, ["build-short", sample_path, "-o", out])
    text = out.read_bytes().decode("utf-8")
    non_ascii = {ch for r in sample_records for v in r.values() for ch in v if ord(ch) > 127}
    assert non_ascii, "the sample must hold non-ASCII text"
    assert non_ascii <= set(text)
    for ch in non_ascii:  # written as the character, not as a \uXXXX escape
        assert json.dumps(ch)[1:-1] not in text


@pytest.mark.parametrize("existing", ["out.json", "out.manifest.json"])
def test_existing_output_is_refused_without_force(existing, tmp_path, run_cli, sample_path):
    (tmp_path / existing).write_text("keep me", encoding="utf-8")
    code, stdout, stderr = run_cli(["build-short", sample_path, "-o", tmp_path / "out.json"])
    assert code == 3
    assert "Traceback" not in stderr and stdout == ""
    assert existing in stderr and "--force" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text(encoding="utf-8") == "keep me"


def test_existing_default_output_is_refused_without_force(tmp_path, run_cli, sample_path):
    (tmp_path / "sample-medium.json").write_text("keep me", encoding="utf-8")
    code, _, stderr = run_cli(["build-medium", str(sample_path)], cwd=tmp_path)
    assert code == 3 and "--force" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample-medium.json"]


def test_force_overwrites_existing_output(tmp_path, run_cli, sample_path):
    fresh = tmp_path / "fresh"
    _ok(run_cli, ["build-short", sample_path, "-o", fresh / "out.json"])
    target = tmp_path / "target"
    target.mkdir()
    (target / "out.json").write_text("old", encoding="utf-8")
    (target / "out.manifest.json").write_text("old", encoding="utf-8")
    _ok(run_cli, ["build-short", sample_path, "-o", target / "out.json", "--force"])
    for name in ("out.json", "out.manifest.json"):
        assert (target / name).read_bytes() == (fresh / name).read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["out.json", "out.manifest.json"]


@pytest.mark.parametrize("command,fmt", [("build-short", "json"), ("build-tiny", "json"),
                                         ("build-medium", "parquet")])
def test_two_runs_write_byte_identical_files(command, fmt, tmp_path, run_cli, sample_path):
    for run in ("a", "b"):
        _ok(run_cli, [command, sample_path, "--format", fmt, "-o", tmp_path / run / f"out.{fmt}"])
    for name in (f"out.{fmt}", "out.manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("command", ["build-short", "build-medium", "build-tiny"])
def test_manifest_records_source_tokenizer_rule_stats_counts_and_provenance(
        command, tmp_path, run_cli, sample_path, sp_counter):
    out = tmp_path / "out.json"
    stdout, _stderr = _ok(run_cli, [command, sample_path, "-o", out])
    manifest = _manifest(out)
    built = _load(out)
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["tool"].startswith("alpaca-plw ")
    assert manifest["source"]["sha256"] == sha256_of(sample_path)
    assert manifest["source"]["records"] == 128
    assert Path(manifest["source"]["path"]).name == "sample.json"
    assert manifest["tokenizer"]["backend"] == "sentencepiece"
    assert manifest["tokenizer"]["vocab_size"] == 32000
    assert manifest["rule"]["name"] == command.removeprefix("build-")
    assert manifest["output"] == {"file": "out.json", "format": "json"}

    counts = manifest["counts"]
    assert counts["kept"] + counts["dropped"] == counts["source"] == 128
    assert counts["kept"] == len(built)
    provenance = manifest["provenance"]
    assert [row["source_index"] for row in provenance] == list(range(128))
    actions = [row["action"] for row in provenance]
    assert actions.count("swapped") == counts["swapped"]
    assert actions.count("dropped") == counts["dropped"]
    kept_rows = [row for row in provenance if row["action"] != "dropped"]
    assert [row["output_index"] for row in kept_rows] == list(range(len(built)))
    assert all(row["reason"] for row in provenance)

    # the stats are those of the written file: as `stats --json` reads it, and as computed here
    code, row_out, err = run_cli(["stats", "--json", out])
    assert code == 0, err
    assert manifest["stats"] == json.loads(row_out)
    assert comparable(manifest["stats"]) == expected_stats(built, sp_counter)
    assert "out.json" in stdout and "R_g" in stdout  # the new dataset's stats row is printed


def test_manifest_stats_of_dropped_build_use_only_kept_records(tmp_path, run_cli, sample_path,
                                                               sp_counter):
    out = tmp_path / "tiny.json"
    _ok(run_cli, ["build-tiny", sample_path, "-o", out])
    built = _load(out)
    inst = sp_counter.counts([r["instruction"] for r in built])
    inp = sp_counter.counts([r["input"] for r in built])
    outp = sp_counter.counts([r["output"] for r in built])
    import numpy as np

    expected = stats_from_counts(np.array(inst), np.array(inp), np.array(outp))
    assert comparable(_manifest(out)["stats"]) == expected
    assert expected["records"] < 128


def test_build_prints_stats_row_on_stdout_and_summary_on_stderr(tmp_path, run_cli, sample_path,
                                                                plan):
    stdout, stderr = _ok(run_cli, ["build-short", sample_path, "-o", tmp_path / "s.json"])
    assert "s.json" in stdout and "population std" in stdout
    assert f"{len(plan.short())} swapped" in stderr and "0 left out" in stderr


def test_target_must_be_positive(tmp_path, run_cli, sample_path):
    for value in ("0", "-1", "nan"):
        code, _, stderr = run_cli(["build", "--target-rg", value, sample_path, "-o",
                                   tmp_path / "x.json"])
        assert code != 0 and "Traceback" not in stderr and "--target-rg" in stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_refused_and_writes_nothing(tmp_path, run_cli, sample_path):
    code, _, stderr = run_cli(["build-short", sample_path, "--format", "xml", "-o",
                               tmp_path / "x.json"])
    assert code != 0 and "Traceback" not in stderr and "--format" in stderr
    assert list(tmp_path.iterdir()) == []


def test_jsonl_output_reads_back_with_unicode_line_separator(tmp_path, run_cli):
    """The tool reads back its own jsonl output even when a string holds U+2028 (written raw)."""
    records = [{"instruction": "Join the two lines.", "input": "",
                "output": "First line\u2028second line, joined into one long answer here."}]
    source = write_json(tmp_path / "sep.json", records)
    _ok(run_cli, ["build-short", source, "--format", "jsonl", "-o", tmp_path / "sep-short.jsonl"])
    code, stdout, stderr = run_cli(["stats", "--json", tmp_path / "sep-short.jsonl"])
    assert code == 0, stderr
    assert json.loads(stdout)["records"] == 1
    from alpaca_plw.data.reading.sources import load_records

    assert load_records(tmp_path / "sep-short.jsonl").record(0) == reference_swap(records[0])


# --- unusable output paths --------------------------------------------------------------------

def test_output_that_is_a_directory_is_refused_cleanly_with_force(tmp_path, run_cli, sample_path):
    (tmp_path / "out").mkdir()
    code, _, stderr = run_cli(["build-short", sample_path, "-o", tmp_path / "out", "--force"])
    assert code != 0
    assert "Traceback" not in stderr
    assert "out" in stderr and "directory" in stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_output_below_a_regular_file_is_a_clean_error(tmp_path, run_cli, sample_path):
    (tmp_path / "afile").write_text("x")
    code, _, stderr = run_cli(["build-short", sample_path, "-o", tmp_path / "afile" / "x.json"])
    assert code != 0
    assert "Traceback" not in stderr
    assert "afile" in stderr
    assert (tmp_path / "afile").read_text() == "x"
