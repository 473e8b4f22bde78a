"""Wall time of `alpaca-plw weights` on conversations against its floor, measured in the same run.

The chat set is built deterministically from the Alpaca data (`build_conversations`): records taken
in order, grouped into conversations of 1 to 3 user/assistant turns (the user message is the
instruction, then the input after a blank line when there is one), about half of them opened by a
system message; ~30k conversations, ~6M LLaMA tokens under ChatML. It is written as JSONL to a
temporary folder.

Figures, each the median of `--repeats` runs taken round-robin (a noisy moment hits all alike):

- start-up: `alpaca-plw --help` (interpreter, Typer, the CLI module; no work);
- weights: `alpaca-plw weights SET --chat-template T --plw 0.1 -o OUT` as a subprocess;
- floor: rendering every conversation once with jinja2 (the same template, compiled as Hugging
  Face compiles chat templates) plus one SentencePiece encode of every rendered text
  (`sp.encode(texts, num_threads=N)`, N the thread count `weights` uses), timed inside a worker
  process that has loaded the data, the template and the model (so the work it times is only the
  floor's). No tool that renders and tokenizes every conversation can beat it by much.

Goal: (weights - start-up) / floor <= 1.5 (issue 19, item 3).

    python benchmarks/bench_chat_weights.py [--repeats 3] [--template chatml] [--json PATH]

Exit status: 0 when the goal passes, 1 when it fails, 2 when a command itself fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import cli_command  # noqa: E402 - the sibling benchmark's helpers

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "alpaca_data.json"
TOKENIZER = SHARED / "tokenizers" / "llama"
TEMPLATES = ROOT / "tests" / "fixtures" / "chat"
THREADS = min(os.cpu_count() or 1, 16)  # what `load_tokenizer` gives `weights` by default
GOAL = 1.5
SYSTEMS = ("You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
           "Below is an instruction that describes a task. Write a response that appropriately "
           "completes the request.", "You are a careful tutor: explain each step.")


def build_conversations(data: Path, seed: int = 19) -> list[list[dict[str, str]]]:
    """Alpaca records in order, grouped into 1-3 turn conversations; half open with a system
    message. Deterministic for a given data file and seed."""
    rows = json.loads(data.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(rows):
        turns = rng.choice((1, 1, 2, 2, 3))
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.5 else []
        for row in rows[i:i + turns]:
            user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        out.append(messages)
        i += turns
    return out


def write_jsonl(conversations: list, path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def floor_worker(chat: Path, template: Path, tokenizer: Path, threads: int) -> int:
    """Child-process side of `Floor`: load once, then time render + encode once per stdin line."""
    import sentencepiece
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    convs = [json.loads(line)["messages"] for line in chat.read_text(encoding="utf-8").splitlines()]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = lambda message: None
    compiled = env.from_string(template.read_text(encoding="utf-8"))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    bos, eos = sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())
    print(len(convs), flush=True)
    for _ in sys.stdin:
        start, cpu = time.perf_counter(), time.process_time()
        texts = [compiled.render(messages=m, bos_token=bos, eos_token=eos,
                                 add_generation_prompt=False, tools=None) for m in convs]
        ids = sp.encode(texts, num_threads=threads)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(wall, sum(map(len, ids)), cpu, flush=True)
        del ids, texts
    return 0


def _run(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """`run_child`'s wall seconds, and the CPU seconds (user + system) of the command and of the
    workers it waited for."""
    with log.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"command failed: {' '.join(argv)}\n{log.read_text(errors='replace')[-2000:]}",
              file=sys.stderr)
        sys.exit(2)
    return wall, usage.ru_utime + usage.ru_stime


class Floor:
    """Render + encode in a worker process (see `floor_worker`), so this process stays small."""

    def __init__(self, chat: Path, template: Path, tokenizer: Path, threads: int):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--floor-worker", "--chat", str(chat), "--template-file",
             str(template), "--tokenizer", str(tokenizer), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.conversations = int(self._line())
        self.tokens = 0

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            print("the floor worker failed", file=sys.stderr)
            sys.exit(2)
        return line

    def __call__(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the worker's threads)."""
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        wall, tokens, cpu = self._line().split()
        self.tokens = int(tokens)
        return float(wall), float(cpu)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"Alpaca JSON file [{DATA}]")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER,
                        help=f"tokenizer folder with tokenizer.model [{TOKENIZER}]")
    parser.add_argument("--template", choices=("chatml", "llama2-chat"), default="chatml",
                        help="chat template from tests/fixtures/chat [chatml]")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is kept")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument("--floor-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chat", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--template-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=THREADS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_worker:
        return floor_worker(args.chat, args.template_file, args.tokenizer, args.threads)
    for path in (args.data, args.tokenizer / "tokenizer.model"):
        if not path.is_file():
            print(f"{path}: not found (the benchmark reads ../shared beside the checkout)",
                  file=sys.stderr)
            return 2

    cli = cli_command()
    template = TEMPLATES / f"{args.template}.jinja"
    tok = str(args.tokenizer.resolve())
    env = {**os.environ, "ALPACA_PLW_TOKENIZER": tok}
    runs: dict[str, list[float]] = {"startup": [], "floor": [], "weights": []}
    cpu: dict[str, list[float]] = {"startup": [], "floor": [], "weights": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        work = Path(tmp)
        chat = work / "chat.jsonl"
        write_jsonl(build_conversations(args.data), chat)
        floor = Floor(chat, template, args.tokenizer, THREADS)
        commands = {
            "startup": [*cli, "--help"],
            "weights": [*cli, "weights", str(chat), "--chat-template", str(template), "--plw", "0.1",
                        "--tokenizer", tok, "-o", str(work / "out")],
        }
        for _ in range(args.repeats):
            for name, argv in commands.items():
                if name == "weights":
                    subprocess.run(["rm", "-rf", str(work / "out")], check=True)
                wall, used = _run(argv, env, work / f"{name}.log")
                runs[name].append(wall)
                cpu[name].append(used)
            wall, used = floor()
            runs["floor"].append(wall)
            cpu["floor"].append(used)
        floor.close()
    load_after = os.getloadavg()

    t = {name: statistics.median(values) for name, values in runs.items()}
    c = {name: statistics.median(values) for name, values in cpu.items()}
    ratio = (t["weights"] - t["startup"]) / t["floor"]
    # each round's own ratio (its three figures share that moment's load), and CPU time, which the
    # load does not stretch: both tell a noisy machine's figure from a real change
    paired = statistics.median((w - s) / f for w, s, f in zip(runs["weights"], runs["startup"],
                                                              runs["floor"]))
    cpu_ratio = (c["weights"] - c["startup"]) / c["floor"]
    ok = ratio <= GOAL
    print(f"data: {floor.conversations:,} conversations from {args.data}, template {template.name}, "
          f"{floor.tokens:,} tokens")
    print(f"tokenizer: {args.tokenizer}; threads: {THREADS}; cpus: {os.cpu_count()}; "
          f"python {platform.python_version()}; median of {args.repeats}")
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}"
          .format(*load_before, *load_after))
    print()
    print(f"{'measurement':<12} {'median s':>9}  {'CPU s':>6}  runs s")
    for name, values in runs.items():
        print(f"{name:<12} {t[name]:>9.2f}  {c[name]:>6.2f}  {' '.join(f'{v:.2f}' for v in values)}")
    print()
    print(f"per round, median: {paired:.2f}; CPU time (workers included): {cpu_ratio:.2f}")
    print(f"(weights - start-up) / floor = {ratio:.2f}  (goal <= {GOAL})")
    print(f"{'PASS' if ok else 'FAIL'}  chat weights <= start-up + {GOAL} x floor: {ratio:.2f} x floor")
    if args.json:
        args.json.write_text(json.dumps({
            "conversations": floor.conversations, "tokens": floor.tokens, "template": template.name,
            "threads": THREADS, "cpus": os.cpu_count(), "python": platform.python_version(),
            "repeats": args.repeats, "load_average": {"before": load_before, "after": load_after},
            "command": cli, "seconds": runs, "median_seconds": t, "ratio": ratio, "goal": GOAL,
            "cpu_seconds": cpu, "paired_ratio": paired, "cpu_ratio": cpu_ratio,
            "pass": ok}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
