"""Measure what reading a weights folder costs one process (or each rank under torchrun).

    python mmap_worker.py build DIR TOKENS     write a synthetic weights folder of TOKENS tokens
    python mmap_worker.py read DIR OUT.json    read it as `train` does, touch every token, and
                                               write the memory it took (kB, /proc/self/smaps_rollup)

`read` reports, as growth over the state before reading: `anonymous` (memory no other process can
share: heap, numpy copies), `file` (Rss - Anonymous: pages of mapped files, shared through the
page cache) and, after all ranks have touched everything, `shared_clean` (pages mapped by more
than one process). Then, as a positive control of the measure, it copies the token columns the
way the trainer used to (one int64 ids array and one float32 weights array) and reports the
anonymous growth that copy caused (`copy_anonymous`). Under torchrun every rank writes OUT.json
with its rank in the name.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def rollup() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields


def build(folder: Path, tokens: int) -> None:
    from alpaca_plw.data.alpaca.weights import TokenizedWeights, prompt_weights
    from alpaca_plw.data.weights_dir.store import to_table, write_weights_dir

    rng = np.random.default_rng(0)
    lengths = rng.integers(200, 800, size=tokens // 500 + 1)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), tokens) + 1]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    prompt = (lengths // 3).astype(np.int32)
    tw = TokenizedWeights(ids=rng.integers(3, 32000, size=int(offsets[-1]), dtype=np.int32),
                          weights=prompt_weights(lengths, prompt, 0.1), offsets=offsets,
                          prompt_length=prompt, source_index=np.arange(lengths.size))
    meta = {"plw": 0.1, "tokenizer": {"name": "synthetic"}}
    write_weights_dir(folder, to_table(tw, meta), force=False)


def read(folder: Path, out: Path) -> None:
    import torch  # noqa: F401  (imported before the first measure, as the trainer has it)

    from alpaca_plw.data.weights_dir.folders import read_weights
    from alpaca_plw.train.batching.batches import SequenceStore, collate

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    before = rollup()
    store = SequenceStore.from_weights(read_weights([folder]))
    sums = store.target_weight_sums()  # every weight
    top = int(store.ids.max())  # every token id
    collate(store, np.arange(0, len(store), max(1, len(store) // 8)))
    read_done = rollup()
    if world > 1:
        dist.barrier()  # every rank has touched every page
    shared = rollup()
    ids = np.asarray(store.ids).astype(np.int64)  # the copies the trainer used to make
    weights = np.asarray(store.weights).astype(np.float32)
    copied = rollup()
    report = {
        "rank": rank, "world": world, "records": len(store), "tokens": int(store.ids.size),
        "file_kb": (Path(folder) / "data-00000-of-00001.arrow").stat().st_size // 1024,
        "anonymous": read_done["Anonymous"] - before["Anonymous"],
        "file": (read_done["Rss"] - read_done["Anonymous"]) - (before["Rss"] - before["Anonymous"]),
        "shared_clean": shared["Shared_Clean"] - before["Shared_Clean"],
        "private": (read_done["Private_Clean"] + read_done["Private_Dirty"])
        - (before["Private_Clean"] + before["Private_Dirty"]),
        "pss": shared["Pss"] - before["Pss"],
        "copy_anonymous": copied["Anonymous"] - shared["Anonymous"],
        "copy_bytes_kb": (ids.nbytes + weights.nbytes) // 1024,
        "check": [float(sums.sum()), top],
    }
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    name = out if world == 1 else out.with_name(f"{out.stem}-rank{rank}{out.suffix}")
    name.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        read(Path(sys.argv[2]), Path(sys.argv[3]))
