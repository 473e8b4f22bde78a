"""`alpaca-plw weights`: exact token ids and loss weights, the Arrow output, and every refusal.

Expected ids are computed here straight from `sentencepiece` with the Alpaca templates copied from
REFERENCE.md section 4 (never taken from the library), so the tests fail if the library's template,
boundary or truncation drifts. The golden file pins the whole output of one run on the handcrafted
fixture; regenerate it only on purpose, and explain the change in CHANGELOG.md:

    python tests/regen_golden.py        # every golden file, this one included
    python tests/data/test_weights.py --regen   # this one alone
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "tokenizers" / "llama"
FIXTURE = Path("tests") / "fixtures" / "weights_records.json"  # relative to REPO_ROOT, as the CLI sees it
GOLDEN = REPO_ROOT / "tests" / "golden" / "weights_handcrafted.json"
ARROW_FILE = "data-00000-of-00001.arrow"
OUTPUT_FILES = {ARROW_FILE, "dataset_info.json", "state.json", ".alpaca-plw"}  # the marker: issue 8

PLW = 0.25
MAX_LENGTH = 64
GOLDEN_ARGS = ["weights", str(FIXTURE), "--plw", "0.25", "--max-length", "64"]
BOS, EOS = 1, 2

# REFERENCE.md section 4, copied here on purpose: the tests must not take these from the library.
REF_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
REF_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# The handcrafted fixture, by source index (checked by test_fixture_holds_every_case).
EMPTY_INPUT, WITH_INPUT, MERGE, SKIPPED, TRUNCATED, NON_ASCII = range(6)

# The published guide (REFERENCE.md section 5), column "All": (R_g, PLW).
# Every value at R_g >= 2.5 is starred ("PLW barely matters"), and `auto` uses the one documented
# value 0.1 there instead of the guide's 1.0 / 0.0 (README "Choosing a PLW").
REF_GUIDE_ALL = [(0.5, 0.155), (1.0, 0.155), (1.5, 0.183), (2.0, 0.239), (2.5, 0.1), (3.0, 0.1),
                 (3.5, 0.1), (4.0, 0.1), (4.5, 0.1), (5.0, 0.1), (5.5, 0.1), (6.0, 0.1),
                 (6.5, 0.1), (7.0, 0.1), (7.5, 0.1), (8.0, 0.1)]


# --- helpers: the real CLI, the Arrow file, the independent reference ------------------------

def invoke(args: Sequence[object], cwd: Path = REPO_ROOT) -> tuple[int, str, str]:
    """The real Typer app in `cwd` (usable outside a test, for --regen, so not `run_cli`)."""
    from cli_invoke import invoke_cli  # tests/ is on sys.path under pytest and in __main__ below

    return invoke_cli(args, cwd)


def read_arrow(directory: Path) -> tuple[pa.Table, dict]:
    """The table and the `alpaca_plw` metadata, read with plain pyarrow."""
    with pa.OSFile(str(Path(directory) / ARROW_FILE), "rb") as source:
        table = pa.ipc.open_stream(source).read_all()
    return table, json.loads(table.schema.metadata[b"alpaca_plw"])


def golden_view(directory: Path) -> dict:
    """Everything the golden file pins: schema, metadata (less the tool version) and every row."""
    table, meta = read_arrow(directory)
    meta = {k: v for k, v in meta.items() if k != "tool"}  # version-dependent; checked on its own
    columns = ["source_index", "prompt_length", "input_ids", "loss_weight"]
    return {
        "command": " ".join(["alpaca-plw", *GOLDEN_ARGS, "-o", "OUT_DIR"]),
        "schema": {field.name: str(field.type) for field in table.schema},
        "metadata": meta,
        "rows": table.select(columns).to_pylist(),
    }


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reference_prompt(record: dict) -> str:
    if record["input"]:
        return REF_PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
    return REF_PROMPT_NO_INPUT.format(instruction=record["instruction"])


class Reference:
    """Sequences and boundaries computed straight from SentencePiece (not through alpaca_plw)."""

    def __init__(self, model_file: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        assert (self.sp.bos_id(), self.sp.eos_id()) == (BOS, EOS)

    def full_length(self, record: dict) -> int:
        """BOS + prompt + output + EOS, before truncation."""
        return 2 + len(self.sp.encode(reference_prompt(record) + record["output"]))

    def prompt_length(self, record: dict) -> int:
        """BOS + the prompt tokenized alone, capped so that EOS stays a completion token."""
        return min(1 + len(self.sp.encode(reference_prompt(record))), self.full_length(record) - 1)

    def row(self, record: dict, plw: float, max_length: int) -> tuple[list[int], list[float], int]:
        """(input_ids, loss_weight, prompt_length) of a record that is kept."""
        ids = ([BOS] + self.sp.encode(reference_prompt(record) + record["output"]) + [EOS])[:max_length]
        boundary = self.prompt_length(record)
        weights = [float(np.float32(plw))] * boundary + [1.0] * (len(ids) - boundary)
        return ids, weights, boundary


@pytest.fixture(scope="module")
def ref(llama_dir) -> Reference:
    return Reference(llama_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def fixture_records() -> list[dict]:
    return json.loads((REPO_ROOT / FIXTURE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def handcrafted(tmp_path_factory, llama_dir):
    """One run of the golden command: (output dir, stdout)."""
    out = tmp_path_factory.mktemp("handcrafted") / "weights"
    code, stdout, stderr = invoke([*GOLDEN_ARGS, "-o", out])
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def handcrafted_table(handcrafted) -> tuple[pa.Table, dict]:
    return read_arrow(handcrafted[0])


def _nothing_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _share_printed(stdout: str) -> str:
    match = re.search(r"prompt share of total weight\D*?(\d+\.\d+%)", stdout)
    assert match, f"no prompt share in the summary:\n{stdout}"
    return match.group(1)


def _share_from_arrays(table: pa.Table) -> float:
    """sum of prompt-position weights / sum of all weights, from the stored arrays."""
    prompt = total = 0.0
    for row in table.select(["loss_weight", "prompt_length"]).to_pylist():
        w = np.asarray(row["loss_weight"], dtype=np.float64)
        prompt += w[: row["prompt_length"]].sum()
        total += w.sum()
    return prompt / total


# --- the fixture itself ----------------------------------------------------------------------

def test_fixture_holds_every_case(fixture_records, ref):
    recs = fixture_records
    assert len(recs) == 6
    assert recs[EMPTY_INPUT]["input"] == "" and recs[WITH_INPUT]["input"] != ""
    assert recs[MERGE]["output"] == "="
    assert ref.prompt_length(recs[SKIPPED]) >= MAX_LENGTH  # the prompt alone fills the window
    assert ref.prompt_length(recs[TRUNCATED]) < MAX_LENGTH < ref.full_length(recs[TRUNCATED])
    assert ref.full_length(recs[WITH_INPUT]) == MAX_LENGTH  # fits exactly: not truncated
    assert any(ord(c) > 0xFFFF for c in recs[NON_ASCII]["output"])  # beyond the BMP (an emoji)
    assert not recs[NON_ASCII]["instruction"].isascii()


# --- the golden file -------------------------------------------------------------------------

def test_handcrafted_ids_and_weights_match_golden_exactly(handcrafted):
    assert GOLDEN.is_file(), f"missing {GOLDEN}; create it with `python tests/data/test_weights.py --regen`"
    assert canonical(golden_view(handcrafted[0])) == GOLDEN.read_text(encoding="utf-8")


def test_golden_agrees_with_the_independent_reference(fixture_records, ref):
    """The golden file itself is right: its rows equal the SentencePiece reference."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert [r["source_index"] for r in golden["rows"]] == [EMPTY_INPUT, WITH_INPUT, MERGE, TRUNCATED,
                                                           NON_ASCII]
    for row in golden["rows"]:
        ids, weights, boundary = ref.row(fixture_records[row["source_index"]], PLW, MAX_LENGTH)
        assert (row["input_ids"], row["loss_weight"], row["prompt_length"]) == (ids, weights, boundary)


