"""`bench_data.py --synthetic COUNT`: the data commands on 1M / 10M synthetic records (issue 19).

A synthetic set (`synthetic.py`: Alpaca records or conversations, every non-empty text unique) is
written as JSONL into `--work` (default: a temporary folder, deleted afterwards), then each command
in `--commands` runs once per value of `--num-proc` as a subprocess, exactly as a user runs it:

- stats: `alpaca-plw stats SET --num-proc N`
- build-short: `alpaca-plw build-short SET -o OUT.jsonl --num-proc N`
- weights: `alpaca-plw weights SET --plw 0.1 -o DIR --num-proc N` (chat: `--chat-template` ChatML;
  an explicit PLW, so no statistics pass runs first)

Each is compared with figures measured in the same run: start-up (`alpaca-plw --help`) and the
floor, timed in a worker process that reads the set in blocks and times only the work: for Alpaca
one SentencePiece pass over every instruction, input and output string (`sp.encode(texts,
num_threads=2)`); for conversations one jinja2 render of every conversation plus one encode of
each rendered text (the floor of `bench_chat_weights.py`).

Reported per command and N: wall seconds; records/s = records / (wall - start-up); ratio =
(wall - start-up) / floor; peak RSS as the largest single process (`ru_maxrss` from `os.wait4`,
which covers the command's reaped workers too) and as the whole process tree (the sum of VmRSS of
the command and its workers, sampled every 0.2 s); speed-up = (wall at N=1 - start-up) /
(wall at N - start-up); and whether the output (stdout for stats, the written files otherwise)
is byte-identical to the N=1 run's.

Goals: peak RSS of the process tree < 1.5 GiB; outputs identical for every N.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic import BLOCK, generate, parse_count  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
RSS_GOAL = 1.5 * GIB
THREADS = 2
CHAT_TEMPLATE = HERE.parent / "tests" / "fixtures" / "chat" / "chatml.jinja"
COMMANDS = ("stats", "build-short", "weights")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- process tree memory

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss(pid: int) -> int:
    """Sum of the resident memory of `pid` and all its descendants (bytes)."""
    tree, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except OSError:
            pass
    return total


class TreeSampler(threading.Thread):
    """Samples `tree_rss(pid)` every `every` seconds until `stop()`; keeps the peak, and every
    `trace_every` seconds logs the time, the current and the peak RSS (so that a run cut short
    still shows whether memory grew)."""

    def __init__(self, pid: int, every: float = 0.2, trace_every: float = 60.0, log=None):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self.trace_every, self.log, self.trace = trace_every, log, []
        self._done = threading.Event()

    def run(self) -> None:
        start = next_trace = time.perf_counter()
        while not self._done.is_set():
            now_rss = tree_rss(self.pid)
            self.peak = max(self.peak, now_rss)
            now = time.perf_counter()
            if now >= next_trace:
                self.trace.append((round(now - start, 1), now_rss, self.peak))
                if self.log:
                    self.log(f"  {now - start:7.0f} s: tree RSS {now_rss / MIB:,.0f} MiB "
                             f"(peak {self.peak / MIB:,.0f} MiB)")
                next_trace += self.trace_every
            self._done.wait(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def run_measured(argv: list[str], env: dict[str, str], stdout: Path, stderr: Path, log=None
                 ) -> tuple[float, int, int]:
    """Run `argv`; (wall s, largest process's peak RSS, sampled peak RSS of the process tree).
    With `log`, the tree's RSS is logged once a minute while it runs."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=stdout.parent)
        sampler = TreeSampler(proc.pid, log=log)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        tree = sampler.stop()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = stderr.read_text(errors="replace")[-2000:]
        print(f"command failed (exit {code}): {' '.join(argv)}\n{tail}", file=sys.stderr)
        sys.exit(2)
    return wall, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024), tree


