"""Bounded memory on hostile input (issue 17): a record longer than `--max-record-chars` is refused
before tokenizing, and a small Parquet file that decodes to far more than it holds is read in
bounded batches and refused; the process's peak memory stays under a stated bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alpaca_plw.data.reading.limits import MAX_RECORD_CHARS, decoded_budget
from alpaca_plw.data.reading.sources import load_records
from alpaca_plw.errors import InputError

LLAMA = Path(__file__).resolve().parents[2].parent / "shared" / "tokenizers" / "llama"
PEAK_BOUND = 512 * 2**20  # bytes: Python, pyarrow and the CLI (~150 MB) plus the 256 MiB budget


def _one_error(code, stderr, expected, needle):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected and "Traceback" not in stderr, stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
    assert needle in lines[-1], stderr


def test_a_record_over_the_limit_is_refused_before_tokenizing(tmp_path, run_cli, monkeypatch):
    source = tmp_path / "big.json"
    source.write_text(json.dumps([{"instruction": "x", "output": "y"},
                                  {"instruction": "a" * MAX_RECORD_CHARS, "output": "b"}]))

    def never(*args, **kwargs):
        raise AssertionError("tokenized a record over the limit")

    monkeypatch.setattr("alpaca_plw.data.tokenizer.Tokenizer.encode_batch", never)
    code, _, stderr = run_cli(["weights", source, "--plw", "0.1", "-o", tmp_path / "w"])
    _one_error(code, stderr, 2, "big.json: record 1: instruction, input and output hold "
                                "1,000,001 characters, more than --max-record-chars 1,000,000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.json"]


def test_the_limit_is_an_option_and_zero_turns_it_off(tmp_path, run_cli):
    source = tmp_path / "r.json"
    source.write_text(json.dumps([{"instruction": "abcdef", "input": "g", "output": "hij"}]))
    code, _, stderr = run_cli(["stats", source, "--max-record-chars", "9"])
    _one_error(code, stderr, 2, "record 0: instruction, input and output hold 10 characters")
    assert run_cli(["stats", source, "--max-record-chars", "10"])[0] == 0
    assert run_cli(["stats", source, "--max-record-chars", "0"])[0] == 0


def test_conversations_count_every_message(tmp_path):
    source = tmp_path / "c.jsonl"
    source.write_text(json.dumps({"messages": [{"role": "user", "content": "abc"},
                                               {"role": "assistant", "content": "defg"}]}) + "\n")
    with pytest.raises(InputError, match="record 0: its messages hold 7 characters"):
        load_records(str(source), max_record_chars=6)
    assert len(load_records(str(source), max_record_chars=7)) == 1


def test_a_parquet_row_over_the_limit_is_refused_from_arrow(tmp_path):
    values = pa.array(["ok", "z" * 50, "ok"])
    pq.write_table(pa.table({"instruction": values, "output": pa.array(["a", "b", "c"])}),
                   tmp_path / "p.parquet")
    with pytest.raises(InputError, match="record 1: its text columns hold 51 characters"):
        load_records(str(tmp_path / "p.parquet"), max_record_chars=50)
    # a dictionary-encoded column is measured through its dictionary
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array(["s", "l" * 60]))
    pq.write_table(pa.table({"instruction": dictionary, "output": pa.array(["a", "b", "c"])}),
                   tmp_path / "d.parquet")
    with pytest.raises(InputError, match="record 1: its text columns hold 61 characters"):
        load_records(str(tmp_path / "d.parquet"), max_record_chars=60)


def _bomb(path: Path, rows: int = 100_000, width: int = 4000) -> Path:
    """One 4,000-character value, dictionary-encoded, on every row of two columns: under 100 kB on
    disk, 800 MB once every value is a string."""
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["z" * width]))
    pq.write_table(pa.table({"instruction": column, "output": column}), path, compression="zstd")
    return path


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_a_parquet_decompression_bomb_is_refused_with_bounded_memory(tmp_path):
    bomb = _bomb(tmp_path / "bomb.parquet")
    assert bomb.stat().st_size * 64 < decoded_budget(bomb.stat().st_size) < 800e6
    peak = tmp_path / "peak"
    # VmHWM: this process's own peak (ru_maxrss would include the pytest process it forked from)
    script = ("import atexit, pathlib, re, sys\n"
              "out, path = pathlib.Path(sys.argv[1]), sys.argv[2]\n"
              "hwm = lambda: int(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read())[1])\n"
              "atexit.register(lambda: out.write_text(str(hwm() * 1024)))\n"
              "sys.argv = ['alpaca-plw', 'stats', path]\n"
              "from alpaca_plw.cli.app import main\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", script, str(peak), str(bomb)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"ALPACA_PLW_TOKENIZER": str(LLAMA), "HF_HUB_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin"})
    _one_error(done.returncode, done.stderr, 2, "bomb.parquet: decodes to at least")
    assert "a file this compressed is refused" in done.stderr
    assert int(peak.read_text()) < PEAK_BOUND, f"peak RSS {int(peak.read_text()) / 2**20:.0f} MiB"
