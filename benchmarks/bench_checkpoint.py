"""Host memory and time of saving a checkpoint and the final model (issue 24, item 4): the
project's path (every rank writes its own safetensors shards of model and optimizer state; the
final model gathered and written one tensor at a time) against the path it replaced, measured in
the same run: everything gathered on rank 0 (`get_model_state_dict` / `get_optimizer_state_dict`
with full_state_dict=True, cpu_offload=True), then `save_file` for the weights and `torch.save`
for the optimizer state (the old `trainer_state.pt`).

    python benchmarks/bench_checkpoint.py --json out.json   # a 168M-parameter Llama, 1 and 2 ranks
    python benchmarks/bench_checkpoint.py --quick --keep /tmp/ck   # tiny, for CI; keeps the files

Each (ranks, path) pair runs in a fresh process group (`torchrun --nproc_per_node N`, gloo, CPU):
one process with the trainer's default model (not sharded), two with FSDP2 as `--fsdp` shards it.
The model is a seeded random Llama with one AdamW step taken, so both paths save the same values.
Both paths write through the same atomic folder writer (temporary folder, fsync, rename) and save
config and tokenizer too. Per save and rank: wall time (the slowest rank, after a barrier) and
the peak resident set size during the save above the RSS just before it (the kernel's high-water
mark, reset through /proc/self/clear_refs; a 2 ms sampler where that is not allowed), with glibc
told to return freed blocks of 64 KiB or more at once (`MALLOC`), so memory a save freed is not
reused unseen by the next. The ratios
are gather-all over sharded: above 1, the project's path uses less. Page cache is not RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "tokenizers" / "llama"
SHAPES = {  # Llama shapes: the default ~170M parameters (0.63 GiB fp32, AdamW state twice that)
    "default": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                    num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16,
                    max_position_embeddings=256),
    "quick": dict(vocab_size=32003, hidden_size=35, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=5, head_dim=8, num_key_value_heads=1,
                  max_position_embeddings=64),  # odd row counts: uneven FSDP shards
}
PATHS = ("sharded", "gather-all")
# glibc returns a freed block of 64 KiB or more to the system at once (a fixed threshold also stops
# it from raising the threshold after a free), so RSS follows what is alive, not what was once
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


# --- memory ------------------------------------------------------------------------------------

def _status(field: str) -> int:
    """A `/proc/self/status` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakRSS:
    """The peak resident set size between `start()` and `stop()`: the kernel's VmHWM, reset by
    writing 5 to /proc/self/clear_refs, or a 2 ms sampler of VmRSS where that is refused."""

    def start(self) -> None:
        self.before = _status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.sampler = None
        except OSError:
            self.peak, self.done = self.before, threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, _status("VmRSS"))

    def stop(self) -> dict:
        if self.sampler is None:
            peak, how = _status("VmHWM"), "VmHWM"
        else:
            self.done.set()
            self.sampler.join()
            peak, how = max(self.peak, _status("VmRSS")), "sampled"
        return {"rss_before_mib": _mib(self.before), "peak_rss_mib": _mib(peak),
                "extra_mib": _mib(peak - self.before), "measured": how}


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


# --- one process of one (ranks, path) pair -------------------------------------------------------