# --- independent checks of every written row -------------------------------------------------

def test_input_ids_are_bos_prompt_output_eos_from_sentencepiece(handcrafted_table, fixture_records, ref):
    table, _ = handcrafted_table
    for row in table.to_pylist():
        expected, _, _ = ref.row(fixture_records[row["source_index"]], PLW, MAX_LENGTH)
        assert row["input_ids"] == expected, row["source_index"]
        assert len(row["input_ids"]) <= MAX_LENGTH


def test_prompt_length_is_bos_plus_prompt_tokenized_alone(handcrafted_table, fixture_records, ref):
    table, _ = handcrafted_table
    for row in table.to_pylist():
        record = fixture_records[row["source_index"]]
        assert row["prompt_length"] == 1 + len(ref.sp.encode(reference_prompt(record)))
        assert row["prompt_length"] < len(row["input_ids"])  # at least one completion token


def test_weights_are_plw_on_the_prompt_and_one_on_the_completion(handcrafted_table):
    table, _ = handcrafted_table
    for row in table.to_pylist():
        w, n = np.asarray(row["loss_weight"]), row["prompt_length"]
        assert len(w) == len(row["input_ids"])
        assert np.all(w[:n] == np.float32(0.25)) and np.all(w[n:] == 1.0), row["source_index"]


