"""Memory of a sweep's derivation: one PLW's weights folder derived from a weights folder (issue 19).

`sweep` tokenizes its dataset once and derives every other PLW's `loss_weight` column from it
(`study/grid.py`). This runs that derivation, `prepare_weights(WEIGHTS_DIR, [PLW], ...)`, in a
child process, as a sweep does, and reports its wall time and its memory, sampled every 0.1 s from
`/proc/PID/status`:

- private memory (`RssAnon`): what the derivation holds itself; the figure that must not grow with
  the data;
- file-backed pages (`RssFile`): pages of the memory-mapped input the kernel has mapped in as they
  were read; they belong to the page cache, are shared with every other reader of the file and are
  dropped under memory pressure, so they are reported apart.

Baseline, with `--baseline`, in the same run: `grid.reweight` on the same folder, which builds the
derived table whole in memory (what the derivation did before it was streamed; its private memory
grows with the data: run it only where that fits).

    python benchmarks/bench_sweep_derive.py WEIGHTS_DIR [--plw 0.25] [--baseline] [--work DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1 << 20

CHILD = {
    "streamed": "from alpaca_plw.study.grid import prepare_weights\n"
                "prepare_weights(sys.argv[1], [float(sys.argv[2])], Path(sys.argv[3]), None)\n",
    "whole": "from alpaca_plw.study.grid import read_source, reweight\n"
             "table = reweight(read_source(sys.argv[1]), float(sys.argv[2]))\n"
             "print(table.num_rows)\n",
}


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def measure(mode: str, folder: Path, plw: float, work: Path) -> dict[str, float]:
    """Run one derivation in a child process; wall seconds and peak memory (bytes)."""
    code = "import sys\nfrom pathlib import Path\n" + CHILD[mode]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(plw), str(work)])
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for key, value in _status(proc.pid).items():
                peak[key] = max(peak[key], value)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status = proc.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if status != 0:
        sys.exit(f"{mode} derivation failed (exit {status})")
    return {"wall_s": round(wall, 2), "peak_private_mib": round(peak["RssAnon"] / MIB, 1),
            "peak_file_backed_mib": round(peak["RssFile"] / MIB, 1),
            "peak_rss_mib": round(peak["VmRSS"] / MIB, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--plw", type=float, default=0.25)
    parser.add_argument("--baseline", action="store_true",
                        help="also run the whole-table derivation (memory grows with the data)")
    parser.add_argument("--work", type=Path, help="where the derived folder is written [a temporary folder]")
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args()
    from alpaca_plw.study.grid import read_source

    data = read_source(args.weights_dir)
    rows, size = data.table.num_rows, data.table.nbytes
    del data
    own = args.work is None
    work = Path(tempfile.mkdtemp(prefix="bench-derive-")) if own else args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = {"records": rows, "table_mib": round(size / MIB, 1), "plw": args.plw,
                   "load_before": os.getloadavg()}
        results["streamed"] = measure("streamed", args.weights_dir, args.plw, work / "weights")
        if args.baseline:
            results["whole"] = measure("whole", args.weights_dir, args.plw, work / "unused")
        results["load_after"] = os.getloadavg()
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{rows:,} records, table {size / MIB:,.0f} MiB, PLW {args.plw:g}")
    for mode in ("streamed", "whole"):
        if mode in results:
            r = results[mode]
            print(f"  {mode:9s} {r['wall_s']:8.1f} s  private peak {r['peak_private_mib']:8,.0f} MiB"
                  f"  file-backed peak {r['peak_file_backed_mib']:8,.0f} MiB")
    if "whole" in results:
        ratio = results["whole"]["peak_private_mib"] / max(results["streamed"]["peak_private_mib"], 1)
        results["private_ratio_whole_to_streamed"] = round(ratio, 2)
        print(f"  private memory, whole / streamed: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
