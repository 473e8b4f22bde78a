"""Wall time and peak memory of `alpaca-plw stats` and `alpaca-plw build-short` on real Alpaca data.

Both commands run as subprocesses, exactly as a user runs them, and are compared with two figures
measured in the same run:

- start-up: `alpaca-plw --help` (interpreter, Typer and the CLI module, no work);
- floor: one SentencePiece pass (`sp.encode(texts, num_threads=2)`) over every instruction, input
  and output string of the dataset, timed inside a worker process after it has loaded the model
  and the data (the worker keeps this process small; see `Floor`).
  No tool that counts tokens with SentencePiece can beat it by much.

Goals: stats <= start-up + 2 x floor; build-short <= start-up + 3 x floor; peak RSS < 2 GiB.
Each figure is the median of `--repeats` runs (default 3), taken round-robin so that a noisy moment
hits every measurement alike. Peak RSS is the child's own `ru_maxrss`, read with `os.wait4` (the
per-child form of `getrusage(RUSAGE_CHILDREN)`).

    python benchmarks/bench_data.py [--json results.json]

With `--synthetic 1M` (or 10M, or any count such as 2000) it runs the scale benchmark instead
(`scale.py`): a synthetic set of `--kind alpaca|chat`, the `--commands` at each `--num-proc`, with
records/s, the ratio to the floor, peak RSS and the speed-up (issue 19):

    python benchmarks/bench_data.py --synthetic 1M --kind alpaca --commands stats,build-short,weights --num-proc 1,2

Exit status: 0 when every goal passes, 1 when one fails, 2 when a command itself fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "alpaca_data.json"
TOKENIZER = SHARED / "tokenizers" / "llama"
GIB = 1 << 30
THREADS = 2


def cli_command() -> list[str]:
    """The `alpaca-plw` console script of this interpreter's environment (else `python -m`)."""
    beside = Path(sys.executable).with_name("alpaca-plw")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("alpaca-plw")
    return [found] if found else [sys.executable, "-m", "alpaca_plw"]