def test_non_ascii_record_is_tokenized_like_sentencepiece(handcrafted_table, fixture_records, ref):
    table, _ = handcrafted_table
    [row] = [r for r in table.to_pylist() if r["source_index"] == NON_ASCII]
    record = fixture_records[NON_ASCII]
    assert ref.sp.decode(row["input_ids"][row["prompt_length"]:-1]).endswith(record["output"][-3:])
    assert row["input_ids"][-1] == EOS


def test_truncated_and_skipped_records_are_listed_with_reasons(handcrafted_table, fixture_records, ref):
    table, meta = handcrafted_table
    assert table.column("source_index").to_pylist() == [EMPTY_INPUT, WITH_INPUT, MERGE, TRUNCATED,
                                                        NON_ASCII]
    assert meta["truncated"] == [TRUNCATED]
    [skipped] = meta["skipped"]
    assert skipped["source_index"] == SKIPPED
    assert "--max-length 64" in skipped["reason"]
    assert str(ref.prompt_length(fixture_records[SKIPPED])) in skipped["reason"]
    assert meta["counts"] == {"source": 6, "written": 5, "truncated": 1, "skipped": 1}

    rows = {r["source_index"]: r for r in table.to_pylist()}
    cut = rows[TRUNCATED]["input_ids"]
    assert len(cut) == MAX_LENGTH and cut[-1] != EOS  # cut at the end: EOS is gone
    assert rows[WITH_INPUT]["input_ids"][-1] == EOS and len(rows[WITH_INPUT]["input_ids"]) == MAX_LENGTH


def test_token_counts_add_up(handcrafted_table):
    table, meta = handcrafted_table
    lengths = [len(ids) for ids in table.column("input_ids").to_pylist()]
    prompt = sum(table.column("prompt_length").to_pylist())
    assert meta["tokens"] == {"total": sum(lengths), "prompt": prompt,
                              "completion": sum(lengths) - prompt}
    counts = meta["counts"]
    assert counts["written"] + counts["skipped"] == counts["source"] == 6
    assert table.num_rows == counts["written"]


# --- the boundary merge ----------------------------------------------------------------------

def test_output_equals_merges_with_response_colon_inside_the_prompt(handcrafted_table,
                                                                    fixture_records, ref):
    """Output "=" after "### Response:" tokenizes jointly as ":="; it weighs PLW, EOS weighs 1."""
    table, _ = handcrafted_table
    [row] = [r for r in table.to_pylist() if r["source_index"] == MERGE]
    merged, colon = ref.sp.piece_to_id(":="), ref.sp.piece_to_id(":")
    assert merged != ref.sp.unk_id()
    prompt_alone = ref.sp.encode(reference_prompt(fixture_records[MERGE]))
    assert prompt_alone[-1] == colon

    ids, n = row["input_ids"], row["prompt_length"]
    assert ids[-2:] == [merged, EOS]
    assert row["loss_weight"][-2:] == [0.25, 1.0]
    assert n == 1 + len(prompt_alone) == len(ids) - 1  # no separate output token
    assert ids[:-2] == [BOS] + prompt_alone[:-1]


