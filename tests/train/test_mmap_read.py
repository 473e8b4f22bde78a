"""`train` reads a weights folder in place (issue 19, item 2): the token columns stay views over the
memory-mapped Arrow file, so a process's private memory does not grow with the file, and the ranks
of one host share one copy of it in the page cache. Measured from /proc/self/smaps_rollup by
tests/train/mmap_worker.py, with a positive control: the copies the trainer used to make
(int64 ids, float32 weights) do show up as private memory under the same measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("mmap_worker.py")
TOKENS = 12_000_000  # a ~94 MiB Arrow file: far above what the reader's own buffers take

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(),
                                reason="needs Linux's /proc/self/smaps_rollup")


def _run(*args: str, env: dict | None = None) -> None:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mmap") / "weights"
    _run(str(WORKER), "build", str(path), str(TOKENS))
    return path


def test_one_process_reads_the_file_without_copying_it(folder, tmp_path):
    out = tmp_path / "one.json"
    _run(str(WORKER), "read", str(folder), str(out))
    report = json.loads(out.read_text())
    assert report["tokens"] >= TOKENS * 0.99
    # the positive control: copying the columns costs about their size in private memory
    assert report["copy_anonymous"] >= 0.9 * report["copy_bytes_kb"], report
    # reading in place: private growth well under the file's size (the bound is the reader's
    # own small buffers and the allocator's high-water mark, not the data)
    assert report["anonymous"] < 0.4 * report["file_kb"], report


def test_two_ranks_share_one_copy_of_the_file(folder, tmp_path):
    out = tmp_path / "two.json"
    _run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
         "read", str(folder), str(out))
    reports = [json.loads((tmp_path / f"two-rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["check"] == reports[1]["check"]
    for report in reports:
        assert report["shared_clean"] >= 0.9 * report["file_kb"], report
        assert report["anonymous"] < 0.4 * report["file_kb"], report