def run_child(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Run `argv`; return (wall seconds, peak RSS in bytes of that child). Output goes to `log`."""
    with log.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        print(f"command failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}", file=sys.stderr)
        sys.exit(2)
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return wall, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def floor_worker(data: Path, tokenizer: Path) -> int:
    """Child-process side of `Floor`: load once, then time one encode pass per line on stdin."""
    import sentencepiece

    rows = json.loads(data.read_text(encoding="utf-8"))
    texts = [row[field] for row in rows for field in ("instruction", "input", "output")]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    print(len(rows), len(texts), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        ids = sp.encode(texts, num_threads=THREADS)
        wall = time.perf_counter() - start
        print(wall, sum(map(len, ids)), flush=True)
        del ids
    return 0


class Floor:
    """One SentencePiece pass over every instruction, input and output string.

    It runs in a worker process that loads the data and the model once, so that this process stays
    small: a child's peak RSS starts at its parent's size when it is forked, and the figures for
    the CLI commands must not include the benchmark's own data.
    """

    def __init__(self, data: Path, tokenizer: Path):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--floor-worker", "--data", str(data), "--tokenizer",
             str(tokenizer)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.records, self.strings = map(int, self._line().split())
        self.tokens = 0

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            print("the SentencePiece floor worker failed", file=sys.stderr)
            sys.exit(2)
        return line

    def __call__(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        wall, tokens = self._line().split()
        self.tokens = int(tokens)
        return float(wall)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"Alpaca JSON file [{DATA}]")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER,
                        help=f"tokenizer folder with tokenizer.model [{TOKENIZER}]")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is kept")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--floor-worker", action="store_true", help=argparse.SUPPRESS)
    scale = parser.add_argument_group("scale benchmark (synthetic records; see scale.py)")
    scale.add_argument("--synthetic", metavar="COUNT",
                       help="run on COUNT synthetic records (1M, 10M, 2000, 50k) instead of --data")
    scale.add_argument("--kind", choices=("alpaca", "chat"), default="alpaca",
                       help="Alpaca records or conversations [alpaca]")
    scale.add_argument("--commands", default="stats,build-short,weights",
                       help="comma-separated commands [stats,build-short,weights]")
    scale.add_argument("--num-proc", default="1,2", help="comma-separated --num-proc values [1,2]")
    scale.add_argument("--work", type=Path, metavar="DIR",
                       help="folder for the set and the outputs [a temporary folder, removed]")
    scale.add_argument("--seed", type=int, default=19, help="the generator's seed [19]")
    scale.add_argument("--no-floor", action="store_true",
                       help="measure no floor (no ratio): for runs where memory is the point")
    args = parser.parse_args()
    if args.floor_worker:
        return floor_worker(args.data, args.tokenizer)
    if args.synthetic:
        import scale as scale_bench

        if not (args.tokenizer / "tokenizer.model").is_file():
            print(f"{args.tokenizer / 'tokenizer.model'}: not found", file=sys.stderr)
            return 2
        return scale_bench.main(args, cli_command())
    for path in (args.data, args.tokenizer / "tokenizer.model"):
        if not path.is_file():
            print(f"{path}: not found (the benchmark reads ../shared beside the checkout)",
                  file=sys.stderr)
            return 2

    cli = cli_command()
    load_before = os.getloadavg()
    data, tok = str(args.data.resolve()), str(args.tokenizer.resolve())
    env = {**os.environ, "ALPACA_PLW_TOKENIZER": tok}
    floor = Floor(args.data, args.tokenizer)
    runs: dict[str, list[float]] = {"startup": [], "floor": [], "stats": [], "build-short": []}
    rss: dict[str, list[int]] = {"startup": [], "stats": [], "build-short": []}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        commands = {
            "startup": [*cli, "--help"],
            "stats": [*cli, "stats", data, "--tokenizer", tok],
            "build-short": [*cli, "build-short", data, "-o", str(work / "alpaca-short.json"),
                            "--force", "--tokenizer", tok],
        }
        for _ in range(args.repeats):
            for name, argv in commands.items():
                wall, peak = run_child(argv, env, work / f"{name}.log")
                runs[name].append(wall)
                rss[name].append(peak)
            runs["floor"].append(floor())
    floor.close()

    load_after = os.getloadavg()
    t = {name: statistics.median(values) for name, values in runs.items()}
    peak = {name: max(values) for name, values in rss.items()}
    ratio_stats = (t["stats"] - t["startup"]) / t["floor"]
    ratio_build = (t["build-short"] - t["startup"]) / t["floor"]
    goals = [
        ("stats <= start-up + 2 x floor", ratio_stats <= 2.0, f"{ratio_stats:.2f} x floor"),
        ("build-short <= start-up + 3 x floor", ratio_build <= 3.0, f"{ratio_build:.2f} x floor"),
        ("stats peak RSS < 2 GiB", peak["stats"] < 2 * GIB, f"{peak['stats'] / GIB:.2f} GiB"),
        ("build-short peak RSS < 2 GiB", peak["build-short"] < 2 * GIB,
         f"{peak['build-short'] / GIB:.2f} GiB"),
    ]

    print(f"data: {args.data} ({floor.records:,} records, {floor.strings:,} strings, "
          f"{floor.tokens:,} tokens)")
    print(f"tokenizer: {args.tokenizer}; cpus: {os.cpu_count()}; python {platform.python_version()}; "
          f"median of {args.repeats}")
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}"
          .format(*load_before, *load_after))
    print()
    print(f"{'measurement':<14} {'median s':>9} {'runs s':<26} {'peak RSS MiB':>13}")
    for name, values in runs.items():
        shown = " ".join(f"{v:.2f}" for v in values)
        mem = f"{peak[name] / (1 << 20):,.0f}" if name in peak else "(worker)"
        print(f"{name:<14} {t[name]:>9.2f} {shown:<26} {mem:>13}")
    print()
    print(f"(stats - start-up) / floor       = {ratio_stats:.2f}  (goal <= 2)")
    print(f"(build-short - start-up) / floor = {ratio_build:.2f}  (goal <= 3)")
    print()
    for label, ok, value in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {value}")

    if args.json:
        result = {
            "data": str(args.data), "tokenizer": str(args.tokenizer), "records": floor.records,
            "strings": floor.strings, "tokens": floor.tokens, "threads": THREADS,
            "cpus": os.cpu_count(), "python": platform.python_version(), "repeats": args.repeats,
            "load_average": {"before": load_before, "after": load_after}, "command": cli, "seconds": runs, "median_seconds": t,
            "peak_rss_bytes": peak,
            "ratios": {"stats": ratio_stats, "build_short": ratio_build},
            "goals": {label: {"pass": ok, "value": value} for label, ok, value in goals},
        }
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if all(ok for _, ok, _ in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