def test_empty_output_leaves_eos_as_the_only_completion_token(tmp_path, ref):
    record = {"instruction": "Say nothing.", "input": "", "output": ""}
    source = tmp_path / "silent.json"
    source.write_text(json.dumps([record]), encoding="utf-8")
    code, _, stderr = invoke(["weights", source, "--plw", "0.5", "-o", tmp_path / "out"])
    assert code == 0, stderr
    [row] = read_arrow(tmp_path / "out")[0].to_pylist()
    prompt = ref.sp.encode(reference_prompt(record))
    assert row["input_ids"] == [BOS] + prompt + [EOS]
    assert row["prompt_length"] == 1 + len(prompt)
    assert row["loss_weight"] == [0.5] * (1 + len(prompt)) + [1.0]


def test_boundary_is_capped_so_eos_weighs_one_when_the_joint_text_is_shorter():
    """A merge that makes prompt + output fewer tokens than the prompt alone keeps EOS at 1.0.

    The LLaMA vocabulary cannot do this after "### Response:", so a stub tokenizer does: it
    encodes any text ending in "#" as one token, and others as one token per character.
    """
    from alpaca_plw.data.alpaca.weights import build_weights
    from alpaca_plw.data.reading.records import Records, Source
    from alpaca_plw.data.tokenizer import Tokenizer

    def encode(texts, add_special_tokens=False):
        return {"input_ids": [[7] if t.endswith("#") else [5] * len(t) for t in texts]}

    stub = Tokenizer("stub", "hf-fast", encode, bos_id=1, eos_id=2, vocab_size=8)
    records = Records(Source("stub", "stub", "json"), ["Do it."], [""], ["#"])
    tw = build_weights(records, stub, 0.5, max_length=512)
    assert tw.ids.tolist() == [1, 7, 2]
    assert tw.prompt_length.tolist() == [2]
    assert tw.weights.tolist() == [0.5, 0.5, 1.0]


# --- the dataset on disk ---------------------------------------------------------------------

def test_load_from_disk_reads_the_same_rows_and_column_types(handcrafted, handcrafted_table):
    import datasets

    out, _ = handcrafted
    table, _ = handcrafted_table
    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == 5
    types = {name: ds.data.schema.field(name).type for name in ds.column_names}
    assert types == {"input_ids": pa.list_(pa.int32()), "loss_weight": pa.list_(pa.float32()),
                     "prompt_length": pa.int32(), "source_index": pa.int64()}
    assert ds.features["prompt_length"].dtype == "int32"
    assert ds.features["source_index"].dtype == "int64"
    assert ds.features["input_ids"].feature.dtype == "int32"
    assert ds.features["loss_weight"].feature.dtype == "float32"
    assert ds.to_list() == table.to_pylist()


def test_schema_metadata_records_plw_template_tokenizer_source_and_counts(handcrafted_table, llama_dir):
    import alpaca_plw
    import sentencepiece

    table, meta = handcrafted_table
    assert {"plw", "template", "tokenizer", "max_length", "source", "counts"} <= set(meta)
    assert meta["plw"] == 0.25 and meta["max_length"] == 64 and meta["template"] == "alpaca"
    assert meta["plw_choice"] == {"mode": "given"}
    sp = sentencepiece.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
    assert meta["tokenizer"]["name"] == "llama"
    assert meta["tokenizer"]["backend"] == "sentencepiece"
    assert meta["tokenizer"]["vocab_size"] == sp.get_piece_size() == 32000
    assert re.fullmatch(r"[0-9a-f]{16}", meta["tokenizer"]["vocab_sha256"])
    assert meta["source"]["path"] == "tests/fixtures/weights_records.json"  # relative: no absolute path
    assert meta["source"]["sha256"] == sha256_of(REPO_ROOT / FIXTURE)
    assert meta["source"]["records"] == 6
    assert meta["tool"] == f"alpaca-plw {alpaca_plw.__version__}"
    assert [f.name for f in table.schema] == ["input_ids", "loss_weight", "prompt_length", "source_index"]


