"""Output format follows the -o suffix unless --format says otherwise; contradictions are refused."""

import json

import pyarrow.parquet as pq


def test_output_suffix_chooses_the_format(run_cli, sample_path, sample_records, tmp_path):
    out = tmp_path / "short.jsonl"
    code, _, err = run_cli(["build-short", str(sample_path), "-o", str(out)])
    assert code == 0, err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(sample_records)
    assert set(json.loads(lines[0])) == {"instruction", "input", "output"}
    parquet = tmp_path / "short-p.parquet"
    code, _, err = run_cli(["build-short", str(sample_path), "-o", str(parquet)])
    assert code == 0, err
    assert pq.read_table(parquet).num_rows == len(sample_records)


def test_format_contradicting_the_output_name_is_refused(run_cli, sample_path, tmp_path):
    out = tmp_path / "short.json"
    code, _, err = run_cli(["build-short", str(sample_path), "-o", str(out), "--format", "parquet"])
    assert code != 0
    assert "--format parquet contradicts the output name short.json" in err
    assert not out.exists() and not (tmp_path / "short.manifest.json").exists()


def test_hub_id_fails_fast_with_the_local_path_option(run_cli, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    code, _, err = run_cli(["stats", "someone/some-dataset"])
    assert code != 0
    assert "cannot be loaded as a Hugging Face hub dataset" in err
    assert "pass a local path as SOURCE" in err


def test_building_over_the_source_is_refused_even_with_force(run_cli, tmp_path, sample_path):
    source = tmp_path / "data.json"
    source.write_bytes(sample_path.read_bytes())
    before = source.read_bytes()
    code, _, err = run_cli(["build-short", str(source), "-o", str(source), "--force"])
    assert code == 3
    assert "is the source dataset" in err
    assert source.read_bytes() == before
    assert not (tmp_path / "data.manifest.json").exists()


def test_swapped_then_dropped_records_say_so_in_the_manifest(run_cli, sample_path, tmp_path):
    out = tmp_path / "tiny.json"
    code, _, err = run_cli(["build-tiny", str(sample_path), "-o", str(out)])
    assert code == 0, err
    manifest = json.loads((tmp_path / "tiny.manifest.json").read_text(encoding="utf-8"))
    dropped = [r for r in manifest["provenance"] if r["action"] == "dropped"]
    assert dropped and all(r["output_index"] is None for r in dropped)
    assert {r["reason"].split(":")[0] for r in dropped} <= {"swapped, then left out", "left out"}
    assert any(r["reason"].startswith("swapped, then left out") for r in dropped)
