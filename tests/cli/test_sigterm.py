"""SIGTERM (`kill PID`, `timeout`, a job scheduler) stops a command as Ctrl-C does: one error line,
exit 130, and nothing left behind: a `weights` run killed this way left its temporary Arrow file
and its lock beside the output (issue 19's hostile review)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "alpaca_data.json"


@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_sigterm_during_weights_leaves_nothing_and_prints_one_line(tmp_path, group):
    if not DATA.exists():
        pytest.skip(f"{DATA} is not here")
    out = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "alpaca_plw", "weights", str(DATA), "--plw",
                             "0.1", "-o", str(out), "--num-proc", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".w.plw-tmp") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # weighing, workers busy
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: interrupted; every output is as it was before this run (its temporary files were "
        "removed)"], err
    assert list(tmp_path.iterdir()) == []


def test_under_torchrun_sigterm_ends_a_rank_without_a_line_of_its_own(tmp_path):
    """torchrun stops the ranks that did not fail with SIGTERM once one rank failed: that rank's
    error line is the one to read, so the others print none (two `error:` lines under one failure
    read as two failures)."""
    if not DATA.exists():
        pytest.skip(f"{DATA} is not here")
    out = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "alpaca_plw", "weights", str(DATA), "--plw",
                             "0.1", "-o", str(out), "--num-proc", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TORCHELASTIC_RUN_ID": "test"})
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".w.plw-tmp") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, err
    assert "error:" not in err, err