def test_two_runs_write_byte_identical_files(handcrafted, tmp_path):
    first, _ = handcrafted
    second = tmp_path / "again"
    code, _, stderr = invoke([*GOLDEN_ARGS, "-o", second])
    assert code == 0, stderr
    assert set(_nothing_in(first)) == set(_nothing_in(second)) == OUTPUT_FILES
    for name in OUTPUT_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_read_weights_dir_reads_the_output(handcrafted, handcrafted_table):
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    table, meta = handcrafted_table
    data = read_weights_dir(handcrafted[0])
    assert len(data) == 5
    assert data.meta == meta
    assert data.table.to_pylist() == table.to_pylist()


def test_weights_dir_missing_a_column_is_refused_naming_it(tmp_path):
    from alpaca_plw.data.weights_dir.read import read_weights_dir
    from alpaca_plw.errors import InputError

    folder = tmp_path / "broken"
    folder.mkdir()
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("prompt_length", pa.int32()),
                        ("source_index", pa.int64())],
                       metadata={b"alpaca_plw": json.dumps({"plw": 0.25}).encode()})
    table = pa.Table.from_pydict({"input_ids": [[1, 5, 2]], "prompt_length": [2], "source_index": [0]},
                                 schema=schema)
    with pa.OSFile(str(folder / ARROW_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    with pytest.raises(InputError, match="loss_weight"):
        read_weights_dir(folder)


# --- the summary and --plw auto --------------------------------------------------------------

def test_summary_prints_the_prompt_share_of_weight(handcrafted, handcrafted_table):
    _, stdout = handcrafted
    table, meta = handcrafted_table
    prompt = sum(table.column("prompt_length").to_pylist())
    completion = sum(len(ids) for ids in table.column("input_ids").to_pylist()) - prompt
    share = 0.25 * prompt / (0.25 * prompt + completion)
    assert _share_from_arrays(table) == pytest.approx(share, rel=1e-12)
    assert _share_printed(stdout) == f"{share:.2%}"
    assert meta["prompt_weight_share"] == pytest.approx(share, abs=1e-6)
    assert re.search(r"records written\D*5 of 6", stdout)


def test_plw_auto_records_the_guide_value_and_prints_its_share(tmp_path, sample_records, ref):
    out = tmp_path / "auto"
    code, stdout, stderr = invoke(["weights", "--plw", "auto", "-o", out])  # default: data/sample.json
    assert code == 0, stderr
    table, meta = read_arrow(out)

    # R_g from independent per-field counts, then the guide's "All" column interpolated linearly.
    def count(text: str) -> int:
        return len(ref.sp.encode(text))

    prompt_tokens = sum(count(r["instruction"]) + count(r["input"]) for r in sample_records)
    rg = sum(count(r["output"]) for r in sample_records) / prompt_tokens
    guide_rg, guide_all = zip(*REF_GUIDE_ALL)
    expected_plw = round(float(np.interp(rg, guide_rg, guide_all)), 3)
    assert meta["plw_choice"]["mode"] == "auto"
    assert meta["plw_choice"]["rg"] == pytest.approx(rg, abs=1e-6)
    assert meta["plw"] == expected_plw == meta["plw_choice"]["guide"]["all"]

    code, stats_out, stderr = invoke(["stats", "--json"])  # the same value `stats` shows
    assert code == 0, stderr
    assert json.loads(stats_out)["recommended_plw"]["all"] == meta["plw"]

    for row, record in zip(table.to_pylist(), sample_records):
        ids, _, boundary = ref.row(record, meta["plw"], 512)
        assert (row["input_ids"], row["prompt_length"]) == (ids, boundary)
        w = np.asarray(row["loss_weight"])
        assert np.all(w[:boundary] == np.float32(meta["plw"])) and np.all(w[boundary:] == 1.0)
    assert table.num_rows == len(sample_records)

    prompt = sum(table.column("prompt_length").to_pylist())
    completion = sum(len(ids) for ids in table.column("input_ids").to_pylist()) - prompt
    share = meta["plw"] * prompt / (meta["plw"] * prompt + completion)
    assert _share_from_arrays(table) == pytest.approx(share, rel=1e-6)
    assert _share_printed(stdout) == f"{share:.2%}"


# --- the max-length boundary -----------------------------------------------------------------

def test_prompt_exactly_filling_max_length_is_skipped_and_one_less_keeps_one_token(
        tmp_path, fixture_records, ref):
    record = fixture_records[EMPTY_INPUT]
    short = {"instruction": "Hi", "input": "", "output": "Hello"}
    source = tmp_path / "two.json"
    source.write_text(json.dumps([record, short]), encoding="utf-8")
    n = ref.prompt_length(record)
    assert ref.prompt_length(short) < n

    code, _, stderr = invoke(["weights", source, "--plw", "0", "--max-length", n + 1, "-o",
                              tmp_path / "kept"])
    assert code == 0, stderr
    table, meta = read_arrow(tmp_path / "kept")
    row = table.to_pylist()[0]
    assert row["source_index"] == 0 and row["prompt_length"] == n
    assert row["input_ids"] == ref.row(record, 0.0, n + 1)[0] and len(row["input_ids"]) == n + 1
    assert row["loss_weight"] == [0.0] * n + [1.0]
    assert meta["truncated"] == [0] and meta["skipped"] == []

    code, _, stderr = invoke(["weights", source, "--plw", "0", "--max-length", n, "-o",
                              tmp_path / "skipped"])
    assert code == 0, stderr
    table, meta = read_arrow(tmp_path / "skipped")
    assert table.column("source_index").to_pylist() == [1]
    [skipped] = meta["skipped"]
    assert skipped["source_index"] == 0 and f"--max-length {n}" in skipped["reason"]
    assert meta["counts"] == {"source": 2, "written": 1, "truncated": 0, "skipped": 1}


# --- bad input: a clear error, nothing written -----------------------------------------------

def _assert_refused(code: int, stderr: str, work: Path, *expected: str, exit_code: int = 2) -> None:
    assert code == exit_code, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("error:"), stderr
    for text in expected:
        assert text in stderr, stderr
    assert _nothing_in(work) == [], "something was written"


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "nan", "inf", ""])
def test_plw_out_of_range_or_not_a_number_is_refused(tmp_path, value):
    work = tmp_path / "work"
    work.mkdir()
    code, _, stderr = invoke([*GOLDEN_ARGS[:2], f"--plw={value}", "-o", work / "out"])
    _assert_refused(code, stderr, work, "--plw")