def digest(path: Path) -> str:
    """sha256 over a file, or over a folder's files (names and bytes, sorted by name)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- the floor

def _blocks(path: Path, size: int):
    with path.open(encoding="utf-8") as f:
        block = []
        for line in f:
            block.append(json.loads(line))
            if len(block) == size:
                yield block
                block = []
        if block:
            yield block


def floor(path: Path, kind: str, tokenizer: Path, threads: int = THREADS) -> dict[str, float]:
    """The floor over the set at `path`, timed block by block (reading JSON not counted):
    {"seconds", "records", "strings", "tokens"}."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    render = None
    if kind == "chat":
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols])
        env.globals["raise_exception"] = lambda message: None
        compiled = env.from_string(CHAT_TEMPLATE.read_text(encoding="utf-8"))
        bos, eos = sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())

        def render(m):
            return compiled.render(messages=m, bos_token=bos, eos_token=eos,
                                   add_generation_prompt=False, tools=None)
    seconds, records, strings, tokens = 0.0, 0, 0, 0
    for block in _blocks(path, 5 * BLOCK):
        start = time.perf_counter()
        if render is None:
            texts = [row[f] for row in block for f in ("instruction", "input", "output")]
        else:
            texts = [render(row["messages"]) for row in block]
        ids = sp.encode(texts, num_threads=threads)
        seconds += time.perf_counter() - start
        records, strings, tokens = records + len(block), strings + len(texts), tokens + sum(map(len, ids))
    return {"seconds": seconds, "records": records, "strings": strings, "tokens": tokens}