def _build(shape: dict, d):
    """The seeded random Llama (identical on every rank) with one AdamW step taken, wrapped as
    the trainer wraps it: FSDP2 over several ranks, plain in one process."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alpaca_plw.train.modeling.model import WeightedCausalLM
    from alpaca_plw.train.optim import make_optimizer
    from alpaca_plw.train.schedule import make_scheduler
    from alpaca_plw.train.modeling.wrap import shard

    torch.manual_seed(0)
    model = WeightedCausalLM(LlamaForCausalLM(LlamaConfig(**shape)))
    if d.world > 1:
        model = shard(model, d, cpu_offload=False)
    optimizer = make_optimizer(model.parameters(), "adamw_torch", 1e-3, 0.0, d.device)
    scheduler = make_scheduler(optimizer, 0, 10, "cosine")
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 1e-3
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, scheduler


def _gather_all_checkpoint(target: Path, model, optimizer, scheduler, tokenizer, d) -> None:
    """What checkpoints did before issue 24: the full states gathered on rank 0, which writes
    them."""
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    from alpaca_plw.data.outputs.atomic import atomic_write_dir
    from alpaca_plw.train.checkpoints.checkpoint import _save_config, unwrap

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if d.is_main:
        weights = {k.removeprefix("model."): v.contiguous() for k, v in weights.items()}
        atomic_write_dir(target, lambda tmp: (
            save_file(weights, str(tmp / "model.safetensors"), {"format": "pt"}),
            torch.save({"step": 1, "optimizer": optim, "scheduler": scheduler.state_dict()},
                       tmp / "trainer_state.pt"),
            _save_config(unwrap(model), tmp), tokenizer.save_pretrained(tmp)))
    del weights, optim
    d.barrier()


def _gather_all_final(target: Path, model, tokenizer, d) -> None:
    """What the final save did before issue 24: the full weights gathered on rank 0, one file."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from alpaca_plw.data.outputs.atomic import atomic_write_dir
    from alpaca_plw.train.checkpoints.checkpoint import _save_config, unwrap

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                   cpu_offload=True))
    if d.is_main:
        weights = {k.removeprefix("model."): v.contiguous() for k, v in weights.items()}
        atomic_write_dir(target, lambda tmp: (
            save_file(weights, str(tmp / "model.safetensors"), {"format": "pt"}),
            _save_config(unwrap(model), tmp), tokenizer.save_pretrained(tmp)))
    del weights
    d.barrier()


def worker(spec: dict) -> None:
    """One rank of one (ranks, path) pair: build, then time and measure the checkpoint save and
    the final save; writes `spec["result"]`.rank<r>.json."""
    from transformers import AutoTokenizer

    from alpaca_plw.train.checkpoints.checkpoint import save_checkpoint, save_final
    from alpaca_plw.train.distributed import setup, teardown

    d = setup("cpu")
    out = Path(spec["out"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    model, optimizer, scheduler = _build(spec["shape"], d)
    sharded = spec["path"] == "sharded"
    saves = {
        "checkpoint": (lambda: save_checkpoint(out / "checkpoint-1", model, optimizer, scheduler,
                                               tokenizer, 1, d)) if sharded else
        (lambda: _gather_all_checkpoint(out / "checkpoint-1", model, optimizer, scheduler,
                                        tokenizer, d)),
        "final": (lambda: save_final(out, model, tokenizer, d)) if sharded else
        (lambda: _gather_all_final(out / "final", model, tokenizer, d)),
    }
    result = {"rank": d.rank, "world": d.world, "path": spec["path"],
              "params": sum(p.numel() for p in model.parameters())}  # a DTensor's: global
    for name, save in saves.items():
        d.barrier()
        peak = PeakRSS()
        peak.start()
        began = time.perf_counter()
        save()
        d.barrier()
        result[name] = {"seconds": round(time.perf_counter() - began, 3), **peak.stop()}
    Path(f"{spec['result']}.rank{d.rank}.json").write_text(json.dumps(result))
    teardown()


# --- the driver ----------------------------------------------------------------------------------

def run_pair(world: int, path: str, shape: dict, tokenizer: Path, out: Path, timeout: int) -> dict:
    """Run one (ranks, path) pair in fresh processes; its numbers over the ranks."""
    out.mkdir(parents=True)
    spec = {"shape": shape, "path": path, "tokenizer": str(tokenizer), "out": str(out / "saved"),
            "result": str(out / "result")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(world), __file__, "--worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **MALLOC, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{world} rank(s), {path}: exit {done.returncode}\n"
                           f"{done.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{spec['result']}.rank{r}.json").read_text()) for r in range(world)]
    row = {"world": world, "path": path, "params": ranks[0]["params"]}
    for save in ("checkpoint", "final"):
        row[save] = {"seconds": max(r[save]["seconds"] for r in ranks),
                     "rank0_extra_mib": ranks[0][save]["extra_mib"],
                     "max_extra_mib": max(r[save]["extra_mib"] for r in ranks),
                     "rank0_peak_rss_mib": ranks[0][save]["peak_rss_mib"],
                     "measured": ranks[0][save]["measured"]}
    row["bytes_written"] = sum(p.stat().st_size for p in (out / "saved").rglob("*") if p.is_file())
    return row