@pytest.mark.parametrize("value", ["1", "0", "-3"])
def test_max_length_below_two_is_refused(tmp_path, value):
    work = tmp_path / "work"
    work.mkdir()
    code, _, stderr = invoke(["weights", FIXTURE, "--plw", "0.25", f"--max-length={value}",
                              "-o", work / "out"])
    _assert_refused(code, stderr, work, "--max-length")


def test_empty_dataset_is_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    source = tmp_path / "empty.json"
    source.write_text("[]", encoding="utf-8")
    code, _, stderr = invoke(["weights", source, "--plw", "0.25", "-o", work / "out"])
    _assert_refused(code, stderr, work, "empty.json", "no records")


def test_dataset_with_every_record_skipped_is_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    code, _, stderr = invoke([*GOLDEN_ARGS[:4], "--max-length", "8", "-o", work / "out"])
    _assert_refused(code, stderr, work, "every record was skipped", "--max-length 8")


def test_existing_output_is_refused_without_force_and_replaced_with_it(tmp_path, handcrafted):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = invoke([*GOLDEN_ARGS, "-o", out])
    assert code == 3, stderr
    assert "Traceback" not in stderr and "--force" in stderr
    assert _nothing_in(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"

    # issue 8: --force replaces only a folder alpaca-plw wrote (the .alpaca-plw marker)
    code, _, stderr = invoke([*GOLDEN_ARGS, "-o", out, "--force"])
    assert code == 3 and "not written by alpaca-plw" in stderr, stderr
    assert _nothing_in(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"

    ours = tmp_path / "ours"
    code, _, stderr = invoke([*GOLDEN_ARGS, "--plw", "0.5", "-o", ours])
    assert code == 0, stderr
    code, _, stderr = invoke([*GOLDEN_ARGS, "-o", ours, "--force"])
    assert code == 0, stderr
    assert set(_nothing_in(ours)) == OUTPUT_FILES
    assert (ours / ARROW_FILE).read_bytes() == (handcrafted[0] / ARROW_FILE).read_bytes()
    assert _nothing_in(tmp_path) == ["ours", "out"]  # no temporary or old folder left beside it


def test_source_file_is_unchanged_by_a_run(tmp_path):
    source = tmp_path / "records.json"
    source.write_bytes((REPO_ROOT / FIXTURE).read_bytes())
    before = sha256_of(source)
    code, _, stderr = invoke(["weights", source, "--plw", "0.25", "--max-length", "64",
                              "-o", tmp_path / "out"])
    assert code == 0, stderr
    assert sha256_of(source) == before == sha256_of(REPO_ROOT / FIXTURE)


def test_force_with_a_leftover_old_folder_still_replaces_the_output(tmp_path):
    out = tmp_path / "out"
    code, _, stderr = invoke([*GOLDEN_ARGS, "-o", out])
    assert code == 0, stderr
    stale = tmp_path / ".out.old"
    stale.mkdir()
    (stale / "leftover").write_text("x")
    code, _, stderr = invoke([*GOLDEN_ARGS, "-o", out, "--force"])
    assert "Traceback" not in stderr
    assert code == 0, stderr


def test_output_below_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    code, _, stderr = invoke([*GOLDEN_ARGS, "-o", tmp_path / "file" / "out"])
    assert "Traceback" not in stderr
    assert code != 0 and stderr.startswith("error:"), stderr


# --- regeneration ----------------------------------------------------------------------------

def regenerate_golden() -> None:
    """Rewrite the golden file from the current code (explain every change in CHANGELOG.md)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "weights"
        code, _, stderr = invoke([*GOLDEN_ARGS, "-o", out])
        if code != 0:
            raise SystemExit(f"alpaca-plw weights failed ({code}):\n{stderr}")
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(canonical(golden_view(out)), encoding="utf-8")
    print(f"wrote {GOLDEN.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        raise SystemExit("usage: python tests/data/test_weights.py --regen")
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    regenerate_golden()


@pytest.mark.parametrize("max_length,kind", [(50, "skipped"), (80, "cut")])
def test_weights_warns_when_most_records_are_skipped_or_cut(run_cli, tmp_path, max_length, kind):
    """On the sample, --max-length 50 leaves most prompts filling it (skipped) and 80 cuts most
    completions; the command still succeeds and says so once on stderr. At 512 nothing is said."""
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    sample = Path(__file__).resolve().parents[2] / "data" / "sample.json"
    code, _, err = run_cli(["weights", sample, "--plw", "0.1", "--max-length", max_length, "-o",
                            tmp_path / "short"])
    assert code == 0, err
    counts = read_weights_dir(tmp_path / "short").meta["counts"]
    n = counts["skipped" if kind == "skipped" else "truncated"]
    assert n > counts["source"] / 2  # the case is what it claims
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings == [line for line in warnings if f"were {kind}" in line] and len(warnings) == 1
    assert f"{n:,} of {counts['source']:,} records" in warnings[0]
    code, _, err = run_cli(["weights", sample, "--plw", "0.1", "-o", tmp_path / "full"])
    assert code == 0 and "warning:" not in err
