"""The route for data made on several machines (issue 19, item 5), through the real CLI: the
shards `weights --shard K/N` writes, given to `sweep` as the folder holding them, make the same
per-PLW weights folders, byte for byte, as `weights --plw V` on the whole source (Alpaca records and
conversations); an incomplete set of shards is one error line."""

import pytest
from study_helpers import REPO, save_tiny_llama, small_source
from test_sweep_weights import TRAIN, _assert_same_folder

CHAT = REPO / "tests" / "fixtures" / "chat"
CASES = {"alpaca": ([], 96), "chat": (["--chat-template", CHAT / "chatml.jinja"], 112)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("model") / "base")


@pytest.fixture(scope="module")
def alpaca_source(tmp_path_factory):
    return small_source(tmp_path_factory.mktemp("src"), count=5)


def _shards(run_cli, source, root, chat_args, max_length, count=3, plw="0.3"):
    for k in range(count):
        code, _, stderr = run_cli(["weights", source, "--plw", plw, "-o",
                                   root / f"shard-{k}-of-{count}", "--shard", f"{k}/{count}",
                                   "--max-length", max_length, *chat_args])
        assert code == 0, stderr
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_sweep_over_shards_equals_weights_on_the_whole_source(run_cli, base, alpaca_source,
                                                                tmp_path, case):
    chat_args, max_length = CASES[case]
    source = alpaca_source if case == "alpaca" else CHAT / "conversations.jsonl"
    shards = _shards(run_cli, source, tmp_path / "shards", chat_args, max_length)
    out = tmp_path / "sweep"
    code, _, stderr = run_cli(["sweep", shards, "--model", base, "--output-dir", out, "--plw",
                               "0,1", "--max-length", max_length, *TRAIN])  # tokenized already
    assert code == 0, stderr
    for plw in ("0", "1"):
        direct = tmp_path / f"direct-{plw}"
        code, _, stderr = run_cli(["weights", source, "--plw", plw, "-o", direct, "--max-length",
                                   max_length, *chat_args])
        assert code == 0, stderr
        _assert_same_folder(out / "weights" / f"plw-{plw}", direct)


def test_a_sweep_over_an_incomplete_set_of_shards_is_one_error(run_cli, alpaca_source, tmp_path):
    shards = _shards(run_cli, alpaca_source, tmp_path / "shards", [], 96)
    (shards / "shard-1-of-3" / "data-00000-of-00001.arrow").rename(tmp_path / "moved.arrow")
    code, _, stderr = run_cli(["sweep", shards, "--model", "unused", "--output-dir",
                               tmp_path / "o", "--plw", "0,1", "--max-length", 96, "--dry-run"])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: shard 1 of 3 missing"), stderr
    assert "--allow-partial-shards" in lines[-1] and not (tmp_path / "o").exists()
