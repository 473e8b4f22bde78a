"""Review of --resume against a checkpoint whose trainer state disagrees with its folder."""

from __future__ import annotations

import json

import pytest

from alpaca_plw.errors import InputError
from alpaca_plw.train.trainer import train


class _Stop(Exception):
    pass


def _stop_at_three(record):  # checkpoint-2 is written after step 2's record
    if record["step"] == 3:
        raise _Stop


def test_a_checkpoint_whose_step_is_not_its_name_is_refused(
        train_weights, tiny_llama, tiny_config, tmp_path):
    run = tmp_path / "run"
    options = dict(max_steps=4, save_steps=2)
    with pytest.raises(_Stop):
        train(tiny_config(train_weights, tiny_llama, run, **options), on_step=_stop_at_three)
    state_file = run / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["step"] = 10**9
    state_file.write_text(json.dumps(state))
    with pytest.raises(InputError, match="checkpoint-2"):
        train(tiny_config(train_weights, tiny_llama, run, resume=True, **options))
    assert not json.loads((run / "run.json").read_text()).get("finished")