def floor_in_worker(path: Path, kind: str, tokenizer: Path) -> dict[str, float]:
    """`floor` in a child process (this process stays small; see bench_data.Floor)."""
    out = subprocess.run([sys.executable, __file__, "--floor", str(path), kind, str(tokenizer)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- the benchmark

def command_argv(cli: list[str], name: str, data: Path, kind: str, tok: str, n: int,
                 work: Path) -> tuple[list[str], Path | None]:
    """(argv, the output path it writes or None for stdout)."""
    common = ["--tokenizer", tok, "--num-proc", str(n)]
    if name == "stats":
        return [*cli, "stats", str(data), "--json", *common], None
    if name == "build-short":
        out = work / "short.jsonl"  # one name for every N: the manifest names it
        return [*cli, "build-short", str(data), "-o", str(out), *common], out
    if name == "weights":
        out = work / "weights"
        chat = ["--chat-template", str(CHAT_TEMPLATE)] if kind == "chat" else []
        return [*cli, "weights", str(data), "--plw", "0.1", "-o", str(out), *chat, *common], out
    raise ValueError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")


def _remove(path: Path | None) -> None:
    if path is None:
        return
    for p in (path, path.with_suffix(".manifest.json")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_scale(count: int, kind: str, commands: list[str], procs: list[int], tokenizer: Path,
              cli: list[str], work: Path | None = None, seed: int = 19, log=print,
              with_floor: bool = True) -> dict[str, object]:
    """Generate the set, run the floor and every command; return the figures (see module doc).
    Without `with_floor` no floor is measured and no ratio reported (for runs where only memory
    and records/s matter)."""
    for name in commands:
        if name not in COMMANDS:
            raise ValueError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    tok = str(tokenizer.resolve())
    env = {**os.environ, "ALPACA_PLW_TOKENIZER": tok}
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="bench-scale-")) if own else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        data = work / f"synthetic-{kind}-{count}.jsonl"
        start = time.perf_counter()
        generate(data, count, kind, seed)
        made = time.perf_counter() - start
        log(f"generated {data} ({data.stat().st_size / GIB:.2f} GiB) in {made:.0f} s")
        startup, _, _ = run_measured([*cli, "--help"], env, work / "help.out", work / "help.err")
        if with_floor:
            fl = floor_in_worker(data, kind, tokenizer)
            log(f"floor: {fl['seconds']:.1f} s ({fl['tokens']:,} tokens)")
        else:
            fl = {"seconds": None, "records": count, "strings": None, "tokens": None}
        rows = []
        for name in commands:
            first_digest, first_time = None, None
            for n in procs:
                argv, out = command_argv(cli, name, data, kind, tok, n, work)
                _remove(out)
                log(f"{name} --num-proc {n}: started")
                wall, maxrss, tree = run_measured(argv, env, work / f"{name}-{n}.out",
                                                  work / f"{name}-{n}.err", log)
                same = digest(out if out is not None else work / f"{name}-{n}.out")
                if out is not None and out.with_suffix(".manifest.json").exists():
                    same += digest(out.with_suffix(".manifest.json"))
                _remove(out)
                busy = max(wall - startup, 1e-9)
                first_digest = first_digest or same
                first_time = first_time or busy
                row = {"command": name, "num_proc": n, "seconds": wall,
                       "records_per_s": count / busy,
                       "ratio_to_floor": busy / fl["seconds"] if with_floor else None,
                       "peak_rss_max_process": maxrss, "peak_rss_tree": tree,
                       "speedup_vs_1": first_time / busy if procs[0] == 1 else None,
                       "identical_to_first": same == first_digest, "output_sha256": same,
                       "argv": argv}
                rows.append(row)
                ratio = row["ratio_to_floor"]
                log(f"{name} --num-proc {n}: {wall:.1f} s, {row['records_per_s']:,.0f} rec/s, "
                    f"{'-' if ratio is None else f'{ratio:.2f}'} x floor, RSS {maxrss / MIB:,.0f} MiB "
                    f"(tree {tree / MIB:,.0f} MiB), identical {row['identical_to_first']}")
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
        else:
            (work / f"synthetic-{kind}-{count}.jsonl").unlink(missing_ok=True)
    return {"kind": kind, "records": count, "seed": seed, "generate_seconds": made,
            "startup_seconds": startup, "floor": fl, "rows": rows, "threads": THREADS,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": {"before": load_before, "after": os.getloadavg()}, "command": cli}


def report(result: dict[str, object]) -> list[tuple[str, bool, str]]:
    """Print the table; return the goals as (label, passed, value)."""
    fl = result["floor"]
    measured = fl["seconds"] is not None
    print(f"synthetic {result['kind']}: {result['records']:,} records, seed {result['seed']}"
          + (f", {fl['strings']:,} strings, {fl['tokens']:,} tokens" if measured else ""))
    print(f"cpus: {result['cpus']}; python {result['python']}; start-up {result['startup_seconds']:.2f} s; "
          + (f"floor {fl['seconds']:.1f} s" if measured else "floor not measured (--no-floor)"))
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}"
          .format(*result["load_average"]["before"], *result["load_average"]["after"]))
    print()
    print(f"{'command':<12} {'N':>2} {'wall s':>8} {'records/s':>10} {'x floor':>8} "
          f"{'RSS MiB':>8} {'tree MiB':>9} {'speed-up':>8} {'same':>5}")
    goals = []
    for r in result["rows"]:
        speed = f"{r['speedup_vs_1']:.2f}" if r["speedup_vs_1"] is not None else "-"
        ratio = "-" if r["ratio_to_floor"] is None else f"{r['ratio_to_floor']:.2f}"
        print(f"{r['command']:<12} {r['num_proc']:>2} {r['seconds']:>8.1f} {r['records_per_s']:>10,.0f} "
              f"{ratio:>8} {r['peak_rss_max_process'] / MIB:>8,.0f} "
              f"{r['peak_rss_tree'] / MIB:>9,.0f} {speed:>8} {'yes' if r['identical_to_first'] else 'NO':>5}")
        label = f"{r['command']} --num-proc {r['num_proc']}"
        goals.append((f"{label}: peak RSS (tree) < 1.5 GiB", r["peak_rss_tree"] < RSS_GOAL,
                      f"{r['peak_rss_tree'] / GIB:.2f} GiB"))
        goals.append((f"{label}: output identical to the first N", r["identical_to_first"],
                      r["output_sha256"][:12]))
    print()
    for label, ok, value in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {value}")
    return goals


def main(args, cli: list[str]) -> int:
    """The `--synthetic` mode of bench_data.py."""
    try:
        count = parse_count(args.synthetic)
    except ValueError as e:
        print(f"--synthetic: {e}", file=sys.stderr)
        return 2
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    procs = [int(n) for n in args.num_proc.split(",")]
    try:
        result = run_scale(count, args.kind, commands, procs, args.tokenizer, cli, args.work,
                           args.seed, log=lambda line: print(line, file=sys.stderr, flush=True),
                           with_floor=not args.no_floor)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    goals = report(result)
    if args.json:
        result["goals"] = {label: {"pass": ok, "value": value} for label, ok, value in goals}
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if all(ok for _, ok, _ in goals) else 1


if __name__ == "__main__" and sys.argv[1:2] == ["--floor"]:
    print(json.dumps(floor(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))))
