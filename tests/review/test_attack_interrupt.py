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

if __name__ == "__mp_main__" and sys.argv[2:] == ["slow-start"]:  # a worker starting up slowly,
    import os                                                     # as the CLI's imports are
    (Path(sys.argv[1]) / f"starting-{os.getpid()}").touch()
    time.sleep(1.0)
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


def _interrupt(tmp_path, ready, *extra) -> str:
    """Run MAIN in its own process group, wait until `ready()`, Ctrl-C the group; its stderr."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    (tmp_path / "main.py").write_text(textwrap.dedent(MAIN))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "main.py"), str(tmp_path), *extra],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["error: interrupted"], err
    return err


def test_ctrl_c_while_workers_start_prints_one_line(tmp_path):
    """A worker still importing (spawn runs the main module again first) got the KeyboardInterrupt
    before any initializer could ignore it."""
    _interrupt(tmp_path, lambda: any(tmp_path.glob("starting-*")), "slow-start")


def test_ctrl_c_with_idle_workers_prints_one_line_and_leaves_no_worker(tmp_path):
    _interrupt(tmp_path, lambda: all((tmp_path / f"done-{i}").exists() for i in (0, 1)))
    for i in (0, 1):
        pid = int((tmp_path / f"done-{i}").read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        status = open(f"/proc/{pid}/status").read()
        assert "zombie" in status, f"worker {pid} outlived the command"


SECOND = '''
import os
import signal
import sys
import time

import alpaca_plw.cli  # noqa: F401

cli = sys.modules["alpaca_plw.cli.app"]  # the package's `app` attribute is the Typer app


def command():
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
        time.sleep(5)
    finally:  # the command cleans up (temporary files, workers)...
        os.kill(os.getpid(), signal.SIGINT)  # ...and an impatient user presses Ctrl-C again
        time.sleep(0.5)
        print("cleaned up", file=sys.stderr, flush=True)


cli.app = command
cli.main()
'''


def test_a_second_ctrl_c_does_not_cut_the_cleanup_or_print_a_traceback(tmp_path):
    """After the first Ctrl-C the command cleans up and prints one line; a second one (a user
    pressing again, or `timeout -s INT`, which signals the process and its group) raised a
    KeyboardInterrupt in the middle of that cleanup or in the exit path (a traceback)."""
    script = tmp_path / "second.py"
    script.write_text(SECOND)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["cleaned up", "error: interrupted"], proc.stderr
