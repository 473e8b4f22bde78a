"""Ctrl-C while `--num-proc` workers are alive (data/parallel.py). A terminal's Ctrl-C reaches
every process of the foreground group: the workers waiting for their next batch each printed a
traceback ("Process SpawnProcess-1: ... KeyboardInterrupt") under the command's one error line.
The parent alone handles it: the workers end when it shuts the pool down, silently."""

import os
import signal
import subprocess
import sys
import textwrap
import time

JOB = '''
from pathlib import Path


def setup(folder):
    return Path(folder)


def work(folder, item):
    (folder / f"done-{item}").write_text(str(__import__("os").getpid()))
    return item
'''

MAIN = '''
import sys
import time
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import job
from alpaca_plw.data.parallel import ordered_map


def items():
    yield 0
    yield 1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the parent reads on; the workers wait for a batch
        time.sleep(0.05)


if __name__ == "__main__":
    try:
        for _ in ordered_map(job.work, items(), 2, job.setup, (sys.argv[1],)):
            pass
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
'''


def test_ctrl_c_with_idle_workers_prints_one_line_and_leaves_no_worker(tmp_path):
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    (tmp_path / "main.py").write_text(textwrap.dedent(MAIN))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "main.py"), str(tmp_path)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"done-{i}").exists() for i in (0, 1)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # let both workers go back to waiting for their next batch
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["error: interrupted"], err
    for i in (0, 1):
        pid = int((tmp_path / f"done-{i}").read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        status = open(f"/proc/{pid}/status").read()
        assert "zombie" in status, f"worker {pid} outlived the command"
