"""A sweep's weights are `alpaca-plw weights`'s at every PLW, Alpaca records and conversations alike,
through the real CLI; PLW values added to a sweep are derived from its stored tokens."""

import json

import pyarrow as pa
import pytest
from study_helpers import REPO, save_tiny_llama, small_source

from alpaca_plw.data.weights_dir.store import ARROW_FILE, META_KEY

CHAT = REPO / "tests" / "fixtures" / "chat"
TRAIN = ["--batch-size", "2", "--micro-batch-size", "2", "--max-steps", "1", "--lr", "1e-3",
         "--warmup-ratio", "0", "--device", "cpu"]


def _arrow(folder):
    with pa.memory_map(str(folder / ARROW_FILE)) as source:
        return pa.ipc.open_stream(source).read_all()


def _assert_same_folder(swept, direct):
    a, b = _arrow(swept), _arrow(direct)
    assert a.column_names == b.column_names
    for name in b.column_names:
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    assert json.loads(a.schema.metadata[META_KEY]) == json.loads(b.schema.metadata[META_KEY])
    # and byte for byte: the Arrow file, dataset_info.json, state.json (its fingerprint)
    names = sorted(p.name for p in direct.iterdir())
    assert sorted(p.name for p in swept.iterdir()) == names
    for name in names:
        assert (swept / name).read_bytes() == (direct / name).read_bytes(), name


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("model") / "base")


@pytest.fixture(scope="module")
def alpaca_source(tmp_path_factory):
    return small_source(tmp_path_factory.mktemp("src"), count=4)


CASES = {
    "alpaca": ([], 96),
    "chat": (["--chat-template", CHAT / "chatml.jinja"], 112),
    "chat-roles": (["--chat-template", CHAT / "chatml.jinja", "--role-weights",
                    "system=0,markup=0.3", "--assistant-turns", "last"], 112),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sweep_weights_equal_weights_output_at_each_plw(run_cli, base, alpaca_source, tmp_path,
                                                         case):
    chat_args, max_length = CASES[case]
    source = alpaca_source if case == "alpaca" else CHAT / "conversations.jsonl"
    out = tmp_path / "sweep"
    # PLW 1 first, then 0 and 0.1 added: both derived from the stored tokens, not tokenized
    for plws in ("1", "0,0.1,1"):
        code, _, stderr = run_cli(["sweep", source, "--model", base, "--output-dir", out, "--plw",
                                   plws, "--max-length", max_length, *chat_args, *TRAIN])
        assert code == 0, stderr
    body = json.loads((out / "sweep.json").read_text())
    assert body["config"]["plws"] == [0.0, 0.1, 1.0]
    assert [r["status"] for r in body["runs"]] == ["done"] * 3
    for plw in ("0", "0.1", "1"):
        direct = tmp_path / f"direct-{plw}"
        code, _, stderr = run_cli(["weights", source, "--plw", plw, "-o", direct, "--max-length",
                                   max_length, *chat_args])
        assert code == 0, stderr
        _assert_same_folder(out / "weights" / f"plw-{plw}", direct)


def test_a_chat_weights_folder_swept_keeps_its_role_weights_or_is_refused(run_cli, tmp_path):
    folder = tmp_path / "given"
    chat = ["--chat-template", CHAT / "chatml.jinja"]
    code, _, stderr = run_cli(["weights", CHAT / "conversations.jsonl", "--plw", "0.5", "-o",
                               folder, "--max-length", 112, "--role-weights", "markup=0", *chat])
    assert code == 0, stderr
    code, _, stderr = run_cli(["sweep", folder, "--model", "unused", "--output-dir",
                               tmp_path / "o", "--plw", "0,1", "--dry-run"])
    assert code == 2 and "pass --role-weights markup=0" in stderr and "Traceback" not in stderr
    code, stdout, stderr = run_cli(["sweep", folder, "--model", "unused", "--output-dir",
                                    tmp_path / "o", "--plw", "0,1", "--role-weights", "markup=0",
                                    "--device", "cpu", "--dry-run"])
    assert code == 0, stderr
    assert "plw-0 " in stdout and "plw-1 " in stdout


def test_chat_dry_run_shows_the_prompt_share_of_the_derived_weights(run_cli, tmp_path):
    code, stdout, stderr = run_cli(["sweep", CHAT / "conversations.jsonl", "--model", "unused",
                                    "--output-dir", tmp_path / "o", "--plw", "0,0.1,1",
                                    "--max-length", 112, "--chat-template", CHAT / "chatml.jinja",
                                    "--device", "cpu", "--dry-run"])
    assert code == 0, stderr
    assert not (tmp_path / "o").exists()
    # README's worked example: `weights --plw 0.1` on this fixture gives 13.48% of all tokens;
    # the plan counts targets (every token but the first), and the first token is markup
    row = next(line for line in stdout.splitlines() if "plw-0.1 " in line)
    assert "13.24%" in row
    assert "0.00%" in next(line for line in stdout.splitlines() if "plw-0 " in line)


def test_a_sweep_without_a_chat_template_on_conversations_says_which_flag(run_cli, tmp_path):
    code, _, stderr = run_cli(["sweep", CHAT / "conversations.jsonl", "--model", "unused",
                               "--output-dir", tmp_path / "o", "--plw", "0,1", "--dry-run"])
    assert code == 2 and "--chat-template" in stderr and "Traceback" not in stderr