def _ratio(a: float, b: float, floor: float) -> float | None:
    """a / b; None when b is below `floor`, what the measurement resolves."""
    return round(a / b, 2) if b >= floor else None


def summarise(rows: list[dict]) -> list[dict]:
    """Per ranks: gather-all over sharded, for time and for extra RSS of each save."""
    ratios = []
    for world in sorted({r["world"] for r in rows}):
        by = {r["path"]: r for r in rows if r["world"] == world}
        if set(by) != set(PATHS):
            continue
        g, s = by["gather-all"], by["sharded"]
        ratios.append({"world": world, **{
            f"{save}_{what}": _ratio(g[save][key], s[save][key], floor)
            for save in ("checkpoint", "final")
            for what, key, floor in (("seconds", "seconds", 0.01),
                                     ("rank0_extra_rss", "rank0_extra_mib", 1.0))}})
    return ratios


def table(rows: list[dict], ratios: list[dict]) -> str:
    lines = [f"{'ranks':>5} {'path':<10} | {'checkpoint s':>12} {'extra MiB r0':>12} "
             f"{'max rank':>9} | {'final s':>8} {'extra MiB r0':>12} {'max rank':>9} | "
             f"{'written MiB':>11}"]
    for r in rows:
        c, f = r["checkpoint"], r["final"]
        lines.append(f"{r['world']:>5} {r['path']:<10} | {c['seconds']:>12.2f} "
                     f"{c['rank0_extra_mib']:>12.1f} {c['max_extra_mib']:>9.1f} | "
                     f"{f['seconds']:>8.2f} {f['rank0_extra_mib']:>12.1f} "
                     f"{f['max_extra_mib']:>9.1f} | {r['bytes_written'] / 2**20:>11.1f}")
    lines.append("gather-all / sharded (above 1: the sharded path uses less):")
    shown = lambda x: "n/a" if x is None else f"{x}x"  # noqa: E731
    for q in ratios:
        lines.append(f"  {q['world']} rank(s): checkpoint time {shown(q['checkpoint_seconds'])}, "
                     f"rank 0 extra RSS {shown(q['checkpoint_rank0_extra_rss'])}; final time "
                     f"{shown(q['final_seconds'])}, rank 0 extra RSS "
                     f"{shown(q['final_rank0_extra_rss'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (CI smoke test)")
    parser.add_argument("--worlds", default="1,2", help="numbers of ranks, comma-separated")
    parser.add_argument("--tokenizer", type=Path, default=Path(
        os.environ.get("ALPACA_PLW_TOKENIZER", TOKENIZER)))
    parser.add_argument("--json", type=Path, help="write the rows and ratios here")
    parser.add_argument("--keep", type=Path, help="keep what each pair saved under this new folder")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per pair")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep}: already exists; name a new folder")
    shape = SHAPES["quick" if args.quick else "default"]
    worlds = [int(w) for w in args.worlds.split(",")]
    rows, load = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as scratch:
        root = args.keep or Path(scratch)
        for world in worlds:  # the order alternates, so neither path always runs first
            order = PATHS if world % 2 else PATHS[::-1]
            for path in order:
                rows.append(run_pair(world, path, shape, args.tokenizer,
                                     root / f"{world}-{path}", args.timeout))
                if args.keep is None:
                    import shutil

                    shutil.rmtree(root / f"{world}-{path}")
    load.append(os.getloadavg()[0])
    ratios = summarise(rows)
    report = {"shape": "quick" if args.quick else "default", "config": shape,
              "params": rows[0]["params"], "rows": rows, "ratios": ratios,
              "load_average_before_after": load}
    print(f"model: Llama {json.dumps(shape)}; {rows[0]['params'] / 1e6:.1f}M parameters")
    print(table(rows, ratios))
    print(f"load average (1 min) before {load[0]:.2f}, after {load[1]:.2f}: a busy machine makes "
          "the times noisy")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
